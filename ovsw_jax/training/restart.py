"""The guard against a silent restart from step 0 in a used workdir.

A workdir whose checkpoints are all gone or set aside as unreadable
(``<step>.unreadable``) but which still holds the run's record
(metrics.jsonl) must not start again at step 0 and overwrite that record
unless asked to: `check_fresh_start` refuses, and with
``restart_from_scratch`` moves the old metrics aside instead.
"""

from __future__ import annotations

import os

from ovsw_jax.training import checkpointing
from ovsw_jax.training import metrics_io
from ovsw_jax.training import workdir as workdir_lib

FLAG = "--config.restart_from_scratch=True"


class RestartRefusedError(RuntimeError):
  """A used workdir has no readable checkpoint and no restart was asked for."""


def previous_run_files(workdir: str) -> list[str]:
  """The files of an earlier run: metrics.jsonl, set-aside checkpoints."""
  found = []
  metrics = os.path.join(workdir, metrics_io.METRICS_FILE)
  if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
    found.append(metrics)
  ckpt_dir = workdir_lib.checkpoint_dir(workdir)
  if os.path.isdir(ckpt_dir):
    found += sorted(
        os.path.join(ckpt_dir, name) for name in os.listdir(ckpt_dir)
        if checkpointing.UNREADABLE_SUFFIX in name)
  return found


def _aside_name(path: str) -> str:
  target, n = f"{path}.before_restart", 1
  while os.path.exists(target):
    target, n = f"{path}.before_restart{n}", n + 1
  return target


def check_fresh_start(workdir: str, restart_from_scratch: bool,
                      is_chief: bool = True) -> None:
  """Lets a run start at step 0 in ``workdir`` only if nothing would be lost.

  Args:
    workdir: the run's workdir (no readable checkpoint was found in it).
    restart_from_scratch: the config's flag; True moves metrics.jsonl aside
      (to ``metrics.jsonl.before_restart``) and lets the run start.
    is_chief: only process 0 moves files.

  Raises:
    RestartRefusedError: the workdir holds an earlier run's files and
      ``restart_from_scratch`` is False.
  """
  found = previous_run_files(workdir)
  if not found:
    return
  if not restart_from_scratch:
    raise RestartRefusedError(
        f"{workdir} has no readable checkpoint but holds an earlier run's "
        f"files ({', '.join(os.path.basename(f) for f in found)}); refusing "
        f"to restart at step 0 over them. Pass {FLAG} to start again (the "
        "old metrics are kept as metrics.jsonl.before_restart), or use a "
        "new --workdir.")
  metrics = os.path.join(workdir, metrics_io.METRICS_FILE)
  if is_chief and metrics in found:
    os.rename(metrics, _aside_name(metrics))
