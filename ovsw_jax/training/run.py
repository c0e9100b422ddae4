"""One training run's step loop (`TrainingRun`), which `loop` drives.

Steps ``state.step + 1 .. total_steps``: one jitted step per batch, logging
(metrics chunks, TensorBoard, tqdm), per-layer flip rates, periodic
evaluation, orbax checkpoints, a stop at the first non-finite loss, a saved
stop on SIGTERM/SIGINT (`preemption`) and an optional profiler trace
(`profiling`). Which steps log, evaluate and save is decided up front
(`schedules.plan_steps`), so each part of the loop is a small method.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax import diagnostics
from ovsw_jax.data import dataset_digest
from ovsw_jax.data import device_normalize
from ovsw_jax.training import checkpoint_saver
from ovsw_jax.training import guards
from ovsw_jax.training import input_feed
from ovsw_jax.training import metrics_io
from ovsw_jax.training import preemption
from ovsw_jax.training import profiling
from ovsw_jax.training import schedules
from ovsw_jax.training import state as state_lib
from ovsw_jax.training import steps as steps_lib
from ovsw_jax.training.experiment import Experiment
from ovsw_jax.training.log_window import LogWindow
from ovsw_jax.training.progress import EpochProgress


class TrainingRun:
  """One training run's loop over steps ``state.step + 1 .. total_steps``."""

  def __init__(self, config, experiment: Experiment, manager, mesh, writer,
               run_eval, workdir, feed: input_feed.InputFeed):
    self.config, self.experiment, self.workdir = config, experiment, workdir
    self.feed = feed  # Where the batches are made: host or devices.
    self.manager, self.mesh, self.writer = manager, mesh, writer
    self.saver = checkpoint_saver.CheckpointSaver(
        manager, final_step=experiment.total_steps)
    self.run_eval = run_eval
    self.is_chief = jax.process_index() == 0
    self.train_step = steps_lib.jit_train_step(
        experiment.learning_rate_fn, mesh, config.cpu_fast_path,
        input_fn=device_normalize.normalizer(experiment.info))
    self._copy_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p))
    self._flip_fn = jax.jit(diagnostics.flip_rate)
    self._diag_fn = jax.jit(steps_lib.layer_diagnostics)
    self._finite_fn = jax.jit(lambda s: guards.all_finite((s.params,
                                                           s.batch_stats)))
    self.window = LogWindow()
    self.last_record: dict[str, Any] = {}
    self.last_eval: dict[str, Any] = {}
    self.run_images, self.run_time = 0, 0.0
    self.preempted_at: Optional[int] = None

  def train(self, state: state_lib.TrainState, start_time: float
            ) -> dict[str, Any]:
    """Runs the remaining steps; returns the run's summary."""
    config, experiment = self.config, self.experiment
    first_step = int(jax.device_get(state.step))
    total = experiment.total_steps
    plan = schedules.plan_steps(config, experiment.steps_per_epoch,
                                first_step, total)
    flip_ref = self._copy_params(state.params) if plan.flips else None
    train_iter = self.feed.train_batches(first_step)
    progress = EpochProgress(
        experiment.steps_per_epoch,
        math.ceil(total / experiment.steps_per_epoch),
        enabled=config.progress_bar and self.is_chief)
    profiler = profiling.StepProfiler(config.profile_steps, self.workdir,
                                      first_step)
    watch = preemption.PreemptionWatch().install()
    try:
      for step in range(first_step + 1, total + 1):
        progress.start_step(step)
        batch = next(train_iter)
        state, metrics = self.train_step(state, batch)
        self.window.steps.append(step)
        self.window.metrics.append(metrics)
        self.window.images += config.batch_size
        progress.update()
        if step in plan.flips:
          flip_ref = self._record_flips(flip_ref, state.params)
        record = None
        if step in plan.log:
          record = self._log_record(step, state, progress,
                                    step in plan.epoch_ends)
        if step in plan.epoch_ends:
          progress.end_epoch()
        if step in plan.evals:
          record.update(self._evaluate(step, state))
        if record is not None:
          self.writer.write(step, record)
        if step in plan.saves:
          self._save(step, state, evaluated=step in plan.evals)
        self.saver.check(step, lambda: self._save_args(step, state, False))
        profiler.after_step(step, state)
        if watch.stop_here(step, lambda: self._save(step, state, False),
                           self.saver):
          self.preempted_at = step
          break
      else:
        self.saver.wait_until_finished()  # The last save, retried if need be.
    finally:
      watch.restore()
      profiler.close()
      progress.close()
      train_iter.close()
    return self._summary(state, first_step, start_time)

  def _record_flips(self, flip_ref, params):
    """Adds the flip rates since ``flip_ref`` to the window; new reference."""
    flips = self._flip_fn(flip_ref, params)
    self.window.extra.update({
        ("flip_rate" if k == diagnostics.OVERALL else f"flip_rate/{k}"): v
        for k, v in flips.items()})
    return self._copy_params(params)

  def _log_record(self, step: int, state, progress: EpochProgress,
                  epoch_end: bool) -> dict[str, Any]:
    """The window's record: means of the per-step values, lr of the step."""
    self.window.extra.update(self._diag_fn(state.opt_state))
    steps, stacked, extra, elapsed, images = self.window.fetch()
    guards.check_losses(steps, stacked["loss"], self.manager)
    self.run_images += images
    self.run_time += elapsed
    record = {"epoch": step / self.experiment.steps_per_epoch}
    for k, v in stacked.items():
      # lr, recu_tau: this step's; the rest: float32 means over the window.
      name = f"train_{k}" if k in ("loss", "top1", "top5") else k
      record[name] = v[-1] if k in ("lr", "recu_tau") else np.float32(
          np.mean(v, dtype=np.float64))
    record["images_per_sec"] = images / max(elapsed, 1e-9)
    record.update(extra)
    self.last_record = record
    progress.show(record)
    if epoch_end:
      progress.end_epoch()
    # With a bar, log lines between epoch ends would tear it: it shows the
    # values in its postfix instead.
    if not progress.enabled or epoch_end:
      logging.info("step %d/%d epoch %.2f: %s", step,
                   self.experiment.total_steps, record["epoch"],
                   metrics_io.summary_line(record))
    return record

  def _evaluate(self, step: int, state) -> dict[str, Any]:
    t = time.time()
    self.last_eval = self.run_eval(state)
    logging.info("step %d eval: top-1 %.4f top-5 %.4f loss %.4f (%d images)",
                 step, self.last_eval["eval_top1"],
                 self.last_eval["eval_top5"], self.last_eval["eval_loss"],
                 self.last_eval["eval_count"])
    self.window.pause += time.time() - t
    return self.last_eval

  def _save(self, step: int, state, evaluated: bool) -> None:
    """Saves a checkpoint, refusing non-finite parameters."""
    t = time.time()
    if not bool(jax.device_get(self._finite_fn(state))):
      self.manager.wait_until_finished()
      raise FloatingPointError(
          f"non-finite parameters after step {step}; stopping without "
          f"saving. The last good checkpoint (step "
          f"{self.manager.latest_step()}) in {self.manager.directory} is "
          "kept.")
    # Records up to this step reach the workdir before the checkpoint can:
    # a resume from it never leaves a gap in the metrics.
    self.writer.flush()
    self.saver.save(step, lambda: self._save_args(step, state, evaluated))
    self.window.pause += time.time() - t

  def _save_args(self, step: int, state, evaluated: bool
                 ) -> checkpoint_saver.SaveArgs:
    """(items, meta, metrics) of the checkpoint of ``state`` at ``step``."""
    config = self.config
    meta = {"step": step, "data_step": step,
            "epoch": step / self.experiment.steps_per_epoch,
            "method": config.method, "model": config.model,
            "dataset": config.dataset,
            # So that an export needs no dataset files to know them.
            "image_shape": list(self.experiment.info.image_shape),
            **({"class_names": list(self.experiment.info.class_names)}
               if self.experiment.info.class_names else {}),
            **dataset_digest.record(self.experiment.info)}
    metrics = {"eval_top1": self.last_eval["eval_top1"]} if evaluated else None
    return state_lib.checkpoint_items(state), meta, metrics

  def _summary(self, state, first_step: int, start_time: float
               ) -> dict[str, Any]:
    """The run's final metrics, logged by process 0."""
    if self.preempted_at is not None:
      return {"step": self.preempted_at, "preempted": True, **self.last_eval}
    if not self.last_eval:
      # Nothing was trained (already at total_steps): evaluate what we have.
      self.last_eval = self.run_eval(state)
      self.writer.write(first_step, {
          "epoch": first_step / self.experiment.steps_per_epoch,
          **self.last_eval})
    total = self.experiment.total_steps
    wall = time.time() - start_time
    summary = {
        "step": total,
        **self.last_eval,
        "train_loss": metrics_io.to_json_value(
            self.last_record.get("train_loss", math.nan)),
        "wall_time_s": wall,
        "images_per_sec": (self.run_images / self.run_time
                           if self.run_time > 0 else 0.0),
    }
    if self.is_chief:
      table = metrics_io.layer_table(self.last_record)
      if table:
        logging.info("Per binary layer, at step %d:\n%s", total, table)
      logging.info(
          "Done: final eval top-1 %.4f (top-5 %.4f, %d images), %d steps, "
          "wall time %.1f s, %.1f images/s.", summary["eval_top1"],
          summary["eval_top5"], summary["eval_count"], total, wall,
          summary["images_per_sec"])
    return summary
