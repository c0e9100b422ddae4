"""No silent restart from step 0 over a run's record (training/restart.py)."""

import os

import pytest

from ovsw_jax.training import checkpointing
from ovsw_jax.training import loop
from ovsw_jax.training import restart
from tests.test_train import damage_checkpoints
from tests.test_train import tiny_config


def _records_text(folder):
  """The text of a metrics folder's chunk files, in order."""
  names = sorted(os.listdir(folder))
  assert names
  return "".join(_read(os.path.join(folder, n)) for n in names)


def _read(path):
  with open(path) as f:
    return f.read()


def test_short_error_drops_pybind_reprs():
  e = ValueError("Failed to read: <bound method pybind11_detail.foo of "
                 "TensorStore({'driver': 'zarr'})>")
  assert checkpointing.short_error(e) == "ValueError: Failed to read"


# Reading a damaged checkpoint leaves tensorstore callbacks aimed at an
# asyncio loop orbax has closed; Python reports them as unraisable.
@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")
def test_all_unreadable_workdir_refuses_restart_and_loses_no_file(tmp_path):
  config = tiny_config(num_train_steps=2, checkpoint_every_steps=2,
                       log_every_steps=2, keep_checkpoints=3)
  workdir = str(tmp_path)
  loop.train_and_evaluate(config, workdir)
  metrics = os.path.join(workdir, "metrics")
  record = _records_text(metrics)
  assert record
  damage_checkpoints(workdir)

  # First rerun: the checkpoint is set aside, with one line saying so.
  with pytest.raises(RuntimeError) as first:
    loop.train_and_evaluate(config, workdir)
  assert "\n" not in str(first.value)
  assert "restart_from_scratch=True" in str(first.value)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2.unreadable"))
  # Second rerun: no checkpoint is left, but the record is: refuse.
  with pytest.raises(restart.RestartRefusedError,
                     match=r"chunk-\d+\.jsonl, tensorboard, 2.unreadable.*"
                     r"--config.restart_from_scratch=True"):
    loop.train_and_evaluate(config, workdir)
  assert _records_text(metrics) == record
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2.unreadable"))

  # With the flag: a new run, and the old metrics moved aside intact.
  config.restart_from_scratch = True
  result = loop.train_and_evaluate(config, workdir)
  assert result["step"] == 2
  assert _records_text(metrics + ".before_restart") == record
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2.unreadable"))
