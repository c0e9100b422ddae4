"""Deterministic, resumable, per-host input pipelines on grain.

Training: the global batch of step ``s`` (epoch ``e = s // steps_per_epoch``,
``b = s % steps_per_epoch``) is rows ``[b*B, (b+1)*B)`` of a permutation of
the training set that depends only on ``(seed, e)``; each epoch drops the
remainder (``num_train % B`` examples, different ones each epoch). Host ``p``
of ``P`` gets rows ``[p*B/P, (p+1)*B/P)`` of it. Augmentation draws from
``(seed, e, example index)`` only. The pipeline is a grain ``MapDataset``
over step numbers whose elements are whole per-host batches, built with
vectorised NumPy, so:

- ``start_step=s`` yields exactly what a fresh iterator yields after ``s``
  batches (exact resume needs no iterator checkpoint: just the step);
- the hosts' batches, concatenated in process order, are the 1-host batch;
- threads and worker processes change speed, never content.

Evaluation: one pass in order over the eval split in global batches of
``B``; the last one is padded to ``B`` with zero images, label 0 and
``mask=False``, so every example counts exactly once.

Datasets (the `dataset` argument):

- "cifar10", "cifar100": the official files (`cifar.load`). Options: download,
  downloader, augment, num_train and num_eval (the first N; default all).
- "digits": scikit-learn's 8x8 digits upsampled to 16x16 (`digits`).
  Options: augment, num_eval.
- "synthetic": per-index random data (`synthetic.make_source`). Options:
  image_shape, num_classes, num_train, num_eval, data_seed, augment, pad,
  flip.
- "imagenet2012" and "tfds:<name>": TFDS array_record datasets
  (`tfds_source.make_source`). Options: image_size, train_split,
  eval_split, image_key, label_key, num_classes, train_augment, augment,
  min_scale, lighting, mean, std, decoder, device_normalize (uint8 images,
  normalised in the jitted step: `device_normalize.normalizer`).
- "imagefolder" (``data_dir/train/<class>/...``, `imagefolder`) and
  "image_records" (`prepare`'s array_record shards of one, `image_records`):
  ImageNet's transforms; options in train.py --help.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
import threading
from typing import Any, Callable, Iterator, Union

import grain
import numpy as np

from ovsw_jax.data import cifar
from ovsw_jax.data import dataset_digest
from ovsw_jax.data import digits
from ovsw_jax.data import image_records
from ovsw_jax.data import imagefolder
from ovsw_jax.data import synthetic
from ovsw_jax.data import tfds_source
from ovsw_jax.data.source import DatasetInfo, Source

Batch = dict[str, np.ndarray]
_PERMUTATION_STREAM = 0x5EED

_FACTORIES: dict[str, tuple[Callable[..., Source], bool]] = {
    # name: (factory, whether it takes data_dir)
    'cifar10': (functools.partial(cifar.make_source, 'cifar10'), True),
    'cifar100': (functools.partial(cifar.make_source, 'cifar100'), True),
    'digits': (digits.make_source, False),
    'synthetic': (synthetic.make_source, False),
    'imagenet2012': (functools.partial(tfds_source.make_source,
                                       'imagenet2012'), True),
    'imagefolder': (imagefolder.make_source, True),
    'image_records': (image_records.make_source, True),
}
_TFDS_PREFIX = 'tfds:'

_SOURCE_CACHE: dict[Any, Source] = {}
_SOURCE_LOCK = threading.Lock()


def _freeze(value: Any) -> Any:
  if isinstance(value, dict):
    return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def _factory(dataset: str) -> tuple[Callable[..., Source], bool, list[str]]:
  """(factory, whether it takes data_dir, its option names) of a dataset."""
  if not isinstance(dataset, str):
    raise ValueError(f'dataset must be a name (str), got {dataset!r}.')
  if dataset.startswith(_TFDS_PREFIX):
    tfds_name = dataset[len(_TFDS_PREFIX):]
    if not tfds_name:
      raise ValueError('dataset="tfds:" needs a TFDS name, e.g. "tfds:mnist".')
    factory: Callable[..., Source] = functools.partial(
        tfds_source.make_source, tfds_name, display_name=dataset)
    takes_dir = True
    signature = inspect.signature(tfds_source.make_source)
  elif dataset in _FACTORIES:
    factory, takes_dir = _FACTORIES[dataset]
    signature = inspect.signature(factory)
  else:
    raise ValueError(f'Unknown dataset {dataset!r}; use one of '
                     f'{sorted(_FACTORIES)} or "tfds:<name>".')
  valid = [p for p in signature.parameters
           if p not in ('name', 'data_dir', 'display_name')]
  return factory, takes_dir, valid


def dataset_options(dataset: str) -> list[str]:
  """The option names a dataset takes; ValueError for an unknown dataset."""
  return _factory(dataset)[2]


def get_source(dataset: str, data_dir: str | None = None,
               **options: Any) -> Source:
  """The data source named `dataset` (see the module docstring), cached.

  Raises:
    ValueError: unknown dataset name or option.
    DataNotFoundError: the dataset's files are missing.
  """
  factory, takes_dir, valid = _factory(dataset)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f'Unknown option(s) {unknown} for dataset {dataset!r}; '
                     f'valid options: {valid}.')
  try:
    key = (dataset, data_dir, _freeze(options))
    hash(key)
  except TypeError:
    key = None  # Unhashable options (e.g. a lambda in a list): no caching.
  with _SOURCE_LOCK:
    if key is not None and key in _SOURCE_CACHE:
      return _SOURCE_CACHE[key]
  source = factory(data_dir, **options) if takes_dir else factory(**options)
  if key is not None:
    with _SOURCE_LOCK:
      _SOURCE_CACHE[key] = source
  return source


def get_dataset_info(name: str, data_dir: str | None = None,
                     **options: Any) -> DatasetInfo:
  """The `DatasetInfo` of a dataset (reads or downloads its files if needed).

  Args:
    name: dataset name (see the module docstring).
    data_dir: where its files are.
    **options: the dataset's options (they may change e.g. image_shape).
  """
  return get_source(name, data_dir, **options).info


def _resolve_info(info_or_name: Union[DatasetInfo, str],
                  data_dir: str | None, options: dict[str, Any]) -> DatasetInfo:
  if isinstance(info_or_name, DatasetInfo):
    return info_or_name
  return get_dataset_info(info_or_name, data_dir, **options)


def steps_per_epoch(info_or_name: Union[DatasetInfo, str],
                    global_batch_size: int, data_dir: str | None = None,
                    **options: Any) -> int:
  """``num_train // global_batch_size``: each epoch drops its remainder."""
  info = _resolve_info(info_or_name, data_dir, options)
  _check_batch(global_batch_size, 1)
  steps = info.num_train // global_batch_size
  if steps < 1:
    raise ValueError(f'global_batch_size={global_batch_size} exceeds the '
                     f'{info.num_train} training examples of {info.name}; '
                     'use a smaller batch.')
  return steps


