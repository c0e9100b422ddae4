"""RBNN: the rotated binary convolution and its per-epoch rotation update.

RBNN (Lin et al., NeurIPS 2020) binarizes, in every binary conv,

* the weights after a learned bi-rotation: each output channel of the
  standardised latent kernel, reshaped to an ``a x b`` matrix ``X_o``
  (``a * b = C_in * kh * kw``, `rotation_shape`), is rotated to
  ``R1^T X_o R2`` by two orthogonal matrices shared by the layer; the
  adjustable rotated weight blends the two, ``w3 = w2 + |sin(theta_o)| *
  (sg(R1^T X R2) - w2)``, with a learnable angle ``theta`` per output channel
  (init pi/2: fully rotated), and its sign is taken;
* the activations after standardising each sample (``(a - mean_n) / std_n``,
  with gradient, in training *and* evaluation);

both through the training-aware sign approximation (`rbnn_sign`): forward
``sign``, backward ``k * max(0, sqrt(2) t - t^2 |x|)``; the activations'
uses ``k = 1`` and ``t = max(t, 1)``. ``t`` rises on a log scale from
``t_min = 1e-2`` to ``t_max = 10`` and ``k = max(1 / t, 1)``, once per epoch
(IR-Net's ``Log_UP``, `ovsw_jax.irnet.ede_schedule`). The output is scaled by
a learnable ``scale`` per output channel, initialised to ``mean|w_o|``.

``R1`` and ``R2`` are not trained by gradient: at the first step of every
epoch (every ``rotation_update``-th) they are fitted to the current weights
by three rounds of the alternating procedure (`rotation_update`)::

    B  = sign(R1^T X_o R2)                      (per channel)
    R1 = V1 U1^T,  U1 S1 V1^T = svd(sum_o B_o R2^T X_o^T)
    R2 = U2 V2^T,  U2 S2 V2^T = svd(sum_o X_o^T R1 B_o)

This follows the authors' code (lmbxmu/RBNN, ``cifar/modules/
binarized_modules.py`` and ``main.py``) where it differs from the paper: the
rotation update runs on the first batch of each epoch (the paper: per
epoch, unspecified), including epoch 0, with the weights of that step; the
weight and activation standardisation (ddof=1, no epsilon) are the code's
(the paper writes neither); the backward is the code's piecewise-linear
``k (sqrt(2) t - t^2 |x|)_+`` (the paper's Eq. 14 is its derivative form
``k (sqrt(2) t - |t^2 x|)``, the same) with the activations' ``k = 1, t >=
1``; ``R1`` and ``R2`` start as random orthogonal matrices (the code's
``ortho_group.rvs``). ``B`` keeps torch's ``sign(0) = 0`` as the code does;
the forward binarization maps 0 to +1 as every estimator of `ovsw_jax.ops`.
The reference flattens an OIHW kernel as ``(O, C_in*kh*kw)``; the HWIO
kernel here is transposed to that order first, so ``X_o`` is the code's.

A consequence of the code's init, kept: at ``theta = pi/2``, ``|sin theta|``
is exactly 1 in float32, so ``w3`` does not depend on the latent kernel and
the kernel gets no gradient (and ``theta`` one of order ``cos(pi/2) ~ 4e-8``)
until weight decay on ``theta`` moves it off pi/2; the code's 1000-epoch
schedule gives it the time, a short run does not.

State
-----
Every `RBNNConv` holds, in the collection ``'rbnn'`` (`COLLECTION`),
float32 ``k`` and ``t`` (set per epoch by the 'rbnn' method part) and ``R1``
(``a x a``) and ``R2`` (``b x b``) (set by `rotate_layers` at an epoch's
first step, from the params); the train state and its checkpoints hold them.

Export
------
Refused (`RBNNConv.eval_signs_and_scale`): the evaluation forward binarizes
``a - mean_n(a)``, a per-sample threshold the packed format (which
binarizes at 0) cannot carry.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax import layers

COLLECTION = "rbnn"
K, T, R1, R2 = "k", "t", "R1", "R2"
ROTATE = "rotate"
# The alternating procedure's rounds per update (the code's range(3)).
ROTATION_ROUNDS = 3


def rotation_shape(fan_in: int) -> tuple[int, int]:
  """``(a, b)`` with ``a * b = fan_in`` and ``a`` the largest divisor of
  ``fan_in`` not above ``sqrt(fan_in)`` (the code's ``get_ab``)."""
  for i in range(int(math.isqrt(fan_in)), 0, -1):
    if fan_in % i == 0:
      return i, fan_in // i
  raise ValueError(f"fan_in must be >= 1, got {fan_in}")


def _sign_grad(x, k, t):
  return k * jnp.maximum(0.0, math.sqrt(2.0) * t - jnp.square(t) * jnp.abs(x))


@jax.custom_vjp
def rbnn_sign(x: jax.Array, k: jax.Array, t: jax.Array) -> jax.Array:
  """RBNN's training-aware sign: ``sign(x)`` (0 -> +1) forward, backward
  ``g * k * max(0, sqrt(2) t - t^2 |x|)``; no gradient for ``k``, ``t``."""
  return jnp.where(x < 0, -1, 1).astype(x.dtype)


def _rbnn_sign_fwd(x, k, t):
  return rbnn_sign(x, k, t), (x, k, t)


def _rbnn_sign_bwd(res, g):
  x, k, t = res
  grad = _sign_grad(x.astype(jnp.float32), k, t)
  return ((g * grad.astype(g.dtype)).astype(x.dtype), jnp.zeros_like(k),
          jnp.zeros_like(t))


rbnn_sign.defvjp(_rbnn_sign_fwd, _rbnn_sign_bwd)


def rbnn_activation_sign(x: jax.Array, t: jax.Array) -> jax.Array:
  """The activations' `rbnn_sign`: ``k = 1`` and ``t = max(t, 1)``."""
  t = jnp.maximum(t, 1.0)
  return rbnn_sign(x, jnp.ones_like(t), t)


def standardized_kernel(kernel: jax.Array) -> jax.Array:
  """``(w - mean_o) / std_o(ddof=1)`` per output channel, float32, with
  gradient (no epsilon, as the code)."""
  w = kernel.astype(jnp.float32)
  axes = tuple(range(w.ndim - 1))
  centered = w - jnp.mean(w, axis=axes, keepdims=True)
  return centered / jnp.std(centered, axis=axes, keepdims=True, ddof=1)


def standardized_per_sample(x: jax.Array) -> jax.Array:
  """``(a - mean_n) / std_n(ddof=1)`` over each sample, with gradient."""
  xf = x.astype(jnp.float32)
  axes = tuple(range(1, x.ndim))
  centered = xf - jnp.mean(xf, axis=axes, keepdims=True)
  return (centered / jnp.std(centered, axis=axes, keepdims=True, ddof=1)
          ).astype(x.dtype)


def as_matrices(w2: jax.Array) -> jax.Array:
  """HWIO ``w2`` as the code's ``X``: ``(O, a, b)``, flattened as OIHW."""
  kh, kw, c_in, c_out = w2.shape
  a, b = rotation_shape(c_in * kh * kw)
  return jnp.transpose(w2, (3, 2, 0, 1)).reshape(c_out, a, b)


def from_matrices(x: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
  """The inverse of `as_matrices`, back to HWIO ``kernel_shape``."""
  kh, kw, c_in, c_out = kernel_shape
  return jnp.transpose(x.reshape(c_out, c_in, kh, kw), (2, 3, 1, 0))


def rotation_update(x: jax.Array, r1: jax.Array, r2: jax.Array,
                    rounds: int = ROTATION_ROUNDS
                    ) -> tuple[jax.Array, jax.Array]:
  """RBNN's alternating update of the bi-rotation (module docstring).

  Args:
    x: the standardised weights as ``(O, a, b)`` matrices (`as_matrices`);
      no gradient flows.
    r1: the current ``a x a`` rotation.
    r2: the current ``b x b`` rotation.
    rounds: rounds of (B, R1, R2) updates (the code: 3).

  Returns:
    The new ``(R1, R2)``, orthogonal, float32.

  References:
    Lin et al., `Rotated Binary Neural Network
    <https://arxiv.org/abs/2009.13055>`_, NeurIPS 2020
  """
  x = jax.lax.stop_gradient(x.astype(jnp.float32))
  xt = jnp.swapaxes(x, 1, 2)
  for _ in range(rounds):
    b = jnp.sign(r1.T @ x @ r2)
    u1, _, v1h = jnp.linalg.svd(jnp.sum(b @ r2.T @ xt, axis=0))
    r1 = v1h.T @ u1.T
    u2, _, v2h = jnp.linalg.svd(jnp.sum(xt @ r1 @ b, axis=0))
    r2 = u2 @ v2h
  return r1, r2


def random_rotation(key: jax.Array, n: int) -> jax.Array:
  """A Haar-random ``n x n`` orthogonal matrix (QR of a Gaussian, signs
  fixed), as the code's ``ortho_group.rvs``."""
  q, r = jnp.linalg.qr(jax.random.normal(key, (n, n), jnp.float32))
  return q * jnp.where(jnp.diag(r) < 0, -1.0, 1.0)[None, :]


def set_schedule(variables: Any, k: Any, t: Any) -> Any:
  """Sets every ``k`` and ``t`` of an ``'rbnn'`` collection; ``R1`` and
  ``R2`` stay."""
  def leaf(path, x):
    name = path[-1].key
    if name in (K, T):
      return jnp.full(jnp.shape(x), k if name == K else t, jnp.float32)
    return x

  return jax.tree_util.tree_map_with_path(leaf, variables)


def rotate_layers(variables: Mapping[str, Any], params: Mapping[str, Any]
                  ) -> dict[str, Any]:
  """`rotation_update` of every RBNNConv of an ``'rbnn'`` collection.

  Args:
    variables: the ``'rbnn'`` collection; a layer is a dict holding ``R1``.
    params: the model's params (the same module paths).

  Returns:
    The collection with every layer's ``R1``, ``R2`` fitted to its current
    ``latent_kernel``.
  """
  if R1 in variables:
    x = as_matrices(standardized_kernel(params[layers.LATENT_KERNEL]))
    r1, r2 = rotation_update(x, variables[R1], variables[R2])
    return {**variables, R1: r1, R2: r2}
  return {name: rotate_layers(sub, params[name])
          for name, sub in variables.items()}


class RBNNConv(layers.BinaryConv):
  """2-D binary convolution of RBNN: bi-rotated weights, rbnn_sign.

  For NHWC input ``a`` and HWIO latent kernel ``w``::

      w2 = standardized_kernel(w);  X = as_matrices(w2)
      w3 = w2 + |sin(rotate)| * (sg(from_matrices(R1^T X R2)) - w2)
      out = conv(rbnn_activation_sign(standardized_per_sample(a), t),
                 rbnn_sign(w3, k, t)) * scale

  A `ovsw_jax.layers.BinaryConv` overriding its steps (the binary weight,
  the activation binarization); its learnable per-channel ``scale`` is the
  parent's (init ``mean|w_o|``, the code's ``alpha``). Pass
  ``conv=RBNNConv`` to `ovsw_jax.models.get_model`. Params:
  ``latent_kernel``, ``scale``, ``rotate``; variables ``('rbnn', k | t | R1
  | R2)`` (module docstring).

  Attributes:
    learnable_scale: must stay True (RBNN's ``alpha``).
    k_init: ``k`` set by ``init`` (epoch 0 of the schedule: 100).
    t_init: ``t`` set by ``init`` (0.01).

  References:
    Lin et al., `Rotated Binary Neural Network
    <https://arxiv.org/abs/2009.13055>`_, NeurIPS 2020
  """

  learnable_scale: bool = True
  k_init: float = 100.0
  t_init: float = 0.01

  def _rbnn_state(self, kernel_shape, train):
    """``(k, t, R1, R2)``; ``init`` creates them."""
    if self.has_variable(COLLECTION, R1):
      return tuple(self.get_variable(COLLECTION, n) for n in (K, T, R1, R2))
    if not self.is_initializing():
      raise ValueError(
          f"RBNNConv {self.name!r} needs the {COLLECTION!r} collection "
          f"(train={train}): pass variables={{'params': ..., '{COLLECTION}':"
          f" variables['{COLLECTION}'], ...}} to apply (model.init creates "
          "it; the rotations are part of the eval forward too).")
    a, b = rotation_shape(int(np.prod(kernel_shape[:-1])))
    key = self.make_rng("params")
    inits = {K: lambda: jnp.asarray(self.k_init, jnp.float32),
             T: lambda: jnp.asarray(self.t_init, jnp.float32),
             R1: lambda: random_rotation(jax.random.fold_in(key, 1), a),
             R2: lambda: random_rotation(jax.random.fold_in(key, 2), b)}
    return tuple(self.variable(COLLECTION, n, fn).value
                 for n, fn in inits.items())

  def rotated_weight(self, kernel: jax.Array) -> jax.Array:
    """``w3``, the adjustable rotated weight (float32, with gradient)."""
    _, _, r1, r2 = self._rbnn_state(kernel.shape, False)
    theta = self.param(ROTATE, nn.initializers.constant(math.pi / 2),
                       (kernel.shape[-1],), self.param_dtype)
    w2 = standardized_kernel(kernel)
    rotated = from_matrices(r1.T @ as_matrices(w2) @ r2, kernel.shape)
    blend = jnp.abs(jnp.sin(theta.astype(jnp.float32)))
    return w2 + blend * (jax.lax.stop_gradient(rotated) - w2)

  def binary_weight(self, kernel: jax.Array, train: bool) -> jax.Array:
    k, t, _, _ = self._rbnn_state(kernel.shape, train)
    return rbnn_sign(self.rotated_weight(kernel), k, t)

  def binarize_input(self, x: jax.Array, train: bool) -> jax.Array:
    if not self.binarize_activations:
      return x
    # The code standardises in evaluation too: the mean moves the signs.
    shape = (*self.kernel_size, x.shape[-1], self.features)
    _, t, _, _ = self._rbnn_state(shape, train)
    return rbnn_activation_sign(standardized_per_sample(x), t.astype(x.dtype))

  def weight_scale(self, kernel: jax.Array) -> jax.Array:
    if not self.learnable_scale:
      raise ValueError(
          "RBNNConv's scale is RBNN's learnable alpha; learnable_scale=False "
          "is not supported (leave it unset, or use ovsw_jax.layers."
          "BinaryConv).")
    return super().weight_scale(kernel)

  @nn.nowrap
  def eval_signs_and_scale(self, params: Mapping[str, Any]
                           ) -> tuple[np.ndarray, np.ndarray]:
    raise ValueError(
        "RBNN (RBNNConv) cannot be exported to the packed format: its "
        "evaluation binarizes each sample's activations minus their mean "
        "(a per-sample threshold), and the packed XNOR-popcount path "
        "binarizes at 0. Evaluate RBNN models from their checkpoint "
        "(train.py's eval) instead.")
