"""The training loop's images/s through the trainer, by where batches are
made (`python -m benchmarks.accelerator`).

Each arm is `ovsw_jax.training.loop.train_and_evaluate` itself on real
CIFAR-10 for ``steps`` steps: 'host' makes the batches in the host pipeline
(grain threads: gather, crop, flip, normalise, copy), 'device' keeps the
uint8 training set on the devices and makes them there
(``config.input_on_device``). The trainer logs images/s per log window, net
of evaluation and checkpoints; the first window (the compile) is left out.
the step alone is the same jitted step on one batch that stays on the
device (`benchmarks.lib.arms.JaxArm`), timed after them in each round. So,
per round,

  input share = 1 - loop images/s / step-alone images/s

is the fraction of an epoch's wall time that goes to making batches (and to
the loop's own bookkeeping, which both arms share); the result gives the
median over the rounds. Where that share is within the noise (a CPU, whose
steps take seconds), ``input_alone`` says what making a batch costs by
itself: each input's images/s with no step.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from typing import Any, Callable

import jax
import ml_collections

from benchmarks.lib import arms as arms_lib
from benchmarks.lib import timing
from ovsw_jax.training import input_feed
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


class _StepAlone:
  """The trainer's jitted step on one device-resident batch, built once."""

  def __init__(self, base: ml_collections.ConfigDict):
    config = arms_lib.make_config(
        base.model, base.method, base.batch_size, 32, base.half_precision,
        base.seed, dict(base.model_options))
    batch = arms_lib.make_batch(base.batch_size, 32, 10, base.seed)
    self.arm = arms_lib.JaxArm(config, batch, mesh_lib.create_mesh())
    self.batch_size = base.batch_size
    self.warm = False

  def time(self, steps: int) -> dict[str, Any]:
    timed = timing.time_interleaved({"step": self.arm}, steps=steps,
                                    warmup=0 if self.warm else 2,
                                    block=steps)
    self.warm = True
    return timing.summarize(timed["step"]["times"], self.batch_size)


def input_alone(base: ml_collections.ConfigDict, batches: int
                ) -> dict[str, Any]:
  """Images/s of making batches alone, no step: the host pipeline (grain
  threads, then the copy to the devices) and device-resident input.

  Each source's first batch (compiles, first epoch's permutation) is left
  out; every batch is waited for on the devices.
  """
  out = {}
  for arm in ARMS:
    feed = input_feed.InputFeed(run_config(base, batches, arm == "device"),
                                mesh_lib.create_mesh())
    it = feed.train_batches(0)
    jax.block_until_ready(next(it))
    start = time.perf_counter()
    for _ in range(batches):
      jax.block_until_ready(next(it))
    seconds = time.perf_counter() - start
    it.close()
    out[arm] = {"images_per_sec": batches * base.batch_size / seconds,
                "batch_ms": 1e3 * seconds / batches, "batches": batches}
  return out


def _summary(rounds: list[dict[str, Any]], num_train: int
             ) -> dict[str, Any]:
  """Medians over the rounds; each round's input share is against the
  step alone timed in the same round."""
  med = lambda values: statistics.median(list(values))
  alone = med(r["step_alone"]["images_per_sec"] for r in rounds)
  out: dict[str, Any] = {"step_alone": {"images_per_sec": alone},
                         "epoch_s_step_alone": num_train / alone, "arms": {}}
  for arm in ARMS:
    ips = med(r[arm]["images_per_sec"] for r in rounds)
    out["arms"][arm] = {
        "images_per_sec": ips, "epoch_s": num_train / ips,
        "input_share_of_epoch": med(
            1.0 - r[arm]["images_per_sec"] / r["step_alone"]["images_per_sec"]
            for r in rounds)}
  out["device_over_host_images_per_sec"] = med(
      r["device"]["images_per_sec"] / r["host"]["images_per_sec"]
      for r in rounds)
  return out


def loop_speed(base: ml_collections.ConfigDict, seconds: float,
               step_s: float, num_train: int, log: Callable[[str], None],
               max_rounds: int = 5) -> dict[str, Any]:
  """Rounds of: a trainer run per arm, then the step alone.

  Args:
    base: the recipe (real CIFAR-10, the batch size to measure at).
    seconds: the section's time: a round starts only if the last one's
      time is left (the first always runs); runs are sized for three rounds.
    step_s: an estimate of one step's time (sizes the runs).
    num_train: training images per epoch (for the epoch times).
    log: progress messages.
    max_rounds: rounds at most.
  """
  start = time.perf_counter()
  deadline = start + seconds
  # Three rounds of three parts, each trainer run paying a compile of about
  # 10 steps' time; at least 3 steps a window.
  steps = int(min(max(seconds / 9 / max(step_s, 1e-6) - 10, 3 * WINDOWS),
                  50 * WINDOWS))
  timed_steps = steps - max(1, steps // WINDOWS)  # as the windows after 1st
  log(f"  trainer runs of {steps} steps at batch {base.batch_size}: "
      f"{list(ARMS)} and the step alone in turn")
  alone = _StepAlone(base)
  rounds: list[dict[str, Any]] = []
  round_s = 0.0
  while len(rounds) < max_rounds and (
      not rounds or time.perf_counter() + round_s < deadline):
    t = time.perf_counter()
    entry = {arm: trainer_images_per_sec(
        run_config(base, steps, arm == "device")) for arm in ARMS}
    entry["step_alone"] = alone.time(timed_steps)
    rounds.append(entry)
    log("  " + ", ".join(f"{k} {v['images_per_sec']:.1f}"
                         for k, v in entry.items()) + " images/s")
    round_s = time.perf_counter() - t
  out = _summary(rounds, num_train)
  out["input_alone"] = input_alone(base, timed_steps)
  out.update({"rounds": rounds, "steps_per_run": steps,
              "batch_size": base.batch_size,
              "seconds": time.perf_counter() - start})
  return out
