"""ovsw_jax: OvSW (ECCV 2024) binary neural networks in JAX/Flax/optax."""

from ovsw_jax import ops
from ovsw_jax import layers
from ovsw_jax.ops import approx_sign, sign_ste, ste_sign, swish_sign
from ovsw_jax.layers import BinaryConv, BinaryDense, LATENT_KERNEL

__version__ = "0.1.0"
