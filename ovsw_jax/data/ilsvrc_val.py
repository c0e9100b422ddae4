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
the job (files already in place are skipped). Copied or linked, the flat
files stay, and the imagefolder dataset ignores them (and counts them).
"""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import shutil
import sys
import tarfile
from typing import Sequence

from ovsw_jax.data import image_files

GROUND_TRUTH = 'ILSVRC2012_validation_ground_truth.txt'
META = 'meta.mat'
Label = str | int  # a class name, or an index into the sorted classes


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


def read_labels(path: str, file_names: Sequence[str]) -> dict[str, Label]:
  """Each validation image's label, by file stem (name without extension).

  Args:
    path: a label file or the devkit (module docstring).
    file_names: the flat folder's image names, sorted: the order of files
      whose label file lists labels alone.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a file this cannot read, naming the formats it reads.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'eval_labels={path} does not exist; pass the '
                            'ILSVRC2012 devkit or a validation label file')
  devkit = _devkit_files(path)
  if devkit is not None:
    return dict(zip(map(_stem, sorted(file_names)), _devkit_labels(*devkit)))
  with open(path, encoding='utf-8') as f:
    lines = [l.strip() for l in f if l.strip()]
  if lines and lines[0].lower().startswith('imageid,'):
    return {_stem(l.split(',', 1)[0]): l.split(',', 1)[1].split()[0]
            for l in lines[1:]}
  pairs = [l.replace(',', ' ').split() for l in lines]
  if all(len(p) == 1 for p in pairs):
    return dict(zip(map(_stem, sorted(file_names)), (p[0] for p in pairs)))
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


def sort_into_classes(val_dir: str, labels_path: str, mode: str = 'move',
                      classes: Sequence[str] | None = None) -> dict[str, int]:
  """Moves (copies, links) each flat val image into ``val_dir/<class>/``.

  Returns:
    Images per class folder.
  """
  names = sorted(n for n in os.listdir(val_dir)
                 if image_files.is_image_name(n) and not n.startswith('.')
                 and os.path.isfile(os.path.join(val_dir, n)))
  labels = read_labels(labels_path, names)
  counts: dict[str, int] = {}
  for name in names:
    label = labels.get(_stem(name))
    if label is None:
      raise ValueError(f'{labels_path} has no label for {name}')
    if isinstance(label, int):
      if classes is None:
        raise ValueError(f'{labels_path} gives class indices: pass '
                         '--classes_from=<train folder> to name them')
      label = classes[label]
    os.makedirs(os.path.join(val_dir, label), exist_ok=True)
    src, dst = os.path.join(val_dir, name), os.path.join(val_dir, label, name)
    if not os.path.exists(dst):  # a rerun skips what is done
      {'move': os.replace, 'copy': shutil.copy2,
       'symlink': lambda s, d: os.symlink(os.path.abspath(s), d)}[mode](
           src, dst)
    counts[label] = counts.get(label, 0) + 1
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
