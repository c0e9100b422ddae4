"""Time to accuracy: the CIFAR-10 ResNet-20 recipe, shortened to the epochs
that fit, ours and the reference's PyTorch semantics side by side.

The paper trains 600 epochs (87.7% test top-1). Here both sides train the
recipe (SGD momentum 0.9, lr 0.1, weight decay 5e-4, OvSW delta 0.04 /
lambda 9e-4, batch 256) for ``E`` epochs with the schedule shrunk to them:
``round(E * 5 / 600)`` warmup epochs (at least 1 from 2 epochs on), then the
cosine to the end, both per step. They see the same batches: ours through
`InputFeed` (on the devices where that is the default), PyTorch's from our
host pipeline (same order, same crops and flips), with the learning rate of
each step from our schedule. Each starts from its own framework's init.
Epochs alternate, ours then PyTorch's, so the machine's state is shared.

Per epoch: test top-1 and loss on the test split (every image once), train
seconds (to the last step's result) and eval seconds. 600 full epochs
(all 50,000 training and 10,000 test images, when the run used fewer) are
projected from the median epoch after the first (which compiles), train and
evaluation every epoch, as the reference runs them.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ovsw_jax import data
from ovsw_jax.data import device_normalize
from ovsw_jax.training import config as config_lib
from ovsw_jax.training import experiment as experiment_lib
from ovsw_jax.training import input_feed
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import methods as methods_lib
from ovsw_jax.training import state as state_lib
from ovsw_jax.training import steps as steps_lib

PAPER_EPOCHS = 600
PAPER_WARMUP = 5


def warmup_epochs(epochs: int) -> int:
  """The recipe's 5 of 600 warmup epochs, scaled to ``epochs``."""
  return 0 if epochs < 2 else max(1, round(epochs * PAPER_WARMUP
                                           / PAPER_EPOCHS))


def shortened(base: ml_collections.ConfigDict, epochs: int
              ) -> ml_collections.ConfigDict:
  config = copy.deepcopy(base)  # keeps input_on_device's 'auto' | bool type
  config.update({"num_epochs": epochs, "num_train_steps": -1,
                 "warmup_epochs": warmup_epochs(epochs),
                 "lr_schedule_granularity": "step", "progress_bar": False})
  return config


class OursRun:
  """Our trainer's pieces: state, jitted steps, `InputFeed`."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.mesh = mesh_lib.create_mesh()
    self.exp = experiment_lib.create_experiment(config)
    normalize = device_normalize.normalizer(self.exp.info)
    self.step = steps_lib.jit_train_step(
        self.exp.learning_rate_fn, self.mesh, config.cpu_fast_path,
        input_fn=normalize)
    self.eval_step = steps_lib.jit_eval_step(self.mesh, config.cpu_fast_path,
                                             input_fn=normalize)
    self.state = state_lib.create_train_state(
        self.exp.model, self.exp.tx, self.exp.info.image_shape, config.seed,
        self.mesh, cpu_fast_path=config.cpu_fast_path)
    self.feed = input_feed.InputFeed(config, self.mesh)

  def warm_up(self) -> float:
    """Compiles the train step on a copy of the state; returns seconds."""
    start = time.perf_counter()
    batches = self.feed.train_batches(0)
    copy = jax.tree.map(jnp.copy, self.state)
    jax.block_until_ready(self.step(copy, next(batches)))
    batches.close()
    return time.perf_counter() - start

  def epoch(self, e: int) -> tuple[float, float]:
    """Trains epoch ``e``; (seconds, mean train loss)."""
    spe = self.exp.steps_per_epoch
    start = time.perf_counter()
    batches = self.feed.train_batches(e * spe)
    losses = []
    for _ in range(spe):
      self.state, metrics = self.step(self.state, next(batches))
      losses.append(metrics["loss"])
    losses = jax.device_get(losses)
    batches.close()
    return time.perf_counter() - start, float(np.mean(losses))

  def evaluate(self) -> dict[str, Any]:
    start = time.perf_counter()
    out = steps_lib.evaluate(
        self.eval_step, self.state,
        self.feed.eval_batches(self.config.eval_batch_size), self.mesh)
    return {**out, "eval_s": time.perf_counter() - start}


class TorchRun:
  """The reference's step (`torch_device.DeviceStep`) on our host batches."""

  def __init__(self, config: ml_collections.ConfigDict, amp: bool,
               model_kwargs: Mapping[str, Any]):
    from benchmarks.lib import torch_device  # pylint: disable=g-import-not-at-top
    self.torch_device = torch_device
    self.config = config
    self.exp = experiment_lib.create_experiment(config)
    self.dev = torch_device.device()
    self.step = torch_device.make_step(
        config.model, self.exp.info.num_classes,
        methods_lib.method_parts(config.method), config, amp, self.dev,
        config.seed, **model_kwargs)
    self.options = config_lib.as_dict(config.dataset_options)

  def epoch(self, e: int) -> tuple[float, float]:
    config, spe = self.config, self.exp.steps_per_epoch
    start = time.perf_counter()
    batches = data.create_train_iterator(
        config.dataset, config.data_dir, config.batch_size, config.seed,
        start_step=e * spe, prefetch=config.prefetch, **self.options)
    losses = []
    try:
      for s in range(e * spe, (e + 1) * spe):
        self.step.set_learning_rate(float(self.exp.learning_rate_fn(s)))
        images, labels = self.torch_device.to_torch(next(batches), self.dev)
        losses.append(self.step(images, labels)["loss"])
    finally:
      batches.close()
    self.torch_device.synchronize(self.dev)
    return time.perf_counter() - start, float(np.mean(losses))

  def evaluate(self) -> dict[str, Any]:
    config = self.config
    start = time.perf_counter()
    out = self.torch_device.evaluate(
        self.step.net, data.create_eval_iterator(
            config.dataset, config.data_dir, config.eval_batch_size,
            prefetch=config.prefetch, **self.options), self.dev)
    return {**out, "eval_s": time.perf_counter() - start}


