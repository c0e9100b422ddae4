"""What a config builds before any array exists: data info, model, optimizer.

`create_experiment` validates the config (`validate_config`: the schema's
keys and values, then the method's parts) and builds the dataset's info, the
learning-rate schedule, the model, the optimizer and the model-state schedule.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import ml_collections
import optax

from ovsw_jax import data
from ovsw_jax import models
from ovsw_jax.training import config as config_lib
from ovsw_jax.training import methods
from ovsw_jax.training import schedules


def validate_config(config: ml_collections.ConfigDict) -> None:
  """`config_lib.validate_config`, then the method's parts and whether they
  fit the model.

  'vanilla' (weight decay + SGD momentum) and 'adam' train any model; the
  other parts act on binary weights (`methods.binary_only_parts`), and a
  real-valued model has none: refused rather than silently idle.

  Raises:
    ValueError: unknown or missing keys, a bad value, an unknown method
      part (naming the known ones), or a part acting on binary weights with
      a real-valued model.
  """
  config_lib.validate_config(config)
  binary = methods.binary_only_parts(config.method)
  if binary and not models.is_binary(config.model):
    raise ValueError(
        f"config.method={config.method!r}: its part(s) {binary} act on "
        f"binary weights, and config.model={config.model!r} is real-valued "
        "(no binary layer); use --config.method=vanilla (weight decay + SGD "
        "momentum) or --config.method=adam")


class Experiment(NamedTuple):
  """What a config builds before any array exists.

  Attributes:
    info: the dataset's `DatasetInfo`.
    steps_per_epoch: optimizer steps per epoch.
    total_steps: the run's last step.
    learning_rate_fn: the schedule.
    model: the Flax module.
    tx: the optimizer.
    model_state_fn: the schedule of the model's non-trainable variables
      (ReCU's tau), or None; pass it to `create_train_state`.
  """
  info: data.DatasetInfo
  steps_per_epoch: int
  total_steps: int
  learning_rate_fn: optax.Schedule
  model: Any
  tx: optax.GradientTransformation
  model_state_fn: Optional[methods.ModelStateFn] = None


def create_experiment(config: ml_collections.ConfigDict, *,
                      platform: Optional[str] = None) -> Experiment:
  """Validates the config and builds the dataset info, model and optimizer.

  Args:
    config: a full config.
    platform: the backend the run uses (decides the CPU fast path's
      operands); None: JAX's default backend.

  Raises:
    ValueError: a bad config.
    ovsw_jax.data.DataNotFoundError: the dataset's files are missing.
  """
  validate_config(config)
  info = data.get_dataset_info(config.dataset, config.data_dir,
                               **config_lib.as_dict(config.dataset_options))
  steps_per_epoch = data.steps_per_epoch(info, config.batch_size)
  learning_rate_fn = schedules.create_learning_rate_fn(config, steps_per_epoch)
  return Experiment(
      info=info, steps_per_epoch=steps_per_epoch,
      total_steps=schedules.total_train_steps(config, steps_per_epoch),
      learning_rate_fn=learning_rate_fn,
      model=methods.create_model(config, info.num_classes,
                                  platform=platform),
      tx=methods.create_optimizer(config, learning_rate_fn),
      model_state_fn=methods.create_model_state_fn(config, steps_per_epoch))
