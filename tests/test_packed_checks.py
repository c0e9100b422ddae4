"""A damaged packed file is refused at load, naming the array and its shape.

`format.load` checks the header's fields, the layer table against the model
the header names, every array's dtype and shape against what the header
implies (the word count for the channel count included) and the variables,
before any array reaches the native kernel. Each case below damages one
thing of a good file and expects `PackedFormatError` with the array (or
field) and the expected value in its message; a file whose values (not
shapes) are changed still loads, and both backends agree on it.
"""

import io
import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovsw_jax import deploy
from ovsw_jax import models
from ovsw_jax.deploy import bitpack
from ovsw_jax.deploy import export
from ovsw_jax.deploy import format as packed_format
from ovsw_jax.deploy import infer
from ovsw_jax.deploy import native

SHAPE = (8, 8, 3)
OPTIONS = {"stage_sizes": [1, 1, 1]}


@pytest.fixture(scope="module")
def good_arrays(tmp_path_factory):
  """The arrays of a good file of a small cResNet20 (BatchNorm folded, so
  every layer kind but binary_dense is there)."""
  model = models.get_model("cresnet20_1w1a", 10, **OPTIONS)
  v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *SHAPE)))
  rng = np.random.default_rng(0)
  # Both signs (packed weights hold both bits); BatchNorm variances > 0.
  v = jax.tree_util.tree_map_with_path(lambda p, s: jnp.asarray(
      rng.uniform(0.5, 1.5, s.shape) * (1 if "var" in jax.tree_util.keystr(p)
                                        else rng.choice([-1, 1], s.shape)),
      s.dtype), v)
  pm = export.export_model(model, v, model_name="cresnet20_1w1a",
                           model_options=OPTIONS, image_shape=SHAPE,
                           fold_batchnorm=True)
  path = tmp_path_factory.mktemp("packed") / "good.npz"
  packed_format.save(pm, path)
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def _header(arrays):
  return json.loads(arrays[packed_format.HEADER_KEY].tobytes())


def _with_header(arrays, header):
  out = dict(arrays)
  out[packed_format.HEADER_KEY] = np.frombuffer(json.dumps(header).encode(),
                                                np.uint8)
  return out


def _load(tmp_path, arrays):
  path = tmp_path / "m.npz"
  with open(path, "wb") as f:
    np.savez(f, **arrays)
  return packed_format.load(path)


W = "layers/layer1_0/conv1//w"
BN_VAR = "variables/params/conv1/kernel"


