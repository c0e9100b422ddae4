"""Train-step throughput against batch size: ours and PyTorch's, side by side.

  python -m benchmarks.throughput --batch_sizes=32,64,128,256 --steps=12 \
      --compare_torch --out=benchmarks/results/throughput.json

For each batch size, one train-step comparison
(`benchmarks.lib.step_comparison.run`, what ``python -m
benchmarks.train_step`` reports; no breakdown): our jitted step for
``--method`` and for vanilla, the same ``--method`` step compiled with XLA's
defaults instead of the CPU fast path (arm '<method>_portable', on CPU), and
with ``--compare_torch`` the reference's step in PyTorch eager with and
without the method. Arms are
interleaved within a batch size, so the ratios at one batch size are side by
side; absolute images/s across batch sizes ran minutes apart.

Writes the JSON to ``--out`` and a PNG next to it (images/s and the ratios
against batch size).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys
import time
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks.lib import arms
from benchmarks.lib import results
from benchmarks.lib import step_comparison
# pylint: enable=g-import-not-at-top,wrong-import-position


def point(result: dict[str, Any], method: str) -> dict[str, Any]:
  """One batch size's images/s per arm and the ratios between them."""
  ours = result["ours"]
  out: dict[str, Any] = {
      "batch_size": result["config"]["batch_size"],
      "images_per_sec": {f"ours/{m}": v["images_per_sec"]
                         for m, v in ours.items()},
      "ratios": {},
  }
  out["images_per_sec"].update(
      {f"torch/{m}": v["images_per_sec"]
       for m, v in result.get("torch", {}).items()})
  ips = out["images_per_sec"]
  ratios = out["ratios"]
  if method != "vanilla":
    ratios[f"{method}_over_vanilla_step_time"] = (
        ips["ours/vanilla"] / ips[f"ours/{method}"])
  if f"ours/{method}_portable" in ips:
    ratios["fast_path_over_portable"] = (
        ips[f"ours/{method}"] / ips[f"ours/{method}_portable"])
  if f"torch/{method}" in ips:
    ratios["ours_over_torch"] = ips[f"ours/{method}"] / ips[f"torch/{method}"]
  out["cpu_utilization"] = {f"ours/{m}": v["cpu_utilization"]
                            for m, v in ours.items()}
  out["loadavg_1min_per_round"] = result["machine"]["loadavg_1min_per_round"]
  return out


def sweep(batch_sizes: Sequence[int], model: str = "cresnet20_1w1a",
          method: str = "ovsw", image_size: int = 32, steps: int = 12,
          warmup: int = 2, block: int = 3, compare_torch: bool = False,
          model_options: Optional[dict[str, Any]] = None,
          log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
  """Runs `step_comparison.run` per batch size; returns the JSON-able result."""
  if not batch_sizes:
    raise ValueError("--batch_sizes is empty: give e.g. 32,64,128")
  points, machine = [], None
  start = time.time()
  for b in batch_sizes:
    log(f"batch size {b}")
    result = step_comparison.run(
        model=model, method=method, batch_size=b, image_size=image_size,
        steps=steps, warmup=warmup, block=block, compare_torch=compare_torch,
        breakdown_reps=0, model_options=model_options, log=log)
    points.append(point(result, method))
    machine = result["machine"]
    machine.pop("loadavg_1min_per_round", None)
    log(f"  {json.dumps(points[-1]['images_per_sec'])}")
  return {
      "benchmark": "throughput",
      "config": {"model": model, "method": method, "image_size": image_size,
                 "batch_sizes": list(batch_sizes), "steps": steps,
                 "warmup": warmup, "block": block,
                 "compare_torch": compare_torch,
                 "model_options": dict(model_options or {})},
      "data": arms.DATA_NOTE,
      "timing": ("per batch size, train_step.run's interleaved arms; "
                 "images_per_sec = batch_size / median step time"),
      "points": points,
      "wall_seconds": time.time() - start,
      "machine": machine,
  }


def plot(result: dict[str, Any], path: Path) -> None:
  """images/s and the ratios against batch size."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  points = result["points"]
  sizes = [p["batch_size"] for p in points]
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for arm in points[0]["images_per_sec"]:
    ax1.plot(sizes, [p["images_per_sec"][arm] for p in points], marker="o",
             label=arm, linestyle="--" if arm.startswith("torch") else "-")
  ax1.set(xscale="log", xlabel="batch size", ylabel="images / s",
          title=f"{result['config']['model']} train step")
  ax1.set_xticks(sizes, [str(s) for s in sizes])
  ax1.minorticks_off()
  ax1.legend(fontsize=8)
  ax1.grid(alpha=0.3)
  for name in points[0]["ratios"]:
    ax2.plot(sizes, [p["ratios"][name] for p in points], "o-", label=name)
  if "ours_over_torch" in points[0]["ratios"]:
    ax2.axhline(step_comparison.TARGET_OURS_OVER_TORCH, color="gray", ls=":",
                label="target: ours / torch")
  ax2.axhline(1.0, color="black", lw=0.5)
  ax2.set(xscale="log", xlabel="batch size", ylabel="ratio",
          title="side by side, per batch size")
  ax2.set_xticks(sizes, [str(s) for s in sizes])
  ax2.minorticks_off()
  ax2.legend(fontsize=8)
  ax2.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="cresnet20_1w1a")
  parser.add_argument("--method", default="ovsw")
  parser.add_argument("--batch_sizes", default="32,64,128,256")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--block", type=int, default=3)
  parser.add_argument("--compare_torch", action="store_true")
  parser.add_argument("--out", default=None,
                      help="JSON path; the PNG goes next to it")
  args = parser.parse_args(argv)
  try:
    sizes = [int(v) for v in args.batch_sizes.split(",") if v]
  except ValueError as e:
    raise SystemExit(f"--batch_sizes={args.batch_sizes!r}: give integers "
                     "separated by commas, e.g. 32,64,128") from e
  result = sweep(sizes, args.model, args.method, args.image_size, args.steps,
                 args.warmup, args.block, args.compare_torch,
                 log=lambda s: print(s, file=sys.stderr, flush=True))
  result["command"] = "python -m benchmarks.throughput " + " ".join(
      sys.argv[1:] if argv is None else argv)
  results.write_json(result, args.out)
  if args.out:
    plot(result, Path(args.out).with_suffix(".png"))
  return result


if __name__ == "__main__":
  main()
