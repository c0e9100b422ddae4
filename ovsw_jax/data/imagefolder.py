"""Images in class folders, as torchvision's ImageFolder reads them.

``data_dir`` holds a folder per split (``train/`` and ``val/`` by default:
`train_split`, `eval_split`) and, in each, a folder per class::

  data_dir/train/<class>/<image>.JPEG    data_dir/val/<class>/<image>.JPEG

Labels number the class folders in sorted order (torchvision's numbering);
the run records the names (`DatasetInfo.class_names`; ``classes`` in the
run's config.json), so a packed model keeps them. The eval split may also be
ILSVRC2012's official flat folder plus its label file (`eval_labels`,
`ilsvrc_val`). Examples are taken in ImageFolder's order (class, then path);
the transforms are ImageNet's (`imagenet_transform`), at `image_size`.

The file list of each split is cached as a manifest and checked on every use
(`manifest`). Bad input stops with one line naming the path and the fix: a
missing split folder, no images, an empty class folder, train and eval
splits with different classes, a corrupt image (or, with ``skip_corrupt``,
corrupt images are found up front, left out and counted). Files that are not
images are ignored and counted. Every process checks that it lists the
examples the source was built on (`dataset_digest`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from typing import NamedTuple, Sequence

from absl import logging
import numpy as np

from ovsw_jax.data import dataset_digest
from ovsw_jax.data import encoded_source
from ovsw_jax.data import folder_listing
from ovsw_jax.data import ilsvrc_val
from ovsw_jax.data import manifest
from ovsw_jax.data import tfds_options
from ovsw_jax.data.source import DataNotFoundError

NAME = 'imagefolder'
_LOCK = threading.Lock()


class Split(NamedTuple):
  root: str
  files: tuple[str, ...]   # relative to root
  labels: np.ndarray       # int32
  sizes: tuple[int, ...]   # bytes, as listed


class Examples(NamedTuple):
  classes: tuple[str, ...]
  train: Split
  eval: Split
  digest: str  # of classes, files and labels (`dataset_digest`)


def read_file(path: str) -> bytes:
  """A file's bytes: local, or any fsspec URL (gs://...)."""
  if folder_listing.is_remote(path):
    import fsspec  # pylint: disable=g-import-not-at-top
    fs, p = fsspec.core.url_to_fs(path)
    return fs.cat_file(p)
  with open(path, 'rb') as f:
    return f.read()


def _check_dirs(data_dir: str | None, splits: Sequence[str]) -> None:
  if not data_dir:
    raise ValueError(f'{NAME}: no data_dir; pass --config.data_dir=<folder '
                     'holding train/ and val/, one sub-folder per class>')
  if folder_listing.is_remote(data_dir):
    return  # a missing folder shows as an empty listing
  if not os.path.isdir(data_dir):
    raise DataNotFoundError(f'{NAME}: data_dir={data_dir} is not a folder; '
                            'pass the folder holding train/ and val/')
  for key, split in zip(('train_split', 'eval_split'), splits):
    if not os.path.isdir(os.path.join(data_dir, split)):
      have = sorted(d for d in os.listdir(data_dir) if not d.startswith('.')
                    and os.path.isdir(os.path.join(data_dir, d)))
      raise DataNotFoundError(
          f'{NAME}: {os.path.join(data_dir, split)} is not a folder ('
          f'{data_dir} holds {have or "no folders"}); set '
          f'dataset_options.{key} to the folder of that split')


def _report(what: str, listing: folder_listing.SplitListing,
            corrupt: dict[str, str] | None) -> None:
  if listing.non_images:
    logging.warning('%s: ignored %d files that are not images in class '
                    'folders, e.g. %s.', what, listing.non_images,
                    folder_listing.join(listing.root,
                                        listing.non_image_example))
  if listing.loose_images:
    logging.warning('%s: ignored %d flat images beside the class folders of '
                    '%s (each is also in its class folder, as ilsvrc_val '
                    '--mode=copy leaves them).', what, listing.loose_images,
                    listing.root)
  if corrupt:
    first = min(corrupt)
    logging.warning('%s: skipped %d corrupt images (skip_corrupt=True), e.g. '
                    '%s: %s.', what, len(corrupt),
                    folder_listing.join(listing.root, first), corrupt[first])


