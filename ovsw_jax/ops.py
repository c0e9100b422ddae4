"""Binarization estimators: a +-1 forward with a chosen surrogate gradient.

Every estimator here is a `jax.custom_vjp` whose forward is exactly +1 where
``x >= 0`` and -1 elsewhere. The reference implementation uses ``torch.sign``,
which maps 0 to 0; we map 0 to +1 (as larq does) so that the forward is always
+-1 and bit-packable. Outputs keep the input dtype, so the estimators run in
float32 and bfloat16 alike (+-1 is exact in both).
"""

from __future__ import annotations

import functools
from typing import Callable, Union

import jax
import jax.numpy as jnp

Estimator = Callable[[jax.Array], jax.Array]


def _binarize(x: jax.Array) -> jax.Array:
  one = jnp.ones((), dtype=x.dtype)
  return jnp.where(x >= 0, one, -one)


@jax.custom_vjp
def sign_ste(x: jax.Array) -> jax.Array:
  """Sign with the plain straight-through estimator (identity gradient).

  The weight estimator of OvSW: ``sign_ste(w)`` is +-1 forward and passes the
  incoming gradient to the latent weight unchanged.

  Args:
    x: input array, any float dtype.

  Returns:
    +1 where ``x >= 0``, else -1, in ``x.dtype``.
  """
  return _binarize(x)


def _sign_ste_fwd(x):
  return _binarize(x), None


def _sign_ste_bwd(_, g):
  return (g,)


sign_ste.defvjp(_sign_ste_fwd, _sign_ste_bwd)


@jax.custom_vjp
def approx_sign(x: jax.Array) -> jax.Array:
  """Sign with the Bi-Real polynomial estimator: gradient ``g * max(0, 2 - 2|x|)``.

  The derivative of the piecewise-quadratic approximation of sign used by
  Bi-Real Net for activations.

  Args:
    x: input array, any float dtype.

  Returns:
    +1 where ``x >= 0``, else -1, in ``x.dtype``.

  References:
    Liu et al., `Bi-Real Net <https://arxiv.org/abs/1808.00278>`_, ECCV 2018.
  """
  return _binarize(x)


def _approx_sign_fwd(x):
  return _binarize(x), x


def _approx_sign_bwd(x, g):
  return (g * jnp.maximum(0, 2 - 2 * jnp.abs(x)).astype(g.dtype),)


approx_sign.defvjp(_approx_sign_fwd, _approx_sign_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def ste_sign(x: jax.Array, clip_value: float = 1.0) -> jax.Array:
  """Sign with the clipped straight-through estimator (larq's ``ste_sign``).

  The gradient passes unchanged where ``|x| <= clip_value`` and is zero
  elsewhere.

  Args:
    x: input array, any float dtype.
    clip_value: half-width of the window where the gradient passes.

  Returns:
    +1 where ``x >= 0``, else -1, in ``x.dtype``.

  References:
    Hubara et al., `Binarized Neural Networks
    <https://arxiv.org/abs/1602.02830>`_, NeurIPS 2016.
  """
  return _binarize(x)


def _ste_sign_fwd(x, clip_value):
  return _binarize(x), x


def _ste_sign_bwd(clip_value, x, g):
  return (jnp.where(jnp.abs(x) <= clip_value, g, jnp.zeros_like(g)),)


ste_sign.defvjp(_ste_sign_fwd, _ste_sign_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def swish_sign(x: jax.Array, beta: float = 5.0) -> jax.Array:
  """Sign with the SwishSign estimator (BNN+; larq's ``swish_sign``).

  The gradient is the derivative of ``2 sigmoid(bx) (1 + bx (1 - sigmoid(bx))) - 1``,
  that is ``b (2 - bx tanh(bx / 2)) / (1 + cosh(bx))``.

  Args:
    x: input array, any float dtype.
    beta: sharpness of the surrogate.

  Returns:
    +1 where ``x >= 0``, else -1, in ``x.dtype``.

  References:
    Darabi et al., `BNN+ <https://arxiv.org/abs/1812.11800>`_, 2018.
  """
  return _binarize(x)


def _swish_sign_fwd(x, beta):
  return _binarize(x), x


def _swish_sign_bwd(beta, x, g):
  # Computed in float32: cosh overflows bf16 range quickly, and 1/(1+cosh) -> 0.
  bx = beta * x.astype(jnp.float32)
  grad = beta * (2 - bx * jnp.tanh(bx / 2)) / (1 + jnp.cosh(bx))
  return (g * grad.astype(g.dtype),)


swish_sign.defvjp(_swish_sign_fwd, _swish_sign_bwd)


ESTIMATORS: dict[str, Estimator] = {
    "sign_ste": sign_ste,
    "approx_sign": approx_sign,
    "ste_sign": ste_sign,
    "swish_sign": swish_sign,
}


def get_estimator(estimator: Union[str, Estimator]) -> Estimator:
  """Returns the estimator called ``estimator``, or ``estimator`` if callable.

  Raises:
    ValueError: for a name that is not in ``ESTIMATORS``.
  """
  if callable(estimator):
    return estimator
  try:
    return ESTIMATORS[estimator]
  except KeyError:
    raise ValueError(
        f"Unknown estimator {estimator!r}; valid names are "
        f"{sorted(ESTIMATORS)}, or pass a callable.") from None
