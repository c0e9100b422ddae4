"""Image datasets prepared as array_record shards, read without TensorFlow.

`ovsw_jax.data.prepare` writes, into one folder::

  dataset_info.json                      classes, splits, shards, counts
  train-00000-of-00512.array_record ...  one record per image
  val-00000-of-00016.array_record ...

Each record is one example: ``b'OVR1'``, the label (int32, little-endian),
the length of the image's name (uint16) and the name (UTF-8: its path in
the image folder or archive, for messages; cut at 65,535 bytes, between
characters), then the image file's bytes as they were (JPEG, PNG, ...). A
record that is not whole is refused naming its shard and index. Records are in ImageFolder's order (class, then
path), so example ``i`` here is example ``i`` of the image folder it was
prepared from, and both datasets give the same batches for a seed.

``dataset="image_records"`` reads it, with the ImageNet transforms of
`imagenet_transform` (the options of the imagefolder dataset that concern
images). dataset_info.json is written last, so an unfinished prepare is
refused with the command that finishes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import threading
from typing import Any, Sequence

import numpy as np

from ovsw_jax.data import dataset_digest
from ovsw_jax.data import encoded_source
from ovsw_jax.data import folder_listing
from ovsw_jax.data import tfds_options
from ovsw_jax.data.source import DataNotFoundError

NAME = 'image_records'
FORMAT = 'ovsw_jax.image_records'
VERSION = 1
INFO_FILE = 'dataset_info.json'
MAGIC = b'OVR1'
_HEAD = struct.Struct('<4siH')
_MAX_NAME = 2**16 - 1  # bytes: the name's length is a uint16

_SOURCES: dict[tuple[str, ...], Any] = {}
_LOCK = threading.Lock()


def encode_record(label: int, name: str, data: bytes) -> bytes:
  """One example as a record (module docstring); a name over 65,535 bytes
  of UTF-8 (it is for messages) is cut there, between characters."""
  raw = name.encode('utf-8')
  if len(raw) > _MAX_NAME:
    raw = raw[:_MAX_NAME].decode('utf-8', 'ignore').encode('utf-8')
  return _HEAD.pack(MAGIC, int(label), len(raw)) + raw + data


def decode_record(record: bytes,
                  where: str = 'a record') -> tuple[int, str, bytes]:
  """(label, name, image bytes) of a record.

  Args:
    record: the record's bytes.
    where: the record, for messages (e.g. its shard and index).

  Raises:
    ValueError: not a whole record of this format, naming `where` and the
      fix (write its shard again).
  """
  problem, n = None, 0
  if len(record) < _HEAD.size:
    problem = f'has {len(record)} bytes, fewer than a record\'s header'
  else:
    magic, label, n = _HEAD.unpack_from(record)
    if magic != MAGIC:
      problem = f'starts with {magic!r}, not {MAGIC!r}'
    elif len(record) < _HEAD.size + n:
      problem = f'is cut short inside its {n}-byte name'
  if problem is None:
    start = _HEAD.size
    try:
      return label, record[start:start + n].decode('utf-8'), record[
          start + n:]
    except UnicodeDecodeError as e:
      problem = f'has a name that is not UTF-8 ({e.reason})'
  raise ValueError(
      f'{where} {problem}: not a whole {NAME} record, so its shard is '
      'damaged; delete the shard and its marker (.prepare/<shard>.json) and '
      'rerun python -m ovsw_jax.data.prepare with the same --out to write '
      'it again')


def shard_name(split: str, k: int, n: int) -> str:
  return f'{split}-{k:05d}-of-{n:05d}.array_record'


def read_info(data_dir: str | None) -> dict[str, Any]:
  """The folder's dataset_info.json.

  Raises:
    DataNotFoundError: there is none (not prepared, or not finished).
  """
  if not data_dir:
    raise ValueError(f'{NAME}: no data_dir; pass --config.data_dir=<the '
                     'folder written by python -m ovsw_jax.data.prepare>')
  path = folder_listing.join(data_dir, INFO_FILE)
  try:
    if folder_listing.is_remote(path):
      from etils import epath  # pylint: disable=g-import-not-at-top
      text = epath.Path(path).read_text()
    else:
      with open(path, encoding='utf-8') as f:
        text = f.read()
  except (FileNotFoundError, OSError) as e:
    raise DataNotFoundError(
        f'{NAME}: {path} not found: {data_dir} is not a finished prepare '
        'output; run (or rerun, to finish) python -m ovsw_jax.data.prepare '
        f'--out={data_dir} with its input') from e
  info = json.loads(text)
  if info.get('format') != FORMAT or info.get('version', 0) > VERSION:
    raise DataNotFoundError(f'{NAME}: {path} is not an {FORMAT} version <= '
                            f'{VERSION} description; prepare it again')
  return info


def _split(info: dict[str, Any], split: str, data_dir: str) -> dict:
  if split not in info['splits']:
    raise ValueError(f'{NAME}: {data_dir} has no split {split!r}; it has '
                     f'{sorted(info["splits"])}')
  return info['splits'][split]


def _data_source(data_dir: str, shards: tuple[tuple[str, int], ...]):
  """An ArrayRecordDataSource over the shards, opened once per process."""
  key = (data_dir, *[f for f, _ in shards])
  with _LOCK:
    if key not in _SOURCES:
      from array_record.python import array_record_data_source as ards  # pylint: disable=g-import-not-at-top
      paths = [f'{folder_listing.join(data_dir, f)}[0:{n}]'
               for f, n in shards]
      try:
        ds = ards.ArrayRecordDataSource(paths)
        if len(ds):
          ds[0]  # pylint: disable=pointless-statement  # opens a reader
      except RuntimeError as e:
        raise DataNotFoundError(
            f'{NAME}: cannot read {paths[0].split("[")[0]} ({e}). array_record '
            'reads local files only: mount the bucket (gcsfuse '
            '--implicit-dirs <bucket> <dir>) or copy the folder to local '
            'disk, and set data_dir there') from e
      _SOURCES[key] = ds
    return _SOURCES[key]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageRecordsSource(encoded_source.EncodedImageSource):
  """A prepared folder; cheap to pickle (readers are opened per process)."""
  data_dir: str
  train_shards: tuple[tuple[str, int], ...]
  eval_shards: tuple[tuple[str, int], ...]

  def _shards(self, split: str) -> tuple[tuple[str, int], ...]:
    return (self.train_shards if split == encoded_source.TRAIN
            else self.eval_shards)

  def record_where(self, split: str, index: int) -> str:
    """Example `index` of `split` as its shard's path and record number."""
    ends = np.cumsum([n for _, n in self._shards(split)])
    k = int(np.searchsorted(ends, index, side='right'))
    first = int(ends[k - 1]) if k else 0
    return (f'{folder_listing.join(self.data_dir, self._shards(split)[k][0])}'
            f' record {index - first}')

  def encoded(self, split, indices):
    ds = _data_source(self.data_dir, self._shards(split))
    records = ds.__getitems__([int(i) for i in indices])
    try:
      out = [decode_record(r) for r in records]
    except ValueError:
      # Again, naming each record's shard: raises at the first bad one.
      out = [decode_record(r, self.record_where(split, int(i)))
             for i, r in zip(indices, records)]
    names = [f'{self.data_dir}: {n}' for _, n, _ in out]
    return ([d for _, _, d in out], names,
            np.asarray([l for l, _, _ in out], np.int32))


