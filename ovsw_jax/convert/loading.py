"""Variables for training from a file: a converted ``.npz`` or a ``.pth``.

`load_variables` is what ``config.teacher_file`` goes through: a file that
``python -m ovsw_jax.convert`` wrote (`files`; it names its model and needs
no torch), or a PyTorch checkpoint converted on the fly
(`state_dict.load_torch_checkpoint`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

import numpy as np
from flax import traverse_util

from ovsw_jax import models
from ovsw_jax.convert import files
from ovsw_jax.convert import state_dict


def _shapes(tree: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  return {"/".join((c, *p)): tuple(np.shape(v))
          for c in files.COLLECTIONS
          for p, v in traverse_util.flatten_dict(tree.get(c, {})).items()}


def check_variables(model_name: str, num_classes: int,
                    variables: Mapping[str, Any], source: str) -> None:
  """Raises unless ``variables`` has exactly the model's leaves and shapes.

  Raises:
    ValueError: naming the missing and unexpected leaves and those of
      another shape.
  """
  want = _shapes(state_dict.abstract_variables(model_name, num_classes))
  got = _shapes(variables)
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  shapes = [f"{k}: {got[k]} in the file, {want[k]} in the model"
            for k in sorted(set(want) & set(got)) if want[k] != got[k]]
  if missing or unexpected or shapes:
    raise ValueError(
        f"{source} does not fit {model_name!r} (num_classes={num_classes}): "
        f"missing {missing}, unexpected {unexpected}, shapes {shapes}")


def load_variables(path: Union[str, os.PathLike],
                   model_name: Optional[str] = None,
                   num_classes: Optional[int] = None
                   ) -> tuple[str, dict[str, Any]]:
  """A model's variables from a converted ``.npz`` or a PyTorch checkpoint.

  Args:
    path: a file written by ``python -m ovsw_jax.convert`` (read without
      torch; it names its model) or a ``.pth``
      (`state_dict.load_torch_checkpoint`).
    model_name: the model; required for a ``.pth``, checked for a converted
      file.
    num_classes: the head's width; None: the file's.

  Returns:
    ``(model_name, {'params': ..., 'batch_stats': ...})``, the name as the
    registry spells it.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the model or num_classes disagree with a converted file's,
      its leaves do not fit the model, or a ``.pth`` comes without a model.
  """
  source = repr(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"no file at {source}; convert a PyTorch checkpoint into it with "
        "`python -m ovsw_jax.convert --model=<name> --torch_file=<.pth> "
        f"--out={os.fspath(path)}`")
  if not files.is_converted_file(path):
    if not model_name:
      raise ValueError(
          f"{source} is a PyTorch checkpoint: name its model (e.g. "
          "teacher_model='resnet34'), or convert it once with `python -m "
          "ovsw_jax.convert --model=<name> --torch_file=<.pth> --out=<.npz>`")
    name = models.canonical_name(model_name)
    return name, state_dict.load_torch_checkpoint(path, name, num_classes)
  header, variables = files.load(path)
  name = models.canonical_name(header["model"])
  if model_name and models.canonical_name(model_name) != name:
    raise ValueError(f"{source} holds a {name!r}, not a {model_name!r}; "
                     "leave the model name unset (the file names it)")
  if num_classes is not None and num_classes != header["num_classes"]:
    raise ValueError(
        f"{source} has {header['num_classes']} classes, this run "
        f"{num_classes}: a teacher's head must be as wide as the student's")
  check_variables(name, header["num_classes"], variables, source)
  return name, variables
