"""ReActNet's layers: RSign, RPReLU and the mean-|w| scaled binary conv.

ReActNet (Liu et al., ECCV 2020) reshapes the activation distribution with
learnable per-channel shifts: RSign is ``sign(x + b)`` and RPReLU is
``prelu(x + b1) + b2``. Its binary conv scales the +-1 kernel per output
channel by ``mean |w|``, with no gradient through the scale, and trains the
latent kernel with the clipped straight-through estimator (gradient 1 inside
``|w| < 1``, exactly as the reference's ``HardBinaryConv``).

`RSign` is ``LearnableBias`` then the Bi-Real estimator. `ReActConv` is a
`layers.BinaryConv` that overrides its steps, as
`ovsw_jax.recu.ReCUConv` does (docs/semantics.md, section 2).

References:
  Liu et al., 2020. ReActNet: Towards Precise Binary Neural Network with
  Generalized Activation Functions. https://arxiv.org/abs/2003.03488
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax import layers
from ovsw_jax import ops

Dtype = Any


def mean_abs_scale(kernel: jax.Array) -> jax.Array:
  """ReActNet's per-output-channel scale ``mean |w|``, with no gradient.

  Args:
    kernel: latent kernel with output channels on the last axis.

  Returns:
    The scale, shape ``(C_out,)``.
  """
  axes = tuple(range(kernel.ndim - 1))
  return jax.lax.stop_gradient(jnp.mean(jnp.abs(kernel), axis=axes))


class LearnableBias(nn.Module):
  """A learnable per-channel shift ``x + b`` (ReActNet's ``LearnableBias``).

  Attributes:
    param_dtype: dtype of the bias (initialised to 0).
  """

  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],),
                      self.param_dtype)
    return x + bias.astype(x.dtype)


class RSign(nn.Module):
  """``sign(x + b)`` with a learnable per-channel ``b`` (ReActNet's RSign).

  The forward is +-1 (0 -> +1); the backward is the Bi-Real estimator's
  ``g * max(0, 2 - 2|x + b|)`` for the input and, summed over every axis but
  the last, for ``b`` (`ops.approx_sign`). The models apply `LearnableBias`
  and let the binary conv binarize (the same function, and the conv's
  ``activation_estimator`` stays configurable); this module is RSign alone.

  Attributes:
    param_dtype: dtype of the bias (initialised to 0).
  """

  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return ops.approx_sign(LearnableBias(self.param_dtype, name="shift")(x))


class RPReLU(nn.Module):
  """``prelu(x + b1) + b2`` with per-channel slope and shifts (Eq. 3 of
  ReActNet); the reference's ``move12 -> prelu1 -> move13``.

  Attributes:
    negative_slope_init: initial slope (torch's 0.25).
    param_dtype: dtype of the parameters.
  """

  negative_slope_init: float = 0.25
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = LearnableBias(self.param_dtype, name="shift_in")(x)
    slope = self.param("negative_slope",
                       nn.initializers.constant(self.negative_slope_init),
                       (x.shape[-1],), self.param_dtype)
    x = jnp.where(x >= 0, x, slope.astype(x.dtype) * x)
    return LearnableBias(self.param_dtype, name="shift_out")(x)


class ReActConv(layers.BinaryConv):
  """The binary conv of ReActNet: ``conv(sign(a), sign(w)) * mean|w|``.

  Apply `LearnableBias` before it to get RSign's ``sign(x + b)``. Overrides
  of `layers.BinaryConv`'s steps:

  * `normalize_input`: none (ReActNet binarizes the shifted input directly);
  * `weight_scale`: ``mean |w|`` per output channel, no gradient;
  * `binary_weight`: ``sign(w)`` whose gradient is the clipped STE divided
    by the scale, so that ``d out / d w`` equals the reference's, where the
    scale is inside the detached binary kernel.
  """

  def normalize_input(self, x: jax.Array) -> jax.Array:
    return x

  def weight_scale(self, kernel: jax.Array) -> jax.Array:
    return mean_abs_scale(kernel)

  def binary_weight(self, kernel: jax.Array, train: bool) -> jax.Array:
    del train  # The same forward in training and evaluation.
    clipped = jnp.clip(kernel, -1.0, 1.0)
    # Forward: exactly sign(w) (x - x == 0); backward: 1{|w|<1} / scale.
    surrogate = (clipped - jax.lax.stop_gradient(clipped)) / (
        mean_abs_scale(kernel) + jnp.finfo(kernel.dtype).tiny)
    return jax.lax.stop_gradient(ops.get_estimator("sign_ste")(kernel)) + (
        surrogate)

  @nn.nowrap
  def eval_signs_and_scale(self, params: Mapping[str, Any]
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The +-1 weights and ``mean |w|`` of the eval forward (NumPy)."""
    kernel = jnp.asarray(params[layers.LATENT_KERNEL], jnp.float32)
    # Jitted, as the eval forward computes it, to the last bit.
    scale = jax.jit(mean_abs_scale)(kernel)
    return (np.where(np.asarray(kernel) >= 0, 1.0, -1.0).astype(np.float32),
            np.asarray(scale, np.float32))
