"""ILSVRC2012's validation labels, and sorting its flat folder into classes.

The official validation set is 50,000 JPEGs in one folder
(``ILSVRC2012_val_00000001.JPEG`` ...) and its labels in a separate file.
`read_labels` reads any of the label files in circulation:

- the official devkit, ``ILSVRC2012_devkit_t12.tar.gz`` (or the folder it
  extracts to): ``data/ILSVRC2012_validation_ground_truth.txt`` holds each
  image's ILSVRC2012_ID (1-1000), in file order, and ``data/meta.mat`` maps
  IDs to WordNet IDs (the class folder names, e.g. n01440764);
- one class name per line, in file order (TFDS's
  ``imagenet2012_validation_labels.txt``);
- ``<file> <label>`` or ``<file>,<label>`` per line, the label a class name
  or an index into the sorted class names (Caffe's ``val.txt``);
- Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``: the
  first word of the prediction string is the class).

Read the flat folder directly (``dataset_options.eval_labels=<file>`` of
the imagefolder dataset), or sort it into class folders once::

  python -m ovsw_jax.data.ilsvrc_val --val_dir=/data/imagenet/val \\
      --labels=/data/ILSVRC2012_devkit_t12.tar.gz [--mode=move|copy|symlink]

Sorting moves (or copies, or links) each image to
``val_dir/<class>/<file>``; run again after an interruption, it finishes
the job: labels in image order are matched by the number in each file's
name (line k labels ``ILSVRC2012_val_<k>``), never by a file's position in
what is left flat; the label file must label exactly the images, flat and
already sorted (a count that differs is refused); each image is placed
whole (a copy or link goes to a hidden temporary file first), and an image
already sorted into the wrong folder is refused, naming it. Copied or
linked, the flat files stay, and the imagefolder dataset ignores them (and
counts them).
"""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import re
import shutil
import sys
import tarfile
from typing import Sequence

from ovsw_jax.data import image_files

GROUND_TRUTH = 'ILSVRC2012_validation_ground_truth.txt'
META = 'meta.mat'
Label = str | int  # a class name, or an index into the sorted classes
_VAL_NAME = re.compile(r'ILSVRC2012_val_(\d{8})')


def _stem(name: str) -> str:
  base = posixpath.basename(name.replace('\\', '/'))
  return base.rsplit('.', 1)[0] if image_files.is_image_name(base) else base


def _devkit_files(path: str) -> tuple[bytes, bytes] | None:
  """(ground truth, meta.mat) bytes of a devkit archive or folder, or None."""
  if os.path.isdir(path):
    found = {}
    for root, _, files in os.walk(path):
      for f in files:
        if f in (GROUND_TRUTH, META):
          with open(os.path.join(root, f), 'rb') as fh:
            found[f] = fh.read()
  elif tarfile.is_tarfile(path):
    found = {}
    with tarfile.open(path) as tar:
      for m in tar:
        name = posixpath.basename(m.name)
        if m.isfile() and name in (GROUND_TRUTH, META):
          found[name] = tar.extractfile(m).read()
  else:
    return None
  if GROUND_TRUTH not in found or META not in found:
    raise ValueError(f'{path} is not the ILSVRC2012 devkit: it lacks '
                     f'{GROUND_TRUTH} or {META}; pass '
                     'ILSVRC2012_devkit_t12.tar.gz or a label file')
  return found[GROUND_TRUTH], found[META]


def _devkit_labels(ground_truth: bytes, meta: bytes) -> list[str]:
  from scipy import io as sio  # pylint: disable=g-import-not-at-top
  synsets = sio.loadmat(io.BytesIO(meta), squeeze_me=True)['synsets']
  wnid = {int(s['ILSVRC2012_ID']): str(s['WNID']) for s in synsets
          if int(s['num_children']) == 0}
  return [wnid[int(line)] for line in ground_truth.decode().split()]


def _by_number(path: str, labels: Sequence[str],
               file_names: Sequence[str]) -> dict[str, Label]:
  """Labels listed in image order: line k labels ILSVRC2012_val_<k>.

  Keyed by the number in each name, never by a file's position in a listing,
  so any subset of the images (what an interrupted sort left flat) gets its
  own labels.
  """
  odd = next((n for n in file_names if not _VAL_NAME.fullmatch(_stem(n))),
             None)
  if odd is not None:
    raise ValueError(
        f'{path} lists labels in image order (line k labels '
        f'ILSVRC2012_val_<k>), but {odd} is not named ILSVRC2012_val_<8 '
        'digits>; keep the official names, or pass a "<file> <label>" '
        'label file')
  return {f'ILSVRC2012_val_{k:08d}': label
          for k, label in enumerate(labels, 1)}


