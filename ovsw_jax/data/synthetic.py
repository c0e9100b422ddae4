"""Synthetic images and labels, made per index: for tests and benchmarks.

Example i of a split is a pure function of (data_seed, split, i): its label
is uniform over the classes, and its pixels are ``0.6 * template[label] +
0.4 * noise`` with the class template and the noise uniform in [0, 1), stored
as uint8. A model can learn it (the template carries the label), and no array
bigger than one batch is ever made. Pixel mean is 0.5 and std
``sqrt(0.52 / 12)``, which are the `DatasetInfo` statistics. Training
augmentation is the CIFAR one scaled to the image: crop with ``H // 8``
padding, plus a horizontal flip.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ovsw_jax.data import augment as augment_lib
from ovsw_jax.data.source import DatasetInfo, PadCropFlipSource

# Streams (passed as the hash's epoch) for templates and the two splits.
_TEMPLATE, _TRAIN, _EVAL = -1, -2, -3
_TEMPLATE_WEIGHT = 0.6
STD = math.sqrt((_TEMPLATE_WEIGHT**2 + (1 - _TEMPLATE_WEIGHT)**2) / 12.0)


def make_examples(indices: np.ndarray, train: bool, image_shape: Sequence[int],
                  num_classes: int,
                  data_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [n, *image_shape] and int32 labels [n] of these indices."""
  size = int(np.prod(image_shape))
  stream = _TRAIN if train else _EVAL
  u = augment_lib.uniforms(data_seed, stream, indices, 0, size + 1)
  labels = np.minimum((u[:, size] * num_classes).astype(np.int32),
                      num_classes - 1)
  template = augment_lib.uniforms(data_seed, _TEMPLATE, labels, 0, size)
  pixels = _TEMPLATE_WEIGHT * template + (1 - _TEMPLATE_WEIGHT) * u[:, :size]
  images = np.rint(pixels * 255.0).astype(np.uint8)
  return images.reshape(len(indices), *image_shape), labels


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticSource(PadCropFlipSource):
  data_seed: int = 0

  def raw(self, indices: np.ndarray,
          train: bool) -> tuple[np.ndarray, np.ndarray]:
    return make_examples(indices, train, self.info.image_shape,
                         self.info.num_classes, self.data_seed)


def make_source(image_shape: Sequence[int] = (32, 32, 3),
                num_classes: int = 10, num_train: int = 50_000,
                num_eval: int = 500, data_seed: int = 0,
                augment: bool = True, pad: int | None = None,
                flip: bool = True) -> SyntheticSource:
  """A synthetic dataset.

  Args:
    image_shape: (H, W, C) of each image.
    num_classes: number of labels.
    num_train, num_eval: sizes of the two splits (the eval split is small by
      default, so that a final eval of a timing run stays short).
    data_seed: seeds the content (not the order, which `seed` of the
      iterators decides).
    augment: whether training examples are augmented.
    pad: crop padding; None means ``H // 8`` (4 for 32x32).
    flip: whether training augmentation flips.
  """
  image_shape = tuple(int(d) for d in image_shape)
  if len(image_shape) != 3 or min(image_shape) < 1:
    raise ValueError(f'synthetic: image_shape={image_shape} must be (H, W, C) '
                     'with positive sizes.')
  for what, v in (('num_classes', num_classes), ('num_train', num_train),
                  ('num_eval', num_eval)):
    if int(v) < 1:
      raise ValueError(f'synthetic: {what}={v} must be positive.')
  c = image_shape[2]
  info = DatasetInfo(name='synthetic', num_classes=int(num_classes),
                     image_shape=image_shape, num_train=int(num_train),
                     num_eval=int(num_eval), mean=(0.5,) * c, std=(STD,) * c)
  return SyntheticSource(info=info,
                         pad=image_shape[0] // 8 if pad is None else int(pad),
                         flip=flip, augment=augment, data_seed=int(data_seed))
