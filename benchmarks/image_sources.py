"""Image folder and prepared array_record against tf.data: images/s per core.

The same generated ImageNet-like JPEGs (`lib.jpeg_dataset`: about 400x465,
48 KB) are written three ways, and every arm reads them:

- folder_<split>: ``dataset="imagefolder"``: one file per image in
  ``train/<class>/`` (read from the page cache: the files are warm);
- records_<split>: ``dataset="image_records"``: the array_record shards
  `ovsw_jax.data.prepare` wrote from that folder;
- tfds_<split>: the TFDS array_record source (``tfds:ovsw_imagenet_like``,
  needs TensorFlow to write), as benchmarks/input_pipeline.py's ours arms;
- tfdata_<split>: tf.data as benchmarks/input_pipeline.py measures it
  (flax's ImageNet preprocessing from the JPEG bytes held in memory).

Ours: native decoder, uint8 out (normalised on the device), batches built
on demand in the calling thread; train = random resized crop + flip, eval =
resize 256 + center crop 224. A worker process pinned to one core runs each
arm alone for ``--rounds`` rounds (odd rounds in reverse order): 2 untimed
batches, then every batch of the round timed; images per core-second is
what one core of a host feeds. Figures and ratios are of timed images per
CPU-second they took, over all rounds and round by round (``*_by_round``;
`per_core`)::

  python -m benchmarks.image_sources \\
      --out benchmarks/results/image_sources.json \\
      --plot benchmarks/results/image_sources.png
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

from benchmarks import input_pipeline
from benchmarks.lib import jpeg_dataset
from benchmarks.lib import machine
from benchmarks.lib import per_core
from benchmarks.lib import results
from ovsw_jax import data
from ovsw_jax.data import prepare

SIZE = input_pipeline.SIZE
NUM_CLASSES = 10


def write_folder(folder: str, num_train: int, num_eval: int,
                 seed: int = 0) -> None:
  """The images of `jpeg_dataset.write_dataset` (same seed and indices), as
  ``train/c<k>/`` and ``val/c<k>/`` folders (label = index % 10)."""
  photos = jpeg_dataset._photos()  # pylint: disable=protected-access
  for split, offset, n in (('train', 0, num_train),
                           ('val', num_train, num_eval)):
    for i in range(n):
      d = os.path.join(folder, split, f'c{i % NUM_CLASSES}')
      os.makedirs(d, exist_ok=True)
      with open(os.path.join(d, f'img_{i:06d}.JPEG'), 'wb') as f:
        f.write(jpeg_dataset.make_jpeg(photos, seed, offset + i))


def _train(dataset: str, data_dir: str, batch: int):
  it = data.create_train_iterator(
      dataset, data_dir, batch, seed=0, process_index=0, process_count=1,
      prefetch=0, num_threads=0, decoder='native', device_normalize=True,
      image_size=SIZE)
  return lambda: next(it)['image']


def _eval(dataset: str, data_dir: str, batch: int):
  source = data.get_source(dataset, data_dir, decoder='native',
                           device_normalize=True, image_size=SIZE)
  n, state = source.info.num_eval, {'k': 0}

  def call():
    start = state['k'] * batch % (n - batch + 1)
    state['k'] += 1
    return source.eval_examples(np.arange(start, start + batch))[0]
  return call


def _arms(dirs: dict[str, str], batch: int
          ) -> dict[str, Callable[[], Callable[[], Any]]]:
  arms = {}
  for name, dataset in (('folder', 'imagefolder'),
                        ('records', 'image_records'),
                        ('tfds', jpeg_dataset.DATASET)):
    if name in dirs:
      arms[f'{name}_train'] = functools.partial(_train, dataset, dirs[name],
                                                batch)
      arms[f'{name}_eval'] = functools.partial(_eval, dataset, dirs[name],
                                               batch)
  if 'tfds' in dirs and input_pipeline._has_tf():  # pylint: disable=protected-access
    # tf.data exactly as the input benchmark times it, on the same JPEGs.
    tfdata = input_pipeline._tfdata  # pylint: disable=protected-access
    jpegs = input_pipeline._jpeg_bytes  # pylint: disable=protected-access
    for split, train in (('train', True), ('eval', False)):
      arms[f'tfdata_{split}'] = functools.partial(
          lambda s, t: tfdata(jpegs(dirs['tfds'], s), batch, t), split, train)
  return arms


def per_core_worker(dirs: dict[str, str], batch: int, steps: int,
                    rounds: int) -> dict[str, Any]:
  """Every arm alone, `rounds` times, in this (pinned) process."""
  return per_core.time_rounds(_arms(dirs, batch), batch, steps, rounds)


def _pinned(dirs: dict[str, str], batch: int, steps: int,
            rounds: int) -> dict[str, Any]:
  return per_core.run_pinned('benchmarks.image_sources', [
      f'--_worker={json.dumps(dirs)}', f'--batch={batch}',
      f'--_steps={steps}', f'--rounds={rounds}'])


def run(num_images: int, num_eval: int, batch: int, rounds: int,
        work_dir: str | None = None) -> dict[str, Any]:
  """Writes the three datasets, times every arm; the result."""
  work_dir = work_dir or tempfile.mkdtemp(prefix='ovsw_sources_')
  dirs = {'folder': os.path.join(work_dir, 'folder'),
          'records': os.path.join(work_dir, 'records')}
  t = time.perf_counter()
  write_folder(dirs['folder'], num_images, num_eval)
  gen_s = time.perf_counter() - t
  t = time.perf_counter()
  prepare.prepare(dirs['records'], data_dir=dirs['folder'])
  prepare_s = time.perf_counter() - t
  if input_pipeline._has_tf():  # pylint: disable=protected-access
    dirs['tfds'] = os.path.join(work_dir, 'tfds')
    jpeg_dataset.write_dataset(dirs['tfds'], num_images, num_eval,
                               num_classes=NUM_CLASSES)
  steps = max(1, min(num_images, num_eval) // batch)
  pinned = _pinned(dirs, batch, steps, rounds)
  arms = pinned['arms']
  ratios = {}
  for split in ('train', 'eval'):
    for ours in ('folder', 'records', 'tfds'):
      for ref in ('tfdata', 'records'):
        a, b = arms.get(f'{ours}_{split}'), arms.get(f'{ref}_{split}')
        if a and b and ours != ref:
          ratios[f'{split}_{ours}_vs_{ref}'] = (
              a['images_per_cpu_s_all_rounds'] /
              b['images_per_cpu_s_all_rounds'])
          # Each round's, in the same unit (the arms ran in turn).
          ratios[f'{split}_{ours}_vs_{ref}_by_round'] = [
              x / y for x, y in zip(a['images_per_cpu_s_by_round'],
                                    b['images_per_cpu_s_by_round'])]
  return {'benchmark': 'image_sources',
          'settings': {'num_images': num_images, 'num_eval': num_eval,
                       'batch': batch, 'image_size': SIZE, 'rounds': rounds,
                       'timed_batches_per_arm_and_round': steps,
                       'generate_s': gen_s, 'prepare_s': prepare_s,
                       'decoder': 'native', 'out': 'uint8'},
          'tensorflow': 'tfdata_train' in arms, 'arms': arms,
          'ratios': ratios,
          'ratios_unit': 'timed images per CPU-second they took '
                         '(images_per_cpu_s_all_rounds), and round by round '
                         '(_by_round: images_per_cpu_s_by_round)',
          'load_1min': pinned['load_1min'],
          'per_core_cpu_affinity': pinned['cpu_affinity'],
          'machine': machine.machine_info()}


def plot(result: dict[str, Any], path: str) -> None:
  """Images per core-second of every arm, train and eval."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 0.45 * len(result['arms']) + 1.4))
  title = (f"one core (pinned), {result['settings']['num_images']} JPEGs "
           f"-> {SIZE}px, {result['machine']['cpu_model']}")
  per_core.bar_chart(ax, result['arms'], title,
                     key='images_per_cpu_s_all_rounds')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  per_core.add_options(parser)
  parser.add_argument('--work_dir', default=None)
  parser.add_argument('--_worker', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  per_core.pin(args)
  hidden = vars(args)  # The hidden options' names start with '_'.
  if args.plot_only:
    with open(args.plot_only) as f:
      plot(json.load(f), args.plot)
    return
  if hidden['_worker']:
    print(json.dumps(per_core_worker(json.loads(hidden['_worker']),
                                     args.batch, hidden['_steps'],
                                     args.rounds)))
    return
  commit = machine.git_commit()
  result = run(args.num_images, args.num_eval, args.batch, args.rounds,
               args.work_dir)
  result = {'command': machine.command_line(
      'benchmarks.image_sources', sys.argv[1:] if argv is None else argv),
            'git_commit': commit, **result}
  results.write_json(result, args.out)
  if args.plot:
    plot(result, args.plot)


if __name__ == '__main__':
  main()