def make_source(data_dir: str | None = None, *,
                image_size: int | Sequence[int] = 224,
                train_split: str = 'train', eval_split: str = 'val',
                augment: bool = True, min_scale: float = 0.08,
                lighting: float = 0.0,
                mean: Sequence[float] = encoded_source.IMAGENET_MEAN,
                std: Sequence[float] = encoded_source.IMAGENET_STD,
                decoder: str = 'auto',
                device_normalize: bool = False) -> ImageRecordsSource:
  """The prepared dataset in `data_dir` (module docstring).

  Args:
    data_dir: the folder `ovsw_jax.data.prepare` wrote (local; a bucket
      through a gcsfuse mount).
    image_size, augment, min_scale, lighting, mean, std, decoder,
      device_normalize: as for the imagefolder dataset
      (`imagefolder.make_source`).
    train_split, eval_split: split names in dataset_info.json.

  Raises:
    DataNotFoundError: not a finished prepare output.
  """
  info = read_info(data_dir)
  size = tfds_options.output_size(NAME, image_size, None)
  decoder = tfds_options.check_image_options(NAME, 3, lighting,
                                             device_normalize, decoder)
  train = _split(info, train_split, data_dir)
  ev = _split(info, eval_split, data_dir)
  as_tuple = lambda s: tuple((d['file'], int(d['num_records']))
                             for d in s['shards'])
  # The shards' contents stand for the examples (their sha256s).
  digest = dataset_digest.listing_digest(info['classes'], [
      ([f'{d["file"]} {d["sha256"]}' for d in s['shards']],
       [d['num_records'] for d in s['shards']]) for s in (train, ev)])
  return ImageRecordsSource.create(
      NAME, size, info['classes'], train['num_examples'], ev['num_examples'],
      mean=mean, std=std, augment=augment, min_scale=min_scale,
      lighting=lighting, decoder=decoder, device_normalize=device_normalize,
      corrupt_option='--skip_corrupt of ovsw_jax.data.prepare',
      data_dir=os.fspath(data_dir), train_shards=as_tuple(train),
      eval_shards=as_tuple(ev), digest=digest)
