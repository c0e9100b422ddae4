"""Checkpoints of a training run: orbax CheckpointManager, save, restore.

A checkpoint holds two items:

* ``state``: the arrays of the run (params, batch_stats, the full optimizer
  state -- SAD's trackers and previous signs included --, the step and the RNG
  key), saved with `StandardSave` and restored with the shardings of the
  target (`abstract_train_state` on the *current* mesh), not the saved ones:
  a run saved on N devices resumes on M (elastic restore; train.py checks
  that M divides the global batch before it restores anything);
* ``meta``: a small JSON dict (step, data position, epoch, ...). The data
  position is the step: the input pipeline is a pure function of (seed, step),
  so a resumed run restarts its iterator at ``start_step=step``.

Retention: the ``keep`` latest checkpoints, plus the one with the best
``best_metric`` (eval top-1) among those saved with metrics, via orbax's
preservation policies (``LatestN`` OR ``BestN(n=1)``).

Faults: orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save leaves no half checkpoint behind (the
temporary directory is ignored). If the latest committed checkpoint cannot be
read, `restore` logs a warning, moves it aside (``<step>.unreadable``) and
restores the one before it.
"""

from __future__ import annotations

import logging as std_logging
import os
from typing import Any, Mapping, Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

STATE = "state"
META = "meta"
UNREADABLE_SUFFIX = ".unreadable"


class UnreadableCheckpointsError(RuntimeError):
  """Checkpoints exist but none can be read.

  Attributes:
    errors: ``'step <n> (<Type: first line>)'`` per checkpoint tried.
  """

  def __init__(self, message: str, errors: list[str]):
    super().__init__(message)
    self.errors = errors


# orbax's error logs (each with a stack trace) of a failed save, which the
# trainer reports in one line of its own (`checkpoint_saver`).
_SAVE_FAILURE_LOGS = ("Failed to run", "raised an exception",
                      "Save Finalize thread", "Checkpointer failed")


class _OrbaxLogFilter(std_logging.Filter):
  """Drops orbax's INFO chatter (a dozen lines per save), its warning about
  checkpoints saved without metrics (only those after an eval have any), the
  one that a read-only manager's directory is read only, and its stack
  traces of a failed save."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    if record.levelno < std_logging.WARNING:
      return False
    message = record.getMessage()
    if record.levelno >= std_logging.ERROR and any(
        m in message for m in _SAVE_FAILURE_LOGS):
      return False
    # Read-only managers (evaluation, export) are meant to be read only.
    return ("did not provide metrics" not in message and
            "Given directory is read only" not in message)


def quiet_orbax_logs() -> None:
  """Keeps orbax's warnings and errors in the absl log, drops its INFO lines."""
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _OrbaxLogFilter) for f in absl_logger.filters):
    absl_logger.addFilter(_OrbaxLogFilter())


