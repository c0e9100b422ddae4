"""ImageNet input pipeline: ours against tf.data, images/s per core.

All arms read the same generated JPEGs (`lib.jpeg_dataset`):

- ours_train_<decoder>: our train iterator (random resized crop + flip;
  uint8 out, normalised on device), batches built on demand in the calling
  thread (``num_threads=0``);
- ours_train_pil_float: the previous path (full PIL decode, host
  normalisation to float32);
- ours_eval_<decoder>: resize 256 + center crop 224;
- tfdata_train / tfdata_eval: what flax's ImageNet example does
  (``sample_distorted_bounding_box`` + ``decode_and_crop_jpeg``, bicubic
  resize, flip, normalise), with tf.data's default options, from the JPEG
  bytes held in memory. Skipped when TensorFlow is absent (it is the
  ``bench-tf`` extra).

Per core (``per_core``): a worker process pinned to one core (before
TensorFlow or JAX start) runs each arm alone, fresh, for ``--rounds``
rounds (odd rounds in reverse order): 2 untimed batches, then every batch of
the round timed back to back.
tf.data computes ahead on background threads (a fused map-and-batch, an
injected prefetch), so arms cannot take turns batch by batch; pinned, its
threads share the one core, and images/s is images per core-second.
``images_per_cpu_s`` divides by the CPU utilisation (<= 1 here).

All cores (``threaded``): each side alone on every core of the process: our
train iterator with the native decoder and one thread per core
(`pipeline.default_num_threads`), and tf.data with a parallel map of as many
calls. Plus where the time goes in ours, per image (``breakdown``).
``--fidelity_only`` instead measures how far each decoder's train crops are
from PIL's full decode of the same boxes (`fidelity`)::

    python -m benchmarks.input_pipeline --fidelity_only --num_images 40 \
        --out benchmarks/results/jpeg_fidelity.json

    python -m benchmarks.input_pipeline --num_images 2000 \
        --out benchmarks/results/input_pipeline.json \
        --plot benchmarks/results/input_pipeline.png
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import tempfile
import time
from typing import Any, Callable

import numpy as np

from benchmarks.lib import jpeg_dataset
from benchmarks.lib import machine
from benchmarks.lib import per_core
from benchmarks.lib import results
from ovsw_jax import data
from ovsw_jax.data import augment
from ovsw_jax.data import jpeg
from ovsw_jax.data import native_jpeg
from ovsw_jax.data import tfds_source

SIZE = 224


def _ours_train(data_dir: str, batch: int, decoder: str,
                device_normalize: bool, num_threads: int | None = 0):
  """Our train iterator: num_threads=0 builds each batch on demand in the
  calling thread; None takes the default (`pipeline.default_num_threads`)."""
  it = data.create_train_iterator(
      jpeg_dataset.DATASET, data_dir, batch, seed=0, process_index=0,
      process_count=1, prefetch=0 if num_threads == 0 else 2,
      num_threads=num_threads, decoder=decoder,
      device_normalize=device_normalize, image_size=SIZE)
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


def _tfdata(images: list[bytes], batch: int, train: bool, threads: int = 1):
  """flax examples/imagenet input_pipeline's preprocessing, on `threads`
  threads (1: sequential, on demand: the per-core figure)."""
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
  fn = train_fn if train else eval_fn
  if threads == 1:
    # A sequential map runs in the caller's GetNext, on demand: nothing is
    # computed ahead while other arms are timed (a parallel map of 1 would).
    ds = ds.map(fn).batch(batch, drop_remainder=True)
  else:
    ds = ds.map(fn, num_parallel_calls=threads).batch(
        batch, drop_remainder=True).prefetch(threads)
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  options.autotune.enabled = False
  if threads == 1:
    # Two of tf.data's default rewrites would parallelise the map and
    # inject a prefetch, running ahead on other threads; the others stay.
    options.experimental_optimization.map_parallelization = False
    options.experimental_optimization.inject_prefetch = False
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


def _arms(data_dir: str, batch: int, decoders: tuple[str, ...],
          num_eval: int) -> dict[str, Callable[[], Callable[[], Any]]]:
  """Arm name -> a factory of its one-batch call (built fresh per round)."""
  arms: dict[str, Callable[[], Callable[[], Any]]] = {}
  for dec in decoders:
    arms[f'ours_train_{dec}'] = functools.partial(
        _ours_train, data_dir, batch, dec, True)
    arms[f'ours_eval_{dec}'] = functools.partial(_ours_eval, data_dir, batch,
                                                 dec, num_eval)
  arms['ours_train_pil_float'] = functools.partial(
      _ours_train, data_dir, batch, 'pil', False)
  if _has_tf():
    arms['tfdata_train'] = lambda: _tfdata(_jpeg_bytes(data_dir, 'train'),
                                           batch, True)
    arms['tfdata_eval'] = lambda: _tfdata(_jpeg_bytes(data_dir, 'eval'),
                                          batch, False)
  return arms


def per_core_worker(data_dir: str, batch: int, decoders: tuple[str, ...],
                    num_eval: int, steps: int, rounds: int) -> dict[str, Any]:
  """Every arm alone, `rounds` times, in this (pinned) process."""
  return per_core.time_rounds(_arms(data_dir, batch, decoders, num_eval),
                              batch, steps, rounds)


def _per_core(data_dir: str, batch: int, decoders: tuple[str, ...],
              num_eval: int, steps: int, rounds: int) -> dict[str, Any]:
  """`per_core_worker` in a subprocess pinned to one core."""
  return per_core.run_pinned('benchmarks.input_pipeline', [
      f'--_per_core_worker={data_dir}', f'--batch={batch}',
      f'--decoders={",".join(decoders)}', f'--num_eval={num_eval}',
      f'--_steps={steps}', f'--rounds={rounds}'])


def fidelity(images: list[bytes], decoders: tuple[str, ...],
             n: int = 40) -> dict[str, Any]:
  """How far each decoder's train crops are from PIL's full decode of the
  same boxes (absolute difference in levels of 255: mean, p99, max); and,
  with TensorFlow, tf.data's decode_and_crop_jpeg + bicubic resize."""
  n = min(n, len(images))
  u = augment.uniforms(0, 0, np.arange(n), augment.RESIZED_CROP,
                       4 * augment.RESIZED_CROP_ATTEMPTS)
  refs, boxes = [], []
  for i in range(n):
    box_fn = functools.partial(augment.random_resized_crop_box, u=u[i])
    boxes.append(box_fn)
    refs.append(jpeg.decode_crop_resize(images[i], box_fn, (SIZE, SIZE),
                                        'pil').astype(int))
  arms = {dec: (lambda i, dec=dec: jpeg.decode_crop_resize(
      images[i], boxes[i], (SIZE, SIZE), dec)) for dec in decoders}
  if _has_tf():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    def tf_crop(i):
      h, w = jpeg_dataset.header_size(images[i])
      box = [int(v) for v in boxes[i](h, w)]
      img = tf.image.decode_and_crop_jpeg(images[i], box, channels=3)
      img = tf.image.resize([img], [SIZE, SIZE], 'bicubic')[0].numpy()
      return np.clip(np.round(img), 0, 255)
    arms['tfdata_bicubic'] = tf_crop
  out = {}
  for name, fn in arms.items():
    e = np.concatenate([np.abs(fn(i).astype(int) - refs[i]).ravel()
                        for i in range(n)])
    out[name] = {'mean': float(e.mean()),
                 'p99': float(np.percentile(e, 99)), 'max': int(e.max())}
  return {'images': n, 'vs': 'pil full decode', 'decoders': out}


