"""Bop, the binary optimizer of Helwegen et al. (NeurIPS 2019), for optax.

Bop has no latent weights: it keeps an exponential moving average ``m`` of the
gradient of each binary weight and flips the weight when ``m`` is large enough
and points the same way as the weight (so gradient descent wants it to
change sign)::

  m <- (1 - gamma) * m + gamma * g
  w <- -w   where |m| > threshold and sign(m) == sign(w)

Only binary kernels should be given to it; the float parameters (BatchNorm,
first and last layers, ReCU's alpha, ...) need another optimizer, e.g.::

  tx = optax.partition(
      {"binary": bop(), "float": optax.sgd(0.1, momentum=0.9)},
      ovsw_jax.masks.binary_or_float)
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# The wording of optax's own (private) `base.NO_PARAMS_MSG`.
_NO_PARAMS_MSG = (
    "You are using a transformation that requires the current value of "
    "parameters, but you are not passing `params` when calling `update`."
)


class BopState(NamedTuple):
  """State of `bop`.

  Attributes:
    momentum: per weight, the moving average ``m`` of the gradient (float32,
      same shapes as the params, starts at 0).
  """

  momentum: optax.Updates


def bop(threshold: float = 1e-8, gamma: float = 1e-4
        ) -> optax.GradientTransformation:
  """The Bop optimizer for binary weights: flips signs, has no learning rate.

  Elementwise, with ``g`` the incoming gradient and ``w`` the current params::

    m      <- (1 - gamma) * m + gamma * g        # m starts at 0
    flip    = |m| > threshold  and  sign(m) == sign(w)
    update  = -2 w where flip, else 0

  so that `optax.apply_updates` turns ``w`` into ``-w`` where it flips and
  leaves it unchanged elsewhere. The sign of ``w`` follows `ovsw_jax.ops`
  (``w >= 0`` is +1); ``m`` enters the test only when ``|m| > threshold >=
  0``, so its sign is never 0 there.

  Bop treats the params as the binary weights themselves, typically +-1. Given
  real-valued latent kernels (e.g. this package's, initialised kaiming
  normal), a flip negates the latent value and keeps its magnitude: the
  binary forward ``sign(w)`` flips exactly as Bop prescribes and ``|w|`` never
  changes. (larq's ``Bop`` flips its variables in place too but writes
  ``sign(-sign(w * m - threshold) * w)``, i.e. +-1, and tests ``w * m >
  threshold``; on +-1 weights both are the same as here.) The update is the
  whole step: chain nothing after it (no learning rate, no weight decay).

  ``threshold`` and ``gamma`` may be injected with
  `optax.inject_hyperparams`, e.g. to decay ``gamma`` on a schedule as the
  paper does.

  Args:
    threshold: ``tau``, the minimum ``|m|`` for a flip, >= 0.
    gamma: the adaptivity rate of the moving average, in (0, 1].

  Returns:
    A :class:`optax.GradientTransformation` whose state is a `BopState`.

  References:
    Helwegen et al., `Latent Weights Do Not Exist: Rethinking Binarized
    Neural Network Optimization <https://arxiv.org/abs/1906.02107>`_, NeurIPS
    2019
  """
  if isinstance(threshold, numbers.Real) and threshold < 0:
    raise ValueError(
        f"threshold must be >= 0, got {threshold}. Bop's default is 1e-8.")
  if isinstance(gamma, numbers.Real) and not 0 < gamma <= 1:
    raise ValueError(
        f"gamma must be in (0, 1], got {gamma}. Bop's default is 1e-4.")

  def init_fn(params):
    return BopState(momentum=jax.tree.map(
        lambda w: jnp.zeros(w.shape, jnp.float32), params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(_NO_PARAMS_MSG)
    momentum = jax.tree.map(
        lambda m, g: (1 - gamma) * m + gamma * g.astype(jnp.float32),
        state.momentum, updates)

    def flip(m, w):
      flipped = (jnp.abs(m) > threshold) & ((m > 0) == (w >= 0))
      return jnp.where(flipped, -2 * w, jnp.zeros_like(w))

    return jax.tree.map(flip, momentum, params), BopState(momentum=momentum)

  return optax.GradientTransformation(init_fn, update_fn)

