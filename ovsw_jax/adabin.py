"""AdaBin: adaptive binary sets for weights and activations, and Maxout.

AdaBin (Tu et al., ECCV 2022) replaces the fixed {-1, +1} of a BNN by
adaptive two-element sets:

* weights, per output channel ``o``: ``beta_w = mean_o(w)``, ``alpha_w =
  std_o(w)`` (population, ddof=0, no epsilon) and ``w_b = alpha_w *
  ede((w - beta_w) / alpha_w, k, t) + beta_w``, i.e. ``w_b`` in
  ``{beta_w - alpha_w, beta_w + alpha_w}``, with gradient through
  ``alpha_w`` and ``beta_w`` (`adaptive_weight`). ``ede`` is IR-Net's
  estimator (`ovsw_jax.irnet.ede`), ``t`` rising on a log scale from
  ``1e-3`` to ``10`` and ``k = max(1 / t, 1)``, once per epoch;
* activations, with a learnable scalar ``alpha_a`` (init 1) and ``beta_a``
  (init 0) per layer: ``a_b = alpha_a * (approx_sign((a - beta_a) /
  alpha_a) + beta_a)`` (`adaptive_activation`), Bi-Real's gradient
  ``max(0, 2 - 2|u|)`` (`ovsw_jax.ops.approx_sign`);
* the output is the plain convolution of the two (no further scale);
* the non-linearity after each block's BatchNorm + shortcut (and the
  stem's) is Maxout, ``pos_o * relu(x) - neg_o * relu(-x)`` with learnable
  per-channel ``pos`` (init 1) and ``neg`` (init 0.25) (`Maxout`).

This follows the authors' code (huawei-noah/Efficient-Computing,
``BinaryNetworks/AdaBin/cifar10/utils/binarylib.py`` and ``main.py``) where
it differs from the paper: the activation set is the code's
``{alpha_a (beta_a - 1), alpha_a (beta_a + 1)}`` (the paper writes
``{beta_a - alpha_a, beta_a + alpha_a}``); the weights' ``alpha_w`` is the
population std without epsilon; the ``(k, t)`` schedule is the code's
``Log_UP`` with ``t`` from 1e-3 to 10. Zero binarizes to +1 (torch.sign
gives 0), as every estimator of `ovsw_jax.ops`. The zero padding pads the
adaptive activations with 0, as the code's ``F.conv2d`` does.

How ``(k, t)`` reach the layers: as IR-Net's (`ovsw_jax.irnet`), float32
scalars ``k`` and ``t`` in the collection ``'adabin'`` (`COLLECTION`) of
every `AdaBinConv`, set once per epoch by the 'adabin' method part and kept
in the train state. Evaluation does not read them.

Export is refused (`AdaBinConv.eval_signs_and_scale`): the packed format
binarizes activations at 0 to +-1 and scales a +-1 convolution per channel;
AdaBin's activations are thresholded at ``beta_a`` and take two arbitrary
values, and its weights' offset ``beta_w`` adds a term that depends on the
padding at the border, none of which the format carries.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax import irnet
from ovsw_jax import layers
from ovsw_jax import ops

COLLECTION = "adabin"
K, T = irnet.K, irnet.T
ALPHA_A, BETA_A = "alpha_a", "beta_a"


def weight_center_and_distance(kernel: jax.Array
                               ) -> tuple[jax.Array, jax.Array]:
  """``(beta_w, alpha_w)``: per-output-channel mean and population std of
  the kernel (every axis but the last), float32, with gradient."""
  w = kernel.astype(jnp.float32)
  axes = tuple(range(w.ndim - 1))
  beta = jnp.mean(w, axis=axes, keepdims=True)
  alpha = jnp.sqrt(jnp.mean(jnp.square(w - beta), axis=axes, keepdims=True))
  return beta, alpha


def adaptive_weight(kernel: jax.Array, k: jax.Array, t: jax.Array
                    ) -> jax.Array:
  """AdaBin's binary weights ``alpha_w * ede((w - beta_w) / alpha_w) +
  beta_w``, in ``{beta_w - alpha_w, beta_w + alpha_w}`` per channel."""
  beta, alpha = weight_center_and_distance(kernel)
  signs = irnet.ede((kernel.astype(jnp.float32) - beta) / alpha, k, t)
  return signs * alpha + beta


def adaptive_activation(x: jax.Array, alpha: jax.Array, beta: jax.Array
                        ) -> jax.Array:
  """AdaBin's binary activations ``alpha * (approx_sign((x - beta) /
  alpha) + beta)`` (the code's form), in ``x.dtype``."""
  alpha, beta = alpha.astype(x.dtype), beta.astype(x.dtype)
  return alpha * (ops.approx_sign((x - beta) / alpha) + beta)


class Maxout(nn.Module):
  """AdaBin's non-linearity: ``pos * relu(x) - neg * relu(-x)`` per channel.

  Attributes:
    neg_init: initial ``neg`` (the code: 0.25).
    pos_init: initial ``pos`` (the code: 1.0).
    param_dtype: the parameters' dtype.
  """

  neg_init: float = 0.25
  pos_init: float = 1.0
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    pos = self.param("pos_scale", nn.initializers.constant(self.pos_init),
                     (c,), self.param_dtype).astype(x.dtype)
    neg = self.param("neg_scale", nn.initializers.constant(self.neg_init),
                     (c,), self.param_dtype).astype(x.dtype)
    return pos * jax.nn.relu(x) - neg * jax.nn.relu(-x)


class AdaBinConv(layers.BinaryConv):
  """2-D convolution of AdaBin: adaptive binary weights and activations.

  For NHWC input ``a`` and HWIO latent kernel ``w``::

      out = conv(adaptive_activation(a, alpha_a, beta_a),
                 adaptive_weight(w, k, t))

  A `ovsw_jax.layers.BinaryConv` overriding its steps: the binary weight,
  the activation binarization, a unit scale (the sets carry it). Its
  operands are not +-1, so the CPU fast path keeps them in the compute
  dtype (`exact_pm1_operands` is False). Pass ``conv=AdaBinConv,
  nonlinearity=Maxout`` to `ovsw_jax.models.get_model` (the 'adabin' method
  part does). Params: ``latent_kernel``, ``alpha_a``, ``beta_a``; variables
  ``('adabin', 'k' | 't')``.

  Attributes:
    k_init: ``k`` set by ``init`` (epoch 0 of the schedule: 1000).
    t_init: ``t`` set by ``init`` (1e-3).

  References:
    Tu et al., `AdaBin: Improving Binary Neural Networks with Adaptive
    Binary Sets <https://arxiv.org/abs/2208.08084>`_, ECCV 2022
  """

  k_init: float = 1000.0
  t_init: float = 1e-3

  def _ede_params(self, train: bool):
    if self.has_variable(COLLECTION, K):
      return (self.get_variable(COLLECTION, K),
              self.get_variable(COLLECTION, T))
    if self.is_initializing():
      return (self.variable(COLLECTION, K, lambda: jnp.asarray(
          self.k_init, jnp.float32)).value,
              self.variable(COLLECTION, T, lambda: jnp.asarray(
                  self.t_init, jnp.float32)).value)
    if train:
      raise ValueError(
          f"AdaBinConv {self.name!r} needs the {COLLECTION!r} collection in "
          f"training: pass variables={{'params': ..., '{COLLECTION}': "
          f"variables['{COLLECTION}'], ...}} to apply (model.init creates "
          "it; the 'adabin' method part sets it each epoch).")
    # The forward is the same whatever (k, t): eval needs neither.
    return jnp.float32(self.k_init), jnp.float32(self.t_init)

  def weight_scale(self, kernel: jax.Array) -> jax.Array:
    if self.learnable_scale:
      raise ValueError(
          "AdaBinConv's scale is in its adaptive weight set; "
          "learnable_scale=True is not supported (leave it unset).")
    return jnp.ones((kernel.shape[-1],), jnp.float32)

  def binary_weight(self, kernel: jax.Array, train: bool) -> jax.Array:
    k, t = self._ede_params(train)
    return adaptive_weight(kernel, k, t)

  def binarize_input(self, x: jax.Array, train: bool) -> jax.Array:
    if not self.binarize_activations:
      return x
    alpha = self.param(ALPHA_A, nn.initializers.ones, (), self.param_dtype)
    beta = self.param(BETA_A, nn.initializers.zeros, (), self.param_dtype)
    return adaptive_activation(x, alpha, beta)

  @property
  def exact_pm1_operands(self) -> bool:
    return False  # Two adaptive values, not +-1: bfloat16 would round them.

  @nn.nowrap
  def eval_signs_and_scale(self, params: Mapping[str, Any]
                           ) -> tuple[np.ndarray, np.ndarray]:
    raise ValueError(
        "AdaBin (AdaBinConv) cannot be exported to the packed format: its "
        "activations are thresholded at the learned beta_a and take the "
        "values alpha_a * (beta_a -+ 1), and its weights {beta_w -+ alpha_w} "
        "add a padding-dependent offset; the packed XNOR-popcount path "
        "carries +-1 signs at 0 and one scale per channel only. Evaluate "
        "AdaBin models from their checkpoint (train.py's eval) instead.")