def _mutations(h):
  """name -> (arrays -> damaged arrays, what the error must say)."""

  def header_with(**changes):
    return lambda a: _with_header(a, {**_header(a), **changes})

  def layer_with(layer, **changes):
    def f(a):
      hd = _header(a)
      hd["layers"][layer] = {**hd["layers"][layer], **changes}
      return _with_header(a, hd)
    return f

  def array(key, value):
    return lambda a: {**a, key: value(a[key])}

  return {
      "w_one_word_short": (array(W, lambda x: x[:, :-1]),
                           r"layer1_0/conv1//w' is uint32 \(16, 8\); the "
                           r"header implies uint32 \(16, 9\)"),
      "w_words_for_more_channels": (
          array(W, lambda x: np.concatenate([x, x], 1)), r"uint32 \(16, 9\)"),
      "w_int64": (array(W, lambda x: x.astype(np.int64)),
                  r"is int64 \(16, 9\); the header implies uint32"),
      "tap_sums_transposed": (
          array("layers/layer1_0/conv1//tap_sums", lambda x: x.T),
          r"tap_sums' is int32 \(16, 3, 3\).*int32 \(3, 3, 16\)"),
      "mul_scalar": (array("layers/layer2_0/conv2//mul", lambda x: x[:1]),
                     r"conv2//mul' is float32 \(1,\).*float32 \(32,\)"),
      "w_sign_without_its_tap_sum": (
          array(W, lambda x: x ^ np.uint32(1)),
          r"tap_sums' is -?\d+ at tap \(0, 0\), channel 0; the signs in w "
          r"give -?\d+"),
      "w_unused_bits_set": (array(W, lambda x: x | np.uint32(1 << 31)),
                            r"layer1_0/conv1//w' has bits set past its 16 "
                            r"input channels"),
      "w_missing": (lambda a: {k: v for k, v in a.items() if k != W},
                    r"layer1_0/conv1//w' is missing.*uint32 \(16, 9\)"),
      "extra_layer_array": (
          lambda a: {**a, "layers/layer1_0/conv1//bias": np.zeros(16)},
          r"unexpected arrays \['bias'\]"),
      "float_variable_reshaped": (
          array(BN_VAR, lambda x: x.reshape(-1)),
          r"conv1/kernel' is float32 \(432,\).*float32 \(3, 3, 3, 16\)"),
      "float_variable_float64": (array(BN_VAR, lambda x: x.astype(
          np.float64)), r"is float64 .*float32 \(3, 3, 3, 16\)"),
      "version_2": (header_with(version=2), r"version 2; this ovsw_jax reads"),
      "version_string": (header_with(version="1"), r"version '1'"),
      "no_model": (lambda a: _with_header(a, {
          k: v for k, v in _header(a).items() if k != "model"}),
                   r"lacks 'model'"),
      "unknown_model": (header_with(model="resnet99"), r"model='resnet99'"),
      "model_option_unknown": (header_with(model_options={"width": 3}),
                               r"cannot be built.*width"),
      "other_stage_sizes": (header_with(model_options={
          "stage_sizes": [1, 2, 1]}), r"binary layers \['layer2_1/conv1'"),
      "num_classes_zero": (header_with(num_classes=0), r"num_classes=0"),
      "num_classes_other": (header_with(num_classes=11),
                            r"fc/bias' is float32 \(10,\); the header "
                            r"implies float32 \(11,\)"),
      "image_shape_bad": (header_with(image_shape=[8, -8, 3]),
                          r"image_shape=\[8, -8, 3\]"),
      "float_dtype_bad": (header_with(float_dtype="int8"),
                          r"float_dtype='int8'"),
      "layers_not_object": (header_with(layers=[1]), r"layers=\[1\]"),
      "kind_unknown": (layer_with("layer1_0/conv1", kind="xnor"),
                       r"kind 'xnor'; known kinds"),
      "kind_swapped": (layer_with("layer1_0/conv1", kind="bn_affine"),
                       r"'layer1_0/conv1' \(bn_affine\) is not"),
      "layer_not_in_model": (lambda a: _with_header(a, {**_header(a), "layers": {
          **_header(a)["layers"], "layer9/conv1": {"kind": "binary_conv"}}}),
                             r"'layer9/conv1' \(binary_conv\) is not"),
      "kernel_size": (layer_with("layer1_0/conv1", kernel_size=[1, 9]),
                      r"kernel_size=\[1, 9\]; model .* has \[3, 3\]"),
      "padding_shifted": (layer_with("layer1_0/conv1",
                                     padding=[[2, 0], [1, 1]]),
                          r"padding=\[\[2, 0\], \[1, 1\]\]; model"),
      "strides": (layer_with("layer2_0/conv1", strides=[1, 1]),
                  r"strides=\[1, 1\]; model .* has \[2, 2\]"),
      "in_features": (layer_with("layer1_0/conv1", in_features=1e9),
                      r"in_features=1000000000.0"),
      "fold_into_nothing": (layer_with("layer1_0/bn1", into="layer1_0/bn2"),
                            r"folded into 'layer1_0/bn2'"),
      "binary_layers_list": (header_with(binary_layers=["fc"]),
                             r"binary_layers \['fc'\]"),
      "header_not_json": (lambda a: {**a, packed_format.HEADER_KEY:
                                     np.frombuffer(b"{\xff", np.uint8)},
                          r"header is not JSON"),
      "header_a_list": (lambda a: {**a, packed_format.HEADER_KEY:
                                   np.frombuffer(b"[1]", np.uint8)},
                        r"not a JSON object"),
      "class_names_not_strings": (header_with(class_names=[1] * 10),
                                  r"class_names=\[1, 1.*a list of strings"),
      "class_names_too_few": (header_with(class_names=["a", "b"]),
                              r"class_names has 2 names for num_classes=10"),
      "stray_array": (lambda a: {**a, "weights": np.zeros(3)},
                      r"\['weights'\] are neither layers nor variables"),
      "variable_clash": (lambda a: {**a, "variables/params/conv1": np.ones(1)},
                         # Either order of the two keys is refused.
                         r"variables that clash|conv1/kernel' is missing"),
      "unknown_variable": (lambda a: {**a, "variables/params/xx": np.ones(1)},
                           r"unexpected variables \['params/xx'\]"),
  }


