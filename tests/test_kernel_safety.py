"""The native XNOR kernel refuses inconsistent arguments, in both layers.

`native.xnor_conv` checks shapes, the weights' word count for the input's
channels, kernel sizes, strides, padding and threads before tracing; the C++
handler checks XLA's buffers and attributes again and answers an error
status. The C++ checks are driven through raw `jax.ffi.ffi_call`s (no Python
check in between) in a child process with a timeout, so that a regression
fails here rather than crashing pytest.
"""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from ovsw_jax.deploy import bitpack
from ovsw_jax.deploy import native

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_kernel = pytest.mark.skipif(
    not native.available(),
    reason="native kernel not built: pip install -e . with a C++ compiler")


def _words(c_in, c_out, k, seed=0):
  kernel = np.random.default_rng(seed).standard_normal(
      (k, k, c_in, c_out)).astype(np.float32)
  w32, _ = bitpack.pack_conv_kernel_np(kernel)
  return jnp.asarray(native.conv_kernel_words(w32, (k, k), c_in))


# (x shape, words (c_in, c_out, k), kernel_size, strides, padding, threads,
#  what the refusal names)
BAD = {
    "x_rank": ((6, 6, 70), (70, 8, 3), (3, 3), (1, 1), ((1, 1), (1, 1)), 1,
               r"x has shape \(6, 6, 70\); it must be NHWC"),
    "words_for_other_channels": ((1, 6, 6, 130), (70, 8, 3), (3, 3), (1, 1),
                                 ((1, 1), (1, 1)), 1,
                                 r"C=130 .* = \(27, C_out, 2\)"),
    "kernel_not_the_words": ((1, 6, 6, 70), (70, 8, 3), (1, 3), (1, 1),
                             ((0, 0), (1, 1)), 1, r"\(18, 8, 2\).*1x3 kernel"),
    "kernel_zero": ((1, 6, 6, 70), (70, 8, 3), (0, 3), (1, 1),
                    ((0, 0), (1, 1)), 1, r"kernel_size=\(0, 3\)"),
    "stride_zero": ((1, 6, 6, 70), (70, 8, 3), (3, 3), (0, 1),
                    ((1, 1), (1, 1)), 1, r"strides=\(0, 1\)"),
    "stride_float": ((1, 6, 6, 70), (70, 8, 3), (3, 3), (1.5, 1),
                     ((1, 1), (1, 1)), 1, r"strides=\(1.5, 1\)"),
    "padding_negative": ((1, 6, 6, 70), (70, 8, 3), (3, 3), (1, 1),
                         ((-1, 1), (1, 1)), 1,
                         r"padding \(top, bottom\)=\(-1, 1\)"),
    "padding_past_kernel": ((1, 6, 6, 70), (70, 8, 3), (3, 3), (1, 1),
                            ((3, 3), (1, 1)), 1,
                            r"padding \(top, bottom\)=\(3, 3\).*\[0, 2\]"),
    "padding_shape": ((1, 6, 6, 70), (70, 8, 3), (3, 3), (1, 1), (1, 1), 1,
                      r"padding \(top, bottom\)=1 must be 2 ints"),
    "input_below_kernel": ((1, 2, 6, 70), (70, 8, 3), (3, 3), (1, 1),
                           ((0, 0), (1, 1)), 1, r"smaller than the 3x3"),
    "threads_zero": ((1, 6, 6, 70), (70, 8, 3), (3, 3), (1, 1),
                     ((1, 1), (1, 1)), 0, r"threads=0"),
}


@needs_kernel
@pytest.mark.parametrize("name", sorted(BAD))
def test_python_layer_refuses_by_name(name):
  x_shape, (c_in, c_out, k), ks, st, pad, threads, pattern = BAD[name]
  with pytest.raises(ValueError, match=pattern):
    native.xnor_conv(jnp.zeros(x_shape), _words(c_in, c_out, k), ks, st, pad,
                     threads)


