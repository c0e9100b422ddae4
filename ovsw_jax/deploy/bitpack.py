"""Bit packing and XNOR-popcount binary convolution, in JAX.

A +-1 value is one bit: 0 for +1, 1 for -1 (so a zero word is all +1). 32
bits go to a ``uint32`` word along the channel axis, bit ``i`` of word ``j``
holding channel ``32 j + i``; the unused bits of the last word are 0 in both
activations and weights. For two packed vectors of ``n`` true channels,

    sum_i a_i w_i = n - 2 popcount(a XOR w)

(the unused bits agree, so XOR leaves them 0). A convolution sums this over
its taps. Zero padding has no bit; padded positions are packed as +1 (word
0), which adds ``sum_ci w[t, ci, co]`` for every padded tap ``t``: that
border term depends only on the weights and the position, and is taken back
off exactly (`xnor_conv`). Results are exact integers, equal to a float
convolution of the +-1 tensors with zero padding.

Host-side (NumPy) packing of weights is in `pack_signs_np`; the runtime
packing of activations is `pack_signs`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

WORD_BITS = 32


def num_words(n: int) -> int:
  """Words needed for ``n`` bits."""
  return -(-int(n) // WORD_BITS)


def pack_signs(x: jax.Array) -> jax.Array:
  """Packs ``x < 0`` along the last axis into uint32 words (0 -> +1 bit).

  Args:
    x: any real array; its sign along the last axis is packed. 0 counts as
      +1, as `ovsw_jax.ops.sign_ste` maps it.

  Returns:
    ``uint32`` array of shape ``x.shape[:-1] + (num_words(x.shape[-1]),)``.
  """
  n = x.shape[-1]
  words = num_words(n)
  bits = (x < 0).astype(jnp.uint32)
  pad = words * WORD_BITS - n
  if pad:
    bits = jnp.pad(bits, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  bits = bits.reshape(*x.shape[:-1], words, WORD_BITS)
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)
  # Distinct powers of two: the sum is the bitwise OR.
  return jnp.sum(bits << shifts, axis=-1, dtype=jnp.uint32)


def pack_signs_np(x: np.ndarray) -> np.ndarray:
  """`pack_signs` on the host, for export (same layout, bit for bit)."""
  x = np.asarray(x)
  n = x.shape[-1]
  words = num_words(n)
  bits = np.zeros(x.shape[:-1] + (words * WORD_BITS,), np.uint8)
  bits[..., :n] = x < 0
  packed = np.packbits(bits, axis=-1, bitorder="little")  # 4 bytes a word
  return np.ascontiguousarray(packed).view("<u4").astype(np.uint32)


def unpack_signs_np(words: np.ndarray, n: int) -> np.ndarray:
  """Inverse of `pack_signs_np`: +-1 float32 values of the first ``n`` bits."""
  words = np.ascontiguousarray(np.asarray(words, np.uint32)).astype("<u4")
  bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
  return np.where(bits[..., :n] == 1, -1.0, 1.0).astype(np.float32)


def border_correction(weight_tap_sums: jax.Array, input_hw: Sequence[int],
                      strides: Sequence[int],
                      padding: Sequence[tuple[int, int]]) -> jax.Array:
  """What packing the zero padding as +1 adds to each output: int32 (Ho, Wo, C).

  Args:
    weight_tap_sums: ``(kh, kw, C)``, the sum of the +-1 weights over input
      channels at each tap.
    input_hw: the unpadded input's (H, W).
    strides: the conv's strides.
    padding: the conv's ``((lo, hi), (lo, hi))``.
  """
  (h, w), (kh, kw, _) = input_hw, weight_tap_sums.shape
  inside = jnp.zeros((h, w), jnp.float32)
  outside = jnp.pad(inside, padding, constant_values=1.0)
  # A one-channel float conv of small integers: exact.
  corr = lax.conv_general_dilated(
      outside[None, :, :, None], weight_tap_sums[:, :, None, :].astype(
          jnp.float32),
      window_strides=tuple(strides), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
  return jnp.round(corr).astype(jnp.int32)


def xnor_conv(x_packed: jax.Array, w_packed: jax.Array,
              weight_tap_sums: jax.Array, in_features: int,
              kernel_size: Sequence[int], strides: Sequence[int],
              padding: Sequence[tuple[int, int]]) -> jax.Array:
  """Binary convolution of packed +-1 tensors by XNOR and popcount.

  Args:
    x_packed: ``(N, H, W, words)`` uint32, `pack_signs` of the activations.
    w_packed: ``(C_out, kh*kw*words)`` uint32, the weights packed per tap
      (taps row-major over (kh, kw), as `pack_conv_kernel_np` lays them out).
    weight_tap_sums: ``(kh, kw, C_out)`` int, the +-1 weights summed over
      input channels (for the border correction).
    in_features: the true number of input channels.
    kernel_size, strides: the conv's.
    padding: explicit ``((lo, hi), (lo, hi))`` zero padding.

  Returns:
    int32 ``(N, Ho, Wo, C_out)``: exactly ``conv(a, w)`` of the +-1 tensors
    with zero padding.
  """
  kh, kw = kernel_size
  sh, sw = strides
  x = jnp.pad(x_packed, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  n, h, w, words = x.shape
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  # One XOR + popcount per (tap, word), each over the whole (N, Ho, Wo,
  # C_out) output, summed: XLA fuses the chain into one loop vectorised over
  # output channels, and no patch matrix is materialised. (A reduction over
  # a (.., C_out, taps*words) XOR tensor measured 2-4x slower here.)
  mismatches = None
  for i in range(kh):
    for j in range(kw):
      tap = lax.slice(x, (0, i, j, 0),
                      (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, words),
                      (1, sh, sw, 1))
      for q in range(words):
        k = (i * kw + j) * words + q
        count = lax.population_count(tap[..., q:q + 1] ^ w_packed[:, k])
        count = count.astype(jnp.int32)
        mismatches = count if mismatches is None else mismatches + count
  out = kh * kw * in_features - 2 * mismatches
  if any(lo or hi for lo, hi in padding):
    out = out - border_correction(weight_tap_sums, x_packed.shape[1:3],
                                  strides, padding)
  return out


def xnor_dense(x_packed: jax.Array, w_packed: jax.Array,
               in_features: int) -> jax.Array:
  """``a @ w`` of +-1 operands: ``(N, words)`` by ``(C_out, words)`` -> int32
  ``(N, C_out)``."""
  mismatches = None
  for q in range(x_packed.shape[-1]):
    count = lax.population_count(x_packed[:, q:q + 1] ^ w_packed[:, q])
    count = count.astype(jnp.int32)
    mismatches = count if mismatches is None else mismatches + count
  return in_features - 2 * mismatches


def pack_conv_kernel_np(signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Packs an HWIO +-1 (or any real, by sign) kernel for `xnor_conv`.

  Returns:
    ``(w_packed, tap_sums)``: uint32 ``(C_out, kh*kw*words)`` and int32
    ``(kh, kw, C_out)``.
  """
  signs = np.where(np.asarray(signs) < 0, -1.0, 1.0).astype(np.float32)
  kh, kw, _, c_out = signs.shape
  packed = pack_signs_np(np.moveaxis(signs, 3, 0))  # (C_out, kh, kw, words)
  return (packed.reshape(c_out, -1),
          signs.sum(axis=2).round().astype(np.int32))


def pack_dense_kernel_np(signs: np.ndarray) -> np.ndarray:
  """Packs an (in, out) kernel's signs for `xnor_dense`: uint32 (out, words)."""
  return pack_signs_np(np.asarray(signs).T)
