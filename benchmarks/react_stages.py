"""Two-stage vs one-stage ReActNet training, with and without OvSW, CPU scale.

  nice -n 19 python -m benchmarks.react_stages --runs_dir=/tmp/react_stages \
      --epochs=8 --seeds=0,1 --width=16 \
      --out=benchmarks/results/react_stages.json

Every run is the trainer itself (`training.loop.train_and_evaluate`) on
configs/cifar10_react_resnet18.py's stages, changed only to fit this
machine: the ``--dataset`` (default 'digits', 16x16x1), ``--width`` (the
first stage's width; ReActNet's is 64) and ``--batch_size``. Arms:

* ``one_stage/<method>``: binary weights and activations from scratch for
  ``--epochs`` epochs (stage 1's settings, weight decay 1e-5, but binary
  weights);
* ``two_stage/<method>``: stage 1 (float weights) for half the epochs, then
  stage 2 from its checkpoint (``init_from``) for the other half, each with
  its own linear decay from 5e-4, as ReActNet;

for ``<method>`` in 'adam' and 'ovsw+adam'. No teacher: the reference's float
ResNet-34 is not among our models, and distilling from a run of ours would
add a third training per seed. Runs resume: rerunning skips finished ones.
The JSON holds each run's per-epoch eval top-1 and the final top-1 (mean and
std over seeds per arm), and the paper's two claims as differences of means
(``effects``: two-stage minus one-stage, OvSW minus plain Adam); the PNG next
to it plots the curves. Seeds can run side by side, one process each
(``--seeds=0 --out=s0.json`` and ``--seeds=1 --out=s1.json``), then
``--merge=s0.json,s1.json --out=...`` combines them.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys
import time
from typing import Any, Optional

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # pylint: disable=g-import-not-at-top

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks.lib import machine
from benchmarks.lib import results
from configs import cifar10_react_resnet18
from ovsw_jax.training import loop
from ovsw_jax.training import metrics_io
# pylint: enable=g-import-not-at-top,wrong-import-position

METHODS = ("adam", "ovsw+adam")
SCHEMES = ("one_stage", "two_stage")


def stage_config(stage: str, method: str, seed: int, epochs: int,
                 args: argparse.Namespace, init_from: Optional[str] = None):
  """configs/cifar10_react_resnet18.py's ``stage``, sized for this machine."""
  config = cifar10_react_resnet18.get_config(stage)
  config.update(method=method, seed=seed, num_epochs=epochs,
                dataset=args.dataset, batch_size=args.batch_size,
                eval_every_epochs=1, checkpoint_every_steps=-1,
                keep_checkpoints=1, log_every_steps=10, progress_bar=False,
                flip_stats_every_steps=0, async_checkpointing=False)
  config.model_options.width = args.width
  if init_from is not None:
    config.init_from = init_from
  return config


def _curve(workdir: Path, epoch_offset: float) -> list[dict[str, float]]:
  return [{"epoch": r["epoch"] + epoch_offset, "eval_top1": r["eval_top1"]}
          for r in metrics_io.read_metrics(str(workdir)) if "eval_top1" in r]


def run_arm(scheme: str, method: str, seed: int,
            args: argparse.Namespace) -> dict[str, Any]:
  """Trains one arm and seed (resuming); returns its curve and final top-1."""
  root = Path(args.runs_dir) / f"{scheme}_{method.replace('+', '_')}_s{seed}"
  start = time.time()
  if scheme == "one_stage":
    config = stage_config("stage1", method, seed, args.epochs, args)
    del config.model_options["binarize_weights"]  # Binary from the start.
    final = loop.train_and_evaluate(config, str(root / "stage2"))
    curve = _curve(root / "stage2", 0.0)
  else:
    half = args.epochs // 2
    loop.train_and_evaluate(stage_config("stage1", method, seed, half, args),
                            str(root / "stage1"))
    config = stage_config("stage2", method, seed, args.epochs - half, args,
                          init_from=str(root / "stage1"))
    final = loop.train_and_evaluate(config, str(root / "stage2"))
    curve = _curve(root / "stage1", 0.0) + _curve(root / "stage2", half)
  return {"scheme": scheme, "method": method, "seed": seed,
          "final_eval_top1": final["eval_top1"], "curve": curve,
          "wall_s": time.time() - start}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
  """Mean and std over seeds of each arm's final top-1."""
  arms = {}
  for run in runs:
    arms.setdefault(f"{run['scheme']}/{run['method']}", []).append(
        run["final_eval_top1"])
  return {arm: {"mean": float(np.mean(v)), "std": float(np.std(v)),
                "n": len(v), "values": v} for arm, v in arms.items()}


