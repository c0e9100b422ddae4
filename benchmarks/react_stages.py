"""ReActNet's recipe at CPU scale: two stages, distillation, OvSW.

  nice -n 19 python -m benchmarks.react_stages --runs_dir=/tmp/react_stages \
      --epochs=8 --seeds=0,1 --width=16 \
      --schemes=one_stage,two_stage,two_stage_kd \
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
* ``two_stage_kd/<method>``: the same two stages, each distilling from a
  real-valued teacher (ReActNet's loss, weight 1: the teacher's soft labels
  alone), as ReActNet distils from a float ResNet-34.

for ``<method>`` in 'adam' and 'ovsw+adam'. The teacher is a real-valued
CIFAR ResNet-18 (configs/cifar10_float_resnet18.py, its width
``--teacher_width``) trained once, for ``--teacher_epochs``, in
``<runs_dir>/teacher`` before the first distilled arm (``--teacher_only``
trains just it). Runs resume: rerunning skips finished ones. The JSON holds
each run's per-epoch eval top-1 and the final top-1 (mean and std over seeds
per arm), the teacher's, and the claims as differences of means
(``effects``: two-stage minus one-stage, distilled minus not, OvSW minus
plain Adam); the PNG next to it plots the curves. Seeds can run side by
side, one process each (``--seeds=0 --out=s0.json`` and ``--seeds=1
--out=s1.json``), then ``--merge=s0.json,s1.json --out=...`` combines them;
merged files must share the budget (`BUDGET_ARGS`) and, where they distil,
the teacher (`TEACHER_ARGS`), so arms run at different times can join.
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
from configs import cifar10_float_resnet18
from configs import cifar10_react_resnet18
from ovsw_jax.training import loop
from ovsw_jax.training import metrics_io
# pylint: enable=g-import-not-at-top,wrong-import-position

METHODS = ("adam", "ovsw+adam")
SCHEMES = ("one_stage", "two_stage", "two_stage_kd")
DISTILLED = "two_stage_kd"
# The settings every merged run must share, and those of the teacher.
BUDGET_ARGS = ("dataset", "epochs", "width", "batch_size")
TEACHER_ARGS = ("teacher_width", "teacher_epochs", "teacher_seed")


def _sized(config, seed: int, epochs: int, args: argparse.Namespace):
  """``config`` with this machine's dataset, batch, length and logging."""
  config.update(seed=seed, num_epochs=epochs,
                dataset=args.dataset, batch_size=args.batch_size,
                eval_every_epochs=1, checkpoint_every_steps=-1,
                keep_checkpoints=1, log_every_steps=10, progress_bar=False,
                flip_stats_every_steps=0, async_checkpointing=False)
  return config


def stage_config(stage: str, method: str, seed: int, epochs: int,
                 args: argparse.Namespace, init_from: Optional[str] = None,
                 teacher_workdir: Optional[str] = None):
  """configs/cifar10_react_resnet18.py's ``stage``, sized for this machine."""
  config = _sized(cifar10_react_resnet18.get_config(stage), seed, epochs,
                  args)
  config.method = method
  config.model_options.width = args.width
  if init_from is not None:
    config.init_from = init_from
  if teacher_workdir is not None:
    config.teacher_workdir = teacher_workdir
  return config


def teacher_config(args: argparse.Namespace):
  """configs/cifar10_float_resnet18.py at ``--teacher_width``, trained for
  ``--teacher_epochs`` with the students' dataset and batch size."""
  config = _sized(cifar10_float_resnet18.get_config(), args.teacher_seed,
                  args.teacher_epochs, args)
  config.model_options.width = args.teacher_width
  return config


def teacher_dir(args: argparse.Namespace) -> Path:
  return Path(args.runs_dir) / "teacher"


TEACHER_RESULT = "teacher.json"


