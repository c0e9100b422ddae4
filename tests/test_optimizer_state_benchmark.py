"""The optimizer-state budget of ovsw(): <= 9 bytes per binary weight."""

import pytest

from benchmarks import optimizer_state


def test_ovsw_state_is_nine_bytes_per_binary_weight():
  result = optimizer_state.state_bytes_per_binary_weight("cresnet20_1w1a")
  assert result["binary_weights"] == 267_264
  assert result["state_bytes_per_binary_weight"] == pytest.approx(9.0)
  assert result["breakdown_bytes_per_binary_weight"] == {
      "SilenceAwarenessDecayState": pytest.approx(5.0),  # f32 tracker + bool
      "TraceState": pytest.approx(4.0),                   # f32 momentum
  }
  # One float32 AGS ratio and one silent fraction per binary layer (18 + 18).
  assert result["per_layer_diagnostic_bytes"] == 2 * 18 * 4
