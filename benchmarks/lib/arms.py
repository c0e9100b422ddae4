"""The timed arms: our jitted train step and the reference's PyTorch step.

An arm is a callable running one synchronous step on a fixed batch. The
data are synthetic and one batch stays on the device for every step, so the
input pipeline is not measured: the arms time the step alone.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import default
from ovsw_jax.training import experiment as experiment_lib
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import state as state_lib
from ovsw_jax.training import steps

DATA_NOTE = ("synthetic images, one batch kept on the device for every step: "
             "the input pipeline is not measured")


def make_config(model: str = "cresnet20_1w1a", method: str = "ovsw",
                batch_size: int = 128, image_size: int = 32,
                half_precision: bool = False, seed: int = 0,
                model_options: Optional[Mapping[str, Any]] = None
                ) -> ml_collections.ConfigDict:
  """configs/default.py's CIFAR recipe on synthetic images of this size."""
  if image_size < 1:
    raise ValueError(f"--image_size={image_size} must be positive")
  config = default.get_config()
  config.model = model
  if model_options:
    config.model_options = dict(model_options)
  config.method = method
  config.batch_size = batch_size
  config.half_precision = half_precision
  config.seed = seed
  config.dataset = "synthetic"
  config.dataset_options = {"image_shape": (image_size, image_size, 3)}
  config.progress_bar = False
  return config


def make_batch(batch_size: int, image_size: int, num_classes: int,
               seed: int = 0) -> dict[str, np.ndarray]:
  """Normalised-looking float32 NHWC images and int32 labels."""
  rng = np.random.default_rng(seed)
  return {
      "image": rng.standard_normal(
          (batch_size, image_size, image_size, 3), dtype=np.float32),
      "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
  }


class JaxArm:
  """Our jitted train step for one method, as the trainer runs it.

  Built as `ovsw_jax.training.loop.train_and_evaluate` builds its step:
  `create_experiment`, `create_train_state`, `jit_train_step` over the mesh,
  the batch placed with `mesh.shard_batch`.

  Attributes:
    config: the run's config.
    experiment: `create_experiment(config)`.
    state: the train state (donated and replaced at every step).
    step_fn: `steps.jit_train_step`.
    batch: the device-resident batch.
    last_metrics: the metrics of the last step.
  """

  def __init__(self, config: ml_collections.ConfigDict,
               batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh,
               variables: Optional[Mapping[str, Any]] = None):
    """Builds the state and the jitted step.

    Args:
      config: from `make_config` (``config.cpu_fast_path`` picks the step's
        compiler options, as in the trainer).
      batch: host arrays ('image', 'label').
      mesh: the data-parallel mesh.
      variables: {'params', 'batch_stats'} to start from instead of the
        model's init (e.g. converted from the PyTorch model).
    """
    mesh_lib.check_batch_size(config.batch_size, mesh)
    self.config = config
    self.experiment = experiment_lib.create_experiment(config)
    self.mesh = mesh
    if variables is None:
      self.state = state_lib.create_train_state(
          self.experiment.model, self.experiment.tx,
          self.experiment.info.image_shape, config.seed, mesh,
          self.experiment.model_state_fn,
          cpu_fast_path=config.cpu_fast_path)
    else:
      self.state = state_from_variables(self.experiment, variables,
                                        config.seed, mesh)
    self.step_fn = steps.jit_train_step(
        self.experiment.learning_rate_fn, mesh, config.cpu_fast_path)
    self.batch = mesh_lib.shard_batch(batch, mesh)
    self.last_metrics: dict[str, jax.Array] = {}

  def __call__(self) -> None:
    self.state, self.last_metrics = self.step_fn(self.state, self.batch)
    jax.block_until_ready((self.state, self.last_metrics))

  def loss(self) -> float:
    return float(self.last_metrics["loss"])


def state_from_variables(experiment: experiment_lib.Experiment,
                         variables: Mapping[str, Any], seed: int,
                         mesh: jax.sharding.Mesh) -> state_lib.TrainState:
  """`create_train_state`'s state, from given variables.

  The same fields (step 0, a fresh optimizer state, the RNG key derived from
  ``seed`` as there), replicated over ``mesh``; built eagerly, which skips
  compiling the model's init.

  Raises:
    ValueError: the method schedules model variables (e.g. ReCU's tau),
      which ``variables`` do not hold.
  """
  if experiment.model_state_fn is not None:
    raise ValueError(
        "this method schedules non-trainable model variables, which a "
        "converted state_dict lacks; start from the model's init instead")
  params = jax.tree.map(jnp.asarray, variables["params"])
  batch_stats = jax.tree.map(jnp.asarray, variables["batch_stats"])
  _, rng = jax.random.split(jax.random.PRNGKey(seed))
  state = state_lib.TrainState.create(
      apply_fn=experiment.model.apply, params=params, tx=experiment.tx,
      batch_stats=batch_stats, model_state={}, rng=rng)
  return jax.device_put(state, mesh_lib.replicated(mesh))


class TorchArm:
  """A `torch_step.TorchStep` on a fixed batch, keeping its last loss."""

  def __init__(self, step, images, labels):
    self.step, self.images, self.labels = step, images, labels
    self.last_loss = float("nan")

  def __call__(self) -> None:
    self.last_loss = self.step(self.images, self.labels)["loss"]


def torch_arms(model: str, num_classes: int, parts: Sequence[str],
               method: str, config: ml_collections.ConfigDict,
               batch: Mapping[str, np.ndarray], threads: int, sign: str,
               seed: int) -> tuple[dict[str, TorchArm], dict[str, Any],
                                   dict[str, Any]]:
  """PyTorch arms for ``method`` and vanilla, their common start and versions.

  Args:
    model, num_classes, seed: the reference network to build.
    parts: ``method``'s parts (`methods.method_parts`).
    method: the method's name (the arm's key).
    config: ``method``'s config (SGD, AGS and SAD settings, learning rate).
    batch: host arrays ('image' NHWC, 'label').
    threads: `torch.set_num_threads`.
    sign: `torch_step.build_model`'s.

  Returns:
    (method -> arm, the start as Flax variables, version info).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks.lib import torch_step  # pylint: disable=g-import-not-at-top
  from ovsw_jax import convert  # pylint: disable=g-import-not-at-top

  torch_step.method_flags(parts)  # Fail before building anything.
  torch.set_num_threads(threads)
  net = torch_step.build_model(model, num_classes, seed, sign)
  variables = convert.convert_state_dict(model, net.state_dict(), num_classes)
  lr = float(experiment_lib.create_experiment(config).learning_rate_fn(0))
  images = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy())
  labels = torch.from_numpy(batch["label"].astype(np.int64))
  arms = {}
  for m, m_parts in ((method, parts), ("vanilla", [])):
    if m in arms:
      continue
    step = torch_step.TorchStep(
        torch_step.copy_model(net), m_parts, learning_rate=lr,
        momentum=config.momentum, weight_decay=config.weight_decay,
        delta=config.delta, dampen_weight=config.dampen_weight,
        track_momentum=config.track_momentum,
        track_threshold=config.track_threshold)
    arms[m] = TorchArm(step, images, labels)
  info = {"torch": torch.__version__, "torch_num_threads":
          torch.get_num_threads(), "torch_learning_rate": lr,
          "torch_sign": sign}
  return arms, variables, info