def run_teacher(args: argparse.Namespace) -> dict[str, Any]:
  """Trains the real-valued teacher once; its curve and final top-1.

  The result is kept in ``<runs_dir>/teacher/teacher.json``; later calls
  (say, one process per seed, side by side) read it instead of touching
  the workdir, after checking it was trained with these `TEACHER_ARGS`.

  Raises:
    ValueError: the runs_dir's teacher was trained with other settings.
  """
  record = teacher_dir(args) / TEACHER_RESULT
  want = {"width": args.teacher_width, "epochs": args.teacher_epochs,
          "seed": args.teacher_seed}
  if record.exists():
    result = json.loads(record.read_text())
    got = {k: result.get(k) for k in want}
    if got != want:
      raise ValueError(f"{record} holds a teacher trained with {got}, not "
                       f"{want}; use another --runs_dir")
    return result
  start = time.time()
  final = loop.train_and_evaluate(teacher_config(args), str(teacher_dir(args)))
  result = {"model": "resnet18_cifar", **want,
            "final_eval_top1": final["eval_top1"],
            "curve": _curve(teacher_dir(args), 0.0),
            "wall_s": time.time() - start}
  record.write_text(json.dumps(result, indent=2) + "\n")
  return result


def one_point_per_epoch(curve: list[dict[str, float]]
                        ) -> list[dict[str, float]]:
  """The curve with one point per epoch, the last recorded (a finished
  run's rerun used to evaluate its checkpoint again and append the same
  record), in epoch order."""
  return sorted({p["epoch"]: p for p in curve}.values(),
                key=lambda p: p["epoch"])


