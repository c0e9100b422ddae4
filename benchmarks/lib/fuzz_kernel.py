"""Fuzz driver of the XNOR kernel's FFI entry point (run under the
sanitizers).

Each input (a function of (seed, index) only) is a random conv geometry:
input channels 1-200 (word boundaries included), output channels 1-40,
kernel 1-5, strides 1-3, any padding in [0, kernel), small images, batch
1-2, 1-3 threads. Valid ones must equal `bitpack.xnor_conv` bit for bit; in
a third of them one argument is made bad (the word count for another
channel count, a kernel size or stride of 0, padding of the kernel's size or
negative, output rows past the input, threads 0): `native.xnor_conv` must
refuse it with a ValueError, and the FFI target called directly (no Python
check) with the matching buffers or attributes must return its error.
"""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax.deploy import bitpack
from ovsw_jax.deploy import native

FAILURES = ("wrong_result", "python_layer_accepted", "c_layer_accepted",
            "unexpected_exception")
BAD = ("words", "kernel_zero", "stride_zero", "pad_kernel", "pad_negative",
       "rows_past_input", "threads_zero")


def _geometry(rng: np.random.Generator) -> dict[str, Any]:
  k = [int(v) for v in rng.integers(1, 6, 2)]
  pads = [[int(rng.integers(0, kk)) for _ in range(2)] for kk in k]
  hw = [int(rng.integers(max(1, kk - sum(p)), 12)) for kk, p in zip(k, pads)]
  return dict(c_in=int(rng.choice([1, 3, 31, 32, 33, 63, 64, 65, 100, 128,
                                   130, 200])),
              c_out=int(rng.integers(1, 41)), k=k,
              s=[int(v) for v in rng.integers(1, 4, 2)], pads=pads, hw=hw,
              n=int(rng.integers(1, 3)), threads=int(rng.integers(1, 4)))


def _raw_call(x, w, out_shape, attrs: dict[str, int]):
  """The FFI target with no Python check in between."""
  call = jax.ffi.ffi_call(native.TARGET,
                          jax.ShapeDtypeStruct(out_shape, jnp.int32))
  return call(x, w, **{k: np.int64(v) for k, v in attrs.items()})


def _bad(kind: str, g: dict[str, Any], words_c: int, attrs: dict[str, int],
         out_shape: list[int]) -> tuple[int, dict[str, int], list[int]]:
  """One argument made bad: (channels the words are for, attrs, out)."""
  attrs, out_shape = dict(attrs), list(out_shape)
  if kind == "words":
    words_c = words_c + 64
  elif kind == "kernel_zero":
    attrs["kh"] = 0
  elif kind == "stride_zero":
    attrs["sw"] = 0
  elif kind == "pad_kernel":
    attrs["pad_h"] = g["k"][0]
  elif kind == "pad_negative":
    attrs["pad_w"] = -1
  elif kind == "rows_past_input":
    out_shape[1] += g["hw"][0] + g["k"][0]
  elif kind == "threads_zero":
    attrs["threads"] = 0
  return words_c, attrs, out_shape


def _python_args(kind: str, g: dict[str, Any]) -> dict[str, Any]:
  """`native.xnor_conv`'s arguments with the same argument made bad."""
  k, s, pads = list(g["k"]), list(g["s"]), [list(p) for p in g["pads"]]
  threads = g["threads"]
  if kind == "kernel_zero":
    k[0] = 0
  elif kind == "stride_zero":
    s[1] = 0
  elif kind == "pad_kernel":
    pads[0][0] = k[0]
  elif kind == "pad_negative":
    pads[1][0] = -1
  elif kind == "rows_past_input":
    pads[0] = [k[0], k[0]]
  elif kind == "threads_zero":
    threads = 0
  return dict(kernel_size=k, strides=s, padding=pads, threads=threads)


def one_input(seed: int, index: int, counts: collections.Counter) -> None:
  """Runs input ``index`` of ``seed`` and counts what happened."""
  rng = np.random.default_rng([seed, index])
  g = _geometry(rng)
  (kh, kw), (sh, sw), (pt, pb), (pl, pr) = g["k"], g["s"], *g["pads"]
  x = jnp.asarray(rng.standard_normal((g["n"], *g["hw"], g["c_in"])),
                  jnp.float32)
  ho = (g["hw"][0] + pt + pb - kh) // sh + 1
  wo = (g["hw"][1] + pl + pr - kw) // sw + 1
  attrs = dict(kh=kh, kw=kw, sh=sh, sw=sw, pad_h=pt, pad_w=pl,
               threads=g["threads"])
  out_shape = [g["n"], ho, wo, g["c_out"]]
  kind = str(rng.choice(BAD)) if rng.uniform() < 1 / 3 else "valid"
  counts[f"case:{kind}"] += 1
  words_c, bad_attrs, bad_out = _bad(kind, g, g["c_in"], attrs, out_shape)
  kernel = rng.standard_normal((kh, kw, words_c, g["c_out"]))
  w32, tap_sums = bitpack.pack_conv_kernel_np(kernel)
  words = jnp.asarray(native.conv_kernel_words(w32, (kh, kw), words_c))
  if kind == "valid":
    got = native.xnor_conv(x, words, g["k"], g["s"], g["pads"], g["threads"])
    want = jax.jit(bitpack.xnor_conv, static_argnums=(3, 4, 5, 6))(
        bitpack.pack_signs(x), jnp.asarray(w32), jnp.asarray(tap_sums),
        g["c_in"], tuple(g["k"]), tuple(g["s"]),
        tuple(tuple(p) for p in g["pads"]))
    same = np.array_equal(np.asarray(got), np.asarray(want))
    counts["outcome:equal" if same else "wrong_result"] += 1
    return
  try:
    native.xnor_conv(x, words, **_python_args(kind, g))
    counts["python_layer_accepted"] += 1
  except ValueError:
    counts["outcome:python_refused"] += 1
  try:
    np.asarray(_raw_call(x, words, tuple(bad_out), bad_attrs))
    counts["c_layer_accepted"] += 1
  except Exception as e:  # pylint: disable=broad-except
    known = "ovsw_xnor_conv" in str(e)
    counts["outcome:c_refused" if known else "unexpected_exception"] += 1
