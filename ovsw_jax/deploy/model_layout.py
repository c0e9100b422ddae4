"""The model a packed file's header names, built abstractly.

`model_layout` runs ``jax.eval_shape`` of the model's init (no weights, no
compute) and records the modules it calls: what `schema.check` compares a
file against. `binary_fields` is a binary layer's table entry, written by
`export` and expected by `schema`, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ovsw_jax import layers
from ovsw_jax import models


@dataclasses.dataclass(frozen=True)
class Module:
  """One module of the model as its abstract init called it."""
  module: nn.Module
  in_shape: tuple[int, ...]
  params: Mapping[str, Any]  # its params' ShapeDtypeStructs


def resolve_padding(module: nn.Module, in_hw: Sequence[int]
                    ) -> list[list[int]]:
  """A conv's explicit ``[[top, bottom], [left, right]]`` zero padding."""
  ks = tuple(module.kernel_size)
  if module.padding is None:
    return [list(p) for p in layers.torch_padding(ks)]
  if isinstance(module.padding, str):
    return [list(p) for p in lax.padtype_to_pads(
        tuple(in_hw), ks, tuple(module.strides), module.padding)]
  return [list(p) for p in module.padding]


def binary_fields(module: nn.Module, kernel_shape: Sequence[int],
                  in_shape: Sequence[int]) -> dict[str, Any]:
  """A binary layer's table fields (`export` writes them, `schema.check`
  expects them): ``in_features``, and for a conv its kernel size, strides
  and padding."""
  fields = {"in_features": int(kernel_shape[-2])}
  if len(kernel_shape) == 4:
    fields.update(kernel_size=[int(k) for k in kernel_shape[:2]],
                  strides=[int(s) for s in module.strides],
                  padding=resolve_padding(module, in_shape[1:3]))
  return fields


@functools.lru_cache(maxsize=16)
def model_layout(key: str) -> tuple[dict[str, Module], dict[str, Any]]:
  """The modules (by path) and abstract variables of a model.

  Args:
    key: JSON of ``[name, options, num_classes, image_shape]`` (hashable,
      for the cache).

  Returns:
    ``(modules, variables)``: each binary layer, float conv/dense and
    BatchNorm the model's init called, and the ``params`` and
    ``batch_stats`` of ``jax.eval_shape`` of its init (ShapeDtypeStructs).
  """
  name, options, num_classes, image_shape = json.loads(key)
  model = models.get_model(name, num_classes, **options)
  calls: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(
        context.module, (layers.BinaryConv, layers.BinaryDense, nn.Conv,
                         nn.Dense, nn.BatchNorm)):
      calls["/".join(context.module.path)] = (context.module,
                                              tuple(args[0].shape))
    return next_fun(*args, **kwargs)

  def init():
    with nn.intercept_methods(interceptor):
      return model.init(jax.random.key(0),
                        jnp.zeros((1, *image_shape), jnp.float32))

  variables = jax.eval_shape(init)
  modules = {path: Module(m, shape, _subtree(variables["params"], path))
             for path, (m, shape) in calls.items()}
  return modules, {k: v for k, v in variables.items()
                   if k in ("params", "batch_stats")}


def _subtree(tree: Mapping[str, Any], path: str) -> Mapping[str, Any]:
  node = tree
  for p in path.split("/"):
    node = node.get(p, {}) if isinstance(node, Mapping) else {}
  return node

