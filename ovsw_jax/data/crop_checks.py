"""What every JPEG crop decoder accepts: boxes, output sizes, image sizes.

All decoders (`ovsw_jax.data.jpeg.DECODERS`) run these checks before they
decode, and the native decoder's C++ runs them again on its own arguments,
so a bad box or size is refused the same way whichever decoder is chosen:
with a `ValueError` that names the bad value, never a crash, a hang or an
image of the wrong pixels.

* A box ``(top, left, height, width)`` must be finite, have a positive
  height and width, and lie inside the image: boxes are refused, not
  clipped, since clipping would silently change the crop's aspect ratio.
  Edges may pass the image's by `BOX_TOLERANCE` pixels (float rounding of
  a box computed from the image size, as `augment.eval_crop_box` does).
* ``out_hw`` must be two ints in ``[1, MAX_SIDE]`` with at most
  `max_image_pixels` pixels.
* An image declaring more than `max_image_pixels` pixels (a decompression
  bomb: a small file whose header claims 65500 x 65500) is refused from its
  header, before any pixel memory is allocated, with `ImageTooLargeError`.
  The limit defaults to `DEFAULT_MAX_IMAGE_PIXELS` (PIL's
  ``Image.MAX_IMAGE_PIXELS``); set the environment variable
  ``OVSW_MAX_IMAGE_PIXELS`` (read at each call, so it reaches data worker
  processes) or `set_max_image_pixels` to change it.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Optional, Sequence

# PIL's own default (Image.MAX_IMAGE_PIXELS): about 0.27 GB of RGB pixels.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
MAX_IMAGE_PIXELS_ENV = 'OVSW_MAX_IMAGE_PIXELS'
# JPEG's own limit on a side (libjpeg's JPEG_MAX_DIMENSION is 65500).
MAX_SIDE = 65535
BOX_TOLERANCE = 1e-3  # pixels

_override: Optional[int] = None


class ImageTooLargeError(ValueError):
  """An image whose header declares more pixels than the limit allows."""


def set_max_image_pixels(limit: Optional[int]) -> None:
  """Sets this process's limit on an image's pixels (None: back to the
  environment variable or the default)."""
  global _override
  _override = None if limit is None else _positive_int(
      limit, 'max_image_pixels')


def max_image_pixels() -> int:
  """The limit in force: `set_max_image_pixels`'s, else
  ``$OVSW_MAX_IMAGE_PIXELS``, else `DEFAULT_MAX_IMAGE_PIXELS`.

  Raises:
    ValueError: the environment variable is not a positive integer.
  """
  if _override is not None:
    return _override
  value = os.environ.get(MAX_IMAGE_PIXELS_ENV)
  if not value:
    return DEFAULT_MAX_IMAGE_PIXELS
  try:
    return _positive_int(int(value), MAX_IMAGE_PIXELS_ENV)
  except ValueError:
    raise ValueError(f'{MAX_IMAGE_PIXELS_ENV}={value!r}: set it to a '
                     'positive number of pixels, or unset it') from None


def _positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
      value < 1):
    raise ValueError(f'{name}={value!r} must be a positive int')
  return int(value)


def check_out_hw(out_hw: Sequence[int]) -> tuple[int, int]:
  """``out_hw`` as two ints, or raises naming it.

  Raises:
    ValueError: not two ints in ``[1, MAX_SIDE]`` whose product is within
      `max_image_pixels`.
  """
  try:
    h, w = out_hw
  except (TypeError, ValueError):
    raise ValueError(f'out_hw={out_hw!r} must be (height, width)') from None
  for v in (h, w):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not (
        1 <= v <= MAX_SIDE):
      raise ValueError(f'out_hw={tuple(out_hw)!r}: height and width must be '
                       f'ints in [1, {MAX_SIDE}]')
  limit = max_image_pixels()
  if int(h) * int(w) > limit:
    raise ValueError(f'out_hw={tuple(out_hw)!r} has {int(h) * int(w)} '
                     f'pixels, over the limit of {limit} '
                     f'(${MAX_IMAGE_PIXELS_ENV})')
  return int(h), int(w)


def check_box_shape(box: Sequence[float]) -> tuple[float, float, float,
                                                    float]:
  """A box's four values as floats, checked without the image's size.

  Raises:
    ValueError: not 4 finite numbers, or a height or width <= 0, or a
      negative top or left.
  """
  try:
    values = tuple(float(v) for v in box)
  except (TypeError, ValueError):
    raise ValueError(f'box={box!r} must be 4 numbers (top, left, height, '
                     'width)') from None
  if len(values) != 4 or not all(math.isfinite(v) for v in values):
    raise ValueError(f'box={box!r} must be 4 finite numbers (top, left, '
                     'height, width)')
  top, left, h, w = values
  if h <= 0 or w <= 0:
    raise ValueError(f'box={values!r} has height {h:g} and width {w:g}; '
                     'both must be > 0')
  if top < -BOX_TOLERANCE or left < -BOX_TOLERANCE:
    raise ValueError(f'box={values!r} starts above or left of the image '
                     '(top and left must be >= 0)')
  return values


def check_box(box: Sequence[float], image_h: int, image_w: int
              ) -> tuple[float, float, float, float]:
  """`check_box_shape`, and the box inside the ``image_h x image_w`` image.

  Raises:
    ValueError: a bad box (`check_box_shape`) or one that extends past the
      image's bottom or right edge (boxes are refused, not clipped).
  """
  top, left, h, w = values = check_box_shape(box)
  if top + h > image_h + BOX_TOLERANCE or left + w > image_w + BOX_TOLERANCE:
    raise ValueError(
        f'box={values!r} extends past the {image_h}x{image_w} image '
        f'(bottom {top + h:g}, right {left + w:g}); boxes are not clipped: '
        'keep top + height <= image height and left + width <= width')
  return values


def check_image_size(image_h: int, image_w: int) -> None:
  """Refuses an image over the pixel limit, from its header.

  Raises:
    ImageTooLargeError: ``image_h * image_w > max_image_pixels()``.
  """
  limit = max_image_pixels()
  if image_h * image_w > limit:
    raise ImageTooLargeError(
        f'image of {image_h}x{image_w} = {image_h * image_w} pixels is over '
        f'the limit of {limit} (a decompression bomb?); raise it with '
        f'${MAX_IMAGE_PIXELS_ENV} or crop_checks.set_max_image_pixels if the '
        'image is genuine')
