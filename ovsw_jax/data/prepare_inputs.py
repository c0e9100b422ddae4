"""What `prepare` reads: an image folder, or ILSVRC2012's archives.

Either input becomes a `Plan`: the classes, and per split the examples in
the order the image-folder dataset takes them (class, then path), each with
where its bytes are (`Locator`):

- an image folder: the imagefolder dataset's own listing
  (`imagefolder.read_examples`: the same classes, files, order, manifest
  and checks), listed afresh, with each file's size;
- ``ILSVRC2012_img_train.tar``: one inner tar per class
  (``n01440764.tar``), the class folders of the extracted layout; members
  are indexed in place (tar headers only, in parallel), never extracted;
- ``ILSVRC2012_img_val.tar``: the 50,000 images, flat, labelled by a label
  file (`ilsvrc_val`).

Extracting the train archive gives the folder that yields the same plan.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
from typing import Callable, NamedTuple, Sequence

from ovsw_jax.data import folder_listing
from ovsw_jax.data import ilsvrc_val
from ovsw_jax.data import image_files
from ovsw_jax.data import imagefolder

TRAIN, EVAL = 'train', 'val'  # the split names prepare writes


class Locator(NamedTuple):
  """Where one example's bytes are: a file, or a byte range of an archive."""
  path: str
  offset: int = -1  # -1: the whole file
  size: int = -1


class Example(NamedTuple):
  label: int
  name: str  # for messages, and recorded in the record
  where: Locator


class Plan(NamedTuple):
  classes: tuple[str, ...]
  splits: dict[str, list[Example]]
  source: dict  # what was read, for dataset_info.json


def read_bytes(where: Locator) -> bytes:
  """An example's encoded image."""
  if where.offset < 0:
    return imagefolder.read_file(where.path)
  with open(where.path, 'rb') as f:
    f.seek(where.offset)
    return f.read(where.size)


def folder_plan(data_dir: str, *, train_split: str = 'train',
                eval_split: str = 'val', eval_labels: str | None = None,
                classes: Sequence[str] | None = None) -> Plan:
  """An image folder's plan (its listing checks apply: `imagefolder`).

  The folder is listed afresh (``manifest_check='full'``, nothing cached
  in this process: a file rewritten in place leaves its folder's time as it
  was), so every example carries
  its current size, which a shard's fingerprint holds. Every image is
  planned, corrupt or not: the shard writer decodes each once and skips
  (and records) the corrupt ones (`record_shards`).
  """
  ex = imagefolder.read_examples(
      data_dir, train_split, eval_split,
      tuple(classes) if classes is not None else None, eval_labels,
      False, None, 'full')
  splits = {}
  for name, s in ((TRAIN, ex.train), (EVAL, ex.eval)):
    splits[name] = [
        Example(int(l), f, Locator(folder_listing.join(s.root, f), size=n))
        for f, l, n in zip(s.files, s.labels, s.sizes)]
  return Plan(ex.classes, splits, {'image_folder': data_dir,
                                   'train_split': train_split,
                                   'eval_split': eval_split})


class _Slice(io.RawIOBase):
  """A byte range of a file, as a file (an inner tar of the train tar)."""

  def __init__(self, f, offset: int, size: int):
    super().__init__()
    self._f, self._offset, self._size, self._pos = f, offset, size, 0

  def readable(self) -> bool:
    return True

  def seekable(self) -> bool:
    return True

  def tell(self) -> int:
    return self._pos

  def seek(self, pos: int, whence: int = 0) -> int:
    base = (0, self._pos, self._size)[whence]
    self._pos = max(0, min(self._size, base + pos))
    return self._pos

  def readinto(self, b) -> int:
    n = min(len(b), self._size - self._pos)
    self._f.seek(self._offset + self._pos)
    data = self._f.read(n)
    b[:len(data)] = data
    self._pos += len(data)
    return len(data)


def _members(f, offset: int = 0, size: int | None = None
             ) -> list[tuple[str, int, int]]:
  """(name, absolute data offset, size) of a tar's files (headers only)."""
  if size is None:
    size = os.fstat(f.fileno()).st_size
  with tarfile.open(fileobj=_Slice(f, offset, size), mode='r:') as tar:
    return [(m.name, offset + m.offset_data, m.size) for m in tar
            if m.isfile()]


def index_inner_tar(path: str, offset: int, size: int
                    ) -> list[tuple[str, int, int]]:
  """The image members of one inner tar of the train tar."""
  with open(path, 'rb') as f:
    return [m for m in _members(f, offset, size)
            if image_files.is_image_name(m[0])
            and not image_files.is_hidden(m[0])]


def tar_plan(train_tar: str, val_tar: str | None, val_labels: str | None,
             map_fn: Callable = map) -> Plan:
  """The plan of ILSVRC2012's train tar (and val tar + its labels).

  Args:
    map_fn: maps `index_inner_tar` over the inner tars (a process pool's).

  Raises:
    FileNotFoundError: an archive or the label file is missing.
    ValueError: an archive that is not laid out as ILSVRC2012's.
  """
  for p in (train_tar, val_tar):
    if p and not os.path.isfile(p):
      raise FileNotFoundError(f'{p} not found; pass the path of '
                              'ILSVRC2012_img_train.tar (or _val.tar)')
  with open(train_tar, 'rb') as f:
    inner = sorted((posixpath.basename(n), o, s) for n, o, s in _members(f)
                   if n.endswith('.tar'))
  if not inner:
    raise ValueError(f'{train_tar} holds no per-class .tar files; '
                     'ILSVRC2012_img_train.tar holds one (n01440764.tar ...)'
                     ' per class')
  classes = tuple(n[:-len('.tar')] for n, _, _ in inner)
  indexed = map_fn(index_inner_tar, [train_tar] * len(inner),
                   [o for _, o, _ in inner], [s for _, _, s in inner])
  train = []
  for label, (cls, members) in enumerate(zip(classes, indexed)):
    if not members:
      raise ValueError(f'{train_tar}: {cls}.tar holds no images; the '
                       'archive is damaged, download it again')
    train += [Example(label, f'{cls}/{posixpath.basename(n)}',
                      Locator(train_tar, o, s))
              for n, o, s in sorted(members,
                                    key=lambda m: posixpath.basename(m[0]))]
  splits = {TRAIN: train}
  if val_tar:
    splits[EVAL] = _val_examples(val_tar, val_labels, classes)
  return Plan(classes, splits, {'train_tar': train_tar, 'val_tar': val_tar,
                                'val_labels': val_labels})


def _val_examples(val_tar: str, val_labels: str | None,
                  classes: Sequence[str]) -> list[Example]:
  if not val_labels:
    raise ValueError(f'{val_tar} holds unlabelled images: pass --val_labels='
                     '<ILSVRC2012_devkit_t12.tar.gz or a label file>')
  with open(val_tar, 'rb') as f:
    members = [m for m in _members(f) if image_files.is_image_name(m[0])]
  names = sorted(posixpath.basename(n) for n, _, _ in members)
  where = {posixpath.basename(n): (o, s) for n, o, s in members}
  labels = ilsvrc_val.resolve(
      ilsvrc_val.read_labels(val_labels, names, val_tar), names, classes,
      f'{val_tar} ({val_labels})')
  return [Example(l, n, Locator(val_tar, *where[n]))
          for l, n in sorted(zip(labels, names))]