def _keep(listing, corrupt, labels: Sequence[int]) -> Split:
  """The listing's images with a label (>= 0) and not corrupt, ordered by
  (label, path): ImageFolder's order."""
  bad = corrupt or {}
  kept = sorted((int(l), f, n) for f, l, n in zip(listing.files, labels,
                                                  listing.sizes)
                if l >= 0 and f not in bad)
  return Split(listing.root, tuple(f for _, f, _ in kept),
               np.asarray([l for l, _, _ in kept], np.int32),
               tuple(n for _, _, n in kept))


def _class_labels(listing, classes: Sequence[str], what: str) -> list[int]:
  """Each image's label: its class folder's index in `classes` (-1: a
  folder left out by the ``classes`` option)."""
  index = {c: i for i, c in enumerate(classes)}
  missing = [c for c in classes if c not in set(listing.classes)]
  if missing:
    raise ValueError(f'{what}: {listing.root} lacks the class folder(s) '
                     f'{missing[:5]}; every class needs a folder in every '
                     'split')
  return [index.get(listing.classes[c], -1) for c in listing.class_index]


def read_examples(data_dir: str, train_split: str, eval_split: str,
                  classes: tuple[str, ...] | None, eval_labels: str | None,
                  skip_corrupt: bool, manifest_dir: str | None,
                  manifest_check: str) -> Examples:
  """Both splits' files and labels, read now (`examples` caches them)."""
  _check_dirs(data_dir, (train_split, eval_split))
  verify = read_file if skip_corrupt else None
  load = functools.partial(manifest.load_listing, data_dir,
                           manifest_dir=manifest_dir, check=manifest_check,
                           verify_with=verify)
  what = f'{NAME} {train_split}'
  train, train_bad = load(train_split, what)
  if train.flat:
    raise ValueError(f'{what}: {train.root} holds images but no class '
                     f'folders; put each class\'s images in '
                     f'{folder_listing.join(train.root, "<class>/")}')
  chosen = tuple(classes) if classes is not None else train.classes
  ev_what = f'{NAME} {eval_split}'
  ev, ev_bad = load(eval_split, ev_what)
  if ev.flat:
    ev_labels = _flat_labels(ev, eval_labels, train.classes, chosen, ev_what)
  else:
    if eval_labels:
      raise ValueError(f'{ev_what}: eval_labels={eval_labels} is for a '
                       f'flat folder, but {ev.root} has class folders; drop '
                       'eval_labels')
    if classes is None and ev.classes != train.classes:
      only_ev = sorted(set(ev.classes) - set(train.classes))[:5]
      only_tr = sorted(set(train.classes) - set(ev.classes))[:5]
      raise ValueError(
          f'{NAME}: {ev.root} and {train.root} have different class folders'
          f' (only in {eval_split}: {only_ev}; only in {train_split}: '
          f'{only_tr}); both splits need the same classes')
    ev_labels = _class_labels(ev, chosen, ev_what)
  tr_labels = _class_labels(train, chosen, what)
  _report(what, train, train_bad)
  _report(ev_what, ev, ev_bad)
  tr_split = _keep(train, train_bad, tr_labels)
  ev_split = _keep(ev, ev_bad, ev_labels)
  return Examples(chosen, tr_split, ev_split, dataset_digest.listing_digest(
      chosen, [(s.files, s.labels) for s in (tr_split, ev_split)]))


# Both splits' files and labels, cached per process.
examples = functools.lru_cache(maxsize=8)(read_examples)


