"""Defaults a newcomer meets: synthetic's small eval set."""

import json
import os
import shutil
import subprocess

from ovsw_jax import data
from tests.test_train import TINY
from tests.test_train import compile_cache  # noqa: F401 (a fixture)
from tests.test_train import subprocess_env
from tests.test_train import train_cmd


def test_synthetic_default_eval_set_is_small():
  assert data.get_dataset_info("synthetic").num_eval == 500
