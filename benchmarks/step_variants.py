"""What was tried to speed up the train step on CPU, each measured side by side.

  python -m benchmarks.step_variants --out=benchmarks/results/step_variants.json

Two parts, each interleaving its variants so that they share the machine's
state:

* ``step``: the real cResNet20_1w1a train step (method ``--method``, batch
  ``--batch_size``, built as benchmarks/train_step.py builds it:
  `benchmarks.lib.arms.JaxArm`), compiled with different XLA:CPU options
  (`jax.jit`'s ``compiler_options``): XLA's defaults, the fast path's
  `ovsw_jax.training.cpu_fast_path.CPU_COMPILER_OPTIONS`, other YNNPACK
  fusion lists, oneDNN, XNNPACK's graph fusion; with the binary
  convs' +-1 operands in float32 or bfloat16 (the fast path has both).
  images/s and the ratio to XLA's defaults with float32 operands (what
  ``--config.cpu_fast_path=False`` runs).
* ``convs``: one binary conv per cResNet20 stage shape (batch
  ``--batch_size``, 3x3, padding 1): the forward with +-1 operands in
  float32, bfloat16 and int8 (int32 sums: exact), as a convolution and as
  im2col + matmul; and the kernel gradient (+-1 input, float output
  gradient) as XLA's convolution and as matmuls over shifted rows of the
  padded input (nine per-tap dots, one im2col dot, nine batched dots). Each
  with its largest deviation from the float32 convolution.

Prints one JSON line; writes it (indented) to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from typing import Any, Mapping, Optional, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
from jax import lax  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks.lib import arms as arms_lib
from benchmarks.lib import machine
from benchmarks.lib import results
from benchmarks.lib import timing
from ovsw_jax.training import cpu_fast_path
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import steps as steps_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

_YNN = "xla_cpu_experimental_ynn_fusion_type"
# name -> (jax.jit compiler_options or None for XLA's defaults, whether the
# binary convs read their +-1 operands in bfloat16).
STEP_VARIANTS: dict[str, tuple[Optional[dict[str, Any]], bool]] = {
    "xla_defaults": (None, False),
    "fast_path": (dict(cpu_fast_path.CPU_COMPILER_OPTIONS), True),
    "fast_path_options_only": (
        dict(cpu_fast_path.CPU_COMPILER_OPTIONS), False),
    "bf16_operands_only": (None, True),
    "ynn_none": ({_YNN: ""}, False),
    "ynn_reduce": ({_YNN: "LIBRARY_FUSION_TYPE_REDUCE"}, False),
    "ynn_dot_eltwise_reduce": ({
        _YNN: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,"
              "LIBRARY_FUSION_TYPE_REDUCE"}, False),
    "onednn": ({"xla_cpu_use_onednn": True}, False),
    "xnn_graph_fusion": ({
        "xla_cpu_experimental_xnn_graph_fusion_mode":
            "XNN_GRAPH_FUSION_MODE_GREEDY"}, False),
}

_STAGES = ((1, 16), (2, 32), (4, 64))  # cResNet20: (size divisor, channels)


# ----------------------------------------------------------------------------
# The whole step under different XLA options
# ----------------------------------------------------------------------------


def step_variants(method: str, batch_size: int, steps: int,
                  variants: Mapping[str, tuple[Optional[dict[str, Any]], bool]]
                  = STEP_VARIANTS, model_options=None, image_size: int = 32,
                  log=lambda s: None) -> dict[str, Any]:
  """images/s of the train step, per variant: XLA options x operand dtype."""
  mesh = mesh_lib.create_mesh()
  config = arms_lib.make_config(method=method, batch_size=batch_size,
                                image_size=image_size,
                                model_options=model_options)
  batch = arms_lib.make_batch(batch_size, image_size, 10)
  arms, rejected = {}, {}
  first = arms_lib.JaxArm(config, batch, mesh)
  # Every variant starts from the same weights, in its own buffers (the step
  # donates its state).
  variables = jax.device_get({"params": first.state.params,
                              "batch_stats": first.state.batch_stats})
  replicated = mesh_lib.replicated(mesh)
  for name, (options, bf16_operands) in variants.items():
    variant = ml_collections.ConfigDict(config)
    # The trainer narrows the operands exactly when cpu_fast_path is on.
    variant.cpu_fast_path = bf16_operands
    arm = arms_lib.JaxArm(variant, batch, mesh, variables)
    arm.step_fn = jax.jit(
        functools.partial(steps_lib.train_step,
                          learning_rate_fn=arm.experiment.learning_rate_fn),
        in_shardings=(replicated, mesh_lib.data_sharding(mesh)),
        out_shardings=(replicated, replicated), donate_argnums=(0,),
        compiler_options=options)
    try:
      arm()
    except Exception as e:  # pylint: disable=broad-except
      rejected[name] = f"{type(e).__name__}: {str(e)[:200]}"
      log(f"  {name}: rejected ({rejected[name]})")
      continue
    arms[name] = arm
  log(f"timing {list(arms)}")
  timed = timing.time_interleaved(arms, steps, warmup=1, block=2)
  timed.pop("_load", None)
  base = batch_size / statistics.median(timed["xla_defaults"]["times"])
  out = {}
  for name, t in timed.items():
    ips = batch_size / statistics.median(t["times"])
    out[name] = {"compiler_options": variants[name][0],
                 "bf16_operands": variants[name][1], "images_per_sec": ips,
                 "over_xla_defaults": ips / base,
                 "cpu_utilization": t["cpu_utilization"]}
  return {"variants": out, "rejected": rejected}


# ----------------------------------------------------------------------------
# One conv, reformulated
# ----------------------------------------------------------------------------


def _conv(x, w, out_dtype=None):
  return lax.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      preferred_element_type=out_dtype)


def _padded_rows(x):
  """The zero-padded input as rows (N*(H+2)*(W+2), C) and its row width."""
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return xp.reshape(n * (h + 2) * (w + 2), c), w + 2


def _im2col(x):
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  taps = [xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]
  return jnp.concatenate(taps, axis=-1).reshape(n * h * w, 9 * c)


def _shifted(x, g):
  """Rows of the padded input per tap, and the output gradient, aligned.

  Padding the output gradient to the padded input's grid (zeros right and
  below) makes tap (i, j) a shift by i*(W+2)+j rows of the flattened padded
  input: dW[i, j] = rows[off:off+L].T @ g_rows[:L].
  """
  rows, width = _padded_rows(x)
  gp = jnp.pad(g, ((0, 0), (0, 2), (0, 2), (0, 0)))
  g_rows = gp.reshape(rows.shape[0], g.shape[-1])
  length = rows.shape[0] - (2 * width + 2)
  offsets = [i * width + j for i in range(3) for j in range(3)]
  return rows, g_rows[:length], offsets, length


def kernel_grad_per_tap(x, g):
  rows, g_rows, offsets, length = _shifted(x, g)
  taps = [lax.dot_general(lax.slice_in_dim(rows, o, o + length), g_rows,
                          (((0,), (0,)), ((), ()))) for o in offsets]
  return jnp.stack(taps).reshape(3, 3, x.shape[-1], g.shape[-1])


def kernel_grad_im2col(x, g):
  rows, g_rows, offsets, length = _shifted(x, g)
  cols = jnp.concatenate(
      [lax.slice_in_dim(rows, o, o + length) for o in offsets], axis=1)
  return lax.dot_general(cols, g_rows, (((0,), (0,)), ((), ()))).reshape(
      3, 3, x.shape[-1], g.shape[-1])


def kernel_grad_batched(x, g, blocks: int = 16):
  rows, g_rows, offsets, length = _shifted(x, g)
  padded = -(-length // blocks) * blocks
  g_b = jnp.pad(g_rows, ((0, padded - length), (0, 0))).reshape(
      blocks, padded // blocks, -1)
  rows = jnp.pad(rows, ((0, padded - length), (0, 0)))
  taps = [jnp.einsum("bkc,bkd->cd",
                     lax.slice_in_dim(rows, o, o + padded).reshape(
                         blocks, padded // blocks, -1), g_b)
          for o in offsets]
  return jnp.stack(taps).reshape(3, 3, x.shape[-1], g.shape[-1])


def conv_variants(batch_size: int, reps: int, image_size: int = 32,
                  compiler_options: Optional[dict[str, Any]] = None
                  ) -> dict[str, Any]:
  """Milliseconds and deviation of each formulation, per stage shape."""
  rng = np.random.default_rng(0)
  out = {}

  def jit(f):
    return jax.jit(f, compiler_options=compiler_options)

  for divisor, channels in _STAGES:
    size = max(image_size // divisor, 1)
    x = jnp.asarray(np.sign(rng.standard_normal(
        (batch_size, size, size, channels))).astype(np.float32))
    w = jnp.asarray(np.sign(rng.standard_normal(
        (3, 3, channels, channels))).astype(np.float32))
    g = jnp.asarray(rng.standard_normal(x.shape).astype(np.float32))
    forward = {
        "forward_f32_conv": jit(_conv),
        "forward_bf16_conv": jit(lambda x, w: _conv(
            x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), jnp.float32)),
        "forward_int8_conv": jit(lambda x, w: _conv(
            x.astype(jnp.int8), w.astype(jnp.int8), jnp.int32)),
        "forward_f32_im2col_dot": jit(lambda x, w: (
            _im2col(x) @ w.reshape(-1, w.shape[-1])).reshape(
                *x.shape[:3], -1)),
        "forward_int8_im2col_dot": jit(lambda x, w: jnp.dot(
            _im2col(x.astype(jnp.int8)),
            w.reshape(-1, w.shape[-1]).astype(jnp.int8),
            preferred_element_type=jnp.int32).reshape(*x.shape[:3], -1)),
    }
    kernel = {
        "kernel_grad_xla_conv": jit(
            lambda x, g: jax.vjp(lambda w: _conv(x, w), w)[1](g)[0]),
        "kernel_grad_9_tap_dots": jit(kernel_grad_per_tap),
        "kernel_grad_im2col_dot": jit(kernel_grad_im2col),
        "kernel_grad_9_batched_dots": jit(kernel_grad_batched),
    }
    calls = {k: (lambda f=f: f(x, w)) for k, f in forward.items()}
    calls.update({k: (lambda f=f: f(x, g)) for k, f in kernel.items()})
    times = timing.interleave(calls, reps)
    ref_f = np.asarray(forward["forward_f32_conv"](x, w), np.float64)
    ref_k = np.asarray(kernel["kernel_grad_xla_conv"](x, g), np.float64)
    stage = {}
    for k, f in {**forward, **kernel}.items():
      ref = ref_f if k.startswith("forward") else ref_k
      value = np.asarray(f(x, w) if k.startswith("forward") else f(x, g),
                         np.float64)
      stage[k] = {"ms": times[k] * 1e3,
                  "max_abs_deviation": float(np.max(np.abs(value - ref))),
                  "ref_max_abs": float(np.max(np.abs(ref)))}
    for prefix, base in (("forward", "forward_f32_conv"),
                         ("kernel_grad", "kernel_grad_xla_conv")):
      for k in stage:
        if k.startswith(prefix):
          stage[k]["time_over_xla_conv"] = stage[k]["ms"] / stage[base]["ms"]
    out[f"{size}x{size}x{channels}"] = stage
  return out


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--method", default="ovsw")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=12,
                      help="timed steps per step variant")
  parser.add_argument("--reps", type=int, default=15,
                      help="timed calls per conv variant")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  log = lambda s: print(s, file=sys.stderr, flush=True)  # pylint: disable=unnecessary-lambda-assignment
  start = time.time()
  result: dict[str, Any] = {
      "benchmark": "step_variants",
      "command": "python -m benchmarks.step_variants " + " ".join(
          sys.argv[1:] if argv is None else argv),
      "config": {"model": "cresnet20_1w1a", "method": args.method,
                 "batch_size": args.batch_size, "steps": args.steps,
                 "reps": args.reps},
  }
  log("whole step, per XLA option set")
  result["step"] = step_variants(args.method, args.batch_size, args.steps,
                                 log=log)
  log("one conv per stage shape, reformulated (fast-path options)")
  options = cpu_fast_path.compiler_options(mesh_lib.create_mesh())
  result["convs"] = conv_variants(args.batch_size, args.reps,
                                  compiler_options=options)
  result["wall_seconds"] = time.time() - start
  result["machine"] = machine.machine_info()
  results.write_json(result, args.out)
  return result


if __name__ == "__main__":
  main()
