"""TensorBoard event files without TensorFlow, through tensorboardX.

tensorboardX is a maintained pure-Python event writer: it writes local
paths and ``gs://`` (through google-cloud-storage). Each logged key becomes
a scalar; keys such as ``flip_rate/<layer>`` and ``silent_fraction/<layer>``
share a prefix, which TensorBoard shows as one group of per-layer charts.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Mapping, Optional

from absl import logging

TENSORBOARD_DIR = "tensorboard"


class ScalarWriter:
  """Writes a record's numeric values as TensorBoard scalars at a step."""

  def __init__(self, logdir: str, purge_step: Optional[int] = None):
    """Opens an event file in ``logdir`` (needs tensorboardX).

    Args:
      logdir: a local or ``gs://`` directory.
      purge_step: the first step this run writes when it resumes. A killed
        run's file holds steps past the checkpoint that the resumed run
        writes again; this writes a SessionLog START at ``purge_step``, by
        which TensorBoard hides the older events of steps >= it.
    """
    tensorboardX = _import_tensorboardx()
    # tensorboardX names a file by the second it opens and truncates an
    # existing one: a second writer within that second (a resume, an
    # eval_only run) would wipe the first file. The nanoseconds keep the
    # names apart, and in the order TensorBoard reads them.
    self._writer = tensorboardX.SummaryWriter(
        logdir=logdir, purge_step=purge_step,
        filename_suffix=f".{time.time_ns()}")

  def write(self, step: int, record: Mapping[str, Any]) -> None:
    for key, value in record.items():
      if key == "step" or isinstance(value, bool) or not isinstance(
          value, (int, float)):
        continue
      self._writer.add_scalar(key, value, global_step=int(step))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _import_tensorboardx():
  """tensorboardX, imported without torch unless torch is loaded already.

  tensorboardX imports torch whenever it is installed (to accept torch
  tensors; these scalars are Python floats), which added 1.5 s to the start
  of every run on a machine with torch (Colab, the test extra). A None entry
  in sys.modules makes its ``import torch`` fail as if torch were absent.
  The entry is process-wide for the import's duration, so the writer is
  made on the main thread before training starts (`create_writer`). A
  tensorboardX that cannot import without torch is imported again with it.
  """
  if "torch" in sys.modules or "tensorboardX" in sys.modules:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX
  sys.modules["torch"] = None
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX
  except ImportError:
    for name in [m for m in sys.modules if m.split(".")[0] == "tensorboardX"]:
      del sys.modules[name]  # half-imported: import it afresh below
  finally:
    del sys.modules["torch"]
  import tensorboardX  # pylint: disable=g-import-not-at-top,reimported
  return tensorboardX


def create_writer(workdir: os.PathLike | str,
                  purge_step: Optional[int] = None) -> Optional[ScalarWriter]:
  """A writer for ``workdir/tensorboard`` (see `ScalarWriter`), or None
  without tensorboardX."""
  logdir = os.fspath(workdir).rstrip("/") + "/" + TENSORBOARD_DIR
  try:
    return ScalarWriter(logdir, purge_step)
  except ImportError as e:
    logging.info("TensorBoard summaries off (%s); pip install tensorboardX "
                 "(or ovsw_jax[tensorboard]) to write them.", e)
    return None