def _flat_labels(ev, eval_labels, all_classes, chosen, what) -> list[int]:
  if not eval_labels:
    raise ValueError(
        f'{what}: {ev.root} holds images and no class folders (ILSVRC2012\'s '
        'validation layout); pass dataset_options.eval_labels=<the devkit '
        'or a label file>, or sort it once: python -m ovsw_jax.data.'
        f'ilsvrc_val --val_dir={ev.root} --labels=<label file>')
  labels = ilsvrc_val.read_labels(eval_labels, ev.files, ev.root)
  full = ilsvrc_val.resolve(labels, ev.files, all_classes,
                            f'{what} ({eval_labels})')
  index = {c: i for i, c in enumerate(chosen)}
  return [index.get(all_classes[l], -1) for l in full]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageFolderSource(encoded_source.EncodedImageSource):
  """An image folder; cheap to pickle (lists are loaded per process)."""
  data_dir: str
  train_split: str
  eval_split: str
  classes: tuple[str, ...] | None  # as given (None: all)
  eval_labels: str | None
  skip_corrupt: bool
  manifest_dir: str | None
  manifest_check: str

  def _examples(self) -> Examples:
    """The examples, listed once per process (a grain worker lists them
    again: they must be the ones the source was built on)."""
    with _LOCK:
      ex = examples(self.data_dir, self.train_split, self.eval_split,
                    self.classes, self.eval_labels, self.skip_corrupt,
                    self.manifest_dir, self.manifest_check)
    if ex.digest != self.info.digest:
      raise ValueError(
          f'{NAME}: this process lists {len(ex.train.files)} train / '
          f'{len(ex.eval.files)} eval images in {self.data_dir} (digest '
          f'{ex.digest[:12]}), but the source was built on '
          f'{dataset_digest.describe(self.info)}: the folder changed since, '
          'or this process sees another copy; keep the folder unchanged '
          'while a run reads it, and start the run again')
    return ex

  def encoded(self, split, indices):
    ex = self._examples()
    s = ex.train if split == encoded_source.TRAIN else ex.eval
    names = [folder_listing.join(s.root, s.files[int(i)]) for i in indices]
    return [read_file(n) for n in names], names, s.labels[indices]


def make_source(data_dir: str | None = None, *,
                image_size: int | Sequence[int] = 224,
                train_split: str = 'train', eval_split: str = 'val',
                classes: Sequence[str] | None = None,
                eval_labels: str | None = None, skip_corrupt: bool = False,
                augment: bool = True, min_scale: float = 0.08,
                lighting: float = 0.0,
                mean: Sequence[float] = encoded_source.IMAGENET_MEAN,
                std: Sequence[float] = encoded_source.IMAGENET_STD,
                decoder: str = 'auto', device_normalize: bool = False,
                manifest_dir: str | None = None,
                manifest_check: str = 'auto') -> ImageFolderSource:
  """An image-folder dataset (module docstring).

  Args:
    data_dir: the folder holding the split folders (local or gs://).
    image_size: output size, an int (square) or (H, W).
    train_split, eval_split: the split folders' names.
    classes: the class folders to use, in label order; None: every class
      folder of the train split, sorted. A run records the list it used.
    eval_labels: the label file of a flat eval folder (`ilsvrc_val`).
    skip_corrupt: find corrupt images up front (each image decoded once,
      cached in the manifest), leave them out and report their count;
      False: a corrupt image stops the run, naming the file.
    augment: False: training images get the eval transform.
    min_scale: smallest area fraction of the random resized crop.
    lighting: std of AlexNet's PCA lighting noise (0: off; 0.1 in the
      reference's ImageNet recipe).
    mean, std: per-channel statistics in [0, 1] units (ImageNet's).
    decoder: one of `jpeg.DECODERS` ('auto': native where built, else PIL).
    device_normalize: yield uint8 images for the jitted step to normalise.
    manifest_dir: where the file lists are cached (`manifest`).
    manifest_check: 'auto' or 'full' (`manifest`).

  Raises:
    DataNotFoundError: data_dir or a split folder is missing.
    ValueError: no images, an empty class folder, the splits' classes
      differ, a bad option.
  """
  size = tfds_options.output_size(NAME, image_size, None)
  decoder = tfds_options.check_image_options(NAME, 3, lighting,
                                             device_normalize, decoder)
  classes = tuple(classes) if classes is not None else None
  ex = examples(data_dir, train_split, eval_split, classes, eval_labels,
                bool(skip_corrupt), manifest_dir, manifest_check)
  return ImageFolderSource.create(
      NAME, size, ex.classes, len(ex.train.files), len(ex.eval.files),
      mean=mean, std=std, augment=augment, min_scale=min_scale,
      lighting=lighting, decoder=decoder, device_normalize=device_normalize,
      data_dir=data_dir, train_split=train_split, eval_split=eval_split,
      classes=classes, eval_labels=eval_labels,
      skip_corrupt=bool(skip_corrupt), manifest_dir=manifest_dir,
      manifest_check=manifest_check, digest=ex.digest)
