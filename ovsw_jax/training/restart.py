"""The guard against a silent restart from step 0 in a used workdir.

A workdir whose checkpoints are all gone or set aside as unreadable
(``<step>.unreadable``) but which still holds the run's record
(its metric files) must not start again at step 0 and overwrite that record
unless asked to: `check_fresh_start` refuses, and with
``restart_from_scratch`` moves the old metrics aside instead.
"""

from __future__ import annotations

from etils import epath

from ovsw_jax.training import checkpointing
from ovsw_jax.training import metrics_io
from ovsw_jax.training import workdir as workdir_lib

FLAG = "--config.restart_from_scratch=True"


class RestartRefusedError(RuntimeError):
  """A used workdir has no readable checkpoint and no restart was asked for."""


def previous_run_files(workdir: str) -> list[epath.Path]:
  """The files of an earlier run: its metric files, set-aside checkpoints."""
  found = metrics_io.metric_files(workdir)
  ckpt_dir = epath.Path(workdir_lib.checkpoint_dir(workdir))
  if ckpt_dir.exists():
    found += sorted(p for p in ckpt_dir.iterdir()
                    if checkpointing.UNREADABLE_SUFFIX in p.name)
  return found


def _aside_name(path: epath.Path) -> epath.Path:
  target, n = path.parent / f"{path.name}.before_restart", 1
  while target.exists():
    target, n = path.parent / f"{path.name}.before_restart{n}", n + 1
  return target


def check_fresh_start(workdir: str, restart_from_scratch: bool,
                      is_chief: bool = True) -> None:
  """Lets a run start at step 0 in ``workdir`` only if nothing would be lost.

  Args:
    workdir: the run's workdir (no readable checkpoint was found in it).
    restart_from_scratch: the config's flag; True moves the old metrics
      aside (``metrics/`` to ``metrics.before_restart/``, a legacy
      ``metrics.jsonl`` to ``metrics.jsonl.before_restart``) and lets the
      run start.
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
        f"files ({', '.join(p.name for p in found)}); refusing to restart "
        f"at step 0 over them. Pass {FLAG} to start again (the old metrics "
        "are kept beside them as *.before_restart), or use a new --workdir.")
  if not is_chief:
    return
  root = epath.Path(workdir)
  for name in (metrics_io.LEGACY_METRICS_FILE, metrics_io.METRICS_DIR):
    path = root / name
    if path.exists():
      path.rename(_aside_name(path))
