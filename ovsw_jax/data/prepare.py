"""Image folder or ILSVRC2012 archives -> array_record shards, no TensorFlow.

::

  # an image folder (data_dir/train/<class>/..., data_dir/val/...):
  python -m ovsw_jax.data.prepare --data_dir=/data/imagenet \\
      --out=gs://my-bucket/imagenet_records
  # the official archives, without extracting them:
  python -m ovsw_jax.data.prepare \\
      --train_tar=/data/ILSVRC2012_img_train.tar \\
      --val_tar=/data/ILSVRC2012_img_val.tar \\
      --val_labels=/data/ILSVRC2012_devkit_t12.tar.gz --out=/data/records

Every image's bytes are stored as they are, with its label and name
(`image_records`), in ImageFolder's order, ``--examples_per_shard`` to a
shard; `--processes` worker processes write shards in parallel, decoding
each image once to refuse corrupt ones (``--skip_corrupt`` skips and counts
them). Output goes to a local folder or ``gs://`` (shards are written
locally, then uploaded). Killed, the same command resumes: finished shards
are kept (`record_shards`), the result is byte for byte the same. At the end
the per-class counts are printed and checked against the input's, and
dataset_info.json is written: train on it with
``--config.dataset=image_records --config.data_dir=<out>``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import sys
import threading
from typing import Any, Sequence

from absl import logging

from ovsw_jax import backend_state
from ovsw_jax.data import folder_listing
from ovsw_jax.data import image_files
from ovsw_jax.data import image_records
from ovsw_jax.data import prepare_inputs
from ovsw_jax.data import record_shards
from ovsw_jax.data.source import DataNotFoundError


def shard_tasks(plan: prepare_inputs.Plan, examples_per_shard: int
                ) -> dict[str, list[tuple[str, list]]]:
  """Per split, (shard file name, its examples), in order."""
  out = {}
  for split, examples in plan.splits.items():
    n = max(1, math.ceil(len(examples) / examples_per_shard))
    out[split] = [(image_records.shard_name(split, k, n),
                   examples[k * examples_per_shard:
                            (k + 1) * examples_per_shard]) for k in range(n)]
  return out


def _write_all(out: str, tasks: dict[str, list[tuple[str, list]]],
               skip_corrupt: bool, pool) -> dict[str, dict[str, Any]]:
  """Writes the shards without a current marker; every shard's marker."""
  markers, todo = {}, []
  for shards in tasks.values():
    for name, examples in shards:
      m = record_shards.read_marker(out, name)
      if record_shards.is_current(m, examples, skip_corrupt):
        markers[name] = m
      else:
        todo.append((name, examples))
  total = sum(len(s) for s in tasks.values())
  print(f'{total - len(todo)} of {total} shards already written; writing '
        f'{len(todo)}', flush=True)
  futures = {pool.submit(record_shards.write_shard, out, name, examples,
                         skip_corrupt): name for name, examples in todo}
  try:
    for k, f in enumerate(concurrent.futures.as_completed(futures), 1):
      markers[futures[f]] = f.result()
      if k % max(1, len(todo) // 20) == 0 or k == len(todo):
        print(f'  {k}/{len(todo)} shards written', flush=True)
  except BaseException:
    for f in futures:
      f.cancel()
    raise
  return markers


def check_counts(plan: prepare_inputs.Plan,
                 tasks: dict[str, list[tuple[str, list]]],
                 markers: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """Per split: the shards, and per-class counts, checked against the plan.

  Raises:
    RuntimeError: a class's records differ from its images minus skipped.
  """
  splits = {}
  for split, shards in tasks.items():
    expected = [0] * len(plan.classes)
    written = [0] * len(plan.classes)
    skipped = {}
    for name, examples in shards:
      m = markers[name]
      skipped.update(m['skipped'])
      for e in examples:
        expected[e.label] += e.name not in m['skipped']
      for label, count in m['class_counts'].items():
        written[int(label)] += count
    if written != expected:
      bad = next(i for i, (a, b) in enumerate(zip(written, expected))
                 if a != b)
      raise RuntimeError(
          f'{split}: class {plan.classes[bad]} has {written[bad]} records but '
          f'{expected[bad]} images; delete the output and prepare again')
    splits[split] = {
        'num_examples': sum(written), 'class_counts': written,
        'skipped_corrupt': skipped,
        'shards': [{'file': n, 'num_records': markers[n]['num_records'],
                    'sha256': markers[n]['sha256']} for n, _ in shards]}
  return splits


def print_counts(classes: Sequence[str], splits: dict[str, Any]) -> None:
  names = list(splits)
  print(f'{"label":>5}  {"class":<24}' + ''.join(f'{n:>9}' for n in names))
  for i, c in enumerate(classes):
    print(f'{i:>5}  {c:<24}' + ''.join(
        f'{splits[n]["class_counts"][i]:>9}' for n in names))
  print(f'{"":>5}  {"total":<24}' + ''.join(
      f'{splits[n]["num_examples"]:>9}' for n in names))
  for n in names:
    if splits[n]['skipped_corrupt']:
      print(f'{n}: skipped {len(splits[n]["skipped_corrupt"])} corrupt '
            'images (listed in dataset_info.json)')


def worker_context() -> multiprocessing.context.BaseContext:
  """How `prepare` starts its worker processes: fork where it is safe.

  A forked worker starts in milliseconds and shares the parent's memory; a
  spawned one imports ovsw_jax and JAX again (seconds, about 0.2 GB each).
  But a fork copies only the calling thread, so a process whose other
  threads may hold locks can hand the child a lock nobody releases, and a
  worker that deadlocks or crashes. Workers spawn when JAX's backend has
  started (a notebook, a test) or other Python threads run. A heuristic:
  native threads that neither knows of (a TensorFlow or gRPC pool) go
  unseen. Spawned workers need a script's top level to be guarded by
  ``if __name__ == '__main__':``, as multiprocessing always does for spawn.
  """
  if ('fork' in multiprocessing.get_all_start_methods()
      and not backend_state.backend_started()
      and threading.active_count() == 1):
    return multiprocessing.get_context('fork')
  return multiprocessing.get_context('spawn')


def _worker_pool(processes: int) -> concurrent.futures.Executor:
  """``processes`` workers (1: this process, one thread), all started now.

  With fork, the pool starts every worker at its first task: that task runs
  here, before listing the input or the output (gs:// I/O starts threads),
  so the fork happens in the process `worker_context` judged.
  """
  if processes == 1:
    return concurrent.futures.ThreadPoolExecutor(1)
  pool = concurrent.futures.ProcessPoolExecutor(
      processes, mp_context=worker_context())
  pool.submit(os.getpid).result()
  return pool


def prepare(out: str, *, data_dir: str | None = None,
            train_tar: str | None = None, val_tar: str | None = None,
            val_labels: str | None = None, train_split: str = 'train',
            eval_split: str = 'val', examples_per_shard: int = 1000,
            processes: int | None = None,
            skip_corrupt: bool = False) -> dict[str, Any]:
  """Writes the prepared dataset to `out`; returns its dataset_info.

  ``processes`` > 1 runs that many worker processes, forked where that is
  safe and spawned otherwise (`worker_context`); None: one per core. In a
  notebook (JAX started), workers spawn and each imports JAX: pass a
  smaller ``processes`` where memory is short, or run the command line.

  Raises:
    ValueError: bad arguments or input (naming the path and the fix).
    image_files.CorruptImageError: a corrupt image, unless skip_corrupt.
  """
  if bool(data_dir) == bool(train_tar):
    given = (f'both --data_dir={data_dir} and --train_tar={train_tar} were '
             'given' if data_dir else 'neither was given')
    raise ValueError('pass either --data_dir (an image folder) or '
                     f'--train_tar (ILSVRC2012_img_train.tar): {given}')
  if examples_per_shard < 1:
    raise ValueError(f'--examples_per_shard={examples_per_shard} must be '
                     '>= 1')
  processes = processes or len(os.sched_getaffinity(0))
  with _worker_pool(processes) as pool:
    if data_dir:
      plan = prepare_inputs.folder_plan(
          data_dir, train_split=train_split, eval_split=eval_split,
          eval_labels=val_labels)
    else:
      plan = prepare_inputs.tar_plan(train_tar, val_tar, val_labels,
                                     map_fn=pool.map)
    tasks = shard_tasks(plan, examples_per_shard)
    markers = _write_all(out, tasks, skip_corrupt, pool)
  splits = check_counts(plan, tasks, markers)
  print_counts(plan.classes, splits)
  info = {'format': image_records.FORMAT, 'version': image_records.VERSION,
          'classes': list(plan.classes), 'splits': splits,
          'source': plan.source}
  # Written last: its presence says the output is complete.
  record_shards.write_text(folder_listing.join(out, image_records.INFO_FILE),
                           json.dumps(info, indent=1))
  return info


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m ovsw_jax.data.prepare',
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', required=True,
                      help='output folder, local or gs://')
  parser.add_argument('--data_dir', help='an image folder (train/, val/)')
  parser.add_argument('--train_split', default='train')
  parser.add_argument('--eval_split', default='val')
  parser.add_argument('--train_tar', help='ILSVRC2012_img_train.tar')
  parser.add_argument('--val_tar', help='ILSVRC2012_img_val.tar')
  parser.add_argument('--val_labels', help='the devkit or a label file, for '
                      '--val_tar or a flat val folder (ilsvrc_val)')
  parser.add_argument('--examples_per_shard', type=int, default=1000)
  parser.add_argument('--processes', type=int, default=None,
                      help='worker processes (default: one per core; 1: '
                      'none, in this process)')
  parser.add_argument('--skip_corrupt', action='store_true',
                      help='skip and count images that do not decode')
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  try:
    info = prepare(args.out, data_dir=args.data_dir,
                   train_tar=args.train_tar, val_tar=args.val_tar,
                   val_labels=args.val_labels, train_split=args.train_split,
                   eval_split=args.eval_split,
                   examples_per_shard=args.examples_per_shard,
                   processes=args.processes, skip_corrupt=args.skip_corrupt)
  except (ValueError, OSError, RuntimeError, DataNotFoundError,
          image_files.CorruptImageError) as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    return 1
  print(f'wrote {args.out}: ' + ', '.join(
      f'{s} {d["num_examples"]} images in {len(d["shards"])} shards'
      for s, d in info['splits'].items()) + '. Train on it with '
      f'--config.dataset=image_records --config.data_dir={args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
