"""Binary Flax linen layers: 1-bit weights and activations.

The exact formulas are in docs/semantics.md, section 2.

The latent (float) weights of every binary layer are stored under the parameter
name ``latent_kernel`` (`LATENT_KERNEL`), so that optimizer masks can find them
from the parameter tree alone (see `ovsw_jax.masks.binary_kernel_mask`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from ovsw_jax import ops

LATENT_KERNEL = "latent_kernel"
# Both variance floors of the reference implementation.
_EPS = 1e-5

Dtype = Any
Initializer = Callable[..., jax.Array]
Padding = Union[str, Sequence[tuple[int, int]]]


def torch_padding(kernel_size: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """Symmetric ``k // 2`` padding per spatial axis, as torch's ``padding``.

  The default padding of every binary conv and of the models' float convs
  (XLA's "SAME" pads asymmetrically at stride 2, torch does not).
  """
  return tuple((k // 2, k // 2) for k in kernel_size)


def kaiming_normal_fan_in() -> Initializer:
  """He/kaiming normal init, fan_in mode, gain sqrt(2): torch's ``kaiming_normal_``.

  Untruncated ("normal"), unlike ``jax.nn.initializers.he_normal``, which is
  truncated.
  """
  return nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def standardized_weight_scale(kernel: jax.Array) -> jax.Array:
  """Per-output-channel ``mean(|standardize_c(w)|)``.

  (docs/semantics.md, section 2.)

  ``standardize_c(w) = (w - mean_c) / sqrt(var_c(ddof=1) + 1e-5)``, where the
  statistics reduce over every axis but the last (HWIO conv, (in, out) dense).

  Args:
    kernel: latent kernel with output channels on the last axis.

  Returns:
    A float32 vector of length ``kernel.shape[-1]``, without gradient.
  """
  w = kernel.astype(jnp.float32)
  axes = tuple(range(w.ndim - 1))
  mean = jnp.mean(w, axis=axes, keepdims=True)
  var = jnp.var(w, axis=axes, keepdims=True, ddof=1)
  standardized = (w - mean) / jnp.sqrt(var + _EPS)
  return lax.stop_gradient(jnp.mean(jnp.abs(standardized), axis=axes))


def normalize_per_sample(x: jax.Array, stop_gradient: bool = True) -> jax.Array:
  """Divides each sample by its standard deviation over all non-batch axes.

  ``x / sqrt(var(x[n], ddof=1) + 1e-5)``. OvSW stops the gradient through the
  divisor (so it only rescales the activation estimator's window); ReCU does
  not.
  """
  axes = tuple(range(1, x.ndim))
  std = jnp.sqrt(
      jnp.var(x.astype(jnp.float32), axis=axes, keepdims=True, ddof=1) + _EPS)
  if stop_gradient:
    std = lax.stop_gradient(std)
  return x / std.astype(x.dtype)


_CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def _plain_conv(a, w, strides, padding):
  return lax.conv_general_dilated(a, w, window_strides=strides,
                                  padding=padding,
                                  dimension_numbers=_CONV_DIMS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _pm1_conv(a, w, strides, padding, operand_dtype):
  y = lax.conv_general_dilated(
      a.astype(operand_dtype), w.astype(operand_dtype), window_strides=strides,
      padding=padding, dimension_numbers=_CONV_DIMS,
      preferred_element_type=jnp.float32)
  return y.astype(a.dtype)


def _pm1_conv_fwd(a, w, strides, padding, operand_dtype):
  # The residuals keep the +-1 operands in operand_dtype (exact, and half the
  # memory of float32 for bfloat16).
  return (_pm1_conv(a, w, strides, padding, operand_dtype),
          (a.astype(operand_dtype), w.astype(operand_dtype)))


def _pm1_conv_bwd(strides, padding, operand_dtype, residuals, g):
  del operand_dtype
  a, w = (r.astype(g.dtype) for r in residuals)
  # The gradients are the plain convolution's, in the cotangent's dtype: the
  # output gradient is not +-1, so it must not be rounded.
  _, vjp = jax.vjp(lambda a, w: _plain_conv(a, w, strides, padding), a, w)
  return vjp(g)


_pm1_conv.defvjp(_pm1_conv_fwd, _pm1_conv_bwd)


def binary_conv_general(a_b: jax.Array, w_b: jax.Array,
                        strides: Sequence[int], padding: Padding,
                        operand_dtype: Optional[Dtype] = None) -> jax.Array:
  """NHWC x HWIO convolution of +-1 operands, optionally read in a narrow dtype.

  With ``operand_dtype`` (e.g. ``jnp.bfloat16``) the forward convolves the
  operands cast to it and sums in float32. For +-1 operands that is exact
  (every product is +-1 and every sum an integer far below 2**24), so the
  output equals the plain convolution's bit for bit, and on XLA:CPU it runs
  about 1.7x faster at cResNet20's 32x32 and 16x16 feature maps
  (benchmarks/step_variants.py). The gradients are always the plain
  convolution's, computed in the operands' own dtype.

  Args:
    a_b: NHWC activations, every entry +-1.
    w_b: HWIO kernel, every entry +-1.
    strides: spatial strides.
    padding: explicit ``((lo, hi), (lo, hi))`` or a lax padding string.
    operand_dtype: the dtype the forward reads the operands in; None: the
      plain convolution in ``a_b.dtype``.

  Returns:
    The convolution, in ``a_b.dtype``.
  """
  strides = tuple(strides)
  if not isinstance(padding, str):
    padding = tuple(tuple(p) for p in padding)
  if operand_dtype is None:
    return _plain_conv(a_b, w_b, strides, padding)
  return _pm1_conv(a_b, w_b, strides, padding, jnp.dtype(operand_dtype))


def _is_builtin_estimator(estimator: Union[str, ops.Estimator]) -> bool:
  """Whether ``estimator`` names (or is) one of `ops.ESTIMATORS`."""
  if isinstance(estimator, str):
    return estimator in ops.ESTIMATORS
  return any(estimator is e for e in ops.ESTIMATORS.values())


class _BinaryMixin:
  """What BinaryConv and BinaryDense share: the overridable steps of a layer.

  A binary layer computes ``op(binarize(a), binary_weight(w)) *
  weight_scale(w)``; a variant (e.g. `ovsw_jax.recu.ReCUConv`) overrides
  these steps, not ``__call__``:

  * `binarize_input`: the +-1 activations (normalise in training, then the
    activation estimator);
  * `normalize_input`: the per-sample activation normalisation (training);
  * `binary_weight`: the +-1 weights from the latent kernel;
  * `weight_scale`: the per-output-channel scale;
  * `eval_signs_and_scale`: the +-1 weights and scale of the eval forward,
    as NumPy arrays, which `ovsw_jax.deploy.export` packs.
  """

  def normalize_input(self, x: jax.Array) -> jax.Array:
    """Training's activation normalisation; OvSW stops its divisor's grad."""
    return normalize_per_sample(x)

  def binary_weight(self, kernel: jax.Array, train: bool) -> jax.Array:
    """The +-1 weights: the weight estimator of the latent kernel."""
    del train  # The same forward in training and evaluation.
    return ops.get_estimator(self.weight_estimator)(kernel)

  def weight_scale(self, kernel: jax.Array) -> jax.Array:
    """The learnable ``scale`` param or the standardised ``s_c``."""
    if self.learnable_scale:
      axes = tuple(range(kernel.ndim - 1))
      return self.param(
          "scale",
          lambda _: jnp.mean(jnp.abs(kernel), axis=axes).astype(
              self.param_dtype))
    return standardized_weight_scale(kernel)

  @nn.nowrap
  def eval_signs_and_scale(self, params: Mapping[str, Any]
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The +-1 weights and per-channel scale of the eval forward (NumPy).

    Args:
      params: this layer's params (``latent_kernel``, and ``scale`` when it
        is learnable).

    Returns:
      ``(signs, scale)``: float32 +-1 weights of the kernel's shape and the
      float32 scale per output channel, equal to the eval forward's to the
      last bit.
    """
    kernel = jnp.asarray(params[LATENT_KERNEL], jnp.float32)
    # Computed by XLA as the jitted eval computes it, to the last bit
    # (op-by-op execution rounds differently), so that packed logits equal
    # the eval's: in a BNN a last-bit change can flip a later sign.
    scale = (params["scale"] if self.learnable_scale
             else jax.jit(standardized_weight_scale)(kernel))
    return _signs(kernel), np.asarray(scale, np.float32)

  @property
  def exact_pm1_operands(self) -> bool:
    """Whether the forward's operands are exactly +-1 (binarized activations
    and weights, built-in estimators), so reading them in bfloat16 is exact."""
    binary = self.binarize_activations and self.binarize_weights
    return bool(binary) and all(
        _is_builtin_estimator(e)
        for e in (self.activation_estimator, self.weight_estimator))

  def layer_weight(self, kernel: jax.Array, train: bool
                   ) -> tuple[jax.Array, jax.Array]:
    """``(binary_weight(w), weight_scale(w))``, or ``(w, 1)`` without
    weight binarization (ReActNet's stage 1). The scale is computed either
    way, so that both settings hold the same params (a learnable scale's
    too) and one stage's checkpoint initialises the other."""
    scale = self.weight_scale(kernel)
    if not self.binarize_weights:
      return kernel, jnp.ones_like(scale)
    return self.binary_weight(kernel, train), scale

  def binarize_input(self, x: jax.Array, train: bool) -> jax.Array:
    """The layer's +-1 input (or ``x`` itself without binarization)."""
    if not self.binarize_activations:
      return x
    # In eval the normalisation is skipped: sign ignores a positive scale, so
    # the forward is identical and only the (unused) gradient would differ.
    if train and self.normalize_activations:
      x = self.normalize_input(x)
    return ops.get_estimator(self.activation_estimator)(x)


def _signs(w: jax.Array) -> np.ndarray:
  """``sign(w)`` with 0 -> +1, as the estimators' forward, in NumPy float32."""
  return np.where(np.asarray(w) < 0, -1.0, 1.0).astype(np.float32)


class BinaryConv(_BinaryMixin, nn.Module):
  """2-D convolution with binary weights and activations (OvSW's "xnor" conv).

  Forward, for NHWC input ``a`` and HWIO latent kernel ``w``::

      a_b = approx_sign(a / stop_grad(std_n(a)))  # train; eval: approx_sign(a)
      w_b = sign_ste(w)
      out = conv(a_b, w_b) * s_c                  # s_c per output channel

  with ``s_c = mean(|standardize_c(w)|)`` (no gradient), or a learnable
  per-channel ``scale`` initialised to ``mean(|w_c|)``. No bias, zero padding
  (docs/semantics.md, section 2). A variant (`ovsw_jax.recu.ReCUConv`)
  subclasses it and overrides the steps `binary_weight`, `weight_scale`,
  `normalize_input` and `eval_signs_and_scale`, never ``__call__``.

  Attributes:
    features: number of output channels.
    kernel_size: spatial size of the kernel.
    strides: spatial strides.
    padding: explicit ``((lo, hi), (lo, hi))`` or a lax padding string. None
      pads ``k // 2`` on each side (`torch_padding`), as torch's ``padding=k
      // 2`` does (XLA's "SAME" pads asymmetrically at stride 2, which would
      not match).
    activation_estimator: name in `ops.ESTIMATORS` or a callable.
    weight_estimator: name in `ops.ESTIMATORS` or a callable.
    binarize_activations: False gives a 1-bit-weight, float-activation layer.
    binarize_weights: False convolves with the latent kernel itself, unscaled
      (float weights, binary activations: ReActNet's stage 1).
    normalize_activations: per-sample normalisation before the activation
      estimator in training (docs/semantics.md, section 2).
    learnable_scale: a learnable per-channel scale instead of ``s_c``.
    dtype: compute dtype of the convolution (None: the input's). +-1 operands
      are exact in bfloat16.
    binary_operand_dtype: with binarized activations, the dtype the forward
      convolution reads its +-1 operands in, summing in float32 (exact for
      +-1 operands, see `binary_conv_general` and `exact_pm1_operands`);
      None: the compute dtype. The trainer sets bfloat16 on CPU
      (``config.cpu_fast_path``), where it is faster.
    param_dtype: dtype of the latent kernel.
    kernel_init: latent kernel initializer (kaiming normal, fan_in).
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Optional[Padding] = None
  activation_estimator: Union[str, ops.Estimator] = "approx_sign"
  weight_estimator: Union[str, ops.Estimator] = "sign_ste"
  binarize_activations: bool = True
  binarize_weights: bool = True
  normalize_activations: bool = True
  learnable_scale: bool = False
  dtype: Optional[Dtype] = None
  binary_operand_dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = kaiming_normal_fan_in()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(
          f"{type(self).__name__} expects NHWC input of rank 4, got shape "
          f"{x.shape}; add a batch axis with x[None] for a single image.")
    kernel_size = tuple(self.kernel_size)
    kernel = self.param(LATENT_KERNEL, self.kernel_init,
                        (*kernel_size, x.shape[-1], self.features),
                        self.param_dtype)
    # Params in the order of the checkpoints: kernel, then the scale's.
    w_b, scale = self.layer_weight(kernel, train)
    dtype = self.dtype or x.dtype
    a_b = self.binarize_input(x, train).astype(dtype)
    w_b = w_b.astype(dtype)
    padding = (torch_padding(kernel_size) if self.padding is None
               else self.padding)
    # Float operands are not +-1: only binarized ones may be narrowed.
    operand_dtype = (self.binary_operand_dtype if self.binarize_activations
                     and self.binarize_weights else None)
    y = binary_conv_general(a_b, w_b, self.strides, padding, operand_dtype)
    return y * scale.astype(y.dtype)


class BinaryDense(_BinaryMixin, nn.Module):
  """Dense layer with binary weights and activations; `BinaryConv`'s rules.

  The latent kernel is ``(in, features)``; the scale is per output feature and
  the activation normalisation reduces over every non-batch axis.

  Attributes:
    features: number of output features.
    activation_estimator: name in `ops.ESTIMATORS` or a callable.
    weight_estimator: name in `ops.ESTIMATORS` or a callable.
    binarize_activations: False gives a 1-bit-weight, float-activation layer.
    binarize_weights: False multiplies by the latent kernel, unscaled.
    normalize_activations: per-sample normalisation in training.
    learnable_scale: a learnable per-feature scale instead of ``s_c``.
    dtype: compute dtype (None: the input's).
    param_dtype: dtype of the latent kernel.
    kernel_init: latent kernel initializer (kaiming normal, fan_in).
  """

  features: int
  activation_estimator: Union[str, ops.Estimator] = "approx_sign"
  weight_estimator: Union[str, ops.Estimator] = "sign_ste"
  binarize_activations: bool = True
  binarize_weights: bool = True
  normalize_activations: bool = True
  learnable_scale: bool = False
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = kaiming_normal_fan_in()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim != 2:
      raise ValueError(
          f"BinaryDense expects (batch, features) input of rank 2, got shape "
          f"{x.shape}; flatten with x.reshape(x.shape[0], -1) first.")
    kernel = self.param(LATENT_KERNEL, self.kernel_init,
                        (x.shape[-1], self.features), self.param_dtype)
    w_b, scale = self.layer_weight(kernel, train)
    dtype = self.dtype or x.dtype
    a_b = self.binarize_input(x, train).astype(dtype)
    y = a_b @ w_b.astype(dtype)
    return y * scale.astype(y.dtype)
