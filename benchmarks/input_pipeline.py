"""ImageNet input pipeline: ours against tf.data, images/s per process.

All arms read the same generated JPEGs (`lib.jpeg_dataset`) and take turns
(`lib.timing.time_interleaved`, one batch per call), so load from other jobs
hits them alike:

- ours_train_<decoder>_w<k>: our train iterator (random resized crop + flip;
  uint8 out, normalised on device), k grain worker processes;
- ours_train_pil_float_w0: the previous path (full PIL decode, host
  normalisation to float32);
- ours_eval_<decoder>: resize 256 + center crop 224;
- tfdata_train / tfdata_eval: what flax's ImageNet example does
  (``sample_distorted_bounding_box`` + ``decode_and_crop_jpeg``, resize,
  flip, normalise), single-threaded, from the JPEG bytes held in memory.
  Skipped when TensorFlow is absent (it is the ``bench-tf`` extra).

Plus where the time goes in ours, per image (`breakdown`).

    python -m benchmarks.input_pipeline --num_images 2000 --workers 0 \
        --out benchmarks/results/input_pipeline.json \
        --plot benchmarks/results/input_pipeline.png

Arms with worker processes (--workers 1,2) prefetch while the other arms
run, so their per-call times under interleaving overstate their rate.
"""

from __future__ import annotations

import argparse
import functools
import math
import tempfile
import time
from typing import Any, Callable

import numpy as np

from benchmarks.lib import jpeg_dataset
from benchmarks.lib import machine
from benchmarks.lib import results
from benchmarks.lib import timing
from ovsw_jax import data
from ovsw_jax.data import augment
from ovsw_jax.data import jpeg
from ovsw_jax.data import tfds_source

SIZE = 224


def _ours_train(data_dir: str, batch: int, workers: int, decoder: str,
                device_normalize: bool):
  it = data.create_train_iterator(
      jpeg_dataset.DATASET, data_dir, batch, seed=0, process_index=0,
      process_count=1, worker_count=workers, prefetch=0 if workers == 0
      else 2, decoder=decoder, device_normalize=device_normalize,
      image_size=SIZE)
  return lambda: next(it)['image']


def _ours_eval(data_dir: str, batch: int, decoder: str, num_eval: int):
  source = data.get_source(jpeg_dataset.DATASET, data_dir, decoder=decoder,
                           device_normalize=True, image_size=SIZE)
  state = {'k': 0}

  def call():
    start = state['k'] * batch % (num_eval - batch + 1)
    state['k'] += 1
    return source.eval_examples(np.arange(start, start + batch))[0]
  return call


def _jpeg_bytes(data_dir: str, split: str) -> list[bytes]:
  source = data.get_source(jpeg_dataset.DATASET, data_dir, image_size=SIZE)
  split_name = source.train_split if split == 'train' else source.eval_split
  n = (source.info.num_train if split == 'train' else source.info.num_eval)
  return [bytes(r['image']) for r in source._read(split_name, np.arange(n))]  # pylint: disable=protected-access


