"""Device-resident input: an in-memory dataset kept on the accelerators.

For CIFAR-sized data an accelerator finishes a step in milliseconds, and
building each batch on the host (crop, flip, normalise, copy) becomes the
slow part. Here the uint8 images of a split go to the devices once, and a
jitted batch function makes every batch there: the rows of the epoch's
permutation, the pad-and-crop and flip, and the normalisation.

Every batch is bit for bit the host pipeline's (`pipeline`) for the same
(seed, step): the same permutation (`pipeline.epoch_permutation`, computed
on the host once per epoch: 4 bytes an example), the same per-example random
words (`device_augment`, exact integer arithmetic), the same crops, and the
same float32 values (a lookup in the source's `code_table`, which is the
host's normalisation of each code). A run gives the same losses with either
input, and resumes exactly from a step.

Placement (``placement``):

- 'replicated': every device holds the whole split and gathers its own rows
  (no communication);
- 'sharded': device d holds rows ``[d*S, (d+1)*S)`` (``S = ceil(N / D)``);
  each device gathers the batch rows it holds and one all-to-all delivers
  every row to the device that trains on it (a batch's uint8 pixels cross
  the interconnect once);
- 'auto': replicated when the split takes at most `REPLICATE_FRACTION` of a
  device's memory (1 GiB where the device does not say), else sharded.

On several processes each process places only its own devices' part.
Evaluation goes once through the eval split in order, in global batches; the
last one is padded with zero images, label 0 and mask False, so every eval
image counts exactly once (as `pipeline.create_eval_iterator`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from ovsw_jax.data import device_augment
from ovsw_jax.data import pipeline
from ovsw_jax.data.source import PadCropFlipSource

Batch = dict[str, jax.Array]
PLACEMENTS = ('auto', 'replicated', 'sharded')
REPLICATE_FRACTION = 1 / 8
_UNKNOWN_MEMORY_LIMIT = 1 << 30


def supports(source: Any) -> bool:
  """Whether `source` can live on the devices (an in-memory array source)."""
  return isinstance(source, PadCropFlipSource)


def _memory_stats(device: Any) -> dict[str, Any]:
  try:
    return device.memory_stats() or {}
  except (AttributeError, RuntimeError, ValueError):
    return {}  # No stats (CPUs), or another process's device.


def choose_placement(nbytes: int, devices: list[Any]) -> str:
  """'replicated' if a copy fits in `REPLICATE_FRACTION` of every device's
  memory (1 GiB where a device reports none, as CPUs do), else 'sharded'.

  Pass this process's devices: only those report their memory. (A run's
  processes are assumed to have alike devices, so they all choose alike.)
  """
  limits = []
  for d in devices:
    limit = _memory_stats(d).get('bytes_limit')
    limits.append(limit * REPLICATE_FRACTION if limit
                  else _UNKNOWN_MEMORY_LIMIT)
  return 'replicated' if nbytes <= min(limits) else 'sharded'


def _place(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from the host copy every process holds; each process
  transfers only what its own devices hold."""
  return jax.make_array_from_callback(array.shape, sharding,
                                      lambda index: array[index])


def _lookup(table: jax.Array, codes: jax.Array) -> jax.Array:
  """``out[..., c] = table[codes[..., c], c]``: a gather, so exact."""
  levels, channels = table.shape
  flat = table.T.reshape(-1)
  return flat[codes.astype(jnp.int32) + levels * jnp.arange(channels)]


class _Split:
  """One split's uint8 codes and labels on the devices."""

  def __init__(self, codes: np.ndarray, labels: np.ndarray, mesh: Mesh,
               axis: str, placement: str):
    self.count = len(labels)
    devices = mesh.shape[axis]
    if placement == 'sharded':
      rows = math.ceil(self.count / devices) * devices
      if rows != self.count:  # Padding rows, never read.
        codes = np.concatenate(
            [codes, np.zeros((rows - self.count, *codes.shape[1:]),
                             codes.dtype)])
      self.rows_per_device = rows // devices
      spec = P(axis)
    else:
      self.rows_per_device = self.count
      spec = P()
    self.spec = spec
    self.codes = _place(np.ascontiguousarray(codes), NamedSharding(mesh, spec))
    self.labels = _place(np.asarray(labels, np.int32),
                         NamedSharding(mesh, P()))


