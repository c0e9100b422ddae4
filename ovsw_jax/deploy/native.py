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

Arguments are checked twice: `xnor_conv` refuses bad shapes, word counts,
strides and padding with a ValueError before anything is traced, and the C++
handler checks XLA's buffers and attributes again (an error status, never an
out-of-bounds read); docs/native_safety.md lists the checks.
``$OVSW_NATIVE_BUILD`` names another build of the library to load (a
``setup.py build_ext --build-lib`` folder, such as the sanitizer build).
"""

from __future__ import annotations

import ctypes
import functools
import operator
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

TARGET = "ovsw_xnor_conv"
BUILD_ENV = "OVSW_NATIVE_BUILD"
_HERE = Path(__file__).resolve().parent
_LIBRARY_GLOB = "_xnor_kernel*.so"
MAX_ATTR = 4096  # the kernel's bound on kernel sizes and strides


def library_path() -> Optional[Path]:
  """The built kernel library (``$OVSW_NATIVE_BUILD``'s if set), or None if
  the install did not build it."""
  build = os.environ.get(BUILD_ENV)
  folder = Path(build) / "ovsw_jax" / "deploy" if build else _HERE
  found = sorted(folder.glob(_LIBRARY_GLOB))
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
    ValueError: inconsistent arguments (`check_conv_args`).
  """
  if not available():
    raise RuntimeError(
        "the native XNOR kernel is not built: reinstall with a C++ compiler "
        "present (pip install -e .), or use backend='jax'")
  (kh, kw), (sh, sw), (pt, _), (pl, _), ho, wo = check_conv_args(
      x.shape, w_words.shape, w_words.dtype, kernel_size, strides, padding,
      threads)
  out = jax.ShapeDtypeStruct((x.shape[0], ho, wo, w_words.shape[1]),
                             jnp.int32)
  return jax.ffi.ffi_call(TARGET, out)(
      x.astype(jnp.float32), w_words, kh=np.int64(kh), kw=np.int64(kw),
      sh=np.int64(sh), sw=np.int64(sw), pad_h=np.int64(pt),
      pad_w=np.int64(pl), threads=np.int64(threads))


def _ints(value: Any, n: int, name: str, low: int, high: int
          ) -> tuple[int, ...]:
  """``value`` as n ints in [low, high], or raises naming it."""
  try:
    out = tuple(operator.index(v) for v in value)
  except TypeError:
    out = ()
  if len(out) != n or not all(low <= v <= high for v in out):
    raise ValueError(f"{name}={value!r} must be {n} ints in [{low}, {high}]")
  return out


def check_conv_args(x_shape: Sequence[int], w_shape: Sequence[int],
                    w_dtype: Any, kernel_size: Sequence[int],
                    strides: Sequence[int],
                    padding: Sequence[tuple[int, int]], threads: int
                    ) -> tuple[tuple[int, int], tuple[int, int],
                               tuple[int, int], tuple[int, int], int, int]:
  """`xnor_conv`'s arguments checked against each other (the C++ handler
  checks the same on XLA's buffers).

  Returns:
    ``(kernel_size, strides, (pad_top, pad_bottom), (pad_left, pad_right),
    Ho, Wo)`` as ints.

  Raises:
    ValueError: naming the bad value: ranks, the weights' dtype or word
      count for the input's channels, kernel sizes or strides outside [1,
      MAX_ATTR], padding outside [0, kernel), an empty output, threads < 1.
  """
  kh, kw = _ints(kernel_size, 2, "kernel_size", 1, MAX_ATTR)
  sh, sw = _ints(strides, 2, "strides", 1, MAX_ATTR)
  pads = tuple(padding) if isinstance(padding, (tuple, list)) else ()
  if len(pads) != 2:
    raise ValueError(f"padding={padding!r} must be ((top, bottom), "
                     "(left, right))")
  (pt, pb), (pl, pr) = (
      _ints(pads[0], 2, "padding (top, bottom)", 0, kh - 1),
      _ints(pads[1], 2, "padding (left, right)", 0, kw - 1))
  if len(x_shape) != 4:
    raise ValueError(f"x has shape {tuple(x_shape)}; it must be NHWC")
  _, h, w, c = x_shape
  words = -(-c // 64)
  want = (kh * kw * words, w_shape[1] if len(w_shape) == 3 else None, 2)
  if (len(w_shape) != 3 or tuple(w_shape) != want or
      np.dtype(w_dtype) != np.uint32):
    raise ValueError(
        f"w_words has shape {tuple(w_shape)} and dtype {np.dtype(w_dtype)}; "
        f"for C={c} input channels and a {kh}x{kw} kernel it must be uint32 "
        f"(kh*kw*ceil(C/64), C_out, 2) = ({kh * kw * words}, C_out, 2) "
        "(conv_kernel_words)")
  ho = (h + pt + pb - kh) // sh + 1
  wo = (w + pl + pr - kw) // sw + 1
  if ho < 1 or wo < 1:
    raise ValueError(f"x of shape {tuple(x_shape)} with padding {padding!r} "
                     f"is smaller than the {kh}x{kw} kernel: no output")
  try:
    valid_threads = operator.index(threads) >= 1
  except TypeError:
    valid_threads = False
  if not valid_threads:
    raise ValueError(f"threads={threads!r} must be an int >= 1")
  return (kh, kw), (sh, sw), (pt, pb), (pl, pr), ho, wo


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
  if words.size < 1 or reps < 0:
    raise ValueError(f"peak_bit_ops needs words (got {words.size}) and "
                     f"reps >= 0 (got {reps})")
  checksum = ctypes.c_uint64()
  return int(lib.ovsw_xnor_peak(
      words.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(words.size),
      ctypes.c_int64(reps), ctypes.byref(checksum)))