def _tfdata(images: list[bytes], batch: int, train: bool):
  """flax examples/imagenet input_pipeline's preprocessing, 1 thread."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  mean = tf.constant([0.485 * 255, 0.456 * 255, 0.406 * 255])
  std = tf.constant([0.229 * 255, 0.224 * 255, 0.225 * 255])

  def train_fn(b):
    shape = tf.io.extract_jpeg_shape(b)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4], tf.float32), min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    oy, ox, _ = tf.unstack(begin)
    h, w, _ = tf.unstack(size)
    img = tf.image.decode_and_crop_jpeg(b, tf.stack([oy, ox, h, w]),
                                        channels=3)
    img = tf.image.resize([img], [SIZE, SIZE], 'bicubic')[0]
    img = tf.image.random_flip_left_right(img)
    return (img - mean) / std

  def eval_fn(b):
    shape = tf.io.extract_jpeg_shape(b)
    h, w = shape[0], shape[1]
    crop = tf.cast((SIZE / (SIZE + 32)) * tf.cast(tf.minimum(h, w),
                                                  tf.float32), tf.int32)
    oy, ox = (h - crop + 1) // 2, (w - crop + 1) // 2
    img = tf.image.decode_and_crop_jpeg(b, tf.stack([oy, ox, crop, crop]),
                                        channels=3)
    img = tf.image.resize([img], [SIZE, SIZE], 'bicubic')[0]
    return (img - mean) / std

  ds = tf.data.Dataset.from_tensor_slices(images).repeat()
  ds = ds.map(train_fn if train else eval_fn, num_parallel_calls=1)
  ds = ds.batch(batch, drop_remainder=True)
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = False
  it = iter(ds.with_options(options))
  return lambda: next(it).numpy()


def _has_tf() -> bool:
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def _per_image(fn: Callable[[], Any], n: int) -> float:
  t = time.perf_counter()
  for _ in range(n):
    fn()
  return (time.perf_counter() - t) / n


def breakdown(images: list[bytes], batch: int, decoder: str) -> dict:
  """Seconds per image of each stage of our train transform."""
  import jax  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  n = min(len(images), 200)
  u = augment.uniforms(0, 0, np.arange(n), augment.RESIZED_CROP,
                       4 * augment.RESIZED_CROP_ATTEMPTS)
  boxes = [functools.partial(augment.random_resized_crop_box, u=u[i])
           for i in range(n)]
  k = iter(range(10**9))

  def full_decode():
    i = next(k) % n
    return np.asarray(Image.open(io.BytesIO(images[i])).convert('RGB'))

  def decode_crop_resize():
    i = next(k) % n
    return jpeg.decode_crop_resize(images[i], boxes[i], (SIZE, SIZE), decoder)

  out = {'full_decode_pil': _per_image(full_decode, n),
         f'decode_crop_resize_{decoder}': _per_image(decode_crop_resize, n)}
  crops = [decode_crop_resize() for _ in range(batch)]
  stacked = np.stack(crops)
  out['batching'] = _per_image(lambda: np.stack(crops), 20) / batch
  out['normalise_host'] = _per_image(
      lambda: augment.normalize(stacked, tfds_source.IMAGENET_MEAN,
                                tfds_source.IMAGENET_STD), 20) / batch
  floats = augment.normalize(stacked, tfds_source.IMAGENET_MEAN,
                             tfds_source.IMAGENET_STD)
  for name, arr in (('transfer_uint8', stacked), ('transfer_float32', floats)):
    jax.block_until_ready(jax.device_put(arr))
    out[name] = _per_image(
        lambda a=arr: jax.block_until_ready(jax.device_put(a)), 20) / batch
  return out


def run(num_images: int, num_eval: int, batch: int, rounds_block: int,
        workers: tuple[int, ...], decoders: tuple[str, ...],
        data_dir: str | None = None) -> dict[str, Any]:
  """Generates the dataset (unless given), times every arm; the result."""
  data_dir = data_dir or tempfile.mkdtemp(prefix='ovsw_jpeg_')
  t = time.perf_counter()
  jpeg_dataset.write_dataset(data_dir, num_images, num_eval)
  gen_s = time.perf_counter() - t
  arms: dict[str, Callable[[], Any]] = {}
  for dec in decoders:
    for w in workers:
      arms[f'ours_train_{dec}_w{w}'] = _ours_train(data_dir, batch, w, dec,
                                                   True)
    arms[f'ours_eval_{dec}'] = _ours_eval(data_dir, batch, dec, num_eval)
  arms['ours_train_pil_float_w0'] = _ours_train(data_dir, batch, 0, 'pil',
                                                False)
  train_bytes = _jpeg_bytes(data_dir, 'train')
  tf_present = _has_tf()
  if tf_present:
    arms['tfdata_train'] = _tfdata(train_bytes, batch, True)
    arms['tfdata_eval'] = _tfdata(_jpeg_bytes(data_dir, 'eval'), batch,
                                  False)
  steps = max(1, num_images // batch)
  timed = timing.time_interleaved(arms, steps=steps, warmup=1,
                                  block=rounds_block)
  load = timed.pop('_load')
  arm_out = {}
  for name, o in timed.items():
    med = float(np.median(o['times']))
    arm_out[name] = {'images_per_s': batch / med,
                     'batch_s_median': med,
                     'cpu_utilization': o['cpu_utilization']}
  ratios = {}
  if tf_present:
    for dec in decoders:
      ratios[f'train_{dec}_w0_vs_tfdata'] = (
          arm_out[f'ours_train_{dec}_w0']['images_per_s'] /
          arm_out['tfdata_train']['images_per_s'])
      ratios[f'eval_{dec}_vs_tfdata'] = (
          arm_out[f'ours_eval_{dec}']['images_per_s'] /
          arm_out['tfdata_eval']['images_per_s'])
  sizes = [jpeg_dataset.header_size(b) for b in train_bytes]
  return {
      'benchmark': 'input_pipeline',
      'settings': {'num_images': num_images, 'num_eval': num_eval,
                   'batch': batch, 'block': rounds_block, 'image_size': SIZE,
                   'workers': list(workers), 'decoders': list(decoders),
                   'timed_batches_per_arm': steps,
                   'generate_s': gen_s,
                   'mean_jpeg_hw': [float(np.mean([s[0] for s in sizes])),
                                    float(np.mean([s[1] for s in sizes]))],
                   'mean_jpeg_bytes': float(np.mean([len(b) for b in
                                                     train_bytes]))},
      'tensorflow': tf_present,
      'arms': arm_out,
      'ratios': ratios,
      'cores_for_5000_images_per_s': {
          name: math.ceil(5000 / a['images_per_s'])
          for name, a in arm_out.items() if not name.endswith(('_w1', '_w2'))},
      'breakdown_s_per_image': breakdown(train_bytes, batch, decoders[0]),
      'load_1min': load,
      'machine': machine.machine_info(),
  }


def plot(result: dict[str, Any], path: str) -> None:
  """Bar chart of images/s per process, and per CPU-second, of every arm."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(result['arms'])
  per_s = [result['arms'][n]['images_per_s'] for n in names]
  per_cpu = [result['arms'][n]['images_per_s'] /
             max(result['arms'][n]['cpu_utilization'], 1e-9) for n in names]
  y = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
  ax.barh(y - 0.2, per_s, 0.4, label='images/s (wall, shared machine)')
  ax.barh(y + 0.2, per_cpu, 0.4, label='images per CPU-second')
  ax.set_yticks(y, names)
  ax.set_xlabel('images')
  ax.legend(loc='lower right')
  ax.set_title(f"{result['settings']['num_images']} JPEGs, "
               f"{result['settings']['image_size']}px, 1 process each")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--num_images', type=int, default=2000)
  parser.add_argument('--num_eval', type=int, default=500)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--block', type=int, default=2)
  parser.add_argument('--workers', default='0,1,2')
  parser.add_argument('--decoders', default='pil_draft,simplejpeg')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--out', default=None)
  parser.add_argument('--plot', default=None, help='PNG path')
  parser.add_argument('--plot_only', default=None,
                      help='plot this JSON result and exit')
  args = parser.parse_args(argv)
  if args.plot_only:
    plot(results_json(args.plot_only), args.plot)
    return
  decoders = tuple(d for d in args.decoders.split(',') if d)
  for d in decoders:
    jpeg.check_decoder(d)
  result = run(args.num_images, args.num_eval, args.batch, args.block,
               tuple(int(w) for w in args.workers.split(',')), decoders,
               args.data_dir)
  results.write_json(result, args.out)
  if args.plot:
    plot(result, args.plot)


def results_json(path: str) -> dict[str, Any]:
  import json  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    return json.load(f)


if __name__ == '__main__':
  main()
