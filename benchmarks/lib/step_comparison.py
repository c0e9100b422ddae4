"""The train-step comparison: our step for a method and for vanilla (and the
reference's step in PyTorch), interleaved on one batch; its JSON result.

`run` is what `python -m benchmarks.train_step` reports (see its module
docstring for the arms and the fields); `python -m benchmarks.throughput`
runs it once per batch size.
"""

from __future__ import annotations

import os
import statistics
from typing import Any, Callable, Mapping, Optional

import jax.numpy as jnp
import ml_collections

from benchmarks.lib import arms as arms_lib
from benchmarks.lib import breakdown as breakdown_lib
from benchmarks.lib import machine
from benchmarks.lib import profiling
from benchmarks.lib import timing
from ovsw_jax import models
from ovsw_jax.training import cpu_fast_path
from ovsw_jax.training import experiment as experiment_lib
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import methods as methods_lib

# What the issue asks of the step (reported, not enforced).
TARGET_OURS_OVER_TORCH = 1.5      # images/s, ours / PyTorch's, with OvSW
TARGET_OVSW_OVERHEAD = 0.02       # step time, OvSW / vanilla - 1
# config.start, by whether the arms start from the PyTorch model.
_START = {True: "weights converted from the PyTorch model",
          False: "the model's init"}
TORCH_NOTE = (
    "eager float32, torch.set_num_threads({threads}); AGS/SAD as per-layer "
    "Python loops after backward (benchmarks/lib/torch_step.py); phases: "
    "forward (+loss), backward (+zero_grad), hooks (AGS/SAD), optimizer (SGD "
    "step + top-1/5)")
FIRST_LOSS_NOTE = (
    "every arm starts from the same weights and batch, so their first "
    "losses agree, unless rounding flips the sign of a value that is 0 in "
    "exact arithmetic (binary convs' outputs are discrete, so BatchNorm "
    "can output exact zeros)")
TORCH_SIGN_NOTE = (
    "; or where an activation is exactly 0, which torch.sign maps to 0 "
    "and ovsw_jax to +1 (--torch_sign=ovsw_jax makes that agree)")


def ratios(result: Mapping[str, Any], method: str) -> dict[str, float]:
  """The step-time and images/s ratios between the arms of ``result``."""
  ours = result["ours"]
  out = {f"ours_{method}_over_vanilla_step_time":
         ours[method]["median_step_s"] / ours["vanilla"]["median_step_s"]}
  if "torch" in result:
    torch_ = result["torch"]
    out[f"torch_{method}_over_vanilla_step_time"] = (
        torch_[method]["median_step_s"] / torch_["vanilla"]["median_step_s"])
    for arm in (method, "vanilla"):
      out[f"ours_over_torch_images_per_sec_{arm}"] = (
          ours[arm]["images_per_sec"] / torch_[arm]["images_per_sec"])
  return out


def targets(result: Mapping[str, Any], method: str, compare_torch: bool
            ) -> dict[str, Any]:
  """The issue's targets for ``method``, and whether ``result`` meets them."""
  overhead = result["ratios"][f"ours_{method}_over_vanilla_step_time"] - 1
  out = {f"{method}_overhead_max": TARGET_OVSW_OVERHEAD,
         f"{method}_overhead": overhead,
         f"{method}_overhead_met": bool(overhead <= TARGET_OVSW_OVERHEAD)}
  if compare_torch:
    speedup = result["ratios"][f"ours_over_torch_images_per_sec_{method}"]
    out.update({"ours_over_torch_min": TARGET_OURS_OVER_TORCH,
                "ours_over_torch": speedup,
                "ours_over_torch_met": bool(speedup >= TARGET_OURS_OVER_TORCH)})
  return out


def _check(method: str, warmup: int, compare_torch: bool,
           model_options: Optional[Mapping[str, Any]]) -> list[str]:
  """``method``'s parts; raises on settings the comparison cannot run."""
  if warmup < 1:
    raise ValueError(f"--warmup={warmup} must be >= 1: the first step "
                     "compiles and must not be timed")
  parts = methods_lib.method_parts(method)  # Raises on an unknown method.
  if compare_torch and model_options:
    raise ValueError(
        f"model_options={dict(model_options)} cannot be used with "
        "compare_torch: the PyTorch network is the reference's, unchanged")
  return parts


