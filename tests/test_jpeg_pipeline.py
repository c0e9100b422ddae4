"""The JPEG path: scaled decode vs full decode, determinism, uint8 on device,
and train.py end to end on a tiny generated JPEG dataset."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from ovsw_jax import data
from ovsw_jax.data import augment
from ovsw_jax.data import device_normalize
from ovsw_jax.data import jpeg
from ovsw_jax.training import metrics_io

pytest.importorskip('tensorflow_datasets')
pytest.importorskip('importlib_resources')
pytest.importorskip('sklearn')

from benchmarks.lib import jpeg_dataset  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tiny_jpegs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('jpeg'))
  name = jpeg_dataset.write_dataset(root, num_train=16, num_eval=6,
                                    num_classes=4, size_scale=0.25)
  return root, name


def test_scale_factor():
  assert jpeg.scale_factor(448, 448, 224, 224) == 2
  assert jpeg.scale_factor(447, 900, 224, 224) == 1
  assert jpeg.scale_factor(1800, 1800, 224, 224) == 8
  with pytest.raises(ValueError, match='decoder='):
    jpeg.check_decoder('cv2')
  assert jpeg.check_decoder('pil_draft') == 'pil_draft'


@pytest.mark.parametrize('decoder', ['pil_draft', 'simplejpeg', 'native'])
def test_scaled_decode_close_to_full_decode(decoder):
  """DCT scaling is not bit-exact: it averages 8x8 blocks in the frequency
  domain where the full path resizes with a bilinear (triangle) filter. Both
  are low-pass filters of the same pixels, so the crops must agree to a mean
  absolute error of 3 levels of 255 (about 1% of the range, under the JPEG
  quality-90 coding error itself) and a 99th percentile under 16."""
  if decoder == 'simplejpeg':
    pytest.importorskip('simplejpeg')
  if decoder == 'native' and not jpeg.native_jpeg.available():
    pytest.skip('native JPEG decoder not built')
  photos = jpeg_dataset._photos()  # pylint: disable=protected-access
  errs = []
  for i in range(4):
    b = jpeg_dataset.make_jpeg(photos, 0, i, size_scale=1.5)
    # A crop 2x-4x the output: the scaled decode applies (factor 2 or 4).
    box_fn = lambda h, w: (10, 20, h - 20, w - 40)
    full = jpeg.decode_crop_resize(b, box_fn, (96, 96), 'pil')
    fast = jpeg.decode_crop_resize(b, box_fn, (96, 96), decoder)
    assert fast.shape == full.shape == (96, 96, 3)
    errs.append(np.abs(fast.astype(int) - full.astype(int)))
  errs = np.concatenate([e.ravel() for e in errs])
  assert errs.mean() < 3.0, errs.mean()
  assert np.percentile(errs, 99) < 16


def test_augmentation_deterministic_and_resumable(tiny_jpegs):
  root, name = tiny_jpegs
  opts = dict(image_size=32, device_normalize=True)
  fresh = data.create_train_iterator(name, root, 4, seed=3, process_index=0,
                                     process_count=1, prefetch=0, **opts)
  batches = [next(fresh) for _ in range(6)]   # 1.5 epochs of 4 steps.
  resumed = data.create_train_iterator(name, root, 4, seed=3, start_step=4,
                                       process_index=0, process_count=1,
                                       prefetch=2, num_threads=2, **opts)
  for want in batches[4:]:
    got = next(resumed)
    assert got['image'].dtype == np.uint8
    np.testing.assert_array_equal(got['image'], want['image'])
    np.testing.assert_array_equal(got['label'], want['label'])
  # A new epoch crops differently.
  assert not np.array_equal(batches[0]['image'], batches[4]['image'])


def test_uint8_device_normalised_equals_host(tiny_jpegs):
  root, name = tiny_jpegs
  host = data.get_source(name, root, image_size=32)
  dev = data.get_source(name, root, image_size=32, device_normalize=True)
  idx = np.arange(6)
  fn = device_normalize.normalizer(dev.info)
  for h, d in ((host.train_examples(idx, 1, 0), dev.train_examples(idx, 1, 0)),
               (host.eval_examples(idx), dev.eval_examples(idx))):
    assert d[0].dtype == np.uint8 and h[0].dtype == np.float32
    on_device = np.asarray(fn(jnp.asarray(d[0])))
    # Same float32 x * a + b: equal to 1 ulp (XLA may fuse into an FMA).
    np.testing.assert_allclose(on_device, h[0], rtol=0, atol=2e-6)
  floats = jnp.asarray(host.eval_examples(idx)[0])
  assert fn(floats) is floats   # Float batches are left alone.


def test_train_py_end_to_end_on_jpegs(tiny_jpegs, tmp_path):
  root, name = tiny_jpegs
  env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
  overrides = {
      'model': 'cresnet20_1w1a', 'model_options': {'stage_sizes': (1, 1, 1)},
      'dataset': name, 'data_dir': root,
      'dataset_options': {'image_size': 16, 'device_normalize': True},
      'batch_size': 8, 'num_train_steps': 4, 'warmup_epochs': 1,
      'log_every_steps': 2, 'checkpoint_every_steps': 4,
      'eval_every_epochs': 0, 'progress_bar': False, 'prefetch': 0}
  flags = [f'--config.{k}={v!r}' if isinstance(v, (dict, tuple)) else
           f'--config.{k}={v}' for k, v in overrides.items()]
  cmd = [sys.executable, os.path.join(REPO, 'train.py'),
         f"--config={os.path.join(REPO, 'configs', 'quickstart.py')}",
         f'--workdir={tmp_path}', *flags]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                       timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  records = metrics_io.read_metrics(str(tmp_path))
  evals = [r for r in records if 'eval_top1' in r]
  assert evals and evals[-1]['eval_count'] == 6   # Every eval image, once.
  losses = [r['train_loss'] for r in records if 'train_loss' in r]
  assert [r['step'] for r in records if 'train_loss' in r] == [2, 4]
  assert np.all(np.isfinite(losses))


def test_input_pipeline_benchmark_tiny(tmp_path):
  from benchmarks import input_pipeline  # pylint: disable=g-import-not-at-top
  r = input_pipeline.run(num_images=8, num_eval=8, batch=4,
                         decoders=('pil_draft',), data_dir=str(tmp_path),
                         rounds=2)
  arms = r['arms']
  assert {'ours_train_pil_draft', 'ours_eval_pil_draft',
          'ours_train_pil_float'} <= set(arms)
  # Per core: a worker pinned to one core, every arm alone, 2 rounds of 2.
  assert len(r['per_core_cpu_affinity']) == 1
  for name, a in arms.items():
    assert a['timed_batches'] == 4 and len(a['images_per_s_by_round']) == 2
    # Per core-second, exactly: per round, and over all rounds (a weighted
    # mean of the rounds').
    by_round = a['images_per_cpu_s_by_round']
    assert len(by_round) == 2 and all(c > 0 for c in by_round)
    assert min(by_round) <= a['images_per_cpu_s_all_rounds'] <= max(by_round)
    assert a['images_per_cpu_s_all_rounds'] == pytest.approx(
        2 / sum(1 / c for c in by_round))
    assert a['images_per_s'] == pytest.approx(4 / a['batch_s_median'])
    assert a['cpu_utilization'] <= 1.05
    assert a['images_per_cpu_s'] == pytest.approx(
        a['images_per_s'] / a['cpu_utilization'])
    assert r['cores_for_5000_images_per_s'][name] == int(
        np.ceil(5000 / a['images_per_cpu_s']))
  # tf.data's arms and ratios are there exactly when TensorFlow is.
  assert ('tfdata_train' in arms) == r['tensorflow'] == bool(r['ratios'])
  if r['tensorflow']:
    assert r['ratios']['train_pil_draft_per_core_vs_tfdata'] == pytest.approx(
        arms['ours_train_pil_draft']['images_per_cpu_s'] /
        arms['tfdata_train']['images_per_cpu_s'])
    assert len(r['ratios']['eval_pil_draft_per_core_vs_tfdata_by_round']) == 2
  # Every core: ours with a thread per core (the native decoder, if built).
  threaded = r['threaded']
  assert threaded['cores'] == len(os.sched_getaffinity(0))
  assert ('ours_train_native_threads' in threaded) == (
      jpeg.native_jpeg.available())
  assert r['breakdown_s_per_image']['transfer_uint8'] > 0
  with pytest.raises(ValueError, match='rounds=0'):
    input_pipeline.run(8, 8, 4, ('pil_draft',), str(tmp_path), rounds=0)


def test_fidelity_against_pils_full_decode(tiny_jpegs):
  from benchmarks import input_pipeline  # pylint: disable=g-import-not-at-top
  root, _ = tiny_jpegs
  images = input_pipeline._jpeg_bytes(root, 'train')  # pylint: disable=protected-access
  r = input_pipeline.fidelity(images, ('pil', 'pil_draft'), n=4)
  assert r['images'] == 4
  # PIL against itself: identical.
  assert r['decoders']['pil'] == {'mean': 0.0, 'p99': 0.0, 'max': 0}
  d = r['decoders']['pil_draft']
  assert 0 <= d['mean'] <= d['p99'] <= d['max'] <= 255
