"""Learning-rate schedules, the run's length, and which steps do what.

The reference's schedule: linear warmup, then cosine, set once per epoch (the
reference) or per step (docs/semantics.md, section 7), joined with
`optax.join_schedules` as flax's examples/imagenet does.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import ml_collections
import optax


def total_train_steps(config: ml_collections.ConfigDict,
                      steps_per_epoch: int) -> int:
  """``num_train_steps`` if set, else ``num_epochs * steps_per_epoch``."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(round(config.num_epochs * steps_per_epoch))


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> optax.Schedule:
  """The reference's schedule: linear warmup, then cosine (docs/semantics.md, section 7).

  With ``W = warmup_epochs``, ``E`` the number of epochs (``num_train_steps /
  steps_per_epoch`` when num_train_steps is set), ``lr = learning_rate`` and
  ``c = cosine_lr_offset`` (1e-5):

  * ``lr_schedule_granularity='epoch'`` (the reference sets the LR once per
    epoch; ``e = step // steps_per_epoch``)::

      e <  W:  lr * (e + 1) / W
      e >= W:  0.5 * (1 + cos(pi * (e - W) / (E - W))) * lr + c

  * ``'step'``: the same two phases per step, with ``s = step`` and
    ``S = steps_per_epoch``: ``lr * (s + 1) / (W * S)`` during warmup (lr at
    its last step), then ``0.5 * (1 + cos(pi * (s - W*S) / ((E - W) * S))) *
    lr + c``.

  With ``lr_schedule='linear'`` the second phase is ``lr * (1 - t / T)``
  instead (ReActNet's recipe; ``t``, ``T`` the position in and length of the
  phase, in epochs or steps as above), with no offset.

  Joined with `optax.join_schedules` at step ``W * steps_per_epoch``.

  Args:
    config: reads learning_rate, warmup_epochs, num_epochs, num_train_steps,
      lr_schedule_granularity, cosine_lr_offset, lr_schedule.
    steps_per_epoch: optimizer steps per epoch.

  Returns:
    A schedule: step count (int, traceable) -> learning rate (float32).
  """
  spe = int(steps_per_epoch)
  if spe < 1:
    raise ValueError(f"steps_per_epoch={steps_per_epoch} must be >= 1")
  lr = float(config.learning_rate)
  offset = float(config.cosine_lr_offset)
  warmup = int(config.warmup_epochs)
  epochs = total_train_steps(config, spe) / spe
  # A run no longer than the warmup never reaches the cosine phase; any
  # positive length keeps its (unused) formula finite.
  cosine_epochs = max(epochs - warmup, 1.0 / spe)
  if config.lr_schedule_granularity == "epoch":
    unit = lambda step: jnp.floor_divide(step, spe).astype(jnp.float32)
    warmup_len, cosine_len = float(warmup), float(cosine_epochs)
  else:
    unit = lambda step: jnp.asarray(step, jnp.float32)
    warmup_len, cosine_len = float(warmup * spe), float(cosine_epochs * spe)

  def warmup_fn(step):
    return lr * (unit(step) + 1.0) / warmup_len

  def cosine_fn(step):
    # 0.5 * (1 + cos(x)) written as cos(x / 2)**2, which keeps float32
    # precision near the end, where 1 + cos(x) cancels.
    return jnp.square(jnp.cos(0.5 * jnp.pi * unit(step) / cosine_len)) * lr \
        + offset

  def linear_fn(step):
    # ReActNet's LambdaLR: lr * (1 - t / T) over the phase after the warmup.
    return lr * (1.0 - unit(step) / cosine_len)

  decay_fn = linear_fn if config.lr_schedule == "linear" else cosine_fn
  if warmup == 0:
    return decay_fn
  return optax.join_schedules([warmup_fn, decay_fn], [warmup * spe])


class StepPlan(NamedTuple):
  """The steps at which the loop logs, ends epochs, measures flips,
  evaluates and saves (each a set of 1-based step numbers)."""
  log: set[int]
  epoch_ends: set[int]
  flips: set[int]
  evals: set[int]
  saves: set[int]


def _steps_between(every: int, start: int, stop: int) -> set[int]:
  """Multiples of ``every`` in ``(start, stop]``."""
  return set(range((start // every + 1) * every, stop + 1, every))


def plan_steps(config: ml_collections.ConfigDict, steps_per_epoch: int,
               first_step: int, total_steps: int) -> StepPlan:
  """Which of the steps ``first_step + 1 .. total_steps`` do what.

  The last step always logs, evaluates, saves and (when flips are on)
  measures flips. ``checkpoint_every_steps=0`` saves after each evaluation
  (and at the end). Every save and eval step is a log step, since saving
  needs the losses checked first.
  """
  flip_every = (config.log_every_steps if config.flip_stats_every_steps == -1
                else config.flip_stats_every_steps)
  save_every = (steps_per_epoch if config.checkpoint_every_steps == -1
                else config.checkpoint_every_steps)
  eval_every = int(round(config.eval_every_epochs * steps_per_epoch))

  def every(n):
    return _steps_between(n, first_step, total_steps) if n else set()

  evals = every(eval_every)
  plan = StepPlan(log=every(config.log_every_steps),
                  epoch_ends=every(steps_per_epoch), flips=every(flip_every),
                  evals=evals, saves=every(save_every) if save_every
                  else set(evals))
  if total_steps > first_step:
    for steps in (plan.log, plan.epoch_ends, plan.evals, plan.saves):
      steps.add(total_steps)
    if flip_every:
      plan.flips.add(total_steps)
  plan.log.update(plan.epoch_ends | plan.saves | plan.evals)
  return plan