def _check_count(path: str, labels: dict[str, Label],
                 file_names: Sequence[str], where: str) -> None:
  if len(labels) != len(file_names):
    raise ValueError(
        f'{path} has {len(labels)} labels but {where} holds '
        f'{len(file_names)} images; pass the label file of exactly these '
        'images, or restore the missing ones (ILSVRC2012\'s validation set '
        'is 50,000 images with 50,000 labels)')


def read_labels(path: str, file_names: Sequence[str],
                where: str = 'the folder') -> dict[str, Label]:
  """Each validation image's label, by file stem (name without extension).

  Label files that list labels alone, in image order (the devkit, one
  class per line), are matched by the number in each image's name: line k
  is ``ILSVRC2012_val_<k>``'s label.

  Args:
    path: a label file or the devkit (module docstring).
    file_names: every image the labels are for (any order).
    where: what holds the images, for messages.

  Returns:
    {file stem: class name or class index}.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a file this cannot read (naming the formats it reads), a
      label count unlike the image count, or, for a label file in image
      order, an image not named ``ILSVRC2012_val_<8 digits>``.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'eval_labels={path} does not exist; pass the '
                            'ILSVRC2012 devkit or a validation label file')
  devkit = _devkit_files(path)
  if devkit is not None:
    labels = _by_number(path, _devkit_labels(*devkit), file_names)
  else:
    labels = _read_text_labels(path, file_names)
  _check_count(path, labels, file_names, where)
  return labels


def _read_text_labels(path: str,
                      file_names: Sequence[str]) -> dict[str, Label]:
  with open(path, encoding='utf-8') as f:
    lines = [l.strip() for l in f if l.strip()]
  if lines and lines[0].lower().startswith('imageid,'):
    return {_stem(l.split(',', 1)[0]): l.split(',', 1)[1].split()[0]
            for l in lines[1:]}
  pairs = [l.replace(',', ' ').split() for l in lines]
  if all(len(p) == 1 for p in pairs):
    return _by_number(path, [p[0] for p in pairs], file_names)
  if all(len(p) == 2 for p in pairs):
    return {_stem(p[0]): int(p[1]) if p[1].isdigit() else p[1]
            for p in pairs}
  raise ValueError(
      f'{path}: not a label file this reads (one class per line; "<file> '
      '<label>" per line; ImageId,PredictionString CSV; or the ILSVRC2012 '
      'devkit); see ovsw_jax/data/ilsvrc_val.py')


def resolve(labels: dict[str, Label], names: Sequence[str],
            classes: Sequence[str], where: str) -> list[int]:
  """Label indices (into `classes`) of the images `names`.

  Raises:
    ValueError: an image without a label, or a label not in `classes`.
  """
  index = {c: i for i, c in enumerate(classes)}
  out = []
  for name in names:
    label = labels.get(_stem(name))
    if label is None:
      raise ValueError(f'{where}: the label file has no label for {name}; '
                       'pass the label file of these images')
    if isinstance(label, int):
      if not 0 <= label < len(classes):
        raise ValueError(f'{where}: label {label} of {name} is not an index '
                         f'of the {len(classes)} classes')
      out.append(label)
    elif label in index:
      out.append(index[label])
    else:
      raise ValueError(f'{where}: {name} is labelled {label!r}, which is not '
                       'a class folder of the train split; pass the label '
                       'file of this dataset')
  return out


def _images_in(folder: str) -> list[str]:
  return sorted(n for n in os.listdir(folder)
                if image_files.is_image_name(n) and not n.startswith('.')
                and os.path.isfile(os.path.join(folder, n)))


def _sorted_images(val_dir: str) -> list[tuple[str, str]]:
  """(class folder, image name) of the images already sorted."""
  return [(d, n) for d in sorted(os.listdir(val_dir))
          if not d.startswith('.') and os.path.isdir(os.path.join(val_dir, d))
          for n in _images_in(os.path.join(val_dir, d))]


def _class_of(labels: dict[str, Label], name: str, labels_path: str,
              classes: Sequence[str] | None) -> str:
  label = labels.get(_stem(name))
  if label is None:
    raise ValueError(f'{labels_path} has no label for {name}; pass the '
                     'label file of these images (the devkit, or a label '
                     'file that lists every one of them)')
  if isinstance(label, int):
    if classes is None:
      raise ValueError(f'{labels_path} gives class indices: pass '
                       '--classes_from=<train folder> to name them')
    if not 0 <= label < len(classes):
      raise ValueError(f'{labels_path}: label {label} of {name} is not an '
                       f'index of the {len(classes)} class folders of '
                       '--classes_from; pass the train folder of this '
                       'dataset')
    return classes[label]
  return label


def _place(val_dir: str, name: str, label: str, mode: str) -> None:
  """Puts one flat image in its class folder, whole or not at all."""
  src = os.path.join(val_dir, name)
  folder = os.path.join(val_dir, label)
  dst = os.path.join(folder, name)
  os.makedirs(folder, exist_ok=True)
  if mode == 'move':
    os.replace(src, dst)  # atomic; replaces a copy of an earlier run
    return
  if os.path.lexists(dst) and (
      mode == 'symlink' or os.path.getsize(dst) == os.path.getsize(src)):
    return  # done by an earlier run
  # Written beside it, then renamed: a killed run leaves a hidden file (the
  # dataset ignores it; a rerun overwrites it), never a cut-short image.
  tmp = os.path.join(folder, f'.{name}.partial')
  if mode == 'copy':
    shutil.copy2(src, tmp)
  else:
    if os.path.lexists(tmp):
      os.remove(tmp)
    os.symlink(os.path.abspath(src), tmp)
  os.replace(tmp, dst)


def sort_into_classes(val_dir: str, labels_path: str, mode: str = 'move',
                      classes: Sequence[str] | None = None) -> dict[str, int]:
  """Moves (copies, links) each flat val image into ``val_dir/<class>/``.

  Safe to rerun after an interruption: labels are matched to images by
  name (or number), the images already in class folders count towards the
  label file's, and each image is placed whole (moved by rename; copied or
  linked to a temporary file, then renamed).

  Args:
    val_dir: the validation folder.
    labels_path: the devkit or a label file (`read_labels`).
    mode: 'move', 'copy' or 'symlink'.
    classes: the class folder names, for label files that give indices.

  Returns:
    Images per class folder.

  Raises:
    ValueError: the labels do not fit the images (`read_labels`), or an
      image already sorted lies in a class folder other than its label's.
  """
  flat = _images_in(val_dir)
  done = _sorted_images(val_dir)
  names = sorted(set(flat) | {n for _, n in done})
  labels = read_labels(labels_path, names,
                       f'{val_dir} (flat and in class folders)')
  target = {n: _class_of(labels, n, labels_path, classes) for n in names}
  wrong = [(d, n) for d, n in done if target[n] != d]
  if wrong:
    d, n = wrong[0]
    raise ValueError(
        f'{os.path.join(val_dir, d, n)} is in the wrong class folder: '
        f'{labels_path} labels it {target[n]} ({len(wrong)} images are '
        'misfiled, e.g. by an earlier version of this command resumed after '
        'an interruption); extract the flat folder again and sort it, or '
        'move them to their labelled folders')
  for name in flat:
    _place(val_dir, name, target[name], mode)
  counts: dict[str, int] = {}
  for name in names:
    counts[target[name]] = counts.get(target[name], 0) + 1
  return counts


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m ovsw_jax.data.ilsvrc_val',
      description='Sort ILSVRC2012\'s flat validation folder into class '
      'folders (val/<wnid>/<file>), as the imagefolder dataset reads them.')
  parser.add_argument('--val_dir', required=True)
  parser.add_argument('--labels', required=True,
                      help='ILSVRC2012_devkit_t12.tar.gz or a label file')
  parser.add_argument('--mode', default='move',
                      choices=('move', 'copy', 'symlink'))
  parser.add_argument('--classes_from', default=None,
                      help='the train folder: its sorted class folders name '
                      'numeric labels')
  args = parser.parse_args(argv)
  classes = None
  if args.classes_from:
    classes = sorted(d for d in os.listdir(args.classes_from)
                     if not d.startswith('.') and
                     os.path.isdir(os.path.join(args.classes_from, d)))
  try:
    counts = sort_into_classes(args.val_dir, args.labels, args.mode, classes)
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'sorted {sum(counts.values())} images into {len(counts)} class '
        f'folders of {args.val_dir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
