"""The JPEG crop decoders refuse bad arguments and hostile files by name.

Each case the native decoder once crashed on (out_hw=(0, 64): segfault; a
box of 1e9 pixels: hang; a box of size <= 0: a silent 64x64 image; a box
outside the image: a misleading libjpeg message) runs in a child process with
a timeout, so that a regression fails this test instead of killing pytest;
the child calls both layers, the Python wrapper and the C function itself.
Every decoder must refuse the same boxes and sizes with the same message, a
decompression bomb must be refused from its header before its pixels are
allocated, and a truncated file must not decode as gray.
"""

import io
import json
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from ovsw_jax.data import crop_checks
from ovsw_jax.data import jpeg
from ovsw_jax.data import native_jpeg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_decoder = pytest.mark.skipif(
    not native_jpeg.available(),
    reason='native JPEG decoder not built: install libjpeg-turbo headers and '
    'pip install -e .')

# (box, out_hw, what the refusal must name), on a 300x400 image.
BAD_ARGUMENTS = {
    'out_h_zero': ((10, 20, 100, 100), (0, 64), r'out_hw=\(0, 64\)'),
    'out_w_zero': ((10, 20, 100, 100), (64, 0), r'out_hw=\(64, 0\)'),
    'out_negative': ((10, 20, 100, 100), (-3, 64), r'out_hw=\(-3, 64\)'),
    'out_too_big': ((10, 20, 100, 100), (70000, 64), r'out_hw=\(70000, 64\)'),
    'box_huge': ((10, 20, 1e9, 1e9), (64, 64), r'box=\(10.*past the 300x400'),
    'box_negative': ((10, 20, 100, -50), (64, 64), r'width -50'),
    'box_zero': ((10, 20, 0, 0), (64, 64), r'height 0 and width 0'),
    'box_outside': ((1000, 1000, 50, 50), (64, 64), r'1000.*past the 300x400'),
    'box_partly_outside': ((250, 20, 100, 100), (64, 64), r'past the 300x400'),
    'box_nan': ((float('nan'), 0, 10, 10), (64, 64), r'finite'),
    'box_inf': ((0, 0, float('inf'), 10), (64, 64), r'finite'),
    'box_above': ((-5, 0, 10, 10), (64, 64), r'top and left must be >= 0'),
}

# Run in a child: each bad argument through the wrapper, and through the C
# function with the Python checks bypassed (status 3 and a message).
CHILD = r'''
import ctypes, io, json, sys
import numpy as np
from PIL import Image
from ovsw_jax.data import native_jpeg
cases = json.loads(sys.argv[1])
img = Image.fromarray(np.random.default_rng(0).integers(
    0, 255, (300, 400, 3), dtype=np.uint8))
buf = io.BytesIO()
img.save(buf, format='JPEG')
data = buf.getvalue()
lib = native_jpeg._load()
out = {}
for name, (box, out_hw) in cases.items():
  box = [float(b) for b in box]
  try:
    native_jpeg.decode_crop_resize(data, box, tuple(out_hw))
    wrapper = 'no error'
  except Exception as e:
    wrapper = f'{type(e).__name__}: {e}'
  pixels = np.zeros(64 * 64 * 3, np.uint8)  # never written on a refusal
  err = ctypes.create_string_buffer(256)
  status = lib.ovsw_jpeg_decode_crop_resize(
      data, len(data), np.asarray(box, np.float64).ctypes.data, out_hw[0],
      out_hw[1], 0, 10**8, pixels.ctypes.data, err, 256)
  out[name] = [wrapper, status, err.value.decode()]
print(json.dumps(out))
'''


@needs_decoder
def test_the_crashing_arguments_are_refused_in_both_layers():
  # The C function checks before it writes: a 64x64 buffer is never overrun.
  cases = {k: [[float(b) for b in box], list(out_hw)]
           for k, (box, out_hw, _) in BAD_ARGUMENTS.items()}
  proc = subprocess.run(
      [sys.executable, '-c', CHILD, json.dumps(cases)], cwd=REPO,
      capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, (
      f'the child died (exit {proc.returncode}: 139 is a segfault):\n'
      f'{proc.stderr[-3000:]}')
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  for name, (wrapper, status, message) in results.items():
    pattern = BAD_ARGUMENTS[name][2]
    assert wrapper.startswith('ValueError'), (name, wrapper)
    assert re.search(pattern, wrapper), (name, wrapper)
    # The C layer on its own: refused as a bad argument, with a message.
    assert status == 3 and message, (name, status, message)


def _jpeg(h=300, w=400, **save_kw) -> bytes:
  rng = np.random.default_rng(1)
  img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=90, **save_kw)
  return buf.getvalue()


def _decoders():
  names = ['pil', 'pil_draft', 'simplejpeg']
  return names + (['native'] if native_jpeg.available() else [])


@pytest.mark.parametrize('name', sorted(BAD_ARGUMENTS))
def test_every_decoder_refuses_the_same_arguments(name):
  box, out_hw, pattern = BAD_ARGUMENTS[name]
  data = _jpeg()
  for decoder in _decoders():
    with pytest.raises(ValueError, match=pattern):
      jpeg.decode_crop_resize(data, lambda h, w: box, out_hw, decoder)


