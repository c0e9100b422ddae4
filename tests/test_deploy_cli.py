"""The deployment page's commands on the quickstart's kind of run (digits)."""

import json
import os
import subprocess
import sys

import pytest

from ovsw_jax import models
from ovsw_jax.deploy import cli
from ovsw_jax.summary import summary
from ovsw_jax.training import loop
from ovsw_jax.training import workdir as workdir_lib
from tests.test_train import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _deploy(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "ovsw_jax.deploy", *args],
                        env=env, capture_output=True, text=True, cwd=REPO,
                        check=False, timeout=300)


def test_digits_run_exports_without_data_and_evaluates(tmp_path):
  config = tiny_config(dataset="digits", dataset_options={},
                       num_train_steps=2, checkpoint_every_steps=2)
  workdir = str(tmp_path / "run")
  result = loop.train_and_evaluate(config, workdir)
  # The exporting machine has no dataset files: the run's data_dir is gone.
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  with open(path) as f:
    saved = json.load(f)
  saved["data_dir"] = str(tmp_path / "absent")
  with open(path, "w") as f:
    json.dump(saved, f)

  out = str(tmp_path / "q.npz")
  proc = _deploy("export", f"--workdir={workdir}", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "orbax" not in proc.stderr  # library INFO logs stay quiet
  # The sizes, named exactly: the file, the arrays in it (what the summary
  # counts as packed) and the container around them.
  sizes = json.loads(proc.stdout.strip().splitlines()[-1])
  assert sizes["file_bytes"] == os.path.getsize(out)
  model = models.get_model(config.model, 10, stage_sizes=(1, 1, 1))
  assert sizes["packed_weight_bytes"] == summary(
      model, (16, 16, 1)).total("packed_bytes")
  assert sizes["container_bytes"] == (
      sizes["file_bytes"] - sizes["packed_weight_bytes"]) > 0
  proc = _deploy("evaluate", f"--packed={out}", "--dataset=digits")
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluated = json.loads(proc.stdout.strip().splitlines()[-1])
  assert evaluated["count"] == result["eval_count"]
  assert abs(evaluated["top1"] - result["eval_top1"]) < 1e-9

  # A missing workdir through the command line: one line, a non-zero exit.
  proc = _deploy("export", f"--workdir={tmp_path / 'nope'}", f"--out={out}")
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "does not exist" in lines[0], proc.stderr[-2000:]

  # A wrong dataset and a workdir without checkpoint, in this process: the
  # same one-line errors that __main__ turns into that exit.
  with pytest.raises(ValueError,
                     match="this model expects 16x16x1 inputs") as wrong:
    cli.evaluate_command([f"--packed={out}", "--dataset=synthetic"])
  assert "\n" not in str(wrong.value)
  empty = tmp_path / "empty"
  (empty / "checkpoints").mkdir(parents=True)
  with open(empty / workdir_lib.CONFIG_FILE, "w") as f:
    json.dump(saved, f)
  with pytest.raises(FileNotFoundError, match="no checkpoint in") as none:
    cli.export_checkpoint(str(empty), out)
  assert "\n" not in str(none.value)
