"""Per-layer table of packed resnet18_1w1a at batch 1 on one thread.

  python -m benchmarks.deploy_layers [--model=resnet18_1w1a] [--reps=10] \
      [--image_size_imagenet=224] [--out=benchmarks/results/deploy_layers.json]

Each binary conv's time with the native and the JAX kernel, its binary ops/s
and fraction of this core's popcount peak on the kernel's own word type
(uint64 for the native kernel, uint32 for JAX), the float layers' time (stem,
downsample, head) and their share of the whole packed forward
(`benchmarks.lib.deploy_layers`). One thread: XLA's Eigen on the calling
thread (``--xla_cpu_multi_thread_eigen=false``) and the process pinned to
one core before JAX starts, as `benchmarks.deploy`'s 'single' mode.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

if __name__ == "__main__":
  # One thread, set before JAX starts; only when run as the command, so that
  # importing this module (its --help test) leaves the importer's process be.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ["XLA_FLAGS"] = " ".join(
      f for f in (os.environ.get("XLA_FLAGS", ""),
                  "--xla_cpu_multi_thread_eigen=false") if f)
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from benchmarks.lib import deploy_files
from benchmarks.lib import deploy_layers
from benchmarks.lib import machine
from benchmarks.lib import results
from ovsw_jax import models
from ovsw_jax.deploy import export
# pylint: enable=g-import-not-at-top,wrong-import-position


def run(name: str, reps: int, image_size_imagenet: int) -> dict[str, Any]:
  """The table for one model (random weights, float32 float layers)."""
  name = models.canonical_name(name)
  if reps < 1:
    raise ValueError(f"--reps={reps} must be >= 1")
  model, shape, _ = deploy_files.model_setup(name, image_size_imagenet)
  variables = deploy_files.random_variables(model, shape, 0)
  packed = export.export_model(model, variables, model_name=name,
                               model_options={}, image_shape=shape,
                               float_dtype="float32")
  load_start = os.getloadavg()
  out = {"model": name, "batch": 1, "image_shape": list(shape),
         "reps": reps, "threads": "single",
         **deploy_layers.layer_table(packed, shape, reps)}
  info = machine.machine_info()
  info.update(loadavg_start=list(load_start), loadavg_end=list(
      os.getloadavg()), xla_flags=os.environ.get("XLA_FLAGS", ""),
              cpu_affinity=sorted(os.sched_getaffinity(0)),
              jax_devices=str(jax.devices()))
  out["machine"] = info
  return out


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet18_1w1a")
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--image_size_imagenet", type=int, default=224)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  result = run(args.model, args.reps, args.image_size_imagenet)
  results.write_json(result, args.out)
  for r in result["layers"]:
    extra = (f" {r['binary_ops_per_s'] / 1e9:7.1f} Gbop/s "
             f"{100 * r['peak_fraction']:5.1f}% of peak, JAX "
             f"{r['jax_ms']:8.3f} ms"
             if r["kind"] == "binary_conv" else "")
    print(f"{r['name']:40s} {r['ms']:8.3f} ms{extra}", file=sys.stderr)
  print(f"whole forward {result['whole_forward_ms']:.2f} ms "
        f"({result['backend']}), JAX {result['whole_forward_jax_ms']:.2f} ms",
        file=sys.stderr)
  return result


if __name__ == "__main__":
  main()
