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

from etils import epath
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"


def workdir_path(workdir: str) -> epath.Path:
  """``workdir`` as an `etils.epath` path; local paths made absolute."""
  workdir = os.fspath(workdir)
  if "://" in workdir:
    return epath.Path(workdir)
  return epath.Path(os.path.abspath(workdir))


def checkpoint_dir(workdir: str) -> str:
  """The workdir's checkpoint directory: absolute, or a ``gs://`` path."""
  return os.fspath(workdir_path(workdir) / CHECKPOINT_DIR)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes ``workdir/config.json`` whole; returns its path.

  Local paths and object stores alike (`etils.epath`): an object is written
  whole; a local file goes through a temporary file and a rename.
  """
  folder = workdir_path(workdir)
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / CONFIG_FILE
  text = config.to_json_best_effort(indent=1, sort_keys=True)
  if "://" in os.fspath(path):
    path.write_text(text)
  else:
    tmp = folder / f"{CONFIG_FILE}.tmp-{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)  # epath.rename refuses to overwrite
  return os.fspath(path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with, from ``workdir/config.json``.

  Raises:
    FileNotFoundError: the workdir does not exist, or holds no config.json
      (a run of an ovsw_jax older than config.json: pass its config).
  """
  folder = workdir_path(workdir)
  path = folder / CONFIG_FILE
  if not path.exists() and not folder.is_dir():
    raise FileNotFoundError(
        f"workdir {workdir} does not exist; pass the --workdir of a "
        "training run")
  if not path.exists():
    raise FileNotFoundError(
        f"{path} not found: this workdir holds no run's config (it was not "
        "trained by ovsw_jax, or by a version older than config.json). Pass "
        "the run's config: --config=configs/<recipe>.py (with the same "
        "overrides as in training).")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


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
