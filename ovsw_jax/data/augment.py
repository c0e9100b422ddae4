"""Image augmentation and normalisation, in NumPy, with per-example randomness.

Every random number an augmentation draws is a pure function of
``(seed, epoch, example index, draw number)``: a counter-based hash
(SplitMix64), vectorised over the batch. Hence a training example looks the
same whichever host, worker or thread builds it and wherever iteration
(re)started, which is what makes resuming exact.

References:
  Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
  OOPSLA 2014 (SplitMix64).
  Szegedy et al., "Going deeper with convolutions", CVPR 2015 (random resized
  crop, as implemented in torchvision's ``RandomResizedCrop``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1

# Draw numbers, so that different augmentations never share random numbers.
CROP_Y, CROP_X, FLIP = 0, 1, 2
RESIZED_CROP = 8    # 4 draws per attempt, 10 attempts: draws 8..47.
LIGHTING = 48       # 3 draws (Box-Muller pairs use 48..53).
RESIZED_CROP_ATTEMPTS = 10

# AlexNet PCA lighting on ImageNet RGB in [0, 1] (fb.resnet.torch constants).
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                            [-0.5808, -0.0045, -0.8140],
                            [-0.5836, -0.6948, 0.4203]], np.float32)


def _mix(z: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser: a bijective avalanche on uint64 (mod 2^64)."""
  z = (z ^ (z >> np.uint64(30))) * _MIX1
  z = (z ^ (z >> np.uint64(27))) * _MIX2
  return z ^ (z >> np.uint64(31))


def _u64(x: int) -> np.uint64:
  return np.uint64(int(x) & _MASK64)


def epoch_key(seed: int, epoch: int) -> np.uint64:
  """The uint64 key of (seed, epoch), which `example_keys` mixes indices into."""
  with np.errstate(over='ignore'):
    k = _mix(np.full((), _u64(seed), np.uint64) + _GOLDEN)
    return _mix(k ^ (_u64(epoch) + _GOLDEN))


def example_keys(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
  """One uint64 key per example from (seed, epoch, example index)."""
  with np.errstate(over='ignore'):
    idx = np.asarray(indices).astype(np.int64).astype(np.uint64)
    return _mix(epoch_key(seed, epoch) ^ (idx + _GOLDEN))


def draws(seed: int, epoch: int, indices: np.ndarray, first: int,
          count: int) -> np.ndarray:
  """Random 64-bit words, shape [len(indices), count], uint64.

  Column j is draw number ``first + j`` of each example; the same
  (seed, epoch, index, draw) always gives the same word.
  `ovsw_jax.data.device_augment` computes the same words on a device.
  """
  keys = example_keys(seed, epoch, indices)
  numbers = np.arange(first, first + count, dtype=np.uint64)
  with np.errstate(over='ignore'):
    return _mix(keys[:, None] + (numbers[None, :] + np.uint64(1)) * _GOLDEN)


def uniforms(seed: int, epoch: int, indices: np.ndarray, first: int,
             count: int) -> np.ndarray:
  """Uniform floats in [0, 1), shape [len(indices), count], float64.

  The top 53 bits of `draws` (column j is draw number ``first + j``).
  """
  z = draws(seed, epoch, indices, first, count)
  return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def below(z: np.ndarray, n: int) -> np.ndarray:
  """``floor(u * n)`` for ``u = (z >> 11) / 2**53`` (`uniforms`' value of z),
  in exact integer arithmetic: ints in ``[0, n)``, for ``n < 2**11``.

  The float64 product ``u * n`` can round up to the next integer just below
  it (4 of the 2**53 values of u for n = 9); this form has no rounding, so a
  device computes it bit for bit (`device_augment.below`).
  """
  if not 1 <= n < 1 << 11:
    raise ValueError(f'n={n} must be in [1, 2048).')
  return (((z >> np.uint64(11)) * np.uint64(n)) >> np.uint64(53)).astype(
      np.int64)


def half(z: np.ndarray) -> np.ndarray:
  """``u < 0.5`` for ``u`` = `uniforms`' value of z: the top bit is clear."""
  return (z >> np.uint64(63)) == 0


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float],
              pixel_scale: float = 1.0 / 255.0) -> np.ndarray:
  """``(images * pixel_scale - mean) / std`` per channel, as float32."""
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  a = np.float32(pixel_scale) / std
  b = -mean / std
  return images.astype(np.float32) * a + b


