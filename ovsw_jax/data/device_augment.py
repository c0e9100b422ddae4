"""`augment`'s counter-based random words and pad-crop-flip, on a device.

The host draws an example's randomness as SplitMix64 words of (seed, epoch,
example index, draw number) in NumPy uint64 (`augment.draws`). JAX without
``jax_enable_x64`` has no uint64, so here a 64-bit word is a pair of uint32
arrays (high, low) and every operation SplitMix64 needs (add, xor, shift,
multiply mod 2**64) is spelled out in 32-bit halves. Integer arithmetic has
no rounding, so every backend (CPU, GPU, TPU) computes the host's words bit
for bit, and the crop offsets and flips that follow from them
(`augment.below`, `augment.half`).

References:
  Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
  OOPSLA 2014 (SplitMix64).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax.data import augment

_MASK32 = (1 << 32) - 1


class Word(NamedTuple):
  """A uint64 as two uint32 arrays of one shape: ``hi * 2**32 + lo``."""
  hi: jax.Array
  lo: jax.Array


def constant(x: int) -> Word:
  """A Python int (taken mod 2**64) as a scalar `Word` (of NumPy scalars:
  made at import, they must not start a JAX backend)."""
  x = int(x) & ((1 << 64) - 1)
  return Word(np.uint32(x >> 32), np.uint32(x & _MASK32))


def from_uint32(lo: jax.Array) -> Word:
  """Non-negative 32-bit ints as Words (high half zero)."""
  lo = lo.astype(jnp.uint32)
  return Word(jnp.zeros_like(lo), lo)


def add(a: Word, b: Word) -> Word:
  lo = a.lo + b.lo
  carry = (lo < a.lo).astype(jnp.uint32)
  return Word(a.hi + b.hi + carry, lo)


def xor(a: Word, b: Word) -> Word:
  return Word(a.hi ^ b.hi, a.lo ^ b.lo)


def shift_right(a: Word, s: int) -> Word:
  """``a >> s`` for a static ``0 < s < 64``."""
  if not 0 < s < 64:
    raise ValueError(f'shift {s} must be in (0, 64)')
  if s >= 32:
    return Word(jnp.zeros_like(a.hi), a.hi >> (s - 32))
  return Word(a.hi >> s, (a.lo >> s) | (a.hi << (32 - s)))


def _mul_wide(a: jax.Array, b: jax.Array) -> Word:
  """The full 64-bit product of two uint32 arrays, from 16-bit halves."""
  a0, a1 = a & 0xFFFF, a >> 16
  b0, b1 = b & 0xFFFF, b >> 16
  p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
  # Fits in 32 bits: at most 3 * (2**16 - 1).
  middle = (p00 >> 16) + (p01 & 0xFFFF) + (p10 & 0xFFFF)
  hi = p11 + (p01 >> 16) + (p10 >> 16) + (middle >> 16)
  return Word(hi, (middle << 16) | (p00 & 0xFFFF))


def multiply(a: Word, b: Word) -> Word:
  """``a * b mod 2**64``."""
  low = _mul_wide(a.lo, b.lo)
  return Word(low.hi + a.lo * b.hi + a.hi * b.lo, low.lo)


_GOLDEN = constant(int(augment._GOLDEN))  # pylint: disable=protected-access
_MIX1 = constant(int(augment._MIX1))  # pylint: disable=protected-access
_MIX2 = constant(int(augment._MIX2))  # pylint: disable=protected-access


def mix(z: Word) -> Word:
  """SplitMix64's finaliser (`augment._mix`)."""
  z = multiply(xor(z, shift_right(z, 30)), _MIX1)
  z = multiply(xor(z, shift_right(z, 27)), _MIX2)
  return xor(z, shift_right(z, 31))


def epoch_key(seed: int, epoch: int) -> tuple[np.uint32, np.uint32]:
  """(hi, lo) of `augment.epoch_key`, computed on the host once per epoch."""
  k = int(augment.epoch_key(seed, epoch))
  return np.uint32(k >> 32), np.uint32(k & _MASK32)


def draws(key: Word, indices: jax.Array, first: int, count: int
          ) -> list[Word]:
  """`augment.draws` of ``indices`` (non-negative int32) under an epoch key:
  ``count`` Words of the shape of ``indices``, draws ``first, first+1, ...``.
  """
  keys = mix(xor(key, add(from_uint32(indices), _GOLDEN)))
  golden = int(augment._GOLDEN)  # pylint: disable=protected-access
  return [mix(add(keys, constant((first + j + 1) * golden)))
          for j in range(count)]


def below(z: Word, n: int) -> jax.Array:
  """`augment.below`: ``((z >> 11) * n) >> 53`` as int32, for ``n < 2**11``
  (the product stays below 2**64, so the wrap-around multiply is exact)."""
  if not 1 <= n < 1 << 11:
    raise ValueError(f'n={n} must be in [1, 2048).')
  product = multiply(shift_right(z, 11), constant(n))
  return (product.hi >> 21).astype(jnp.int32)


def half(z: Word) -> jax.Array:
  """`augment.half`: the top bit of z is clear."""
  return (z.hi >> 31) == 0


def pad_crop_flip(images: jax.Array, offset_y: jax.Array, offset_x: jax.Array,
                  flip: jax.Array, pad: int) -> jax.Array:
  """`augment.pad_crop_flip` on a device: the same gather of the same pixels.

  Args:
    images: [n, H, W, C].
    offset_y, offset_x: [n] int32 in ``[0, 2 * pad]``.
    flip: [n] bool.
    pad: zero padding on each side (static).
  """
  n, h, w, _ = images.shape
  if pad:
    images = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = offset_y[:, None] + jnp.arange(h, dtype=jnp.int32)
  cols = jnp.where(flip[:, None], jnp.arange(w - 1, -1, -1, dtype=jnp.int32),
                   jnp.arange(w, dtype=jnp.int32))
  cols = offset_x[:, None] + cols
  return images[jnp.arange(n)[:, None, None], rows[:, :, None],
                cols[:, None, :]]


def random_pad_crop_flip(images: jax.Array, indices: jax.Array, key: Word,
                         pad: int, flip: bool) -> jax.Array:
  """`augment.random_pad_crop_flip` of the examples ``indices`` under the
  epoch key `key` (`epoch_key`): the host's crops, bit for bit."""
  z_y, z_x, z_flip = draws(key, indices, augment.CROP_Y, 3)
  span = 2 * pad + 1
  do_flip = half(z_flip) if flip else jnp.zeros(indices.shape, bool)
  return pad_crop_flip(images, below(z_y, span), below(z_x, span), do_flip,
                       pad)
