"""The native JPEG crop decoder (C++ on libjpeg-turbo) against PIL.

It decodes only the crop window (and, for crops at least twice the output,
at a DCT scale), then resizes with PIL's BILINEAR filter in float. Against
PIL's full decode + resize of the same box it must agree closely: the crop
window changes nothing (libjpeg computes the same pixels), so the only
differences are float-vs-fixed-point rounding of the filter and, when the
DCT scale applies, the frequency-domain downscale.
"""

import functools
import io
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from ovsw_jax import data
from ovsw_jax.data import augment
from ovsw_jax.data import jpeg
from ovsw_jax.data import native_jpeg
from ovsw_jax.data import pipeline

pytest.importorskip('sklearn')
from benchmarks.lib import jpeg_dataset  # pylint: disable=g-import-not-at-top

needs_decoder = pytest.mark.skipif(not native_jpeg.available(),
                                   reason='native JPEG decoder not built')
HEADERS = ('/usr/include/jpeglib.h', '/usr/local/include/jpeglib.h')


@pytest.fixture(scope='module')
def photos():
  p = jpeg_dataset._photos()  # pylint: disable=protected-access
  return [jpeg_dataset.make_jpeg(p, 0, i) for i in range(12)]


def test_decoder_is_built_where_libjpeg_turbo_is():
  if shutil.which('c++') and any(os.path.exists(h) for h in HEADERS):
    assert native_jpeg.available(), (
        'libjpeg headers and a compiler are present but '
        'ovsw_jax/data/_jpeg_crop*.so was not built: see pip install -v')
    assert jpeg.check_decoder('auto') == 'native'


def _errors(photos, box_for, out_hw, ref='pil'):
  errs = []
  for i, b in enumerate(photos):
    box_fn = box_for(i)
    want = jpeg.decode_crop_resize(b, box_fn, out_hw, ref).astype(int)
    got = jpeg.decode_crop_resize(b, box_fn, out_hw, 'native')
    assert got.shape == (*out_hw, 3) and got.dtype == np.uint8
    errs.append(np.abs(got.astype(int) - want).ravel())
  return np.concatenate(errs)


@needs_decoder
def test_train_and_eval_crops_match_pils_full_decode(photos):
  """Random resized crops (the train transform) and the eval crop of
  ImageNet-sized photos: within 1 level of 255 on average, and 99% of values
  within 3 (measured: mean 0.23 / 0.14, p99 2 / 1). For scale: tf.data's
  decode_and_crop_jpeg + bicubic resize, flax's ImageNet pipeline, differs
  from the same PIL reference by mean 2.0, p99 17 on these crops."""
  u = augment.uniforms(0, 0, np.arange(len(photos)), augment.RESIZED_CROP,
                       4 * augment.RESIZED_CROP_ATTEMPTS)
  train = _errors(photos, lambda i: functools.partial(
      augment.random_resized_crop_box, u=u[i]), (224, 224))
  evals = _errors(photos, lambda i: functools.partial(
      augment.eval_crop_box, out_hw=(224, 224), fraction=0.875), (224, 224))
  for e in (train, evals):
    assert e.mean() < 1.0, e.mean()
    assert np.percentile(e, 99) <= 3


@needs_decoder
def test_dct_scaled_crops_match_pils_scaled_decode(photos):
  # A crop 4x the output: both decode at 1/4 (libjpeg's DCT scaling), so
  # only the resize's rounding and the crop window differ.
  e = _errors(photos[:4], lambda i: (lambda h, w: (10, 20, h - 20, w - 40)),
              (96, 96), ref='pil_draft')
  assert e.mean() < 2.0 and np.percentile(e, 99) < 16, (
      e.mean(), np.percentile(e, 99))


@needs_decoder
def test_upscaled_and_float_boxes(photos):
  # A box smaller than the output (upscaling), at float coordinates as the
  # eval path gives them (measured: mean 0.10, p99 1, max 6).
  e = _errors(photos[:3], lambda i: (lambda h, w: (5.5, 7.25, 100.0, 120.5)),
              (224, 224))
  assert e.mean() < 0.5 and np.percentile(e, 99) <= 1 and e.max() <= 8, (
      e.mean(), e.max())


def _encode(img: Image.Image, **kw) -> bytes:
  buf = io.BytesIO()
  img.save(buf, **kw)
  return buf.getvalue()


@needs_decoder
def test_grayscale_progressive_cmyk_and_non_jpeg(photos):
  rgb = Image.open(io.BytesIO(photos[0])).convert('RGB')
  box = lambda h, w: (10, 12, h // 2, w // 2)
  cases = {
      'gray': _encode(rgb.convert('L'), format='JPEG', quality=90),
      'progressive': _encode(rgb, format='JPEG', quality=90,
                             progressive=True),
      'cmyk': _encode(rgb.convert('CMYK'), format='JPEG', quality=90),
      'png': _encode(rgb, format='PNG'),
  }
  for name, b in cases.items():
    want = jpeg.decode_crop_resize(b, box, (64, 64), 'pil')
    got = jpeg.decode_crop_resize(b, box, (64, 64), 'native')
    assert got.shape == (64, 64, 3), name
    diff = np.abs(got.astype(int) - want.astype(int))
    if name in ('cmyk', 'png'):  # Not decoded natively: PIL's own result.
      np.testing.assert_array_equal(got, want, err_msg=name)
    else:
      assert diff.mean() < 1.0 and diff.max() <= 8, (name, diff.max())
  assert native_jpeg.decode_crop_resize(cases['cmyk'], (0, 0, 8, 8),
                                        (4, 4)) is None


@needs_decoder
def test_deterministic_and_corrupt_data_named(photos):
  box = (3.0, 4.0, 200.0, 180.0)
  a = native_jpeg.decode_crop_resize(photos[1], box, (32, 32))
  b = native_jpeg.decode_crop_resize(photos[1], box, (32, 32))
  np.testing.assert_array_equal(a, b)
  assert native_jpeg.image_size(photos[1]) == Image.open(
      io.BytesIO(photos[1])).size[::-1]
  assert native_jpeg.image_size(b'not a jpeg') is None
  with pytest.raises(native_jpeg.JpegDecodeError, match='JPEG decode failed'):
    native_jpeg.decode_crop_resize(b'\xff\xd8\xff\xe0' + b'\x00' * 64, box,
                                   (8, 8))


def test_decoder_choice_and_errors(monkeypatch):
  assert jpeg.check_decoder('pil') == 'pil'
  monkeypatch.setattr(native_jpeg, 'available', lambda: False)
  assert jpeg.check_decoder('auto') == 'pil_draft'
  with pytest.raises(ImportError, match='libjpeg-turbo8-dev.*pil_draft'):
    jpeg.check_decoder('native')


def test_jpeg_sources_get_a_thread_per_core(tmp_path):
  root = str(tmp_path)
  name = jpeg_dataset.write_dataset(root, num_train=4, num_eval=2,
                                    num_classes=2, size_scale=0.1)
  source = data.get_source(name, root, image_size=16)
  assert source.decode_bound
  cores = min(len(os.sched_getaffinity(0)), pipeline.MAX_DECODE_THREADS)
  assert pipeline.default_num_threads(source, 2) == max(2, cores)
  digits = data.get_source('digits', None)
  assert not getattr(digits, 'decode_bound', False)
  assert pipeline.default_num_threads(digits, 2) == 2
