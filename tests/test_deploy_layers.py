"""benchmarks/lib/deploy_layers at a tiny size: the per-layer table's rows
and arithmetic (cResNet20, random weights, one timed call per layer)."""

import numpy as np
import pytest

from benchmarks.lib import deploy_files
from benchmarks.lib import deploy_layers
from ovsw_jax.deploy import export
from ovsw_jax.deploy import format as packed_format
from ovsw_jax.deploy import native


@pytest.fixture(scope="module")
def table_and_packed():
  name = "cresnet20_1w1a"
  model, shape, _ = deploy_files.model_setup(name)
  variables = deploy_files.random_variables(model, shape, 0)
  packed = export.export_model(model, variables, model_name=name,
                               model_options={}, image_shape=shape)
  return deploy_layers.layer_table(packed, shape, reps=1), packed


def test_rows_are_the_models_layers(table_and_packed):
  table, packed = table_and_packed
  binary = [n for n, e in packed.header["layers"].items()
            if e["kind"] == packed_format.BINARY_CONV]
  rows = table["layers"]
  assert sorted(r["name"] for r in rows
                if r["kind"] == "binary_conv") == sorted(binary)
  assert len(binary) == 18  # cResNet20: 3 stages x 3 blocks x 2 convs.
  assert [r["name"] for r in rows if r["kind"] == "float"] == ["conv1", "fc"]


def test_binary_ops_and_shares(table_and_packed):
  table, _ = table_and_packed
  rows = {r["name"]: r for r in table["layers"]}
  # 32x32 output, 16 out channels, 3x3 taps of 16 input channels.
  assert rows["layer1_0/conv1"]["binary_ops"] == 32 * 32 * 16 * 9 * 16
  # Stride 2: 16x16 output, 32 out channels, 16 input channels.
  assert rows["layer2_0/conv1"]["binary_ops"] == 16 * 16 * 32 * 9 * 16
  ops = sum(r.get("binary_ops", 0) for r in table["layers"])
  assert table["binary_ops"] == ops
  peak = table["popcount_peak"]["bit_ops_per_s"]
  jax_peak = table["popcount_peaks"]["jax"]["bit_ops_per_s"]
  for r in rows.values():
    if r["kind"] == "binary_conv":
      assert np.isclose(r["binary_ops_per_s"], r["binary_ops"] / r["ms"] * 1e3)
      assert np.isclose(r["peak_fraction"], r["binary_ops_per_s"] / peak)
      assert np.isclose(r["jax_peak_fraction"],
                        r["binary_ops"] / r["jax_ms"] * 1e3 / jax_peak)
  float_ms = rows["conv1"]["ms"] + rows["fc"]["ms"]
  assert np.isclose(table["float_layers_ms"], float_ms)
  assert np.isclose(table["float_share_of_whole"],
                    float_ms / table["whole_forward_ms"])
  assert np.isclose(table["binary_convs_jax_ms"],
                    sum(r["jax_ms"] for r in rows.values()
                        if r["kind"] == "binary_conv"))
  # The peak is the default backend's, on its own word type.
  assert table["backend"] == ("native" if native.available() else "jax")
  word = {"native": "uint64", "jax": "uint32"}[table["backend"]]
  assert peak > 0 and table["popcount_peak"]["word"] == word
  assert table["popcount_peaks"]["jax"]["word"] == "uint32"
  assert table["popcount_peaks"]["jax"]["bits_per_call"] == int(np.prod(
      table["popcount_peaks"]["jax"]["shape"])) * 32
