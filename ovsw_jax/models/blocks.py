"""Building blocks shared by the OvSW models (docs/semantics.md, section 3).

Everything here follows PyTorch's conventions where they differ from Flax's
defaults, so that weights converted from the reference (`ovsw_jax.convert`)
give the same outputs:

* convolutions pad ``k // 2`` on each side (`layers.torch_padding`; XLA's
  "SAME" pads asymmetrically at stride 2);
* BatchNorm uses momentum 0.9 (torch's 0.1) and epsilon 1e-5;
* max pooling pads with -inf.

One difference stays: in training, Flax's BatchNorm folds the *biased* batch
variance into its running ``var``, torch the unbiased one. Evaluation with the
same statistics is identical.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovsw_jax import layers
from ovsw_jax import ops
# Re-exported: it lived here before layers.torch_padding.
# pylint: disable-next=unused-import
from ovsw_jax.layers import torch_padding

ModuleDef = Any
Dtype = Any
Initializer = Callable[..., jax.Array]


def hardtanh(x: jax.Array) -> jax.Array:
  """``clip(x, -1, 1)`` with torch's ``F.hardtanh`` gradient.

  The gradient is 1 strictly inside (-1, 1) and 0 at and beyond the bounds;
  ``jnp.clip``'s is 0.5 at exactly +-1, which occurs at init (a zero BN output
  added to a saturated residual) and made our gradients differ from the
  reference's.
  """
  one = jnp.ones((), x.dtype)
  return jnp.where(x <= -1, -one, jnp.where(x >= 1, one, x))


def nonlinear(x: jax.Array, nonlinearity: Optional[ModuleDef],
              name: str) -> jax.Array:
  """`hardtanh` (``nonlinearity=None``), else ``nonlinearity(name=name)(x)``,
  a module (e.g. AdaBin's Maxout) made in the calling module."""
  if nonlinearity is None:
    return hardtanh(x)
  return nonlinearity(name=name)(x)


def torch_linear_init() -> Initializer:
  """torch ``nn.Linear``'s kernel init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def kaiming_normal_fan_out() -> Initializer:
  """N(0, sqrt(2 / (k * k * C_out))): the VGG-small init of the reference."""
  return nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def max_pool_torch(x: jax.Array, window: int, stride: int,
                   padding: int = 0) -> jax.Array:
  """``nn.MaxPool2d(window, stride, padding)``: padded cells never win (-inf)."""
  # flax's max_pool pads the reduce_window with its -inf init value.
  return nn.max_pool(x, (window, window), strides=(stride, stride),
                     padding=((padding, padding), (padding, padding)))


def option_a_shortcut(x: jax.Array, in_planes: int, planes: int,
                      stride: int) -> jax.Array:
  """The parameter-free "option A" shortcut of the CIFAR ResNet-20.

  Identity when ``stride == 1`` and ``in_planes == planes``; otherwise a 2x2
  average pool (stride 2) followed by zero-padding the channel axis with
  ``planes // 4`` channels on each side (none when the widths already match),
  exactly as the reference's ``LambdaLayer``.

  Args:
    x: NHWC input with ``in_planes`` channels.
    in_planes: input width.
    planes: output width of the block.
    stride: the block's stride.

  Returns:
    The shortcut branch, NHWC.
  """
  if stride == 1 and in_planes == planes:
    return x
  x = nn.avg_pool(x, (2, 2), strides=(2, 2))
  pad = 0 if planes == in_planes else planes // 4
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad, pad)))


class PReLU(nn.Module):
  """Per-channel PReLU, torch's ``nn.PReLU(num_parameters=C)``.

  ``flax.linen.PReLU`` has a single scalar slope; this one has one per channel
  (last axis), initialised to torch's 0.25.

  Attributes:
    negative_slope_init: initial slope for negative inputs.
    param_dtype: dtype of the slope parameter.
  """

  negative_slope_init: float = 0.25
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    slope = self.param("negative_slope",
                       nn.initializers.constant(self.negative_slope_init),
                       (x.shape[-1],), self.param_dtype)
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class Network(nn.Module):
  """Fields and helpers of every model, binary or real-valued.

  Attributes:
    num_classes: number of logits.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32 and
      the logits are returned in float32.
    bn_axis_name: ``axis_name`` of every BatchNorm, to average batch statistics
      over a mapped axis (``shard_map``, ``pmap``, ``vmap``).
  """

  num_classes: int
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  def float_conv(self, kernel_init: Optional[Initializer] = None) -> ModuleDef:
    """A bias-free float ``nn.Conv`` (pass torch padding when calling it)."""
    return functools.partial(
        nn.Conv, use_bias=False, dtype=self.dtype,
        kernel_init=kernel_init or layers.kaiming_normal_fan_in())

  def norm(self, train: bool,
           scale_init: Initializer = nn.initializers.ones) -> ModuleDef:
    """``nn.BatchNorm`` with torch's momentum and epsilon."""
    return functools.partial(
        nn.BatchNorm, use_running_average=not train, momentum=0.9,
        epsilon=1e-5, dtype=self.dtype, axis_name=self.bn_axis_name,
        use_fast_variance=False, scale_init=scale_init)

  def check_input(self, x: jax.Array) -> jax.Array:
    """Raises on non-NHWC input; casts to the compute dtype."""
    if x.ndim != 4:
      raise ValueError(
          f"{type(self).__name__} expects NHWC images of rank 4, got shape "
          f"{x.shape}; add a batch axis with x[None] for a single image, or "
          "transpose NCHW input with x.transpose(0, 2, 3, 1).")
    return x.astype(self.dtype)

  def head(self, x: jax.Array, train: bool, fc_init: Initializer,
           fc_bias_init: Initializer = nn.initializers.zeros) -> jax.Array:
    """Global average pool -> ``bn2`` -> ``fc``; float32 logits."""
    x = jnp.mean(x, axis=(1, 2))
    x = self.norm(train)(name="bn2")(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=fc_init,
                 bias_init=fc_bias_init, name="fc")(x)
    return x.astype(jnp.float32)


class BinaryNet(Network):
  """`Network` plus the options of the binary convs (the five OvSW models).

  Attributes:
    conv: the binary convolution module class (or partial), called as
      ``conv(features, kernel_size=..., strides=..., dtype=..., name=...)`` and
      applied as ``conv(...)(x, train=train)``. Default `layers.BinaryConv`.
    activation_estimator: passed to every binary conv when not None.
    weight_estimator: passed to every binary conv when not None.
    learnable_scale: passed to every binary conv when not None.
    binary_operand_dtype: passed to every binary conv when not None (see
      `layers.BinaryConv`).
    binarize_weights: passed to every binary conv when not None; False:
      float weights, binary activations (ReActNet's stage 1).
  """

  conv: ModuleDef = layers.BinaryConv
  activation_estimator: Optional[Union[str, ops.Estimator]] = None
  weight_estimator: Optional[Union[str, ops.Estimator]] = None
  learnable_scale: Optional[bool] = None
  binary_operand_dtype: Optional[Dtype] = None
  binarize_weights: Optional[bool] = None

  def binary_conv(self, **kwargs: Any) -> ModuleDef:
    """``self.conv`` with the compute dtype and the binary options bound."""
    options = dict(activation_estimator=self.activation_estimator,
                   weight_estimator=self.weight_estimator,
                   learnable_scale=self.learnable_scale,
                   binary_operand_dtype=self.binary_operand_dtype,
                   binarize_weights=self.binarize_weights)
    options = {k: v for k, v in options.items() if v is not None}
    return functools.partial(self.conv, dtype=self.dtype, **options, **kwargs)


def config_fields(module_cls: Any) -> list[str]:
  """Names of the dataclass fields a model accepts (without parent/name)."""
  while isinstance(module_cls, functools.partial):
    module_cls = module_cls.func
  return [f.name for f in dataclasses.fields(module_cls)
          if f.init and f.name not in ("parent", "name")]


class BiRealBlock(nn.Module):
  """Basic block with a residual around *every* binary conv (Bi-Real style).

  ``x1 = hardtanh(bn1(conv1(x)) + shortcut(x));
  out = hardtanh(bn2(conv2(x1)) + x1)``.

  The shortcut, used when the stride or width changes, is either the
  parameter-free option A (CIFAR ResNet-20) or a float 1x1 conv + BN named
  ``downsample_conv`` / ``downsample_bn`` (ImageNet ResNet-18/34).

  Attributes:
    in_planes: input width.
    planes: output width.
    strides: stride of ``conv1`` (and of the shortcut).
    conv: binary conv partial (`BinaryNet.binary_conv`).
    norm: BatchNorm partial (`BinaryNet.norm`).
    shortcut: ``"option_a"`` or ``"float_conv"``.
    float_conv: float conv partial, for the ``"float_conv"`` shortcut.
    nonlinearity: None (hardtanh) or a module class used in its place,
      named ``nonlinear1`` and ``nonlinear2`` (`nonlinear`).
  """

  in_planes: int
  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  shortcut: str = "option_a"
  float_conv: Optional[ModuleDef] = None
  nonlinearity: Optional[ModuleDef] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    s = self.strides
    residual = x
    if s != 1 or self.in_planes != self.planes:
      if self.shortcut == "option_a":
        residual = option_a_shortcut(x, self.in_planes, self.planes, s)
      elif self.shortcut == "float_conv":
        residual = self.float_conv(self.planes, (1, 1), strides=(s, s),
                                   padding=((0, 0), (0, 0)),
                                   name="downsample_conv")(x)
        residual = self.norm(name="downsample_bn")(residual)
      else:
        raise ValueError(f"Unknown shortcut {self.shortcut!r}; use "
                         "'option_a' or 'float_conv'.")
    y = self.conv(self.planes, kernel_size=(3, 3), strides=(s, s),
                  name="conv1")(x, train=train)
    x1 = nonlinear(self.norm(name="bn1")(y) + residual, self.nonlinearity,
                   "nonlinear1")
    y = self.conv(self.planes, kernel_size=(3, 3), strides=(1, 1),
                  name="conv2")(x1, train=train)
    return nonlinear(self.norm(name="bn2")(y) + x1, self.nonlinearity,
                     "nonlinear2")


class BasicBlock(nn.Module):
  """The CIFAR ResNet-18 block: one residual around both binary convs.

  ``out = hardtanh(bn1(conv1(x))); out = hardtanh(bn2(conv2(out)) + sc(x))``
  where ``sc`` is the identity, or a *binary* 1x1 conv + BN (``shortcut_conv``
  / ``shortcut_bn``) when the stride or width changes.

  Attributes:
    in_planes: input width.
    planes: output width.
    strides: stride of ``conv1`` and of the shortcut conv.
    conv: binary conv partial (`BinaryNet.binary_conv`).
    norm: BatchNorm partial (`BinaryNet.norm`).
  """

  in_planes: int
  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    s = self.strides
    residual = x
    if s != 1 or self.in_planes != self.planes:
      residual = self.conv(self.planes, kernel_size=(1, 1), strides=(s, s),
                           name="shortcut_conv")(x, train=train)
      residual = self.norm(name="shortcut_bn")(residual)
    y = self.conv(self.planes, kernel_size=(3, 3), strides=(s, s),
                  name="conv1")(x, train=train)
    y = hardtanh(self.norm(name="bn1")(y))
    y = self.conv(self.planes, kernel_size=(3, 3), strides=(1, 1),
                  name="conv2")(y, train=train)
    return hardtanh(self.norm(name="bn2")(y) + residual)
