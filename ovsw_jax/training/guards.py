"""Stops for a diverged run: non-finite losses and parameters.

The loop checks each log window's losses before anything is written or
saved, and the parameters before each checkpoint, so that the last good
checkpoint is never replaced by a diverged one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def check_losses(steps: list[int], losses: np.ndarray, manager) -> None:
  """Raises FloatingPointError at the first non-finite loss."""
  bad = np.flatnonzero(~np.isfinite(losses))
  if not len(bad):
    return
  manager.wait_until_finished()
  first = steps[bad[0]]
  kept = manager.latest_step()
  raise FloatingPointError(
      f"training loss is {losses[bad[0]]} at step {first} (the first "
      f"non-finite step since step {steps[0] - 1}); stopping. "
      + (f"The last good checkpoint (step {kept}) in {manager.directory} is "
         "kept" if kept is not None else "No checkpoint was saved yet") +
      ". Lower config.learning_rate, or check the data.")
