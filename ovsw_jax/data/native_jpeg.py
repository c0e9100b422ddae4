"""The native crop decoder (C++ on libjpeg-turbo): decode only the crop.

``pip install`` builds ``ovsw_jax/data/csrc/jpeg_crop.cc`` into
``ovsw_jax.data._jpeg_crop`` when a C++ compiler and libjpeg's headers are
present (``apt install libjpeg-turbo8-dev`` on Ubuntu, ``libjpeg62-turbo-dev``
on Debian, ``libjpeg-turbo-devel`` on Fedora); otherwise the install goes on
without it, and the ``'native'`` decoder is unavailable (`available`).

For one crop box it decodes what tf.data's ``decode_and_crop_jpeg`` does:
only the box's columns (to the iMCU boundary) and only the rows down to the
box's bottom (rows above are entropy-decoded and skipped, rows below are not
read); and, when the box is at least twice the output, at DCT scale 1/2, 1/4
or 1/8 (as `jpeg.scale_factor`). Then it resizes the box with PIL's
antialiased BILINEAR filter, in float.
Crop boxes are in the full-size image's coordinates, as for every decoder
(`ovsw_jax.data.jpeg`). Arguments are checked here (`crop_checks`) and again
in the C++, which also refuses a box past the image's edge and an image over
the pixel limit from its header (docs/native_safety.md).

``$OVSW_NATIVE_BUILD`` names another build of the library to load: a
``setup.py build_ext --build-lib`` folder, such as the sanitizer build the
fuzzers use (``OVSW_SANITIZE=1``).
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ovsw_jax.data import crop_checks

BUILD_ENV = 'OVSW_NATIVE_BUILD'
_HERE = Path(__file__).resolve().parent
_LIBRARY_GLOB = '_jpeg_crop*.so'
_ERR_LEN = 256
# The C API's return codes (jpeg_crop.cc).
_OK, _NOT_RGB, _CORRUPT, _BAD_ARGUMENT, _TOO_LARGE = range(5)


class JpegDecodeError(ValueError):
  """Bytes the native decoder could not decode (corrupt or truncated)."""


def _library_dir() -> Path:
  build = os.environ.get(BUILD_ENV)
  return Path(build) / 'ovsw_jax' / 'data' if build else _HERE


@functools.lru_cache(maxsize=None)
def _load() -> Optional[ctypes.CDLL]:
  found = sorted(_library_dir().glob(_LIBRARY_GLOB))
  if not found:
    return None
  lib = ctypes.CDLL(str(found[0]))
  lib.ovsw_jpeg_size.restype = ctypes.c_int
  lib.ovsw_jpeg_size.argtypes = [ctypes.c_char_p, ctypes.c_int64,
                                 ctypes.c_void_p]
  lib.ovsw_jpeg_decode_crop_resize.restype = ctypes.c_int
  lib.ovsw_jpeg_decode_crop_resize.argtypes = [
      ctypes.c_char_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int32,
      ctypes.c_int32, ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p,
      ctypes.c_char_p, ctypes.c_int32]
  return lib


def available() -> bool:
  """Whether the install built the native decoder."""
  return _load() is not None


def _check_data(data: bytes) -> None:
  if not isinstance(data, bytes):
    raise TypeError(f'data must be bytes, got {type(data).__name__}')


def image_size(data: bytes) -> Optional[tuple[int, int]]:
  """(height, width) from a JPEG's header, or None if it is not one."""
  _check_data(data)
  hw = np.zeros(2, np.int32)
  if _load().ovsw_jpeg_size(data, len(data), hw.ctypes.data) != 0:
    return None
  return int(hw[0]), int(hw[1])


def decode_crop_resize(data: bytes, box: Sequence[float],
                       out_hw: tuple[int, int],
                       fast_idct: bool = False) -> Optional[np.ndarray]:
  """The box of a JPEG, resized to ``out_hw``: uint8 ``(h, w, 3)``.

  Args:
    data: JPEG bytes.
    box: ``(top, left, height, width)`` in the full image (floats allowed),
      inside the image (`crop_checks.check_box`: refused, not clipped).
    out_hw: output (height, width), each in ``[1, crop_checks.MAX_SIDE]``.
    fast_idct: libjpeg's fast integer IDCT (tf.data's default, slightly less
      accurate) instead of the accurate one (PIL's).

  Returns:
    The pixels, or None for a JPEG the decoder does not convert to RGB (CMYK,
    YCCK): decode those another way.

  Raises:
    TypeError: ``data`` is not bytes.
    ValueError: a bad box or ``out_hw``, naming it.
    crop_checks.ImageTooLargeError: the header declares more pixels than
      `crop_checks.max_image_pixels` (nothing was decoded).
    JpegDecodeError: corrupt or truncated data, with libjpeg's message.
  """
  _check_data(data)
  out_h, out_w = crop_checks.check_out_hw(out_hw)
  box_arr = np.asarray(crop_checks.check_box_shape(box), np.float64)
  limit = crop_checks.max_image_pixels()
  out = np.empty((out_h, out_w, 3), np.uint8)
  err = ctypes.create_string_buffer(_ERR_LEN)
  status = _load().ovsw_jpeg_decode_crop_resize(
      data, len(data), box_arr.ctypes.data, out_h, out_w,
      int(bool(fast_idct)), limit, out.ctypes.data, err, _ERR_LEN)
  message = err.value.decode(errors='replace')
  if status == _OK:
    return out
  if status == _NOT_RGB:
    return None
  if status == _BAD_ARGUMENT:
    raise ValueError(message)
  if status == _TOO_LARGE:
    raise crop_checks.ImageTooLargeError(
        f'{message} (a decompression bomb?); raise the limit with '
        f'${crop_checks.MAX_IMAGE_PIXELS_ENV} if the image is genuine')
  raise JpegDecodeError(f'JPEG decode failed: {message}')
