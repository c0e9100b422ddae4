"""The packed 1-bit model file, format v1: `PackedModel`, `save`, `load`.

A packed file (written by `ovsw_jax.deploy.export`) is one ``.npz`` archive
holding

* ``__header__``: JSON -- format version, the model's name and options,
  ``num_classes``, ``image_shape``, the float dtype, and a table of layers;
* per binary conv/dense: the signs of its weights packed 32 to a ``uint32``
  word (`ovsw_jax.deploy.bitpack`), the +-1 weights summed per tap (for the
  exact zero-padding correction) and a per-channel float32 ``mul``: the
  layer's scale;
* ``variables/...``: the Flax variables of everything else: float layers
  (stem conv, downsample convs, head) in float32 or float16, BatchNorm
  params and statistics in float32.

Exported with ``fold_batchnorm=True``, a binary layer also has an ``add``, its
``mul``/``add`` being the scale with the BatchNorm that directly follows it
folded in (``BN(s * y) = (s g / sqrt(v + eps)) y + (b - m g / sqrt(v +
eps))``); a float conv directly followed by BatchNorm gets that BN as a
float32 epilogue ``mul``, ``add``; every other BatchNorm becomes an affine.
`ovsw_jax.deploy.infer` runs a packed model.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def flatten(tree: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
  """A nested dict as ``{prefix + 'a/b/c': array}``, the file's array keys."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = np.asarray(v)
  return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """The inverse of `flatten` (without its prefix)."""
  tree: dict[str, Any] = {}
  for key, v in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def array_bytes(packed: PackedModel) -> int:
  """The bytes of the arrays a packed file stores (its packed weights).

  What `ovsw_jax.summary` counts as packed bytes: the binary layers' sign
  words, tap sums and scales, and every other variable. The file is larger
  by its container: the JSON header and the .npz/.npy headers.
  """
  arrays = [np.asarray(v) for layer in packed.layers.values()
            for v in layer.values()]
  arrays += [np.asarray(v) for v in jax.tree.leaves(packed.variables)]
  return int(sum(a.nbytes for a in arrays))


def save(packed: PackedModel, path: str | os.PathLike[str]) -> int:
  """Writes ``packed`` to one uncompressed ``.npz`` file; returns its bytes.

  The file is written next to ``path`` first and renamed into place, so an
  interrupted save never leaves a half-written file under ``path``.
  """
  arrays = {HEADER_KEY: np.frombuffer(
      json.dumps(packed.header).encode(), np.uint8)}
  arrays.update(flatten(packed.variables, VARIABLES_PREFIX))
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
        "ovsw_jax.deploy export --workdir=<training workdir> --out=<file>`")
  try:
    with open(path, "rb") as f:
      blob = f.read()
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
      flat = {k: z[k] for k in z.files}
  except Exception as e:  # zipfile/np errors differ by damage.
    raise PackedFormatError(
        f"{path!r} is not a readable packed model ({type(e).__name__}: {e}); "
        "export it again with `python -m ovsw_jax.deploy export`") from e
  if HEADER_KEY not in flat:
    raise PackedFormatError(
        f"{path!r} has no {HEADER_KEY!r} entry: not a packed model written by "
        "ovsw_jax.deploy.export")
  header = json.loads(flat.pop(HEADER_KEY).tobytes().decode())
  if header.get("format") != FORMAT or header.get("version", 0) > VERSION:
    raise PackedFormatError(
        f"{path!r} holds format {header.get('format')!r} version "
        f"{header.get('version')!r}; this ovsw_jax reads {FORMAT!r} up to "
        f"version {VERSION}")
  variables = unflatten({k[len(VARIABLES_PREFIX):]: v
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
