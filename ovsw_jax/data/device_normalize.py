"""Normalisation on the device: uint8 batches in, float32 model inputs out.

A source with ``device_normalize=True`` ships uint8 images (4x fewer bytes
from host to device and no float work on the host); the jitted step applies
`normalizer(info)` first. Float batches pass through unchanged, so sources
that normalise on the host are not affected.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax.data.source import DatasetInfo


def normalizer(info: DatasetInfo,
               pixel_scale: float = 1.0 / 255.0
               ) -> Callable[[jax.Array], jax.Array]:
  """``images -> (images * pixel_scale - mean) / std`` for uint8 images.

  The same float32 ``x * a + b`` as `augment.normalize` (a and b computed in
  NumPy as there), so device- and host-normalised images agree.

  Args:
    info: the dataset's info (mean and std in [0, 1] pixel units).
    pixel_scale: what one uint8 step is in those units.

  Returns:
    A function of a batch of images; the identity on non-uint8 images (the
    dtype is static under jit, so this is decided at trace time).
  """
  mean = np.asarray(info.mean, np.float32)
  std = np.asarray(info.std, np.float32)
  a = np.float32(pixel_scale) / std
  b = -mean / std

  def normalize(images: jax.Array) -> jax.Array:
    if images.dtype != jnp.uint8:
      return images
    return images.astype(jnp.float32) * a + b

  return normalize
