"""Tests of ovsw_jax.data: datasets, determinism, sharding, augmentation."""

from __future__ import annotations

from fractions import Fraction
import itertools
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ovsw_jax import data
from ovsw_jax.data import augment
from ovsw_jax.data import cifar
from ovsw_jax.data import digits
from ovsw_jax.data import synthetic

DATA_DIR = Path(os.environ.get('OVSW_DATA_DIR') or
                Path(__file__).parents[1].parent / 'shared/data')
CIFAR_BIN = DATA_DIR / 'cifar-10-batches-bin'
needs_cifar = pytest.mark.skipif(
    not (CIFAR_BIN / 'test_batch.bin').is_file(),
    reason=f'real CIFAR-10 binary files not found in {CIFAR_BIN} (set '
    'OVSW_DATA_DIR to the folder holding cifar-10-batches-bin/)')

# A tiny synthetic dataset: 5 steps per epoch at batch 20.
SYN = dict(num_train=100, num_eval=30, image_shape=(8, 8, 3), num_classes=4)
ONE_HOST = dict(process_index=0, process_count=1)


def take(it, n):
  return list(itertools.islice(it, n))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def denormalize(images, info, pixel_scale=255.0):
  mean = np.asarray(info.mean, np.float32)
  std = np.asarray(info.std, np.float32)
  return np.rint((images * std + mean) * pixel_scale)


def find_crop(augmented, source, pad):
  """All (dy, dx, flip) whose crop of the zero-padded source is `augmented`."""
  h, w, _ = source.shape
  padded = np.pad(source, ((pad, pad), (pad, pad), (0, 0)))
  hits = []
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      crop = padded[dy:dy + h, dx:dx + w]
      for flip in (False, True):
        if np.array_equal(crop[:, ::-1] if flip else crop, augmented):
          hits.append((dy, dx, flip))
  return hits


# ----------------------------------------------------------------- real CIFAR


@needs_cifar
def test_cifar10_official_files_decode():
  a = cifar.load('cifar10', str(DATA_DIR), download=False)
  assert a.train_images.shape == (50_000, 32, 32, 3)
  assert a.test_images.shape == (10_000, 32, 32, 3)
  assert a.train_images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(a.train_labels), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(a.test_labels), [1000] * 10)
  raw = np.fromfile(CIFAR_BIN / 'test_batch.bin', np.uint8, count=3073)
  assert a.test_labels[0] == raw[0]
  # Records are CHW; the arrays HWC: pixel (0, 0) is at bytes 1, 1025, 2049.
  np.testing.assert_array_equal(a.test_images[0, 0, 0], raw[[1, 1025, 2049]])
  np.testing.assert_array_equal(a.test_images[0, 1, 2, 0], raw[1 + 32 + 2])
  # data_dir may be the folder itself; the decoded arrays are cached.
  assert cifar.load('cifar10', str(CIFAR_BIN), download=False) is a
  info = data.get_dataset_info('cifar10', str(DATA_DIR))
  assert info == data.DatasetInfo('cifar10', 10, (32, 32, 3), 50_000, 10_000,
                                  (0.4914, 0.4822, 0.4465),
                                  (0.2470, 0.2435, 0.2616))
  assert data.steps_per_epoch(info, 256) == 195
  assert data.num_eval_batches(info, 3000) == 4


@needs_cifar
def test_cifar10_eval_iterator_covers_test_set_once():
  a = cifar.load('cifar10', str(DATA_DIR), download=False)
  info = data.get_dataset_info('cifar10', str(DATA_DIR))
  batches = list(data.create_eval_iterator('cifar10', str(DATA_DIR), 3000,
                                           **ONE_HOST))
  assert len(batches) == 4
  assert [b['image'].shape for b in batches] == [(3000, 32, 32, 3)] * 4
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.dtype == bool and masks.sum() == 10_000
  assert masks[:10_000].all() and not masks[10_000:].any()
  assert not batches[-1]['image'][1000:].any()
  labels = np.concatenate([b['label'] for b in batches])[:10_000]
  np.testing.assert_array_equal(labels, a.test_labels)
  images = np.concatenate([b['image'] for b in batches])[:10_000]
  np.testing.assert_array_equal(denormalize(images, info), a.test_images)


