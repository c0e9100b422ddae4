"""Listing one split of an image folder: its classes, images and the rest.

A split folder holds one sub-folder per class (``train/<class>/...``), or,
for ILSVRC2012's official validation layout, the images themselves with no
class folders (``val/ILSVRC2012_val_00000001.JPEG``: "flat"; the labels come
from a label file, `ilsvrc_val`). Class folders are searched recursively and
their images taken in torchvision ``ImageFolder``'s order: class by sorted
folder name, then ``sorted(os.walk(...))``'s order (by sub-folder path, then
file name). Hidden names (starting with ".") are skipped; other files
without an image extension are not images: ignored, and counted. Images
directly in a split folder that has class folders are what
``ilsvrc_val --mode=copy`` (or ``symlink``) leaves: ignored and counted when
each is also in a class folder, refused (as an interrupted sort's
leftovers) when one is not.

Local folders are walked with `os.scandir`; any other URL (``gs://...``)
through fsspec (the ``[gcs]`` extra), which lists a whole bucket prefix in
pages of 1,000. A local listing also records every folder's modification
time, which changes whenever an entry is added, removed or renamed in it:
the cheap, exact test of whether a cached listing still holds (`manifest`).
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
from typing import Any

from ovsw_jax.data import image_files
from ovsw_jax.data.source import DataNotFoundError


@dataclasses.dataclass
class SplitListing:
  """One split folder's images in example order, and what else it holds.

  Attributes:
    root: the split folder (absolute, or a URL).
    classes: the class folder names, sorted; () for a flat folder.
    files: each image's path relative to `root` ('/'-separated).
    class_index: each image's index into `classes` (0 when flat).
    sizes: each image's size in bytes.
    non_images: how many files were not images (ignored).
    non_image_example: one of them (relative path), for the message.
    loose_images: images directly in `root` beside class folders (ignored:
      what `ilsvrc_val --mode=copy` leaves), each also in a class folder.
    unsorted: those in no class folder (an interrupted sort's leftovers:
      `check_listing` refuses them), and one of them.
    dir_mtimes: relative folder ('' for root) -> mtime in ns; local only.
  """
  root: str
  classes: tuple[str, ...]
  files: list[str]
  class_index: list[int]
  sizes: list[int]
  non_images: int = 0
  non_image_example: str | None = None
  loose_images: int = 0
  unsorted: int = 0
  unsorted_example: str | None = None
  dir_mtimes: dict[str, int] | None = None

  @property
  def flat(self) -> bool:
    return not self.classes

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> 'SplitListing':
    fields = {f.name for f in dataclasses.fields(cls)}
    d = {k: v for k, v in d.items() if k in fields}
    d['classes'] = tuple(d['classes'])
    return cls(**d)


def is_remote(path: str) -> bool:
  return '://' in os.fspath(path)


def join(root: str, rel: str) -> str:
  if not rel:
    return root
  return posixpath.join(root, rel) if is_remote(root) else os.path.join(
      root, *rel.split('/'))


def _walk_local(root: str) -> tuple[list[tuple[str, int]], list[str],
                                    dict[str, int]]:
  """(files as (rel path, size), folders, folder mtimes) under root."""
  files: list[tuple[str, int]] = []
  folders: list[str] = []
  mtimes: dict[str, int] = {}
  stack = ['']
  while stack:
    rel = stack.pop()
    path = join(root, rel)
    mtimes[rel] = os.stat(path).st_mtime_ns
    with os.scandir(path) as it:
      for entry in it:
        if entry.name.startswith('.'):
          continue
        child = f'{rel}/{entry.name}' if rel else entry.name
        if entry.is_dir():  # follows symlinks, as ImageFolder's os.walk
          stack.append(child)
          folders.append(child)
        else:
          files.append((child, entry.stat().st_size))
  return files, folders, mtimes


def _walk_remote(root: str) -> tuple[list[tuple[str, int]], list[str], None]:
  try:
    import fsspec  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'listing {root} needs fsspec and gcsfs: pip install '
                      '"ovsw_jax[gcs]"') from e
  fs, path = fsspec.core.url_to_fs(root)
  path = path.rstrip('/')
  found = fs.find(path, detail=True, withdirs=True)
  files, folders = [], []
  for name, info in found.items():
    rel = name[len(path):].strip('/')
    if not rel or any(part.startswith('.') for part in rel.split('/')):
      continue
    if info.get('type') == 'directory':
      folders.append(rel)
    else:
      files.append((rel, int(info.get('size') or 0)))
      # Object stores have no folders: a file's prefixes are its folders.
      folders.extend('/'.join(rel.split('/')[:k])
                     for k in range(1, rel.count('/') + 1))
  return files, sorted(set(folders)), None


def list_split(root: str, what: str) -> SplitListing:
  """Lists one split folder (see the module docstring).

  Args:
    root: the split folder.
    what: how messages name the dataset and split, e.g. "imagefolder train".

  Raises:
    DataNotFoundError: root is not a folder.
    ValueError: no images, or a class folder without images.
  """
  try:
    files, folders, mtimes = (_walk_remote(root) if is_remote(root)
                              else _walk_local(root))
  except (FileNotFoundError, NotADirectoryError) as e:
    raise DataNotFoundError(f'{what}: {root} is not a folder ({e}); see '
                            'docs/imagefolder.md for the layout') from e
  classes = tuple(sorted(f for f in folders if '/' not in f))
  index = {c: i for i, c in enumerate(classes)}
  kept, non_images, loose = [], [], []
  for rel, size in files:
    top = rel.split('/')[0]
    in_class = '/' in rel and top in index
    if image_files.is_image_name(rel) and (in_class or not classes):
      kept.append((index[top] if in_class else 0, posixpath.dirname(rel),
                   posixpath.basename(rel), size))
    elif image_files.is_image_name(rel) and '/' not in rel:
      loose.append(rel)  # beside the class folders
    else:
      non_images.append(rel)
  kept.sort()  # ImageFolder's order: class, sub-folder path, file name.
  sorted_names = {f for _, _, f, _ in kept}
  unsorted = sorted(n for n in loose if n not in sorted_names)
  listing = SplitListing(
      root=root, classes=classes,
      files=[posixpath.join(d, f) if d else f for _, d, f, _ in kept],
      class_index=[c for c, _, _, _ in kept], sizes=[s for *_, s in kept],
      non_images=len(non_images),
      non_image_example=min(non_images) if non_images else None,
      loose_images=len(loose) - len(unsorted), unsorted=len(unsorted),
      unsorted_example=unsorted[0] if unsorted else None,
      dir_mtimes=mtimes)
  check_listing(listing, what)
  return listing


def check_listing(listing: SplitListing, what: str) -> None:
  """Raises naming the folder when there are no images, images beside the
  class folders in none of them, or an empty class."""
  root = listing.root
  if not listing.files:
    ignored = (f'; {listing.non_images} non-image files were ignored, e.g. '
               f'{join(root, listing.non_image_example)}'
               if listing.non_images else '')
    raise ValueError(
        f'{what}: no images under {root} (expected '
        f'{join(root, "<class>/<image>.jpg")}, one folder per class, with '
        f'one of the extensions {", ".join(image_files.IMAGE_EXTENSIONS)})'
        f'{ignored}')
  if listing.unsorted:
    raise ValueError(
        f'{what}: {root} holds {listing.unsorted} images beside its class '
        'folders and in none of them, e.g. '
        f'{join(root, listing.unsorted_example)}: leftover flat images of '
        'an interrupted sort? Finish it: python -m ovsw_jax.data.ilsvrc_val '
        f'--val_dir={root} --labels=<the same label file>; otherwise move '
        'them into their class folders, or delete them')
  counts = class_counts(listing)
  empty = [c for c, n in zip(listing.classes, counts) if n == 0]
  if empty:
    raise ValueError(
        f'{what}: class folder {join(root, empty[0])} holds no images'
        f'{f" (nor do {len(empty) - 1} more)" if len(empty) > 1 else ""};'
        ' add images to it or remove the folder')


def class_counts(listing: SplitListing) -> list[int]:
  """Images per class folder (one count for a flat folder)."""
  counts = [0] * max(1, len(listing.classes))
  for c in listing.class_index:
    counts[c] += 1
  return counts
