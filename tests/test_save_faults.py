"""A failed checkpoint save: retried a bounded number of times, then a stop.

The fault is a full disk, injected where orbax writes each checkpoint's
``meta`` item (its JSON handler's write, which runs in orbax's background
commit for an asynchronous save): the write raises ``OSError(ENOSPC)`` for
the steps and attempts chosen.
"""

import errno
import os
import re

import orbax.checkpoint as ocp
import pytest

from ovsw_jax.training import checkpoint_saver
from ovsw_jax.training import checkpointing
from ovsw_jax.training import loop
from ovsw_jax.training import metrics_io
from killed_runs import committed_steps
from test_train import tiny_config


class FullDisk:
  """Fails the meta write of a step's checkpoint while ``fail(step, n)``
  (n: the attempt at that step, from 1) says so."""

  def __init__(self, monkeypatch, fail):
    self.attempts = {}
    plain = ocp.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

    async def save_fn(handler, item, directory):
      # directory: <checkpoints>/<step>[.<tmp suffix>]/meta[.<tmp suffix>]
      step = int(re.match(r"\d+", directory.parent.name).group())
      if directory.name.split(".")[0] == checkpointing.META:
        self.attempts[step] = self.attempts.get(step, 0) + 1
        if fail(step, self.attempts[step]):
          raise OSError(errno.ENOSPC, "No space left on device",
                        os.fspath(directory))
      return await plain(handler, item, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", save_fn)


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch):
  # The last save's retry waits this long for the failed writes to end.
  monkeypatch.setattr(checkpoint_saver, "BACKOFF_S", 0.5)


def test_transient_faults_are_retried_and_the_run_completes(
    tmp_path, monkeypatch, caplog):
  config = tiny_config(checkpoint_every_steps=4, keep_checkpoints=5)
  # The first attempts at step 4 (mid-run) and 10 (the last save) fail.
  disk = FullDisk(monkeypatch, lambda step, n: step in (4, 10) and n == 1)
  with caplog.at_level("WARNING"):
    result = loop.train_and_evaluate(config, str(tmp_path))
  assert result["step"] == 10
  # Mid-run, the failure is seen after step 4 or a later one, or at the
  # save of step 8, and the next attempt goes to that later step (step 4's
  # directory may still be written to by the failed attempt). The last save
  # is tried again at its own step.
  assert re.search(r"Saving the checkpoint of step 4 in \S+ failed "
                   r"\(OSError: \[Errno 28\] No space left on device: "
                   r"'\S+\); trying again at (the next step|step [5-8]) "
                   r"\(attempt 2 of 3\)", caplog.text), caplog.text
  assert re.search(r"Saving the checkpoint of step 10 .* trying again at "
                   r"step 10 \(attempt 2 of 3\)", caplog.text), caplog.text
  committed = committed_steps(tmp_path)
  retried = committed[0]
  assert 5 <= retried <= 8 and committed == sorted({retried, 8, 10})
  assert disk.attempts == {4: 1, retried: 1, 8: 1, 10: 2}
  for step in committed:
    state, restored = loop.load_checkpoint(config, str(tmp_path), step)
    assert restored == step and int(state.step) == step


@pytest.mark.parametrize("async_save", [True, False])
def test_a_lasting_fault_stops_at_once_with_one_line(
    tmp_path, monkeypatch, async_save):
  config = tiny_config(checkpoint_every_steps=2, log_every_steps=1,
                       keep_checkpoints=1, async_checkpointing=async_save)
  disk = FullDisk(monkeypatch, lambda step, n: step >= 4)
  with pytest.raises(checkpoint_saver.CheckpointSaveError) as error:
    loop.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  assert "\n" not in message
  match = re.match(
      r"saving the checkpoint of step 6 to (\S+) failed \(3 attempts "
      r"since step 4\): OSError: \[Errno 28\] No space left on device: "
      r"'\S+\. Stopping\. The checkpoints saved before \(2\) are "
      r"intact", message)
  assert match, message
  assert match.group(1) == os.path.join(str(tmp_path), "checkpoints", "6")
  # One attempt per step from step 4 on; step 7 was never trained.
  assert disk.attempts == {2: 1, 4: 1, 5: 1, 6: 1}
  assert max(r["step"] for r in metrics_io.read_metrics(str(tmp_path))) == 6
  # keep_checkpoints=1: step 2 was to go once step 4 was saved; it stays.
  assert committed_steps(tmp_path) == [2]
  state, restored = loop.load_checkpoint(config, str(tmp_path))
  assert restored == 2 and int(state.step) == 2
