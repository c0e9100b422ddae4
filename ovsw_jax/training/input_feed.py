"""Where a run's batches are made: on the host, or on the devices.

``config.input_on_device`` decides:

- 'auto' (the default): on the devices for the in-memory datasets (cifar10,
  cifar100, digits, synthetic) when the backend is a GPU or TPU, where
  building batches on the host would be the slow part of a step; on the
  host otherwise (CPUs, and datasets read from files);
- True: on the devices (an in-memory dataset only);
- False: on the host (`data.create_train_iterator`).

Both make the same global batches bit for bit (`data.device_input`), so the
choice changes speed, never a result, and a run may resume with the other.
"""

from __future__ import annotations

from typing import Iterator, Optional

import jax
import ml_collections

from ovsw_jax import data
from ovsw_jax.data import device_input
from ovsw_jax.training import config as config_lib
from ovsw_jax.training import mesh as mesh_lib

Batch = dict[str, jax.Array]
# jax.Device.platform of the accelerators 'auto' puts the data on.
ACCELERATOR_PLATFORMS = ("gpu", "cuda", "rocm", "tpu")


def _source(config: ml_collections.ConfigDict):
  return data.get_source(config.dataset, config.data_dir,
                         **config_lib.as_dict(config.dataset_options))


def wants_device_input(config: ml_collections.ConfigDict,
                       mesh: jax.sharding.Mesh) -> bool:
  """``config.input_on_device`` resolved for this dataset and mesh.

  Raises:
    ValueError: input_on_device=True with a dataset read from files.
  """
  setting = config.input_on_device
  in_memory = device_input.supports(_source(config))
  if setting == "auto":
    platform = mesh.devices.flat[0].platform
    return in_memory and platform in ACCELERATOR_PLATFORMS
  if setting and not in_memory:
    raise ValueError(
        f"config.input_on_device=True: dataset {config.dataset!r} is read "
        "from files, and only in-memory datasets (cifar10, cifar100, digits, "
        "synthetic) live on the devices. Set config.input_on_device to "
        "False or 'auto'.")
  return bool(setting)


class InputFeed:
  """A run's training and eval batches, as global arrays on the mesh.

  Attributes:
    on_device: whether the batches are made on the devices.
    device: the `device_input.DeviceInput` (None on the host).
  """

  def __init__(self, config: ml_collections.ConfigDict,
               mesh: jax.sharding.Mesh, on_device: Optional[bool] = None):
    """Args: config, mesh; on_device overrides ``config.input_on_device``."""
    self.config, self.mesh = config, mesh
    self.on_device = (wants_device_input(config, mesh) if on_device is None
                      else on_device)
    self.device = (device_input.DeviceInput(_source(config), mesh,
                                            axis=mesh_lib.DATA_AXIS)
                   if self.on_device else None)

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    """Training batches from number ``start_step`` on (0-based: what a
    fresh iterator yields after ``start_step`` batches); close() when done."""
    config = self.config
    if self.device is not None:
      yield from self.device.train_batches(config.batch_size, config.seed,
                                           start_step)
      return
    batches = data.create_train_iterator(
        config.dataset, config.data_dir, config.batch_size, config.seed,
        start_step=start_step, worker_count=config.worker_count,
        prefetch=config.prefetch,
        **config_lib.as_dict(config.dataset_options))
    try:
      for batch in batches:
        yield mesh_lib.shard_batch(batch, self.mesh)
    finally:
      close = getattr(batches, "close", None)
      if close is not None:
        close()

  def eval_batches(self, global_batch_size: int) -> Iterator[Batch]:
    """One pass over the eval split (`data.create_eval_iterator`'s)."""
    if self.device is not None:
      return self.device.eval_batches(global_batch_size)
    config = self.config
    return data.create_eval_iterator(
        config.dataset, config.data_dir, global_batch_size,
        worker_count=config.worker_count, prefetch=config.prefetch,
        **config_lib.as_dict(config.dataset_options))
