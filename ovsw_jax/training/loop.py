"""The training entry points: `train_and_evaluate`, and `load_checkpoint`.

`train_and_evaluate` validates the config, builds the experiment, restores
the workdir's latest checkpoint (or initialises, or warm-starts from
``config.init_from``), attaches a distillation teacher if configured, then
hands the state to `run.TrainingRun`, the step loop (logging, evaluation,
checkpoints, exact resume, preemption, profiling).
"""

from __future__ import annotations

import time
from typing import Any, Optional, Union

from absl import logging
import jax
import ml_collections

from ovsw_jax import data
from ovsw_jax.data import dataset_digest
from ovsw_jax.data import device_normalize
from ovsw_jax.training import checkpointing
from ovsw_jax.training import config as config_lib
from ovsw_jax.training import determinism
from ovsw_jax.training import distill
from ovsw_jax.training import input_feed
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import metrics_io
from ovsw_jax.training import restart
from ovsw_jax.training import resume_guard
from ovsw_jax.training.run import TrainingRun
from ovsw_jax.training import state as state_lib
from ovsw_jax.training import steps as steps_lib
from ovsw_jax.training import warm_start
from ovsw_jax.training import workdir as workdir_lib
from ovsw_jax.training.experiment import create_experiment
from ovsw_jax.training.experiment import Experiment
from ovsw_jax.training.experiment import validate_config


def _platform(mesh: jax.sharding.Mesh) -> str:
  return mesh.devices.flat[0].platform


def _abstract_state(experiment: Experiment, config: ml_collections.ConfigDict,
                    mesh: jax.sharding.Mesh) -> state_lib.TrainState:
  return state_lib.abstract_train_state(
      experiment.model, experiment.tx, experiment.info.image_shape,
      config.seed, mesh, experiment.model_state_fn)


def _restore(manager, experiment, config, mesh, which):
  step = workdir_lib.choose_step(manager, which)
  abstract = _abstract_state(experiment, config, mesh)
  items, _, step = checkpointing.restore(
      manager, state_lib.checkpoint_items(abstract), step=step,
      set_aside_unreadable=False)
  return abstract.replace(**items), step


def load_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                    which: Union[str, int] = "latest", *,
                    mesh: Optional[jax.sharding.Mesh] = None
                    ) -> tuple[state_lib.TrainState, int]:
  """Loads a training checkpoint of ``workdir`` (e.g. for evaluation, export).

  Args:
    config: the config the run was trained with.
    workdir: the run's workdir.
    which: 'latest', 'best' (by eval top-1) or a step number. An unreadable
      checkpoint falls back to the one before it, with a warning.
    mesh: where to place the arrays (replicated); default: all devices.

  Returns:
    The `TrainState` (params, batch_stats, opt_state, step, rng) and its step.

  Raises:
    FileNotFoundError: workdir holds no checkpoint.
  """
  mesh = mesh if mesh is not None else mesh_lib.create_mesh()
  experiment = create_experiment(config, platform=_platform(mesh))
  manager = checkpointing.create_manager(
      workdir_lib.checkpoint_dir(workdir), keep=config.keep_checkpoints,
      read_only=True)
  try:
    return _restore(manager, experiment, config, mesh, which)
  finally:
    manager.close()


