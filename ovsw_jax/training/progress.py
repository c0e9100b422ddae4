"""The per-epoch tqdm progress bar of the training loop (process 0 only)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import tqdm


class EpochProgress:
  """One tqdm bar per epoch; the latest log values in its postfix.

  Args:
    steps_per_epoch: the bar's length.
    num_epochs: for the bar's label ('epoch 3/10').
    enabled: False draws nothing (other processes, ``progress_bar=False``).
      True draws on a terminal only: with stderr redirected to a file, the
      bar's carriage returns would bury the log lines (tqdm's
      ``disable=None``).
  """

  def __init__(self, steps_per_epoch: int, num_epochs: int, enabled: bool):
    self.steps_per_epoch = steps_per_epoch
    self.num_epochs = num_epochs
    self.enabled = enabled
    self._bar: Optional[tqdm.tqdm] = None

  def start_step(self, step: int) -> None:
    """Opens the epoch's bar before its first step (or a resumed one)."""
    if self._bar is None:
      self._bar = tqdm.tqdm(
          total=self.steps_per_epoch,
          initial=(step - 1) % self.steps_per_epoch,
          desc=f"epoch {(step - 1) // self.steps_per_epoch + 1}/"
               f"{self.num_epochs}",
          unit="step", leave=False,
          disable=None if self.enabled else True)

  def update(self) -> None:
    self._bar.update(1)

  def show(self, record: Mapping[str, Any]) -> None:
    """Puts a log record's loss, top-1 and lr in the postfix."""
    self._bar.set_postfix(loss=f"{float(record['train_loss']):.4f}",
                          top1=f"{float(record['train_top1']):.3f}",
                          lr=f"{float(record['lr']):.4g}")

  def end_epoch(self) -> None:
    self.close()

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
