"""Convergence study: vanilla, AGS, SAD and OvSW (and peers) on CIFAR-10.
Any ``config.method`` is an arm (e.g. ``rbnn,rbnn+ovsw``); ``ovsw_pairs``
in the result compares each X with X+ovsw.

  python -m benchmarks.convergence --runs_dir=/tmp/ovsw_convergence \
      --arms=vanilla,ags,sad,ovsw --seeds=0,1 --epochs=4 --batch_size=128 \
      --out=benchmarks/results/convergence.json

Every arm trains cResNet20_1w1a on the real CIFAR-10 (``--data_dir``, default
the data module's search path) with the recipe of configs/cifar10_resnet20.py
(SGD momentum 0.9, lr 0.1, wd 5e-4, OvSW delta 0.04 / lambda 9e-4) at one
fixed short budget: ``--epochs`` epochs, no warmup, a per-step cosine
schedule. Only ``method`` (the arm) and ``seed`` differ between runs; a seed
fixes the init and the data order, so arms with the same seed see the same
batches from the same weights.

The loop is the trainer's own jitted step (`training.steps.jit_train_step`)
with a `diagnostics.FlipRecord` updated after every step, so flip counts are
exact.
Per epoch it records test top-1/loss on all 10,000 test images, the train
loss, and the fraction of binary weights never flipped so far, per layer; at
the end, flip counts against |w| (the paper's figure 1) and the histogram of
flip counts.

Runs are resumable: each one checkpoints (params, optimizer state, flip
record) at every epoch end under ``--runs_dir/<arm>_s<seed>/`` and writes
``run.json`` when done; rerunning the command skips finished runs and resumes
the others. ``--aggregate_only`` just gathers the finished runs into ``--out``
(JSON) and the PNG next to it. Seeds are the outer loop, so the first seed of
every arm finishes before the second starts.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import platform
import sys
import time
from typing import Any, Optional

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks.lib import results
from configs import cifar10_resnet20
from ovsw_jax import data
from ovsw_jax import diagnostics
from ovsw_jax.training import checkpointing
from ovsw_jax.training import config as config_lib
from ovsw_jax.training import experiment as experiment_lib
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import state as state_lib
from ovsw_jax.training import steps as steps_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

# Flip counts above this share the histogram's last bin.
MAX_FLIP_BIN = 64
FLIP_VS_W_BINS = 20
# The plot leaves out |w| bins holding fewer weights than this.
MIN_BIN_WEIGHTS = 100


def study_config(arm: str, seed: int, epochs: int, batch_size: int,
                 learning_rate: float, data_dir: Optional[str],
                 dataset_options: Optional[dict[str, Any]] = None
                 ) -> ml_collections.ConfigDict:
  """The CIFAR-10 ResNet-20 recipe at a short budget, for one arm and seed."""
  config = cifar10_resnet20.get_config()
  config.method = arm
  config.seed = seed
  config.num_epochs = epochs
  config.warmup_epochs = 0
  config.lr_schedule_granularity = "step"
  config.batch_size = batch_size
  config.eval_batch_size = 500
  config.learning_rate = learning_rate
  config.data_dir = data_dir
  if dataset_options:
    config.dataset_options = ml_collections.ConfigDict(dataset_options)
  config.progress_bar = False
  return config


def flip_histogram(record: diagnostics.FlipRecord) -> dict[str, list[int]]:
  """Per layer and overall: how many weights flipped 0, 1, ..., >=64 times."""
  out = {}
  counts = {k: np.asarray(c).ravel() for k, c in record.flip_count.items()}
  for k, c in counts.items():
    out[k] = np.bincount(np.minimum(c, MAX_FLIP_BIN),
                         minlength=MAX_FLIP_BIN + 1).tolist()
  out[diagnostics.OVERALL] = np.sum([out[k] for k in counts], axis=0).tolist()
  return out


def _check_settings(run_dir: Path, settings: dict[str, Any]) -> None:
  """Raises if run_dir's finished run or recorded settings differ."""
  done_file = run_dir / "run.json"
  for path in (done_file, run_dir / "config.json"):
    if path.exists():
      stored = json.loads(path.read_text())
      stored = stored.get("config", stored) if path == done_file else stored
      diff = sorted(k for k in set(stored) | set(settings)
                    if stored.get(k) != settings.get(k))
      if diff:
        raise ValueError(
            f"{run_dir} holds a run with other settings ({', '.join(diff)}: "
            f"{[stored.get(k) for k in diff]} there, "
            f"{[settings.get(k) for k in diff]} now); use another --runs_dir "
            "or delete that run to start it again")


