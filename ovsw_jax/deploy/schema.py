"""What a packed file must hold, and the check of a loaded one against it.

The header names a model (`ovsw_jax.models`), its options, ``num_classes``
and ``image_shape``: together they imply the shape of every array in the
file. `check` builds that model abstractly (``jax.eval_shape`` of its init:
no weights, no compute; cached per header) and compares, before any array
reaches native code:

* the header's fields (`HEADER_FIELDS`: required ones present, every one of
  the right type; a field this version does not know is allowed, so newer
  optional fields slot in by adding a row);
* the layer table: every entry names a module of the model of the right
  kind, every binary layer of the model has one, a conv's ``in_features``,
  ``kernel_size``, ``strides`` and ``padding`` are the model's;
* every layer array's dtype and shape (`LAYER_ARRAYS`, one row per kind:
  e.g. a binary conv's ``w`` is uint32 ``(C_out, kh*kw*ceil(C_in/32))``,
  the word count for its channel count), with no array missing or extra;
* every float variable's dtype (the header's ``float_dtype``; BatchNorm
  float32) and shape, against the model's own variables.

A mismatch raises `PackedFormatError` naming the array (or field) and what
was expected.
"""

from __future__ import annotations

import json
import numbers
from typing import Any, Callable, Mapping, Optional, Sequence

from flax import traverse_util
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ovsw_jax import layers
from ovsw_jax import models
from ovsw_jax.deploy import model_layout
from ovsw_jax.deploy.model_layout import Module

# Layer kinds of the header's table.
BINARY_CONV = "binary_conv"
BINARY_DENSE = "binary_dense"
BN_AFFINE = "bn_affine"        # an unfolded BatchNorm: x * mul + add
BN_FOLDED = "bn_folded"        # folded into its producer: the identity
FLOAT_AFFINE = "float_affine"  # a float conv/dense with a folded BN
FLOAT_DTYPES = ("float16", "float32")
MAX_IMAGE_SIDE = 65535
WORD_BITS = 32  # the file's packed words (`bitpack`)


class PackedFormatError(ValueError):
  """A file that is not a readable packed model."""


def is_int(v: Any, low: int = 0) -> bool:
  """Whether ``v`` is an int (not a bool) >= ``low``."""
  return isinstance(v, numbers.Integral) and not isinstance(v, bool) and (
      v >= low)


def _image_shape(v: Any) -> bool:
  return isinstance(v, list) and len(v) == 3 and all(
      is_int(d, 1) and d <= MAX_IMAGE_SIDE for d in v)


# field -> (required, valid(value), what a valid value is).
HEADER_FIELDS: dict[str, tuple[bool, Callable[[Any], bool], str]] = {
    "model": (True, lambda v: isinstance(v, str) and (
        v.lower() in models.list_models()), f"one of {models.list_models()}"),
    "model_options": (True, lambda v: isinstance(v, dict), "a JSON object"),
    "num_classes": (True, lambda v: is_int(v, 1), "an int >= 1"),
    "image_shape": (True, _image_shape,
                    f"[H, W, C], ints in [1, {MAX_IMAGE_SIDE}]"),
    "float_dtype": (True, lambda v: v in FLOAT_DTYPES,
                    f"one of {list(FLOAT_DTYPES)}"),
    "layers": (True, lambda v: isinstance(v, dict) and all(
        isinstance(e, dict) for e in v.values()), "an object of objects"),
    "fold_batchnorm": (False, lambda v: isinstance(v, bool), "true or false"),
    "binary_layers": (False, lambda v: isinstance(v, list) and all(
        isinstance(n, str) for n in v), "a list of layer names"),
    "metadata": (False, lambda v: isinstance(v, dict), "a JSON object"),
    # Each label's name (the training folder's classes); checked against
    # num_classes in `check_header`.
    "class_names": (False, lambda v: isinstance(v, list) and all(
        isinstance(n, str) for n in v), "a list of strings"),
}


