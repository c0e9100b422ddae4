"""Binary ResNet-18/34 for ImageNet: ResNet18_1w1a, ResNet34_1w1a.

The architecture is described in docs/semantics.md, section 3.

Submodule names follow the reference's PyTorch ``state_dict``:

==================================  ==================================
Flax path                           PyTorch key prefix
==================================  ==================================
``conv1``, ``bn1``                  ``conv1``, ``bn1`` (float 7x7 stem)
``layer{i}_{j}/conv1``, ``bn1``,    ``layer{i}.{j}.conv1`` ... (binary
``conv2``, ``bn2``                  convs)
``layer{i}_{j}/downsample_conv``,   ``layer{i}.{j}.downsample.0``, ``.1``
``downsample_bn``                   (float 1x1 conv + BN)
``bn2``, ``fc``                     ``bn2``, ``fc`` (head)
==================================  ==================================
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax

from ovsw_jax import layers
from ovsw_jax.models import blocks

# The reference fills every BatchNorm2d weight with 1e-8, so each residual
# branch starts almost silent; the head's 1-D BatchNorm keeps 1.
_BN2D_SCALE_INIT = 1e-8


class ResNet(blocks.BinaryNet):
  """Bi-Real-style binary ResNet for ImageNet.

  Float stem conv7x7/2 (padding 3) + BN + hardtanh + maxpool 3x3/2 (padding 1);
  stages of `blocks.BiRealBlock` (widths 64..512, stride 2 at the first block
  of stages 2-4, float 1x1 conv + BN downsample); global average pool -> BN ->
  Dense. Every 2-D BatchNorm scale starts at 1e-8.

  Attributes:
    stage_sizes: blocks per stage: (2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3)
      for ResNet-34.
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.check_input(x)
    norm = self.norm(train, nn.initializers.constant(_BN2D_SCALE_INIT))
    conv = self.binary_conv()
    float_conv = self.float_conv()
    x = float_conv(64, (7, 7), strides=(2, 2),
                   padding=layers.torch_padding((7, 7)), name="conv1")(x)
    x = blocks.hardtanh(norm(name="bn1")(x))
    x = blocks.max_pool_torch(x, 3, 2, padding=1)
    in_planes = 64
    for i, (planes, num_blocks) in enumerate(zip((64, 128, 256, 512),
                                                 self.stage_sizes)):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = blocks.BiRealBlock(in_planes, planes, strides, conv=conv,
                               norm=norm, shortcut="float_conv",
                               float_conv=float_conv,
                               name=f"layer{i + 1}_{j}")(x, train)
        in_planes = planes
    return self.head(x, train, fc_init=blocks.torch_linear_init())


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
