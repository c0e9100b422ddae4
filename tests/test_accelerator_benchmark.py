"""Tests of `python -m benchmarks.accelerator` and its parts."""

import json
import math
import statistics
import subprocess
import sys
import time

import pytest

from benchmarks.lib import accelerator_step
from benchmarks.lib import budget as budget_lib
from benchmarks.lib import device_info
from benchmarks.lib import time_to_accuracy
from conftest import require_cifar10
from test_train import REPO, compile_cache, subprocess_env  # pylint: disable=unused-import


def test_budget_leaves_later_sections_their_share():
  budget = budget_lib.Budget(100.0, {"a": 0.3, "b": 0.2, "c": 0.5},
                             start=time.perf_counter() - 10.0)
  # 90 s left; b and c still need 70 s, c 50 s, after c nothing.
  assert budget.section_seconds("a") == pytest.approx(20.0, abs=0.5)
  assert budget.section_seconds("b") == pytest.approx(40.0, abs=0.5)
  assert budget.section_seconds("c") == pytest.approx(90.0, abs=0.5)
  budget.record("a", 12.5)
  summary = budget.summary()
  assert summary["a_s"] == 12.5 and summary["over_budget_s"] == 0.0
  late = budget_lib.Budget(5.0, {"a": 1.0}, start=time.perf_counter() - 8)
  assert late.summary()["over_budget_s"] == pytest.approx(3.0, abs=0.5)
  with pytest.raises(ValueError, match="add up to 1"):
    budget_lib.Budget(10.0, {"a": 0.5})
  with pytest.raises(ValueError, match="budget_s=0"):
    budget_lib.Budget(0, {"a": 1.0})


def test_interleaved_timing_stops_at_the_deadline():
  from benchmarks.lib import timing  # pylint: disable=g-import-not-at-top
  calls = []
  arms = {name: (lambda name=name: calls.append(name)) for name in "ab"}
  timed = timing.time_interleaved(arms, steps=10, warmup=1, block=2,
                                  deadline=time.perf_counter() - 1)
  # Past the deadline: rounds of 2 until every arm has 3 timed calls.
  assert [len(timed[k]["times"]) for k in "ab"] == [4, 4]
  assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 2
  full = timing.time_interleaved(arms, steps=5, warmup=0, block=2)
  assert [len(full[k]["times"]) for k in "ab"] == [5, 5]


def test_schedule_epochs_and_names():
  # 5 of 600 warmup epochs, scaled; none for a single epoch.
  assert [time_to_accuracy.warmup_epochs(e) for e in (1, 2, 60, 180, 600)] \
      == [0, 1, 1, 2, 5]
  assert time_to_accuracy.plan_epochs(100.0, {"ours": 10.0, "torch": 15.0},
                                      None) == 4
  assert time_to_accuracy.plan_epochs(100.0, {"ours": 10.0}, 3) == 3
  assert time_to_accuracy.plan_epochs(5.0, {"ours": 10.0}, None) == 1

  class Device:
    def __init__(self, platform, kind):
      self.platform, self.device_kind = platform, kind

  assert device_info.device_slug(Device("gpu", "NVIDIA H200")) == \
      "nvidia-h200"
  assert device_info.device_slug(Device("tpu", "TPU v5 lite")) == \
      "tpu-v5-lite"
  assert device_info.device_slug(Device("cpu", "cpu")) == "cpu"
  entries = {"ours/float32": {"images_per_sec": 300.0},
             "ours/bfloat16": {"images_per_sec": 600.0},
             "torch/float32": {"images_per_sec": 100.0},
             "torch/float16_amp": {"images_per_sec": 200.0}}
  assert accelerator_step.ratios(entries) == {
      "ours_float32_over_torch_float32": 3.0,
      "ours_float32_over_torch_float16_amp": 1.5,
      "ours_bfloat16_over_torch_float32": 6.0,
      "ours_bfloat16_over_torch_float16_amp": 3.0}
  with pytest.raises(ValueError, match=r"\['width'\] have no PyTorch twin"):
    accelerator_step.torch_model_kwargs({"width": 2})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, compile_cache):
  data_dir = require_cifar10()
  out = tmp_path_factory.mktemp("accelerator")
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.accelerator", "--budget_s=60",
       "--size=tiny", f"--data_dir={data_dir}", f"--out_dir={out}",
       "--max_epochs=2", "--torch_threads=1"],
      cwd=REPO, env=subprocess_env(compile_cache), capture_output=True,
      text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads((out / "cpu.json").read_text()), out