def projection(history: list[dict[str, Any]], train_scale: float = 1.0,
               eval_scale: float = 1.0) -> dict[str, Any]:
  """600 full epochs of train + eval from the epochs after the first.

  Args:
    history: the epochs' records (train_s, eval_s).
    train_scale, eval_scale: full split size / the size trained and
      evaluated on (a run on the first N images projects full epochs).
  """
  later = history[1:] or history
  train_s = statistics.median(h["train_s"] for h in later)
  eval_s = statistics.median(h["eval_s"] for h in later)
  full = train_s * train_scale + eval_s * eval_scale
  return {"epoch_train_s": train_s, "epoch_eval_s": eval_s,
          "full_epoch_s": full,
          "projected_600_epochs_hours": PAPER_EPOCHS * full / 3600,
          "from_epochs": len(later)}


def plan_epochs(seconds: float, epoch_estimates_s: Mapping[str, float],
                max_epochs: Optional[int]) -> int:
  """Epochs of both sides that fit ``seconds`` (at least 1: the part runs
  even when the budget is spent, and the result's budget says by how much
  it went over)."""
  per_epoch = sum(epoch_estimates_s.values())
  epochs = int(seconds // max(per_epoch, 1e-6))
  if max_epochs is not None:
    epochs = min(epochs, max_epochs)
  return max(1, epochs)


def time_to_accuracy(base: ml_collections.ConfigDict, epochs: int,
                     log: Callable[[str], None], compare_torch: bool = True,
                     torch_amp: bool = False,
                     torch_kwargs: Optional[Mapping[str, Any]] = None,
                     full_split: Optional[tuple[int, int]] = None
                     ) -> dict[str, Any]:
  """Both sides, ``epochs`` epochs each, alternating.

  ``full_split``: (train, test) images of the whole dataset, when ``base``
  uses only the first of them; the projection is of full epochs.
  """
  config = shortened(base, epochs)
  sides: dict[str, Any] = {"ours": OursRun(config)}
  if compare_torch:
    sides["torch"] = TorchRun(config, torch_amp, torch_kwargs or {})
  compile_s = sides["ours"].warm_up()
  history: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}
  for e in range(epochs):
    for name, side in sides.items():
      train_s, loss = side.epoch(e)
      entry = {"epoch": e + 1, "train_s": train_s, "train_loss": loss,
               **side.evaluate()}
      history[name].append(entry)
      log(f"  {name} epoch {e + 1}/{epochs}: test top-1 "
          f"{entry['eval_top1']:.4f}, {train_s:.1f} s + eval "
          f"{entry['eval_s']:.1f} s")
  out: dict[str, Any] = {
      "epochs": epochs, "warmup_epochs": config.warmup_epochs,
      "batch_size": config.batch_size,
      "steps_per_epoch": sides["ours"].exp.steps_per_epoch,
      "ours_compile_s": compile_s,
      "ours_input_on_device": sides["ours"].feed.on_device,
      "torch_precision": ("float16_amp" if torch_amp else "float32")
                         if compare_torch else None}
  for name in sides:
    info = sides["ours"].exp.info
    train, test = full_split or (info.num_train, info.num_eval)
    out[name] = {"history": history[name], **projection(
        history[name], train / info.num_train, test / info.num_eval)}
  return out
