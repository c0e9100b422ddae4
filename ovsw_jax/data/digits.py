"""scikit-learn's bundled handwritten digits: the quickstart dataset.

1,797 real 8x8 grey images of the digits 0-9 (values 0-16), shipped inside
scikit-learn (`sklearn.datasets.load_digits`), so nothing is downloaded. The
split is fixed: the first 1,500 images train, the last 297 evaluate. Images
are upsampled to 16x16 by pixel repetition (nearest neighbour), scaled to
[0, 1], and normalised with the training set's mean and std. Training
augmentation: random crop 16 from the image zero-padded by 2 pixels; no
flip, since digits are not mirror-symmetric.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from ovsw_jax.data.source import DatasetInfo, PadCropFlipSource

NUM_TRAIN = 1500
PIXEL_LEVELS = 17  # sklearn's digits hold the values 0..16
UPSAMPLE = 2


@functools.lru_cache(maxsize=1)
def load() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 digits: float32 images [N, 16, 16, 1] in [0, 1], int32 labels."""
  try:
    # pylint: disable-next=g-import-not-at-top
    from sklearn.datasets import load_digits
  except ImportError as e:
    raise ImportError('The "digits" dataset needs scikit-learn: '
                      'pip install scikit-learn') from e
  d = load_digits()
  images = d.images.astype(np.float32) / 16.0
  images = images.repeat(UPSAMPLE, axis=1).repeat(UPSAMPLE, axis=2)
  images.setflags(write=False)
  labels = d.target.astype(np.int32)
  labels.setflags(write=False)
  return images[..., None], labels


@functools.lru_cache(maxsize=1)
def dataset_info() -> DatasetInfo:
  images, labels = load()
  train = images[:NUM_TRAIN]
  return DatasetInfo(name='digits', num_classes=10, image_shape=(16, 16, 1),
                     num_train=NUM_TRAIN, num_eval=len(labels) - NUM_TRAIN,
                     mean=(float(train.mean()),), std=(float(train.std()),))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DigitsSource(PadCropFlipSource):
  """The digits; arrays are loaded (and cached) in whichever process reads."""

  def raw(self, indices: np.ndarray,
          train: bool) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load()
    offset = 0 if train else NUM_TRAIN
    return images[offset + indices], labels[offset + indices]

  def code_values(self) -> np.ndarray:
    # The images are the 17 values k / 16 (exact in float32).
    return np.arange(PIXEL_LEVELS, dtype=np.float32) / np.float32(16.0)

  def pixel_codes(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
    n = self.info.num_train if train else self.info.num_eval
    images, labels = self.raw(np.arange(n), train)
    return np.rint(images * 16.0).astype(np.uint8), labels.astype(np.int32)


def make_source(augment: bool = True,
                num_eval: int | None = None) -> DigitsSource:
  """The digits.

  Args:
    augment: whether training examples are augmented.
    num_eval: evaluate on the first this many of the 297 eval images (a
      quicker eval); None: all of them.
  """
  info = dataset_info()
  if num_eval is not None:
    if isinstance(num_eval, bool) or not isinstance(num_eval, int) or not (
        1 <= num_eval <= info.num_eval):
      raise ValueError(f'digits: num_eval={num_eval!r} must be an int in '
                       f'[1, {info.num_eval}] (or None: all of them).')
    info = info._replace(num_eval=num_eval)
  return DigitsSource(info=info, pad=2, flip=False, augment=augment,
                      pixel_scale=1.0)
