"""Kill-and-resume exactness of the peer methods with OvSW, and their CLI.

In process, at tiny size (cResNet20 cut to one block: two binary convs;
the resume test of test_irnet.py moved here): 4 steps (2 epochs of 2), a checkpoint after
step 2 (an epoch boundary, so the resumed run starts with RBNN's rotation
update and a new (k, t)), restored into a fresh abstract state and run on
with the same jitted step: the final state equals the straight run's to the
bit. One subprocess runs 'rbnn+ovsw' from train.py.
"""

import json
import subprocess

import jax
import numpy as np
import pytest

from ovsw_jax import irnet
from ovsw_jax.training import checkpointing
from ovsw_jax.training import experiment as experiment_lib
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import metrics_io
from ovsw_jax.training import state as state_lib
from ovsw_jax.training import steps as steps_lib
from tests.test_methods import _initial_state as initial_state
from tests.test_methods import small_config
from tests.test_train import compile_cache  # pylint: disable=unused-import
from tests.test_train import subprocess_env
from tests.test_train import train_cmd

# The schedule each method reports, and its (t_min, t_max).
SCHEDULES = {"irnet+ovsw": ("irnet", 0.1, 10.0),
             "rbnn+ovsw": ("rbnn", 0.01, 10.0),
             "adabin+ovsw": ("adabin", 0.001, 10.0)}


def _batches(n, batch_size=8, seed=0):
  rng = np.random.default_rng(seed)
  return [{"image": rng.normal(size=(batch_size, 8, 8, 3)).astype(np.float32),
           "label": rng.integers(0, 10, batch_size).astype(np.int32)}
          for _ in range(n)]


def _leaves(state):
  return jax.tree_util.tree_flatten_with_path(
      jax.device_get(state_lib.checkpoint_items(state)))[0]


@pytest.mark.parametrize("method", sorted(SCHEDULES))
def test_resume_from_a_checkpoint_is_bitwise(method, tmp_path):
  config = small_config(method=method, model_options={"stage_sizes": (1,)},
                        dataset_options={
      "image_shape": (8, 8, 3), "num_train": 16, "num_eval": 8})
  exp = experiment_lib.create_experiment(config)
  assert exp.steps_per_epoch == 2 and exp.total_steps == 4
  mesh = mesh_lib.create_mesh()
  # Filled from NumPy (skips compiling the init); RBNN's rotations are
  # refitted (orthogonal) at step 0, an epoch start.
  state = initial_state(exp, config, mesh)
  step_fn = steps_lib.jit_train_step(exp.learning_rate_fn, mesh)
  batches = [mesh_lib.shard_batch(b, mesh) for b in _batches(4)]
  manager = checkpointing.create_manager(tmp_path, async_save=False)
  name, t_min, t_max = SCHEDULES[method]
  for i, batch in enumerate(batches):
    if i == 2:
      checkpointing.save(manager, 2, state_lib.checkpoint_items(state),
                         meta={"step": 2})
    state, metrics = step_fn(state, batch)
    k, t = irnet.ede_schedule(i // 2, 2, t_min, t_max)
    np.testing.assert_allclose(
        [metrics[f"{name}_k"], metrics[f"{name}_t"]], [k, t], rtol=1e-6)
  straight = _leaves(state)
  abstract = state_lib.abstract_train_state(
      exp.model, exp.tx, exp.info.image_shape, config.seed, mesh,
      exp.model_state_fn)
  items, _, step = checkpointing.restore(
      manager, state_lib.checkpoint_items(abstract), step=2)
  assert step == 2 and name in items["model_state"]
  resumed = abstract.replace(**items)
  for batch in batches[2:]:
    resumed, _ = step_fn(resumed, batch)
  assert step_fn._cache_size() == 1  # pylint: disable=protected-access
  resumed = _leaves(resumed)
  assert [p for p, _ in straight] == [p for p, _ in resumed]
  for (path, x), (_, y) in zip(straight, resumed):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_rbnn_ovsw_trains_from_the_cli(tmp_path, compile_cache):  # pylint: disable=redefined-outer-name
  """train.py --config.method=rbnn+ovsw: its (k, t) per epoch in the
  metrics, and AGS's and SAD's diagnostics beside them."""
  overrides = {"method": "rbnn+ovsw", "model": "cresnet20_1w1a",
               "model_options": {"stage_sizes": (1,)},
               "dataset": "synthetic", "batch_size": 8, "num_epochs": 2,
               "dataset_options": {"image_shape": (8, 8, 3), "num_train": 16,
                                   "num_eval": 8},
               "log_every_steps": 1, "eval_every_epochs": 0,
               "progress_bar": False, "prefetch": 0}
  proc = subprocess.run(train_cmd(tmp_path, overrides),
                        env=subprocess_env(compile_cache), capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = [r for r in metrics_io.read_metrics(str(tmp_path))
          if "rbnn_t" in r]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  for r in rows:
    k, t = irnet.ede_schedule((r["step"] - 1) // 2, 2, 0.01, 10.0)
    assert (r["rbnn_k"], r["rbnn_t"]) == pytest.approx((k, t), rel=1e-6)
    assert 0 <= r["silent_fraction"] <= 1 and r["ags_ratio"] > 0
  assert json.loads((tmp_path / "config.json").read_text())["method"] == (
      "rbnn+ovsw")
