"""Which parameters are binary: masks and labels built from the parameter tree.

A binary layer stores its latent (float) weights under the parameter name
``latent_kernel`` (`ovsw_jax.layers.LATENT_KERNEL`), so every function here
needs the parameter tree alone:

* `binary_kernel_mask`: True on the latent kernels, for `optax.masked`.
* `binary_or_float`: 'binary' / 'float' labels, for `optax.partition`.
* `check_mask`: a clear error when a mask does not fit a params tree.
* `path_name`: the '/'-joined name of a leaf, as diagnostics key their
  results (``'params/conv1/latent_kernel'``).
"""

from __future__ import annotations

from typing import Any, Callable, Union

import jax
import optax

from ovsw_jax.layers import LATENT_KERNEL

# A tree of bools (the params' structure or a prefix of it), or a callable
# building one from the params, as `optax.masked` takes.
Mask = Union[Any, Callable[[optax.Params], Any]]

BINARY = "binary"
FLOAT = "float"


def path_name(path: tuple[Any, ...]) -> str:
  """Joins a JAX key path with '/', e.g. ``'params/conv1/latent_kernel'``.

  Args:
    path: a key path as given by `jax.tree_util.tree_flatten_with_path`.

  Returns:
    The '/'-joined names of the dict keys, attributes and indices in ``path``.
  """
  names = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        names.append(str(getattr(entry, attr)))
        break
    else:
      names.append(str(entry))
  return "/".join(names)


def binary_kernel_mask(params: optax.Params) -> Any:
  """Selects the latent kernels of the binary layers.

  Works on plain dicts and FrozenDicts, with or without the ``{'params': ...}``
  wrapper, and on trees holding `optax.MaskedNode` (as seen inside
  `optax.partition`).

  Args:
    params: a parameter (or update) tree.

  Returns:
    A tree of the same structure whose leaves are True exactly on leaves whose
    last key is ``latent_kernel`` (`ovsw_jax.layers.LATENT_KERNEL`).
  """

  def is_binary(path, _):
    return bool(path) and getattr(path[-1], "key", None) == LATENT_KERNEL

  return jax.tree_util.tree_map_with_path(is_binary, params)


def binary_or_float(params: optax.Params) -> Any:
  """`optax.partition` labels: 'binary' on binary latent kernels, else 'float'.

  Example, Bop on the binary kernels and SGD on everything else::

    tx = optax.partition({"binary": bop(), "float": optax.sgd(0.1)},
                         binary_or_float)

  Args:
    params: a parameter tree.

  Returns:
    A tree of the same structure with the string ``'binary'`` (`BINARY`) on
    the leaves `binary_kernel_mask` selects and ``'float'`` (`FLOAT`)
    elsewhere.
  """
  return jax.tree.map(lambda b: BINARY if b else FLOAT,
                      binary_kernel_mask(params))


def check_mask(mask_tree: Any, params: optax.Params,
               name: str = "mask") -> None:
  """Checks that a mask tree fits a params tree, as `optax.masked` needs.

  Args:
    mask_tree: a tree of bools.
    params: the params tree; ``mask_tree`` must be it or a prefix of it.
    name: the mask's name in the error message.

  Raises:
    ValueError: naming both tree structures when they do not fit.
  """
  try:
    jax.tree.structure(mask_tree).flatten_up_to(params)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f"`{name}` must have the structure of the params tree (or a prefix of"
        f" it), got mask structure {jax.tree.structure(mask_tree)} for params"
        f" structure {jax.tree.structure(params)}. Build the mask from the"
        " params (e.g. a callable such as `binary_kernel_mask`)."
    ) from e
