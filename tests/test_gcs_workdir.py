"""A gs:// workdir, end to end, against a GCS API server on localhost.

One training run (train.py) writes to ``gs://ovsw-test/run`` on
gcp-storage-emulator (`tests.gcs_emulator`), is SIGKILLed after its first
checkpoint and is run again; the same command on a local workdir is the
reference. The tests then read that bucket run through the library as a user
would: its checkpoint (orbax, tensorstore's GCS driver), its metrics
(`read_metrics`, gcsfs under `etils.epath`), its TensorBoard events
(tensorboardX wrote them through google-cloud-storage; TensorBoard's
EventAccumulator reads ``gs://`` itself, through fsspec and gcsfs) and the
export CLI.
"""

import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request

import jax
import numpy as np
import pytest

import ovsw_jax
from ovsw_jax.deploy import cli as deploy_cli
from ovsw_jax.deploy import format as format_lib
from ovsw_jax.training import loop
from ovsw_jax.training import workdir as workdir_lib
from tests.gcs_emulator import BUCKET
from tests.gcs_emulator import gcs_bucket  # pylint: disable=unused-import
from tests.killed_runs import kill_when
from tests.test_train import all_leaves
from tests.test_train import compile_cache  # pylint: disable=unused-import
from tests.test_train import REPO
from tests.test_train import subprocess_env
from tests.test_train import TINY
from tests.test_train import tiny_config
from tests.test_train import train_cmd

# test_train's SIGKILL run exactly (80 steps of 8, 8 steps an epoch): the
# same compiled programs, so one of the two finds them in the session's
# compile cache. A record every 10 steps and at each epoch's end, a
# checkpoint and flip rates every 10, one evaluation (the last step).
OVERRIDES = {**TINY, "num_train_steps": 80, "checkpoint_every_steps": 10,
             "log_every_steps": 10}
LOGGED_STEPS = sorted(set(range(8, 81, 8)) | set(range(10, 81, 10)))
RUN = "run"


def _committed_steps(prefix: str) -> list[int]:
  """Steps with orbax's commit marker, listed by the JSON API itself (no
  client-side listing cache)."""
  query = urllib.parse.urlencode({"prefix": f"{prefix}/checkpoints/"})
  url = (f"{os.environ['STORAGE_EMULATOR_HOST']}/storage/v1/b/{BUCKET}/o?"
         f"{query}")
  with urllib.request.urlopen(url, timeout=10) as response:
    names = [item["name"] for item in json.load(response).get("items", [])]
  return sorted(int(m.group(1)) for name in names if (m := re.fullmatch(
      rf"{prefix}/checkpoints/(\d+)/commit_success\.txt", name)))


def _kill_after_first_checkpoint(cmd, env) -> list[int]:
  """Runs ``cmd``, SIGKILLs it once a checkpoint is committed in the bucket;
  returns the committed steps then."""
  victim = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  kill_when(victim, lambda: _committed_steps(RUN),
            "a checkpoint in the bucket", poll_s=0.02)
  return _committed_steps(RUN)