def _words(n: int) -> int:
  return -(-int(n) // WORD_BITS)


def _channels(kind: str, m: Module) -> tuple[int, int]:
  """(C_in, C_out) of a table entry's module."""
  if kind in (BN_AFFINE, BN_FOLDED):
    return m.in_shape[-1], m.in_shape[-1]
  kernel = m.params.get(layers.LATENT_KERNEL, m.params.get("kernel"))
  return kernel.shape[-2], kernel.shape[-1]


# kind -> array -> (dtype, shape from (module, C_in, C_out), when present:
# 'always' or 'folded' (a BatchNorm is folded into the layer)).
_Shape = Callable[[Module, int, int], tuple[int, ...]]
_PER_CHANNEL: tuple[str, _Shape, str] = ("float32", lambda m, i, o: (o,),
                                         "always")
_FOLDED_ADD: tuple[str, _Shape, str] = ("float32", lambda m, i, o: (o,),
                                        "folded")
LAYER_ARRAYS: dict[str, dict[str, tuple[str, _Shape, str]]] = {
    BINARY_CONV: {
        "w": ("uint32", lambda m, i, o: (
            o, _taps(m) * _words(i)), "always"),
        "tap_sums": ("int32", lambda m, i, o: (
            *m.params[layers.LATENT_KERNEL].shape[:2], o), "always"),
        "mul": _PER_CHANNEL, "add": _FOLDED_ADD},
    BINARY_DENSE: {
        "w": ("uint32", lambda m, i, o: (o, _words(i)), "always"),
        "mul": _PER_CHANNEL, "add": _FOLDED_ADD},
    BN_AFFINE: {"mul": _PER_CHANNEL, "add": _PER_CHANNEL},
    FLOAT_AFFINE: {"mul": _PER_CHANNEL, "add": _PER_CHANNEL},
    BN_FOLDED: {},
}
# kind -> the module classes it may name.
_KIND_MODULES = {
    BINARY_CONV: layers.BinaryConv, BINARY_DENSE: layers.BinaryDense,
    BN_AFFINE: nn.BatchNorm, BN_FOLDED: nn.BatchNorm,
    FLOAT_AFFINE: (nn.Conv, nn.Dense),
}


def _taps(m: Module) -> int:
  kh, kw = m.params[layers.LATENT_KERNEL].shape[:2]
  return kh * kw


def _layout(header: Mapping[str, Any]
            ) -> tuple[dict[str, Module], dict[str, Any]]:
  key = json.dumps([models.canonical_name(header["model"]),
                    header["model_options"], header["num_classes"],
                    header["image_shape"]], sort_keys=True)
  try:
    return model_layout.model_layout(key)
  except Exception as e:  # Whatever the model's constructor raises.
    raise PackedFormatError(
        f"the header's model {header['model']!r} with options "
        f"{header['model_options']} cannot be built ({type(e).__name__}: "
        f"{e})") from e


def check_header(header: Any) -> None:
  """The header's fields against `HEADER_FIELDS` (format and version are
  `format.load`'s).

  Raises:
    PackedFormatError: a required field missing or a field of a bad type.
  """
  if not isinstance(header, dict):
    raise PackedFormatError(f"the header is a {type(header).__name__}, not "
                            "a JSON object")
  for field, (required, valid, what) in HEADER_FIELDS.items():
    if field not in header:
      if required:
        raise PackedFormatError(f"the header lacks {field!r} ({what})")
    elif not valid(header[field]):
      raise PackedFormatError(
          f"the header's {field}={header[field]!r}; it must be {what}")
  names = header.get("class_names")
  if names is not None and len(names) != header["num_classes"]:
    raise PackedFormatError(
        f"the header's class_names has {len(names)} names for num_classes="
        f"{header['num_classes']}; it must have one name per class")


def _check_entry(name: str, entry: Mapping[str, Any], m: Optional[Module],
                 model: str) -> None:
  kind = entry.get("kind")
  if not isinstance(kind, str) or kind not in LAYER_ARRAYS:
    raise PackedFormatError(f"layer {name!r} has kind {kind!r}; known kinds "
                            f"are {sorted(LAYER_ARRAYS)}")
  if m is None or not isinstance(m.module, _KIND_MODULES[kind]):
    raise PackedFormatError(
        f"layer {name!r} ({kind}) is not a "
        f"{_KIND_MODULES[kind]} of model {model!r}")
  if kind in (BINARY_CONV, BINARY_DENSE):
    kernel = m.params[layers.LATENT_KERNEL]
    if (kind == BINARY_CONV) != (len(kernel.shape) == 4):
      raise PackedFormatError(f"layer {name!r} has kind {kind!r} but its "
                              f"kernel has shape {kernel.shape}")
    for field, want in model_layout.binary_fields(m.module, kernel.shape,
                                     m.in_shape).items():
      if entry.get(field) != want:
        raise PackedFormatError(
            f"layer {name!r} has {field}={entry.get(field)!r}; model "
            f"{model!r} has {want!r}")


def _check_table(header: Mapping[str, Any], modules: dict[str, Module]
                 ) -> set[str]:
  """The layer table against the model; returns the layers a BatchNorm is
  folded into."""
  table = header["layers"]
  for name, entry in table.items():
    _check_entry(name, entry, modules.get(name), header["model"])
  binary = {n for n, e in table.items()
            if e["kind"] in (BINARY_CONV, BINARY_DENSE)}
  missing = sorted(n for n, m in modules.items() if isinstance(
      m.module, (layers.BinaryConv, layers.BinaryDense)) and n not in binary)
  if missing:
    raise PackedFormatError(f"binary layers {missing} of model "
                            f"{header['model']!r} have no table entry")
  if "binary_layers" in header and set(header["binary_layers"]) != binary:
    raise PackedFormatError(
        f"the header's binary_layers {header['binary_layers']} are not the "
        f"table's binary layers {sorted(binary)}")
  folded = set()
  for name, entry in table.items():
    if entry["kind"] == BN_FOLDED:
      into = entry.get("into")
      if not isinstance(into, str) or table.get(into, {}).get("kind") not in (
          BINARY_CONV, BINARY_DENSE, FLOAT_AFFINE):
        raise PackedFormatError(
            f"BatchNorm {name!r} is folded into {into!r}, which is not a "
            "binary or float_affine layer of the table")
      folded.add(into)
  return folded


def _compare(key: str, got: Optional[np.ndarray], dtype: str,
             shape: Sequence[int]) -> None:
  want = f"{dtype} {tuple(shape)}"
  if got is None:
    raise PackedFormatError(f"array {key!r} is missing; the header implies "
                            f"{want}")
  if got.dtype != np.dtype(dtype) or got.shape != tuple(shape):
    raise PackedFormatError(f"array {key!r} is {got.dtype} {got.shape}; the "
                            f"header implies {want}")


def _check_layer_arrays(header: Mapping[str, Any],
                        modules: dict[str, Module],
                        arrays: Mapping[str, Mapping[str, np.ndarray]],
                        folded: set[str]) -> None:
  table = header["layers"]
  extra = sorted(set(arrays) - set(table))
  if extra:
    raise PackedFormatError(f"arrays of layers {extra} that the header's "
                            "table does not list")
  for name, entry in table.items():
    kind, m = entry["kind"], modules[name]
    c_in, c_out = _channels(kind, m)
    got = dict(arrays.get(name, {}))
    for leaf, (dtype, shape, when) in LAYER_ARRAYS[kind].items():
      if when == "always" or name in folded:
        _compare(f"layers/{name}//{leaf}", got.pop(leaf, None), dtype,
                 shape(m, c_in, c_out))
    if got:
      raise PackedFormatError(f"layer {name!r} ({kind}) has unexpected "
                              f"arrays {sorted(got)}")
    if kind in (BINARY_CONV, BINARY_DENSE):
      _check_signs(name, arrays[name], c_in)


def _check_signs(name: str, arrays: Mapping[str, np.ndarray],
                 c_in: int) -> None:
  """A binary layer's words against its tap sums (shapes already checked).

  The unused bits of each tap's last word must be 0, and a conv's
  ``tap_sums[i, j, co]`` must be ``C_in - 2 popcount(w[co, tap (i, j)])``:
  the JAX kernel's zero-padding correction reads ``tap_sums`` and the native
  kernel the bits, so a file where they disagree would give two results.
  """
  w = arrays["w"]
  words = _words(c_in)
  bits = np.unpackbits(
      np.ascontiguousarray(w.reshape(w.shape[0], -1, words)).astype(
          "<u4").view(np.uint8), axis=-1, bitorder="little")
  if bits[..., c_in:].any():
    raise PackedFormatError(
        f"array 'layers/{name}//w' has bits set past its {c_in} input "
        "channels in a word's unused part (they must be 0)")
  if "tap_sums" in arrays:
    sums = arrays["tap_sums"]
    want = (c_in - 2 * bits.sum(-1, dtype=np.int64)).T.reshape(sums.shape)
    if not np.array_equal(sums, want):
      i, j, co = np.argwhere(sums != want)[0]
      raise PackedFormatError(
          f"array 'layers/{name}//tap_sums' is {sums[i, j, co]} at tap "
          f"({i}, {j}), channel {co}; the signs in w give {want[i, j, co]}")


def _expected_variables(header: Mapping[str, Any],
                        modules: dict[str, Module],
                        abstract: Mapping[str, Any]) -> dict[str, Any]:
  """Flat ``collection/path`` -> the (dtype, shape) the file must hold."""
  table = header["layers"]
  dropped = [n for n, m in modules.items() if n in table or isinstance(
      m.module, (layers.BinaryConv, layers.BinaryDense))]
  dropped = [n for n in dropped
             if table.get(n, {}).get("kind") != FLOAT_AFFINE]
  batchnorms = [n for n, m in modules.items()
                if isinstance(m.module, nn.BatchNorm)]
  out = {}
  for collection, tree in abstract.items():
    for key, leaf in traverse_util.flatten_dict(tree, sep="/").items():
      if any(key.startswith(f"{d}/") for d in dropped):
        continue
      dtype = leaf.dtype
      if jnp.issubdtype(dtype, jnp.floating):
        is_bn = collection == "batch_stats" or any(
            key.startswith(f"{b}/") for b in batchnorms)
        dtype = "float32" if is_bn else header["float_dtype"]
      out[f"{collection}/{key}"] = (np.dtype(dtype).name, leaf.shape)
  return out


def check(header: Any, arrays: Mapping[str, Mapping[str, np.ndarray]],
          variables: Mapping[str, Any]) -> None:
  """A loaded file's header, layer arrays and variables against the model
  its header names (see the module docstring).

  Raises:
    PackedFormatError: the first mismatch, naming the field or array and
      what the header implies.
  """
  check_header(header)
  modules, abstract = _layout(header)
  folded = _check_table(header, modules)
  _check_layer_arrays(header, modules, arrays, folded)
  expected = _expected_variables(header, modules, abstract)
  got = traverse_util.flatten_dict(variables, sep="/")
  for key, (dtype, shape) in expected.items():
    _compare(f"variables/{key}", got.pop(key, None), dtype, shape)
  if got:
    raise PackedFormatError(f"unexpected variables {sorted(got)[:5]}: not "
                            f"variables of model {header['model']!r}")