MUTATIONS = sorted(_mutations(None))


@pytest.mark.parametrize("name", MUTATIONS)
def test_damaged_file_is_refused_naming_what_is_wrong(name, good_arrays,
                                                      tmp_path):
  damage, pattern = _mutations(None)[name]
  with pytest.raises(deploy.PackedFormatError, match=pattern):
    _load(tmp_path, damage(good_arrays))


def _npz_with_member(arrays, key, data: bytes) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  out = io.BytesIO()
  with zipfile.ZipFile(buf) as src, zipfile.ZipFile(out, "w") as dst:
    for info in src.infolist():
      body = src.read(info)
      dst.writestr(info.filename,
                   data if info.filename == key + ".npy" else body)
  return out.getvalue()


def test_truncated_array_data_is_refused_before_numpy_reads_it(good_arrays,
                                                               tmp_path):
  # The member's .npy header still declares (16, 9): a bare reshape error
  # in np.load before; now the array and both sizes are named.
  buf = io.BytesIO()
  np.save(buf, good_arrays[W])
  npy = buf.getvalue()
  path = tmp_path / "t.npz"
  path.write_bytes(_npz_with_member(good_arrays, W, npy[:-20]))
  with pytest.raises(deploy.PackedFormatError,
                     match=r"layer1_0/conv1//w'.*uint32 \(16, 9\) \(576 "
                     r"bytes\) and the file holds 556"):
    packed_format.load(path)
  # A header declaring 4 TB is refused without allocating it.
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(buf, {
      "descr": "<u4", "fortran_order": False, "shape": (10**6, 10**6)})
  huge = buf.getvalue() + good_arrays[W].tobytes()
  path.write_bytes(_npz_with_member(good_arrays, W, huge))
  with pytest.raises(deploy.PackedFormatError,
                     match=r"\(1000000, 1000000\) \(4000000000000 bytes\)"):
    packed_format.load(path)


def test_changed_weights_still_load_and_both_backends_agree(good_arrays,
                                                            tmp_path):
  # Other weight signs, with their tap sums: a valid file (the native kernel
  # reads the bits, JAX's padding correction the tap sums).
  rng = np.random.default_rng(1)
  signs = bitpack.unpack_signs_np(good_arrays[W].reshape(16, 9, 1), 16)
  signs *= np.where(rng.uniform(size=signs.shape) < 0.5, -1.0, 1.0)
  arrays = dict(good_arrays)
  arrays[W], arrays[W[:-1] + "tap_sums"] = bitpack.pack_conv_kernel_np(
      signs.reshape(16, 3, 3, 16).transpose(1, 2, 3, 0))
  assert not np.array_equal(arrays[W], good_arrays[W])
  packed = _load(tmp_path, arrays)
  images = jnp.asarray(rng.standard_normal((2, *SHAPE)), jnp.float32)
  got = np.asarray(infer.make_predict_fn(packed, "jax")(images))
  assert np.isfinite(got).all()
  if native.available():
    np.testing.assert_array_equal(
        np.asarray(infer.make_predict_fn(packed, "native")(images)), got)