def num_eval_batches(info_or_name: Union[DatasetInfo, str],
                     global_batch_size: int, data_dir: str | None = None,
                     **options: Any) -> int:
  """``ceil(num_eval / global_batch_size)``: the last batch is padded."""
  info = _resolve_info(info_or_name, data_dir, options)
  _check_batch(global_batch_size, 1)
  return math.ceil(info.num_eval / global_batch_size)


def _check_batch(global_batch_size: int, process_count: int) -> None:
  if not isinstance(global_batch_size, (int, np.integer)) or \
      global_batch_size < 1:
    raise ValueError(f'global_batch_size={global_batch_size!r} must be a '
                     'positive int.')
  if global_batch_size % process_count:
    raise ValueError(
        f'global_batch_size={global_batch_size} is not divisible by '
        f'process_count={process_count}; every host must get the same number '
        f'of rows. Use a multiple of {process_count}.')


def _hosts(process_index: int | None,
           process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None \
        else process_index
    process_count = jax.process_count() if process_count is None \
        else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in '
                     f'[0, process_count={process_count}).')
  return int(process_index), int(process_count)


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The training set's order in `epoch`: a function of (seed, epoch) only."""
  seq = np.random.SeedSequence(
      [int(seed) & (2**64 - 1), int(epoch), _PERMUTATION_STREAM])
  perm = np.random.Generator(np.random.PCG64(seq)).permutation(num_examples)
  perm.setflags(write=False)
  return perm


