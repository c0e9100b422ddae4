"""JPEG decode that reads only what a crop needs: DCT-domain downscaling.

libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of its size by keeping fewer
DCT coefficients, at a fraction of the cost of a full decode. When a crop is
at least twice the output size in both directions, decoding at the largest
such scale and resizing the scaled crop gives nearly the same pixels as
resizing the full-size crop (both are low-pass filters of the same image;
tests bound the difference) for much less work.

Decoders (`DECODERS`), chosen by measurement (benchmarks/input_pipeline.py):

- "native": our C++ decoder on libjpeg-turbo (`ovsw_jax.data.native_jpeg`,
  built at install where libjpeg-turbo's headers are): only the crop's
  columns and the rows down to its bottom are decoded, as tf.data's
  ``decode_and_crop_jpeg`` does, with the same DCT scaling as the others;
  then PIL's bilinear filter, in C++.
- "pil": full decode with PIL, then crop+resize (the reference).
- "pil_draft": PIL's ``Image.draft`` (libjpeg scaled decode by 1/2, 1/4,
  1/8), then crop+resize of the scaled image. No extra dependency.
- "simplejpeg": simplejpeg's scaled decode (libjpeg-turbo, wheels for
  Linux x86-64 and aarch64), then crop+resize with PIL.
- "auto" (the default): "native" where it is built, else "pil_draft".

Crop boxes are always given in the full-size image's coordinates, so the
random numbers (and hence resume) do not depend on the decoder. Every decoder
checks them, the output size and the image's declared size the same way
(`crop_checks`: a bad box is refused with a ValueError naming it, never
clipped; an image over the pixel limit is refused from its header).
"""

from __future__ import annotations

import functools
import io
import math
from typing import Callable

import numpy as np

from ovsw_jax.data import crop_checks
from ovsw_jax.data import native_jpeg

DECODERS = ('auto', 'native', 'pil', 'pil_draft', 'simplejpeg')
# (top, left, height, width) of the crop, from the full image's (H, W).
BoxFn = Callable[[int, int], tuple[int, int, int, int]]


def check_decoder(decoder: str) -> str:
  """The decoder that `decoder` names ('auto' resolved), or raises naming
  the valid ones and the fix."""
  if decoder not in DECODERS:
    raise ValueError(f'decoder={decoder!r}; use one of {DECODERS}.')
  if decoder == 'auto':
    return 'native' if native_jpeg.available() else 'pil_draft'
  if decoder == 'native' and not native_jpeg.available():
    raise ImportError(
        'decoder="native" is not built: install libjpeg-turbo\'s headers '
        '(apt install libjpeg-turbo8-dev, or libjpeg62-turbo-dev on Debian) '
        'and reinstall (pip install -e .), or use decoder="pil_draft".')
  if decoder == 'simplejpeg':
    try:
      import simplejpeg  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      raise ImportError('decoder="simplejpeg" needs simplejpeg: pip install '
                        'simplejpeg (or use decoder="pil_draft").') from e
  return decoder


def scale_factor(crop_h: int, crop_w: int, out_h: int, out_w: int) -> int:
  """The largest of 1, 2, 4, 8 that keeps the scaled crop >= the output."""
  s = 8
  while s > 1 and (crop_h < s * out_h or crop_w < s * out_w):
    s //= 2
  return s


def is_jpeg(data: bytes) -> bool:
  return data[:3] == b'\xff\xd8\xff'


def _checked_box(box_fn: BoxFn, full_h: int, full_w: int
                 ) -> tuple[float, float, float, float]:
  """The box for an image of this size, after the size and the box are
  checked (`crop_checks`)."""
  crop_checks.check_image_size(full_h, full_w)
  return crop_checks.check_box(box_fn(full_h, full_w), full_h, full_w)


