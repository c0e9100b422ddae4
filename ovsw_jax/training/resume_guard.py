"""A resumed run's config against the one its checkpoints were trained with.

A rerun in a workdir with a checkpoint continues that run, so its config
must be the one in ``workdir/config.json``: a new ``num_epochs`` would
silently move the learning-rate schedule (the cosine is a function of the
run's length), a new model would not fit the checkpoint at all. `check`
compares the two before anything is restored:

* keys in `config.RESUME_NEUTRAL_KEYS` (logging, checkpoint and evaluation
  cadence, the input pipeline's workers; nothing that changes training) may
  change freely;
* any other changed key stops the run (`ConfigChangedError`, one line
  naming each key with its old and new value), unless the config sets
  ``allow_config_change=True``.

A resume that changes anything appends one JSON line to
``workdir/config_history.jsonl`` (`record`): the step it resumed at, the
time (UTC) and each changed key's old and new value.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any, Mapping

from absl import logging
from flax import traverse_util
import ml_collections

from ovsw_jax.training import config as config_lib
from ovsw_jax.training import workdir as workdir_lib

CONFIG_HISTORY_FILE = "config_history.jsonl"
ALLOW_FLAG = "--config.allow_config_change=True"
_UNSET = object()  # A key one side lacks.


class ConfigChangedError(ValueError):
  """A resume's config changes keys that change training, unallowed."""


@dataclasses.dataclass(frozen=True)
class ConfigChanges:
  """How a rerun's config differs from the saved one.

  Attributes:
    guarded: ``{key: (old, new)}`` of keys that change training (dotted
      paths for dict fields, e.g. ``model_options.stage_sizes``).
    neutral: the same for keys in `config.RESUME_NEUTRAL_KEYS`.
  """
  guarded: dict[str, tuple[Any, Any]]
  neutral: dict[str, tuple[Any, Any]]

  def __bool__(self) -> bool:
    return bool(self.guarded or self.neutral)


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``; empty dicts vanish."""
  return traverse_util.flatten_dict(tree, sep=".")


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as config.json holds it (tuples become lists)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _show(value: Any) -> str:
  return "(unset)" if value is _UNSET else json.dumps(value)


def describe(changes: Mapping[str, tuple[Any, Any]]) -> str:
  """``'num_epochs 20 -> 30, learning_rate 0.1 -> 0.2'``."""
  return ", ".join(f"{key} {_show(old)} -> {_show(new)}"
                   for key, (old, new) in changes.items())


def diff(saved: Mapping[str, Any], config: ml_collections.ConfigDict
         ) -> ConfigChanges:
  """The keys in which ``config`` differs from a saved config.json's dict.

  A key the saved config lacks (a run of an older version) counts as its
  default; a saved key the schema no longer has cannot change training and
  is left out, and so is num_epochs when num_train_steps sets the length on
  both sides.

  Args:
    saved: the parsed config.json.
    config: the rerun's config.

  Returns:
    The changed keys, split into guarded and neutral ones, in key order.
  """
  defaults = _as_json(config_lib.default_config())
  old = _flatten({**defaults, **{k: v for k, v in saved.items()
                                 if k in config_lib.CONFIG_KEYS}})
  new = _flatten(_as_json(config))
  guarded, neutral = {}, {}
  for key in sorted(old.keys() | new.keys()):
    before, after = old.get(key, _UNSET), new.get(key, _UNSET)
    if before == after:
      continue
    top = key.split(".", 1)[0]
    target = neutral if top in config_lib.RESUME_NEUTRAL_KEYS else guarded
    target[key] = (before, after)
  # num_epochs only sets the run's length while num_train_steps is -1.
  if all(side.get("num_train_steps", -1) > 0 for side in (old, new)):
    guarded.pop("num_epochs", None)
  return ConfigChanges(guarded, neutral)


def check(config: ml_collections.ConfigDict, workdir: str,
          step: int) -> ConfigChanges:
  """Lets a rerun resume ``workdir``'s checkpoint only with its own config.

  Args:
    config: the rerun's config.
    workdir: the run's workdir, holding a checkpoint.
    step: the latest checkpoint's step (for the message).

  Returns:
    The changes (empty when the workdir holds no config.json: a run of a
    version older than config.json).

  Raises:
    ConfigChangedError: keys that change training differ and
      ``config.allow_config_change`` is False; one line naming each key, its
      saved and its new value, and the ways on.
  """
  try:
    saved = workdir_lib.read_config(workdir).to_dict()
  except FileNotFoundError:
    return ConfigChanges({}, {})
  changes = diff(saved, config)
  if changes.guarded and not config.allow_config_change:
    raise ConfigChangedError(
        f"this config differs from {workdir}'s config.json, with which its "
        f"checkpoint at step {step} was trained, in keys that change "
        f"training: {describe(changes.guarded)}. Rerun with the saved "
        f"values, use a new --workdir, or pass {ALLOW_FLAG} to resume with "
        f"the new ones (recorded in {CONFIG_HISTORY_FILE}; a checkpoint "
        f"cannot take another model or optimizer: train those in a new "
        f"--workdir with --config.init_from={workdir}).")
  return changes


def record(workdir: str, step: int, changes: ConfigChanges) -> None:
  """Logs a resume's config changes and appends them to the history.

  Args:
    workdir: the run's workdir (local or ``gs://``).
    step: the step the run resumed at.
    changes: from `check`; nothing is written when empty.
  """
  if not changes:
    return
  if changes.guarded:
    logging.warning("Resuming at step %d with a changed config "
                    "(allow_config_change): %s.", step,
                    describe(changes.guarded))
  if changes.neutral:
    logging.info("Resuming at step %d with changed keys that do not change "
                 "training: %s.", step, describe(changes.neutral))
  entry = {
      "step": int(step),
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "changes": {k: [None if v is _UNSET else v for v in pair] for k, pair
                  in {**changes.guarded, **changes.neutral}.items()},
      "guarded": sorted(changes.guarded),
  }
  line = json.dumps(entry, sort_keys=True) + "\n"
  path = workdir_lib.workdir_path(workdir) / CONFIG_HISTORY_FILE
  if "://" in os.fspath(path):  # Object stores cannot append.
    path.write_text((path.read_text() if path.exists() else "") + line)
  else:
    with open(path, "a", encoding="utf-8") as f:
      f.write(line)


def read_history(workdir: str) -> list[dict[str, Any]]:
  """The workdir's config history, oldest first ([] when none)."""
  path = workdir_lib.workdir_path(workdir) / CONFIG_HISTORY_FILE
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()
          if line.strip()]
