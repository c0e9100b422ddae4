"""Own data end to end: train.py on an image folder (every val image counted
once, classes and the examples' digest recorded, a SIGKILL then a rerun
bitwise equal to a straight run), its export and evaluation with no option
repeated, a run on the prepared records, and train.py --help listing every
dataset's options."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from ovsw_jax import data
from ovsw_jax.data import dataset_digest
from ovsw_jax.data import prepare
from ovsw_jax.deploy import cli
from ovsw_jax.deploy import format as format_lib
from ovsw_jax.training import loop
from ovsw_jax.training import workdir as workdir_lib
from tests import image_folder_data as folder_data
from tests.killed_runs import committed_steps, kill_when
from tests.test_train import (TINY, all_leaves, compile_cache,  # pylint: disable=unused-import
                              subprocess_env, tiny_config, train_cmd)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 30  # 12 images, batch 4: ten epochs; a kill at step 5 leaves 25


def _overrides(folder):
  return {**TINY, "dataset": "imagefolder", "data_dir": folder,
          "dataset_options": {"image_size": 16}, "batch_size": 4,
          "num_train_steps": STEPS, "checkpoint_every_steps": 5,
          "log_every_steps": 5}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, compile_cache):  # pylint: disable=redefined-outer-name
  """A straight train.py run and one killed by SIGKILL then rerun."""
  root = tmp_path_factory.mktemp("own_data")
  folder = folder_data.write_image_folder(str(root / "data"))
  overrides = _overrides(folder)
  env = subprocess_env(compile_cache)
  straight, killed = str(root / "straight"), str(root / "killed")
  first = subprocess.Popen(train_cmd(straight, overrides), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  victim = subprocess.Popen(train_cmd(killed, overrides), env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  kill_when(victim, lambda: committed_steps(killed), "a checkpoint")
  assert committed_steps(killed) and max(committed_steps(killed)) < STEPS
  resumed = subprocess.run(train_cmd(killed, overrides), env=env,
                           capture_output=True, text=True, timeout=300,
                           check=False)
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  assert "Resuming from the checkpoint" in resumed.stderr
  out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-4000:]
  result = json.loads(re.search(r"^RESULT (.*)$", out, re.M).group(1))
  return {"folder": folder, "straight": straight, "killed": killed,
          "result": result, "stderr": err, "root": root,
          "config": tiny_config(**overrides)}


def test_train_py_on_an_image_folder_counts_every_val_image(runs):
  assert runs["result"]["step"] == STEPS
  assert runs["result"]["eval_count"] == 6  # 6 val images, batch 4: padded
  assert "ignored 1 files that are not images" in runs["stderr"]
  with open(os.path.join(runs["straight"], workdir_lib.CONFIG_FILE)) as f:
    recorded = json.load(f)
  assert recorded["dataset_options"]["classes"] == list(folder_data.CLASSES)
  assert recorded["dataset_options"]["image_size"] == 16


def test_sigkill_then_rerun_is_bitwise_the_straight_run(runs):
  a, step_a = loop.load_checkpoint(runs["config"], runs["straight"])
  b, step_b = loop.load_checkpoint(runs["config"], runs["killed"])
  assert step_a == step_b == STEPS
  for (path, x), (_, y) in zip(all_leaves(a), all_leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=str(path))


def test_checkpoints_record_which_examples_they_were_trained_on(runs):
  with open(os.path.join(runs["killed"], "checkpoints", str(STEPS), "meta",
                         "metadata")) as f:  # orbax's JsonSave
    meta = json.load(f)
  info = data.get_dataset_info("imagefolder", runs["folder"], image_size=16)
  assert meta["dataset_digest"] == {"digest": info.digest, "num_train": 12,
                                    "num_eval": 6}
  assert dataset_digest.change_since(meta, info) is None


def test_export_and_evaluate_need_no_repeated_options(runs, capsys):
  out = str(runs["root"] / "model.npz")
  cli.export_checkpoint(runs["straight"], out)
  packed = format_lib.load(out)
  assert packed.class_names == folder_data.CLASSES
  assert packed.image_shape == (16, 16, 3)
  got = cli.evaluate_command([f"--packed={out}"])
  assert got["dataset"] == "imagefolder" and got["count"] == 6
  assert abs(got["top1"] - runs["result"]["eval_top1"]) < 1e-9
  # A file from an older export (no dataset options, no class names) still
  # loads, and evaluates at its own image size, not the dataset's 224.
  old = format_lib.load(out)
  old.header["metadata"] = {"step": old.header["metadata"]["step"]}
  del old.header["class_names"]
  format_lib.save(old, str(runs["root"] / "old.npz"))
  assert format_lib.load(str(runs["root"] / "old.npz")).class_names is None
  got_old = cli.evaluate_command([f"--packed={runs['root'] / 'old.npz'}",
                                  "--dataset=imagefolder",
                                  f"--data_dir={runs['folder']}"])
  assert (got_old["count"], got_old["top1"]) == (6, got["top1"])
  # The prepared records of the same folder: the same eval, the model's
  # image size taken from the file.
  records = str(runs["root"] / "records")
  prepare.prepare(records, data_dir=runs["folder"], processes=1)
  capsys.readouterr()
  on_records = cli.evaluate_command([f"--packed={out}",
                                     "--dataset=image_records",
                                     f"--data_dir={records}"])
  assert on_records["count"] == 6 and on_records["top1"] == got["top1"]
  # A folder with other classes is refused (the recorded classes are
  # among the options evaluate passes), naming what is missing.
  other = folder_data.write_image_folder(str(runs["root"] / "other"),
                                         extras=False)
  os.rename(os.path.join(other, "train", "fish"),
            os.path.join(other, "train", "eel"))
  os.rename(os.path.join(other, "val", "fish"),
            os.path.join(other, "val", "eel"))
  with pytest.raises(ValueError, match=r"lacks the class folder\(s\) "
                     r"\['fish'\]"):
    cli.evaluate_command([f"--packed={out}", f"--data_dir={other}"])


def test_a_run_on_prepared_records_exports_its_class_names(
    runs, tmp_path, compile_cache):  # pylint: disable=redefined-outer-name
  records = str(tmp_path / "records")
  prepare.prepare(records, data_dir=runs["folder"], processes=1)
  # The same program as the folder's runs: compiled programs are reused.
  overrides = {**_overrides(records), "dataset": "image_records"}
  workdir = str(tmp_path / "run")
  proc = subprocess.run(train_cmd(workdir, overrides),
                        env=subprocess_env(compile_cache), capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(re.search(r"^RESULT (.*)$", proc.stdout, re.M).group(1))
  assert result["eval_count"] == 6
  out = str(tmp_path / "records.npz")
  cli.export_checkpoint(workdir, out)
  assert format_lib.load(out).class_names == folder_data.CLASSES
  got = cli.evaluate_command([f"--packed={out}"])
  assert got["dataset"] == "image_records" and got["count"] == 6
  assert abs(got["top1"] - result["eval_top1"]) < 1e-9


def test_train_py_help_lists_every_datasets_options():
  proc = subprocess.run([sys.executable, os.path.join(REPO, "train.py"),
                         "--help"], capture_output=True, text=True,
                        timeout=120, check=False)
  text = proc.stdout + proc.stderr
  block = text[text.index("Datasets (--config.dataset)"):text.index("flags:")]
  entries, current = [], None  # an entry starts at a 2-space indent
  for line in block.splitlines()[2:]:
    if re.match(r"^  \S", line):
      current = [line]
      entries.append(current)
    elif current is not None:
      current.append(line)
  for name in ("cifar10", "cifar100", "digits", "synthetic", "imagenet2012",
               "tfds:mnist", "imagefolder", "image_records"):
    head = re.compile(rf"(^|[ ,]){re.escape(name.replace('mnist', '<name>'))}"
                      r"(?=$|[ ,])")
    entry = " ".join(next(e for e in entries
                          if head.search(e[0].split("(")[0].strip())))
    for option in data.dataset_options(name):
      assert re.search(rf"\b{option}\b", entry), (name, option)


def test_train_py_says_what_is_wrong_with_the_folder_in_one_line(
    tmp_path, compile_cache):  # pylint: disable=redefined-outer-name
  folder = folder_data.write_image_folder(str(tmp_path / "data"))
  empty = os.path.join(folder, "train", "eel")
  os.makedirs(empty)
  proc = subprocess.run(train_cmd(tmp_path / "run", _overrides(folder)),
                        env=subprocess_env(compile_cache), capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and empty in last
  assert "add images to it or remove the folder" in last
