"""Starting at step 0 in a workdir that holds an earlier run's files.

A workdir with no readable checkpoint but with an earlier run's record (its
metric files, its TensorBoard events beside its config.json, or checkpoints
set aside as unreadable, ``<step>.unreadable``) is one of two things:

* a run killed before its first checkpoint: nothing of it can be resumed,
  and its records end before the first step it would have saved at, or it
  wrote none (metric records are flushed before every save, so a run killed
  before its first flush has TensorBoard events only). The new run starts
  at step 0; the old records are moved aside, not overwritten;
* a run whose checkpoints were lost (set aside as unreadable, or removed
  after they were saved): its records reach a step it saved at. Starting
  again would silently throw away that training, which a backup might
  restore, so `check_fresh_start` refuses unless ``restart_from_scratch``
  is set.

Moved aside, with a ``.before_restart`` suffix (numbered if taken):
``metrics/`` (or a legacy ``metrics.jsonl``), ``tensorboard/``,
``config.json`` and ``config_history.jsonl``.
"""

from __future__ import annotations

from typing import Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from ovsw_jax.training import checkpointing
from ovsw_jax.training import config as config_lib
from ovsw_jax.training import metrics_io
from ovsw_jax.training import resume_guard
from ovsw_jax.training import schedules
from ovsw_jax.training import tensorboard
from ovsw_jax.training import workdir as workdir_lib

FLAG = "--config.restart_from_scratch=True"
ASIDE_SUFFIX = ".before_restart"
# What belongs to an earlier run's record, moved aside for a new one.
RUN_RECORD = (metrics_io.LEGACY_METRICS_FILE, metrics_io.METRICS_DIR,
              tensorboard.TENSORBOARD_DIR, workdir_lib.CONFIG_FILE,
              resume_guard.CONFIG_HISTORY_FILE)


class RestartRefusedError(RuntimeError):
  """A used workdir has no readable checkpoint and no restart was asked for."""


def previous_run_files(workdir: str) -> list[epath.Path]:
  """An earlier run's metric files, events folder, set-aside checkpoints."""
  found = metrics_io.metric_files(workdir)
  root = workdir_lib.workdir_path(workdir)
  events = root / tensorboard.TENSORBOARD_DIR
  # Events beside a config.json: a training run's (eval_only writes events
  # but never config.json). Named as the folder: the files' names say little.
  if ((root / workdir_lib.CONFIG_FILE).exists() and events.exists()
      and any(events.iterdir())):
    found.append(events)
  ckpt_dir = epath.Path(workdir_lib.checkpoint_dir(workdir))
  if ckpt_dir.exists():
    found += sorted(p for p in ckpt_dir.iterdir()
                    if checkpointing.UNREADABLE_SUFFIX in p.name)
  return found


def _aside_name(path: epath.Path) -> epath.Path:
  target, n = path.parent / f"{path.name}{ASIDE_SUFFIX}", 1
  while target.exists():
    target, n = path.parent / f"{path.name}{ASIDE_SUFFIX}{n}", n + 1
  return target


def _stopped_before_saving(workdir: str, found: list[epath.Path]
                           ) -> Optional[str]:
  """Where the earlier run stopped, if that proves it saved no checkpoint.

  Returns:
    e.g. "at step 20, before its first checkpoint (step 55)"; None when it
    may have saved one.
  """
  if any(checkpointing.UNREADABLE_SUFFIX in p.name for p in found):
    return None
  if all(p.name == tensorboard.TENSORBOARD_DIR for p in found):
    # Records are flushed before every save: none on disk, no save began.
    return "before writing its first records, so before its first checkpoint"
  unsaved = unsaved_run(workdir)
  if unsaved is None:
    return None
  return (f"at step {unsaved[0]}, before its first checkpoint "
          f"(step {unsaved[1]})")


def unsaved_run(workdir: str) -> Optional[tuple[int, int]]:
  """Whether the workdir's earlier run stopped before its first checkpoint.

  Its config.json gives the steps it saved at, its records the last step
  it reached. The records up to a save step are written before that save
  starts, so records that end before the first save step prove that no
  checkpoint was ever saved.

  Returns:
    ``(last recorded step, first save step)`` when the records end before
    the first save; None when they do not, or when it cannot be told (no
    config.json, records without a step count per epoch).
  """
  try:
    saved = workdir_lib.read_config(workdir)
    records = metrics_io.read_metrics(workdir)
  except (FileNotFoundError, ValueError):
    return None
  rates = [r["step"] / r["epoch"] for r in records
           if r.get("epoch") and r["step"] > 0]
  if not rates:
    return None
  steps_per_epoch = int(round(rates[0]))
  config = config_lib.default_config()
  try:
    config.update({k: v for k, v in saved.items()
                   if k in config_lib.CONFIG_KEYS})
    total = schedules.total_train_steps(config, steps_per_epoch)
    saves = schedules.plan_steps(config, steps_per_epoch, 0, total).saves
  except (TypeError, ValueError, KeyError):  # A config.json edited by hand.
    return None
  last = max(r["step"] for r in records)
  if saves and last < min(saves):
    return last, min(saves)
  return None


def check_fresh_start(workdir: str, restart_from_scratch: bool) -> None:
  """Lets a run start at step 0 in ``workdir`` only if nothing would be lost.

  Every process calls it. Process 0 alone reads the workdir, decides and
  moves the old records aside; the others take its verdict, after the moves
  (so none sees a half-moved workdir, nor the new run's first files).

  Args:
    workdir: the run's workdir (no readable checkpoint was found in it).
    restart_from_scratch: the config's flag: start again even over a run
      whose checkpoints were lost.

  Raises:
    RestartRefusedError: the workdir holds the record of a run that saved
      checkpoints which are gone or unreadable, and ``restart_from_scratch``
      is False.
  """
  refusal = None
  if jax.process_index() == 0:
    try:
      _set_aside_for_restart(workdir, restart_from_scratch)
    except RestartRefusedError as e:
      refusal = str(e)
  if jax.process_count() > 1:
    refused = bool(multihost_utils.broadcast_one_to_all(
        np.int32(refusal is not None)))
  else:
    refused = refusal is not None
  if refused:
    raise RestartRefusedError(refusal or (
        f"process 0 refused to restart at step 0 in {workdir} over an "
        "earlier run's files; its log says why and what to do."))


def _set_aside_for_restart(workdir: str, restart_from_scratch: bool) -> None:
  """`check_fresh_start`'s verdict and moves, on process 0."""
  found = previous_run_files(workdir)
  if not found:
    return
  stopped = _stopped_before_saving(workdir, found)
  if stopped is None and not restart_from_scratch:
    raise RestartRefusedError(
        f"{workdir} has no readable checkpoint but holds an earlier run's "
        f"files ({', '.join(p.name for p in found)}), which had saved "
        f"checkpoints; refusing to restart at step 0 over them. Restore the "
        f"checkpoints from a backup, pass {FLAG} to start again (the old "
        f"records are kept beside them as *{ASIDE_SUFFIX}), or use a new "
        "--workdir.")
  if stopped is not None:
    logging.warning(
        "The earlier run in %s stopped %s: starting again at step 0, with "
        "its records moved aside (*%s).", workdir, stopped, ASIDE_SUFFIX)
  root = workdir_lib.workdir_path(workdir)
  for name in RUN_RECORD:
    path = root / name
    if path.exists():
      path.rename(_aside_name(path))
