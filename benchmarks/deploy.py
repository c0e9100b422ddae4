"""Packed 1-bit models against float32: file sizes and batch-1 latency on CPU.

  python benchmarks/deploy.py [--models=cresnet20_1w1a,...] [--reps=30] \
      [--threads=single,multi] [--image_size_imagenet=224] \
      [--files_dir=/tmp/deploy_files] [--out=benchmarks/results/deploy.json]

The paper (section 5.5, the BOLT framework on an ARM device, NEON) saves
16.6x / 21.2x memory on ResNet18 / ResNet34 and runs them 3.47x / 3.42x faster than their
32-bit versions. This measures the same for `ovsw_jax.export` +
`ovsw_jax.packed`, for every model (random weights, `random_variables`:
sizes do not depend on the values, nor does XLA's run time).

Sizes: real files written to a temporary folder, per model: the float32
model, one uncompressed ``.npz`` of its params and batch_stats (``np.savez``
of the flattened leaves); and the packed files (`export.export_model` +
`packed.save`) with the float layers in float32 and in float16, and with
BatchNorm folded (float32). The ratio is float32 file / packed file.

Latency: batch 1, one image at the model's input shape, of the packed
model (the float32 file, loaded back with `packed.load`;
`packed.make_predict_fn`) against the float32 eval forward of the same
network on the same weights (``jax.jit(model.apply(v, x, train=False))``:
float convs of +-1 values, binarizing the latent weights at every call as
the eval forward does) -> ``speedup``. Two more arms: the BatchNorm-folded
packed file (``speedup_folded``), and the real-valued network of the same
shapes (binary convs replaced by plain float convs of the latent weights,
`RealConv`: the paper's 32/32 backbone) -> ``speedup_vs_real``. XLA fixes its
threading when its CPU backend starts, so each mode runs in a subprocess of
this script:

* single: ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` (Eigen's convs and
  matmuls on the calling thread) and the process pinned to one core
  (``sched_setaffinity``, before XLA's backend starts; it also starts fewer
  threads then). XLA has no
  ``intra_op_parallelism_threads`` flag (TensorFlow's option): spelled
  ``--intra_op_parallelism_threads=1`` XLA aborts on it, without ``--`` it is
  ignored. ``cpu_utilization`` (process CPU s / wall s over the timed calls)
  shows the cores used: at most 1.0 here.
* multi: XLA's defaults, every core of the process's affinity.

Per model the arms are compiled and warmed up, then called in turn,
``--reps`` times each (so load changes hit all alike); a call's time runs to
`jax.block_until_ready` of its logits. speedup = float median / packed
median. The load average is recorded: on a shared machine other processes
take cores from the multi-threaded mode first.

Prints one JSON line; with ``--out`` writes it indented and a PNG of the
sizes and speedups next to it.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Mapping, Optional, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax  # pylint: disable=g-import-not-at-top
from flax import linen as nn  # pylint: disable=g-import-not-at-top
from flax import traverse_util  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
from jax import lax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from ovsw_jax import export  # pylint: disable=g-import-not-at-top
from ovsw_jax import layers  # pylint: disable=g-import-not-at-top
from ovsw_jax import models  # pylint: disable=g-import-not-at-top
from ovsw_jax import packed as packed_lib  # pylint: disable=g-import-not-at-top

TARGET_SPEEDUP = 3.4  # the paper's, on ARM, one thread
MB = 1e6
THREAD_MODES = ("single", "multi")
SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false"
CIFAR_CLASSES, IMAGENET_CLASSES = 10, 1000
# The paper's table (section 5.5): the BOLT framework on one ARM core.
PAPER = {
    "device": "one ARM core, BOLT framework (NEON)",
    "resnet18_1w1a": {"fp32_mb": 46.76, "packed_mb": 2.81,
                      "size_ratio": 16.64, "fp32_latency_ms": 27.67,
                      "packed_latency_ms": 7.97, "speedup": 3.47},
    "resnet34_1w1a": {"fp32_mb": 87.19, "packed_mb": 4.12,
                      "size_ratio": 21.16, "fp32_latency_ms": 48.82,
                      "packed_latency_ms": 14.28, "speedup": 3.42},
}
# Files per model in the work folder.
FP32_FILE = "{}_fp32.npz"
PACKED_FILES = {  # arm -> (file, float_dtype, fold_batchnorm)
    "packed_fp32": ("{}_packed_fp32.npz", "float32", False),
    "packed_fp16": ("{}_packed_fp16.npz", "float16", False),
    "packed_fp32_folded": ("{}_packed_fp32_folded.npz", "float32", True),
}
# Timed arm -> its packed file (None: a float32 forward of the npz's weights).
LATENCY_ARMS = {"float32": None, "float32_real": None,
                "packed": "packed_fp32", "packed_folded": "packed_fp32_folded"}


# ----------------------------------------------------------------------------
# Models and files
# ----------------------------------------------------------------------------


class RealConv(nn.Module):
  """A plain float conv in `layers.BinaryConv`'s place (and signature).

  Builds the real-valued network of the same shapes (the paper's 32/32
  backbone) on the binary model's weights: the kernel keeps the name
  `layers.LATENT_KERNEL` and is used as it is, activations are not binarized.
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Any = None
  dtype: Any = None
  kernel_init: Any = layers.kaiming_normal_fan_in()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # Same forward in both modes.
    ks = tuple(self.kernel_size)
    kernel = self.param(layers.LATENT_KERNEL, self.kernel_init,
                        (*ks, x.shape[-1], self.features), jnp.float32)
    dtype = self.dtype or x.dtype
    padding = self.padding
    if padding is None:
      padding = tuple((k // 2, k // 2) for k in ks)
    return lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), tuple(self.strides), padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def model_setup(name: str, image_size_imagenet: int = 224
                ) -> tuple[Any, tuple[int, int, int], int]:
  """``(module, image_shape, num_classes)`` of a model as benchmarked.

  CIFAR models (32x32 inputs) get 10 classes, ImageNet ones 1000 and
  ``image_size_imagenet`` square inputs (ResNets pool globally: their weights
  do not depend on it).
  """
  name = models.canonical_name(name)
  shape = models.INPUT_SHAPES[name]
  if shape[0] == 32:
    num_classes = CIFAR_CLASSES
  else:
    if image_size_imagenet < 32:
      raise ValueError(f"--image_size_imagenet={image_size_imagenet} is too "
                       "small for a ResNet's 5 downsamplings; use >= 32")
    num_classes = IMAGENET_CLASSES
    shape = (image_size_imagenet, image_size_imagenet, shape[2])
  return models.get_model(name, num_classes), shape, num_classes


def random_variables(model: Any, image_shape: Sequence[int],
                     seed: int = 0) -> dict[str, Any]:
  """Random params and batch_stats of the model's shapes (host float32).

  The shapes come from tracing ``model.init`` (`jax.eval_shape`: running it
  compiles for some 10 s a model here). Values: kernels ``N(0, 1 / fan_in)``,
  BatchNorm scales and variances ``U(0.5, 1.5)``, biases and means ``N(0,
  0.1^2)``: activations and logits of order 1 (the init's small BatchNorm
  scales make them ~1e-7), so packed and float logits compare meaningfully.
  Sizes and XLA's run time do not depend on the values.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(seed),
                          jnp.zeros((1, *image_shape), jnp.float32))
  flat = traverse_util.flatten_dict(
      {k: v for k, v in shapes.items() if k in ("params", "batch_stats")})
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in flat.items():
    shape, leaf_name = tuple(leaf.shape), path[-1]
    if leaf_name in ("scale", "var") and len(shape) == 1:
      value = rng.uniform(0.5, 1.5, shape)
    elif len(shape) >= 2:
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    else:
      value = 0.1 * rng.standard_normal(shape)
    out[path] = value.astype(np.float32)
  return traverse_util.unflatten_dict(out)


def save_float32(variables: Mapping[str, Any], path: str) -> int:
  """Writes params + batch_stats as one uncompressed float32 ``.npz``.

  Returns:
    The file's size in bytes.
  """
  flat = traverse_util.flatten_dict(dict(variables), sep="/")
  np.savez(path, **{k: np.asarray(v, np.float32) for k, v in flat.items()})
  return os.path.getsize(path)


def load_float32(path: str) -> dict[str, Any]:
  """Inverse of `save_float32`."""
  with np.load(path) as f:
    flat = {k: f[k] for k in f.files}
  return traverse_util.unflatten_dict(flat, sep="/")


def write_files(name: str, folder: str, image_size_imagenet: int = 224,
                seed: int = 0) -> dict[str, Any]:
  """Writes a model's float32 and packed files and measures them.

  Returns:
    ``{'num_float_values', 'float32_bytes_formula', 'files': {arm: {'path',
    'bytes', 'mb', 'ratio_fp32_over_this'}}}``, arms 'float32' and those of
    `PACKED_FILES`.
  """
  model, shape, _ = model_setup(name, image_size_imagenet)
  variables = random_variables(model, shape, seed)
  files = {}
  fp32_path = os.path.join(folder, FP32_FILE.format(name))
  fp32_bytes = save_float32(variables, fp32_path)
  files["float32"] = {"path": fp32_path, "bytes": fp32_bytes}
  for arm, (pattern, dtype, fold) in PACKED_FILES.items():
    path = os.path.join(folder, pattern.format(name))
    packed = export.export_model(
        model, variables, model_name=name, model_options={},
        image_shape=shape, float_dtype=dtype, fold_batchnorm=fold)
    packed_lib.save(packed, path)
    files[arm] = {"path": path, "bytes": os.path.getsize(path)}
  for entry in files.values():
    entry["mb"] = entry["bytes"] / MB
    entry["ratio_fp32_over_this"] = fp32_bytes / entry["bytes"]
  return {
      "num_float_values": int(sum(np.size(x)
                                  for x in jax.tree.leaves(variables))),
      "float32_bytes_formula": export.float32_bytes(variables),
      "files": files,
  }


# ----------------------------------------------------------------------------
# Latency (runs in a worker process per thread mode)
# ----------------------------------------------------------------------------


def summarize_ms(times_s: Sequence[float]) -> dict[str, Any]:
  """Median, p10/p90, mean, min of per-call seconds, in ms."""
  ms = np.asarray(times_s, np.float64) * 1e3
  return {"reps": len(ms), "median_ms": float(np.median(ms)),
          "p10_ms": float(np.percentile(ms, 10)),
          "p90_ms": float(np.percentile(ms, 90)),
          "mean_ms": float(ms.mean()), "min_ms": float(ms.min())}


def time_interleaved(arms: Mapping[str, Callable[[], Any]], reps: int,
                     warmup: int = 3) -> dict[str, Any]:
  """Calls each arm ``warmup`` times, then all arms in turn ``reps`` times.

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
  out = {k: {"times_s": [], "cpu_s": 0.0} for k in arms}
  for name, fn in arms.items():
    for i in range(warmup):
      t = time.perf_counter()
      jax.block_until_ready(fn())
      if i == 0:
        out[name]["first_call_s"] = time.perf_counter() - t
  for _ in range(reps):
    for name, fn in arms.items():
      c, t = time.process_time(), time.perf_counter()
      jax.block_until_ready(fn())
      out[name]["times_s"].append(time.perf_counter() - t)
      out[name]["cpu_s"] += time.process_time() - c
  for o in out.values():
    o["cpu_utilization"] = o.pop("cpu_s") / sum(o["times_s"])
  return out


def latency_one_model(name: str, folder: str, reps: int,
                      image_size_imagenet: int = 224,
                      seed: int = 0) -> dict[str, Any]:
  """Batch-1 latency of a model's arms, from the files `write_files` wrote."""
  model, shape, num_classes = model_setup(name, image_size_imagenet)
  real_model = models.get_model(name, num_classes, conv=RealConv)
  variables = jax.device_put(
      load_float32(os.path.join(folder, FP32_FILE.format(name))))
  image = jax.device_put(np.random.default_rng(seed).standard_normal(
      (1, *shape), dtype=np.float32))
  float_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  real_fn = jax.jit(lambda v, x: real_model.apply(v, x, train=False))
  fns = {"float32": lambda: float_fn(variables, image),
         "float32_real": lambda: real_fn(variables, image)}
  for arm, file_arm in LATENCY_ARMS.items():
    if file_arm is not None:
      pattern = PACKED_FILES[file_arm][0]
      predict = packed_lib.make_predict_fn(
          packed_lib.load(os.path.join(folder, pattern.format(name))))
      fns[arm] = lambda predict=predict: predict(image)
  timed = time_interleaved(fns, reps)
  logits = {k: np.asarray(fn(), np.float64) for k, fn in fns.items()}
  result: dict[str, Any] = {"image_shape": list(shape)}
  for arm, t in timed.items():
    result[arm] = {**summarize_ms(t["times_s"]),
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
  float_ms = result["float32"]["median_ms"]
  real_ms = result["float32_real"]["median_ms"]
  result["speedup"] = float_ms / result["packed"]["median_ms"]
  result["speedup_folded"] = float_ms / result["packed_folded"]["median_ms"]
  result["speedup_vs_real"] = real_ms / result["packed"]["median_ms"]
  result["speedup_folded_vs_real"] = (
      real_ms / result["packed_folded"]["median_ms"])
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
  cmd = [sys.executable, str(Path(__file__).resolve()),
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


# ----------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
  import jaxlib  # pylint: disable=g-import-not-at-top
  cpu_model = None
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu_model = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "platform": platform.platform(), "cpu_count": os.cpu_count(),
          "cpu_model": cpu_model,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def parse_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
  """A comma list, each item checked against ``allowed``."""
  items = [s.strip() for s in text.split(",") if s.strip()]
  if not items:
    raise ValueError(f"--{what} is empty; give some of {list(allowed)}")
  bad = [s for s in items if s not in allowed]
  if bad:
    raise ValueError(f"--{what}: unknown {bad}; valid: {list(allowed)}")
  return items


def run(model_names: Sequence[str], reps: int = 30,
        threads: Sequence[str] = THREAD_MODES, image_size_imagenet: int = 224,
        files_dir: Optional[str] = None,
        log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
  """Sizes, then latency per thread mode.

  Args:
    model_names: names in `ovsw_jax.models`.
    reps: timed calls per arm, model and thread mode.
    threads: thread modes, of `THREAD_MODES`.
    image_size_imagenet: input size of the ImageNet ResNets.
    files_dir: keep the model files here (default: a temporary folder,
      deleted at the end).
    log: progress messages.

  Returns:
    The JSON-able result.
  """
  model_names = [models.canonical_name(n) for n in model_names]
  for mode in threads:
    worker_env(mode)  # Raises on an unknown mode before any work.
  if reps < 1:
    raise ValueError(f"--reps={reps} must be >= 1")
  for name in model_names:
    model_setup(name, image_size_imagenet)
  load_start = os.getloadavg()
  t0 = time.perf_counter()
  result: dict[str, Any] = {
      "models": model_names, "reps": reps, "threads": list(threads),
      "image_size_imagenet": image_size_imagenet,
      "target_speedup": TARGET_SPEEDUP, "paper": PAPER,
      "sizes": {}, "latency": {},
  }
  with tempfile.TemporaryDirectory(prefix="ovsw_deploy_") as tmp:
    folder = files_dir or tmp
    os.makedirs(folder, exist_ok=True)
    for name in model_names:
      log(f"sizes: {name}")
      result["sizes"][name] = write_files(name, folder, image_size_imagenet)
      for entry in result["sizes"][name]["files"].values():
        entry["path"] = os.path.basename(entry["path"])
    for mode in threads:
      log(f"latency: {mode}-threaded worker")
      result["latency"][mode] = run_latency(mode, folder, model_names, reps,
                                            image_size_imagenet)
  result["summary"] = summary_table(result)
  info = machine_info()
  info["loadavg_start"] = list(load_start)
  info["loadavg_end"] = list(os.getloadavg())
  info["wall_s"] = time.perf_counter() - t0
  result["machine"] = info
  return result


def summary_table(result: Mapping[str, Any]) -> dict[str, Any]:
  """Per model: MB of each file, size ratios, and speedups per mode."""
  table = {}
  for name in result["models"]:
    files = result["sizes"][name]["files"]
    row = {f"{arm}_mb": f["mb"] for arm, f in files.items()}
    row.update({f"size_ratio_{arm}": f["ratio_fp32_over_this"]
                for arm, f in files.items() if arm != "float32"})
    for mode, lat in result["latency"].items():
      m = lat["models"][name]
      for arm in LATENCY_ARMS:
        row[f"{mode}_{arm}_ms"] = m[arm]["median_ms"]
      for key in ("speedup", "speedup_folded", "speedup_vs_real",
                  "speedup_folded_vs_real"):
        row[f"{mode}_{key}"] = m[key]
      row[f"{mode}_target_met"] = bool(m["speedup"] >= TARGET_SPEEDUP)
    table[name] = row
  return table


def plot(result: Mapping[str, Any], path: str) -> None:
  """Bar charts: file sizes (MB, log scale) and speedups per mode."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  names = list(result["models"])
  x = np.arange(len(names))
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
  arms = [("float32", "float32 .npz"), ("packed_fp32", "packed, fp32 float"),
          ("packed_fp16", "packed, fp16 float")]
  width = 0.8 / len(arms)
  for i, (arm, label) in enumerate(arms):
    files = [result["sizes"][n]["files"][arm] for n in names]
    bars = ax1.bar(x + (i - 1) * width, [f["mb"] for f in files], width,
                   label=label)
    if arm != "float32":
      ax1.bar_label(bars, [f"{f['ratio_fp32_over_this']:.1f}x"
                           for f in files], fontsize=7)
  ax1.set_yscale("log")
  ax1.set_ylabel("file size (MB)")
  ax1.set_title("File size (labels: float32 / packed)")
  ax1.set_xticks(x, names, rotation=20, fontsize=8)
  ax1.legend(fontsize=8, loc="upper left")

  series = []
  for mode in result["latency"]:
    series.append((f"{mode}-threaded, vs float32 BNN", "speedup", mode))
    series.append((f"{mode}-threaded, vs real-valued", "speedup_vs_real",
                   mode))
  width = 0.8 / max(len(series), 1)
  for i, (label, key, mode) in enumerate(series):
    s = [result["latency"][mode]["models"][n][key] for n in names]
    bars = ax2.bar(x + (i - (len(series) - 1) / 2) * width, s, width,
                   label=label, hatch="//" if "real" in key else None)
    ax2.bar_label(bars, [f"{v:.2f}" for v in s], fontsize=7)
  ax2.axhline(TARGET_SPEEDUP, color="k", ls="--", lw=1,
              label=f"target {TARGET_SPEEDUP}x (paper, ARM)")
  ax2.axhline(1.0, color="gray", lw=0.8)
  ax2.set_yscale("log")
  ax2.set_ylim(top=ax2.get_ylim()[1] * 3)  # Room for the legend.
  ax2.set_ylabel("float32 median / packed median")
  ax2.set_title("Batch-1 latency speedup, packed vs float32")
  ax2.set_xticks(x, names, rotation=20, fontsize=8)
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default=",".join(models.list_models()),
                      help="comma list of model names")
  parser.add_argument("--reps", type=int, default=30,
                      help="timed calls per arm and model")
  parser.add_argument("--threads", default=",".join(THREAD_MODES),
                      help="comma list of: single, multi")
  parser.add_argument("--image_size_imagenet", type=int, default=224,
                      help="input size of the ImageNet ResNets")
  parser.add_argument("--out", default=None,
                      help="write the JSON here, and a PNG next to it")
  parser.add_argument("--files_dir", default=None,
                      help="keep the written model files in this folder")
  # A thread mode's worker process (see `run_latency`).
  parser.add_argument("--_latency_worker", default=None,
                      help=argparse.SUPPRESS)
  parser.add_argument("--_folder", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--_pin_cpu", type=int, default=None,
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  model_names = parse_list(args.models, models.list_models(), "models")
  worker = vars(args)  # The hidden options' names start with '_'.
  if worker["_latency_worker"]:
    out = latency_worker(worker["_latency_worker"], worker["_folder"],
                         model_names, args.reps, args.image_size_imagenet,
                         worker["_pin_cpu"])
    print(json.dumps(out))
    return out
  result = run(model_names, reps=args.reps,
               threads=parse_list(args.threads, THREAD_MODES, "threads"),
               image_size_imagenet=args.image_size_imagenet,
               files_dir=args.files_dir,
               log=lambda s: print(s, file=sys.stderr, flush=True))
  print(json.dumps(result))
  if args.out:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, str(out.with_suffix(".png")))
  return result


if __name__ == "__main__":
  main()