def _eval_batch_size(config: ml_collections.ConfigDict,
                     mesh: jax.sharding.Mesh) -> int:
  """The global eval batch size, checked against the mesh."""
  mesh_lib.check_batch_size(config.batch_size, mesh, "batch_size")
  if config.eval_batch_size > 0:
    mesh_lib.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    return config.eval_batch_size
  return config.batch_size


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       mesh: Optional[jax.sharding.Mesh] = None
                       ) -> dict[str, Any]:
  """Trains (resuming from workdir's checkpoints) and evaluates.

  With ``config.eval_only`` it only evaluates the latest (or, with
  ``eval_checkpoint='best'``, the best) checkpoint and appends the result to
  the workdir's metrics.

  Args:
    config: a full config (see `ovsw_jax.training.config.default_config`).
    workdir: where checkpoints, metrics and TensorBoard files go (local or
      ``gs://``, anything `etils.epath` reaches). Run
      the same command again to resume from the latest checkpoint.
    mesh: the data-parallel mesh; default: all devices of all processes.

  Returns:
    The final metrics: step, eval_loss, eval_top1, eval_top5, eval_count;
    for a training run also train_loss (last log window), wall_time_s and
    images_per_sec. A run stopped by SIGTERM/SIGINT (`preemption`) returns
    ``{"step": <its checkpoint's step>, "preempted": True, ...}`` without a
    final evaluation.

  Raises:
    ValueError: a bad config or a batch size the devices cannot split.
    FloatingPointError: a non-finite loss (naming the first bad step) or
      non-finite params at a checkpoint; the last good checkpoint is kept.
    ovsw_jax.data.DataNotFoundError: the dataset's files are missing.
    FileNotFoundError: eval_only without a checkpoint.
  """
  start_time = time.time()
  validate_config(config)
  determinism.configure(config.deterministic)  # Before JAX's backend starts.
  mesh = mesh if mesh is not None else mesh_lib.create_mesh()
  eval_batch_size = _eval_batch_size(config, mesh)
  experiment = create_experiment(config, platform=_platform(mesh))
  p_eval_step = steps_lib.jit_eval_step(
      mesh, config.cpu_fast_path,
      input_fn=device_normalize.normalizer(experiment.info))

  feed = input_feed.InputFeed(config, mesh)

  def run_eval(state):
    return steps_lib.evaluate(p_eval_step, state,
                              feed.eval_batches(eval_batch_size), mesh)

  manager = checkpointing.create_manager(
      workdir_lib.checkpoint_dir(workdir), keep=config.keep_checkpoints,
      async_save=config.async_checkpointing, read_only=bool(config.eval_only))
  is_chief = jax.process_index() == 0
  writer = None
  try:
    if config.eval_only:
      writer = metrics_io.MetricsWriter(workdir, enabled=is_chief)
      return _evaluate_only(config, experiment, manager, mesh, run_eval,
                            writer)
    changes = _guard_resume(config, experiment.info, workdir, manager)
    state, step = _initial_state(config, experiment, manager, mesh, workdir,
                                 changed=changes.guarded if changes else None)
    if step >= experiment.total_steps:
      finished = _finished_run(workdir, step, experiment.total_steps)
      if finished is not None:
        return finished
    state = state.replace(teacher=distill.load_teacher(
        config, experiment.info.num_classes, mesh))
    if is_chief:
      if changes is not None:
        resume_guard.record(workdir, step, changes)
      workdir_lib.write_config(recorded_config(config, experiment.info),
                               workdir)
    writer = metrics_io.MetricsWriter(workdir, enabled=is_chief,
                                      keep_until_step=step)
    run = TrainingRun(config, experiment, manager, mesh, writer, run_eval,
                      workdir, feed=feed)
    return run.train(state, start_time)
  finally:
    manager.wait_until_finished()
    manager.close()
    if writer is not None:
      writer.close()


def recorded_config(config: ml_collections.ConfigDict,
                    info: data.DatasetInfo) -> ml_collections.ConfigDict:
  """The config as config.json records it: a dataset that takes a
  ``classes`` option (the imagefolder) gets the class names it resolved, so
  the run, its resumes and its exports keep the same labels."""
  if info.class_names is None or "classes" not in data.dataset_options(
      config.dataset):
    return config
  recorded = ml_collections.ConfigDict(config.to_dict())
  options = config_lib.as_dict(recorded.dataset_options)
  options["classes"] = list(info.class_names)
  recorded.dataset_options = options
  return recorded


