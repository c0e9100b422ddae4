"""ovsw_jax.summary: counts equal hand counts, packed sizes the export's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ovsw_jax
from ovsw_jax import models
from ovsw_jax.deploy import export
from ovsw_jax.deploy import format as format_lib
from ovsw_jax.summary import main
from ovsw_jax.summary import summary


def _resnet18_hand_counts():
  """Binary params and MACs of resnet18_1w1a at 224x224, stage by stage."""
  binary = macs = 0
  for i, (width, hw) in enumerate(zip((64, 128, 256, 512), (56, 28, 14, 7))):
    first_in = width if i == 0 else width // 2
    kernels = [9 * first_in * width] + [9 * width * width] * 3
    binary += sum(kernels)
    macs += sum(kernels) * hw * hw
  # Stem 7x7 at 112x112, three 1x1 downsamples, fc.
  float_macs = (49 * 3 * 64 * 112**2 + 64 * 128 * 28**2 + 128 * 256 * 14**2
                + 256 * 512 * 7**2 + 512 * 1000)
  return binary, macs, float_macs


def test_cresnet20_counts_equal_hand_counts():
  s = summary(models.get_model("cresnet20_1w1a", 10), (32, 32, 3))
  # 16, 32, 64 wide stages of six 3x3 binary convs at 32, 16 and 8 pixels.
  stage_kernels = [[9 * 16 * 16] * 6, [9 * 16 * 32] + [9 * 32 * 32] * 5,
                   [9 * 32 * 64] + [9 * 64 * 64] * 5]
  binary = sum(map(sum, stage_kernels))
  macs = sum(sum(k) * hw * hw for k, hw in zip(stage_kernels, (32, 16, 8)))
  # Stem conv 3x3x3x16, 19 BNs (2 params each), bn2 (64), fc 64x10 + 10.
  floats = 432 + 2 * (16 + 6 * 16 + 6 * 32 + 6 * 64) + 2 * 64 + 650
  assert s.total("binary_params") == binary == 267_264
  assert s.total("float_params") == floats
  assert s.total("binary_macs") == macs == 40_108_032
  assert s.total("float_macs") == 432 * 32 * 32 + 640
  conv = next(r for r in s.rows if r.name == "layer3_0/conv2")
  assert (conv.kind, conv.output_shape, conv.weight_bits, conv.input_bits) == (
      "BinaryConv", (8, 8, 64), 1, 1)
  # 64 out channels x 9 taps x 2 words (64 inputs), tap sums, scale.
  assert conv.packed_bytes == 4 * (64 * 9 * 2 + 9 * 64 + 64)
  # Plus the BatchNorms' running means and variances.
  assert s.total("training_bytes") == 4 * (binary + floats + 2 * (
      16 + 6 * 16 + 6 * 32 + 6 * 64 + 64))


def test_resnet18_counts_equal_hand_counts():
  s = summary(models.get_model("resnet18_1w1a", 1000), (224, 224, 3))
  binary, macs, float_macs = _resnet18_hand_counts()
  assert s.total("binary_params") == binary == 10_985_472
  assert s.total("binary_macs") == macs == 1_676_279_808
  assert s.total("float_macs") == float_macs
  assert s.total("binary_params") + s.total("float_params") == 11_690_536


def test_reactnet_rows_hold_rprelu_and_shifts():
  s = ovsw_jax.summary(models.get_model("reactnet_a", 1000), (64, 64, 3))
  assert s.total("binary_params") == 28_253_184
  assert s.total("binary_params") + s.total("float_params") == 29_343_592
  kinds = {r.kind for r in s.rows}
  assert {"ReActConv", "RPReLU", "LearnableBias"} <= kinds
  # RPReLU's row holds its two shifts and its slope.
  row = next(r for r in s.rows if r.name == "block0/rprelu1")
  assert row.float_params == 3 * 32


def test_packed_sizes_equal_the_exported_files(tmp_path):
  # One block a stage: every layer kind, a third of the export's work.
  model = models.get_model("cresnet20_1w1a", 10, stage_sizes=(1, 1, 1))
  shape = (32, 32, 3)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0),
                                  jnp.zeros((1, *shape)))
  # The options must be the model's: load checks the file against them.
  packed = export.export_model(model, variables, model_name="cresnet20_1w1a",
                               model_options={"stage_sizes": [1, 1, 1]},
                               image_shape=shape)
  format_lib.save(packed, tmp_path / "r20.npz")
  loaded = format_lib.load(tmp_path / "r20.npz")
  s = summary(model, shape)
  rows = {r.name: r for r in s.rows}
  for name in loaded.header["binary_layers"]:
    stored = sum(a.nbytes for a in loaded.layers[name].values())
    assert rows[name].packed_bytes == stored, name
  stored = sum(a.nbytes for arrays in loaded.layers.values()
               for a in arrays.values())
  stored += sum(np.asarray(a).nbytes for a in jax.tree.leaves(
      loaded.variables))
  assert s.total("packed_bytes") == stored
  assert s.total("training_bytes") == export.float32_bytes(variables)


def test_cli_prints_the_table_and_totals(capsys):
  assert main(["--model=cresnet20_1w1a"]) == 0
  out = capsys.readouterr().out
  assert "layer1_0/conv1" in out and "267,264" in out
  assert "compression ratio 13.75x" in out
  with pytest.raises(SystemExit):
    main(["--model=nope"])


def test_a_summary_displays_its_table_in_a_repl_and_a_notebook():
  s = summary(models.get_model("cresnet20_1w1a", 10, stage_sizes=(1, 1, 1)),
              (32, 32, 3))
  text = s.table()
  assert repr(s) == str(s) == text
  assert "LayerRow(" not in repr(s)
  assert text.splitlines()[-1].startswith("params: ")
  assert "packed weights" in text and "container" in text
  # What IPython shows: the text table in a terminal, an HTML table in a
  # notebook, one <tr> a layer plus the head and the totals.
  # IPython comes with the test extras' ipykernel.
  from IPython.core import interactiveshell  # pylint: disable=g-import-not-at-top
  shown, _ = interactiveshell.InteractiveShell.instance(
      ).display_formatter.format(s)
  assert shown["text/plain"] == text
  page = shown["text/html"]
  assert page.count("<tr>") == len(s.rows) + 2
  for row in s.rows:
    assert f">{row.name}</td>" in page
  assert f">{s.total('binary_params'):,}</th>" in page
  assert "compression ratio" in page