def test_boxes_at_the_edges_are_accepted_within_the_tolerance():
  data = _jpeg()
  edge = (0.0, 0.0, 300.0 + 1e-9, 400.0)  # float rounding of a full box
  for decoder in _decoders():
    out = jpeg.decode_crop_resize(data, lambda h, w: edge, (8, 8), decoder)
    assert out.shape == (8, 8, 3), decoder
  assert crop_checks.check_box((0, 0, 300, 400.0005), 300, 400)[3] == 400.0005
  with pytest.raises(ValueError, match='past the 300x400'):
    crop_checks.check_box((0, 0, 300, 400.01), 300, 400)


def with_declared_size(data: bytes, h: int, w: int) -> bytes:
  """``data`` whose SOF header declares h x w (the pixels stay small)."""
  for sof in (b'\xff\xc0', b'\xff\xc2'):
    i = data.find(sof)
    if i >= 0:
      return (data[:i + 5] + h.to_bytes(2, 'big') + w.to_bytes(2, 'big') +
              data[i + 9:])
  raise ValueError('no SOF0/SOF2 marker')


@pytest.mark.parametrize('progressive', [False, True])
def test_decompression_bomb_is_refused_from_its_header(progressive):
  import resource  # pylint: disable=g-import-not-at-top
  bomb = with_declared_size(_jpeg(64, 64, progressive=progressive), 65000,
                            65000)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  for decoder in _decoders():
    with pytest.raises(crop_checks.ImageTooLargeError,
                       match='4225000000 pixels'):
      jpeg.decode_crop_resize(bomb, lambda h, w: (0, 0, 64, 64), (8, 8),
                              decoder)
  if native_jpeg.available():  # The C++ check, without the Python one.
    with pytest.raises(crop_checks.ImageTooLargeError, match='65000x65000'):
      native_jpeg.decode_crop_resize(bomb, (0, 0, 64, 64), (8, 8))
  # 65000^2 pixels would be 12 GB of RGBX, 8 GB of progressive coefficients.
  grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1e3
  assert grown_mb < 200, grown_mb


def test_the_pixel_limit_is_configurable(monkeypatch):
  data = _jpeg()  # 120,000 pixels
  monkeypatch.setenv(crop_checks.MAX_IMAGE_PIXELS_ENV, '100000')
  for decoder in _decoders():
    with pytest.raises(crop_checks.ImageTooLargeError, match='300x400'):
      jpeg.decode_crop_resize(data, lambda h, w: (0, 0, h, w), (8, 8),
                              decoder)
  crop_checks.set_max_image_pixels(200_000)  # the setter wins over the env
  try:
    for decoder in _decoders():
      assert jpeg.decode_crop_resize(data, lambda h, w: (0, 0, h, w), (8, 8),
                                     decoder).shape == (8, 8, 3)
  finally:
    crop_checks.set_max_image_pixels(None)
  monkeypatch.setenv(crop_checks.MAX_IMAGE_PIXELS_ENV, 'lots')
  with pytest.raises(ValueError, match="OVSW_MAX_IMAGE_PIXELS='lots'"):
    crop_checks.max_image_pixels()
  monkeypatch.delenv(crop_checks.MAX_IMAGE_PIXELS_ENV)
  assert crop_checks.max_image_pixels() == 89_478_485
  with pytest.raises(ValueError, match='max_image_pixels=0'):
    crop_checks.set_max_image_pixels(0)


@needs_decoder
def test_truncated_file_is_refused_where_its_rows_are_needed():
  data = _jpeg(256, 256)
  cut = data[:len(data) * 6 // 10]
  full = (0, 0, 256, 256)
  with pytest.raises(native_jpeg.JpegDecodeError, match='Premature end'):
    native_jpeg.decode_crop_resize(cut, full, (32, 32))
  with pytest.raises(OSError, match='truncated'):  # PIL refuses it too
    jpeg.decode_crop_resize(cut, lambda h, w: full, (32, 32), 'pil')
  # Rows below the box are never read (as tf.data's decode_and_crop_jpeg):
  # a box in the rows that are there decodes as from the whole file.
  top = (0, 0, 64, 256)
  np.testing.assert_array_equal(
      native_jpeg.decode_crop_resize(cut, top, (16, 64)),
      native_jpeg.decode_crop_resize(data, top, (16, 64)))


@needs_decoder
def test_native_wrapper_refuses_non_bytes_and_empty_data():
  with pytest.raises(TypeError, match='bytes, got bytearray'):
    native_jpeg.decode_crop_resize(bytearray(_jpeg()), (0, 0, 8, 8), (4, 4))
  with pytest.raises(ValueError, match='empty or unreadable JPEG buffer'):
    native_jpeg.decode_crop_resize(b'', (0, 0, 8, 8), (4, 4))
  assert native_jpeg.image_size(b'') is None