def create_manager(directory: str | os.PathLike[str],
                   keep: int = 3,
                   best_metric: Optional[str] = "eval_top1",
                   best_mode: str = "max",
                   async_save: bool = True,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """An orbax CheckpointManager for a training run's checkpoints.

  Args:
    directory: where the step directories go (created if missing).
    keep: how many of the most recent checkpoints to keep.
    best_metric: key of the metrics passed to `save` that ranks checkpoints;
      the best one is kept on top of the ``keep`` latest. None: no best.
    best_mode: 'max' or 'min'.
    async_save: write in a background thread (the step loop continues).
    read_only: never write or delete (for evaluation).

  Returns:
    An `ocp.CheckpointManager` with the items ``state`` and ``meta``.
  """
  if keep < 1:
    raise ValueError(f"keep={keep}: at least one checkpoint must be kept "
                     "(set --config.keep_checkpoints >= 1)")
  policies = [checkpoint_managers.LatestN(n=keep)]
  best_fn = None
  if best_metric is not None:
    best_fn = lambda metrics: float(metrics[best_metric])
    policies.append(checkpoint_managers.BestN(
        get_metric_fn=best_fn, reverse=(best_mode == "min"), n=1,
        keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      best_fn=best_fn,
      best_mode=best_mode,
      preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
      enable_async_checkpointing=async_save,
      # Step directories made before save() returns: a failed directory
      # creation then raises there, instead of leaving the save's writers
      # waiting for it in background threads (for minutes, at exit too).
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
      cleanup_tmp_directories=not read_only,
      read_only=read_only,
      save_interval_steps=0 if read_only else 1,
      create=not read_only,
  )
  path = epath.Path(directory)
  # absolute() would turn gs://b/run into <cwd>/gs:/b/run: only local paths
  # are made absolute.
  if "://" not in os.fspath(directory):
    path = path.absolute()
  return ocp.CheckpointManager(path, options=options,
                               item_names=(STATE, META))


def save(manager: ocp.CheckpointManager,
         step: int,
         state: Any,
         meta: Mapping[str, Any],
         metrics: Optional[Mapping[str, float]] = None) -> bool:
  """Saves ``state`` (a pytree of jax arrays) and ``meta`` at ``step``.

  Asynchronous when the manager is: returns once the arrays are copied off
  the devices. Saving a step that already exists is a no-op.

  Args:
    manager: from `create_manager`.
    step: the training step the state is at.
    state: pytree of arrays (e.g. ``{'params':..., 'opt_state':..., ...}``).
    meta: JSON-serialisable dict.
    metrics: e.g. ``{'eval_top1': 0.9}``, to rank checkpoints for "best".

  Returns:
    Whether a save was started.
  """
  if step in manager.all_steps():
    return False
  return manager.save(
      step,
      args=ocp.args.Composite(**{
          STATE: ocp.args.StandardSave(state),
          META: ocp.args.JsonSave(dict(meta)),
      }),
      metrics=None if metrics is None else {
          k: float(v) for k, v in metrics.items()},
      force=True)


def abstract_like(state: Any) -> Any:
  """`jax.ShapeDtypeStruct`s (with shardings) describing ``state``."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def short_error(e: BaseException) -> str:
  """``Type: first line`` of an error, without pybind/TensorStore reprs."""
  text = (str(e).splitlines() or [""])[0]
  for marker in (" <bound method", " <", "TensorStore({"):
    cut = text.find(marker)
    if cut > 0:
      text = text[:cut].rstrip(" :,(")
  # A first line that announces details on the next ones ends in ':'.
  return f"{type(e).__name__}: {text[:200].rstrip(' :')}"


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
  """Renames an unreadable step directory so orbax no longer lists it."""
  if jax.process_index() == 0:
    path = epath.Path(manager.directory) / str(step)
    target = path.parent / f"{path.name}{UNREADABLE_SUFFIX}"
    suffix = 1
    while target.exists():
      target = path.parent / f"{path.name}{UNREADABLE_SUFFIX}{suffix}"
      suffix += 1
    path.rename(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"ovsw_set_aside_{step}")
  manager.reload()


def restore(manager: ocp.CheckpointManager,
            abstract_state: Any,
            step: Optional[int] = None,
            set_aside_unreadable: bool = True,
            fall_back: bool = True
            ) -> Optional[tuple[Any, dict[str, Any], int]]:
  """Restores a checkpoint; falls back to older ones if it is unreadable.

  Args:
    manager: from `create_manager`.
    abstract_state: the target structure, e.g. ``abstract_like(state)``;
      arrays come back with its shardings.
    step: which step to restore; None: the latest. If it cannot be read, the
      next older checkpoints are tried in turn, with a warning for each.
    set_aside_unreadable: rename unreadable step directories to
      ``<step>.unreadable`` so that later saves at that step succeed and
      nothing tries them again. Off for read-only use.
    fall_back: False raises at the first unreadable checkpoint, without a
      warning: for a changed config, whose structure no older checkpoint
      holds either.

  Returns:
    ``(state, meta, step)``, or None if there is no checkpoint at all.

  Raises:
    UnreadableCheckpointsError: checkpoints exist but none can be read.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None
  if step is not None:
    if step not in steps:
      raise ValueError(f"no checkpoint at step {step} in {manager.directory}; "
                       f"available steps: {sorted(steps)}")
    steps = [s for s in steps if s <= step]
  errors = []
  for candidate in steps:
    try:
      restored = manager.restore(
          candidate,
          args=ocp.args.Composite(**{
              STATE: ocp.args.StandardRestore(abstract_state),
              META: ocp.args.JsonRestore(),
          }))
    except Exception as e:  # pylint: disable=broad-except
      # Orbax/tensorstore raise many types for a damaged directory (ValueError,
      # FileNotFoundError, JSON and tensorstore errors): any failure to read
      # means "try the one before".
      message = short_error(e)
      errors.append(f"step {candidate} ({message})")
      if not fall_back:
        raise UnreadableCheckpointsError(
            f"the checkpoint at step {candidate} in {manager.directory} "
            f"cannot be read: {message}", errors) from e
      older = [s for s in steps if s < candidate]
      logging.warning(
          "Checkpoint at step %d in %s is unreadable (%s); %s%s", candidate,
          manager.directory, message,
          f"renamed it to {candidate}{UNREADABLE_SUFFIX}; "
          if set_aside_unreadable else "",
          f"restoring the previous one (step {older[0]})." if older else
          "no older checkpoint is left.")
      if set_aside_unreadable:
        _set_aside(manager, candidate)
      continue
    return restored[STATE], dict(restored[META]), candidate
  aside = (f" (renamed to <step>{UNREADABLE_SUFFIX})"
           if set_aside_unreadable else "")
  raise UnreadableCheckpointsError(
      f"no readable checkpoint in {manager.directory}: "
      f"{'; '.join(errors)}{aside}. Restore them from a backup, or pass "
      "--config.restart_from_scratch=True to start again at step 0.",
      errors)