def global_batch_indices(num_examples: int, global_batch_size: int, seed: int,
                         step: int) -> np.ndarray:
  """Training-set indices of the global batch of `step` (all hosts' rows)."""
  spe = num_examples // global_batch_size
  if spe < 1:
    raise ValueError(f'global_batch_size={global_batch_size} exceeds the '
                     f'{num_examples} training examples.')
  epoch, b = divmod(int(step), spe)
  perm = epoch_permutation(num_examples, seed, epoch)
  return perm[b * global_batch_size:(b + 1) * global_batch_size]


class _TrainBatch:
  """Step number -> this host's rows of that step's global batch."""

  def __init__(self, source: Source, global_batch_size: int, seed: int,
               process_index: int, process_count: int):
    self.source = source
    self.global_batch_size = global_batch_size
    self.seed = seed
    self.local = global_batch_size // process_count
    self.offset = process_index * self.local
    self.num_train = source.info.num_train
    self.steps_per_epoch = self.num_train // global_batch_size

  def __call__(self, step: int) -> Batch:
    epoch = int(step) // self.steps_per_epoch
    rows = global_batch_indices(self.num_train, self.global_batch_size,
                                self.seed, step)
    indices = rows[self.offset:self.offset + self.local]
    image, label = self.source.train_examples(indices, self.seed, epoch)
    return {'image': image, 'label': label}


class _EvalBatch:
  """Batch number -> this host's rows of that eval batch, padded and masked."""

  def __init__(self, source: Source, global_batch_size: int,
               process_index: int, process_count: int):
    self.source = source
    self.local = global_batch_size // process_count
    self.global_batch_size = global_batch_size
    self.offset = process_index * self.local
    self.num_eval = source.info.num_eval

  def __call__(self, batch: int) -> Batch:
    start = int(batch) * self.global_batch_size + self.offset
    rows = np.arange(start, start + self.local)
    mask = rows < self.num_eval
    valid = rows[mask]
    # uint8 when the source leaves normalisation to the device.
    dtype = (np.uint8 if getattr(self.source, 'device_normalize', False)
             else np.float32)
    image = np.zeros((self.local, *self.source.info.image_shape), dtype)
    label = np.zeros((self.local,), np.int32)
    if len(valid):
      image[:len(valid)], label[:len(valid)] = self.source.eval_examples(valid)
    return {'image': image, 'label': label, 'mask': mask}


# Decode threads at most: each holds one batch in the prefetch buffer, and
# 32 cores decode over 20,000 ImageNet images/s (benchmarks/input_pipeline).
MAX_DECODE_THREADS = 32


def default_num_threads(source: Any, prefetch: int) -> int:
  """Threads building batches when the caller does not say.

  A source whose batches are decode-bound (``source.decode_bound``, e.g.
  JPEG files: the decoders run in C with the GIL released) gets one thread
  per core this process may use (up to `MAX_DECODE_THREADS`), so one process
  feeds the whole host without worker processes; any other source gets
  `prefetch` threads.
  """
  if getattr(source, 'decode_bound', False):
    cores = min(len(os.sched_getaffinity(0)), MAX_DECODE_THREADS)
    return max(prefetch, cores)
  return prefetch


