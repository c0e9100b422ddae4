"""Tests of device-resident input (ovsw_jax.data.device_input, device_augment):
its batches against the host pipeline's, bit for bit."""

from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovsw_jax import data
from ovsw_jax.data import augment
from ovsw_jax.data import device_augment
from ovsw_jax.data import device_input
from ovsw_jax.training import mesh as mesh_lib
from conftest import CIFAR_DIR

pytestmark = pytest.mark.accelerator

SYN = dict(num_train=100, num_eval=30, image_shape=(8, 8, 3), num_classes=4)
ONE_HOST = dict(process_index=0, process_count=1, prefetch=0)
# (dataset, options, global batch): 5, 37 and 15 steps an epoch.
DATASETS = [("synthetic", SYN, 20), ("digits", {"num_eval": 50}, 40),
            ("cifar10", {"num_train": 960, "num_eval": 70,
                         "download": False}, 64)]


def _words(w: device_augment.Word) -> np.ndarray:
  hi = np.asarray(w.hi).astype(np.uint64)
  return (hi << np.uint64(32)) | np.asarray(w.lo).astype(np.uint64)


SPANS = (1, 5, 9, 2047)


@jax.jit
def _device_draws(hi, lo, idx):
  words = device_augment.draws(device_augment.Word(hi, lo), idx, 0, 4)
  return (words, [[device_augment.below(w, n) for w in words] for n in SPANS],
          [device_augment.half(w) for w in words])


@jax.jit
def _arithmetic(a, b):
  return (device_augment.multiply(a, b), device_augment.add(a, b),
          [device_augment.shift_right(a, s) for s in (1, 11, 31, 32, 33, 63)])


def test_device_words_offsets_and_flips_are_the_hosts():
  rng = np.random.default_rng(0)
  idx = np.concatenate([[0, 1, 2**31 - 1],
                        rng.integers(0, 2**31 - 1, 3000)]).astype(np.int32)
  for seed, epoch in ((0, 0), (2**64 - 1, 7), (123, 599)):
    host = augment.draws(seed, epoch, idx, 0, 4)
    words, below, half = _device_draws(*device_augment.epoch_key(seed, epoch),
                                       idx)
    np.testing.assert_array_equal(np.stack([_words(w) for w in words], 1),
                                  host)
    for n, got in zip(SPANS, below):
      np.testing.assert_array_equal(np.stack(got, 1), augment.below(host, n))
    np.testing.assert_array_equal(np.stack(half, 1), augment.half(host))
  # The 64-bit arithmetic itself, on values whose halves carry.
  a = np.array([2**64 - 1, 2**63 + 12345, 0xFFFFFFFF, 1], np.uint64)
  b = np.array([2**64 - 1, 0x9E3779B97F4A7C15, 0xFFFFFFFF, 2**32], np.uint64)
  split = lambda x: device_augment.Word(
      (x >> np.uint64(32)).astype(np.uint32),
      (x & np.uint64(2**32 - 1)).astype(np.uint32))
  product, total, shifted = _arithmetic(split(a), split(b))
  with np.errstate(over="ignore"):
    np.testing.assert_array_equal(_words(product), a * b)
    np.testing.assert_array_equal(_words(total), a + b)
  for s, got in zip((1, 11, 31, 32, 33, 63), shifted):
    np.testing.assert_array_equal(_words(got), a >> np.uint64(s))


@pytest.mark.parametrize("name,options,batch", DATASETS)
def test_code_table_gives_the_hosts_normalised_images(name, options, batch):
  del batch
  data_dir = _data_dir(name)
  source = data.get_source(name, data_dir, **options)
  for train in (True, False):
    codes, labels = source.pixel_codes(train)
    n = source.info.num_train if train else source.info.num_eval
    assert codes.dtype == np.uint8 and codes.shape[0] == labels.shape[0] == n
    raw, raw_labels = source.raw(np.arange(n), train)
    np.testing.assert_array_equal(source.code_values()[codes], raw)
    np.testing.assert_array_equal(labels, raw_labels)
  table = source.code_table()
  images, _ = source.eval_examples(np.arange(source.info.num_eval))
  looked_up = table[codes, np.arange(table.shape[1])]
  assert looked_up.dtype == np.float32
  np.testing.assert_array_equal(looked_up, images)


