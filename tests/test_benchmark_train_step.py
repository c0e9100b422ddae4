"""benchmarks/train_step.py (`benchmarks.lib.step_comparison`), its timer
and the PyTorch step (`benchmarks.lib.torch_step`) at tiny sizes."""

import json
import math
import os
from pathlib import Path
import statistics
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from benchmarks.lib import arms
from benchmarks.lib import step_comparison
from benchmarks.lib import timing

ROOT = Path(__file__).resolve().parents[1]


def test_summarize_and_ratios_arithmetic():
  times = [0.4, 0.1, 0.3, 0.2, 1.0]
  s = timing.summarize(times, batch_size=8)
  assert s["median_step_s"] == pytest.approx(0.3)
  assert s["images_per_sec"] == pytest.approx(8 / 0.3)
  assert s["mean_step_s"] == pytest.approx(0.4)
  assert s["p90_step_s"] == pytest.approx(np.percentile(times, 90))
  assert (s["min_step_s"], s["max_step_s"], s["steps"]) == (0.1, 1.0, 5)

  def arm(step_s):
    return {"median_step_s": step_s, "images_per_sec": 128 / step_s}

  result = {"ours": {"ovsw": arm(0.51), "vanilla": arm(0.5)},
            "torch": {"ovsw": arm(0.4), "vanilla": arm(0.35)}}
  r = step_comparison.ratios(result, "ovsw")
  assert r == pytest.approx({
      "ours_ovsw_over_vanilla_step_time": 0.51 / 0.5,
      "torch_ovsw_over_vanilla_step_time": 0.4 / 0.35,
      "ours_over_torch_images_per_sec_ovsw": 0.4 / 0.51,
      "ours_over_torch_images_per_sec_vanilla": 0.35 / 0.5,
  })
  del result["torch"]
  assert step_comparison.ratios(result, "ovsw") == pytest.approx(
      {"ours_ovsw_over_vanilla_step_time": 0.51 / 0.5})


def test_time_interleaved_alternates_blocks():
  calls = []
  fns = {name: (lambda name=name: calls.append(name)) for name in "ab"}
  out = timing.time_interleaved(fns, steps=3, warmup=1, block=2)
  # Warmups first, then rounds of up to `block` steps per arm.
  assert calls == ["a", "b", "a", "a", "b", "b", "a", "b"]
  assert len(out.pop("_load")) == 2  # one load sample per round
  for o in out.values():
    assert len(o["times"]) == 3 and o["first_step_s"] is not None
  with pytest.raises(ValueError, match="block=0"):
    timing.time_interleaved(fns, steps=1, warmup=0, block=0)


def torch_functional_like_ours():
  """torch.nn.functional, with F.hardtanh's gradient at exactly +-1 ours.

  torch's is 0 at the bounds; ``jnp.clip`` (ovsw_jax.models.blocks.hardtanh)
  splits it, 0.5. The bounds are hit exactly at init: a BatchNorm output of
  exactly 0 (binary convs' outputs are discrete) added to a saturated
  residual. The PyTorch step must use ours to follow ours step for step.
  """
  import torch  # pylint: disable=g-import-not-at-top
  hardtanh = _hardtanh_like_ours(torch)

  class Functional:

    def __getattr__(self, name):
      return getattr(torch.nn.functional, name)

  functional = Functional()
  functional.hardtanh = hardtanh
  return functional


def _hardtanh_like_ours(torch):
  """F.hardtanh whose gradient at exactly +-1 is ovsw_jax's there."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ovsw_jax.models import blocks  # pylint: disable=g-import-not-at-top
  edge = [float(g) for g in jax.grad(lambda x: blocks.hardtanh(x).sum())(
      jnp.array([-1.0, 1.0]))]

  class Hardtanh(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x):
      ctx.save_for_backward(x)
      return x.clamp(-1, 1)

    @staticmethod
    def backward(ctx, grad):
      x, = ctx.saved_tensors
      slope = ((x > -1) & (x < 1)).to(grad.dtype)
      slope = slope + edge[0] * (x == -1) + edge[1] * (x == 1)
      return grad * slope

  return lambda x, *args, **kwargs: Hardtanh.apply(x)


# Run in a subprocess (from the repo root, which `python -c` puts on its
# path): XLA's backend optimisation off halves the compile time (numerics and
# the JSON's fields are what is checked here, not speed).
_RUN = """
import json
from benchmarks.lib import step_comparison
from benchmarks.lib import torch_reference
from tests import test_benchmark_train_step as t
torch_reference.F = t.torch_functional_like_ours()
r = step_comparison.run(batch_size=8, image_size=16, steps=2, warmup=1,
                        block=1, compare_torch=True, torch_sign="ovsw_jax",
                        breakdown_reps=1, profile_steps=1)
