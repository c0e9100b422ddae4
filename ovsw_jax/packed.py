"""Packed 1-bit models: the file format, its loader and XNOR-popcount inference.

A packed file (written by `ovsw_jax.export`) is one ``.npz`` archive holding

* ``__header__``: JSON -- format version, the model's name and options,
  ``num_classes``, ``image_shape``, the float dtype, and a table of layers;
* per binary conv/dense: the signs of its weights packed 32 to a ``uint32``
  word (`ovsw_jax.bitpack`), the +-1 weights summed per tap (for the exact
  zero-padding correction) and a per-channel float32 ``mul``: the layer's
  scale;
* ``variables/...``: the Flax variables of everything else: float layers
  (stem conv, downsample convs, head) in float32 or float16, BatchNorm
  params and statistics in float32.

Exported with ``fold_batchnorm=True``, a binary layer also has an ``add``, its
``mul``/``add`` being the scale with the BatchNorm that directly follows it
folded in (``BN(s * y) = (s g / sqrt(v + eps)) y + (b - m g / sqrt(v +
eps))``); a float conv directly followed by BatchNorm gets that BN as a
float32 epilogue ``mul``, ``add``; every other BatchNorm becomes an affine.

Inference runs the model's own Flax definition (`ovsw_jax.models`) with its
binary convolutions and BatchNorms intercepted (`flax.linen.intercept_methods`):
each binary conv packs its input's signs and computes an exact integer XNOR +
popcount convolution from the packed weights; nothing else changes, so the
float path (residuals, pooling, head) is the model's own code.

Evaluate a packed file on CIFAR-10's test set::

  python -m ovsw_jax.packed --packed=/tmp/r20.npz --dataset=cifar10 \
      [--data_dir=...] [--batch_size=500]
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax import bitpack
from ovsw_jax import models

FORMAT = "ovsw_jax.packed"
VERSION = 1
HEADER_KEY = "__header__"
VARIABLES_PREFIX = "variables/"
LAYERS_PREFIX = "layers/"

# Layer kinds of the header's table.
BINARY_CONV = "binary_conv"
BINARY_DENSE = "binary_dense"
BN_AFFINE = "bn_affine"        # an unfolded BatchNorm: x * mul + add
BN_FOLDED = "bn_folded"        # folded into its producer: the identity
FLOAT_AFFINE = "float_affine"  # a float conv/dense with a folded BN


class PackedFormatError(ValueError):
  """A file that is not a readable packed model."""


@dataclasses.dataclass
class PackedModel:
  """A packed model in memory.

  Attributes:
    header: JSON-serialisable description (see the module docstring).
    layers: per layer path ('block/conv1'): its arrays (NumPy).
    variables: the Flax variables of everything but the binary layers:
      ``{'params': ..., 'batch_stats': ...}`` (NumPy; float conv/dense
      weights in the stored float dtype, BatchNorm in float32).
  """

  header: dict[str, Any]
  layers: dict[str, dict[str, np.ndarray]]
  variables: dict[str, Any]

  @property
  def num_classes(self) -> int:
    return int(self.header["num_classes"])

  @property
  def image_shape(self) -> tuple[int, ...]:
    return tuple(self.header["image_shape"])

  def model(self) -> nn.Module:
    """The Flax module whose calls `apply` intercepts (float32 compute)."""
    return models.get_model(self.header["model"], self.num_classes,
                            **self.header["model_options"])

  def arrays(self) -> dict[str, Any]:
    """What `apply` takes: the float variables (in float32) and the layers'
    arrays, as jax arrays."""
    variables = jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float32) if np.issubdtype(
            a.dtype, np.floating) else jnp.asarray(a), self.variables)
    return {"variables": variables,
            "layers": jax.tree.map(jnp.asarray, self.layers)}


def _flatten(tree: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = np.asarray(v)
  return out


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for key, v in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def save(packed: PackedModel, path: str | os.PathLike[str]) -> int:
  """Writes ``packed`` to one uncompressed ``.npz`` file; returns its bytes.

  The file is written next to ``path`` first and renamed into place, so an
  interrupted save never leaves a half-written file under ``path``.
  """
  arrays = {HEADER_KEY: np.frombuffer(
      json.dumps(packed.header).encode(), np.uint8)}
  arrays.update(_flatten(packed.variables, VARIABLES_PREFIX))
  for name, layer in packed.layers.items():
    for k, v in layer.items():
      arrays[f"{LAYERS_PREFIX}{name}//{k}"] = np.asarray(v)
  path = os.fspath(path)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)
  return os.path.getsize(path)


def load(path: str | os.PathLike[str]) -> PackedModel:
  """Reads a file written by `save`.

  Raises:
    FileNotFoundError: no such file.
    PackedFormatError: not a packed model, a newer version, or damaged.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"no packed model at {path!r}; write one with `python -m "
        "ovsw_jax.export --workdir=<training workdir> --out=<file>`")
  try:
    with open(path, "rb") as f:
      blob = f.read()
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
      flat = {k: z[k] for k in z.files}
  except Exception as e:  # zipfile/np errors differ by damage.
    raise PackedFormatError(
        f"{path!r} is not a readable packed model ({type(e).__name__}: {e}); "
        "export it again with `python -m ovsw_jax.export`") from e
  if HEADER_KEY not in flat:
    raise PackedFormatError(
        f"{path!r} has no {HEADER_KEY!r} entry: not a packed model written by "
        "ovsw_jax.export")
  header = json.loads(flat.pop(HEADER_KEY).tobytes().decode())
  if header.get("format") != FORMAT or header.get("version", 0) > VERSION:
    raise PackedFormatError(
        f"{path!r} holds format {header.get('format')!r} version "
        f"{header.get('version')!r}; this ovsw_jax reads {FORMAT!r} up to "
        f"version {VERSION}")
  variables = _unflatten({k[len(VARIABLES_PREFIX):]: v
                          for k, v in flat.items()
                          if k.startswith(VARIABLES_PREFIX)})
  layers: dict[str, dict[str, np.ndarray]] = {}
  for k, v in flat.items():
    if k.startswith(LAYERS_PREFIX):
      name, leaf = k[len(LAYERS_PREFIX):].split("//")
      layers.setdefault(name, {})[leaf] = v
  missing = sorted(set(header["layers"]) - set(layers)
                   - {n for n, e in header["layers"].items()
                      if e["kind"] == BN_FOLDED})
  if missing:
    raise PackedFormatError(f"{path!r} lacks the arrays of layers {missing}; "
                            "the file is damaged, export it again")
  return PackedModel(header=header, layers=layers, variables=variables)