def pad_crop_flip(images: np.ndarray, offset_y: np.ndarray,
                  offset_x: np.ndarray, flip: np.ndarray,
                  pad: int) -> np.ndarray:
  """Crops ``(H, W)`` at the given offsets from the zero-padded images.

  Args:
    images: [n, H, W, C].
    offset_y, offset_x: [n] ints in ``[0, 2 * pad]``: top-left corner of the
      crop in the image padded by `pad` zeros on each side.
    flip: [n] bools; where True, the crop is mirrored left-right.
    pad: padding on each side.

  Returns:
    [n, H, W, C], the dtype of `images`.
  """
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = offset_y[:, None] + np.arange(h)
  cols = np.where(flip[:, None], np.arange(w - 1, -1, -1), np.arange(w))
  cols = offset_x[:, None] + cols
  return padded[np.arange(n)[:, None, None], rows[:, :, None],
                cols[:, None, :]]


def random_pad_crop_flip(images: np.ndarray, indices: np.ndarray, seed: int,
                         epoch: int, pad: int, flip: bool = True) -> np.ndarray:
  """Random crop with zero padding (+ random horizontal flip), per example.

  The crop offsets are uniform in ``[0, 2 * pad]`` and the flip has
  probability 1/2, all drawn from (seed, epoch, example index): draws
  CROP_Y, CROP_X and FLIP, through `below` and `half`.
  """
  z = draws(seed, epoch, indices, CROP_Y, 3)
  span = 2 * pad + 1
  oy, ox = below(z[:, 0], span), below(z[:, 1], span)
  do_flip = half(z[:, 2]) if flip else np.zeros(len(indices), bool)
  return pad_crop_flip(images, oy, ox, do_flip, pad)


def random_resized_crop_box(
    height: int, width: int, u: np.ndarray,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision's ``RandomResizedCrop.get_params`` on given uniforms.

  Args:
    height, width: size of the source image.
    u: 4 * RESIZED_CROP_ATTEMPTS uniforms in [0, 1) (area, log-ratio, top,
      left for each attempt).
    scale: range of the crop's area as a fraction of the image's.
    ratio: range of the crop's aspect ratio (width / height).

  Returns:
    (top, left, crop_height, crop_width). When no attempt fits, the central
    crop with the ratio clamped to `ratio`, as in torchvision.
  """
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for a in range(RESIZED_CROP_ATTEMPTS):
    ua, ur, ut, ul = u[4 * a:4 * a + 4]
    target_area = area * (scale[0] + (scale[1] - scale[0]) * ua)
    aspect = math.exp(log_lo + (log_hi - log_lo) * ur)
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = min(int(ut * (height - h + 1)), height - h)
      left = min(int(ul * (width - w + 1)), width - w)
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def center_crop_box(height: int, width: int, crop_height: int,
                    crop_width: int) -> tuple[int, int, int, int]:
  """(top, left, h, w) of the central crop, as torchvision's ``CenterCrop``."""
  top = int(round((height - crop_height) / 2.0))
  left = int(round((width - crop_width) / 2.0))
  return top, left, crop_height, crop_width


def resize_shorter_side(height: int, width: int,
                        size: int) -> tuple[int, int]:
  """(height, width) with the shorter side `size`, as torchvision's Resize."""
  if height <= width:
    return size, max(1, int(size * width / height))
  return max(1, int(size * height / width)), size


def eval_crop_box(height: int, width: int, *, out_hw: tuple[int, int],
                  fraction: float) -> tuple[float, float, float, float]:
  """Resize the shorter side to ``min(out_hw) / fraction``, then center crop
  `out_hw`: as a (top, left, h, w) box of the full image, so that resizing
  only the box computes only the pixels kept."""
  nh, nw = resize_shorter_side(height, width, int(min(out_hw) / fraction))
  top, left, _, _ = center_crop_box(nh, nw, *out_hw)
  sy, sx = height / nh, width / nw
  return top * sy, left * sx, out_hw[0] * sy, out_hw[1] * sx


def pca_lighting(images01: np.ndarray, seed: int, epoch: int,
                 indices: np.ndarray, alphastd: float) -> np.ndarray:
  """AlexNet-style PCA lighting noise on RGB images in [0, 1] (in place).

  Adds ``eigvec @ (alpha * eigval)`` to every pixel, alpha ~ N(0, alphastd^2)
  per example and component (Krizhevsky et al., NIPS 2012).
  """
  u = uniforms(seed, epoch, indices, LIGHTING, 6)
  # Box-Muller: three standard normals from three pairs of uniforms.
  normal = (np.sqrt(-2.0 * np.log1p(-u[:, 0::2])) *
            np.cos(2.0 * np.pi * u[:, 1::2]))
  alpha = (normal * alphastd).astype(np.float32)
  rgb = (alpha * IMAGENET_EIGVAL) @ IMAGENET_EIGVEC.T   # [n, 3]
  images01 += rgb[:, None, None, :]
  return images01
