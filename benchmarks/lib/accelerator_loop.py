"""The training loop's images/s through the trainer, by where batches are
made (`python -m benchmarks.accelerator`).

Each arm is `ovsw_jax.training.loop.train_and_evaluate` itself on real
CIFAR-10 for ``steps`` steps: 'host' makes the batches in the host pipeline
(grain threads: gather, crop, flip, normalise, copy), 'device' keeps the
uint8 training set on the devices and makes them there
(``config.input_on_device``). The trainer logs images/s per log window, net
of evaluation and checkpoints; the first window (the compile) is left out.
'step alone' is the same jitted step on one batch that stays on the device
(`benchmarks.lib.arms.JaxArm`), timed right after. So

  input share = 1 - loop images/s / step-alone images/s

is the fraction of an epoch's wall time that goes to making batches (and to
the loop's own bookkeeping, which both arms share).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from typing import Any, Callable, Mapping, Optional

import ml_collections

from benchmarks.lib import arms as arms_lib
from benchmarks.lib import timing
from ovsw_jax.training import loop
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import metrics_io

ARMS = ("host", "device")
WINDOWS = 6  # log windows per run; the first holds the compile


def run_config(base: ml_collections.ConfigDict, steps: int,
               on_device: bool) -> ml_collections.ConfigDict:
  """``base`` for a timed run: ``steps`` steps, no flip statistics, no
  evaluation but the final one (on one batch of test images), checkpoints
  only at the end."""
  config = copy.deepcopy(base)  # keeps input_on_device's 'auto' | bool type
  options = dict(config.dataset_options)
  options["num_eval"] = config.batch_size
  config.update({
      "num_train_steps": steps, "log_every_steps": max(1, steps // WINDOWS),
      "flip_stats_every_steps": 0, "checkpoint_every_steps": 0,
      "eval_every_epochs": 0, "progress_bar": False,
      "dataset_options": options, "input_on_device": on_device})
  return config


def trainer_images_per_sec(config: ml_collections.ConfigDict
                           ) -> dict[str, Any]:
  """Runs the trainer; images/s over its log windows after the first."""
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    loop.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - start
    records = [r for r in metrics_io.read_metrics(workdir)
               if "images_per_sec" in r]
  windows = [r["images_per_sec"] for r in records[1:]]
  if not windows:
    raise ValueError(f"{config.num_train_steps} steps gave no log window "
                     "after the first; run more steps")
  # Equal windows: total images / total time is the harmonic mean.
  return {"images_per_sec": len(windows) / sum(1 / w for w in windows),
          "windows_images_per_sec": windows, "wall_s": wall}


def _step_alone(base: ml_collections.ConfigDict, steps: int
                ) -> dict[str, Any]:
  """The trainer's jitted step on one device-resident batch."""
  config = arms_lib.make_config(
      base.model, base.method, base.batch_size, 32, base.half_precision,
      base.seed, dict(base.model_options))
  batch = arms_lib.make_batch(base.batch_size, 32, 10, base.seed)
  arm = arms_lib.JaxArm(config, batch, mesh_lib.create_mesh())
  timed = timing.time_interleaved({"step": arm}, steps=steps, warmup=2,
                                  block=steps)
  return timing.summarize(timed["step"]["times"], base.batch_size)


def _summary(runs: Mapping[str, list[dict[str, Any]]],
             alone: Mapping[str, Any], num_train: int) -> dict[str, Any]:
  step_ips = alone["images_per_sec"]
  out = {"step_alone": alone, "arms": {}}
  for arm, arm_runs in runs.items():
    ips = statistics.median(r["images_per_sec"] for r in arm_runs)
    out["arms"][arm] = {
        "images_per_sec": ips, "runs": arm_runs,
        "epoch_s": num_train / ips,
        "input_share_of_epoch": 1.0 - ips / step_ips}
  out["epoch_s_step_alone"] = num_train / step_ips
  if all(a in out["arms"] for a in ARMS):
    out["device_over_host_images_per_sec"] = (
        out["arms"]["device"]["images_per_sec"]
        / out["arms"]["host"]["images_per_sec"])
  return out


def loop_speed(base: ml_collections.ConfigDict, seconds: float,
               step_s: float, num_train: int, log: Callable[[str], None],
               step_alone: Optional[Mapping[str, Any]] = None,
               max_rounds: int = 3) -> dict[str, Any]:
  """Rounds of one trainer run per arm, then the step alone.

  Args:
    base: the recipe (real CIFAR-10, the batch size to measure at).
    seconds: the section's time: a round starts only if the last one's
      time is left (the first always runs); the runs' length is sized for
      two rounds.
    step_s: an estimate of one step's time (sizes the runs).
    num_train: training images per epoch (for the epoch times).
    log: progress messages.
    step_alone: the step alone at this batch (`timing.summarize`), when
      already measured (the step-speed part's ours/float32); else timed here.
    max_rounds: rounds at most.
  """
  start = time.perf_counter()
  deadline = start + seconds
  # Two rounds of two runs, each paying a compile of about 10 steps' time;
  # at least 3 steps a window.
  steps = int(min(max(seconds / 4 / max(step_s, 1e-6) - 10, 3 * WINDOWS),
                  50 * WINDOWS))
  log(f"  trainer runs of {steps} steps at batch {base.batch_size}, "
      f"{list(ARMS)} in turn")
  runs: dict[str, list[dict[str, Any]]] = {a: [] for a in ARMS}
  round_s = 0.0
  while len(runs["host"]) < max_rounds and (
      not runs["host"] or time.perf_counter() + round_s < deadline):
    t = time.perf_counter()
    for arm in ARMS:
      runs[arm].append(trainer_images_per_sec(
          run_config(base, steps, arm == "device")))
      log(f"  {arm}: {runs[arm][-1]['images_per_sec']:.1f} images/s")
    round_s = time.perf_counter() - t
  alone = step_alone or _step_alone(base, steps)
  out = _summary(runs, alone, num_train)
  out.update({"steps_per_run": steps, "rounds": len(runs["host"]),
              "batch_size": base.batch_size,
              "step_alone_from": ("the step-speed part" if step_alone
                                  else "timed here"),
              "seconds": time.perf_counter() - start})
  return out