def _open_pil(data: bytes):
  """PIL's lazy open (the header only), its bomb check in our terms."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    return Image.open(io.BytesIO(data))
  except Image.DecompressionBombError as e:
    # PIL's own limit (twice PIL.Image.MAX_IMAGE_PIXELS) applies first.
    raise crop_checks.ImageTooLargeError(f'PIL refuses the image: {e}') from e


def _resize_box(img, box: tuple[int, int, int, int], sy: float, sx: float,
                out_hw: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of `box` (full-image coordinates) of a scaled image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  top, left, h, w = box
  fbox = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
  out = img.resize((out_hw[1], out_hw[0]), Image.BILINEAR, box=fbox)
  return np.asarray(out, dtype=np.uint8)


def _decode_pil(data: bytes, box_fn: BoxFn, out_hw: tuple[int, int],
                draft: bool) -> np.ndarray:
  img = _open_pil(data)
  full_w, full_h = img.size
  box = _checked_box(box_fn, full_h, full_w)
  if draft and img.format == 'JPEG':
    s = scale_factor(box[2], box[3], *out_hw)
    if s > 1:
      # draft picks the smallest scale whose size is >= the one asked for.
      img.draft('RGB', (math.ceil(full_w / s), math.ceil(full_h / s)))
  if img.mode != 'RGB':
    img = img.convert('RGB')
  return _resize_box(img, box, img.size[1] / full_h, img.size[0] / full_w,
                     out_hw)


def _decode_simplejpeg(data: bytes, box_fn: BoxFn,
                       out_hw: tuple[int, int]) -> np.ndarray:
  import simplejpeg  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not is_jpeg(data):
    return _decode_pil(data, box_fn, out_hw, draft=False)
  full_h, full_w, _, _ = simplejpeg.decode_jpeg_header(data)
  box = _checked_box(box_fn, full_h, full_w)
  s = scale_factor(box[2], box[3], *out_hw)
  arr = simplejpeg.decode_jpeg(
      data, colorspace='RGB', min_height=math.ceil(full_h / s),
      min_width=math.ceil(full_w / s))
  return _resize_box(Image.fromarray(arr), box, arr.shape[0] / full_h,
                     arr.shape[1] / full_w, out_hw)


def _decode_native(data: bytes, box_fn: BoxFn,
                   out_hw: tuple[int, int]) -> np.ndarray:
  hw = native_jpeg.image_size(data) if is_jpeg(data) else None
  if hw is not None:
    out = native_jpeg.decode_crop_resize(data, _checked_box(box_fn, *hw),
                                         out_hw)
    if out is not None:
      return out
  # Not a JPEG, or one libjpeg does not turn into RGB (CMYK): PIL does.
  return _decode_pil(data, box_fn, out_hw, draft=False)


def decode_crop_resize(data: bytes, box_fn: BoxFn, out_hw: tuple[int, int],
                       decoder: str = 'pil_draft') -> np.ndarray:
  """Decodes encoded RGB image bytes, crops and resizes (bilinear).

  Args:
    data: encoded image (JPEG gets the scaled decode; others decode fully).
    box_fn: (full height, full width) -> (top, left, h, w) of the crop.
    out_hw: output (height, width).
    decoder: one of `DECODERS` ('auto' resolved by `check_decoder`).

  Returns:
    uint8 [out_h, out_w, 3].

  Raises:
    ValueError: a bad ``out_hw`` or box (`crop_checks`), naming it.
    crop_checks.ImageTooLargeError: an image over the pixel limit.
    native_jpeg.JpegDecodeError (native), OSError (PIL): corrupt data.
  """
  decode = _DECODE[check_decoder(decoder)]
  return decode(data, box_fn, crop_checks.check_out_hw(out_hw))


# decoder -> (data, box_fn, out_hw) -> uint8 pixels.
_DECODE: dict[str, Callable[[bytes, BoxFn, tuple[int, int]], np.ndarray]] = {
    'native': _decode_native,
    'pil': functools.partial(_decode_pil, draft=False),
    'pil_draft': functools.partial(_decode_pil, draft=True),
    'simplejpeg': _decode_simplejpeg,
}
