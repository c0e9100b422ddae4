"""The native XNOR-popcount conv (C++, behind XLA's FFI) and its weight layout.

``pip install`` builds ``ovsw_jax/deploy/csrc/xnor_conv.cc`` into
``ovsw_jax.deploy._xnor_kernel`` when a C++ compiler is present (an optional
extension: without one the install goes on, and inference uses the pure-JAX
`ovsw_jax.deploy.bitpack.xnor_conv`). The kernel is registered with
`jax.ffi.register_ffi_target` for XLA:CPU and called through
`jax.ffi.ffi_call`, so it runs inside the jitted forward like any other op.

It packs the float input's signs itself, 64 channels to a ``uint64`` word
(one pass over the activations, nothing packed in between), then sums ``C -
2 popcount(x ^ w)`` over the taps inside the image: the exact integer conv of
the +-1 tensors with zero padding, equal to `bitpack.xnor_conv`'s. On x86-64
it picks the widest instruction set the CPU has at load time: AVX-512
VPOPCNTDQ (8 words per instruction), AVX2 with scalar POPCNT, or baseline C++
(also what aarch64 builds run); `isa` says which.

The packed file keeps its ``uint32`` layout (format v1); `conv_kernel_words`
regroups a layer's words for the kernel when a predict function is built.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

TARGET = "ovsw_xnor_conv"
_HERE = Path(__file__).resolve().parent
_LIBRARY_GLOB = "_xnor_kernel*.so"


def library_path() -> Optional[Path]:
  """The built kernel library, or None if the install did not build it."""
  found = sorted(_HERE.glob(_LIBRARY_GLOB))
  return found[0] if found else None


@functools.lru_cache(maxsize=None)
def _load() -> Optional[ctypes.CDLL]:
  path = library_path()
  if path is None:
    return None
  lib = ctypes.CDLL(str(path))
  lib.ovsw_xnor_isa.restype = ctypes.c_char_p
  lib.ovsw_xnor_peak.restype = ctypes.c_int64
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.OvswXnorConv),
                              platform="cpu")
  return lib


def available() -> bool:
  """Whether the native kernel was built and loads."""
  return _load() is not None


def isa() -> Optional[str]:
  """The instruction set the kernel runs on this CPU ('avx512vpopcntdq',
  'avx2' or 'baseline'), or None if it is not built."""
  lib = _load()
  return lib.ovsw_xnor_isa().decode() if lib is not None else None


def default_threads() -> int:
  """The cores this process may run on (its CPU affinity)."""
  return len(os.sched_getaffinity(0))


def conv_kernel_words(w_packed: np.ndarray, kernel_size: Sequence[int],
                    in_features: int) -> np.ndarray:
  """A layer's stored weights in the native kernel's layout.

  Args:
    w_packed: ``(C_out, kh*kw*words32)`` uint32, as
      `bitpack.pack_conv_kernel_np` stores them (bit ``i`` of word ``j`` is
      channel ``32 j + i``).
    kernel_size: ``(kh, kw)``.
    in_features: the true number of input channels.

  Returns:
    ``(kh*kw*words64, C_out, 2)`` uint32: 64-bit words as little-endian
    uint32 pairs (JAX has no uint64 without x64 mode), tap-major, then word,
    then output channel (contiguous, as the kernel's inner loop reads them);
    bit ``i`` of 64-bit word ``q`` is channel ``64 q + i``.
  """
  kh, kw = kernel_size
  c_out = w_packed.shape[0]
  words32 = -(-int(in_features) // 32)
  words64 = -(-int(in_features) // 64)
  w = np.asarray(w_packed, np.uint32).reshape(c_out, kh * kw, words32)
  if words32 % 2:  # An odd word count: the last 64-bit word's top half is 0.
    w = np.concatenate([w, np.zeros((c_out, kh * kw, 1), np.uint32)], -1)
  w = w.reshape(c_out, kh * kw, words64, 2).astype(np.uint64)
  w64 = w[..., 0] | (w[..., 1] << np.uint64(32))
  w64 = np.ascontiguousarray(w64.reshape(c_out, kh * kw * words64).T)
  return w64.astype("<u8").view("<u4").reshape(*w64.shape, 2).astype(
      np.uint32)


def xnor_conv(x: jax.Array, w_words: jax.Array, kernel_size: Sequence[int],
              strides: Sequence[int], padding: Sequence[tuple[int, int]],
              threads: int = 1) -> jax.Array:
  """Binary conv of ``x``'s signs with packed weights, natively.

  Args:
    x: ``(N, H, W, C)`` float activations (their signs are used; 0 is +1).
    w_words: `conv_kernel_words` of the layer's weights.
    kernel_size, strides: the conv's.
    padding: explicit ``((lo, hi), (lo, hi))`` zero padding.
    threads: threads to split the output rows over (1: the calling thread).

  Returns:
    int32 ``(N, Ho, Wo, C_out)``, equal to `bitpack.xnor_conv`'s.

  Raises:
    RuntimeError: the kernel is not built (`available` is False).
  """
  if not available():
    raise RuntimeError(
        "the native XNOR kernel is not built: reinstall with a C++ compiler "
        "present (pip install -e .), or use backend='jax'")
  (kh, kw), (sh, sw) = kernel_size, strides
  (pt, pb), (pl, pr) = padding
  n, h, w, _ = x.shape
  ho = (h + pt + pb - kh) // sh + 1
  wo = (w + pl + pr - kw) // sw + 1
  out = jax.ShapeDtypeStruct((n, ho, wo, w_words.shape[1]), jnp.int32)
  return jax.ffi.ffi_call(TARGET, out)(
      x.astype(jnp.float32), w_words, kh=np.int64(kh), kw=np.int64(kw),
      sh=np.int64(sh), sw=np.int64(sw), pad_h=np.int64(pt),
      pad_w=np.int64(pl), threads=np.int64(threads))


def peak_bit_ops(words: np.ndarray, reps: int) -> int:
  """Runs the kernel library's popcount peak loop (its instruction set, see
  `isa`) over ``words`` (uint64) ``reps`` times; the caller times it.

  Returns:
    The bit operations done (one XOR + popcount bit each).
  """
  lib = _load()
  if lib is None:
    raise RuntimeError("the native XNOR kernel is not built")
  words = np.ascontiguousarray(words, np.uint64)
  checksum = ctypes.c_uint64()
  return int(lib.ovsw_xnor_peak(
      words.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(words.size),
      ctypes.c_int64(reps), ctypes.byref(checksum)))