def _jitted(experiment, mesh, config) -> dict[str, Any]:
  """The trainer's jitted train and eval steps, and the flip bookkeeping."""
  return {
      "train": steps_lib.jit_train_step(experiment.learning_rate_fn, mesh,
                                        config.cpu_fast_path),
      "eval": steps_lib.jit_eval_step(mesh, config.cpu_fast_path),
      "update_record": jax.jit(diagnostics.update_flip_record),
      "never": jax.jit(diagnostics.never_flipped_fraction),
      "diag": jax.jit(steps_lib.optimizer_diagnostics),
  }


def _items(state, record) -> dict[str, Any]:
  """What a checkpoint holds: the train state's items and the flip record."""
  return {**state_lib.checkpoint_items(state), "flips": record._asdict()}


def _resume(manager, state, record, run_dir: Path, log):
  """(state, flip record, history) from the latest checkpoint, if any."""
  restored = checkpointing.restore(
      manager, checkpointing.abstract_like(_items(state, record)))
  if restored is None:
    return state, record, []
  items, meta, _ = restored
  record = diagnostics.FlipRecord(**items.pop("flips"))
  log(f"  resuming {run_dir.name} at epoch {len(meta['history'])}")
  return state.replace(**items), record, meta["history"]


def _epoch_entry(config, fns, state, record, losses, step: int,
                 steps_per_epoch: int, train_seconds: float, mesh,
                 run_dir: Path) -> dict[str, Any]:
  """An epoch's record: test metrics, train loss, flips and optimizer
  diagnostics, speed."""
  losses = np.asarray(jax.device_get(losses), np.float64)
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError(
        f"{run_dir.name}: non-finite loss in the epoch ending at step "
        f"{step}; lower --learning_rate")
  result = steps_lib.evaluate(
      fns["eval"], state,
      data.create_eval_iterator(
          config.dataset, config.data_dir, config.eval_batch_size,
          **config_lib.as_dict(config.dataset_options)),
      mesh)
  return {
      "epoch": step / steps_per_epoch, "step": step,
      "train_loss": float(losses.mean()),
      **result,
      "never_flipped": results.to_json(jax.device_get(fns["never"](record))),
      "optimizer_diagnostics": results.to_json(
          jax.device_get(fns["diag"](state.opt_state))),
      "train_seconds": train_seconds,
      "images_per_sec": len(losses) * config.batch_size / train_seconds,
  }


def _train(config, experiment, mesh, manager, run_dir: Path, log):
  """Trains (from the latest checkpoint, if any) to the last step,
  checkpointing every epoch; returns (state, flip record, history)."""
  state = state_lib.create_train_state(
      experiment.model, experiment.tx, experiment.info.image_shape,
      config.seed, mesh, experiment.model_state_fn,
      cpu_fast_path=config.cpu_fast_path)
  record = diagnostics.init_flip_record(state.params)
  state, record, history = _resume(manager, state, record, run_dir, log)
  fns = _jitted(experiment, mesh, config)
  spe, total = experiment.steps_per_epoch, experiment.total_steps
  first_step = int(jax.device_get(state.step))
  train_iter = data.create_train_iterator(
      config.dataset, config.data_dir, config.batch_size, config.seed,
      start_step=first_step, prefetch=2,
      **config_lib.as_dict(config.dataset_options))
  t0, losses = time.time(), []
  try:
    for step in range(first_step + 1, total + 1):
      batch = mesh_lib.shard_batch(next(train_iter), mesh)
      state, metrics = fns["train"](state, batch)
      record = fns["update_record"](record, state.params)
      losses.append(metrics["loss"])
      if step % spe and step != total:
        continue
      entry = _epoch_entry(config, fns, state, record, losses, step, spe,
                           time.time() - t0, mesh, run_dir)
      history.append(entry)
      checkpointing.save(manager, step, _items(state, record),
                         meta={"history": history})
      log(f"  {run_dir.name} epoch {entry['epoch']:.2f}: test top-1 "
          f"{entry['eval_top1']:.4f}, train loss {entry['train_loss']:.4f}, "
          f"never flipped {entry['never_flipped'][diagnostics.OVERALL]:.4f}, "
          f"{entry['images_per_sec']:.0f} img/s")
      t0, losses = time.time(), []
  finally:
    getattr(train_iter, "close", lambda: None)()
  return state, record, history


