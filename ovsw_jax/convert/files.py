"""Converted-variables files: a converted checkpoint saved for training.

`python -m ovsw_jax.convert` converts a PyTorch ``state_dict`` once and
writes the Flax variables with `save`: one uncompressed ``.npz`` holding

* ``__header__``: JSON -- the format name and version, the model's registry
  name, ``num_classes`` and the source file's name;
* ``params/...`` and ``batch_stats/...``: the variables, float32, keyed by
  their '/'-joined Flax paths (``params/layer1_0/conv1/kernel``).

`load` reads one back (no torch needed), e.g. as ``config.teacher_file``.
`is_converted_file` tells such a file from a PyTorch checkpoint (also a
zip archive) by its contents, not its name.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping
import zipfile

from flax import traverse_util
import numpy as np

FORMAT = "ovsw_jax.variables"
VERSION = 1
HEADER_KEY = "__header__"
COLLECTIONS = ("params", "batch_stats")


class ConvertedFormatError(ValueError):
  """A file that is not a readable converted-variables file."""


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  # Both collections, even one with no arrays in the file.
  return {**{c: {} for c in COLLECTIONS},
          **traverse_util.unflatten_dict(dict(flat), sep="/")}


def save(path: str | os.PathLike[str], variables: Mapping[str, Any],
         model_name: str, num_classes: int, source: str = "") -> int:
  """Writes ``variables`` ({'params', 'batch_stats'}) to ``path``.

  The file is written beside ``path`` and renamed into place, so an
  interrupted save leaves no half-written file.

  Args:
    path: the ``.npz`` to write.
    variables: the model's params and batch_stats (other collections are
      not model weights and are refused).
    model_name: the registry name of the model they belong to.
    num_classes: its head's width.
    source: where they came from (e.g. the .pth's file name), for the record.

  Returns:
    The file's size in bytes.

  Raises:
    ValueError: ``path`` does not end in .npz, or ``variables`` has other
      collections.
  """
  path = os.fspath(path)
  if not path.endswith(".npz"):
    raise ValueError(f"out={path!r}: a converted file must end in .npz")
  extra = sorted(set(variables) - set(COLLECTIONS))
  if extra:
    raise ValueError(f"variables has collections {extra}; a converted file "
                     f"holds {list(COLLECTIONS)} only")
  header = {"format": FORMAT, "version": VERSION, "model": model_name,
            "num_classes": int(num_classes), "source": source}
  arrays = {HEADER_KEY: np.frombuffer(json.dumps(header).encode(), np.uint8)}
  flat = traverse_util.flatten_dict(
      {c: variables.get(c, {}) for c in COLLECTIONS}, sep="/")
  arrays.update({k: np.asarray(v, np.float32) for k, v in flat.items()})
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)
  return os.path.getsize(path)


def is_converted_file(path: str | os.PathLike[str]) -> bool:
  """Whether ``path`` is a file `save` wrote (a zip with a ``__header__``)."""
  path = os.fspath(path)
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return f"{HEADER_KEY}.npy" in z.namelist()


def load(path: str | os.PathLike[str]) -> tuple[dict[str, Any],
                                                 dict[str, Any]]:
  """Reads a file written by `save`.

  Returns:
    ``(header, variables)``: the header's fields (model, num_classes,
    source, ...) and ``{'params': ..., 'batch_stats': ...}`` of numpy
    arrays.

  Raises:
    FileNotFoundError: no such file.
    ConvertedFormatError: not a converted file, or of a newer version.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"no converted file at {path!r}; write one with `python -m "
        "ovsw_jax.convert --model=<name> --torch_file=<.pth> --out=<.npz>`")
  if not is_converted_file(path):
    raise ConvertedFormatError(
        f"{path!r} is not a converted-variables file (no {HEADER_KEY}); "
        "convert a PyTorch checkpoint with `python -m ovsw_jax.convert`")
  with np.load(path, allow_pickle=False) as z:
    flat = {k: z[k] for k in z.files}
  header = json.loads(flat.pop(HEADER_KEY).tobytes().decode())
  if header.get("format") != FORMAT or header.get("version", 0) > VERSION:
    raise ConvertedFormatError(
        f"{path!r} has format {header.get('format')!r} version "
        f"{header.get('version')!r}; this ovsw_jax reads {FORMAT!r} up to "
        f"version {VERSION}")
  return header, _unflatten(flat)