def _evaluate_only(config, experiment, manager, mesh, run_eval, writer):
  """Evaluates the ``config.eval_checkpoint`` checkpoint and records it."""
  state, step = _restore(manager, experiment, config, mesh,
                         config.eval_checkpoint)
  result = {"epoch": step / experiment.steps_per_epoch,
            "eval_checkpoint": config.eval_checkpoint, **run_eval(state)}
  writer.write(step, result)
  logging.info("Evaluated the %s checkpoint (step %d): top-1 %.4f, top-5 "
               "%.4f, loss %.4f on %d images.", config.eval_checkpoint,
               step, result["eval_top1"], result["eval_top5"],
               result["eval_loss"], result["eval_count"])
  return {"step": step, **result}


def _guard_resume(config, info, workdir, manager
                  ) -> Optional[resume_guard.ConfigChanges]:
  """`resume_guard.check` when there is a checkpoint to resume; else None.

  The config is compared as config.json records it (`recorded_config`: an
  image folder's resolved classes), so a rerun that leaves them implicit
  compares equal.
  """
  latest = manager.latest_step()
  if latest is None:
    return None
  return resume_guard.check(recorded_config(config, info), workdir, latest)


def _finished_run(workdir: str, step: int, total: int
                  ) -> Optional[dict[str, Any]]:
  """The result of a run already trained to its end and evaluated there.

  Returns:
    ``{'step', 'finished': True, 'eval_*'...}`` from the eval record of the
    latest checkpoint's step; None when the metrics hold none (the run is
    then evaluated again, which adds the missing record).
  """
  try:
    records = metrics_io.read_metrics(workdir)
  except FileNotFoundError:
    records = []
  evals = [r for r in records if r["step"] == step and "eval_top1" in r]
  if not evals:
    logging.info("The checkpoint at step %d is the run's last and has no "
                 "eval record: evaluating it.", step)
    return None
  last = evals[-1]
  logging.info(
      "The run in %s is finished: its checkpoint at step %d (of %d) was "
      "evaluated, top-1 %.4f. Nothing to do; to train further, raise "
      "num_epochs (or num_train_steps) with --config.allow_config_change="
      "True, or start a new --workdir.", workdir, step, total,
      last["eval_top1"])
  return {"step": step, "finished": True,
          **{k: v for k, v in last.items() if k.startswith("eval_")}}


def _initial_state(config, experiment, manager, mesh, workdir, changed=None
                   ) -> tuple[state_lib.TrainState, int]:
  """The latest readable checkpoint's state, or a new one at step 0.

  A new one starts from ``config.init_from``'s params and batch_stats when
  set (a later stage). Step 0 in a workdir holding an earlier run's record
  goes through `restart.check_fresh_start`. With ``changed`` (the guarded
  keys an allowed config change alters), a checkpoint the new config cannot
  read is an error naming them, not a damaged checkpoint to set aside.
  """
  abstract = _abstract_state(experiment, config, mesh)
  try:
    restored = checkpointing.restore(
        manager, state_lib.checkpoint_items(abstract),
        set_aside_unreadable=not changed, fall_back=not changed)
  except checkpointing.UnreadableCheckpointsError as e:
    if not changed:
      raise
    raise ValueError(
        f"the checkpoints in {manager.directory} cannot be read with the "
        f"changed config ({resume_guard.describe(changed)}): "
        f"{'; '.join(e.errors)}. Keep those keys as they were, or train the "
        f"change in a new --workdir with --config.init_from={workdir}."
        ) from e
  if restored is None:
    restart.check_fresh_start(workdir, config.restart_from_scratch)
    state = state_lib.create_train_state(
        experiment.model, experiment.tx, experiment.info.image_shape,
        config.seed, mesh, experiment.model_state_fn,
        cpu_fast_path=config.cpu_fast_path)
    if config.init_from:
      state = warm_start.initialise_from(state, config.init_from,
                                         experiment.tx, mesh)
    return state, 0
  items, meta, step = restored
  if step < experiment.total_steps:  # a finished run says so instead
    logging.info("Resuming from the checkpoint at step %d (data position "
                 "%d).", step, meta["data_step"])
  data_change = dataset_digest.change_since(meta, experiment.info)
  if data_change:
    logging.warning("%s.", data_change)
  return abstract.replace(**items), step
