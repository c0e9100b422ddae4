"""Defaults a newcomer meets: synthetic's small eval set."""

from ovsw_jax import data


def test_synthetic_default_eval_set_is_small():
  assert data.get_dataset_info("synthetic").num_eval == 500
