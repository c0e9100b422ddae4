"""Packed 1-bit models against float32: file sizes and batch-1 latency on CPU.

  python -m benchmarks.deploy [--models=cresnet20_1w1a,...] [--reps=30] \
      [--threads=single,multi] [--image_size_imagenet=224] \
      [--files_dir=/tmp/deploy_files] [--out=benchmarks/results/deploy.json]

The paper (section 5.5, the BOLT framework on an ARM device, NEON) saves
16.6x / 21.2x memory on ResNet18 / ResNet34 and runs them 3.47x / 3.42x faster than their
32-bit versions. This measures the same for `ovsw_jax.deploy` (export,
format, infer), for every model (random weights,
`benchmarks.lib.deploy_files.random_variables`: sizes do not depend on the
values, nor does XLA's run time).

Sizes: real files written to a temporary folder, per model: the float32
model, one uncompressed ``.npz`` of its params and batch_stats (``np.savez``
of the flattened leaves); and the packed files (`deploy.export_model` +
`deploy.save`) with the float layers in float32 and in float16, and with
BatchNorm folded (float32). The ratio is float32 file / packed file.

Latency: batch 1, one image at the model's input shape, of the packed
model (the float32 file, loaded back with `deploy.load`;
`deploy.make_predict_fn`) against the float32 eval forward of the same
network on the same weights (``jax.jit(model.apply(v, x, train=False))``:
float convs of +-1 values, binarizing the latent weights at every call as
the eval forward does) -> ``speedup``. Two more arms: the BatchNorm-folded
packed file (``speedup_folded``), and the real-valued network of the same
shapes (binary convs replaced by plain float convs of the latent weights,
`RealConv`: the paper's 32/32 backbone) -> ``speedup_vs_real``. The packed
arms run the native XNOR kernel where it is built (`ovsw_jax.deploy.native`;
``backend`` and ``isa`` say what ran), and ``packed_jax`` runs the same file
with the pure-JAX kernel (``speedup_jax_vs_real``, ``native_over_jax``);
``packed_equals_packed_jax`` checks that their logits are identical. Then
throughput: images/s at batch 8 of the real-valued network and both packed
backends. XLA fixes its
threading when its CPU backend starts, so each mode runs in a subprocess of
this script (`benchmarks.lib.deploy_latency`):

* single: ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` (Eigen's convs and
  matmuls on the calling thread) and the process pinned to one core
  (``sched_setaffinity``, before XLA's backend starts; it also starts fewer
  threads then). XLA has no
  ``intra_op_parallelism_threads`` flag (TensorFlow's option): spelled
  ``--intra_op_parallelism_threads=1`` XLA aborts on it, without ``--`` it is
  ignored. ``cpu_utilization`` (process CPU s / wall s over the timed calls)
  shows the cores used: at most 1.0 here.
* multi: XLA's defaults, every core of the process's affinity (the native
  kernel splits each conv's output rows over as many threads).

Per model the arms are compiled and warmed up, then called in turn,
``--reps`` times each (so load changes hit all alike); a call's time runs to
`jax.block_until_ready` of its logits. speedup = float median / packed
median. The load average is recorded: on a shared machine other processes
take cores from the multi-threaded mode first.

Prints one JSON line; with ``--out`` writes it indented and a PNG of the
sizes and speedups next to it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys
import tempfile
import time
from typing import Any, Callable, Mapping, Optional, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from benchmarks.lib import deploy_files
from benchmarks.lib import deploy_latency
from benchmarks.lib import machine
from benchmarks.lib import results
from ovsw_jax import models
# pylint: enable=g-import-not-at-top,wrong-import-position

TARGET_SPEEDUP = 3.4  # the paper's, on ARM, one thread
# Against the real-valued network of the same shapes, one thread (x86).
TARGET_SPEEDUP_VS_REAL = 4.0
# The paper's table (section 5.5): the BOLT framework on one ARM core.
PAPER = {
    "device": "one ARM core, BOLT framework (NEON)",
    "resnet18_1w1a": {"fp32_mb": 46.76, "packed_mb": 2.81,
                      "size_ratio": 16.64, "fp32_latency_ms": 27.67,
                      "packed_latency_ms": 7.97, "speedup": 3.47},
    "resnet34_1w1a": {"fp32_mb": 87.19, "packed_mb": 4.12,
                      "size_ratio": 21.16, "fp32_latency_ms": 48.82,
                      "packed_latency_ms": 14.28, "speedup": 3.42},
}


def parse_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
  """A comma list, each item checked against ``allowed``."""
  items = [s.strip() for s in text.split(",") if s.strip()]
  if not items:
    raise ValueError(f"--{what} is empty; give some of {list(allowed)}")
  bad = [s for s in items if s not in allowed]
  if bad:
    raise ValueError(f"--{what}: unknown {bad}; valid: {list(allowed)}")
  return items


def run(model_names: Sequence[str], reps: int = 30,
        threads: Sequence[str] = deploy_latency.THREAD_MODES,
        image_size_imagenet: int = 224,
        files_dir: Optional[str] = None,
        log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
  """Sizes, then latency per thread mode.

  Args:
    model_names: names in `ovsw_jax.models`.
    reps: timed calls per arm, model and thread mode.
    threads: thread modes, of `deploy_latency.THREAD_MODES`.
    image_size_imagenet: input size of the ImageNet ResNets.
    files_dir: keep the model files here (default: a temporary folder,
      deleted at the end).
    log: progress messages.

  Returns:
    The JSON-able result.
  """
  model_names = [models.canonical_name(n) for n in model_names]
  for mode in threads:
    deploy_latency.worker_env(mode)  # Raises on an unknown mode first.
  if reps < 1:
    raise ValueError(f"--reps={reps} must be >= 1")
  for name in model_names:
    deploy_files.model_setup(name, image_size_imagenet)
  load_start = os.getloadavg()
  t0 = time.perf_counter()
  result: dict[str, Any] = {
      "models": model_names, "reps": reps, "threads": list(threads),
      "image_size_imagenet": image_size_imagenet,
      "target_speedup": TARGET_SPEEDUP,
      "target_speedup_vs_real": TARGET_SPEEDUP_VS_REAL, "paper": PAPER,
      "sizes": {}, "latency": {},
  }
  with tempfile.TemporaryDirectory(prefix="ovsw_deploy_") as tmp:
    folder = files_dir or tmp
    os.makedirs(folder, exist_ok=True)
    for name in model_names:
      log(f"sizes: {name}")
      result["sizes"][name] = deploy_files.write_files(name, folder,
                                                       image_size_imagenet)
      for entry in result["sizes"][name]["files"].values():
        entry["path"] = os.path.basename(entry["path"])
    for mode in threads:
      log(f"latency: {mode}-threaded worker")
      result["latency"][mode] = deploy_latency.run_latency(
          mode, folder, model_names, reps, image_size_imagenet)
  result["summary"] = summary_table(result)
  info = machine.machine_info()
  info["loadavg_start"] = list(load_start)
  info["loadavg_end"] = list(os.getloadavg())
  info["wall_s"] = time.perf_counter() - t0
  result["machine"] = info
  return result


def summary_table(result: Mapping[str, Any]) -> dict[str, Any]:
  """Per model: MB of each file, size ratios, and speedups per mode."""
  table = {}
  for name in result["models"]:
    files = result["sizes"][name]["files"]
    row = {f"{arm}_mb": f["mb"] for arm, f in files.items()}
    row.update({f"size_ratio_{arm}": f["ratio_fp32_over_this"]
                for arm, f in files.items() if arm != "float32"})
    for mode, lat in result["latency"].items():
      m = lat["models"][name]
      for arm in deploy_latency.LATENCY_ARMS:
        row[f"{mode}_{arm}_ms"] = m[arm]["median_ms"]
      for key in ("speedup", "speedup_folded", "speedup_vs_real",
                  "speedup_folded_vs_real", "speedup_jax_vs_real",
                  "native_over_jax"):
        row[f"{mode}_{key}"] = m[key]
      row[f"{mode}_target_met"] = bool(m["speedup"] >= TARGET_SPEEDUP)
      row[f"{mode}_vs_real_target_met"] = bool(
          m["speedup_vs_real"] >= TARGET_SPEEDUP_VS_REAL)
      tp = lat["throughput"][name]
      for arm in deploy_latency.THROUGHPUT_ARMS:
        row[f"{mode}_batch{tp['batch']}_{arm}_images_per_s"] = (
            tp[arm]["images_per_s"])
      row[f"{mode}_batch{tp['batch']}_speedup_vs_real"] = (
          tp["speedup_vs_real"])
    table[name] = row
  return table


def plot(result: Mapping[str, Any], path: str) -> None:
  """Bar charts: file sizes (MB, log scale) and speedups per mode."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  names = list(result["models"])
  x = np.arange(len(names))
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5.2))
  arms = [("float32", "float32 .npz"), ("packed_fp32", "packed, fp32 float"),
          ("packed_fp16", "packed, fp16 float")]
  width = 0.8 / len(arms)
  for i, (arm, label) in enumerate(arms):
    files = [result["sizes"][n]["files"][arm] for n in names]
    bars = ax1.bar(x + (i - 1) * width, [f["mb"] for f in files], width,
                   label=label)
    if arm != "float32":
      ax1.bar_label(bars, [f"{f['ratio_fp32_over_this']:.1f}x"
                           for f in files], fontsize=7)
  ax1.set_yscale("log")
  ax1.set_ylabel("file size (MB)")
  ax1.set_title("File size (labels: float32 / packed)")
  ax1.set_xticks(x, names, rotation=20, fontsize=8)
  ax1.legend(fontsize=8, loc="upper left")

  series = []
  for mode in result["latency"]:
    series.append((f"{mode}-threaded, vs float32 BNN", "speedup", mode))
    series.append((f"{mode}-threaded, vs real-valued", "speedup_vs_real",
                   mode))
    series.append((f"{mode}-threaded, vs real-valued, JAX kernel",
                   "speedup_jax_vs_real", mode))
  width = 0.8 / max(len(series), 1)
  for i, (label, key, mode) in enumerate(series):
    s = [result["latency"][mode]["models"][n][key] for n in names]
    bars = ax2.bar(x + (i - (len(series) - 1) / 2) * width, s, width,
                   label=label, hatch="//" if "real" in key else None)
    ax2.bar_label(bars, [f"{v:.1f}" for v in s], fontsize=6)
  ax2.axhline(TARGET_SPEEDUP, color="k", ls="--", lw=1,
              label=f"{TARGET_SPEEDUP}x (paper, ARM)")
  ax2.axhline(TARGET_SPEEDUP_VS_REAL, color="r", ls=":", lw=1,
              label=f"target {TARGET_SPEEDUP_VS_REAL}x vs real-valued")
  ax2.axhline(1.0, color="gray", lw=0.8)
  ax2.set_yscale("log")
  ax2.set_ylim(top=ax2.get_ylim()[1] * 3)  # Room for the legend.
  ax2.set_ylabel("other median / packed median")
  ax2.set_title("Batch-1 latency speedup, packed vs float32")
  ax2.set_xticks(x, names, rotation=20, fontsize=8)
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(models.list_models()),
                      help="comma list of model names")
  parser.add_argument("--reps", type=int, default=30,
                      help="timed calls per arm and model")
  parser.add_argument("--threads",
                      default=",".join(deploy_latency.THREAD_MODES),
                      help="comma list of: single, multi")
  parser.add_argument("--image_size_imagenet", type=int, default=224,
                      help="input size of the ImageNet ResNets")
  parser.add_argument("--out", default=None,
                      help="write the JSON here, and a PNG next to it")
  parser.add_argument("--files_dir", default=None,
                      help="keep the written model files in this folder")
  # A thread mode's worker process (see `deploy_latency.run_latency`).
  parser.add_argument("--_latency_worker", default=None,
                      help=argparse.SUPPRESS)
  parser.add_argument("--_folder", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--_pin_cpu", type=int, default=None,
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  model_names = parse_list(args.models, models.list_models(), "models")
  worker = vars(args)  # The hidden options' names start with '_'.
  if worker["_latency_worker"]:
    out = deploy_latency.latency_worker(
        worker["_latency_worker"], worker["_folder"], model_names, args.reps,
        args.image_size_imagenet, worker["_pin_cpu"])
    print(json.dumps(out))
    return out
  result = run(model_names, reps=args.reps,
               threads=parse_list(args.threads, deploy_latency.THREAD_MODES,
                                  "threads"),
               image_size_imagenet=args.image_size_imagenet,
               files_dir=args.files_dir,
               log=lambda s: print(s, file=sys.stderr, flush=True))
  results.write_json(result, args.out)
  if args.out:
    plot(result, str(Path(args.out).with_suffix(".png")))
  return result


if __name__ == "__main__":
  main()