@needs_cifar
def test_cifar10_train_epoch_is_a_permutation_with_augmentation():
  a = cifar.load('cifar10', str(DATA_DIR), download=False)
  info = data.get_dataset_info('cifar10', str(DATA_DIR))
  # Batch 1000: 50 steps an epoch, nothing dropped.
  epoch = np.concatenate([data.global_batch_indices(50_000, 1000, 7, s)
                          for s in range(50)])
  np.testing.assert_array_equal(np.sort(epoch), np.arange(50_000))
  np.testing.assert_array_equal(np.bincount(a.train_labels[epoch]),
                                [5000] * 10)
  # The last batch of epoch 0 and the first of epoch 1, resuming at step 49.
  it = data.create_train_iterator('cifar10', str(DATA_DIR), 1000, seed=7,
                                  start_step=49, prefetch=0, **ONE_HOST)
  for step, batch in zip((49, 50), take(it, 2)):
    assert batch['image'].shape == (1000, 32, 32, 3)
    idx = data.global_batch_indices(50_000, 1000, seed=7, step=step)
    np.testing.assert_array_equal(batch['label'], a.train_labels[idx])
  assert not np.array_equal(idx, epoch[:1000])  # Epoch 1 reshuffled.
  # Each image is a crop (4-pixel zero padding) of its source, maybe flipped.
  images = denormalize(batch['image'][:32], info)
  hits = [find_crop(images[i], a.train_images[idx[i]], pad=4)
          for i in range(32)]
  assert all(hits), 'an augmented image is not a crop of its source'
  offsets = {h[0][:2] for h in hits}
  assert len(offsets) > 5, offsets
  assert 0 < sum(h[0][2] for h in hits) < 32


# ------------------------------------------------------ determinism, sharding


def syn_train(seed=0, batch=20, **kwargs):
  kwargs = {**ONE_HOST, 'prefetch': 0, **kwargs}
  return data.create_train_iterator('synthetic', None, batch, seed=seed,
                                    **SYN, **kwargs)


def test_same_seed_same_batches_and_resume_from_step():
  full = take(syn_train(seed=3), 12)
  assert_batches_equal(full, take(syn_train(seed=3), 12))
  assert not np.array_equal(full[0]['image'], take(syn_train(seed=4), 1)[0]
                            ['image'])
  for start in (1, 5, 7):
    assert_batches_equal(full[start:], take(syn_train(seed=3,
                                                      start_step=start),
                                            12 - start))
  b = full[0]
  assert b['image'].shape == (20, 8, 8, 3) and b['image'].dtype == np.float32
  assert b['label'].shape == (20,) and b['label'].dtype == np.int32


def test_hosts_rows_concatenate_to_the_single_host_batch():
  single = take(syn_train(seed=1), 7)
  hosts = [take(syn_train(seed=1, process_index=p, process_count=4), 7)
           for p in range(4)]
  for s in range(7):
    assert hosts[0][s]['image'].shape == (5, 8, 8, 3)
    for k in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([h[s][k] for h in hosts]), single[s][k])


