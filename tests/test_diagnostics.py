"""Tests of ovsw_jax.diagnostics on hand-made parameter trees (exact counts)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import FrozenDict

from ovsw_jax import diagnostics
from ovsw_jax.diagnostics import (flip_count_vs_magnitude, flip_rate,
                                  init_flip_record, never_flipped_fraction,
                                  update_flip_record)

CONV = "params/conv/latent_kernel"
DENSE = "params/dense/latent_kernel"


def _params(conv, dense, bias=(1.0, -1.0)):
  return {"params": {
      "conv": {"latent_kernel": jnp.asarray(conv, jnp.float32).reshape(
          1, 1, 2, 3)},
      "dense": {"latent_kernel": jnp.asarray(dense, jnp.float32).reshape(2, 1),
                "bias": jnp.asarray(bias, jnp.float32)}}}


def test_flip_rate_counts_sign_changes_of_binary_kernels_only():
  old = _params([1.0, -1.0, 0.0, 2.0, -3.0, 0.5], [1.0, -1.0])
  # conv: -1 -> 0 flips (0 is +), 0 -> -0.0 does not; 2 -> -2 flips.
  # dense: 1 -> -1 flips, -1 -> -4 does not. The bias flips but is excluded.
  new = _params([1.0, 0.0, -0.0, -2.0, -3.0, 0.5], [-1.0, -4.0],
                bias=(-1.0, 1.0))
  rates = jax.jit(flip_rate)(old, new)
  assert set(rates) == {CONV, DENSE, "overall"}
  np.testing.assert_allclose(rates[CONV], 2 / 6)
  np.testing.assert_allclose(rates[DENSE], 1 / 2)
  np.testing.assert_allclose(rates["overall"], 3 / 8)
  # A callable mask selecting every leaf includes the bias.
  every = flip_rate(old, new, mask=lambda p: jax.tree.map(lambda _: True, p))
  np.testing.assert_allclose(every["params/dense/bias"], 1.0)
  np.testing.assert_allclose(every["overall"], 5 / 10)
  # A prefix mask tree.
  prefix = {"params": {"conv": False, "dense": True}}
  rates = flip_rate(old, new, mask=prefix)
  assert set(rates) == {DENSE, "params/dense/bias", "overall"}
  np.testing.assert_allclose(rates["overall"], 3 / 4)
  # FrozenDict params.
  rates = flip_rate(FrozenDict(old), FrozenDict(new))
  np.testing.assert_allclose(rates["overall"], 3 / 8)


def test_flip_rate_rejects_masks_that_select_nothing_or_do_not_fit():
  p = {"dense": {"kernel": jnp.ones(2)}}
  with pytest.raises(ValueError, match="selects no parameter"):
    flip_rate(p, p)
  with pytest.raises(ValueError, match="mask structure"):
    flip_rate(p, p, mask={"conv": True})


def test_flip_record_counts_every_flip_and_never_flipped_fraction():
  steps = [
      ([1.0, -1.0, 0.0, 2.0, -3.0, 0.5], [1.0, -1.0]),  # initial
      ([-1.0, -1.0, 0.0, 2.0, -3.0, 0.5], [-1.0, -1.0]),
      ([1.0, -1.0, 0.0, 2.0, -3.0, 0.5], [-1.0, -1.0]),
      ([1.0, 1.0, 0.0, 2.0, -3.0, 0.5], [1.0, -1.0]),
  ]
  record = init_flip_record(_params(*steps[0]))
  assert set(record.flip_count) == {CONV, DENSE}
  assert record.initial_sign[CONV].dtype == jnp.bool_
  assert record.flip_count[CONV].dtype == jnp.int32
  update = jax.jit(update_flip_record)
  for conv, dense in steps[1:]:
    record = update(record, _params(conv, dense))
  np.testing.assert_array_equal(record.flip_count[CONV].ravel(),
                                [2, 1, 0, 0, 0, 0])
  np.testing.assert_array_equal(record.flip_count[DENSE].ravel(), [2, 0])
  np.testing.assert_array_equal(record.ever_flipped[DENSE].ravel(),
                                [True, False])
  np.testing.assert_array_equal(record.initial_sign[CONV].ravel(),
                                [True, False, True, True, False, True])
  np.testing.assert_array_equal(record.prev_sign[CONV].ravel(),
                                [True, True, True, True, False, True])
  never = jax.jit(never_flipped_fraction)(record)
  np.testing.assert_allclose(never[CONV], 4 / 6)
  np.testing.assert_allclose(never[DENSE], 1 / 2)
  np.testing.assert_allclose(never["overall"], 5 / 8)


def test_sparse_updates_only_see_net_sign_changes():
  a = _params([1.0] * 6, [1.0, 1.0])
  b = _params([1.0] * 6, [-1.0, 1.0])
  every_step = update_flip_record(update_flip_record(init_flip_record(a), b), a)
  np.testing.assert_array_equal(every_step.flip_count[DENSE].ravel(), [2, 0])
  # Skipping the call at b: the flip and the flip back are both missed.
  sparse = update_flip_record(init_flip_record(a), a)
  np.testing.assert_array_equal(sparse.flip_count[DENSE].ravel(), [0, 0])
  with pytest.raises(ValueError, match="lack the recorded leaves"):
    update_flip_record(sparse, {"params": {}})


def test_flip_count_vs_magnitude_bins():
  record = init_flip_record(_params([1.0] * 6, [1.0, 1.0]))
  counts = {CONV: jnp.array([0, 3, 1, 0, 0, 2], jnp.int32).reshape(1, 1, 2, 3),
            DENSE: jnp.array([[5], [0]], jnp.int32)}
  record = record._replace(flip_count=counts)
  params = _params([0.1, -0.2, 0.3, -1.5, 2.0, 0.0], [-4.0, 0.5])
  stats = flip_count_vs_magnitude(record, params,
                                  bin_edges=np.array([0.0, 0.25, 1.0, 2.0]))
  conv = stats[CONV]
  np.testing.assert_array_equal(conv["bin_edges"], [0.0, 0.25, 1.0, 2.0])
  # |w| = 0.1, 0.2, 0.3, 1.5, 2.0 (top edge: last bin), 0.0.
  np.testing.assert_array_equal(conv["count"], [3, 1, 2])
  np.testing.assert_allclose(conv["mean_flip_count"], [5 / 3, 1.0, 0.0])
  np.testing.assert_allclose(conv["never_flipped_fraction"], [1 / 3, 0.0, 1.0])
  dense = stats[DENSE]  # |w| = 4 (beyond the edges: last bin), 0.5
  np.testing.assert_array_equal(dense["count"], [0, 1, 1])
  np.testing.assert_allclose(dense["mean_flip_count"], [np.nan, 0.0, 5.0])
  np.testing.assert_allclose(dense["never_flipped_fraction"],
                             [np.nan, 1.0, 0.0])
  overall = stats["overall"]
  np.testing.assert_array_equal(overall["count"], [3, 2, 3])
  np.testing.assert_allclose(overall["mean_flip_count"], [5 / 3, 0.5, 5 / 3])
  # Default: num_bins equal bins on [0, max |w|] of each leaf.
  stats = flip_count_vs_magnitude(record, params, num_bins=2)
  np.testing.assert_allclose(stats[CONV]["bin_edges"], [0.0, 1.0, 2.0])
  np.testing.assert_array_equal(stats[CONV]["count"], [4, 2])
  np.testing.assert_allclose(stats["overall"]["bin_edges"], [0.0, 2.0, 4.0])
  np.testing.assert_array_equal(stats["overall"]["count"], [6, 2])
  np.testing.assert_allclose(stats["overall"]["mean_flip_count"], [1.0, 2.5])
  assert diagnostics.OVERALL == "overall"