def _data_dir(name):
  if name != "cifar10":
    return None
  if not os.path.isdir(os.path.join(CIFAR_DIR, "cifar-10-batches-bin")):
    pytest.skip(f"CIFAR-10 binaries not found under {CIFAR_DIR} (set "
                "OVSW_DATA_DIR to the folder holding cifar-10-batches-bin)")
  return CIFAR_DIR


def assert_same_batches(host, device, what):
  assert len(host) == len(device), what
  for i, (h, d) in enumerate(zip(host, device)):
    assert h.keys() == d.keys(), what
    for k in h:
      got = np.asarray(d[k])
      assert got.dtype == h[k].dtype, (what, i, k)
      np.testing.assert_array_equal(got, h[k], err_msg=f"{what} {i} {k}")


def check_against_host(name, options, batch, mesh, placement, start=3):
  """Two epochs and a bit of training batches from step `start`, and the
  eval pass, from the devices and from the host pipeline."""
  data_dir = _data_dir(name)
  source = data.get_source(name, data_dir, **options)
  dev = device_input.DeviceInput(source, mesh, placement=placement)
  assert dev.placement == placement
  steps = 2 * data.steps_per_epoch(source.info, batch) + 1
  host = data.create_train_iterator(name, data_dir, batch, 11,
                                    start_step=start, **ONE_HOST, **options)
  assert_same_batches(
      list(itertools.islice(host, steps)),
      list(itertools.islice(dev.train_batches(batch, 11, start), steps)),
      f"{name} train {placement}")
  host_eval = list(data.create_eval_iterator(name, data_dir, batch,
                                             **ONE_HOST, **options))
  assert_same_batches(host_eval, list(dev.eval_batches(batch)),
                      f"{name} eval {placement}")
  batches = list(dev.eval_batches(batch))
  assert sum(int(b["mask"].sum()) for b in batches) == source.info.num_eval
  return dev


@pytest.mark.parametrize("name,options,batch", DATASETS)
def test_batches_are_the_host_pipelines_bit_for_bit(name, options, batch):
  mesh = mesh_lib.create_mesh(jax.devices()[:1])
  for placement in ("replicated", "sharded"):
    dev = check_against_host(name, options, batch, mesh, placement)
  b = next(dev.train_batches(batch, 0))
  assert b["image"].sharding.is_equivalent_to(mesh_lib.data_sharding(mesh), 4)


def test_without_augmentation_and_bad_input():
  mesh = mesh_lib.create_mesh(jax.devices()[:1])
  plain = dict(SYN, augment=False)
  check_against_host("synthetic", plain, 20, mesh, "replicated", start=0)
  no_flip = dict(SYN, pad=1, flip=False)
  check_against_host("synthetic", no_flip, 20, mesh, "replicated", start=0)
  source = data.get_source("synthetic", None, **SYN)
  with pytest.raises(ValueError, match="placement='everywhere'"):
    device_input.DeviceInput(source, mesh, placement="everywhere")

  class FileSource:
    info = source.info

  with pytest.raises(ValueError, match="in-memory dataset.*input_on_device"):
    device_input.DeviceInput(FileSource(), mesh)
  assert not device_input.supports(FileSource())


def test_placement_follows_device_memory():

  class Device:
    def __init__(self, limit):
      self.limit = limit

    def memory_stats(self):
      return None if self.limit is None else {"bytes_limit": self.limit}

  cifar_train = 50_000 * 32 * 32 * 3
  assert device_input.choose_placement(
      cifar_train, [Device(80 << 30)] * 8) == "replicated"
  assert device_input.choose_placement(
      cifar_train, [Device(80 << 30), Device(1 << 30)]) == "sharded"
  assert device_input.choose_placement(cifar_train, [Device(None)]) == \
      "replicated"
  assert device_input.choose_placement(2 << 30, [Device(None)]) == "sharded"
