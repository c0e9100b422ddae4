"""A `jax.profiler` trace of a few training steps, after warm-up.

``--config.profile_steps=K`` makes the training loop trace K steps, starting
after the run's first `WARMUP_STEPS` steps (which compile the step and fill
the input pipeline), into ``<workdir>/profile``. Each process writes its own
``plugins/profile/<run>/<host>.xplane.pb`` there; open it with TensorBoard's
profile plugin (``pip install tensorboard tensorboard-plugin-profile``, then
``tensorboard --logdir <workdir>/profile``) or with xprof
(``xprof --logdir <workdir>/profile``).
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax

PROFILE_DIR = "profile"
# Steps of the run before the trace starts: the first compiles the step.
WARMUP_STEPS = 2


def profile_dir(workdir: str | os.PathLike[str]) -> str:
  """Where the traces of ``workdir``'s run go."""
  return os.path.join(os.fspath(workdir), PROFILE_DIR)


class StepProfiler:
  """Starts a trace after warm-up and stops it ``num_steps`` steps later.

  Call `after_step` after every step and `close` when the loop ends (it
  stops a trace that is still running, e.g. on preemption).
  """

  def __init__(self, num_steps: int, workdir: str | os.PathLike[str],
               first_step: int):
    """Plans a trace of steps ``first_step + WARMUP_STEPS + 1 ..``.

    Args:
      num_steps: how many steps to trace; 0: none.
      workdir: the run's workdir; the trace goes to `profile_dir`.
      first_step: the step the run starts from (0, or a checkpoint's).
    """
    self.logdir = profile_dir(workdir)
    self.start_after = first_step + WARMUP_STEPS
    self.stop_after = self.start_after + num_steps
    self.enabled = num_steps > 0
    self.active = False

  def after_step(self, step: int, state: Any) -> None:
    """Starts or stops the trace once ``step`` is done (``state``: its
    result, awaited so that the trace holds the steps' device work)."""
    if not self.enabled:
      return
    if step == self.start_after:
      jax.block_until_ready(state)
      jax.profiler.start_trace(self.logdir)
      self.active = True
    elif step == self.stop_after and self.active:
      jax.block_until_ready(state)
      self.close()
      logging.info("Profiled steps %d-%d into %s (open it with TensorBoard's "
                   "profile plugin or xprof).", self.start_after + 1, step,
                   self.logdir)

  def close(self) -> None:
    """Stops the trace if it runs (writing it out)."""
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
