"""The log window: per-step device metrics and timing between two log records."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np


class LogWindow:
  """Per-step device metrics and timing since the last log record.

  The metrics stay on the device until the log step, then come back in one
  transfer; evaluation and checkpointing time (``pause``) is excluded from
  images/s.
  """

  def __init__(self):
    self.steps: list[int] = []
    self.metrics: list[dict[str, jax.Array]] = []
    self.extra: dict[str, jax.Array] = {}
    self.start, self.images, self.pause = time.time(), 0, 0.0

  def fetch(self) -> tuple[list[int], dict[str, np.ndarray], dict[str, Any],
                           float, int]:
    """(steps, stacked metrics, extra values, seconds, images); resets."""
    metrics, extra = jax.device_get((self.metrics, self.extra))
    stacked = {k: np.stack([m[k] for m in metrics]) for k in metrics[0]
               } if metrics else {}
    result = (self.steps, stacked, extra,
              time.time() - self.start - self.pause, self.images)
    self.__init__()
    return result