def effects(arms: dict[str, Any]) -> dict[str, Any]:
  """The paper's two claims as differences of mean final top-1.

  ``two_stage_minus_one_stage/<method>`` (ReActNet: two-stage is better)
  and ``ovsw_minus_adam/<scheme>`` (OvSW: better with it), each with the
  seeds' values and whether every seed agrees in sign.
  """
  out = {}

  def diff(name, a, b):
    if a in arms and b in arms:
      per_seed = [x - y for x, y in zip(arms[a]["values"], arms[b]["values"])]
      out[name] = {"mean": arms[a]["mean"] - arms[b]["mean"],
                   "per_seed": per_seed,
                   "same_sign_every_seed": bool(
                       all(d > 0 for d in per_seed)
                       or all(d < 0 for d in per_seed))}

  for method in METHODS:
    diff(f"two_stage_minus_one_stage/{method}", f"two_stage/{method}",
         f"one_stage/{method}")
  for scheme in SCHEMES:
    diff(f"ovsw_minus_adam/{scheme}", f"{scheme}/ovsw+adam", f"{scheme}/adam")
  return out


def merge(paths: list[str]) -> dict[str, Any]:
  """One result from several invocations' JSON files (say, one per seed, run
  side by side); their arguments must agree but for ``--seeds``."""
  parts = [json.loads(Path(p).read_text()) for p in paths]
  args = [{k: v for k, v in part["args"].items()
           if k not in ("seeds", "out", "merge")} for part in parts]
  for path, a in zip(paths[1:], args[1:]):
    if a != args[0]:
      raise ValueError(f"{path} was run with {a}, {paths[0]} with {args[0]}; "
                       "merge only runs of one setting")
  runs = sorted((r for part in parts for r in part["runs"]),
                key=lambda r: (r["seed"], r["scheme"], r["method"]))
  return {"commands": [part["command"] for part in parts],
          "args": args[0], "seeds": sorted({r["seed"] for r in runs}),
          "machines": [part["machine"] for part in parts], "runs": runs}


def plot(runs: list[dict[str, Any]], path: Path) -> None:
  """Eval top-1 per epoch, one line per run (colour: arm)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  colours = {}
  for run in runs:
    arm = f"{run['scheme']}/{run['method']}"
    colour = colours.setdefault(arm, f"C{len(colours)}")
    xs = [p["epoch"] for p in run["curve"]]
    ys = [p["eval_top1"] for p in run["curve"]]
    ax.plot(xs, ys, color=colour, alpha=0.8,
            label=arm if run["seed"] == runs[0]["seed"] else None)
  ax.set_xlabel("epoch (both stages)")
  ax.set_ylabel("eval top-1")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs_dir", required=True)
  parser.add_argument("--out", default=None, help="JSON path (PNG beside)")
  parser.add_argument("--epochs", type=int, default=8)
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--width", type=int, default=16)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--dataset", default="digits")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--merge", default=None,
                      help="comma-separated JSON files of earlier runs "
                      "(e.g. one per seed) to combine into --out; trains "
                      "nothing")
  args = parser.parse_args(argv)
  if args.merge:
    result = merge(args.merge.split(","))
    runs = result["runs"]
  else:
    if args.epochs < 2:
      parser.error(f"--epochs={args.epochs}: two stages need at least 2")
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
      for scheme in SCHEMES:
        for method in args.methods.split(","):
          runs.append(run_arm(scheme, method, seed, args))
          print(f"{scheme}/{method} seed {seed}: top-1 "
                f"{runs[-1]['final_eval_top1']:.4f} "
                f"({runs[-1]['wall_s']:.0f} s)", flush=True)
    result = {"command": " ".join(sys.argv), "args": vars(args),
              "machine": machine.machine_info(), "runs": runs}
  result["arms"] = aggregate(runs)
  result["effects"] = effects(result["arms"])
  results.write_json(results.to_json(result), args.out)
  if args.out:
    plot(runs, Path(args.out).with_suffix(".png"))
  for arm, v in result["arms"].items():
    print(f"{arm}: {v['mean']:.4f} +- {v['std']:.4f} (n={v['n']})")
  for name, v in result["effects"].items():
    print(f"{name}: {v['mean']:+.4f} (per seed "
          f"{', '.join(f'{d:+.4f}' for d in v['per_seed'])})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
