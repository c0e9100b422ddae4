"""Fuzz driver of the packed-file loader and the kernel behind it (run under
the sanitizers).

Base files: two small exported models (`write_base_files`: a cResNet20 as
exported, a ResNet-18 with BatchNorm folded, so every layer kind of the
table is there). Each input (a function of (seed, index) only) damages one
of them: the header's JSON (a field dropped, retyped or changed, a layer
entry's kind, kernel size, strides, padding or features changed, a layer
dropped or renamed, the model's options, its bytes), an array (dropped,
added, another dtype or shape, emptied), the values only (weight bits, float
values with NaN and inf: still a valid file), or the file's bytes. Then
`format.load`; a file that loads is run on both backends, native (the
sanitized kernel) and JAX, which must agree bit for bit.

`FAILURES` are what must never happen: an exception other than
`PackedFormatError` from the loader, a valid file refused, a loaded file
that fails at inference or whose backends disagree.
"""

from __future__ import annotations

import collections
import io
import json
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax import models
from ovsw_jax.deploy import bitpack
from ovsw_jax.deploy import export
from ovsw_jax.deploy import format as packed_format
from ovsw_jax.deploy import infer

FAILURES = ("unexpected_exception", "valid_file_refused",
            "inference_error", "backends_differ")
BASE_MODELS = (  # (name, options, image shape, fold_batchnorm)
    ("cresnet20_1w1a", {"stage_sizes": [1, 1, 1]}, (8, 8, 3), False),
    ("resnet18_1w1a", {"stage_sizes": [1, 1, 1, 1]}, (16, 16, 3), True),
)
# Mutations that leave a valid file.
VALID = ("values_w", "values_float", "none")
_JSON_VALUES = (None, "x", -1, 0, 1, 2, 1.5, 10**9, [], [1], [[1, 1]], {},
                {"a": 1}, True)