def _iterate(ds: grain.MapDataset, worker_count: int, prefetch: int,
             num_threads: int | None, source: Any) -> grain.DatasetIterator:
  dataset_digest.check_processes_agree(source.info)  # every host: the same
  if worker_count < 0 or prefetch < 0:
    raise ValueError(f'worker_count={worker_count} and prefetch={prefetch} '
                     'must be >= 0.')
  if num_threads is None:
    num_threads = default_num_threads(source, prefetch)
  if num_threads < 0:
    raise ValueError(f'num_threads={num_threads} must be >= 0.')
  if prefetch == 0:
    num_threads = 0
  it_ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads,
      prefetch_buffer_size=max(prefetch, num_threads)))
  if worker_count > 0:
    # grain's worker processes read absl flags; outside absl.app (tests,
    # notebooks) nothing has parsed them, so take the defaults.
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=max(1, prefetch)))
  return iter(it_ds)


def create_train_iterator(dataset: str, data_dir: str | None,
                          global_batch_size: int, seed: int,
                          start_step: int = 0,
                          process_index: int | None = None,
                          process_count: int | None = None,
                          worker_count: int = 0, prefetch: int = 2,
                          num_threads: int | None = None,
                          **options: Any) -> Iterator[Batch]:
  """An infinite iterator over this host's rows of the training batches.

  Args:
    dataset: dataset name (see the module docstring).
    data_dir: where its files are.
    global_batch_size: B, rows per step over all hosts.
    seed: decides each epoch's order and the augmentation.
    start_step: first step yielded (resume: the same batches as a fresh
      iterator after skipping `start_step` batches).
    process_index, process_count: this host and the number of hosts
      (default: jax.process_index(), jax.process_count()).
    worker_count: grain worker processes (0: build batches in this process).
    prefetch: batches prepared ahead by background threads (0: none, built
      on demand).
    num_threads: threads building batches (default: `default_num_threads`:
      one per core for JPEG sources, else `prefetch`).
    **options: the dataset's options.

  Returns:
    Iterator of ``{'image': float32 [B/P, H, W, C] normalised,
    'label': int32 [B/P]}`` (a grain DatasetIterator; call ``close()`` on it
    when done if worker_count > 0).

  Raises:
    ValueError: global_batch_size not divisible by process_count, bad
      arguments or unknown dataset/option.
    DataNotFoundError: the dataset's files are missing.
  """
  index, count = _hosts(process_index, process_count)
  _check_batch(global_batch_size, count)
  if start_step < 0:
    raise ValueError(f'start_step={start_step} must be >= 0.')
  source = get_source(dataset, data_dir, **options)
  steps_per_epoch(source.info, global_batch_size)  # Checks B <= num_train.
  ds = grain.MapDataset.range(int(start_step), sys.maxsize).map(
      _TrainBatch(source, int(global_batch_size), int(seed), index, count))
  return _iterate(ds, worker_count, prefetch, num_threads, source)


def create_eval_iterator(dataset: str, data_dir: str | None,
                         global_batch_size: int,
                         process_index: int | None = None,
                         process_count: int | None = None,
                         worker_count: int = 0, prefetch: int = 2,
                         num_threads: int | None = None,
                         **options: Any) -> Iterator[Batch]:
  """One in-order pass over the eval split, this host's rows of each batch.

  Global batch k holds eval examples ``[k*B, (k+1)*B)``; host p gets rows
  ``[p*B/P, (p+1)*B/P)`` of it. There are `num_eval_batches` batches.

  Returns:
    Iterator of ``{'image': float32 [B/P, H, W, C], 'label': int32 [B/P],
    'mask': bool [B/P]}``; mask is False on the padding of the last batch
    (zero image, label 0).
  """
  index, count = _hosts(process_index, process_count)
  _check_batch(global_batch_size, count)
  source = get_source(dataset, data_dir, **options)
  num_batches = num_eval_batches(source.info, global_batch_size)
  ds = grain.MapDataset.range(num_batches).map(
      _EvalBatch(source, int(global_batch_size), index, count))
  return _iterate(ds, worker_count, prefetch, num_threads, source)
