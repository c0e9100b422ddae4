"""Per-layer time of packed inference: where the batch-1 latency goes.

For one packed model at batch 1, each binary conv (pack + XNOR-popcount conv
+ scale, as `ovsw_jax.deploy.infer.apply` runs it) and each float layer
(``nn.Conv`` / ``nn.Dense``: the stem, the 1x1 downsample convs, the head) is
jitted alone on an input of the shape it sees in the model, and timed. A
binary conv's binary operations are its bit multiply-accumulates,
``Ho * Wo * C_out * kh * kw * C_in`` (one XNOR and one popcount bit each);
``peak_fraction`` divides its rate by this core's popcount peak, measured by
`popcount_peak` on the same word type (uint32, XOR + popcount + sum over
arrays that stay in cache).
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


def popcount_peak(words: int = 1024, reps: int = 50) -> dict[str, Any]:
  """Bits per second of XOR + popcount + accumulate on uint32 words.

  Every word of one ``words``-long array is XORed with every word of another
  (4 KiB each by default: in L1), popcounted and summed in int32 over the
  first: ``words**2`` XOR + popcounts in one fused loop, as `xnor_conv`
  broadcasts an activation word over output channels.
  """
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.integers(0, 2**32, (words, 1), dtype=np.uint32))
  b = jnp.asarray(rng.integers(0, 2**32, (words,), dtype=np.uint32))
  fn = jax.jit(lambda a, b: jnp.sum(
      lax.population_count(a ^ b).astype(jnp.int32), axis=0))
  s = median_s(lambda: fn(a, b), reps)
  bits = words * words * bitpack.WORD_BITS
  return {"word": "uint32", "bits_per_call": bits, "median_s": s,
          "bit_ops_per_s": bits / s}


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


def binary_conv_row(call, arrays, reps: int, peak: float) -> dict[str, Any]:
  """One binary conv timed alone, as `infer.apply` runs it."""
  entry, a = call["entry"], arrays["layers"][call["name"]]
  pad = [tuple(p) for p in entry["padding"]]

  # The weights are arguments, not constants baked into the program: layers
  # of one shape then compile to the same executable (and reuse it from a
  # persistent compilation cache).
  def conv(x, w, tap_sums, mul):
    y = bitpack.xnor_conv(bitpack.pack_signs(x), w, tap_sums,
                          entry["in_features"], entry["kernel_size"],
                          entry["strides"], pad)
    return y.astype(x.dtype) * mul

  x = jnp.asarray(np.random.default_rng(1).standard_normal(call["shape"]),
                  jnp.float32)
  weights = (a["w"], a["tap_sums"], a["mul"])
  fn = jax.jit(conv)
  s = median_s(lambda: fn(x, *weights), reps)
  _, ho, wo, c_out = jax.eval_shape(conv, x, *weights).shape
  kh, kw = entry["kernel_size"]
  ops = ho * wo * c_out * kh * kw * entry["in_features"]
  return {"name": call["name"], "kind": "binary_conv",
          "input_shape": list(call["shape"]), "ms": s * 1e3,
          "binary_ops": ops, "binary_ops_per_s": ops / s,
          "peak_fraction": ops / s / peak}


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
  """The per-layer table, the whole packed forward and the popcount peak."""
  image = jnp.asarray(np.random.default_rng(0).standard_normal(
      (1, *image_shape)), jnp.float32)
  peak = popcount_peak()
  arrays = packed.arrays()
  rows = []
  for call in record_layers(packed, image):
    if call["kind"] == "binary_conv":
      rows.append(binary_conv_row(call, arrays, reps,
                                  peak["bit_ops_per_s"]))
    else:
      rows.append(float_row(call, reps))
  predict = infer.make_predict_fn(packed)
  whole_ms = median_s(lambda: predict(image), reps) * 1e3
  binary_ms = sum(r["ms"] for r in rows if r["kind"] == "binary_conv")
  float_ms = sum(r["ms"] for r in rows if r["kind"] == "float")
  ops = sum(r.get("binary_ops", 0) for r in rows)
  return {
      "popcount_peak": peak, "layers": rows, "whole_forward_ms": whole_ms,
      "binary_convs_ms": binary_ms, "float_layers_ms": float_ms,
      # Of the layers timed alone; the rest of the forward (BatchNorm,
      # activations, residual adds, pooling) is whole - both.
      "float_share_of_whole": float_ms / whole_ms,
      "binary_share_of_whole": binary_ms / whole_ms,
      "other_ms": whole_ms - binary_ms - float_ms,
      "binary_ops": ops,
      "binary_ops_per_s_over_binary_convs": ops / (binary_ms / 1e3),
      "binary_peak_fraction": ops / (binary_ms / 1e3)
                              / peak["bit_ops_per_s"],
  }
