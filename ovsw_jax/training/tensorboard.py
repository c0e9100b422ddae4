"""TensorBoard event files without TensorFlow, through tensorboardX.

tensorboardX is a maintained pure-Python event writer: it writes local
paths and ``gs://`` (through google-cloud-storage). Each logged key becomes
a scalar; keys such as ``flip_rate/<layer>`` and ``silent_fraction/<layer>``
share a prefix, which TensorBoard shows as one group of per-layer charts.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from absl import logging

TENSORBOARD_DIR = "tensorboard"


class ScalarWriter:
  """Writes a record's numeric values as TensorBoard scalars at a step."""

  def __init__(self, logdir: str):
    """Opens an event file in ``logdir`` (needs tensorboardX)."""
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._writer = tensorboardX.SummaryWriter(logdir=logdir)

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


def create_writer(workdir: os.PathLike | str) -> Optional[ScalarWriter]:
  """A writer for ``workdir/tensorboard``, or None without tensorboardX."""
  logdir = os.fspath(workdir).rstrip("/") + "/" + TENSORBOARD_DIR
  try:
    return ScalarWriter(logdir)
  except ImportError as e:
    logging.info("TensorBoard summaries off (%s); pip install tensorboardX "
                 "(or ovsw_jax[tensorboard]) to write them.", e)
    return None