def test_eval_hosts_pad_and_mask_the_last_batch():
  # 30 examples at batch 8: 4 batches, the last holds 6 real rows.
  assert data.num_eval_batches('synthetic', 8, **SYN) == 4
  assert data.steps_per_epoch('synthetic', 20, **SYN) == 5
  single = list(data.create_eval_iterator('synthetic', None, 8, **SYN,
                                          **ONE_HOST))
  hosts = [list(data.create_eval_iterator('synthetic', None, 8, **SYN,
                                          process_index=p, process_count=2))
           for p in range(2)]
  assert [len(h) for h in hosts] == [4, 4]
  np.testing.assert_array_equal(hosts[0][3]['mask'], [True] * 4)
  np.testing.assert_array_equal(hosts[1][3]['mask'], [True, True, False,
                                                      False])
  for k in range(4):
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(
          np.concatenate([h[k][key] for h in hosts]), single[k][key])
  assert not hosts[1][3]['image'][2:].any()
  images, labels = synthetic.make_examples(np.arange(30), False, (8, 8, 3), 4)
  info = data.get_dataset_info('synthetic', **SYN)
  got = np.concatenate([b['image'] for b in single])[:30]
  np.testing.assert_array_equal(denormalize(got, info), images)
  np.testing.assert_array_equal(
      np.concatenate([b['label'] for b in single])[:30], labels)


def test_epochs_are_permutations_in_different_orders():
  # 105 examples at batch 20: 5 steps an epoch, 5 examples dropped each epoch.
  perms = [np.concatenate([data.global_batch_indices(105, 20, 0, s)
                           for s in range(5 * e, 5 * e + 5)])
           for e in range(3)]
  for p in perms:
    assert len(p) == 100 and len(np.unique(p)) == 100 and p.max() < 105
  assert not np.array_equal(perms[0], perms[1])
  assert set(perms[0]) != set(perms[1])  # Different examples dropped.
  np.testing.assert_array_equal(perms[1],
                                data.epoch_permutation(105, 0, 1)[:100])
  # Through the iterator: same label multiset each epoch, different order.
  batches = take(syn_train(seed=0), 10)
  e0 = np.concatenate([b['label'] for b in batches[:5]])
  e1 = np.concatenate([b['label'] for b in batches[5:]])
  np.testing.assert_array_equal(np.sort(e0), np.sort(e1))
  assert not np.array_equal(e0, e1)


def test_threads_and_workers_do_not_change_content():
  reference = take(syn_train(seed=5), 8)
  assert_batches_equal(reference, take(syn_train(seed=5, prefetch=4,
                                                 num_threads=3), 8))
  it = syn_train(seed=5, start_step=2, worker_count=2, prefetch=2)
  try:
    got = take(it, 6)
    assert_batches_equal(reference[2:], [{k: np.array(v) for k, v in b.items()}
                                         for b in got])
    del got
  finally:
    it.close()


def test_augmentation_depends_on_seed_epoch_and_index_only():
  keys = augment.uniforms(9, 2, np.array([3, 5, 7]), 0, 4)
  np.testing.assert_array_equal(keys[1], augment.uniforms(9, 2, [5], 0, 4)[0])
  assert not np.array_equal(keys, augment.uniforms(9, 3, [3, 5, 7], 0, 4))
  assert not np.array_equal(keys, augment.uniforms(10, 2, [3, 5, 7], 0, 4))
  u = augment.uniforms(0, 0, np.arange(20_000), 0, 2)
  assert 0 <= u.min() and u.max() < 1
  assert abs(u.mean() - 0.5) < 0.01 and abs(np.corrcoef(u.T)[0, 1]) < 0.03


