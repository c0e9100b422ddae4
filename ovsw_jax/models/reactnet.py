"""ReActNet-A: the MobileNetV1-based binary network of ReActNet.

Follows the reference's ``reactnet.py`` block by block: a float 3x3 stem
(stride 2) + BN, 13 binary blocks, global average pool and a float ``fc``.
Each block is ``RSign -> 3x3 binary conv -> BN (+ shortcut) -> RPReLU`` then
``RSign -> 1x1 binary conv -> BN (+ shortcut) -> RPReLU``; where the width
doubles, two 1x1 convs run side by side and are concatenated.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovsw_jax import react
from ovsw_jax.models import blocks

STAGE_OUT_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512,
                      512, 1024, 1024)


class ReActBlock(blocks.BinaryNet):
  """One ReActNet-A block (``inplanes -> planes``); see the module docstring.

  Attributes:
    inplanes: input width.
    planes: output width (``inplanes`` or ``2 * inplanes``).
    stride: stride of the 3x3 conv; 2 average-pools the shortcut.
    train: BatchNorm mode.
  """

  inplanes: int = 32
  planes: int = 32
  stride: int = 1
  train: bool = False

  def _binary(self, x, features, kernel, stride, name):
    x = react.LearnableBias(name=f"{name}_shift")(x)
    conv = self.binary_conv(normalize_activations=False)
    return conv(features, kernel_size=(kernel, kernel),
                strides=(stride, stride), name=name)(x, train=self.train)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.planes not in (self.inplanes, 2 * self.inplanes):
      raise ValueError(f"ReActBlock planes={self.planes} must equal inplanes "
                       f"({self.inplanes}) or twice it.")
    norm = self.norm(self.train)
    out1 = norm(name="bn1")(self._binary(x, self.inplanes, 3, self.stride,
                                         "binary_3x3"))
    if self.stride == 2:
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    out1 = react.RPReLU(name="rprelu1")(x + out1)
    if self.planes == self.inplanes:
      out2 = norm(name="bn2")(self._binary(out1, self.planes, 1, 1,
                                           "binary_pw")) + out1
    else:
      # One shared RSign shift (the reference's move21) feeds both halves.
      shifted = react.LearnableBias(name="binary_pw_shift")(out1)
      halves = []
      for i in (1, 2):
        conv = self.binary_conv(normalize_activations=False)(
            self.inplanes, kernel_size=(1, 1), name=f"binary_pw_down{i}")
        halves.append(norm(name=f"bn2_{i}")(conv(shifted, train=self.train))
                      + out1)
      out2 = jnp.concatenate(halves, axis=-1)
    return react.RPReLU(name="rprelu2")(out2)


class ReActNetA(blocks.BinaryNet):
  """ReActNet-A (29,343,592 params at 1000 classes; 28,253,184 binary)."""

  conv: blocks.ModuleDef = react.ReActConv
  stem_stride: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.check_input(x)
    x = self.float_conv()(STAGE_OUT_CHANNELS[0], (3, 3),
                          strides=(self.stem_stride, self.stem_stride),
                          padding=((1, 1), (1, 1)), name="conv1")(x)
    x = self.norm(train)(name="bn1")(x)
    for i in range(1, len(STAGE_OUT_CHANNELS)):
      inp, oup = STAGE_OUT_CHANNELS[i - 1], STAGE_OUT_CHANNELS[i]
      stride = 2 if (oup != inp and i != 1) else 1
      x = ReActBlock(num_classes=self.num_classes, dtype=self.dtype,
                     bn_axis_name=self.bn_axis_name, conv=self.conv,
                     activation_estimator=self.activation_estimator,
                     weight_estimator=self.weight_estimator,
                     binary_operand_dtype=self.binary_operand_dtype,
                     binarize_weights=self.binarize_weights,
                     inplanes=inp, planes=oup, stride=stride, train=train,
                     name=f"block{i - 1}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype,
                 kernel_init=blocks.torch_linear_init(), name="fc")(x)
    return x.astype(jnp.float32)
