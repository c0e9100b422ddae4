"""Binary ResNets for CIFAR: cResNet20_1w1a and cResNet18_1w1a.

The architectures are described in docs/semantics.md, section 3.

Submodule names follow the reference's PyTorch ``state_dict`` with ``.``
between a stage and a block index written ``_``:

====================  ==========================================
Flax path             PyTorch key prefix
====================  ==========================================
``conv1``, ``bn1``    ``conv1``, ``bn1`` (float stem)
``layer{i}_{j}/conv1``  ``layer{i}.{j}.conv1`` (binary), likewise
                      ``bn1``, ``conv2``, ``bn2``
``layer{i}_{j}/shortcut_conv``, ``shortcut_bn``
                      ``layer{i}.{j}.shortcut.0``, ``.1`` (cResNet18)
``bn2``               ``bn2`` (head BatchNorm)
``fc``                ``linear`` (cResNet20), ``fc`` (cResNet18, a 1x1
                      conv with bias in PyTorch)
====================  ==========================================
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax

from ovsw_jax import layers
from ovsw_jax.models import blocks


class CResNet20(blocks.BinaryNet):
  """cResNet20_1w1a: the paper's CIFAR "ResNet20" (0.27M parameters).

  Float stem conv3x3 3->16 + BN + hardtanh; 3 stages of 3 `blocks.BiRealBlock`
  (widths 16/32/64, stride 2 at the first block of stages 2-3, option-A
  shortcuts); global average pool -> BN -> Dense. Binary convs are
  ``self.conv``; the first and last layers are float. ``nonlinearity``: a
  module class in place of every hardtanh (e.g. `ovsw_jax.adabin.Maxout`),
  named ``nonlinear1`` (stem) and ``layer{i}_{j}/nonlinear{1,2}``.
  """

  stage_sizes: Sequence[int] = (3, 3, 3)
  nonlinearity: Optional[Any] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.check_input(x)
    norm = self.norm(train)
    conv = self.binary_conv()
    x = self.float_conv()(16, (3, 3), padding=layers.torch_padding((3, 3)),
                          name="conv1")(x)
    x = blocks.nonlinear(norm(name="bn1")(x), self.nonlinearity,
                         "nonlinear1")
    in_planes = 16
    for i, (planes, num_blocks) in enumerate(zip((16, 32, 64),
                                                 self.stage_sizes)):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = blocks.BiRealBlock(in_planes, planes, strides, conv=conv,
                               norm=norm, shortcut="option_a",
                               nonlinearity=self.nonlinearity,
                               name=f"layer{i + 1}_{j}")(x, train)
        in_planes = planes
    return self.head(x, train, fc_init=blocks.torch_linear_init())


class CResNet18(blocks.BinaryNet):
  """cResNet18_1w1a: ResNet-18 for CIFAR (11.2M parameters).

  Float stem conv3x3 3->64 + BN (no activation); 4 stages of 2
  `blocks.BasicBlock` (widths 64..512, strides 1/2/2/2, binary 1x1 conv + BN
  shortcuts); global average pool -> BN -> Dense (the reference's 1x1 conv
  with bias).
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.check_input(x)
    norm = self.norm(train)
    conv = self.binary_conv()
    x = self.float_conv()(64, (3, 3), padding=layers.torch_padding((3, 3)),
                          name="conv1")(x)
    x = norm(name="bn1")(x)
    in_planes = 64
    for i, (planes, num_blocks) in enumerate(zip((64, 128, 256, 512),
                                                 self.stage_sizes)):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = blocks.BasicBlock(in_planes, planes, strides, conv=conv,
                              norm=norm, name=f"layer{i + 1}_{j}")(x, train)
        in_planes = planes
    return self.head(x, train, fc_init=blocks.torch_linear_init())
