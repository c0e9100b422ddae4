"""What a training workdir holds, and how to find it: config.json, checkpoints.

A workdir holds ``config.json`` (the run's config, written when training
starts; what export rebuilds the model from), ``checkpoints/`` (orbax step
directories, see `ovsw_jax.training.checkpointing`) and the metrics (see
`ovsw_jax.training.metrics_io`). `choose_step` is the one place that turns
'latest', 'best' or a step number into a checkpoint step.
"""

from __future__ import annotations

import json
import os
from typing import Union

import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"


def checkpoint_dir(workdir: str) -> str:
  """The workdir's checkpoint directory, as an absolute path."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes ``workdir/config.json`` (atomically); returns its path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=1, sort_keys=True))
  os.replace(tmp, path)
  return path


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with, from ``workdir/config.json``.

  Raises:
    FileNotFoundError: the workdir does not exist, or holds no config.json
      (a run of an ovsw_jax older than config.json: pass its config).
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(
        f"workdir {workdir} does not exist; pass the --workdir of a "
        "training run")
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: this workdir holds no run's config (it was not "
        "trained by ovsw_jax, or by a version older than config.json). Pass "
        "the run's config: --config=configs/<recipe>.py (with the same "
        "overrides as in training).")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def choose_step(manager: ocp.CheckpointManager,
                which: Union[str, int] = "latest") -> int:
  """The checkpoint step that ``which`` names.

  Args:
    manager: the run's checkpoint manager.
    which: 'latest', 'best' (by eval top-1; needs a manager with a
      best_metric) or a step number.

  Raises:
    FileNotFoundError: there is no such checkpoint.
  """
  if which == "best":
    step = manager.best_step()
  elif which == "latest":
    step = manager.latest_step()
  else:
    step = int(which)
  if step is None:
    raise FileNotFoundError(
        f"no checkpoint in {manager.directory}; train first (same --workdir, "
        "eval_only=False)")
  return step
