"""ReCU: the rectified clamp unit binary convolution.

The exact formulas are in docs/semantics.md, section 8.

ReCU (Xu et al., ICCV 2021) standardises each output channel of the latent
weights, clamps the tails of their distribution at a quantile set by ``tau``,
and binarizes the result; ``tau`` grows from ``tau_min`` to ``tau_max`` over
training on an exponential schedule (`recu_tau`), once per epoch.

How ``tau`` reaches the layers
------------------------------
``tau`` is not a parameter. Every `ReCUConv` holds it as a float32 scalar
variable ``tau`` in the collection ``'recu'`` (`TAU_COLLECTION`), created by
``model.init`` with ``tau_init`` (``recu_tau(0, E)`` = 0.85 by default). A
trainer keeps that collection next to ``params`` and ``batch_stats`` (and in
its checkpoints), passes it to every training ``apply``, and once per epoch
replaces it with `set_tau` (a new array of the same shape and dtype, so a
jitted step does not recompile)::

  variables = model.init(key, x)                       # has 'recu'
  recu_vars = set_tau(variables["recu"], recu_tau(epoch, num_epochs))
  logits, _ = model.apply({"params": p, "batch_stats": bs, "recu": recu_vars},
                          x, train=True, mutable=["batch_stats"])

In evaluation ``tau`` does not change the output (clamping at ``+-Q`` with
``Q > 0`` keeps every sign), so ``apply(..., train=False)`` works with or
without the collection.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from ovsw_jax import layers
from ovsw_jax import ops

TAU_COLLECTION = "recu"
TAU = "tau"
# Variance floor of the reference's weight standardisation.
_EPS = 1e-5

Initializer = Callable[..., jax.Array]


def recu_tau(epoch: Union[int, float, jax.Array], num_epochs: int,
             tau_min: float = 0.85, tau_max: float = 0.99
             ) -> Union[float, jax.Array]:
  """ReCU's exponential schedule of the clamp quantile ``tau``.

  ``tau(e) = A * exp(e / E) + B`` with ``A = (tau_max - tau_min) / (e - 1)``
  and ``B = tau_min - A``: ``tau_min`` at epoch 0, ``tau_max`` at epoch ``E``.

  Args:
    epoch: the (0-based) epoch; a Python number or a traced array.
    num_epochs: ``E``, the length of training in epochs, > 0.
    tau_min: ``tau`` at epoch 0, in (0.5, 1].
    tau_max: ``tau`` at epoch ``num_epochs``, in [tau_min, 1].

  Returns:
    ``tau`` for ``epoch``: a Python float for a Python ``epoch``, else a
    float32 array.

  Raises:
    ValueError: for ``num_epochs <= 0`` or taus outside (0.5, 1] (at
      ``tau <= 0.5`` the clamp bound ``-E|w| ln(2 - 2 tau)`` is not positive).

  References:
    Xu et al., `ReCU: Reviving the Dead Weights in Binary Neural Networks
    <https://arxiv.org/abs/2103.12369>`_, ICCV 2021
  """
  if not num_epochs > 0:
    raise ValueError(f"num_epochs must be > 0, got {num_epochs}.")
  if not 0.5 < tau_min <= tau_max <= 1:
    raise ValueError(
        f"need 0.5 < tau_min <= tau_max <= 1, got tau_min={tau_min}, "
        f"tau_max={tau_max}. ReCU uses 0.85 and 0.99.")
  a = (tau_max - tau_min) / (math.e - 1)
  b = tau_min - a
  if isinstance(epoch, numbers.Real):
    return a * math.exp(epoch / num_epochs) + b
  return (a * jnp.exp(jnp.asarray(epoch, jnp.float32) / num_epochs) +
          b).astype(jnp.float32)


def set_tau(recu_variables: Any, tau: Union[float, jax.Array]) -> Any:
  """Sets every ``tau`` of a ``'recu'`` collection (or a whole variables dict).

  Args:
    recu_variables: the ``'recu'`` collection of a model's variables, or any
      tree holding it; every leaf must be a ``tau``.
    tau: the new value (e.g. ``recu_tau(epoch, num_epochs)``).

  Returns:
    A tree of the same structure with float32 leaves equal to ``tau``, each
    of its leaf's shape. Under `jax.jit` (e.g. inside a train step) the
    result follows the step's output shardings.
  """
  return jax.tree.map(
      lambda t: jnp.full(jnp.shape(t), tau, jnp.float32), recu_variables)


def recu_weight(kernel: jax.Array, tau: Optional[jax.Array]) -> jax.Array:
  """ReCU's rectified, standardised weights ``w2`` before binarization.

  Per output channel ``c`` (every axis but the last), with gradients through
  the mean and standard deviation::

    w1 = (w - mean_c) / (sqrt(var_c(ddof=1) + 1e-5) / (2 sqrt(2)))
    Q  = stop_grad(-mean(|w1|) * ln(2 - 2 tau))      # mean over the tensor
    w2 = clip(w1, -Q, Q)                             # zero gradient outside

  At ``|w1| == Q`` the gradient passes, as with ``torch.clamp``.

  Args:
    kernel: latent kernel, output channels last.
    tau: the clamp quantile, a scalar in (0.5, 1]; None skips the clamp (its
      sign is the same, so the binary forward is unchanged).

  Returns:
    ``w2`` in float32.
  """
  w = kernel.astype(jnp.float32)
  axes = tuple(range(w.ndim - 1))
  centered = w - jnp.mean(w, axis=axes, keepdims=True)
  std = jnp.sqrt(jnp.var(w, axis=axes, keepdims=True, ddof=1) + _EPS)
  w1 = centered / (std / (2 * math.sqrt(2)))
  if tau is None:
    return w1
  bound = lax.stop_gradient(
      -jnp.mean(jnp.abs(w1)) * jnp.log(2 - 2 * jnp.asarray(tau, jnp.float32)))
  # where(), not jnp.clip: its gradient at the bound is 1 (torch.clamp's), and
  # exactly 0 outside.
  return jnp.where(w1 > bound, bound, jnp.where(w1 < -bound, -bound, w1))


class ReCUConv(layers.BinaryConv):
  """2-D binary convolution with ReCU's rectified clamp unit.

  For NHWC input ``a`` and HWIO latent kernel ``w`` (docs/semantics.md,
  section 8)::

      a_n = a / sqrt(var_n(a, ddof=1) + 1e-5)   # train only; WITH gradient
      w_b = sign_ste(recu_weight(w, tau))        # per-channel standardise+clamp
      out = conv(approx_sign(a_n), w_b) * alpha  # alpha: per channel, U[0, 1)

  A `ovsw_jax.layers.BinaryConv` that overrides three of its steps: the
  binary weight, the scale (a param ``alpha``) and the activation
  normalisation, which passes gradient through its divisor (OvSW's does
  not). Pass ``conv=ReCUConv`` to `ovsw_jax.models.get_model`. Params:
  ``latent_kernel`` and ``alpha`` (output channels), plus the variable
  ``('recu', 'tau')`` that the trainer sets once per epoch (see the module
  docstring). Everything else is BinaryConv's, ``binary_operand_dtype``
  included.

  Attributes:
    learnable_scale: must stay True: ReCU always learns ``alpha``. (Present so
      that models passing BinaryConv's options to every conv work.)
    tau_init: ``tau`` set by ``init`` (ReCU's ``tau_min``).
    alpha_init: ``alpha`` initializer, U[0, 1) as ``torch.rand``.
    (The other attributes are `ovsw_jax.layers.BinaryConv`'s; ``param_dtype``
    is also the dtype of ``alpha``.)

  References:
    Xu et al., `ReCU: Reviving the Dead Weights in Binary Neural Networks
    <https://arxiv.org/abs/2103.12369>`_, ICCV 2021
  """

  learnable_scale: bool = True
  tau_init: float = 0.85
  alpha_init: Initializer = nn.initializers.uniform(scale=1.0)

  def normalize_input(self, x: jax.Array) -> jax.Array:
    return layers.normalize_per_sample(x, stop_gradient=False)

  def weight_scale(self, kernel: jax.Array) -> jax.Array:
    if not self.learnable_scale:
      raise ValueError(
          "ReCUConv always learns its per-channel scale alpha; "
          "learnable_scale=False is not supported (leave it unset, or use "
          "ovsw_jax.layers.BinaryConv).")
    return self.param("alpha", self.alpha_init, (self.features,),
                      self.param_dtype)

  def binary_weight(self, kernel: jax.Array, train: bool) -> jax.Array:
    tau = None
    if self.is_initializing() or self.has_variable(TAU_COLLECTION, TAU):
      tau = self.variable(TAU_COLLECTION, TAU,
                          lambda: jnp.asarray(self.tau_init, jnp.float32)).value
    if train and tau is None:
      raise ValueError(
          f"ReCUConv {self.name!r} needs the {TAU_COLLECTION!r} collection in "
          f"training: pass variables={{'params': ..., '{TAU_COLLECTION}': "
          f"variables['{TAU_COLLECTION}'], ...}} to apply (model.init creates "
          "it; ovsw_jax.recu.set_tau updates it each epoch).")
    if not train:
      # Clamping at +-Q (Q > 0) keeps every sign: the eval forward is
      # the same without it, and so needs no tau.
      tau = None
    return ops.get_estimator(self.weight_estimator)(recu_weight(kernel, tau))

  @nn.nowrap
  def eval_signs_and_scale(self, params: Mapping[str, Any]
                           ) -> tuple[np.ndarray, np.ndarray]:
    kernel = jnp.asarray(params[layers.LATENT_KERNEL], jnp.float32)
    # Clamping keeps signs, so the eval forward binarizes the standardised
    # kernel (recu_weight with tau=None) and scales by alpha. Jitted, like
    # the eval forward that computes it: a different rounding could move a
    # weight equal to its channel mean across 0.
    w = jax.jit(recu_weight, static_argnums=1)(kernel, None)
    signs = np.where(np.asarray(w) < 0, -1.0, 1.0).astype(np.float32)
    return signs, np.asarray(params["alpha"], np.float32)
