"""Evaluation on several devices: top-k without a collective.

The eval step's HLO holds no collective, and train.py's evaluation on 4
devices and on 2 processes x 2 devices counts every eval image: see
tests/test_elastic.py and tests/test_preemption.py, which check these on
their runs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovsw_jax.training import steps as steps_lib

pytestmark = pytest.mark.accelerator  # top-k counts on any backend


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
