"""Real-valued ResNet-18/34: torchvision's architecture, e.g. as a teacher.

torchvision's ``ResNet`` with ``BasicBlock`` (torchvision/models/resnet.py):
a 7x7 stride-2 stem conv, BN, ReLU and a 3x3 stride-2 max pool; four stages
of basic blocks ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` whose
shortcut, where the stride or width changes, is a 1x1 conv (stride 2) and BN;
a global average pool and ``fc``. The CIFAR variants (``cifar_stem``) have a
3x3 stride-1 stem and no max pool, for 32x32 inputs. Nothing is binary: the
parameters are ``kernel`` s, never ``latent_kernel`` s, so OvSW's transforms
have nothing to act on and `ovsw_jax.summary` counts no binary parameter.

Submodule names follow torchvision's ``state_dict`` (``ovsw_jax.convert``
maps them): ``conv1``, ``bn1``, ``layer{i}_{j}/conv1``, ``bn1``, ``conv2``,
``bn2``, ``downsample_conv``, ``downsample_bn`` (torchvision's
``layer{i}.{j}.downsample.0`` / ``.1``) and ``fc``. At 1000 classes:
11,689,512 params for ResNet-18 and 21,797,672 for ResNet-34, as torchvision.

Initialisation is torchvision's: convs kaiming-normal (fan_out, ReLU gain),
BN scale 1 and bias 0, ``fc`` torch's ``nn.Linear`` default.

References:
  He et al., 2016. Deep Residual Learning for Image Recognition.
  https://arxiv.org/abs/1512.03385
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovsw_jax import layers
from ovsw_jax.models import blocks


class FloatBasicBlock(nn.Module):
  """torchvision's ``BasicBlock`` (expansion 1).

  Attributes:
    planes: output width.
    strides: stride of ``conv1`` and of the downsample conv.
    conv: float conv partial (`blocks.Network.float_conv`).
    norm: BatchNorm partial (`blocks.Network.norm`).
  """

  planes: int
  strides: int
  conv: blocks.ModuleDef
  norm: blocks.ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = self.strides
    residual = x
    if s != 1 or x.shape[-1] != self.planes:
      residual = self.conv(self.planes, (1, 1), strides=(s, s),
                           padding=((0, 0), (0, 0)),
                           name="downsample_conv")(x)
      residual = self.norm(name="downsample_bn")(residual)
    y = self.conv(self.planes, (3, 3), strides=(s, s),
                  padding=layers.torch_padding((3, 3)), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.planes, (3, 3), padding=layers.torch_padding((3, 3)),
                  name="conv2")(y)
    return nn.relu(self.norm(name="bn2")(y) + residual)


def _torch_linear_bias_init(fan_in: int) -> blocks.Initializer:
  """torch ``nn.Linear``'s bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class FloatResNet(blocks.Network):
  """torchvision's ResNet with basic blocks, all real-valued.

  Attributes:
    stage_sizes: blocks per stage: (2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3)
      for ResNet-34.
    cifar_stem: a 3x3 stride-1 stem without max pool, for 32x32 inputs.
    width: the stem's and first stage's width (torchvision's 64); the stages
      double it. Smaller widths are for CPU-scale studies.
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  cifar_stem: bool = False
  width: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.check_input(x)
    norm = self.norm(train)
    conv = self.float_conv(blocks.kaiming_normal_fan_out())
    if self.cifar_stem:
      x = conv(self.width, (3, 3), padding=layers.torch_padding((3, 3)),
               name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
    else:
      x = conv(self.width, (7, 7), strides=(2, 2),
               padding=layers.torch_padding((7, 7)), name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
      x = blocks.max_pool_torch(x, 3, 2, padding=1)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = FloatBasicBlock(self.width * 2**i,
                            2 if i > 0 and j == 0 else 1, conv=conv,
                            norm=norm, name=f"layer{i + 1}_{j}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype,
                 kernel_init=blocks.torch_linear_init(),
                 bias_init=_torch_linear_bias_init(x.shape[-1]),
                 name="fc")(x)
    return x.astype(jnp.float32)


# Partials, so that `blocks.config_fields` sees the module's fields.
FloatResNet18 = functools.partial(FloatResNet, stage_sizes=(2, 2, 2, 2))
FloatResNet34 = functools.partial(FloatResNet, stage_sizes=(3, 4, 6, 3))
