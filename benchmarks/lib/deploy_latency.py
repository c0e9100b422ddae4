"""Batch-1 latency of the deploy benchmark's arms, one worker per thread mode.

XLA fixes its threading when its CPU backend starts, so each thread mode
runs in its own process (`run_latency` starts ``python -m benchmarks.deploy``
as a worker): 'single' with ``--xla_cpu_multi_thread_eigen=false`` and
pinned to one core, 'multi' with XLA's defaults.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from benchmarks.lib import deploy_files
from benchmarks.lib import timing
from ovsw_jax import models
from ovsw_jax.deploy import format as packed_format
from ovsw_jax.deploy import infer
from ovsw_jax.deploy import native

THREAD_MODES = ("single", "multi")
SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false"
# Timed arm -> (its packed file, the binary convs' backend); (None, None): a
# float32 forward of the npz's weights. 'auto' is the native kernel where it
# is built (`ovsw_jax.deploy.native`), which each result records.
LATENCY_ARMS = {"float32": (None, None), "float32_real": (None, None),
                "packed": ("packed_fp32", "auto"),
                "packed_jax": ("packed_fp32", "jax"),
                "packed_folded": ("packed_fp32_folded", "auto")}
# The throughput runs: images per call, and the arms timed at that size.
THROUGHPUT_BATCH = 8
THROUGHPUT_ARMS = ("float32_real", "packed", "packed_jax")
# The repo root: where the worker finds the `benchmarks` package.
_ROOT = Path(__file__).resolve().parents[2]


def time_interleaved(arms: Mapping[str, Callable[[], Any]], reps: int,
                     warmup: int = 3) -> dict[str, Any]:
  """Calls each arm ``warmup`` times, then all arms in turn ``reps`` times:
  `timing.time_interleaved`, one call per turn.

  Args:
    arms: name -> a function whose result `jax.block_until_ready` waits on.
    reps: timed calls per arm.
    warmup: untimed calls per arm first (the first compiles).

  Returns:
    name -> {'times_s', 'first_call_s', 'cpu_utilization'} (process CPU s /
    wall s over that arm's timed calls).
  """
  if reps < 1 or warmup < 1:
    raise ValueError(f"reps={reps} and warmup={warmup} must be >= 1 (the "
                     "first call compiles and is not timed)")
  timed = timing.time_interleaved(arms, steps=reps, warmup=warmup, block=1)
  timed.pop("_load")
  return {k: {"times_s": t["times"], "first_call_s": t["first_step_s"],
              "cpu_utilization": t["cpu_utilization"]}
          for k, t in timed.items()}


def model_arms(name: str, folder: str, image_size_imagenet: int,
               batch: int, arms: Sequence[str], seed: int = 0
               ) -> tuple[dict[str, Callable[[], Any]], tuple[int, ...]]:
  """Each arm's call on one random batch, from the files `write_files`
  wrote; and the image shape."""
  model, shape, num_classes = deploy_files.model_setup(
      name, image_size_imagenet)
  real_model = models.get_model(name, num_classes,
                                conv=deploy_files.RealConv)
  variables = jax.device_put(
      deploy_files.load_float32(
          os.path.join(folder, deploy_files.FP32_FILE.format(name))))
  image = jax.device_put(np.random.default_rng(seed).standard_normal(
      (batch, *shape), dtype=np.float32))
  float_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  real_fn = jax.jit(lambda v, x: real_model.apply(v, x, train=False))
  fns = {"float32": lambda: float_fn(variables, image),
         "float32_real": lambda: real_fn(variables, image)}
  for arm in arms:
    file_arm, backend = LATENCY_ARMS[arm]
    if file_arm is not None:
      pattern = deploy_files.PACKED_FILES[file_arm][0]
      predict = infer.make_predict_fn(
          packed_format.load(os.path.join(folder, pattern.format(name))),
          backend)
      fns[arm] = lambda predict=predict: predict(image)
  return {arm: fns[arm] for arm in arms}, shape


def latency_one_model(name: str, folder: str, reps: int,
                      image_size_imagenet: int = 224,
                      seed: int = 0) -> dict[str, Any]:
  """Batch-1 latency of a model's arms, from the files `write_files` wrote."""
  fns, shape = model_arms(name, folder, image_size_imagenet, 1,
                          list(LATENCY_ARMS), seed)
  timed = time_interleaved(fns, reps)
  logits = {k: np.asarray(fn(), np.float64) for k, fn in fns.items()}
  result: dict[str, Any] = {"image_shape": list(shape),
                            "backend": infer.resolve_backend("auto"),
                            "isa": native.isa()}
  for arm, t in timed.items():
    result[arm] = {**timing.summarize_ms(t["times_s"]),
                   "first_call_s": t["first_call_s"],
                   "cpu_utilization": t["cpu_utilization"],
                   "times_ms": [s * 1e3 for s in t["times_s"]]}
    if arm.startswith("packed"):
      diff = float(np.max(np.abs(logits[arm] - logits["float32"])))
      result[arm]["max_abs_logit_diff_vs_float32"] = diff
      # Relative to the logits' scale, which depends on the weights.
      result[arm]["rel_logit_diff_vs_float32"] = diff / max(
          float(np.max(np.abs(logits["float32"]))), 1e-30)
      result[arm]["same_argmax_as_float32"] = bool(
          np.argmax(logits[arm]) == np.argmax(logits["float32"]))
  # The two backends compute the same integers: their logits agree exactly.
  result["packed_equals_packed_jax"] = bool(
      np.array_equal(logits["packed"], logits["packed_jax"]))
  float_ms = result["float32"]["median_ms"]
  real_ms = result["float32_real"]["median_ms"]
  result["speedup"] = float_ms / result["packed"]["median_ms"]
  result["speedup_folded"] = float_ms / result["packed_folded"]["median_ms"]
  result["speedup_vs_real"] = real_ms / result["packed"]["median_ms"]
  result["speedup_folded_vs_real"] = (
      real_ms / result["packed_folded"]["median_ms"])
  result["speedup_jax_vs_real"] = real_ms / result["packed_jax"]["median_ms"]
  result["native_over_jax"] = (result["packed_jax"]["median_ms"]
                               / result["packed"]["median_ms"])
  return result


def throughput_one_model(name: str, folder: str, reps: int,
                         image_size_imagenet: int = 224) -> dict[str, Any]:
  """Images per second at `THROUGHPUT_BATCH` of `THROUGHPUT_ARMS`."""
  fns, _ = model_arms(name, folder, image_size_imagenet, THROUGHPUT_BATCH,
                      THROUGHPUT_ARMS)
  timed = time_interleaved(fns, reps)
  result: dict[str, Any] = {"batch": THROUGHPUT_BATCH}
  for arm, t in timed.items():
    ms = timing.summarize_ms(t["times_s"])
    result[arm] = {**ms, "images_per_s": THROUGHPUT_BATCH / ms["median_ms"]
                                         * 1e3,
                   "cpu_utilization": t["cpu_utilization"]}
  real = result["float32_real"]["images_per_s"]
  result["speedup_vs_real"] = result["packed"]["images_per_s"] / real
  result["speedup_jax_vs_real"] = result["packed_jax"]["images_per_s"] / real
  return result


def latency_worker(mode: str, folder: str, model_names: Sequence[str],
                   reps: int, image_size_imagenet: int,
                   pin_cpu: Optional[int] = None) -> dict[str, Any]:
  """Every model's latency in this process (started by `run_latency`).

  Args:
    pin_cpu: the core to pin this process to, before XLA's CPU backend
      starts (it sizes its thread pool from the affinity).
  """
  if pin_cpu is not None:
    os.sched_setaffinity(0, {pin_cpu})
  load_start = os.getloadavg()
  c, t = time.process_time(), time.perf_counter()
  out: dict[str, Any] = {"models": {}}
  for name in model_names:
    print(f"[{mode}] {name}", file=sys.stderr, flush=True)
    out["models"][name] = latency_one_model(name, folder, reps,
                                            image_size_imagenet)
  # Fewer calls: each is THROUGHPUT_BATCH images.
  out["throughput"] = {}
  for name in model_names:
    print(f"[{mode}] {name}, batch {THROUGHPUT_BATCH}", file=sys.stderr,
          flush=True)
    out["throughput"][name] = throughput_one_model(
        name, folder, max(2, reps // 3), image_size_imagenet)
  out["process"] = {
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "cpu_affinity": sorted(os.sched_getaffinity(0)),
      "threads": len(os.listdir("/proc/self/task")),
      "cpu_utilization_whole_run": (time.process_time() - c) /
                                   (time.perf_counter() - t),
      "loadavg_start": list(load_start),
      "loadavg_end": list(os.getloadavg()),
  }
  # Over the timed calls of every arm and model.
  cpu = wall = 0.0
  for m in out["models"].values():
    for arm in LATENCY_ARMS:
      total = sum(m[arm]["times_ms"]) / 1e3
      cpu += m[arm]["cpu_utilization"] * total
      wall += total
  out["cpu_utilization"] = cpu / wall
  return out


def worker_env(mode: str) -> dict[str, str]:
  """The environment of a thread mode's worker."""
  if mode not in THREAD_MODES:
    raise ValueError(f"thread mode {mode!r}; use one of {list(THREAD_MODES)}")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if mode == "single":
    env["XLA_FLAGS"] = " ".join(
        f for f in (os.environ.get("XLA_FLAGS", ""), SINGLE_THREAD_XLA_FLAGS)
        if f)
  return env


def run_latency(mode: str, folder: str, model_names: Sequence[str],
                reps: int, image_size_imagenet: int) -> dict[str, Any]:
  """Runs `latency_worker` in a subprocess set up for ``mode``."""
  env = worker_env(mode)
  # The worker is the deploy benchmark itself, found from the repo root.
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(_ROOT), env.get("PYTHONPATH", "")) if p)
  cmd = [sys.executable, "-m", "benchmarks.deploy",
         f"--_latency_worker={mode}", f"--_folder={folder}",
         f"--models={','.join(model_names)}", f"--reps={reps}",
         f"--image_size_imagenet={image_size_imagenet}"]
  if mode == "single":
    cmd.append(f"--_pin_cpu={min(os.sched_getaffinity(0))}")
  proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True,
                        check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"the {mode}-thread latency worker failed (exit "
                       f"{proc.returncode}); its stderr is above")
  return json.loads(proc.stdout.strip().splitlines()[-1])