def run_one(config: ml_collections.ConfigDict, run_dir: Path,
            log=print) -> dict[str, Any]:
  """Trains one arm/seed (resuming from run_dir) and returns its record."""
  done_file = run_dir / "run.json"
  settings = results.to_json(config.to_dict())
  _check_settings(run_dir, settings)
  if done_file.exists():
    return json.loads(done_file.read_text())
  (run_dir / "config.json").write_text(json.dumps(settings))
  mesh = mesh_lib.create_mesh()
  experiment = experiment_lib.create_experiment(config)
  manager = checkpointing.create_manager(run_dir / "checkpoints", keep=1,
                                         best_metric=None, async_save=False)
  try:
    state, record, history = _train(config, experiment, mesh, manager,
                                    run_dir, log)
  finally:
    manager.wait_until_finished()
    manager.close()
  params = jax.device_get(state.params)
  record = jax.device_get(record)
  vs_w = diagnostics.flip_count_vs_magnitude(record, params,
                                             num_bins=FLIP_VS_W_BINS)
  out = {
      "arm": config.method, "seed": config.seed,
      "config": results.to_json(config.to_dict()),
      "history": history,
      "final": history[-1],
      "flip_count_vs_abs_w": results.to_json(vs_w),
      "flip_count_histogram": flip_histogram(record),
      "mean_flip_count": {
          k: float(np.mean(c)) for k, c in record.flip_count.items()},
  }
  done_file.write_text(json.dumps(out))
  return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
  """Per arm: final test top-1 (mean, std, per seed), never-flipped fraction
  and mean flip count over all binary weights."""
  summary = {}
  for arm in dict.fromkeys(r["arm"] for r in runs):
    mine = [r for r in runs if r["arm"] == arm]
    top1 = np.array([r["final"]["eval_top1"] for r in mine])
    best = np.array([max(h["eval_top1"] for h in r["history"]) for r in mine])
    never = np.array([r["final"]["never_flipped"][diagnostics.OVERALL]
                      for r in mine])
    hist = np.sum([r["flip_count_histogram"][diagnostics.OVERALL]
                   for r in mine], axis=0)
    counts = np.arange(len(hist))
    summary[arm] = {
        "seeds": [r["seed"] for r in mine],
        "final_top1": top1.tolist(),
        "final_top1_mean": float(top1.mean()),
        "final_top1_std": float(top1.std(ddof=1)) if len(top1) > 1 else None,
        "best_top1_mean": float(best.mean()),
        "never_flipped_mean": float(never.mean()),
        # Over seeds; counts >= MAX_FLIP_BIN are counted as MAX_FLIP_BIN.
        "mean_flip_count_lower_bound": float((hist * counts).sum() / hist.sum()),
        "images_per_sec_mean": float(np.mean(
            [h["images_per_sec"] for r in mine for h in r["history"]])),
    }
  return summary


def ovsw_pairs(summary: dict[str, Any]) -> dict[str, Any]:
  """For each arm X run with X+ovsw too ('vanilla' with 'ovsw'): the
  difference (X+ovsw minus X) of final top-1 and never-flipped, in points."""
  pairs = {}
  for arm in summary:
    with_ovsw = "ovsw" if arm == "vanilla" else f"{arm}+ovsw"
    if with_ovsw in summary and "ovsw" not in arm.split("+"):
      a, b = summary[arm], summary[with_ovsw]
      pairs[arm] = {"with_ovsw": with_ovsw, **{
          f"{k}_diff": 100 * (b[f"{k}_mean"] - a[f"{k}_mean"])
          for k in ("final_top1", "never_flipped")}}
  return pairs


