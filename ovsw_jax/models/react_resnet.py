"""ReAct-ResNet-18/34: the Bi-Real ResNet with ReActNet's RSign and RPReLU.

Every 3x3 conv is binary and carries its own residual:
``out = rprelu(bn(conv(rsign(x))) + shortcut(x))``; the shortcut, where the
stride or width changes, is a 2x2 average pool, a float 1x1 conv and BN. The
stem is a float 7x7 conv (stride 2), BN and a 3x3 max pool; the head a global
average pool and a float ``fc``. At 1000 classes: 11,704,424 params
(10,985,472 binary) for ResNet-18 and 21,827,432 (21,086,208) for ResNet-34.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ovsw_jax import react
from ovsw_jax.models import blocks


class ReActResNet(blocks.BinaryNet):
  """ReAct-ResNet with ``stage_sizes`` blocks of two binary 3x3 convs each.

  Attributes:
    stage_sizes: blocks per stage (widths 64, 128, 256, 512).
    cifar_stem: a 3x3 stride-1 stem without max pool, for 32x32 inputs.
    width: the stem's and first stage's width (the reference's 64); the
      stages double it. Smaller widths are for CPU-scale studies.
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  cifar_stem: bool = False
  width: int = 64
  conv: blocks.ModuleDef = react.ReActConv

  def _unit(self, x, features, stride, train, name):
    """``rprelu(bn(conv(rsign(x))) + shortcut(x))``."""
    norm = self.norm(train)
    y = react.LearnableBias(name=f"{name}_shift")(x)
    y = self.binary_conv(normalize_activations=False)(
        features, kernel_size=(3, 3), strides=(stride, stride),
        name=f"{name}_conv")(y, train=train)
    y = norm(name=f"{name}_bn")(y)
    if stride != 1 or x.shape[-1] != features:
      if stride != 1:
        x = nn.avg_pool(x, (stride, stride), strides=(stride, stride))
      x = self.float_conv()(features, (1, 1), name=f"{name}_downsample")(x)
      x = norm(name=f"{name}_downsample_bn")(x)
    return react.RPReLU(name=f"{name}_rprelu")(y + x)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.check_input(x)
    if self.cifar_stem:
      x = self.float_conv()(self.width, (3, 3), padding=((1, 1), (1, 1)),
                            name="conv1")(x)
      x = self.norm(train)(name="bn1")(x)
    else:
      x = self.float_conv()(self.width, (7, 7), strides=(2, 2),
                            padding=((3, 3), (3, 3)), name="conv1")(x)
      x = self.norm(train)(name="bn1")(x)
      x = blocks.max_pool_torch(x, 3, 2, padding=1)
    for stage, size in enumerate(self.stage_sizes):
      for block in range(size):
        stride = 2 if stage > 0 and block == 0 else 1
        name = f"layer{stage + 1}_{block}"
        features = self.width * 2**stage
        x = self._unit(x, features, stride, train, f"{name}_a")
        x = self._unit(x, features, 1, train, f"{name}_b")
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype,
                 kernel_init=blocks.torch_linear_init(), name="fc")(x)
    return x.astype(jnp.float32)



# Partials, so that `blocks.config_fields` sees the module's fields.
ReActResNet18 = functools.partial(ReActResNet, stage_sizes=(2, 2, 2, 2))
ReActResNet34 = functools.partial(ReActResNet, stage_sizes=(3, 4, 6, 3))