def _jax_arms(configs, method, batch, mesh, variables):
  """Our arm per method, plus '<method>_portable' where the CPU fast path is
  on (the same step compiled with XLA's defaults: what the fast path is
  worth); and the fast path's compiler options (None: not on)."""
  jax_arms = {m: arms_lib.JaxArm(c, batch, mesh, variables)
              for m, c in configs.items()}
  fast_options = cpu_fast_path.compiler_options(mesh)
  if fast_options is not None:
    portable = ml_collections.ConfigDict(configs[method])
    portable.cpu_fast_path = False
    jax_arms[f"{method}_portable"] = arms_lib.JaxArm(portable, batch, mesh,
                                                     variables)
  return jax_arms, fast_options


def _arm_loss(name, jax_arms, torch_arms) -> float:
  side, m = name.split("/", 1)
  if side == "ours":
    return jax_arms[m].loss()
  return torch_arms[m].last_loss


def _recording(name, fn, torch_arms, torch_phase):
  """``fn``, plus, for a PyTorch arm, its phase times after each call."""
  side, m = name.split("/", 1)
  if side != "torch":
    return fn

  def call():
    fn()
    torch_phase[m].append(dict(torch_arms[m].step.times))
  return call


def _time_arms(jax_arms, torch_arms, steps, warmup, block, log):
  """Times all arms interleaved; returns (timed, first losses, torch phases
  per step, warmup steps first)."""
  arms: dict[str, Callable[[], Any]] = {
      f"ours/{m}": arm for m, arm in jax_arms.items()}
  arms.update({f"torch/{m}": fn for m, fn in torch_arms.items()})
  first_losses: dict[str, float] = {}
  torch_phase: dict[str, list[dict[str, float]]] = {m: [] for m in torch_arms}

  def on_warmup(name, i):
    if i == 0:
      first_losses[name] = _arm_loss(name, jax_arms, torch_arms)
      log(f"{name}: first step done, loss {first_losses[name]:.6f}")

  log(f"timing {list(arms)}: {warmup} warmup + {steps} steps each, blocks of "
      f"{block}")
  timed = timing.time_interleaved(
      {k: _recording(k, fn, torch_arms, torch_phase)
       for k, fn in arms.items()}, steps, warmup, block, on_warmup)
  return timed, first_losses, torch_phase


def _arm_entries(timed, first_losses, jax_arms, torch_arms, batch_size):
  """'ours' and 'torch': per method, its step-time summary and losses."""
  out: dict[str, Any] = {}
  for side in ("ours", "torch"):
    names = [k for k in timed if k.startswith(side + "/")]
    if not names:
      continue
    out[side] = {}
    for k in names:
      entry = timing.summarize(timed[k]["times"], batch_size)
      entry["cpu_utilization"] = timed[k]["cpu_utilization"]
      entry["first_step_s"] = timed[k]["first_step_s"]
      entry["first_loss"] = first_losses[k]
      entry["last_loss"] = _arm_loss(k, jax_arms, torch_arms)
      entry["times_s"] = timed[k]["times"]
      out[side][k.split("/", 1)[1]] = entry
  return out


def _torch_entries(torch_phase, warmup, threads) -> dict[str, Any]:
  # The phases of the timed steps (the warmup ones are recorded first).
  return {
      "torch_phases_median_s": {
          m: {p: statistics.median(r[p] for r in rows[warmup:])
              for p in rows[0]}
          for m, rows in torch_phase.items()},
      "torch_note": TORCH_NOTE.format(threads=threads)}


def _breakdowns(jax_arms, methods, result, model, batch_size, image_size,
                half_precision, reps, compare_torch, fast_options):
  """`breakdown`, with the full step times and, for cResNet20, the convs."""
  out = breakdown_lib.breakdown({m: jax_arms[m] for m in methods}, reps,
                                fast_options)
  out["full_step_s"] = {m: result["ours"][m]["median_step_s"]
                        for m in methods}
  if models.canonical_name(model) == "cresnet20_1w1a":
    out["binary_convs"] = breakdown_lib.conv_breakdown(
        batch_size, image_size,
        jnp.bfloat16 if half_precision else jnp.float32, reps,
        compare_torch, fast_options)
  return out


def _timing_notes(block: int) -> dict[str, str]:
  return {"data": arms_lib.DATA_NOTE,
          "timing": ("per-step wall time to block_until_ready; arms "
                     f"interleaved in blocks of {block}; images_per_sec = "
                     "batch_size / median step time")}


def _add_ratios(result, method, fast_options, compare_torch) -> None:
  """Adds the ratios, the fast path's worth and the targets to ``result``."""
  result["ratios"] = ratios(result, method)
  result["cpu_fast_path"] = {"compiler_options": fast_options}
  if fast_options is not None:
    result["cpu_fast_path"]["images_per_sec_over_portable"] = (
        result["ours"][method]["images_per_sec"]
        / result["ours"][f"{method}_portable"]["images_per_sec"])
  if method != "vanilla":
    result["targets"] = targets(result, method, compare_torch)


