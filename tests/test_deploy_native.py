"""The native XNOR-popcount conv (C++ behind XLA's FFI) against the JAX one.

Its integers must equal `bitpack.xnor_conv`'s and a float conv of the +-1
tensors with zero padding, for every layout corner (channels not a multiple
of 64, output channels not a multiple of 8, strides, asymmetric padding, 0
and -0.0 inputs), on any thread count; and packed models must give the same
logits on either backend (tests/test_deploy.py runs the five models).
"""

import shutil

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from ovsw_jax.deploy import bitpack
from ovsw_jax.deploy import infer
from ovsw_jax.deploy import native

needs_kernel = pytest.mark.skipif(not native.available(),
                                  reason="native kernel not built")


def pm1(x):
  return np.where(np.asarray(x) < 0, -1.0, 1.0).astype(np.float32)


def test_kernel_is_built_where_a_compiler_is():
  # pip install builds it whenever a C++ compiler is on PATH: a broken
  # build must not pass silently as the JAX fallback.
  if shutil.which("c++") or shutil.which("g++"):
    assert native.available(), (
        "a C++ compiler is present but ovsw_jax/deploy/_xnor_kernel*.so was "
        "not built: see pip install -e . -v")
    assert native.isa() in ("avx512vpopcntdq", "avx2", "baseline")


def test_kernel_weight_layout_is_64_channels_a_word():
  rng = np.random.default_rng(0)
  c_in, c_out, k = 100, 3, 3
  w = rng.standard_normal((k, k, c_in, c_out)).astype(np.float32)
  w32, _ = bitpack.pack_conv_kernel_np(w)
  words = native.conv_kernel_words(w32, (k, k), c_in)
  assert words.shape == (k * k * 2, c_out, 2) and words.dtype == np.uint32
  w64 = words.astype(np.uint64)
  w64 = w64[..., 0] | (w64[..., 1] << np.uint64(32))
  for t in range(k * k):
    for q in range(2):
      for co in range(c_out):
        bits = [(int(w64[t * 2 + q, co]) >> i) & 1 for i in range(64)]
        chans = range(64 * q, min(c_in, 64 * q + 64))
        expected = [int(w[t // k, t % k, c, co] < 0) for c in chans]
        assert bits[:len(expected)] == expected
        assert not any(bits[len(expected):])  # Unused bits are 0.


CASES = [  # (c_in, c_out, k, stride, padding, h, w)
    (64, 64, 3, 1, ((1, 1), (1, 1)), 8, 8),
    (3, 10, 3, 2, ((1, 1), (1, 1)), 9, 9),
    (70, 37, 3, 1, ((0, 1), (2, 0)), 7, 6),
    (128, 40, 3, 2, ((1, 1), (1, 1)), 10, 10),
    (100, 40, 1, 2, ((0, 0), (0, 0)), 6, 6),
    (130, 8, 5, 1, ((2, 2), (2, 2)), 5, 5),
    # Enough work to split over XLA's thread pool (2^18 word ops a task).
    (128, 64, 3, 1, ((1, 1), (1, 1)), 28, 28),
]


@needs_kernel
@pytest.mark.parametrize("c_in,c_out,k,stride,padding,h,w", CASES)
def test_native_conv_equals_jax_and_the_float_conv(c_in, c_out, k, stride,
                                                   padding, h, w):
  rng = np.random.default_rng(c_in + c_out)
  a = rng.standard_normal((2, h, w, c_in)).astype(np.float32)
  a[0, 0, 0, :5] = 0.0   # 0 is +1 ...
  a[0, 0, 1, :5] = -0.0  # ... and so is -0.0 (x < 0 is false)
  kernel = rng.standard_normal((k, k, c_in, c_out)).astype(np.float32)
  w32, tap_sums = bitpack.pack_conv_kernel_np(kernel)
  ref = np.asarray(lax.conv_general_dilated(
      jnp.asarray(pm1(a)), jnp.asarray(pm1(kernel)), (stride, stride),
      padding, dimension_numbers=("NHWC", "HWIO", "NHWC")))
  jax_out = np.asarray(bitpack.xnor_conv(
      bitpack.pack_signs(jnp.asarray(a)), jnp.asarray(w32),
      jnp.asarray(tap_sums), c_in, (k, k), (stride, stride), padding))
  words = jnp.asarray(native.conv_kernel_words(w32, (k, k), c_in))
  for threads in (1, 3):
    got = native.xnor_conv(jnp.asarray(a), words, (k, k), (stride, stride),
                           padding, threads=threads)
    assert got.dtype == jnp.int32 and got.shape == ref.shape
    np.testing.assert_array_equal(np.asarray(got), jax_out)
  np.testing.assert_array_equal(jax_out, ref.astype(np.int32))


@needs_kernel
def test_native_conv_under_jit_on_any_batch():
  # Inside jit, with the batch axis of any size: as infer.apply calls it.
  rng = np.random.default_rng(5)
  kernel = rng.standard_normal((3, 3, 32, 16)).astype(np.float32)
  w32, _ = bitpack.pack_conv_kernel_np(kernel)
  words = jnp.asarray(native.conv_kernel_words(w32, (3, 3), 32))
  fn = jax.jit(lambda x, w: native.xnor_conv(x, w, (3, 3), (1, 1),
                                             ((1, 1), (1, 1))))
  x = rng.standard_normal((5, 6, 6, 32)).astype(np.float32)
  whole = np.asarray(fn(jnp.asarray(x), words))
  parts = [np.asarray(fn(jnp.asarray(x[i:i + 1]), words)) for i in range(5)]
  np.testing.assert_array_equal(whole, np.concatenate(parts))


@needs_kernel
def test_peak_counts_its_bit_operations():
  x = np.arange(1, 65, dtype=np.uint64)
  per_word = 8 * 8 * 64 if native.isa() == "avx512vpopcntdq" else 8 * 64
  assert native.peak_bit_ops(x, 3) == 64 * 3 * per_word


def test_backend_choice_and_errors(monkeypatch):
  assert infer.resolve_backend("jax") == "jax"
  expected = "native" if native.available() else "jax"
  assert infer.resolve_backend("auto") == expected
  with pytest.raises(ValueError, match="backend='gpu'.*auto"):
    infer.resolve_backend("gpu")
  monkeypatch.setattr(native, "available", lambda: False)
  assert infer.resolve_backend("auto") == "jax"
  with pytest.raises(ValueError, match="not built.*backend='jax'"):
    infer.resolve_backend("native")
  with pytest.raises(RuntimeError, match="not built"):
    native.xnor_conv(jnp.zeros((1, 3, 3, 8)),
                     jnp.zeros((9, 8, 2), jnp.uint32), (3, 3), (1, 1),
                     ((1, 1), (1, 1)))
