"""Per-layer time of packed inference: where the batch-1 latency goes.

For one packed model at batch 1, each binary conv (pack + XNOR-popcount conv
+ scale, as `ovsw_jax.deploy.infer.apply` runs it) and each float layer
(``nn.Conv`` / ``nn.Dense``: the stem, the 1x1 downsample convs, the head) is
jitted alone on an input of the shape it sees in the model, and timed. Each
binary conv is timed with both backends: the native kernel
(`ovsw_jax.deploy.native`, when built; ``ms``) and pure JAX (``jax_ms``).

A binary conv's binary operations are its bit multiply-accumulates,
``Ho * Wo * C_out * kh * kw * C_in`` (one XNOR and one popcount bit each).
``peak_fraction`` divides its rate by this core's popcount peak on the same
word type: for the native kernel, its library's own peak loop (uint64 words,
the instruction set it chose: `native.peak_bit_ops`); for JAX, a jitted
uint32 XOR + popcount + accumulate chain shaped like `bitpack.xnor_conv`'s
(`jax_popcount_peak`). Both peaks run on operands that stay in L1.
"""

from __future__ import annotations

import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from ovsw_jax.deploy import bitpack
from ovsw_jax.deploy import format as packed_format
from ovsw_jax.deploy import infer
from ovsw_jax.deploy import native