def _threaded(data_dir: str, batch: int, steps: int) -> dict[str, Any]:
  """Every core of the process, each side alone: images/s (wall)."""
  cores = len(os.sched_getaffinity(0))
  arms = {}
  if native_jpeg.available():
    arms['ours_train_native_threads'] = functools.partial(
        _ours_train, data_dir, batch, 'native', True, num_threads=None)
  if _has_tf():
    arms['tfdata_train_threads'] = lambda: _tfdata(
        _jpeg_bytes(data_dir, 'train'), batch, True, cores)
  out: dict[str, Any] = {'cores': cores}
  for name, make in arms.items():
    o = per_core.time_alone(make, steps)
    med = float(np.median(o['times']))
    out[name] = {'images_per_s': batch / med, 'batch_s_median': med,
                 'cpu_utilization': o['cpu_utilization']}
  if len(arms) == 2:
    out['ratio'] = (out['ours_train_native_threads']['images_per_s'] /
                    out['tfdata_train_threads']['images_per_s'])
  return out


def run(num_images: int, num_eval: int, batch: int,
        decoders: tuple[str, ...], data_dir: str | None = None,
        rounds: int = 4) -> dict[str, Any]:
  """Generates the dataset (unless given), times every arm; the result."""
  if rounds < 1:
    raise ValueError(f'--rounds={rounds} must be >= 1')
  data_dir = data_dir or tempfile.mkdtemp(prefix='ovsw_jpeg_')
  t = time.perf_counter()
  jpeg_dataset.write_dataset(data_dir, num_images, num_eval)
  gen_s = time.perf_counter() - t
  steps = max(1, min(num_images, num_eval) // batch)
  pinned = _per_core(data_dir, batch, decoders, num_eval, steps, rounds)
  arm_out = pinned['arms']
  tf_present = 'tfdata_train' in arm_out
  ratios = {}
  if tf_present:
    for dec in decoders:
      for kind in ('train', 'eval'):
        ours, theirs = arm_out[f'ours_{kind}_{dec}'], arm_out[f'tfdata_{kind}']
        ratios[f'{kind}_{dec}_per_core_vs_tfdata'] = (
            ours['images_per_cpu_s'] / theirs['images_per_cpu_s'])
        # Round by round (the arms of a round ran back to back).
        ratios[f'{kind}_{dec}_per_core_vs_tfdata_by_round'] = [
            a / b for a, b in zip(ours['images_per_s_by_round'],
                                  theirs['images_per_s_by_round'])]
  train_bytes = _jpeg_bytes(data_dir, 'train')
  sizes = [jpeg_dataset.header_size(b) for b in train_bytes]
  return {
      'benchmark': 'input_pipeline',
      'settings': {'num_images': num_images, 'num_eval': num_eval,
                   'batch': batch, 'image_size': SIZE, 'rounds': rounds,
                   'decoders': list(decoders),
                   'timed_batches_per_arm_and_round': steps,
                   'generate_s': gen_s,
                   'mean_jpeg_hw': [float(np.mean([s[0] for s in sizes])),
                                    float(np.mean([s[1] for s in sizes]))],
                   'mean_jpeg_bytes': float(np.mean([len(b) for b in
                                                     train_bytes]))},
      'tensorflow': tf_present,
      'per_core_cpu_affinity': pinned['cpu_affinity'],
      'arms': arm_out,
      'ratios': ratios,
      'cores_for_5000_images_per_s': {
          name: math.ceil(5000 / a['images_per_cpu_s'])
          for name, a in arm_out.items()},
      'threaded': _threaded(data_dir, batch, steps),
      'breakdown_s_per_image': breakdown(train_bytes, batch, decoders[0]),
      'load_1min': pinned['load_1min'],
      'machine': machine.machine_info(),
  }


def plot(result: dict[str, Any], path: str) -> None:
  """Images/s of every arm on one core, and of each side on every core."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  threaded = {k: v for k, v in result['threaded'].items()
              if isinstance(v, dict)}
  fig, (ax1, ax2) = plt.subplots(
      1, 2, figsize=(12, 0.45 * len(result['arms']) + 1.5),
      gridspec_kw={'width_ratios': [3, 2]})
  per_core.bar_chart(
      ax1, result['arms'],
      f"one core (pinned), {result['settings']['num_images']} JPEGs -> "
      f"{result['settings']['image_size']}px")
  y2 = np.arange(len(threaded))
  vals = [v['images_per_s'] for v in threaded.values()]
  bars = ax2.barh(y2, vals, 0.6, color=[
      'tab:orange' if n.startswith('tfdata') else 'tab:blue'
      for n in threaded])
  ax2.bar_label(bars, [f'{v:.0f}' for v in vals], fontsize=8)
  ax2.set_yticks(y2, list(threaded))
  ax2.set_xlabel('images/s')
  ax2.set_title(f"all {result['threaded']['cores']} cores, train")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  per_core.add_options(parser)
  parser.add_argument('--decoders', default=','.join(
      (('native',) if native_jpeg.available() else ()) +
      ('pil_draft', 'simplejpeg')))
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--fidelity_only', action='store_true',
                      help='only compare decoders with PIL (see fidelity)')
  # The pinned per-core worker (see `_per_core`).
  parser.add_argument('--_per_core_worker', default=None,
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  per_core.pin(args)
  if args.plot_only:
    plot(results_json(args.plot_only), args.plot)
    return
  decoders = tuple(d for d in args.decoders.split(',') if d)
  for d in decoders:
    jpeg.check_decoder(d)
  worker = vars(args)  # The hidden options' names start with '_'.
  if worker['_per_core_worker']:
    print(json.dumps(per_core_worker(
        worker['_per_core_worker'], args.batch, decoders, args.num_eval,
        worker['_steps'], args.rounds)))
    return
  if args.fidelity_only:
    data_dir = args.data_dir or tempfile.mkdtemp(prefix='ovsw_jpeg_')
    jpeg_dataset.write_dataset(data_dir, args.num_images, args.num_eval)
    result = {**fidelity(_jpeg_bytes(data_dir, 'train'), decoders,
                         args.num_images),
              'machine': machine.machine_info()}
    results.write_json(result, args.out)
    return
  result = run(args.num_images, args.num_eval, args.batch, decoders,
               args.data_dir, args.rounds)
  results.write_json(result, args.out)
  if args.plot:
    plot(result, args.plot)


def results_json(path: str) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


if __name__ == '__main__':
  main()
