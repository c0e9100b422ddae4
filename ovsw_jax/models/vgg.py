"""VGGSmall_1w1a for CIFAR (docs/semantics.md, section 3).

Submodule names are the reference's: ``conv0``/``bn0`` (float stem),
``conv1``..``conv5`` (binary), ``bn1``..``bn5``, ``nonlinear5`` (PReLU) and
``fc``. The classifier flattens NHWC features in (H, W, C) order; PyTorch
flattens (C, H, W), and `ovsw_jax.convert` permutes ``fc``'s rows to match.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from ovsw_jax import layers
from ovsw_jax.models import blocks


class VGGSmall(blocks.BinaryNet):
  """VGG-small, 1-bit (4.66M parameters on 32x32 input).

  ``conv0`` 3->128 (float) + BN + hardtanh; binary convs 128 -> maxpool -> BN
  -> hardtanh; 256 -> BN -> hardtanh; 256 -> maxpool -> BN -> hardtanh; 512 ->
  BN -> hardtanh; 512 -> maxpool -> BN -> PReLU(512); Dense(8192 -> classes).

  Init as the reference: every conv N(0, sqrt(2 / (k * k * C_out))), the
  dense kernel N(0, 0.01), biases 0. A custom ``conv`` must accept
  ``kernel_init``.
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = self.check_input(x)
    norm = self.norm(train)
    init = blocks.kaiming_normal_fan_out()
    conv = self.binary_conv(kernel_init=init)
    x = self.float_conv(init)(128, (3, 3), padding=layers.torch_padding((3, 3)),
                              name="conv0")(x)
    x = blocks.hardtanh(norm(name="bn0")(x))
    # (width, max pool after the conv) of conv1..conv5.
    plan = ((128, True), (256, False), (256, True), (512, False), (512, True))
    for i, (features, pool) in enumerate(plan, start=1):
      x = conv(features, kernel_size=(3, 3), strides=(1, 1),
               name=f"conv{i}")(x, train=train)
      if pool:
        x = blocks.max_pool_torch(x, 2, 2)
      x = norm(name=f"bn{i}")(x)
      # The last block uses a PReLU, the others hardtanh.
      if i < len(plan):
        x = blocks.hardtanh(x)
      else:
        x = blocks.PReLU(name="nonlinear5")(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.num_classes, dtype=self.dtype,
                 kernel_init=nn.initializers.normal(0.01),
                 bias_init=nn.initializers.zeros, name="fc")(x)
    return x.astype(jax.numpy.float32)