print(json.dumps(r))
"""


def test_run_follows_ours_in_pytorch_with_schema_and_breakdown():
  """The whole run at a tiny size: full cResNet20, both methods, PyTorch.

  PyTorch starts from our weights (converted) and binarizes 0 to +1 as we do
  (torch_sign='ovsw_jax'), with our hardtanh gradient at the bounds; then
  the losses of steps 1 and 3 agree for both methods: the first checks the
  forward, the third each method's two updates (AGS, SAD, weight decay,
  momentum) in both implementations.
  """
  pytest.importorskip(
      "torch", reason="install torch (CPU) for the PyTorch comparison")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0")
  proc = subprocess.run(
      [sys.executable, "-c", textwrap.dedent(_RUN)],
      env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
      check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["data"] == arms.DATA_NOTE and "not measured" in r["data"]
  # The CPU fast path, and the same step with XLA's defaults beside it.
  assert set(r["ours"]) == {"ovsw", "vanilla", "ovsw_portable"}
  from ovsw_jax.training import cpu_fast_path  # pylint: disable=g-import-not-at-top
  fast = r["cpu_fast_path"]
  assert fast["compiler_options"] == cpu_fast_path.CPU_COMPILER_OPTIONS
  assert fast["images_per_sec_over_portable"] == pytest.approx(
      r["ours"]["ovsw"]["images_per_sec"]
      / r["ours"]["ovsw_portable"]["images_per_sec"])
  portable = r["ours"]["ovsw_portable"]
  assert portable["first_loss"] == pytest.approx(
      r["ours"]["ovsw"]["first_loss"], rel=1e-6)
  assert portable["last_loss"] == pytest.approx(
      r["ours"]["ovsw"]["last_loss"], rel=1e-5)
  for m in ("ovsw", "vanilla"):
    ours, ref = r["ours"][m], r["torch"][m]
    assert ours["first_loss"] == pytest.approx(ref["first_loss"], rel=1e-5)
    assert ours["last_loss"] == pytest.approx(ref["last_loss"], rel=1e-5)
    for arm in (ours, ref):
      assert math.isfinite(arm["first_loss"])
      assert len(arm["times_s"]) == 2 and arm["cpu_utilization"] > 0
      assert arm["median_step_s"] == pytest.approx(
          statistics.median(arm["times_s"]))
      assert arm["images_per_sec"] == pytest.approx(
          8 / arm["median_step_s"])
  assert r["first_loss_spread"] < 1e-5
  # AGS/SAD change the update: the methods part ways after the first step.
  assert abs(r["ours"]["ovsw"]["last_loss"] -
             r["ours"]["vanilla"]["last_loss"]) > 1e-3

  ratios = r["ratios"]
  assert ratios["ours_ovsw_over_vanilla_step_time"] == pytest.approx(
      r["ours"]["ovsw"]["median_step_s"] /
      r["ours"]["vanilla"]["median_step_s"])
  for m in ("ovsw", "vanilla"):
    assert ratios[f"ours_over_torch_images_per_sec_{m}"] == pytest.approx(
        r["ours"][m]["images_per_sec"] / r["torch"][m]["images_per_sec"])
  assert r["targets"]["ovsw_overhead"] == pytest.approx(
      ratios["ours_ovsw_over_vanilla_step_time"] - 1)
  assert r["targets"]["ours_over_torch"] == \
      ratios["ours_over_torch_images_per_sec_ovsw"]
  assert set(r["torch"]) == {"ovsw", "vanilla"}
  phases = r["torch_phases_median_s"]
  assert set(phases["ovsw"]) == {"forward", "backward", "hooks", "optimizer"}
  assert phases["ovsw"]["hooks"] > phases["vanilla"]["hooks"]

  b = r["breakdown"]
  for key in ("forward_s", "forward_backward_s", "optimizer_update_ovsw_s",
              "optimizer_update_vanilla_s"):
    assert b[key] > 0
  assert b["backward_s"] == pytest.approx(
      b["forward_backward_s"] - b["forward_s"])
  assert b["full_step_s"]["ovsw"] == r["ours"]["ovsw"]["median_step_s"]
  convs = b["binary_convs"]  # per cResNet20 stage shape at 16x16 inputs
  ops = ("forward", "input_grad", "kernel_grad")
  shapes = ("16x16x16", "8x8x32", "4x4x64")
  for shape in shapes:
    assert all(convs[shape][f"{p}{op}_s"] > 0
               for p in ("", "torch_", "portable_") for op in ops)
  for side, p in (("ours", ""), ("torch", "torch_")):
    assert convs["all_binary_convs_per_step_s"][side] == pytest.approx(
        6 * sum(convs[shape][f"{p}{op}_s"] for shape in shapes for op in ops))
  # The per-op profile of both compiled variants of the ovsw step.
  assert set(r["profile"]) == {"ovsw", "ovsw_portable"}
  for prof in r["profile"].values():
    cats = prof["categories_s"]
    for kind in ("forward", "input gradient", "kernel gradient"):
      assert cats[f"convolution: {kind}"] > 0, cats
    assert prof["op_time_per_step_s"] == pytest.approx(sum(cats.values()))
    assert sum(prof["categories_share"].values()) == pytest.approx(1.0)
    assert prof["wall_per_step_s"] > 0 and prof["steps"] == 1
    assert prof["slowest_ops"][0]["op_time_s"] == max(
        o["op_time_s"] for o in prof["slowest_ops"])
  m = r["machine"]
  assert len(m["loadavg_start"]) == 3 and len(m["loadavg_end"]) == 3
  assert m["cpu_count"] >= 1 and m["jax"] and m["torch_num_threads"] == 2


def test_run_rejects_bad_settings():
  run = step_comparison.run
  with pytest.raises(ValueError, match="warmup=0"):
    run(warmup=0)
  with pytest.raises(ValueError, match="compare_torch"):
    run(compare_torch=True, model_options={"stage_sizes": (1, 1, 1)})
  with pytest.raises(ValueError, match="unknown method part"):
    run(method="nope")


def test_torch_step_rejects_unknown_parts():
  pytest.importorskip("torch", reason="install torch (CPU)")
  from benchmarks.lib import torch_step  # pylint: disable=g-import-not-at-top
  assert torch_step.method_flags(["ags", "sad"]) == (True, True)
  assert torch_step.method_flags([]) == (False, False)
  with pytest.raises(ValueError, match="'sgd'"):
    torch_step.method_flags(["sgd"])
  with pytest.raises(ValueError, match="sign='x'"):
    torch_step.build_model("cresnet20_1w1a", 10, sign="x")