class DeviceInput:
  """A source's splits on a mesh's devices, and its batches made there.

  Attributes:
    source: the `PadCropFlipSource`.
    mesh, axis: the devices and the batch axis.
    placement: 'replicated' or 'sharded' (resolved from 'auto').
  """

  def __init__(self, source: PadCropFlipSource, mesh: Mesh,
               axis: str = 'data', placement: str = 'auto'):
    """Places each split on the devices when first used.

    Raises:
      ValueError: a source that is not in memory, or a bad placement.
    """
    if not supports(source):
      raise ValueError(
          f'dataset {source.info.name!r} streams from files; device-resident '
          'input needs an in-memory dataset (cifar10, cifar100, digits, '
          'synthetic). Set config.input_on_device=False (or "auto").')
    if placement not in PLACEMENTS:
      raise ValueError(f'placement={placement!r}: expected one of '
                       f'{PLACEMENTS}')
    self.source, self.mesh, self.axis = source, mesh, axis
    self.num_devices = mesh.shape[axis]
    if placement == 'auto':
      nbytes = source.info.num_train * math.prod(source.info.image_shape)
      placement = choose_placement(
          nbytes, [d for d in mesh.devices.flat
                   if d.process_index == jax.process_index()])
    self.placement = placement
    self._train: _Split | None = None
    self._eval: _Split | None = None
    self.table = _place(source.code_table(), NamedSharding(mesh, P()))
    self._replicated = NamedSharding(mesh, P())
    # The jitted batch functions, per split and global batch size.
    self._fns: dict[str, dict[int, Callable[..., Batch]]] = {
        'train': {}, 'eval': {}}

  @property
  def train(self) -> _Split:
    if self._train is None:
      self._train = _Split(*self.source.pixel_codes(train=True), self.mesh,
                           self.axis, self.placement)
    return self._train

  def _eval_split(self) -> _Split:
    if self._eval is None:
      self._eval = _Split(*self.source.pixel_codes(train=False), self.mesh,
                          self.axis, self.placement)
    return self._eval

  def _check_batch(self, global_batch_size: int) -> int:
    if global_batch_size % self.num_devices:
      raise ValueError(
          f'global batch size {global_batch_size} is not divisible by the '
          f'{self.num_devices} devices; use a multiple of {self.num_devices}.')
    return global_batch_size // self.num_devices

  def _rows_fn(self, split: _Split, local: int) -> Callable[..., Any]:
    """Per device: the codes, labels and example indices of its ``local``
    rows of a global batch whose example indices are ``rows``."""
    axis, devices = self.axis, self.num_devices
    sharded = self.placement == 'sharded'
    held = split.rows_per_device

    def my_rows(codes, labels, rows):
      d = lax.axis_index(axis)
      mine = lax.dynamic_slice(rows, (d * local,), (local,))
      if not sharded:
        return codes[mine], labels[mine], mine
      # Gather every batch row this device holds (zeros elsewhere), send
      # each device its block; exactly one device holds a row, and uint8
      # pixels are >= 0, so the max of the received blocks is the row.
      here = (rows // held) == d
      found = codes[jnp.where(here, rows - d * held, 0)]
      found = jnp.where(here[:, None, None, None], found, jnp.uint8(0))
      blocks = found.reshape(devices, local, *found.shape[1:])
      received = lax.all_to_all(blocks, axis, 0, 0)
      return jnp.max(received, axis=0), labels[mine], mine

    return my_rows

  def _shard_map(self, fn, split: _Split, extra: int):
    return jax.jit(jax.shard_map(
        fn, mesh=self.mesh,
        in_specs=(split.spec, P(), P()) + (P(),) * extra,
        out_specs=P(self.axis)))

  def _train_fn(self, global_batch_size: int):
    if global_batch_size in self._fns['train']:
      return self._fns['train'][global_batch_size]
    local = self._check_batch(global_batch_size)
    source = self.source
    pad, flip = source.pad, source.flip
    augment = source.augment and (pad > 0 or flip)
    my_rows = self._rows_fn(self.train, local)

    def per_device(codes, labels, table, perm, counters):
      # counters: [batch number in the epoch, epoch key hi, epoch key lo].
      start = counters[0].astype(jnp.int32) * global_batch_size
      rows = lax.dynamic_slice(perm, (start,), (global_batch_size,))
      images, label, indices = my_rows(codes, labels, rows)
      if augment:
        key = device_augment.Word(counters[1], counters[2])
        images = device_augment.random_pad_crop_flip(images, indices, key,
                                                     pad, flip)
      return {'image': _lookup(table, images), 'label': label}

    fn = self._fns['train'][global_batch_size] = self._shard_map(
        per_device, self.train, extra=2)
    return fn

  def _eval_fn(self, global_batch_size: int):
    if global_batch_size in self._fns['eval']:
      return self._fns['eval'][global_batch_size]
    local = self._check_batch(global_batch_size)
    split = self._eval_split()
    my_rows = self._rows_fn(split, local)
    count = split.count

    def per_device(codes, labels, table, batch):
      rows = (batch[0].astype(jnp.int32) * global_batch_size
              + jnp.arange(global_batch_size, dtype=jnp.int32))
      valid = rows < count
      images, label, _ = my_rows(codes, labels, jnp.where(valid, rows, 0))
      d = lax.axis_index(self.axis)
      mask = lax.dynamic_slice(valid, (d * local,), (local,))
      image = jnp.where(mask[:, None, None, None], _lookup(table, images),
                        jnp.float32(0))
      return {'image': image, 'label': jnp.where(mask, label, 0),
              'mask': mask}

    fn = self._fns['eval'][global_batch_size] = self._shard_map(
        per_device, split, extra=1)
    return fn

  def _scalars(self, *values: int) -> jax.Array:
    return _place(np.asarray(values, np.uint32), self._replicated)

  def train_batches(self, global_batch_size: int, seed: int,
                    start_step: int = 0) -> Iterator[Batch]:
    """Training batches of steps ``start_step, start_step + 1, ...``.

    Yields:
      ``{'image': float32 [B, H, W, C], 'label': int32 [B]}``, global arrays
      split along the batch axis: `pipeline.create_train_iterator`'s batches
      of the same steps, bit for bit.
    """
    if start_step < 0:
      raise ValueError(f'start_step={start_step} must be >= 0.')
    num = self.train.count
    steps = pipeline.steps_per_epoch(self.source.info, global_batch_size)
    fn = self._train_fn(int(global_batch_size))
    epoch, perm, key = None, None, None
    step = int(start_step)
    while True:
      e, b = divmod(step, steps)
      if e != epoch:
        epoch = e
        perm = _place(pipeline.epoch_permutation(num, seed, e).astype(
            np.int32), self._replicated)
        key = device_augment.epoch_key(seed, e)
      yield fn(self.train.codes, self.train.labels, self.table, perm,
               self._scalars(b, *key))
      step += 1

  def eval_batches(self, global_batch_size: int) -> Iterator[Batch]:
    """One pass over the eval split, as `pipeline.create_eval_iterator`.

    Yields:
      ``{'image', 'label', 'mask'}`` global arrays split along the batch
      axis; ``pipeline.num_eval_batches`` of them.
    """
    fn = self._eval_fn(int(global_batch_size))
    split = self._eval_split()
    for k in range(math.ceil(split.count / global_batch_size)):
      yield fn(split.codes, split.labels, self.table, self._scalars(k))
