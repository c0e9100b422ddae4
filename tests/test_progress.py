"""The per-epoch progress bar draws on a terminal only."""

import io
import sys

from ovsw_jax.training import progress


class _Stream(io.StringIO):

  def __init__(self, tty: bool):
    super().__init__()
    self._tty = tty

  def isatty(self) -> bool:
    return self._tty


def _drawn(monkeypatch, tty: bool, enabled: bool = True) -> str:
  stream = _Stream(tty)
  monkeypatch.setattr(sys, "stderr", stream)
  bar = progress.EpochProgress(steps_per_epoch=4, num_epochs=2,
                               enabled=enabled)
  for step in range(1, 5):
    bar.start_step(step)
    bar.update()
  bar.end_epoch()
  return stream.getvalue()


def test_the_bar_draws_on_a_terminal(monkeypatch):
  assert "epoch 1/2" in _drawn(monkeypatch, tty=True)


def test_no_bar_in_a_redirected_log_or_when_disabled(monkeypatch):
  # With 2> log, carriage-return redraws would bury the log lines.
  assert _drawn(monkeypatch, tty=False) == ""
  assert _drawn(monkeypatch, tty=True, enabled=False) == ""