def test_python_layer_refuses_other_dtypes_and_ranks():
  with pytest.raises(ValueError, match="dtype int32"):
    native.check_conv_args((1, 6, 6, 64), (9, 4, 2), np.int32, (3, 3),
                           (1, 1), ((1, 1), (1, 1)), 1)
  with pytest.raises(ValueError, match=r"shape \(9, 4\)"):
    native.check_conv_args((1, 6, 6, 64), (9, 4), np.uint32, (3, 3),
                           (1, 1), ((1, 1), (1, 1)), 1)
  # What it accepts: the output size of lax's conv (high padding included).
  assert native.check_conv_args(
      (2, 9, 8, 64), (9, 4, 2), np.uint32, (3, 3), (2, 2), ((1, 0), (0, 2)),
      3) == ((3, 3), (2, 2), (1, 0), (0, 2), 4, 4)


# Raw calls of the FFI target: (x shape, w shape, out shape, attrs, message).
RAW = {
    "words": ((1, 6, 6, 130), (18, 8, 2), (1, 6, 6, 8), {}, "number of words"),
    "out_rows_past_input": ((1, 6, 6, 70), (18, 8, 2), (1, 9, 6, 8), {},
                            "output rows past the input"),
    "out_cols_past_input": ((1, 6, 6, 70), (18, 8, 2), (1, 6, 9, 8), {},
                            "output columns past the input"),
    "out_channels": ((1, 6, 6, 70), (18, 8, 2), (1, 6, 6, 9), {},
                     "output channels"),
    "out_batch": ((1, 6, 6, 70), (18, 8, 2), (2, 6, 6, 8), {}, "batch"),
    "kernel_zero": ((1, 6, 6, 70), (18, 8, 2), (1, 6, 6, 8), {"kh": 0},
                    "kernel size"),
    "kernel_huge": ((1, 6, 6, 70), (18, 8, 2), (1, 6, 6, 8),
                    {"kh": 1 << 40}, "kernel size"),
    "stride_zero": ((1, 6, 6, 70), (18, 8, 2), (1, 6, 6, 8), {"sh": 0},
                    "strides"),
    "pad_negative": ((1, 6, 6, 70), (18, 8, 2), (1, 6, 6, 8),
                     {"pad_w": -4}, "padding"),
    "pad_past_kernel": ((1, 6, 6, 70), (18, 8, 2), (1, 6, 6, 8),
                        {"pad_h": 3}, "padding"),
    "threads_zero": ((1, 6, 6, 70), (18, 8, 2), (1, 6, 6, 8),
                     {"threads": 0}, "threads"),
    "w_pairs": ((1, 6, 6, 70), (18, 8, 3), (1, 6, 6, 8), {}, "must be NHWC"),
}

CHILD = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from ovsw_jax.deploy import native
assert native.available()
out = {}
for name, (xs, ws, os_, attrs) in json.loads(sys.argv[1]).items():
  a = dict(kh=3, kw=3, sh=1, sw=1, pad_h=1, pad_w=1, threads=1)
  a.update(attrs)
  call = jax.ffi.ffi_call(native.TARGET,
                          jax.ShapeDtypeStruct(tuple(os_), jnp.int32))
  try:
    r = call(jnp.ones(xs, jnp.float32), jnp.zeros(ws, jnp.uint32),
             **{k: np.int64(v) for k, v in a.items()})
    out[name] = "no error: " + str(np.asarray(r).sum())
  except Exception as e:
    out[name] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


@needs_kernel
def test_cpp_layer_refuses_what_the_python_layer_would():
  cases = {k: v[:4] for k, v in RAW.items()}
  proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cases)],
                        cwd=REPO, capture_output=True, text=True, timeout=180,
                        check=False)
  assert proc.returncode == 0, (
      f"the child died (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  for name, message in results.items():
    assert "ovsw_xnor_conv" in message and RAW[name][4] in message, (
        name, message)


@needs_kernel
def test_peak_refuses_empty_input():
  with pytest.raises(ValueError, match="reps >= 0"):
    native.peak_bit_ops(np.ones(4, np.uint64), -1)
  with pytest.raises(ValueError, match="needs words"):
    native.peak_bit_ops(np.ones(0, np.uint64), 1)