@pytest.fixture(scope="module")
def runs(gcs_bucket, compile_cache, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """(local workdir, gs:// workdir, steps committed at the kill, resumed
  step) of the reference run and the killed-and-rerun bucket run."""
  env = subprocess_env(compile_cache)
  folder = tmp_path_factory.mktemp("gcs_reference")
  local, remote = str(folder / RUN), f"{gcs_bucket}/{RUN}"
  # Beside the bucket run, on the other core; both fill the compile cache
  # that the rerun then reads. Its log goes to a file: a pipe could fill.
  with open(folder / "straight.log", "w+") as log:
    straight = subprocess.Popen(train_cmd(local, OVERRIDES), env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
      at_kill = _kill_after_first_checkpoint(train_cmd(remote, OVERRIDES),
                                             env)
      resumed = subprocess.run(train_cmd(remote, OVERRIDES), env=env,
                               capture_output=True, text=True, timeout=300,
                               check=False)
      straight.wait(timeout=300)
    finally:
      if straight.poll() is None:
        straight.kill()
        straight.wait()
    log.seek(0)
    assert straight.returncode == 0, log.read()[-4000:]
  assert at_kill and max(at_kill) < OVERRIDES["num_train_steps"]
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  match = re.search(r"Resuming from the checkpoint at step (\d+)",
                    resumed.stderr)
  assert match, resumed.stderr[-4000:]
  return local, remote, at_kill, int(match.group(1))


def test_sigkill_and_rerun_on_gcs_ends_bitwise_equal_to_a_local_run(runs):
  local, remote, at_kill, resumed_at = runs
  assert resumed_at >= min(at_kill)
  config = tiny_config(**OVERRIDES)
  a, step_a = loop.load_checkpoint(config, local)
  b, step_b = loop.load_checkpoint(config, remote)
  assert step_a == step_b == OVERRIDES["num_train_steps"]
  leaves_a, leaves_b = all_leaves(a), all_leaves(b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
  assert workdir_lib.read_config(remote) == workdir_lib.read_config(local)


def _timeless(records):
  return [{k: v for k, v in r.items() if k != "images_per_sec"}
          for r in records]


def test_read_metrics_from_the_bucket_returns_every_logged_step(runs):
  local, remote, _, _ = runs
  remote_records = ovsw_jax.read_metrics(remote)
  assert [r["step"] for r in remote_records] == LOGGED_STEPS
  # The killed run's records after its checkpoint were dropped on resume;
  # what is left reads as one uninterrupted run, value for value.
  assert _timeless(remote_records) == _timeless(ovsw_jax.read_metrics(local))
  assert remote_records[-1]["eval_count"] == TINY["dataset_options"][
      "num_eval"]


def test_export_cli_reads_the_run_from_the_bucket(runs, tmp_path,
                                                  compile_cache):  # pylint: disable=redefined-outer-name
  local, remote, _, _ = runs
  out = str(tmp_path / "remote.npz")
  proc = subprocess.run(
      [sys.executable, "-m", "ovsw_jax.deploy", "export",
       f"--workdir={remote}", f"--out={out}"],
      # Optimised as in this process: BatchNorm folding is compared bitwise.
      env=subprocess_env(compile_cache, fast_compile=False),
      capture_output=True, text=True,
      cwd=REPO, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 80
  reference = str(tmp_path / "local.npz")
  deploy_cli.export_checkpoint(local, reference)
  a, b = format_lib.load(reference), format_lib.load(out)
  assert a.header["metadata"].pop("workdir") == local
  assert b.header["metadata"].pop("workdir") == remote
  assert a.header == b.header
  flat_a = format_lib.flatten({"layers": a.layers, "variables": a.variables},
                              "")
  flat_b = format_lib.flatten({"layers": b.layers, "variables": b.variables},
                              "")
  assert sorted(flat_a) == sorted(flat_b)
  for key, value in flat_a.items():
    np.testing.assert_array_equal(value, flat_b[key], err_msg=key)


def test_tensorboard_events_in_the_bucket_read_back(runs):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  local, remote, _, _ = runs
  # EventAccumulator reads gs:// itself (TensorBoard's gfile uses fsspec,
  # hence gcsfs). The killed run's file repeats steps after its checkpoint;
  # EventAccumulator drops them when the rerun's file goes back in steps.
  acc = event_accumulator.EventAccumulator(f"{remote}/tensorboard")
  acc.Reload()
  records = ovsw_jax.read_metrics(local)
  layer = "flip_rate/layer1_0/conv1/latent_kernel"
  for tag in ("train_loss", "eval_top1", "lr", layer):
    expected = [(r["step"], float(np.float32(r[tag]))) for r in records
                if tag in r]
    assert expected, tag
    got = [(e.step, e.value) for e in acc.Scalars(tag)]
    assert got == expected, tag
  assert [e.step for e in acc.Scalars("eval_top1")] == [80]
  assert [e.step for e in acc.Scalars(layer)] == list(range(10, 81, 10))
