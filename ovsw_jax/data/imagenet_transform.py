"""ImageNet's train and eval transforms on encoded images, batched.

The one copy used by every source of variable-size encoded images
(`tfds_source` for ImageNet, `imagefolder`, `image_records`):

- train: random resized crop (area ``min_scale``-1, aspect ratio 3/4-4/3),
  bilinear resize to the output size, horizontal flip with probability 1/2
  (Szegedy et al. 2015, as torchvision's ``RandomResizedCrop`` +
  ``RandomHorizontalFlip``), optionally AlexNet's PCA lighting noise; every
  random number drawn from ``(seed, epoch, example index)``
  (`augment.uniforms`), so an example is the same on any host or thread;
- eval: resize the shorter side to ``image_size / 0.875`` (256 for 224),
  then the central ``image_size`` crop (torchvision's ``Resize`` +
  ``CenterCrop``), computed as one crop box of the full image;

then normalisation with the per-channel mean/std (or uint8 out, for the
jitted step to normalise: ``device_normalize``). Decoding goes through
`jpeg.decode_crop_resize` (the decoder dispatch), which decodes only the
crop where it can.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np

from ovsw_jax.data import augment
from ovsw_jax.data import jpeg

EVAL_CROP_FRACTION = 0.875
# ImageNet's per-channel statistics, in [0, 1] pixel units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# (position in the batch, crop box function) -> uint8 pixels [h, w, c].
DecodeFn = Callable[[int, jpeg.BoxFn], np.ndarray]


def train_crops(decode: DecodeFn, indices: np.ndarray, seed: int, epoch: int,
                min_scale: float) -> np.ndarray:
  """Random resized crops (by `decode`) + flips of a batch: uint8 [n,h,w,c]."""
  u = augment.uniforms(seed, epoch, indices, augment.RESIZED_CROP,
                       4 * augment.RESIZED_CROP_ATTEMPTS)
  images = np.stack([
      decode(k, functools.partial(augment.random_resized_crop_box, u=row,
                                  scale=(min_scale, 1.0)))
      for k, row in enumerate(u)])
  flip = augment.uniforms(seed, epoch, indices, augment.FLIP, 1)[:, 0] < 0.5
  images[flip] = images[flip, :, ::-1]
  return images


def eval_box(out_hw: tuple[int, int]) -> jpeg.BoxFn:
  """The eval transform's crop, as a box of the full image."""
  return functools.partial(augment.eval_crop_box, out_hw=tuple(out_hw),
                           fraction=EVAL_CROP_FRACTION)


def eval_crops(decode: DecodeFn, n: int,
               out_hw: tuple[int, int]) -> np.ndarray:
  """Central crops of a batch of `n` images: uint8 [n, h, w, c]."""
  box = eval_box(out_hw)
  return np.stack([decode(k, box) for k in range(n)])


def finish(images: np.ndarray, mean: Sequence[float], std: Sequence[float],
           *, device_normalize: bool, lighting: float = 0.0,
           seed: int = 0, epoch: int = 0,
           indices: np.ndarray | None = None) -> np.ndarray:
  """uint8 crops -> what the iterator yields: the uint8 crops themselves
  (``device_normalize``), else normalised float32, with PCA lighting noise
  of std `lighting` (train only; RGB)."""
  if device_normalize:
    return images
  out = augment.normalize(images, mean, std)
  if lighting > 0:
    rgb = augment.pca_lighting(np.zeros((len(indices), 1, 1, 3), np.float32),
                               seed, epoch, indices, lighting)
    out += rgb / np.asarray(std, np.float32)
  return out
