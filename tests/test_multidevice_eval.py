"""Evaluation on several devices: no collective per eval step, full count."""

import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax.training import steps as steps_lib
from test_train import compile_cache  # pylint: disable=unused-import  (a fixture)
from test_train import run_python
from test_train import subprocess_env
from test_train import TINY


def test_topk_correct_matches_lax_top_k_with_ties():
  rng = np.random.default_rng(0)
  # Integer logits in 0..2: many ties, which top_k breaks by lower index.
  logits = jnp.asarray(rng.integers(0, 3, (400, 10)).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, 10, 400))
  for k in (1, 5):
    _, top = jax.lax.top_k(logits, k)
    expected = np.any(np.asarray(top) == np.asarray(labels)[:, None], -1)
    np.testing.assert_array_equal(
        steps_lib._topk_correct(logits, labels, k), expected)  # pylint: disable=protected-access


def test_four_device_eval_has_no_collective_and_counts_every_image(
    tmp_path, compile_cache):
  result = run_python(f"""
      import json, re
      import jax, numpy as np
      from configs import default
      from ovsw_jax.training import experiment as experiment_lib, loop
      from ovsw_jax.training import mesh as mesh_lib, state as state_lib
      from ovsw_jax.training import steps as steps_lib
      config = default.get_config()
      config.update({TINY!r})
      config.update({{"num_train_steps": 2, "checkpoint_every_steps": 0}})
      mesh = mesh_lib.create_mesh()
      exp = experiment_lib.create_experiment(config)
      state = state_lib.create_train_state(exp.model, exp.tx,
                                           exp.info.image_shape, 0, mesh)
      batch = mesh_lib.shard_batch({{
          "image": np.zeros((8, 8, 8, 3), np.float32),
          "label": np.zeros(8, np.int32), "mask": np.ones(8, bool)}}, mesh)
      totals = steps_lib._zero_eval_totals(8, mesh)
      hlo = steps_lib.jit_eval_step(mesh).lower(
          state, batch, totals).compile().as_text()
      collectives = sorted(set(re.findall(
          r"all-gather|all-reduce|collective-permute|all-to-all|"
          r"reduce-scatter", hlo)))
      four = loop.train_and_evaluate(config, {str(tmp_path / 'four')!r})
      print(json.dumps({{"collectives": collectives, "four": four}}))
      """, subprocess_env(compile_cache, devices=4))
  # An all-gather per eval step (lax.top_k's) aborted 4-device runs.
  assert result["collectives"] == []
  # TINY's eval split: 20 images in 3 padded batches of 8.
  assert result["four"]["eval_count"] == 20