def test_tiny_run_writes_every_part(tiny_run):
  result, out = tiny_run
  assert (out / "cpu.png").stat().st_size > 10_000
  assert result["device"]["slug"] == "cpu"
  assert result["device"]["jax"]["backend"] == "cpu"
  assert result["versions"]["jax"] and result["versions"]["torch"]
  assert set(result["clocks"]) == {"start", "end"}
  assert result["clocks"]["start"]["gpus"] is None  # no nvidia-smi here
  assert result["config"]["size"] == "tiny"
  # The command that makes the file again, with every flag it was given.
  assert result["command"].startswith("python -m benchmarks.accelerator ")
  assert "--budget_s=60" in result["command"]
  assert "--size=tiny" in result["command"]
  assert len(result["git_commit"].split("+")[0]) == 40
  budget = result["budget"]
  assert budget["budget_s"] == 60
  assert budget["used_s"] >= sum(budget[f"{k}_s"] for k in (
      "step_speed", "loop", "time_to_accuracy"))
  assert budget["over_budget_s"] == max(0.0, budget["used_s"] - 60)
  assert result["machine"]["cpu_model"]


def test_tiny_step_speed_arms_and_ratios(tiny_run):
  step = tiny_run[0]["step_speed"]
  assert "16" in step["batch_sizes"]  # the first batch size always runs
  assert set(step["batch_sizes"]) | set(step["skipped"]) == {"16", "32"}
  for size, entry in step["batch_sizes"].items():
    arms = entry["arms"]
    # No CUDA here: PyTorch runs in float32 only.
    assert set(arms) == {"ours/float32", "ours/bfloat16", "torch/float32"}
    for arm in arms.values():
      assert len(arm["times_s"]) == entry["steps_per_arm"] >= 3
      assert arm["median_step_s"] == statistics.median(arm["times_s"])
      assert arm["images_per_sec"] == pytest.approx(
          int(size) / arm["median_step_s"])
    assert entry["ratios"]["ours_bfloat16_over_torch_float32"] == \
        pytest.approx(arms["ours/bfloat16"]["images_per_sec"]
                      / arms["torch/float32"]["images_per_sec"])


def test_tiny_loop_input_shares(tiny_run):
  loop = tiny_run[0]["loop"]
  rounds = loop["rounds"]
  assert loop["batch_size"] == 16 and len(rounds) >= 1
  median = lambda values: statistics.median(list(values))
  for r in rounds:
    for arm in ("host", "device"):
      windows = r[arm]["windows_images_per_sec"]
      assert len(windows) >= 3
      assert r[arm]["images_per_sec"] == pytest.approx(
          len(windows) / sum(1 / w for w in windows))
    alone = r["step_alone"]
    assert alone["images_per_sec"] == pytest.approx(
        16 / alone["median_step_s"])
  assert loop["step_alone"]["images_per_sec"] == pytest.approx(
      median(r["step_alone"]["images_per_sec"] for r in rounds))
  for arm in ("host", "device"):
    entry = loop["arms"][arm]
    assert entry["input_share_of_epoch"] == pytest.approx(median(
        1 - r[arm]["images_per_sec"] / r["step_alone"]["images_per_sec"]
        for r in rounds))
    assert entry["epoch_s"] == pytest.approx(50_000 / entry["images_per_sec"])
  assert loop["device_over_host_images_per_sec"] == pytest.approx(median(
      r["device"]["images_per_sec"] / r["host"]["images_per_sec"]
      for r in rounds))
  for arm in ("host", "device"):
    alone = loop["input_alone"][arm]
    assert alone["batches"] >= 3
    assert alone["images_per_sec"] == pytest.approx(
        1e3 * 16 / alone["batch_ms"])


def test_tiny_time_to_accuracy(tiny_run):
  tta = tiny_run[0]["time_to_accuracy"]
  epochs = tta["epochs"]
  assert 1 <= epochs <= 2 and tta["steps_per_epoch"] == 256 // 16
  assert tta["warmup_epochs"] == time_to_accuracy.warmup_epochs(epochs)
  assert tta["torch_precision"] == "float32"
  assert tta["ours_input_on_device"] is False  # 'auto' on a CPU
  for side in ("ours", "torch"):
    history = tta[side]["history"]
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    for h in history:
      assert h["eval_count"] == 128  # every test image of the subset, once
      assert 0 <= h["eval_top1"] <= 1 and math.isfinite(h["train_loss"])
    later = history[1:] or history
    train = statistics.median(h["train_s"] for h in later)
    ev = statistics.median(h["eval_s"] for h in later)
    # Full epochs: 50,000 / 256 training and 10,000 / 128 test images.
    full = train * 50_000 / 256 + ev * 10_000 / 128
    assert tta[side]["full_epoch_s"] == pytest.approx(full)
    assert tta[side]["projected_600_epochs_hours"] == pytest.approx(
        600 * full / 3600)