def median_s(fn, reps: int, warmup: int = 2) -> float:
  """Median seconds of ``fn()`` (to `jax.block_until_ready`)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times))


# (pixels, words, channels) of the JAX peak's chains: XLA's rate depends on
# the shape, so the peak is the best of a few conv-like ones.
JAX_PEAK_SHAPES = ((64, 16, 512), (256, 8, 256), (128, 4, 1024))


def jax_popcount_peak(reps: int = 30) -> dict[str, Any]:
  """Bits per second of JAX's uint32 XOR + popcount + accumulate.

  Shaped like `bitpack.xnor_conv`'s fused chain: each pixel's ``words``
  activation words are XORed with a ``channels``-long weight row each,
  popcounted and summed into one int32 per (pixel, channel). The best rate
  over `JAX_PEAK_SHAPES` (operands of at most 1 MiB).
  """
  rng = np.random.default_rng(0)
  best = None
  for pixels, words, channels in JAX_PEAK_SHAPES:
    x = jnp.asarray(rng.integers(0, 2**32, (pixels, words), dtype=np.uint32))
    w = jnp.asarray(rng.integers(0, 2**32, (words, channels),
                                 dtype=np.uint32))

    def chain(x, w, words=words):
      acc = None
      for q in range(words):
        c = lax.population_count(x[:, q:q + 1] ^ w[q]).astype(jnp.int32)
        acc = c if acc is None else acc + c
      return acc

    fn = jax.jit(chain)
    s = median_s(lambda fn=fn, x=x, w=w: fn(x, w), reps)
    bits = pixels * words * channels * bitpack.WORD_BITS
    if best is None or bits / s > best["bit_ops_per_s"]:
      best = {"word": "uint32", "shape": [pixels, words, channels],
              "bits_per_call": bits, "median_s": s, "bit_ops_per_s": bits / s}
  return best


def native_popcount_peak(words: int = 512, passes: int = 20000,
                         reps: int = 5) -> dict[str, Any]:
  """Bits per second of the native library's peak loop (`native.peak_bit_ops`:
  uint64 words in its instruction set, 8 independent accumulators)."""
  x = np.random.default_rng(0).integers(0, 2**63, words, dtype=np.uint64)
  native.peak_bit_ops(x, passes // 10)  # Warm up.
  times, bits = [], 0
  for _ in range(reps):
    t = time.perf_counter()
    bits = native.peak_bit_ops(x, passes)
    times.append(time.perf_counter() - t)
  s = float(np.median(times))
  return {"word": "uint64", "isa": native.isa(), "bits_per_call": bits,
          "median_s": s, "bit_ops_per_s": bits / s}


def record_layers(packed: packed_format.PackedModel, image: jax.Array
                  ) -> list[dict[str, Any]]:
  """Every binary conv and float conv/dense call: path, kind, input shape."""
  table = packed.header["layers"]
  calls = []

  def recorder(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__":
      name = "/".join(module.path)
      entry = table.get(name)
      if entry is not None and entry["kind"] == packed_format.BINARY_CONV:
        calls.append({"name": name, "kind": "binary_conv", "entry": entry,
                      "shape": tuple(args[0].shape)})
      elif type(module) in (nn.Conv, nn.Dense):
        calls.append({"name": name, "kind": "float", "module": module,
                      "shape": tuple(args[0].shape)})
    return next_fun(*args, **kwargs)

  arrays = packed.arrays()
  with nn.intercept_methods(recorder):
    jax.eval_shape(lambda x: infer.apply(packed, arrays, x), image)
  return calls


def binary_conv_row(call, arrays, reps: int, peaks: dict[str, Any]
                    ) -> dict[str, Any]:
  """One binary conv timed alone with each backend, as `infer.apply` runs it.

  Args:
    arrays: `infer.device_arrays` of the model (with the native weights when
      the native kernel is built).
    peaks: backend -> its popcount peak (bits/s).
  """
  entry, a = call["entry"], arrays["layers"][call["name"]]

  # The weights are arguments, not constants baked into the program: layers
  # of one shape then compile to the same executable (and reuse it from a
  # persistent compilation cache).
  def conv(backend, x, a):
    y = infer.binary_conv(entry, a, x, backend, threads=1)
    return y.astype(x.dtype) * a["mul"]

  x = jnp.asarray(np.random.default_rng(1).standard_normal(call["shape"]),
                  jnp.float32)
  _, ho, wo, c_out = jax.eval_shape(
      lambda x, a: conv("jax", x, a), x, a).shape
  kh, kw = entry["kernel_size"]
  ops = ho * wo * c_out * kh * kw * entry["in_features"]
  row = {"name": call["name"], "kind": "binary_conv",
         "input_shape": list(call["shape"]), "binary_ops": ops}
  for backend, prefix in (("native", ""), ("jax", "jax_")):
    if backend not in peaks:
      continue
    fn = jax.jit(lambda x, a, backend=backend: conv(backend, x, a))
    s = median_s(lambda fn=fn: fn(x, a), reps)
    row.update({f"{prefix}ms": s * 1e3,
                f"{prefix}binary_ops_per_s": ops / s,
                f"{prefix}peak_fraction": ops / s / peaks[backend]})
  return row


def float_row(call, reps: int) -> dict[str, Any]:
  """One float layer (random weights of its shape) timed alone."""
  module = call["module"].clone(parent=None)
  x = jnp.asarray(np.random.default_rng(2).standard_normal(call["shape"]),
                  jnp.float32)
  variables = module.init(jax.random.PRNGKey(0), x)
  fn = jax.jit(module.apply)
  s = median_s(lambda: fn(variables, x), reps)
  return {"name": call["name"], "kind": "float",
          "input_shape": list(call["shape"]), "ms": s * 1e3}


def layer_table(packed: packed_format.PackedModel, image_shape, reps: int
                ) -> dict[str, Any]:
  """The per-layer table, the whole packed forward and the popcount peaks.

  Binary conv rows' ``ms`` is the native kernel's when it is built (else the
  JAX backend's, and ``backend`` says so); ``jax_ms`` is always JAX's.
  """
  image = jnp.asarray(np.random.default_rng(0).standard_normal(
      (1, *image_shape)), jnp.float32)
  peaks = {"jax": jax_popcount_peak()}
  backend = "native" if native.available() else "jax"
  if backend == "native":
    peaks["native"] = native_popcount_peak()
  rates = {k: v["bit_ops_per_s"] for k, v in peaks.items()}
  arrays = infer.device_arrays(packed, backend)
  rows = []
  for call in record_layers(packed, image):
    if call["kind"] == "binary_conv":
      row = binary_conv_row(call, arrays, reps, rates)
      if backend == "jax":  # No native rows: the default columns are JAX's.
        row.update({k[4:]: row[k] for k in list(row) if k.startswith("jax_")})
      rows.append(row)
    else:
      rows.append(float_row(call, reps))
  whole = {}
  for b in dict.fromkeys((backend, "jax")):
    predict = infer.make_predict_fn(packed, b, threads=1)
    whole[b] = median_s(lambda predict=predict: predict(image), reps) * 1e3
  whole_ms = whole[backend]
  binary_ms = sum(r["ms"] for r in rows if r["kind"] == "binary_conv")
  float_ms = sum(r["ms"] for r in rows if r["kind"] == "float")
  ops = sum(r.get("binary_ops", 0) for r in rows)
  return {
      "backend": backend, "isa": native.isa(),
      "popcount_peak": peaks[backend], "popcount_peaks": peaks,
      "layers": rows, "whole_forward_ms": whole_ms,
      "whole_forward_jax_ms": whole["jax"],
      "binary_convs_ms": binary_ms,
      "binary_convs_jax_ms": sum(r["jax_ms"] for r in rows
                                 if r["kind"] == "binary_conv"),
      "float_layers_ms": float_ms,
      # Of the layers timed alone; the rest of the forward (BatchNorm,
      # activations, residual adds, pooling) is whole - both.
      "float_share_of_whole": float_ms / whole_ms,
      "binary_share_of_whole": binary_ms / whole_ms,
      "other_ms": whole_ms - binary_ms - float_ms,
      "binary_ops": ops,
      "binary_ops_per_s_over_binary_convs": ops / (binary_ms / 1e3),
      "binary_peak_fraction": ops / (binary_ms / 1e3)
                              / peaks[backend]["bit_ops_per_s"],
  }
