"""The packed 1-bit model file, format v1: `PackedModel`, `save`, `load`.

A packed file (written by `ovsw_jax.deploy.export`) is one ``.npz`` archive
holding

* ``__header__``: JSON -- format version, the model's name and options,
  ``num_classes``, ``image_shape``, the float dtype, and a table of layers;
  optionally ``class_names`` (each label's name; absent in older files) and
  ``metadata`` (the step, the dataset and its options: what ``evaluate``
  needs to rebuild the eval split without repeated options);
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
import math
import os
from typing import Any, Mapping
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax import models
from ovsw_jax.deploy import schema
# The layer kinds and the error, defined with the checks of a file (schema).
from ovsw_jax.deploy.schema import BINARY_CONV  # pylint: disable=unused-import
from ovsw_jax.deploy.schema import BINARY_DENSE  # pylint: disable=unused-import
from ovsw_jax.deploy.schema import BN_AFFINE  # pylint: disable=unused-import
from ovsw_jax.deploy.schema import BN_FOLDED  # pylint: disable=unused-import
from ovsw_jax.deploy.schema import FLOAT_AFFINE  # pylint: disable=unused-import
from ovsw_jax.deploy.schema import PackedFormatError

FORMAT = "ovsw_jax.packed"
VERSION = 1
HEADER_KEY = "__header__"
VARIABLES_PREFIX = "variables/"
LAYERS_PREFIX = "layers/"


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

  @property
  def class_names(self) -> tuple[str, ...] | None:
    """Each label's name, if the export recorded them (optional)."""
    names = self.header.get("class_names")
    return tuple(names) if names is not None else None

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


def _read_array(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
  """One ``.npy`` member, its header checked against the bytes it holds
  before the data is read (a damaged header cannot make numpy allocate more
  than the file holds)."""
  with z.open(info) as f:
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
      raise ValueError(f".npy version {version}")
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject or any(d < 0 for d in shape):
      raise ValueError(f"its header declares {dtype} {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    data = f.read(nbytes + 1)  # to the end, where zipfile checks the CRC
  if len(data) != nbytes:
    raise ValueError(f"its header declares {dtype} {shape} ({nbytes} bytes) "
                     f"and the file holds {len(data)} bytes")
  return np.frombuffer(data, dtype).reshape(
      shape, order="F" if fortran else "C").copy()


def _read_npz(blob: bytes) -> dict[str, np.ndarray]:
  arrays = {}
  with zipfile.ZipFile(io.BytesIO(blob)) as z:
    for info in z.infolist():
      name = info.filename.removesuffix(".npy")
      try:
        arrays[name] = _read_array(z, info)
      except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise PackedFormatError(f"array {name!r}: {e}") from e
  return arrays


def _split(flat: dict[str, np.ndarray]
           ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
  """A file's arrays as (header, layers, variables)."""
  try:
    header = json.loads(flat.pop(HEADER_KEY).tobytes().decode())
  except ValueError as e:  # JSON's and UTF-8's errors
    raise PackedFormatError(f"the header is not JSON ({e})") from e
  if not isinstance(header, dict):
    raise PackedFormatError("the header is not a JSON object")
  version = header.get("version")
  if header.get("format") != FORMAT or not schema.is_int(version, 1) or (
      version > VERSION):
    raise PackedFormatError(
        f"it holds format {header.get('format')!r} version {version!r}; this "
        f"ovsw_jax reads {FORMAT!r} versions 1 to {VERSION}")
  schema.check_header(header)
  layers: dict[str, dict[str, np.ndarray]] = {}
  other = []
  for k, v in flat.items():
    name, sep, leaf = k[len(LAYERS_PREFIX):].partition("//")
    if k.startswith(LAYERS_PREFIX) and sep and name and leaf:
      layers.setdefault(name, {})[leaf] = v
    elif not k.startswith(VARIABLES_PREFIX):
      other.append(k)
  if other:
    raise PackedFormatError(f"arrays {sorted(other)[:5]} are neither "
                            "layers nor variables")
  try:
    variables = unflatten({k[len(VARIABLES_PREFIX):]: v
                           for k, v in flat.items()
                           if k.startswith(VARIABLES_PREFIX)})
  except (TypeError, AttributeError) as e:  # 'a' both a leaf and a folder
    raise PackedFormatError(f"variables that clash ({e})") from e
  return header, layers, variables


def load(path: str | os.PathLike[str]) -> PackedModel:
  """Reads a file written by `save`, and checks it (`schema.check`): every
  array's dtype and shape against what its header implies, before any array
  reaches native code.

  Raises:
    FileNotFoundError: no such file.
    PackedFormatError: not a packed model, a newer version, or damaged; the
      message names the field or array and what was expected.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"no packed model at {path!r}; write one with `python -m "
        "ovsw_jax.deploy export --workdir=<training workdir> --out=<file>`")
  try:
    with open(path, "rb") as f:
      flat = _read_npz(f.read())
  except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
    if isinstance(e, PackedFormatError):
      raise PackedFormatError(f"{path!r}: {e}; export it again with "
                              "`python -m ovsw_jax.deploy export`") from e
    raise PackedFormatError(
        f"{path!r} is not a readable packed model ({type(e).__name__}: {e}); "
        "export it again with `python -m ovsw_jax.deploy export`") from e
  if HEADER_KEY not in flat:
    raise PackedFormatError(
        f"{path!r} has no {HEADER_KEY!r} entry: not a packed model written by "
        "ovsw_jax.deploy.export")
  try:
    header, layers, variables = _split(flat)
    schema.check(header, layers, variables)
  except PackedFormatError as e:
    raise PackedFormatError(f"{path!r}: {e}; the file is damaged or was not "
                            "written by this ovsw_jax: export it again") from e
  return PackedModel(header=header, layers=layers, variables=variables)