def _path(module: nn.Module) -> str:
  return "/".join(module.path)


def apply(packed: PackedModel, arrays: Mapping[str, Any],
          images: jax.Array) -> jax.Array:
  """Logits of ``images`` (NHWC float) by XNOR-popcount inference.

  Args:
    packed: the model (its header and module definition are used).
    arrays: ``packed.arrays()``; a separate argument so that `jax.jit` takes
      them as inputs rather than as constants baked into the program.
    images: ``(N, H, W, C)`` normalised as in training.

  Returns:
    float32 logits ``(N, num_classes)``.
  """
  table = packed.header["layers"]
  layer_arrays = arrays["layers"]

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    name = _path(context.module)
    entry = table.get(name)
    if entry is None:
      return next_fun(*args, **kwargs)
    kind = entry["kind"]
    if kind == BN_FOLDED:
      return args[0]
    a = layer_arrays[name]
    if kind == BN_AFFINE:
      x = args[0]
      return (x.astype(jnp.float32) * a["mul"] + a["add"]).astype(x.dtype)
    if kind == FLOAT_AFFINE:
      y = next_fun(*args, **kwargs)
      return (y.astype(jnp.float32) * a["mul"] + a["add"]).astype(y.dtype)
    x = args[0]
    if x.ndim != (4 if kind == BINARY_CONV else 2):
      raise ValueError(f"layer {name!r} got input of shape {x.shape}")
    if kind == BINARY_CONV:
      y = bitpack.xnor_conv(
          bitpack.pack_signs(x), a["w"], a["tap_sums"], entry["in_features"],
          entry["kernel_size"], entry["strides"],
          [tuple(p) for p in entry["padding"]])
    elif kind == BINARY_DENSE:
      y = bitpack.xnor_dense(bitpack.pack_signs(x), a["w"],
                             entry["in_features"])
    else:
      raise PackedFormatError(f"unknown layer kind {kind!r} for {name!r}")
    # The int -> float conversion is exact; `* mul` is the float eval's own
    # `conv(a_b, w_b) * scale` when the BatchNorm is not folded (no `add`).
    y = y.astype(x.dtype) * a["mul"].astype(x.dtype)
    if "add" in a:
      y = y + a["add"].astype(x.dtype)
    return y

  model = packed.model()
  with nn.intercept_methods(interceptor):
    logits = model.apply(arrays["variables"],
                         jnp.asarray(images, jnp.float32), train=False)
  return logits.astype(jnp.float32)


def make_predict_fn(packed: PackedModel):
  """A jitted ``images -> logits`` with the packed arrays on the device."""
  arrays = packed.arrays()
  fn = jax.jit(lambda arr, x: apply(packed, arr, x))
  return lambda images: fn(arrays, images)


def evaluate(packed: PackedModel, dataset: str = "cifar10",
             data_dir: Optional[str] = None, batch_size: int = 500
             ) -> dict[str, Any]:
  """Top-1 of a packed model on a dataset's eval split (every image once).

  Returns:
    ``{'top1', 'count', 'images_per_sec', 'predictions'}`` (predictions as
    an int32 array in the eval split's order).
  """
  from ovsw_jax import data  # pylint: disable=g-import-not-at-top
  predict = make_predict_fn(packed)
  preds, correct, count, seconds = [], 0, 0, 0.0
  for batch in data.create_eval_iterator(dataset, data_dir, batch_size):
    t = time.time()
    p = np.asarray(jnp.argmax(predict(batch["image"]), axis=-1))
    seconds += time.time() - t
    keep = np.asarray(batch["mask"]).astype(bool)
    preds.append(p[keep])
    correct += int(np.sum(p[keep] == np.asarray(batch["label"])[keep]))
    count += int(keep.sum())
  return {"top1": correct / count, "count": count,
          "images_per_sec": count / seconds,
          "predictions": np.concatenate(preds).astype(np.int32)}


def main(argv=None) -> dict[str, Any]:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      description="Evaluate a packed 1-bit model (XNOR-popcount inference).")
  parser.add_argument("--packed", required=True, help="file from export")
  parser.add_argument("--dataset", default="cifar10")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--batch_size", type=int, default=500)
  args = parser.parse_args(argv)
  packed = load(args.packed)
  result = evaluate(packed, args.dataset, args.data_dir, args.batch_size)
  out = {"packed": args.packed, "model": packed.header["model"],
         "dataset": args.dataset, "top1": result["top1"],
         "count": result["count"],
         "images_per_sec": result["images_per_sec"],
         "file_bytes": os.path.getsize(args.packed)}
  print(json.dumps(out))
  return out


if __name__ == "__main__":
  main()