def plot(runs: list[dict[str, Any]], path: Path) -> None:
  """Test top-1 per epoch, never-flipped per layer, flips against |w|."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  arms = list(dict.fromkeys(r["arm"] for r in runs))
  colors = {a: plt.cm.tab10(i) for i, a in enumerate(arms)}
  fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
  for r in runs:
    c = colors[r["arm"]]
    epochs = [h["epoch"] for h in r["history"]]
    label = f"{r['arm']} (seed {r['seed']})"
    axes[0].plot(epochs, [100 * h["eval_top1"] for h in r["history"]],
                 marker="o", color=c, alpha=0.85, label=label,
                 linestyle="-" if r["seed"] == runs[0]["seed"] else "--")
    layers = [k for k in r["final"]["never_flipped"]
              if k != diagnostics.OVERALL]
    axes[1].plot(range(len(layers)),
                 [100 * r["final"]["never_flipped"][k] for k in layers],
                 ".-", color=c, alpha=0.85)
    stats = r["flip_count_vs_abs_w"][diagnostics.OVERALL]
    edges = np.asarray(stats["bin_edges"])
    centers = 0.5 * (edges[1:] + edges[:-1])
    mean = np.array([np.nan if v is None else v
                     for v in stats["mean_flip_count"]])
    # Bins of a few weights (the tail of large |w|) are noise: leave them out.
    mean[np.asarray(stats["count"]) < MIN_BIN_WEIGHTS] = np.nan
    axes[2].plot(centers, mean, ".-", color=c, alpha=0.85)
  dataset = runs[0]["config"].get("dataset", "cifar10")
  axes[0].set(xlabel="epoch", ylabel=f"{dataset} test top-1 (%)",
              title="Test top-1 (cResNet20 1W1A)")
  axes[0].legend(fontsize=7)
  axes[1].set(xlabel="binary layer (input to output)",
              ylabel="never flipped (%)",
              title="Binary weights that never flipped, at the end")
  axes[2].set(xlabel="|w| at the end (bins of >= 100 weights)",
              ylabel="mean flips per weight",
              title="Flip count against latent-weight magnitude",
              yscale="log")
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs_dir", default="/tmp/ovsw_convergence",
                      help="checkpoints and finished runs (resumable)")
  parser.add_argument("--arms", default="vanilla,ags,sad,ovsw",
                      help="comma-separated methods (config.method values)")
  parser.add_argument("--seeds", default="0,1")
  parser.add_argument("--epochs", type=int, default=4)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--learning_rate", type=float, default=0.1)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--dataset_options", default=None,
                      help="JSON dict, e.g. for tests on 'synthetic'")
  parser.add_argument("--dataset", default="cifar10")
  parser.add_argument("--aggregate_only", action="store_true",
                      help="only gather finished runs into --out")
  parser.add_argument("--out", default=None,
                      help="results JSON; the PNG goes next to it")
  args = parser.parse_args(argv)

  checkpointing.quiet_orbax_logs()
  arms = [a for a in args.arms.split(",") if a]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  options = json.loads(args.dataset_options) if args.dataset_options else None
  runs_dir = Path(args.runs_dir)
  runs, missing = [], []
  start = time.time()
  for seed in seeds:
    for arm in arms:
      run_dir = runs_dir / f"{arm.replace('+', '-')}_s{seed}"
      if args.aggregate_only:
        if (run_dir / "run.json").exists():
          runs.append(json.loads((run_dir / "run.json").read_text()))
        else:
          missing.append(run_dir.name)
        continue
      config = study_config(arm, seed, args.epochs, args.batch_size,
                            args.learning_rate, args.data_dir, options)
      config.dataset = args.dataset
      run_dir.mkdir(parents=True, exist_ok=True)
      print(f"{run_dir.name}: {args.epochs} epochs", flush=True)
      runs.append(run_one(config, run_dir,
                          log=lambda m: print(m, flush=True)))
  result = {
      "benchmark": "convergence",
      "command": "python -m benchmarks.convergence " + " ".join(
          sys.argv[1:] if argv is None else argv),
      "model": "cresnet20_1w1a", "dataset": args.dataset,
      "epochs": args.epochs, "batch_size": args.batch_size,
      "learning_rate": args.learning_rate,
      "arms": arms, "seeds": seeds, "missing_runs": missing,
      "summary": summarize(runs) if runs else {},
      "ovsw_pairs": ovsw_pairs(summarize(runs)) if runs else {},
      "runs": runs,
      "wall_seconds": time.time() - start,
      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                  "jax": jax.__version__},
  }
  print(json.dumps({"summary": result["summary"],
                    "missing_runs": missing}, indent=1))
  if args.out and runs:
    results.save_json(result, args.out, indent=1)
    plot(runs, Path(args.out).with_suffix(".png"))
  return result


if __name__ == "__main__":
  main()
