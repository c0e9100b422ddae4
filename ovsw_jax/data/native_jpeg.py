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
(`ovsw_jax.data.jpeg`).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

_HERE = Path(__file__).resolve().parent
_LIBRARY_GLOB = '_jpeg_crop*.so'
_ERR_LEN = 256


class JpegDecodeError(ValueError):
  """Bytes the native decoder could not decode."""


@functools.lru_cache(maxsize=None)
def _load() -> Optional[ctypes.CDLL]:
  found = sorted(_HERE.glob(_LIBRARY_GLOB))
  if not found:
    return None
  lib = ctypes.CDLL(str(found[0]))
  lib.ovsw_jpeg_size.restype = ctypes.c_int
  lib.ovsw_jpeg_size.argtypes = [ctypes.c_char_p, ctypes.c_int64,
                                 ctypes.c_void_p]
  lib.ovsw_jpeg_decode_crop_resize.restype = ctypes.c_int
  lib.ovsw_jpeg_decode_crop_resize.argtypes = [
      ctypes.c_char_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int32,
      ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p,
      ctypes.c_int32]
  return lib


def available() -> bool:
  """Whether the install built the native decoder."""
  return _load() is not None


def image_size(data: bytes) -> Optional[tuple[int, int]]:
  """(height, width) from a JPEG's header, or None if it is not one."""
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
    box: ``(top, left, height, width)`` in the full image (floats allowed).
    out_hw: output (height, width).
    fast_idct: libjpeg's fast integer IDCT (tf.data's default, slightly less
      accurate) instead of the accurate one (PIL's).

  Returns:
    The pixels, or None for a JPEG the decoder does not convert to RGB (CMYK,
    YCCK): decode those another way.

  Raises:
    JpegDecodeError: corrupt data, with libjpeg's message.
  """
  out = np.empty((out_hw[0], out_hw[1], 3), np.uint8)
  box_arr = np.asarray(box, np.float64)
  err = ctypes.create_string_buffer(_ERR_LEN)
  status = _load().ovsw_jpeg_decode_crop_resize(
      data, len(data), box_arr.ctypes.data, int(out_hw[0]), int(out_hw[1]),
      int(bool(fast_idct)), out.ctypes.data, err, _ERR_LEN)
  if status == 1:
    return None
  if status != 0:
    raise JpegDecodeError(f'JPEG decode failed: {err.value.decode()}')
  return out
