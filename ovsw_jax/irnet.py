"""IR-Net: Libra-PB weight balancing and the EDE estimator.

IR-Net (Qin et al., CVPR 2020) binarizes, in every binary conv,

* the weights after Libra Parameter Binarization: each output channel is
  standardised, ``w_s = (w - mean_c) / std_c(ddof=1)`` (with gradient), its
  sign taken, and the result scaled by the power of two nearest (in log2) to
  ``mean(|w_s|)`` per channel (no gradient);
* the activations as they come (no per-sample normalisation);

both through the Error Decay Estimator (EDE): forward ``sign``, backward
``k * t * (1 - tanh(t x)**2)``, with ``t`` rising from 0.1 to 10 on a log
scale over training and ``k = max(1 / t, 1)`` (`ede_schedule`).

This follows the authors' code (htqin/IR-Net, CIFAR ``ir_1w1a.py`` and
``trainer.py``) where it differs from the paper: the standardisation has no
epsilon, the scale is ``2 ** round(log2(mean|w_s|))`` per output channel (the
paper's ``s`` is written as a layer-wide shift), and ``(k, t)`` change once per
epoch, ``t = 10 ** (log10(t_min) + (log10(t_max) - log10(t_min)) * e / E)``.
Zero binarizes to +1, as every estimator of `ovsw_jax.ops` (torch.sign gives
0).

How ``(k, t)`` reach the layers
-------------------------------
As ReCU's ``tau`` (`ovsw_jax.recu`): every `IRNetConv` holds float32 scalars
``k`` and ``t`` in the collection ``'irnet'`` (`EDE_COLLECTION`), created by
``init`` at the schedule's epoch-0 values; the trainer ('irnet' method part)
sets them once per epoch with `set_ede`, keeps them in the train state and
its checkpoints. Evaluation does not read them (EDE's forward is ``sign``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax import layers

EDE_COLLECTION = "irnet"
K = "k"
T = "t"

Number = Union[int, float, jax.Array]


def ede_schedule(epoch: Number, num_epochs: float, t_min: float = 0.1,
                 t_max: float = 10.0) -> tuple[Number, Number]:
  """IR-Net's EDE schedule: ``(k, t)`` for an epoch.

  ``t = 10 ** (log10(t_min) + (log10(t_max) - log10(t_min)) * epoch / E)``
  and ``k = 1 / t`` while ``t < 1``, else 1 (the authors' ``Log_UP``).

  Args:
    epoch: the 0-based epoch; a Python number or a traced array.
    num_epochs: ``E``, > 0.
    t_min: ``t`` at epoch 0, > 0 (IR-Net: 0.1).
    t_max: ``t`` at epoch ``E``, >= t_min (IR-Net: 10).

  Returns:
    ``(k, t)``: Python floats for a Python ``epoch``, else float32 arrays.

  Raises:
    ValueError: for ``num_epochs <= 0`` or not ``0 < t_min <= t_max``.

  References:
    Qin et al., `Forward and Backward Information Retention for Accurate
    Binary Neural Networks <https://arxiv.org/abs/1909.10788>`_, CVPR 2020
  """
  if not num_epochs > 0:
    raise ValueError(f"num_epochs must be > 0, got {num_epochs}.")
  if not 0 < t_min <= t_max:
    raise ValueError(f"need 0 < t_min <= t_max, got t_min={t_min}, "
                     f"t_max={t_max}. IR-Net uses 0.1 and 10.")
  lo, hi = math.log10(t_min), math.log10(t_max)
  if isinstance(epoch, numbers.Real):
    t = 10.0 ** (lo + (hi - lo) / num_epochs * epoch)
    return (1.0 / t if t < 1 else 1.0), t
  e = jnp.asarray(epoch, jnp.float32)
  t = jnp.power(jnp.float32(10.0), lo + (hi - lo) / num_epochs * e)
  return jnp.where(t < 1, 1.0 / t, 1.0).astype(jnp.float32), t


def set_ede(ede_variables: Any, k: Number, t: Number) -> Any:
  """Sets every ``k`` and ``t`` of an ``'irnet'`` collection.

  Args:
    ede_variables: the ``'irnet'`` collection (leaves named ``k`` and ``t``).
    k: EDE's gradient scale.
    t: EDE's tanh sharpness.

  Returns:
    The tree with float32 leaves equal to ``k`` or ``t`` (by their name).
  """
  def leaf(path, x):
    value = k if path[-1].key == K else t
    return jnp.full(jnp.shape(x), value, jnp.float32)

  return jax.tree_util.tree_map_with_path(leaf, ede_variables)


@jax.custom_vjp
def ede(x: jax.Array, k: jax.Array, t: jax.Array) -> jax.Array:
  """The Error Decay Estimator: ``sign(x)`` (0 -> +1) forward, backward
  ``g * k * t * (1 - tanh(t x)**2)``; no gradient for ``k`` and ``t``."""
  return jnp.where(x < 0, -1, 1).astype(x.dtype)


def _ede_fwd(x, k, t):
  return ede(x, k, t), (x, k, t)


def _ede_bwd(res, g):
  x, k, t = res
  xf = x.astype(jnp.float32)
  grad = k * t * (1 - jnp.square(jnp.tanh(xf * t)))
  return ((g * grad.astype(g.dtype)).astype(x.dtype), jnp.zeros_like(k),
          jnp.zeros_like(t))


ede.defvjp(_ede_fwd, _ede_bwd)


def balanced_weight(kernel: jax.Array) -> jax.Array:
  """Libra-PB's balanced weights ``(w - mean_c) / std_c(ddof=1)``, float32,
  statistics per output channel (every axis but the last), with gradient."""
  w = kernel.astype(jnp.float32)
  axes = tuple(range(w.ndim - 1))
  centered = w - jnp.mean(w, axis=axes, keepdims=True)
  return centered / jnp.std(centered, axis=axes, keepdims=True, ddof=1)


def power_of_two_scale(kernel: jax.Array) -> jax.Array:
  """Libra-PB's scale: ``2 ** round(log2(mean|w_s|))`` per output channel,
  ``w_s`` the balanced weights; float32, without gradient."""
  w_s = balanced_weight(jax.lax.stop_gradient(kernel))
  mean_abs = jnp.mean(jnp.abs(w_s), axis=tuple(range(w_s.ndim - 1)))
  return jnp.exp2(jnp.round(jnp.log2(mean_abs)))


class IRNetConv(layers.BinaryConv):
  """2-D binary convolution of IR-Net: Libra-PB weights and EDE.

  For NHWC input ``a`` and HWIO latent kernel ``w``::

      w_b = ede(balanced_weight(w), k, t)     # +-1, EDE gradient
      a_b = ede(a, k, t)                      # no per-sample normalisation
      out = conv(a_b, w_b) * power_of_two_scale(w)

  A `ovsw_jax.layers.BinaryConv` overriding its steps: the binary weight,
  the scale (not learnable), the activation normalisation (none) and the
  activation binarization (EDE with the layer's ``(k, t)``). Pass
  ``conv=IRNetConv`` to `ovsw_jax.models.get_model`. Params:
  ``latent_kernel``; variables ``('irnet', 'k')`` and ``('irnet', 't')``,
  set by the trainer once per epoch (module docstring).

  Attributes:
    learnable_scale: must stay False (IR-Net's scale is Libra-PB's).
    k_init: ``k`` set by ``init`` (epoch 0 of `ede_schedule`: 10).
    t_init: ``t`` set by ``init`` (0.1).

  References:
    Qin et al., `Forward and Backward Information Retention for Accurate
    Binary Neural Networks <https://arxiv.org/abs/1909.10788>`_, CVPR 2020
  """

  learnable_scale: bool = False
  k_init: float = 10.0
  t_init: float = 0.1

  def _ede_params(self, train: bool):
    has = self.has_variable(EDE_COLLECTION, K)
    if not (self.is_initializing() or has):
      if train:
        raise ValueError(
            f"IRNetConv {self.name!r} needs the {EDE_COLLECTION!r} collection "
            f"in training: pass variables={{'params': ..., "
            f"'{EDE_COLLECTION}': variables['{EDE_COLLECTION}'], ...}} to "
            "apply (model.init creates it; ovsw_jax.irnet.set_ede updates "
            "it each epoch).")
      # The forward is sign whatever (k, t): eval needs neither.
      return jnp.float32(self.k_init), jnp.float32(self.t_init)
    if has:  # Read by the weight and the activation binarization both.
      return (self.get_variable(EDE_COLLECTION, K),
              self.get_variable(EDE_COLLECTION, T))
    k = self.variable(EDE_COLLECTION, K,
                      lambda: jnp.asarray(self.k_init, jnp.float32)).value
    t = self.variable(EDE_COLLECTION, T,
                      lambda: jnp.asarray(self.t_init, jnp.float32)).value
    return k, t

  def normalize_input(self, x: jax.Array) -> jax.Array:
    return x  # IR-Net binarizes the activations as they come.

  def weight_scale(self, kernel: jax.Array) -> jax.Array:
    if self.learnable_scale:
      raise ValueError(
          "IRNetConv's scale is Libra-PB's power of two; learnable_scale=True "
          "is not supported (leave it unset, or use ovsw_jax.layers."
          "BinaryConv).")
    return power_of_two_scale(kernel)

  def binary_weight(self, kernel: jax.Array, train: bool) -> jax.Array:
    k, t = self._ede_params(train)
    return ede(balanced_weight(kernel), k, t)

  def binarize_input(self, x: jax.Array, train: bool) -> jax.Array:
    if not self.binarize_activations:
      return x
    k, t = self._ede_params(train)
    return ede(x, k.astype(x.dtype), t.astype(x.dtype))

  @nn.nowrap
  def eval_signs_and_scale(self, params: Mapping[str, Any]
                           ) -> tuple[np.ndarray, np.ndarray]:
    kernel = jnp.asarray(params[layers.LATENT_KERNEL], jnp.float32)
    # Jitted, as the eval forward computes them (see BinaryConv's).
    w_s = jax.jit(balanced_weight)(kernel)
    signs = np.where(np.asarray(w_s) < 0, -1.0, 1.0).astype(np.float32)
    return signs, np.asarray(jax.jit(power_of_two_scale)(kernel), np.float32)

