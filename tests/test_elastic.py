"""Elastic restore (4 devices -> 2 -> 1, same global batch), train.py's
evaluation on 4 devices, and a profiler trace.

One chain of runs of test_train's TINY config at batch 16, 4 steps, a
checkpoint after each:

1. train.py on 4 simulated devices (A), evaluation included;
2. a 3-device process: A's step-2 checkpoint resumed on 2 devices (B), next
   to an uninterrupted 2-device run; a 3-device mesh refused before any work;
3. this process, 1 device: B's step-3 checkpoint resumed (C), next to an
   uninterrupted run (which also writes a profiler trace).
"""

import glob
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest

from ovsw_jax.training import loop
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import metrics_io
from killed_runs import committed_steps
from test_train import all_leaves
from test_train import compile_cache  # pylint: disable=unused-import  (a fixture)
from test_train import EQUIV
from test_train import run_python
from test_train import subprocess_env
from test_train import tiny_config
from test_train import TINY
from test_train import train_cmd

ELASTIC = {**TINY, **EQUIV, "num_train_steps": 4, "log_every_steps": 2,
           "checkpoint_every_steps": 1, "keep_checkpoints": 4}


def _resumable_copy(src, dst, step):
  """A copy of workdir ``src`` whose latest checkpoint is ``step``."""
  shutil.copytree(src, dst)
  for later in committed_steps(dst):
    if later > step:
      shutil.rmtree(os.path.join(dst, "checkpoints", str(later)))
  return str(dst)


def _max_diff(config, workdir_a, workdir_b):
  """Largest ``|a - b| / (1 + |b|)`` of two runs' final float arrays (a
  relative difference for BatchNorm's large variances); ints must be equal."""
  a, _ = loop.load_checkpoint(config, workdir_a)
  b, _ = loop.load_checkpoint(config, workdir_b)
  diff = 0.0
  for (path, x), (_, y) in zip(all_leaves(a), all_leaves(b)):
    if np.issubdtype(x.dtype, np.floating):
      diff = max(diff, float(np.max(np.abs(x - y) / (1 + np.abs(y)))))
    else:
      np.testing.assert_array_equal(x, y, err_msg=str(path))
  return diff


TWO_DEVICES = """
    import json, re
    import jax, numpy as np
    from ovsw_jax.training import checkpointing, loop
    from ovsw_jax.training import mesh as mesh_lib, steps as steps_lib
    from test_elastic import _max_diff, _resumable_copy
    from test_train import all_leaves, tiny_config
    config = tiny_config(**{elastic!r})
    four, root = {four!r}, {root!r}
    mesh2 = mesh_lib.create_mesh(jax.devices()[:2])
    out = {{}}
    # Restored exactly, with the new mesh's shardings.
    on2, _ = loop.load_checkpoint(config, four, 2, mesh=mesh2)
    on1, _ = loop.load_checkpoint(config, four, 2,
                                  mesh=mesh_lib.create_mesh(jax.devices()[:1]))
    out["exact"] = all(np.array_equal(x, y) for (_, x), (_, y) in
                       zip(all_leaves(on2), all_leaves(on1)))
    out["devices"] = len(on2.params["conv1"]["kernel"].sharding.device_set)
    # Evaluation has no collective per step (an all-gather per eval step
    # hung 4-device runs in XLA:CPU's in-process rendezvous).
    batch = mesh_lib.shard_batch({{
        "image": np.zeros((8, 8, 8, 3), np.float32),
        "label": np.zeros(8, np.int32), "mask": np.ones(8, bool)}}, mesh2)
    hlo = steps_lib.jit_eval_step(mesh2).lower(
        on2, batch, steps_lib._zero_eval_totals(8, mesh2)).compile().as_text()
    out["collectives"] = sorted(set(re.findall(
        r"all-gather|all-reduce|collective-permute|all-to-all|"
        r"reduce-scatter", hlo)))
    # 16 rows cannot split over 3 devices: refused before any restore.
    def no_work(*args, **kwargs):
      raise AssertionError("work began before the batch size was checked")
    saved = checkpointing.restore, loop.create_experiment
    checkpointing.restore = loop.create_experiment = no_work
    try:
      loop.train_and_evaluate(config, four, mesh=mesh_lib.create_mesh())
    except ValueError as e:
      out["error"] = str(e)
    finally:
      checkpointing.restore, loop.create_experiment = saved
    resumed = _resumable_copy(four, root + "/two", 2)
    out["two"] = loop.train_and_evaluate(config, resumed, mesh=mesh2)
    loop.train_and_evaluate(config, root + "/straight2", mesh=mesh2)
    out["diff2"] = _max_diff(config, resumed, root + "/straight2")
    print(json.dumps(out))
    """


@pytest.mark.accelerator
def test_four_to_two_to_one_device_resume(tmp_path, compile_cache):
  four = str(tmp_path / "four")
  proc = subprocess.run(train_cmd(four, ELASTIC),
                        env=subprocess_env(compile_cache, devices=4),
                        capture_output=True, text=True, timeout=400,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert '"eval_count": 20' in proc.stdout  # TINY's eval split: 20 images.
  assert committed_steps(four) == [1, 2, 3, 4]

  env = subprocess_env(compile_cache, devices=3)
  env["PYTHONPATH"] = os.path.dirname(__file__) + os.pathsep + env["PYTHONPATH"]
  out = run_python(TWO_DEVICES.format(elastic=ELASTIC, four=four,
                                      root=str(tmp_path)), env, timeout=400)
  assert out["exact"] and out["devices"] == 2
  assert out["collectives"] == []
  assert "batch_size=16" in out["error"] and "(3)" in out["error"]
  assert "multiple of 3" in out["error"]
  assert out["two"]["eval_count"] == 20 and out["two"]["step"] == 4
  assert out["diff2"] < 1e-5

  config = tiny_config(**ELASTIC)
  one = mesh_lib.create_mesh(jax.devices()[:1])
  resumed = _resumable_copy(tmp_path / "two", tmp_path / "one", 3)
  result = loop.train_and_evaluate(config, resumed, mesh=one)
  assert result["eval_count"] == 20 and result["step"] == 4
  config.profile_steps = 1
  straight = str(tmp_path / "straight1")
  loop.train_and_evaluate(config, straight, mesh=one)
  assert _max_diff(config, resumed, straight) < 1e-5
  # The metrics read as one run: each step logged once, as uninterrupted.
  logged = [[r["step"] for r in metrics_io.read_metrics(d)
             if "train_loss" in r] for d in (resumed, straight)]
  assert logged[0] == logged[1] == sorted(set(logged[1]))
  # Step 3's trace (after the 2 warm-up steps).
  assert glob.glob(os.path.join(straight, "profile", "plugins", "profile",
                                "*", "*.xplane.pb"))
