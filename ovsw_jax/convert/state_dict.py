"""Converts PyTorch checkpoints (the reference's, torchvision's) to Flax.

The reference (github.com/JingyangXiang/OvSW) trains the five models of
`ovsw_jax.models` in PyTorch; torchvision's ``resnet18`` / ``resnet34`` are
our real-valued ``resnet18`` / ``resnet34`` (ReActNet's teacher is the
latter, ImageNet-pretrained). `convert_state_dict` maps one of their
``state_dict`` s to ``{'params': ..., 'batch_stats': ...}`` for
``get_model(model_name, num_classes)``, checking the key sets both ways:

=============================  =======================================
PyTorch                        Flax
=============================  =======================================
``layer1.0.conv1.weight``      ``layer1_0/conv1/latent_kernel`` (binary)
conv ``weight`` (O, I, kh, kw) ``kernel`` / ``latent_kernel`` (kh, kw, I, O)
Linear ``weight`` (out, in)    ``kernel`` (in, out)
``scaling_factor`` (O,)        binary conv ``scale`` (``learnable_scale``)
BN ``weight``, ``bias``        ``scale``, ``bias``
BN ``running_mean``, ``_var``  ``batch_stats``: ``mean``, ``var``
PReLU ``weight``               ``negative_slope``
``shortcut.0``, ``.1``         ``shortcut_conv``, ``shortcut_bn``
``downsample.0``, ``.1``       ``downsample_conv``, ``downsample_bn``
``linear`` (cResNet20)         ``fc``
=============================  =======================================

Two heads need more than a transpose: cResNet18's ``fc`` is a 1x1 conv with
bias in PyTorch (weight (out, in, 1, 1)), and VGG-small's ``fc`` reads
features flattened in (C, H, W) order, where the Flax model flattens NHWC in
(H, W, C) order, so its rows are permuted.

ReActNet's models (``reactnet_a``, ``react_resnet18/34`` and their CIFAR
variants) take liuzechun/ReActNet's step-2 state_dicts: ``feature.<i>`` for
ReActNet-A's stem (0) and blocks, ``moveXY`` for the learnable shifts
(``(1, C, 1, 1)``, our ``*_shift`` and RPReLU's ``shift_in``/``shift_out``),
``prelu*`` for RPReLU's slopes, ReActNet-A's flat ``(O*I*kh*kw, 1)`` binary
``weights``; a ReAct-ResNet's one-conv blocks ``layer<s>.<2b>`` and
``.<2b+1>`` are our units ``layer<s>_<b>_a`` and ``_b`` (see `_react_key`).

torchvision's ResNets need no more than the table: their module names
(``layer{i}.{j}.downsample.0`` / ``.1``, ``fc``) are those of
`ovsw_jax.models.float_resnet`.

Ignored keys: BatchNorm ``num_batches_tracked`` and the SAD buffers
``weight_prev`` / ``tracker`` that the reference keeps in its binary convs
(optimizer state, not model state).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ovsw_jax import layers
from ovsw_jax import models

# Reference buffers that are not model variables here.
IGNORED_SUFFIXES = ("num_batches_tracked", "weight_prev", "tracker")

# Flax submodule name -> PyTorch module name, where they differ.
_MODULE_RENAMES = {
    "shortcut_conv": "shortcut.0",
    "shortcut_bn": "shortcut.1",
    "downsample_conv": "downsample.0",
    "downsample_bn": "downsample.1",
}
# Flax module name of the head -> PyTorch name, per model.
_HEAD_NAMES = {"cresnet20_1w1a": "linear"}
_BATCH_STATS = {"mean": "running_mean", "var": "running_var"}


def _to_numpy(value: Any) -> np.ndarray:
  """A numpy float32 (or integer) copy of a torch tensor or array-like."""
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()  # numpy has no bfloat16
    value = value.numpy()
  value = np.asarray(value)
  if np.issubdtype(value.dtype, np.floating):
    value = value.astype(np.float32)
  return value


def strip_prefix(state_dict: Mapping[str, Any],
                 prefix: str = "module.") -> dict[str, Any]:
  """Removes a ``DataParallel``-style key prefix where present."""
  return {(k[len(prefix):] if k.startswith(prefix) else k): v
          for k, v in state_dict.items()}


def _module_name(model_name: str, flax_name: str) -> str:
  if flax_name == "fc":
    return _HEAD_NAMES.get(model_name, "fc")
  if flax_name in _MODULE_RENAMES:
    return _MODULE_RENAMES[flax_name]
  if flax_name.startswith("layer") and "_" in flax_name:
    return flax_name.replace("_", ".", 1)  # layer1_0 -> layer1.0
  return flax_name


def _torch_key(model_name: str, collection: str, path: tuple[str, ...],
               siblings: set[str]) -> str:
  """The PyTorch key of one Flax leaf ``collection/path``."""
  *modules, leaf = path
  prefix = ".".join(_module_name(model_name, m) for m in modules)
  if collection == "batch_stats":
    name = _BATCH_STATS[leaf]
  elif leaf == "scale" and layers.LATENT_KERNEL in siblings:
    name = "scaling_factor"  # learnable scale of a binary conv
  elif leaf in ("kernel", layers.LATENT_KERNEL, "scale", "negative_slope"):
    name = "weight"
  else:
    name = leaf
  return f"{prefix}.{name}"


_REACT_MODELS = ("reactnet_a", "reactnet_a_cifar", "react_resnet18",
                 "react_resnet34", "react_resnet18_cifar")
# ReActNet-A block (``feature.<i>``): Flax module path -> reference name.
_REACTNET_A_BLOCK = {
    ("binary_3x3_shift",): "move11", ("binary_pw_shift",): "move21",
    ("rprelu1", "shift_in"): "move12", ("rprelu1",): "prelu1",
    ("rprelu1", "shift_out"): "move13", ("rprelu2", "shift_in"): "move22",
    ("rprelu2",): "prelu2", ("rprelu2", "shift_out"): "move23",
}
# ReAct-ResNet unit ``layer<s>_<b>_<a|b>_<part>`` -> reference name.
_REACT_RESNET_UNIT = {
    ("shift",): "move0", ("conv",): "binary_conv", ("bn",): "bn1",
    ("downsample",): "downsample.1", ("downsample_bn",): "downsample.2",
    ("rprelu", "shift_in"): "move1", ("rprelu",): "prelu",
    ("rprelu", "shift_out"): "move2",
}


def _react_key(model_name: str, collection: str,
               path: tuple[str, ...]) -> str:
  """The reference key (liuzechun/ReActNet's step-2 models) of a leaf.

  ReActNet-A's blocks are ``feature.<i + 1>`` (the stem is ``feature.0``);
  a ReAct-ResNet's units ``layer<s>_<b>_a`` / ``_b`` are the reference's
  one-conv blocks ``layer<s>.<2b>`` / ``.<2b + 1>``.
  """
  *modules, leaf = path
  if collection == "batch_stats":
    name = _BATCH_STATS[leaf]
  elif leaf == layers.LATENT_KERNEL and model_name.startswith("reactnet_a"):
    name = "weights"
  elif leaf in ("kernel", layers.LATENT_KERNEL, "scale", "negative_slope"):
    name = "weight"
  else:
    name = leaf
  top, rest = modules[0], tuple(modules[1:])
  if model_name.startswith("reactnet_a"):
    if top.startswith("block"):
      prefix = f"feature.{int(top[5:]) + 1}."
      return prefix + _REACTNET_A_BLOCK.get(rest, ".".join(rest)) + "." + name
    return (f"feature.0.{top}." if top in ("conv1", "bn1") else
            f"{top}.") + name
  if top.startswith("layer"):
    stage, block, half, part = top.split("_", 3)
    index = 2 * int(block) + (half == "b")
    unit = _REACT_RESNET_UNIT[(part, *rest)]
    return f"{stage}.{index}.{unit}.{name}"
  return f"{top}.{name}"


def _torch_shape(model_name: str, path: tuple[str, ...],
                 flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape PyTorch stores a Flax leaf of ``flax_shape`` in."""
  if model_name in _REACT_MODELS and path[-1] == "bias" and (
      path[-2].endswith("_shift") or path[-2] in ("shift_in", "shift_out")):
    return (1, flax_shape[0], 1, 1)  # LearnableBias
  if (model_name.startswith("reactnet_a")
      and path[-1] == layers.LATENT_KERNEL):
    return (int(np.prod(flax_shape)), 1)  # HardBinaryConv's flat weights
  if len(flax_shape) == 4:  # HWIO -> OIHW
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if len(flax_shape) == 2:  # (in, out) -> (out, in)
    if model_name == "cresnet18_1w1a" and path[0] == "fc":
      return (flax_shape[1], flax_shape[0], 1, 1)  # a 1x1 conv in PyTorch
    return (flax_shape[1], flax_shape[0])
  return tuple(flax_shape)


def _to_flax(model_name: str, path: tuple[str, ...], value: np.ndarray,
             flax_shape: tuple[int, ...]) -> np.ndarray:
  """Re-lays out a PyTorch array as the Flax leaf ``path``."""
  if value.ndim != len(flax_shape) and len(flax_shape) != 2:
    if len(flax_shape) == 4:  # ReActNet-A's flat (O*I*kh*kw, 1) weights
      h, w, i, o = flax_shape
      value = value.reshape(o, i, h, w)
    else:  # LearnableBias (1, C, 1, 1)
      return value.reshape(flax_shape)
  if len(flax_shape) == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if len(flax_shape) == 2:
    value = value.reshape(value.shape[0], value.shape[1])  # drop 1x1 of a conv
    if model_name == "vggsmall_1w1a" and path[0] == "fc":
      # PyTorch flattened (C, H, W); the Flax model flattens (H, W, C).
      out, features = value.shape
      channels = 512
      side = math.isqrt(features // channels)
      value = value.reshape(out, channels, side, side).transpose(0, 2, 3, 1)
      value = value.reshape(out, features)
    return value.T
  return value


def abstract_variables(model_name: str, num_classes: int,
                       learnable_scale: bool = False) -> dict[str, Any]:
  """The model's variables as ShapeDtypeStructs (traced, never allocated)."""
  # Only binary models take learnable_scale.
  options = {"learnable_scale": True} if learnable_scale else {}
  model = models.get_model(model_name, num_classes, **options)
  # Parameter shapes don't depend on the image size except through
  # VGG-small's classifier, which INPUT_SHAPES fixes; trace only, no init.
  x = jax.ShapeDtypeStruct((1, *models.INPUT_SHAPES[model_name]), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)


def torch_key_map(model_name: str, num_classes: int,
                  learnable_scale: bool = False) -> dict[str, str]:
  """Maps each Flax leaf ``'collection/module/.../leaf'`` to its PyTorch key.

  Args:
    model_name: one of `ovsw_jax.models.list_models()`.
    num_classes: number of logits.
    learnable_scale: whether the binary convs carry a learnable ``scale``
      (the reference's ``scaling_factor``).

  Returns:
    ``{'params/layer1_0/conv1/latent_kernel': 'layer1.0.conv1.weight', ...}``.
  """
  model_name = models.canonical_name(model_name)
  variables = abstract_variables(model_name, num_classes, learnable_scale)
  return {"/".join((c, *p)): key
          for c, p, key, _ in _leaves(model_name, variables)}


def _leaves(model_name: str, variables: Mapping[str, Any]):
  """(collection, path, torch key, abstract leaf) for every Flax leaf."""
  for collection in ("params", "batch_stats"):
    flat = traverse_util.flatten_dict(variables.get(collection, {}))
    for path, leaf in flat.items():
      siblings = {p[-1] for p in flat if p[:-1] == path[:-1]}
      key = (_react_key(model_name, collection, path)
             if model_name in _REACT_MODELS
             else _torch_key(model_name, collection, path, siblings))
      yield collection, path, key, leaf


def convert_state_dict(model_name: str,
                       state_dict: Mapping[str, Any],
                       num_classes: Optional[int] = None) -> dict[str, Any]:
  """Converts a reference PyTorch ``state_dict`` to Flax variables.

  Args:
    model_name: one of `ovsw_jax.models.list_models()` (case-insensitive).
    state_dict: PyTorch key -> tensor (torch tensors or numpy arrays); a
      ``module.`` prefix is stripped.
    num_classes: number of logits; None reads it from the head's weight.

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` of float32 numpy arrays, ready for
    ``get_model(model_name, num_classes).apply``. If the checkpoint has
    ``scaling_factor`` s, build the model with ``learnable_scale=True``.

  Raises:
    ValueError: on missing or unexpected keys (all listed), or on a shape
      that does not match the model (naming the key).
  """
  model_name = models.canonical_name(model_name)
  tensors = {k: v for k, v in strip_prefix(state_dict).items()
             if not k.endswith(IGNORED_SUFFIXES)}
  head = _HEAD_NAMES.get(model_name, "fc") + ".weight"
  if num_classes is None:
    if head not in tensors:
      raise ValueError(
          f"Cannot infer num_classes: the state_dict has no {head!r}; pass "
          "num_classes explicitly.")
    num_classes = int(np.shape(tensors[head])[0])
  learnable_scale = any(k.endswith(".scaling_factor") for k in tensors)
  variables = abstract_variables(model_name, num_classes, learnable_scale)

  leaves = list(_leaves(model_name, variables))
  expected = {key for _, _, key, _ in leaves}
  missing = sorted(expected - set(tensors))
  unexpected = sorted(set(tensors) - expected)
  if missing or unexpected:
    raise ValueError(
        f"state_dict does not match {model_name!r} "
        f"(num_classes={num_classes}): missing keys {missing}, unexpected "
        f"keys {unexpected}. Check model_name.")

  out: dict[str, dict[tuple[str, ...], np.ndarray]] = {
      "params": {}, "batch_stats": {}}
  mismatches = []
  for collection, path, key, leaf in leaves:
    value = _to_numpy(tensors[key])
    want = _torch_shape(model_name, path, leaf.shape)
    if value.shape != want:
      mismatches.append(
          f"{key!r}: got {value.shape}, expected {want} (Flax "
          f"{'/'.join((collection, *path))} {leaf.shape})")
      continue
    out[collection][path] = _to_flax(model_name, path, value,
                                     leaf.shape).astype(leaf.dtype)
  if mismatches:
    raise ValueError(
        f"Shape mismatch for {model_name!r} (num_classes={num_classes}): "
        + "; ".join(mismatches) + ".")
  return {c: traverse_util.unflatten_dict(v) for c, v in out.items()}


def load_torch_checkpoint(path: Union[str, os.PathLike],
                          model_name: str,
                          num_classes: Optional[int] = None,
                          weights_only: bool = True) -> dict[str, Any]:
  """Loads a reference ``.pth`` checkpoint and converts it with
  `convert_state_dict`.

  Args:
    path: file written by ``torch.save``: a ``state_dict``, or a dict holding
      one under ``'state_dict'`` (the reference's format); ``module.``
      prefixes are stripped.
    model_name: one of `ovsw_jax.models.list_models()`.
    num_classes: number of logits; None reads it from the checkpoint.
    weights_only: passed to ``torch.load``. Set False only for trusted files
      that pickle other objects (e.g. an argparse namespace).

  Returns:
    ``{'params': ..., 'batch_stats': ...}``.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "load_torch_checkpoint needs PyTorch: pip install torch (the CPU "
        "build is enough).") from e
  checkpoint = torch.load(path, map_location="cpu", weights_only=weights_only)
  if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
    checkpoint = checkpoint["state_dict"]
  if not isinstance(checkpoint, Mapping):
    raise ValueError(
        f"{os.fspath(path)!r} holds a {type(checkpoint).__name__}, not a "
        "state_dict or a dict with a 'state_dict' entry.")
  return convert_state_dict(model_name, strip_prefix(checkpoint), num_classes)