def _curve(workdir: Path, epoch_offset: float) -> list[dict[str, float]]:
  return one_point_per_epoch(
      [{"epoch": r["epoch"] + epoch_offset, "eval_top1": r["eval_top1"]}
       for r in metrics_io.read_metrics(str(workdir)) if "eval_top1" in r])


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
    teacher = str(teacher_dir(args)) if scheme == DISTILLED else None
    loop.train_and_evaluate(
        stage_config("stage1", method, seed, half, args,
                     teacher_workdir=teacher), str(root / "stage1"))
    config = stage_config("stage2", method, seed, args.epochs - half, args,
                          init_from=str(root / "stage1"),
                          teacher_workdir=teacher)
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
  """The papers' claims as differences of mean final top-1.

  ``two_stage_minus_one_stage/<method>`` (ReActNet: two-stage is better),
  ``distilled_minus_labels/<method>`` (ReActNet: distilling from a float
  teacher is better than the labels' cross-entropy) and
  ``ovsw_minus_adam/<scheme>`` (OvSW: better with it), each with the seeds'
  values and whether every seed agrees in sign; only claims whose two arms
  both ran.
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
    diff(f"distilled_minus_labels/{method}", f"{DISTILLED}/{method}",
         f"two_stage/{method}")
  for scheme in SCHEMES:
    diff(f"ovsw_minus_adam/{scheme}", f"{scheme}/ovsw+adam", f"{scheme}/adam")
  return out


def _same(paths: list[str], settings: list[dict[str, Any]], what: str
          ) -> None:
  for path, s in zip(paths[1:], settings[1:]):
    if s != settings[0]:
      raise ValueError(f"{path} was run with {what} {s}, {paths[0]} with "
                       f"{settings[0]}; merge only runs of one setting")


def merge(paths: list[str]) -> dict[str, Any]:
  """One result from several invocations' JSON files (say, one per seed, run
  side by side, or arms run at different times; earlier merges too).

  Every file must have the same `BUDGET_ARGS`; the files with distilled arms
  the same `TEACHER_ARGS` and teacher result. Which seeds, methods and
  schemes each ran may differ, but no arm and seed may come twice.

  Raises:
    ValueError: naming the files and settings that differ, or a run found
      in two files.
  """
  parts = [json.loads(Path(p).read_text()) for p in paths]
  _same(paths, [{k: p["args"].get(k) for k in BUDGET_ARGS} for p in parts],
        "the budget")
  distilled = [(path, p) for path, p in zip(paths, parts)
               if any(r["scheme"] == DISTILLED for r in p["runs"])]
  _same([path for path, _ in distilled],
        [{**{k: p["args"].get(k) for k in TEACHER_ARGS},
          "final_eval_top1": p["teacher"]["final_eval_top1"]}
         for _, p in distilled], "the teacher")
  runs = sorted(({**r, "curve": one_point_per_epoch(r["curve"])}
                 for part in parts for r in part["runs"]),
                key=lambda r: (r["seed"], r["scheme"], r["method"]))
  keys = [(r["scheme"], r["method"], r["seed"]) for r in runs]
  twice = sorted({k for k in keys if keys.count(k) > 1})
  if twice:
    raise ValueError(f"runs {twice} come in more than one of {paths}")
  # A file may itself be a merge (its commands and machines, listed).
  result = {"commands": [c for p in parts
                         for c in p.get("commands", [p.get("command")])],
            "args": {k: parts[0]["args"].get(k) for k in BUDGET_ARGS},
            "seeds": sorted({r["seed"] for r in runs}),
            "machines": [m for p in parts
                         for m in p.get("machines", [p.get("machine")])],
            "runs": runs}
  if distilled:
    result["args"].update(
        {k: distilled[0][1]["args"][k] for k in TEACHER_ARGS})
    result["teacher"] = distilled[0][1]["teacher"]
  return result


def plot(runs: list[dict[str, Any]], path: Path,
         teacher: Optional[dict[str, Any]] = None) -> None:
  """Eval top-1 per epoch, one line per run (colour: arm); the teacher's
  final top-1 in the title."""
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
  if teacher is not None:
    ax.set_title(f"teacher: float ResNet-18 width {teacher['width']}, "
                 f"{teacher['epochs']} epochs, top-1 "
                 f"{teacher['final_eval_top1']:.3f}", fontsize=9)
  ax.set_xlabel("epoch (both stages)")
  ax.set_ylabel("eval top-1")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs_dir", required=True)
  parser.add_argument("--out", default=None, help="JSON path (PNG beside)")
  parser.add_argument("--epochs", type=int, default=8)
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--width", type=int, default=16)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--dataset", default="digits")
  parser.add_argument("--methods", default=",".join(METHODS))
  parser.add_argument("--schemes", default="one_stage,two_stage",
                      help=f"comma-separated, of {list(SCHEMES)}")
  parser.add_argument("--teacher_width", type=int, default=16,
                      help="the real-valued teacher's first-stage width")
  parser.add_argument("--teacher_epochs", type=int, default=3)
  parser.add_argument("--teacher_seed", type=int, default=0)
  parser.add_argument("--teacher_only", action="store_true",
                      help="train (or find) the teacher and stop")
  parser.add_argument("--merge", default=None,
                      help="comma-separated JSON files of earlier runs "
                      "(e.g. one per seed) to combine into --out; trains "
                      "nothing")
  return parser


def _train(args: argparse.Namespace) -> dict[str, Any]:
  """Trains the teacher where needed, then every arm; the result."""
  schemes = args.schemes.split(",")
  result = {"command": " ".join(sys.argv), "args": vars(args),
            "machine": machine.machine_info(), "runs": []}
  if DISTILLED in schemes or args.teacher_only:
    result["teacher"] = run_teacher(args)
    print(f"teacher: top-1 {result['teacher']['final_eval_top1']:.4f} "
          f"({result['teacher']['wall_s']:.0f} s)", flush=True)
  if args.teacher_only:
    return result
  for seed in (int(s) for s in args.seeds.split(",")):
    for scheme in schemes:
      for method in args.methods.split(","):
        run = run_arm(scheme, method, seed, args)
        result["runs"].append(run)
        print(f"{scheme}/{method} seed {seed}: top-1 "
              f"{run['final_eval_top1']:.4f} ({run['wall_s']:.0f} s)",
              flush=True)
  return result


def main(argv: Optional[list[str]] = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  unknown = sorted(set(args.schemes.split(",")) - set(SCHEMES))
  if unknown:
    parser.error(f"--schemes: unknown {unknown}; expected of {list(SCHEMES)}")
  if args.merge:
    result = merge(args.merge.split(","))
  else:
    if args.epochs < 2:
      parser.error(f"--epochs={args.epochs}: two stages need at least 2")
    result = _train(args)
  runs = result["runs"]
  result["arms"] = aggregate(runs)
  result["effects"] = effects(result["arms"])
  results.write_json(results.to_json(result), args.out)
  if args.out and runs:
    plot(runs, Path(args.out).with_suffix(".png"), result.get("teacher"))
  for arm, v in result["arms"].items():
    print(f"{arm}: {v['mean']:.4f} +- {v['std']:.4f} (n={v['n']})")
  for name, v in result["effects"].items():
    print(f"{name}: {v['mean']:+.4f} (per seed "
          f"{', '.join(f'{d:+.4f}' for d in v['per_seed'])})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
