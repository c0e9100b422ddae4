"""The per-core image benchmarks' shared parts (input_pipeline,
image_sources): their common options, the worker process pinned to one
core, the timing of each arm alone round after round, and the bar chart of
images per core-second.

Each arm is built fresh and timed alone, ``rounds`` times (odd rounds in
reverse order, so a drift in the machine's speed hits every arm alike):
2 untimed batches, then ``steps`` batches back to back. Pinned to one core,
an arm's images/s divided by its CPU utilisation (<= 1) is images per
core-second, the unit the benchmarks compare in: ``images_per_cpu_s`` (from
the median batch time and the mean utilisation), and exactly, as timed
images over the CPU seconds they took, ``images_per_cpu_s_by_round`` (each
round) and ``images_per_cpu_s_all_rounds`` (all of them: a weighted mean of
the rounds', so it lies within their range).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np

# The repo root: where the pinned worker finds the `benchmarks` package.
_ROOT = str(Path(__file__).resolve().parents[2])
Arm = Callable[[], Callable[[], Any]]  # builds an arm's one-batch call


def add_options(parser: argparse.ArgumentParser) -> None:
  """The options every per-core image benchmark takes (and its worker's)."""
  parser.add_argument('--num_images', type=int, default=2000)
  parser.add_argument('--num_eval', type=int, default=500)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--rounds', type=int, default=4)
  parser.add_argument('--out', default=None)
  parser.add_argument('--plot', default=None, help='PNG path')
  parser.add_argument('--plot_only', default=None,
                      help='plot this JSON result and exit')
  # The pinned worker's (see `run_pinned`).
  parser.add_argument('--_steps', type=int, default=None,
                      help=argparse.SUPPRESS)
  parser.add_argument('--_pin_cpu', type=int, default=None,
                      help=argparse.SUPPRESS)


def pin(args: argparse.Namespace) -> None:
  """Pins this process to ``--_pin_cpu`` when given: call it before
  TensorFlow or JAX start their thread pools."""
  core = vars(args)['_pin_cpu']  # The hidden options' names start with '_'.
  if core is not None:
    os.sched_setaffinity(0, {core})


def run_pinned(module: str, worker_args: Sequence[str]) -> dict[str, Any]:
  """``python -m module worker_args`` pinned to this process's first core;
  the JSON its last line of output holds."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  env['PYTHONPATH'] = os.pathsep.join(
      p for p in (_ROOT, env.get('PYTHONPATH', '')) if p)
  cmd = [sys.executable, '-m', module, *worker_args,
         f'--_pin_cpu={min(os.sched_getaffinity(0))}']
  proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True,
                        check=False)
  if proc.returncode != 0:
    raise RuntimeError(f'the pinned worker failed (exit {proc.returncode}); '
                       'its stderr is above')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def time_alone(make: Arm, steps: int, warmup: int = 2) -> dict[str, Any]:
  """Builds an arm, runs `warmup` batches, then times `steps` back to back."""
  fn = make()
  for _ in range(warmup):
    fn()
  times, c0 = [], time.process_time()
  t0 = time.perf_counter()
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  wall = time.perf_counter() - t0
  cpu = time.process_time() - c0
  del fn
  return {'times': times, 'cpu_utilization': cpu / wall, 'cpu_s': cpu}


def time_rounds(arms: dict[str, Arm], batch: int, steps: int,
                rounds: int) -> dict[str, Any]:
  """Every arm alone, `rounds` times (module docstring).

  Returns:
    ``{'arms': {name: figures}, 'load_1min', 'cpu_affinity'}``; an arm's
    figures: images_per_s and images_per_cpu_s (over all its batches),
    per round images_per_s_by_round and images_per_cpu_s_by_round, and
    images_per_cpu_s_all_rounds.
  """
  pooled = {name: {'times': [], 'cpu': [], 'rounds': [], 'cpu_s': []}
            for name in arms}
  load = []
  for r in range(rounds):
    order = list(arms.items())[::-1 if r % 2 else 1]
    for name, make in order:
      load.append(os.getloadavg()[0])
      o = time_alone(make, steps)
      pooled[name]['times'] += o['times']
      pooled[name]['cpu'].append(o['cpu_utilization'])
      pooled[name]['cpu_s'].append(o['cpu_s'])
      pooled[name]['rounds'].append(batch / float(np.median(o['times'])))
  out = {}
  for name, p in pooled.items():
    med = float(np.median(p['times']))
    util = float(np.mean(p['cpu']))
    out[name] = {'images_per_s': batch / med,
                 'images_per_cpu_s': batch / med / max(util, 1e-9),
                 'batch_s_median': med, 'cpu_utilization': util,
                 'timed_batches': len(p['times']),
                 # Each round's figures: the spread across the run.
                 'images_per_s_by_round': p['rounds'],
                 'images_per_cpu_s_by_round': [
                     batch * steps / max(c, 1e-9) for c in p['cpu_s']],
                 'images_per_cpu_s_all_rounds': (
                     batch * steps * rounds / max(sum(p['cpu_s']), 1e-9))}
  return {'arms': out, 'load_1min': load,
          'cpu_affinity': sorted(os.sched_getaffinity(0))}


def bar_chart(ax, arms: dict[str, Any], title: str,
              key: str = 'images_per_cpu_s') -> None:
  """Images per core-second (`key`) of each arm, first at the top
  (tf.data's orange, TFDS's grey, ours blue)."""
  names = list(arms)
  vals = [arms[n][key] for n in names]
  y = np.arange(len(names))
  bars = ax.barh(y, vals, 0.6, color=[
      'tab:orange' if n.startswith('tfdata') else
      'tab:gray' if n.startswith('tfds') else 'tab:blue' for n in names])
  ax.bar_label(bars, [f'{v:.0f}' for v in vals], fontsize=8)
  ax.set_yticks(y, names)
  ax.invert_yaxis()
  ax.set_xlabel('images per core-second')
  ax.set_title(title)
