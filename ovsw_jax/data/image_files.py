"""What counts as an image file, and whether an encoded image is whole.

Image files are recognised by extension, case-insensitively, as torchvision's
``ImageFolder`` does (its ``IMG_EXTENSIONS``, plus GIF and the rarer JPEG
spellings); anything else under a class folder is not an image: it is
ignored and counted. Names starting with "." (``.DS_Store``,
``.ipynb_checkpoints``) are hidden and ignored.

A file with an image extension whose bytes do not decode, or that is over
the decoders' pixel limit (`crop_checks`), is corrupt. `check_image`, run
before each decode, only looks at JPEGs: one that ends with its end-of-image
marker passes; one that does not is decoded fully with PIL, which refuses
truncated data (the native crop decoder, like libjpeg, would quietly fill a
truncated JPEG's missing rows with grey). Other formats are decoded by PIL
anyway, which refuses truncated data itself.
"""

from __future__ import annotations

import io
import os

from ovsw_jax.data import crop_checks

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.jpe', '.jfif', '.png', '.ppm', '.pgm',
                    '.pbm', '.bmp', '.gif', '.tif', '.tiff', '.webp')
_EOI = b'\xff\xd9'


class CorruptImageError(ValueError):
  """An image file whose bytes do not decode; the message names the file."""


def is_hidden(name: str) -> bool:
  return os.path.basename(name.rstrip('/')).startswith('.')


def is_image_name(name: str) -> bool:
  """Whether a file name has an image extension (case-insensitive)."""
  return name.lower().endswith(IMAGE_EXTENSIONS)


def _ends_with_eoi(data: bytes) -> bool:
  # Some writers pad a JPEG with zeros after its end-of-image marker.
  return data[-64:].rstrip(b'\x00').endswith(_EOI)


def _is_jpeg(data: bytes) -> bool:
  return data[:3] == b'\xff\xd8\xff'


def image_problem(data: bytes, thorough: bool = False) -> str | None:
  """Why these bytes are not a whole image, or None if they are.

  Args:
    data: the file's bytes.
    thorough: decode every image with PIL (JPEGs at 1/8 scale: every
      coefficient is still read), after checking its size against the
      pixel limit. False: only a JPEG without its end-of-image marker is
      decoded; anything else passes (the pipeline decodes it next anyway:
      PIL refuses other formats' truncated data itself, and every decoder
      refuses an image over the limit).
  """
  if not data:
    return 'the file is empty'
  if not thorough and not (_is_jpeg(data) and not _ends_with_eoi(data)):
    return None
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as img:
      crop_checks.check_image_size(img.size[1], img.size[0])
      if img.format == 'JPEG':
        img.draft('RGB', (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
      img.load()
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
    # and the limit ImageTooLargeError.
    return f'{type(e).__name__}: {e}'
  return None


def corrupt_message(path: str, problem: str, option: str) -> str:
  """The one line for a corrupt image: the file, why, and the two fixes."""
  return (f'{path} is not a readable image ({problem}); delete or replace '
          f'the file, or set {option}=True to skip corrupt images (they are '
          'then found up front and counted)')


def check_image(data: bytes, path: str,
                option: str = 'dataset_options.skip_corrupt') -> None:
  """Raises `CorruptImageError` naming `path` when `data` is empty or a JPEG
  that is not whole (`image_problem`; other formats are left to PIL's
  decode that follows, which refuses truncated data itself)."""
  problem = image_problem(data)
  if problem is not None:
    raise CorruptImageError(corrupt_message(path, problem, option))
