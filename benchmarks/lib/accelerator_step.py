"""Step speed on one device: our jitted step against the reference's PyTorch
step, interleaved, per batch size (`python -m benchmarks.accelerator`).

Arms, on one synthetic batch that stays on the device (the step alone, no
input pipeline):

- ours/float32, ours/bfloat16: `benchmarks.lib.arms.JaxArm`, the trainer's
  jitted step (``config.half_precision`` off and on);
- torch/float32: the reference's step in eager float32 on torch's device;
- torch/float16_amp (CUDA only): the same with the reference's automatic
  mixed precision, as it trains on GPUs (`torch_device.DeviceStep`).

Each arm's first steps compile (or warm cuDNN up) untimed; then the arms
take turns in blocks, so that clock and load changes hit all of them alike.
The number of timed steps is what fits the section's seconds.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax

from benchmarks.lib import arms as arms_lib
from benchmarks.lib import timing
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import methods as methods_lib

MIN_STEPS, MAX_STEPS = 3, 60
WARMUP = 2


def torch_model_kwargs(model_options: Mapping[str, Any]) -> dict[str, Any]:
  """The reference network's arguments for ``model_options`` (only
  cResNet20's stage_sizes has a PyTorch twin)."""
  unknown = sorted(set(model_options) - {"stage_sizes"})
  if unknown:
    raise ValueError(f"model_options {unknown} have no PyTorch twin; the "
                     "comparison takes only stage_sizes")
  return dict(model_options)


def _torch_arms(model, method, config, batch, model_options, seed):
  """torch/<precision> arms on torch's device, and that device."""
  from benchmarks.lib import torch_device  # pylint: disable=g-import-not-at-top
  dev = torch_device.device()
  images, labels = torch_device.to_torch(batch, dev)
  parts = methods_lib.method_parts(method)
  out = {}
  for precision in torch_device.precisions(dev):
    step = torch_device.make_step(
        model, 10, parts, config, precision == torch_device.AMP_FLOAT16, dev,
        seed, **torch_model_kwargs(model_options))
    out[f"torch/{precision}"] = lambda step=step: step(images, labels)
  return out, dev


def _arms(model, method, batch_size, image_size, model_options, seed,
          compare_torch):
  mesh = mesh_lib.create_mesh()
  batch = arms_lib.make_batch(batch_size, image_size, 10, seed)
  out: dict[str, Callable[[], Any]] = {}
  for name, half in (("ours/float32", False), ("ours/bfloat16", True)):
    config = arms_lib.make_config(model, method, batch_size, image_size, half,
                                  seed, model_options)
    out[name] = arms_lib.JaxArm(config, batch, mesh)
  torch_dev = None
  if compare_torch:
    torch_arms, torch_dev = _torch_arms(model, method, config, batch,
                                        model_options, seed)
    out.update(torch_arms)
  return out, torch_dev


def _entries(timed, compile_s, batch_size) -> dict[str, Any]:
  out = {}
  for name, t in timed.items():
    entry = timing.summarize(t["times"], batch_size)
    entry["first_step_s"] = compile_s[name]
    entry["times_s"] = t["times"]
    out[name] = entry
  return out


def ratios(entries: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  """images/s of each of our arms over each PyTorch arm."""
  ips = {k: v["images_per_sec"] for k, v in entries.items()}
  return {f"{o}_over_{t}".replace("/", "_"): ips[o] / ips[t]
          for o in ips if o.startswith("ours/")
          for t in ips if t.startswith("torch/")}


def one_batch_size(batch_size: int, seconds: float, *, model: str,
                   method: str, image_size: int,
                   model_options: Mapping[str, Any], seed: int,
                   compare_torch: bool, block: int,
                   log: Callable[[str], None]) -> dict[str, Any]:
  """All arms at one batch size, in ``seconds`` (compiles included)."""
  start = time.perf_counter()
  arms, torch_dev = _arms(model, method, batch_size, image_size,
                          model_options, seed, compare_torch)
  log(f"  batch {batch_size}: warming up {list(arms)}")
  first = timing.time_interleaved(arms, steps=1, warmup=WARMUP, block=1)
  first.pop("_load")
  compile_s = {k: v["first_step_s"] for k, v in first.items()}
  per_round = sum(v["times"][0] for v in first.values())
  left = seconds - (time.perf_counter() - start)
  steps = int(max(MIN_STEPS, min(MAX_STEPS, left / max(per_round, 1e-6))))
  log(f"  batch {batch_size}: {steps} timed steps per arm, blocks of "
      f"{block}")
  timed = timing.time_interleaved(arms, steps=steps, warmup=0, block=block,
                                  deadline=start + seconds)
  load = timed.pop("_load")
  entries = _entries(timed, compile_s, batch_size)
  del arms
  gc.collect()
  return {"arms": entries, "ratios": ratios(entries),
          "steps_per_arm": len(next(iter(timed.values()))["times"]),
          "loadavg_1min_per_round": load,
          "torch_device": None if torch_dev is None else str(torch_dev),
          "seconds": time.perf_counter() - start}


def step_speed(batch_sizes: Sequence[int], seconds: float,
               log: Callable[[str], None], **kwargs: Any) -> dict[str, Any]:
  """`one_batch_size` for each batch size, sharing ``seconds``.

  The first batch size always runs; a later one is skipped (and says so)
  when the last one's time, scaled by the batch, exceeds what is left.
  """
  deadline = time.perf_counter() + seconds
  out: dict[str, Any] = {"batch_sizes": {}, "skipped": {}}
  last = None
  for i, batch_size in enumerate(batch_sizes):
    left = deadline - time.perf_counter()
    if last is not None:
      needed = last["seconds"] * batch_size / last["batch_size"]
      if needed > left:
        out["skipped"][str(batch_size)] = (
            f"needs about {needed:.0f} s, {max(left, 0):.0f} s of the "
            "budget left")
        continue
    share = left / (len(batch_sizes) - i)
    last = one_batch_size(batch_size, share, log=log, **kwargs)
    last["batch_size"] = batch_size
    out["batch_sizes"][str(batch_size)] = last
  out["data"] = arms_lib.DATA_NOTE
  out["devices"] = len(jax.devices())
  return out


def ours_step_seconds(result: Mapping[str, Any], batch_size: int,
                      arm: str = "ours/float32") -> Optional[float]:
  """The median step time of ``arm`` at ``batch_size``, if measured."""
  entry = result.get("batch_sizes", {}).get(str(batch_size))
  return None if entry is None else entry["arms"][arm]["median_step_s"]