def random_values(abstract: Any, seed: int) -> Any:
  """Arrays of ``abstract``'s shapes: of both signs (so packed weights have
  both bits), BatchNorm variances positive."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    v = rng.uniform(0.5, 1.5, leaf.shape)
    if "var" not in jax.tree_util.keystr(path):
      v *= rng.choice([-1.0, 1.0], leaf.shape)
    return jnp.asarray(v, leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract)


def write_base_files(folder: str) -> list[str]:
  """Exports the base models (random weights) into ``folder``."""
  paths = []
  for name, options, shape, fold in BASE_MODELS:
    model = models.get_model(name, 10, **options)
    abstract = jax.eval_shape(model.init, jax.random.key(0),
                              jnp.zeros((1, *shape)))
    variables = random_values(abstract, seed=len(paths))
    packed = export.export_model(model, variables, model_name=name,
                                 model_options=options, image_shape=shape,
                                 fold_batchnorm=fold)
    paths.append(os.path.join(folder, f"{name}.npz"))
    packed_format.save(packed, paths[-1])
  return paths


def _header(a: dict[str, np.ndarray]) -> dict[str, Any]:
  return json.loads(a[packed_format.HEADER_KEY].tobytes())


def _set_header(a: dict[str, np.ndarray], header: Any) -> None:
  a[packed_format.HEADER_KEY] = np.frombuffer(json.dumps(header).encode(),
                                              np.uint8)


def _mutate_header(rng: np.random.Generator, a: dict[str, np.ndarray],
                   kind: str) -> None:
  h = _header(a)
  pick = lambda xs: xs[int(rng.integers(len(xs)))]
  if kind == "header_drop":
    h.pop(pick(sorted(h)))
  elif kind == "header_value":
    h[pick(sorted(h))] = pick(_JSON_VALUES)
  elif kind == "header_number":
    h[pick(["version", "num_classes"])] = int(rng.integers(-2, 20))
  elif kind == "image_shape":
    h["image_shape"] = [int(pick([-1, 0, 1, 7, 8, 9, 16, 65536]))
                        for _ in range(int(rng.integers(2, 5)))]
  elif kind == "options":
    h["model_options"] = pick([{}, {"stage_sizes": [1, 2, 1]},
                               {"stage_sizes": [1, 1, 1, 1]}, {"width": 2},
                               {"stage_sizes": "x"}])
  elif kind == "layer_field":
    name = pick(sorted(h["layers"]))
    field = pick(["kind", "kernel_size", "strides", "padding", "in_features",
                  "into"])
    h["layers"][name][field] = pick(list(_JSON_VALUES) + [
        "binary_conv", "bn_folded", "float_affine", [3, 3], [2, 2],
        [[0, 0], [1, 1]], [[1, 1], [2, 0]], 64])
  elif kind == "layer_drop":
    h["layers"].pop(pick(sorted(h["layers"])))
  elif kind == "layer_rename":
    name = pick(sorted(h["layers"]))
    h["layers"][name + "x"] = h["layers"].pop(name)
  _set_header(a, h)


def _mutate_array(rng: np.random.Generator, a: dict[str, np.ndarray],
                  kind: str) -> None:
  keys = sorted(k for k in a if k != packed_format.HEADER_KEY)
  key = keys[int(rng.integers(len(keys)))]
  x = a[key]
  if kind == "array_drop":
    del a[key]
  elif kind == "array_extra":
    a[key + "x" if rng.uniform() < 0.5 else "layers/x//w"] = x
  elif kind == "array_dtype":
    a[key] = x.astype(rng.choice(["int8", "int32", "int64", "uint32",
                                  "uint64", "float16", "float32", "float64",
                                  "bool"]))
  elif kind == "array_shape":
    a[key] = [x.reshape(-1), x[None], x.T, x[..., :-1],
              np.concatenate([x, x], -1) if x.ndim else x[None]
              ][int(rng.integers(5))]
  elif kind == "array_empty":
    a[key] = np.zeros((0,), x.dtype)
  elif kind in ("values_w", "values_w_raw"):
    ws = [k for k in keys if k.endswith("//w")]
    k = ws[int(rng.integers(len(ws)))]
    if kind == "values_w_raw":  # tap sums and unused bits left inconsistent
      a[k] = a[k] ^ rng.integers(0, 2**32, a[k].shape, dtype=np.uint32)
    else:
      _flip_signs(rng, a, k)
  elif kind == "values_float":
    floats = [k for k in keys if a[k].dtype.kind == "f" and a[k].size]
    k = floats[int(rng.integers(len(floats)))]
    v = rng.standard_normal(a[k].shape) * 10.0 ** rng.integers(-3, 4)
    v.flat[int(rng.integers(v.size))] = rng.choice([np.nan, np.inf, -np.inf])
    a[k] = v.astype(a[k].dtype)


def _flip_signs(rng: np.random.Generator, a: dict[str, np.ndarray],
                key: str) -> None:
  """Flips random weight signs of a binary layer, its tap sums kept true:
  a valid file with other weights."""
  name = key[len("layers/"):-len("//w")]
  entry = _header(a)["layers"][name]
  c_in, w = entry["in_features"], a[key]
  signs = bitpack.unpack_signs_np(w.reshape(w.shape[0], -1,
                                            bitpack.num_words(c_in)), c_in)
  signs *= np.where(rng.uniform(size=signs.shape) < 0.3, -1.0, 1.0)
  if entry["kind"] == "binary_dense":
    a[key] = bitpack.pack_dense_kernel_np(signs[:, 0].T)
    return
  kh, kw = entry["kernel_size"]
  kernel = signs.reshape(-1, kh, kw, c_in).transpose(1, 2, 3, 0)
  a[key], a[key[:-1] + "tap_sums"] = bitpack.pack_conv_kernel_np(kernel)


def _npz(a: dict[str, np.ndarray]) -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **a)
  return buf.getvalue()


def _mutated_file(rng: np.random.Generator, base: dict[str, np.ndarray]
                  ) -> tuple[str, bytes]:
  kind = str(rng.choice([
      "none", "header_drop", "header_value", "header_number", "image_shape",
      "options", "layer_field", "layer_drop", "layer_rename", "json_bytes",
      "array_drop", "array_extra", "array_dtype", "array_shape",
      "array_empty", "values_w", "values_w_raw", "values_float",
      "file_bytes",
      "file_truncate"]))
  a = dict(base)
  if kind.startswith(("header_", "image_", "options", "layer_")):
    _mutate_header(rng, a, kind)
  elif kind.startswith(("array_", "values_")):
    _mutate_array(rng, a, kind)
  elif kind == "json_bytes":
    raw = bytearray(a[packed_format.HEADER_KEY].tobytes())
    for i in rng.integers(0, len(raw), 3):
      raw[i] = int(rng.integers(256))
    a[packed_format.HEADER_KEY] = np.frombuffer(bytes(raw), np.uint8)
  blob = bytearray(_npz(a))
  if kind == "file_bytes":
    for i in rng.integers(0, len(blob), int(rng.integers(1, 9))):
      blob[i] = int(rng.integers(256))
  elif kind == "file_truncate":
    blob = blob[:int(rng.integers(len(blob)))]
  return kind, bytes(blob)


class Runner:
  """Loads mutated files and runs them; jitted forwards are kept per header
  (values-only mutations reuse them)."""

  def __init__(self, base_paths: list[str], workdir: str):
    self.bases = []
    for p in base_paths:
      with np.load(p) as z:
        self.bases.append({k: z[k] for k in z.files})
    self.path = os.path.join(workdir, "fuzz.npz")
    self.fns: dict[tuple[str, str], Callable[..., Any]] = {}

  def _logits(self, packed, backend: str, images) -> np.ndarray:
    key = (json.dumps(packed.header, sort_keys=True), backend)
    if key not in self.fns:
      self.fns[key] = jax.jit(lambda arr, x, p=packed, b=backend: infer.apply(
          p, arr, x, b, threads=2))
    return np.asarray(self.fns[key](infer.device_arrays(packed, backend),
                                    images))

  def one_input(self, seed: int, index: int,
                counts: collections.Counter) -> None:
    rng = np.random.default_rng([seed, index])
    kind, blob = _mutated_file(rng, self.bases[int(rng.integers(
        len(self.bases)))])
    counts[f"mutation:{kind}"] += 1
    if kind in VALID:
      counts["valid_files"] += 1
    with open(self.path, "wb") as f:
      f.write(blob)
    try:
      packed = packed_format.load(self.path)
    except packed_format.PackedFormatError:
      counts["outcome:refused"] += 1
      if kind in VALID:
        counts["valid_file_refused"] += 1
      return
    except Exception as e:  # pylint: disable=broad-except
      counts["unexpected_exception"] += 1
      print(f"packed input {index} ({kind}): {type(e).__name__}: {e}",
            file=sys.stderr)
      return
    counts["outcome:loaded"] += 1
    images = jnp.asarray(rng.standard_normal(
        (2, *packed.header["image_shape"])), jnp.float32)
    try:
      native_logits = self._logits(packed, "native", images)
      jax_logits = self._logits(packed, "jax", images)
    except Exception as e:  # pylint: disable=broad-except
      counts["inference_error"] += 1
      print(f"packed input {index} ({kind}): {type(e).__name__}: {e}",
            file=sys.stderr)
      return
    same = np.array_equal(native_logits, jax_logits, equal_nan=True)
    counts["outcome:ran_backends_equal" if same else "backends_differ"] += 1
    if not same:
      print(f"packed input {index} ({kind}): backends differ", file=sys.stderr)