def _profiles(jax_arms, steps: int) -> dict[str, Any]:
  """`profile_step` of every arm but vanilla's."""
  return {m: profiling.profile_step(arm, steps)
          for m, arm in jax_arms.items() if m != "vanilla"}


def _with_load(info, load_start, load_samples) -> dict[str, Any]:
  """The machine entry: ``info`` and the load averages over the run."""
  return {**info, "loadavg_start": list(load_start),
          "loadavg_end": list(os.getloadavg()),
          "loadavg_1min_per_round": load_samples}


def run(model: str = "cresnet20_1w1a", method: str = "ovsw",
        batch_size: int = 128, image_size: int = 32, steps: int = 30,
        warmup: int = 3, block: int = 3, half_precision: bool = False,
        compare_torch: bool = False, torch_threads: int = 2,
        torch_sign: str = "reference", breakdown_reps: int = 10,
        seed: int = 0, model_options: Optional[Mapping[str, Any]] = None,
        profile_steps: int = 0,
        log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
  """Runs the comparison; returns the JSON-able result (its fields:
  benchmarks/train_step.py).

  Args:
    model, method, batch_size, image_size, half_precision, seed: the run.
    model_options: `config.model_options` (e.g. a smaller ``stage_sizes``
      for tests); not with ``compare_torch``, whose network is fixed.
    steps, warmup, block: timed steps per arm, untimed ones before (at
      least 1: it compiles), consecutive steps of one arm per turn.
    compare_torch: also time the PyTorch reference step.
    torch_threads: `torch.set_num_threads`.
    torch_sign: how PyTorch binarizes: 'reference' (torch.sign, 0 -> 0: the
      reference's cost) or 'ovsw_jax' (0 -> +1: the same values as ours).
    breakdown_reps: calls per function of the breakdown; 0: none.
    profile_steps: steps of ``method``'s step to trace for `profile_step`
      (and of its portable twin, when there is one); 0: none.
    log: progress messages.
  """
  load_start = os.getloadavg()
  parts = _check(method, warmup, compare_torch, model_options)
  methods = [method] if method == "vanilla" else [method, "vanilla"]
  mesh = mesh_lib.create_mesh()
  configs = {m: arms_lib.make_config(model, m, batch_size, image_size,
                                     half_precision, seed, model_options)
             for m in methods}
  num_classes = experiment_lib.create_experiment(
      configs[method]).info.num_classes
  batch = arms_lib.make_batch(batch_size, image_size, num_classes, seed)
  info = machine.machine_info()
  variables, torch_arms = None, {}
  if compare_torch:
    log("building the PyTorch steps")
    torch_arms, variables, torch_info = arms_lib.torch_arms(
        model, num_classes, parts, method, configs[method], batch,
        torch_threads, torch_sign, seed)
    info.update(torch_info)
  log(f"building our steps for {methods}")
  jax_arms, fast_options = _jax_arms(configs, method, batch, mesh, variables)
  timed, first_losses, torch_phase = _time_arms(jax_arms, torch_arms, steps,
                                                warmup, block, log)
  load_samples = timed.pop("_load")

  result: dict[str, Any] = {
      "benchmark": "train_step",
      "config": {"model": model, "method": method, "batch_size": batch_size,
                 "image_size": image_size, "half_precision": half_precision,
                 "steps": steps, "warmup": warmup, "block": block,
                 "seed": seed, "devices": len(mesh.devices.flat),
                 "model_options": dict(model_options or {}),
                 "start": _START[compare_torch]},
      **_timing_notes(block),
      **_arm_entries(timed, first_losses, jax_arms, torch_arms, batch_size),
  }
  if compare_torch:
    result.update(_torch_entries(torch_phase, warmup, torch_threads))
  first = list(first_losses.values())
  result["first_loss_spread"] = max(first) - min(first)
  result["first_loss_note"] = FIRST_LOSS_NOTE + (
      TORCH_SIGN_NOTE if compare_torch and torch_sign == "reference" else "")
  _add_ratios(result, method, fast_options, compare_torch)
  if breakdown_reps > 0:
    log(f"breakdown: {breakdown_reps} reps each")
    result["breakdown"] = _breakdowns(
        jax_arms, methods, result, model, batch_size, image_size,
        half_precision, breakdown_reps, compare_torch, fast_options)
  if profile_steps > 0:
    log(f"profiling {profile_steps} steps")
    result["profile"] = _profiles(jax_arms, profile_steps)
  result["machine"] = _with_load(info, load_start, load_samples)
  return result
