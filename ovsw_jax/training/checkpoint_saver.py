"""Checkpoint saves that cannot fail silently: bounded retries, then a stop.

orbax writes an asynchronous save in background threads; a storage error
there is logged and kept until the next ``wait_until_finished`` (which the
next save calls), so on its own the loop would train on for a whole
checkpoint interval, then stop with a stack trace. `CheckpointSaver` looks
at the save in flight after every step (`check`: a flag read while it is
in flight) and settles it before the next save:

* a failed save is tried again, ``attempts`` times in all, each attempt
  awaited so that its outcome is known before training goes on. The failed
  step's arrays were donated to the steps trained since, so an attempt saves
  the current state at the current step (a checkpoint as good or newer).
  Attempts go to distinct steps (one more step is trained between two):
  the writes of a failed attempt that are still running would collide with
  an attempt at the same step directory. Only the run's last save, with no
  step left to train, is tried again at its own step, after ``backoff_s``
  (doubled each time) for those writes to end;
* when every attempt failed, `CheckpointSaveError` says in one line the
  step, the path and the cause: the run stops at most ``attempts - 1``
  steps after the first failure. Earlier checkpoints are untouched: orbax
  deletes the ones a save replaces only after that save is committed.

Every exception of a save counts: storage errors come as many types
(OSError, tensorstore's ValueErrors, RuntimeErrors), and a permanent one
just fails each attempt. With several processes the save in flight is
settled at the next save and at the end, where every process waits, and
the processes agree (an all-gather) on whether it failed, so all of them
retry or stop together.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from ovsw_jax.training import checkpointing

# (items, meta, metrics) of a checkpoint at a given step.
SaveArgs = tuple[Any, Mapping[str, Any], Optional[Mapping[str, float]]]
SaveArgsFn = Callable[[], SaveArgs]

ATTEMPTS = 3
BACKOFF_S = 1.0


def _await_failed_writes(manager: ocp.CheckpointManager,
                         timeout_s: float = 600.0) -> None:
  """Waits for the writes a failed asynchronous save left running.

  orbax stops waiting at the first failed write of a save; the others go on
  in their threads. Its AsyncCheckpointer keeps them (a private attribute,
  read defensively: without it only the backoff waits).
  """
  checkpointer = getattr(manager, "_checkpointer", None)
  writes = getattr(getattr(checkpointer, "_async_manager", None),
                   "_commit_futures", None) or ()
  for write in writes:
    try:
      write.result(timeout=timeout_s)
    except Exception:  # pylint: disable=broad-except
      pass  # Its failure is the one being retried, or comes from it.


class CheckpointSaveError(RuntimeError):
  """Every attempt to save a checkpoint failed."""


class CheckpointSaver:
  """Saves through an orbax CheckpointManager; retries, then stops loudly.

  Call `save` at each save step, `check` after every step and
  `wait_until_finished` right after the last save.
  """

  def __init__(self, manager: ocp.CheckpointManager,
               final_step: Optional[int] = None,
               attempts: Optional[int] = None,
               backoff_s: Optional[float] = None):
    """Wraps ``manager`` (from `checkpointing.create_manager`).

    Args:
      manager: the run's checkpoint manager.
      final_step: the run's last step: no step follows it to try again at.
      attempts: tries per checkpoint, the first one included (>= 1);
        default `ATTEMPTS`.
      backoff_s: the wait before trying the last save again at its step,
        doubled each time; default `BACKOFF_S`.
    """
    self.manager = manager
    self.final_step = final_step
    self.attempts = ATTEMPTS if attempts is None else attempts
    self.backoff_s = BACKOFF_S if backoff_s is None else backoff_s
    if self.attempts < 1:
      raise ValueError(f"attempts={self.attempts}: at least one is needed")
    self._single = jax.process_count() == 1
    self._pending: Optional[int] = None  # The step of the save in flight.
    self._last: Optional[tuple[int, SaveArgsFn]] = None
    # The failures of the checkpoint being tried: (first step, count).
    self._failures: Optional[tuple[int, int]] = None
    # Try again at the first step after this one (a failed step's writes
    # may still run in its directory).
    self._due: Optional[int] = None

  @property
  def directory(self):
    return self.manager.directory

  def save(self, step: int, args_fn: SaveArgsFn) -> None:
    """Settles the save in flight, then starts the save of ``step``.

    Args:
      step: the step the state is at.
      args_fn: returns ``(items, meta, metrics)`` of the current state.

    Raises:
      CheckpointSaveError: the last allowed attempt failed.
    """
    last = step == self.final_step
    self._settle(step, args_fn, last)
    if self._due is not None and step > self._due:
      self._attempt(step, args_fn, last)
      return
    self._last = (step, args_fn)
    try:
      if checkpointing.save(self.manager, step, *args_fn()):
        self._pending = step
    except Exception as e:  # pylint: disable=broad-except
      self._failed(step, e, step, args_fn, last)

  def check(self, step: int, args_fn: SaveArgsFn) -> None:
    """After a training step: tries again if a save failed.

    Costs a flag read while a save is in flight, nothing otherwise. With
    several processes only a failure already agreed on is acted on here.
    """
    if self._due is not None:
      if step > self._due:
        self._attempt(step, args_fn, last=False)
    elif (self._pending is not None and self._single
          and not self.manager.is_saving_in_progress()):
      self._settle(step, args_fn, last=False)

  def wait_until_finished(self) -> None:
    """Waits for the last save (at the end, or on preemption); retries it.

    Call it right after a `save`: an attempt saves that save's state again,
    which must still be the current one.
    """
    if self._last is None:
      self.manager.wait_until_finished()
      return
    step, args_fn = self._last
    self._settle(step, args_fn, last=True)
    if self._due is not None:
      self._attempt(step, args_fn, last=True)

  def _settle(self, step: int, args_fn: SaveArgsFn, last: bool) -> None:
    """Waits for the save in flight; on a failure, tries again at ``step``."""
    failed_step, error = self._pending, None
    self._pending = None
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      error = e
    if self._agree(error is not None):
      if error is None:
        error = RuntimeError("the save failed on another process")
      self._failed(step if failed_step is None else failed_step, error,
                   step, args_fn, last)
    elif failed_step is not None:
      self._failures = None

  def _agree(self, failed: bool) -> bool:
    """Whether the save failed on any process (all processes call this)."""
    if self._single:
      return failed
    return bool(np.any(multihost_utils.process_allgather(np.int32(failed))))

  def _failed(self, failed_step: int, error: Exception, step: int,
              args_fn: SaveArgsFn, last: bool) -> None:
    """Counts a failed attempt; tries again, now or at the next step.

    Raises:
      CheckpointSaveError: it was the last allowed attempt.
    """
    last = last or step == self.final_step
    first, count = self._failures or (failed_step, 0)
    self._failures = (first, count + 1)
    cause = checkpointing.short_error(error)
    if count + 1 >= self.attempts:
      self._stop(first, failed_step, cause)
    # A failed save has dropped the checkpoints it was to replace from the
    # manager's list (not from storage): list them again.
    self.manager.reload()
    where = ("at the next step" if step == failed_step and not last
             else f"at step {step}")
    logging.warning(
        "Saving the checkpoint of step %d in %s failed (%s); trying again %s "
        "(attempt %d of %d).", failed_step, self.manager.directory, cause,
        where, count + 2, self.attempts)
    self._due = failed_step
    if step != failed_step or last:
      self._attempt(step, args_fn, last)

  def _attempt(self, step: int, args_fn: SaveArgsFn, last: bool) -> None:
    """One more attempt, at ``step``, awaited."""
    self._due = None
    if last:  # The same step directory: let the failed writes end first.
      _await_failed_writes(self.manager)
      time.sleep(self.backoff_s * 2 ** (self._failures[1] - 1))
    error = None
    try:
      checkpointing.save(self.manager, step, *args_fn())
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      error = e
    if self._agree(error is not None):
      self._failed(step, error or RuntimeError(
          "the save failed on another process"), step, args_fn, last)
      return
    self._failures = None
    self._last = (step, args_fn)

  def _stop(self, first: int, step: int, cause: str) -> None:
    self.manager.reload()
    kept = ", ".join(map(str, self.manager.all_steps())) or "none"
    since = "" if first == step else f" since step {first}"
    raise CheckpointSaveError(
        f"saving the checkpoint of step {step} to "
        f"{self.manager.directory}/{step} failed ({self.attempts} attempts"
        f"{since}): {cause}. Stopping. The checkpoints saved before ({kept}) "
        "are intact; fix the storage (space, permissions, network) and rerun "
        "the same command to resume.")