def test_an_example_is_augmented_afresh_each_epoch():
  batches = take(syn_train(seed=2), 10)
  by_index = [{}, {}]
  for step, b in enumerate(batches):
    for i, image in zip(data.global_batch_indices(100, 20, 2, step),
                        b['image']):
      by_index[step // 5][int(i)] = image
  same = sum(np.array_equal(by_index[0][i], by_index[1][i])
             for i in range(100))
  # 3x3 offsets x 2 flips: about 100/18 repeats by chance.
  assert same < 20, same


def test_default_hosts_come_from_jax():
  import jax  # pylint: disable=g-import-not-at-top
  it = data.create_train_iterator('synthetic', None, 20, seed=0, prefetch=0,
                                  **SYN)
  assert next(it)['label'].shape == (20 // jax.process_count(),)


# --------------------------------------------------------------- augmentation


def pad_crop_flip_loop(images, oy, ox, flip, pad):
  n, h, w, _ = images.shape
  out = np.empty_like(images)
  for i in range(n):
    p = np.pad(images[i], ((pad, pad), (pad, pad), (0, 0)))
    crop = p[oy[i]:oy[i] + h, ox[i]:ox[i] + w]
    out[i] = crop[:, ::-1] if flip[i] else crop
  return out


def test_pad_crop_flip_matches_numpy_loop():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, size=(50, 6, 7, 3), dtype=np.uint8)
  oy, ox = rng.integers(0, 5, size=(2, 50))
  flip = rng.random(50) < 0.5
  got = augment.pad_crop_flip(images, oy, ox, flip, pad=2)
  np.testing.assert_array_equal(got, pad_crop_flip_loop(images, oy, ox, flip,
                                                        2))
  rand = augment.random_pad_crop_flip(images, np.arange(50), seed=1, epoch=0,
                                      pad=2)
  hits = [find_crop(rand[i], images[i], pad=2) for i in range(50)]
  assert all(len(h) == 1 for h in hits)  # Nonzero pixels: a unique match.
  assert len({h[0][:2] for h in hits}) > 10
  assert 10 < sum(h[0][2] for h in hits) < 40
  no_flip = augment.random_pad_crop_flip(images, np.arange(50), 1, 0, pad=2,
                                         flip=False)
  assert all(find_crop(no_flip[i], images[i], 2)[0][2] is False
             for i in range(50))


def test_random_offsets_cover_the_range_uniformly():
  u = augment.uniforms(0, 0, np.arange(9000), augment.CROP_Y, 3)
  images = np.zeros((9000, 1, 1, 1), np.uint8)
  images[:] = 1
  out = augment.random_pad_crop_flip(images, np.arange(9000), 0, 0, pad=4)
  # A 1x1 image padded by 4: the pixel survives only at offset (4, 4).
  # floor(u * 9) in exact arithmetic (u is a multiple of 2**-53).
  exact = [[int(Fraction(float(v)) * 9) for v in row] for row in u[:, :2]]
  expected = (np.asarray(exact) == 4).all(axis=1)
  np.testing.assert_array_equal(out[:, 0, 0, 0] == 1, expected)
  assert abs(expected.mean() - 1 / 81) < 0.006
  assert abs((u[:, 2] < 0.5).mean() - 0.5) < 0.03


def test_below_is_exact_where_float64_rounds_up():
  # floor(u * n) of `uniforms`' u, without float64's rounding: u * 9 rounds
  # up to an integer for 4 of the 2**53 values of u (the old formula).
  words = augment.draws(5, 1, np.arange(20_000), 0, 1)[:, 0]
  m = np.concatenate([words >> np.uint64(11), np.asarray(
      [(k << 53) // 9 for k in range(1, 9)], np.uint64)])
  for n in (1, 3, 5, 9, 17, 2047):
    got = augment.below(m << np.uint64(11), n)
    want = [int(v) * n >> 53 for v in m]
    np.testing.assert_array_equal(got, want)
    assert got.max() < n
  boundary = (2 << 53) // 9  # The largest m with floor(m * 9 / 2**53) = 1.
  assert int(np.float64(boundary) / (1 << 53) * 9) == 2  # float64 says 2
  assert augment.below(np.uint64(boundary) << np.uint64(11), 9) == 1
  with pytest.raises(ValueError, match='n=2048'):
    augment.below(words, 2048)


def test_normalize_formula():
  x = np.arange(2 * 3, dtype=np.uint8).reshape(1, 1, 2, 3) * 40
  got = augment.normalize(x, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
  want = (x / 255.0 - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.25, 2.0])
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_random_resized_crop_box():
  # u = 0.99 for the area, 0.5 for the log-ratio: ~the whole square image.
  u = np.tile([0.99, 0.5, 0.3, 0.7], augment.RESIZED_CROP_ATTEMPTS)
  top, left, h, w = augment.random_resized_crop_box(100, 100, u)
  assert (h, w) == (100, 100) and (top, left) == (0, 0)
  u = np.tile([0.0, 0.0, 0.999, 0.0], augment.RESIZED_CROP_ATTEMPTS)
  top, left, h, w = augment.random_resized_crop_box(200, 300, u)
  # area 0.08 * 60000, ratio 3/4: w = sqrt(4800 * 0.75) = 60, h = 80.
  assert (h, w) == (80, 60) and top == 200 - 80 and left == 0
  # A 100x10 strip admits no crop of ratio >= 3/4 and area >= 8%: torchvision
  # falls back to the central crop with the ratio clamped.
  u = np.tile([0.99, 0.0, 0.5, 0.5], augment.RESIZED_CROP_ATTEMPTS)
  assert augment.random_resized_crop_box(100, 10, u) == (43, 0, 13, 10)
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = augment.random_resized_crop_box(
        120, 160, rng.random(4 * augment.RESIZED_CROP_ATTEMPTS))
    assert 0 <= top <= 120 - h and 0 <= left <= 160 - w
    assert 0.08 * 0.95 <= h * w / (120 * 160) <= 1.0
    assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_pca_lighting_adds_one_colour_per_example():
  x = np.zeros((3, 2, 2, 3), np.float32)
  out = augment.pca_lighting(x.copy(), 0, 0, np.arange(3), 0.1)
  assert np.ptp(out, axis=(1, 2)).max() == 0  # Same shift on every pixel.
  assert not np.allclose(out[0], out[1])
  # The shift lies in the span of the eigenvectors, scaled by the eigenvalues.
  alpha = np.linalg.solve(augment.IMAGENET_EIGVEC * augment.IMAGENET_EIGVAL,
                          out[:, 0, 0].T).T
  assert np.abs(alpha).max() < 0.6  # ~N(0, 0.1): within 6 sigma.
  np.testing.assert_array_equal(augment.pca_lighting(x.copy(), 0, 0,
                                                     np.arange(3), 0.0), x)


# -------------------------------------------------------- errors and missing


def test_missing_cifar_names_files_and_folder(tmp_path):
  with pytest.raises(data.DataNotFoundError) as e:
    data.create_train_iterator('cifar10', str(tmp_path), 8, seed=0,
                               download=False, **ONE_HOST)
  msg = str(e.value)
  for part in ('data_batch_1.bin', 'data_batch_5.bin', 'test_batch.bin',
               str(tmp_path / 'cifar-10-batches-bin'),
               'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz',
               'c32a1d4ab5d03f1284b67883e8d87530', 'download=False'):
    assert part in msg, part
  assert isinstance(e.value, FileNotFoundError)
  with pytest.raises(data.DataNotFoundError, match='cifar-100-python'):
    data.get_dataset_info('cifar100', str(tmp_path), download=False)


def test_download_checks_md5_and_reports_failure(tmp_path):
  calls = []

  def fake_download(url, dest):
    calls.append(url)
    Path(dest).write_bytes(b'not the archive')

  with pytest.raises(data.DataNotFoundError, match='md5') as e:
    cifar.load('cifar100', str(tmp_path), downloader=fake_download)
  assert calls == ['https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz']
  assert 'eb9058c3a382ffc7106e4002c42a8d85' in str(e.value)
  assert list(tmp_path.iterdir()) == []  # The bad download is removed.

  def offline(url, dest):
    raise OSError('network unreachable')

  with pytest.raises(data.DataNotFoundError, match='network unreachable'):
    cifar.load('cifar10', str(tmp_path), downloader=offline)


def test_cifar_readers_on_small_fake_files(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
  fine, coarse = np.array([7, 99, 0]), np.array([1, 2, 3])
  records = np.concatenate([coarse[:, None], fine[:, None], pixels], 1)
  records.astype(np.uint8).tofile(tmp_path / 'train.bin')
  # pylint: disable=protected-access
  images, labels = cifar._read_bin(tmp_path / 'train.bin', 2)
  np.testing.assert_array_equal(labels, fine)
  chw = pixels.reshape(3, 3, 32, 32)
  np.testing.assert_array_equal(images, chw.transpose(0, 2, 3, 1))
  with open(tmp_path / 'train', 'wb') as f:
    pickle.dump({b'data': pixels, b'fine_labels': list(fine),
                 b'coarse_labels': list(coarse)}, f)
  images_py, labels_py = cifar._read_pickle(tmp_path / 'train',
                                            b'fine_labels')
  np.testing.assert_array_equal(images_py, images)
  np.testing.assert_array_equal(labels_py, fine)
  (tmp_path / 'bad.bin').write_bytes(b'\0' * 3000)
  with pytest.raises(ValueError, match='3073-byte'):
    cifar._read_bin(tmp_path / 'bad.bin', 1)


def test_bad_arguments_raise_value_error():
  with pytest.raises(ValueError, match='not divisible by process_count=3'):
    data.create_train_iterator('synthetic', None, 20, seed=0,
                               process_index=0, process_count=3, **SYN)
  with pytest.raises(ValueError, match='not divisible by process_count=3'):
    data.create_eval_iterator('synthetic', None, 20, process_index=0,
                              process_count=3, **SYN)
  with pytest.raises(ValueError, match='process_index=2'):
    data.create_train_iterator('synthetic', None, 20, seed=0,
                               process_index=2, process_count=2, **SYN)
  with pytest.raises(ValueError, match='exceeds the 100 training'):
    data.create_train_iterator('synthetic', None, 200, seed=0, **ONE_HOST,
                               **SYN)
  with pytest.raises(ValueError, match="Unknown dataset 'cifar11'"):
    data.get_dataset_info('cifar11')
  with pytest.raises(ValueError, match=r"Unknown option\(s\) \['imagesize'\]"):
    data.get_dataset_info('synthetic', imagesize=3)


# ------------------------------------------------------------------- digits


def test_digits_sizes_values_and_augmentation():
  info = data.get_dataset_info('digits')
  assert (info.num_train, info.num_eval, info.num_classes) == (1500, 297, 10)
  assert info.image_shape == (16, 16, 1)
  load_digits = pytest.importorskip('sklearn.datasets').load_digits
  ref = load_digits()
  batches = list(data.create_eval_iterator('digits', None, 100, **ONE_HOST))
  assert len(batches) == 3 and sum(b['mask'].sum() for b in batches) == 297
  images = np.concatenate([b['image'] for b in batches])[:297]
  pixels = denormalize(images, info, pixel_scale=16.0)  # Back to 0..16.
  assert pixels.min() == 0 and pixels.max() == 16
  want = ref.images[1500:].repeat(2, 1).repeat(2, 2)[..., None]
  np.testing.assert_array_equal(pixels, want)
  np.testing.assert_array_equal(
      np.concatenate([b['label'] for b in batches])[:297], ref.target[1500:])
  train = next(data.create_train_iterator('digits', None, 50, seed=0,
                                          prefetch=0, **ONE_HOST))
  idx = data.global_batch_indices(1500, 50, 0, 0)
  src = ref.images[idx].repeat(2, 1).repeat(2, 2)[..., None]
  aug = denormalize(train['image'], info, pixel_scale=16.0)
  hits = [find_crop(aug[i], src[i], pad=2) for i in range(50)]
  assert all(hits) and all(not h[2] for hs in hits for h in hs[:1])
  np.testing.assert_array_equal(train['label'], ref.target[idx])
  # Normalised with the train statistics: eval-style train set ~ N(0, 1).
  x = (digits.load()[0][:1500] - info.mean[0]) / info.std[0]
  assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-5


def test_digits_num_eval_takes_the_first_eval_images():
  labels = digits.load()[1]
  info = data.get_dataset_info('digits', num_eval=64)
  assert (info.num_train, info.num_eval) == (1500, 64)
  assert info.mean == data.get_dataset_info('digits').mean  # train stats
  batches = list(data.create_eval_iterator('digits', None, 50, num_eval=64,
                                           **ONE_HOST))
  assert len(batches) == 2 and sum(b['mask'].sum() for b in batches) == 64
  got = np.concatenate([b['label'][b['mask']] for b in batches])
  np.testing.assert_array_equal(got, labels[1500:1564])
  for bad in (0, 298, 2.5):
    with pytest.raises(ValueError, match=rf'num_eval={bad}.*\[1, 297\]'):
      data.get_dataset_info('digits', num_eval=bad)


def test_synthetic_statistics_and_learnable_labels():
  info = data.get_dataset_info('synthetic', **SYN)
  assert info.image_shape == (8, 8, 3) and info.num_classes == 4
  images, labels = synthetic.make_examples(np.arange(4000), True, (8, 8, 3), 4)
  assert abs(images.mean() / 255 - 0.5) < 0.01
  assert abs(images.std() / 255 - synthetic.STD) < 0.01
  assert np.bincount(labels, minlength=4).min() > 900
  # The class template makes the label recoverable from the class mean image.
  means = np.stack([images[labels == c].mean(0) for c in range(4)])
  test, test_labels = synthetic.make_examples(np.arange(200), False, (8, 8, 3),
                                              4)
  dist = ((test[:, None].astype(float) - means[None])**2).sum((2, 3, 4))
  assert (dist.argmin(1) == test_labels).mean() > 0.95
  # Eval split differs from train split.
  assert not np.array_equal(test[:10], images[:10])


# ---------------------------------------------------------- TFDS array_record


@pytest.fixture(scope='module')
def tiny_tfds(tmp_path_factory):
  """Two tiny datasets prepared in array_record format without TensorFlow."""
  tfds = pytest.importorskip('tensorflow_datasets')
  pytest.importorskip('importlib_resources')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('tfds')
  rng = np.random.default_rng(0)
  arrays = {
      'train': [rng.integers(0, 256, size=(rng.integers(20, 40),
                                           rng.integers(20, 40), 3),
                             dtype=np.uint8) for _ in range(10)],
      'test': [rng.integers(0, 256, size=(rng.integers(20, 40),
                                          rng.integers(20, 40), 3),
                            dtype=np.uint8) for _ in range(5)],
  }
  grey = {'train': rng.integers(0, 256, size=(12, 8, 8, 1), dtype=np.uint8),
          'test': rng.integers(0, 256, size=(6, 8, 8, 1), dtype=np.uint8)}

  class OvswTinyImages(tfds.core.GeneratorBasedBuilder,
                       skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(None, None, 3)),
              'label': tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(s) for s in ('train', 'test')}

    def _generate_examples(self, split):
      for i, a in enumerate(arrays[split]):
        yield i, {'image': Image.fromarray(a), 'label': i % 3}

  class OvswTinyGrey(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              'pixels': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
              'digit': tfds.features.ClassLabel(num_classes=5)}))

    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(s) for s in ('train', 'test')}

    def _generate_examples(self, split):
      for i, a in enumerate(grey[split]):
        yield i, {'pixels': a, 'digit': i % 5}

  for cls in (OvswTinyImages, OvswTinyGrey):
    cls(data_dir=str(root), file_format='array_record').download_and_prepare()
  return root, arrays, grey


def test_tfds_array_record_round_trip(tiny_tfds):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root, arrays, _ = tiny_tfds
  name = 'tfds:ovsw_tiny_images'
  info = data.get_dataset_info(name, str(root), image_size=16)
  assert info.name == name
  assert (info.num_train, info.num_eval, info.num_classes) == (10, 5, 3)
  assert info.image_shape == (16, 16, 3)
  pixels = np.concatenate([a.reshape(-1, 3) for a in arrays['train']]) / 255.0
  np.testing.assert_allclose(info.mean, pixels.mean(0), rtol=1e-6)
  np.testing.assert_allclose(info.std, pixels.std(0), rtol=1e-6)

  # tfds shuffles examples when preparing: match records by content.
  batches = list(data.create_eval_iterator(name, str(root), 4, image_size=16,
                                           **ONE_HOST))
  assert len(batches) == 2 and sum(b['mask'].sum() for b in batches) == 5
  got = denormalize(np.concatenate([b['image'] for b in batches])[:5], info)
  want = []
  for a in arrays['test']:  # Resize the shorter side to 18, center crop 16.
    h, w = a.shape[:2]
    nh, nw = (18, int(18 * w / h)) if h <= w else (int(18 * h / w), 18)
    img = Image.fromarray(a).resize((nw, nh), Image.BILINEAR)
    top, left = int(round((nh - 16) / 2)), int(round((nw - 16) / 2))
    want.append(np.asarray(img.crop((left, top, left + 16, top + 16))))
  order = [min(range(5), key=lambda j: np.abs(g - want[j]).sum()) for g in got]
  assert sorted(order) == list(range(5))
  np.testing.assert_allclose(got, np.stack(want)[order], atol=1)
  labels = np.concatenate([b['label'] for b in batches])[:5]
  np.testing.assert_array_equal(labels, np.array(order) % 3)

  train = take(data.create_train_iterator(name, str(root), 5, seed=0,
                                          image_size=16, **ONE_HOST), 4)
  assert train[0]['image'].shape == (5, 16, 16, 3)
  np.testing.assert_array_equal(
      np.sort(np.concatenate([train[0]['label'], train[1]['label']])),
      np.sort(np.arange(10) % 3))
  assert_batches_equal(train, take(data.create_train_iterator(
      name, str(root), 5, seed=0, image_size=16, prefetch=0, **ONE_HOST), 4))
  assert_batches_equal(train[1:], take(data.create_train_iterator(
      name, str(root), 5, seed=0, image_size=16, start_step=1, num_threads=2,
      **ONE_HOST), 3))


def test_tfds_tensor_feature_fixed_size(tiny_tfds):
  root, _, grey = tiny_tfds
  name = 'tfds:ovsw_tiny_grey'
  opts = dict(image_key='pixels', label_key='digit', mean=0.5, std=0.25)
  info = data.get_dataset_info(name, str(root), **opts)
  assert info.image_shape == (8, 8, 1) and info.num_classes == 5
  assert info.mean == (0.5,) and info.std == (0.25,)
  ev = list(data.create_eval_iterator(name, str(root), 6, **opts, **ONE_HOST))
  got = denormalize(ev[0]['image'], info)
  order = [next(j for j in range(6) if np.array_equal(g, grey['test'][j]))
           for g in got]
  assert sorted(order) == list(range(6))
  np.testing.assert_array_equal(ev[0]['label'], np.array(order) % 5)
  # Train: random crop (pad 8 // 8 = 1) + flip of the stored arrays.
  batch = next(data.create_train_iterator(name, str(root), 12, seed=1,
                                          prefetch=0, **opts, **ONE_HOST))
  aug = denormalize(batch['image'], info)
  assert all(any(find_crop(a, t, pad=1) for t in grey['train']) for a in aug)


def test_tfds_missing_dataset_says_how_to_prepare(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(data.DataNotFoundError) as e:
    data.get_dataset_info('imagenet2012', str(tmp_path))
  msg = str(e.value)
  assert f'{tmp_path}/downloads/manual' in msg
  assert 'tfds build imagenet2012' in msg and 'array_record' in msg
  with pytest.raises(data.DataNotFoundError, match='tfds build no_such_ds'):
    data.get_dataset_info('tfds:no_such_ds', str(tmp_path))
