"""benchmarks/deploy.py at tiny sizes: file sizes, latency arithmetic, modes."""

import json
import os
import statistics

import numpy as np
import pytest

from benchmarks import deploy
from benchmarks.lib import deploy_files
from benchmarks.lib import deploy_latency
from ovsw_jax.deploy import native


@pytest.fixture(scope="module")
def bench():
  return deploy


MODELS = ("cresnet20_1w1a", "resnet18_1w1a")


@pytest.fixture(scope="module")
def run_result(bench, tmp_path_factory):
  """main() for cResNet20 and ResNet-18 (at 32x32), both thread modes."""
  folder = tmp_path_factory.mktemp("deploy")
  out = folder / "deploy.json"
  result = bench.main([f"--models={','.join(MODELS)}", "--reps=2",
                       "--threads=single,multi", "--image_size_imagenet=32",
                       f"--files_dir={folder / 'files'}", f"--out={out}"])
  return result, folder, out


def test_sizes_are_the_files_and_consistent(bench, run_result):
  from ovsw_jax.deploy import format as packed_format  # pylint: disable=g-import-not-at-top
  result, folder, _ = run_result
  assert result["models"] == list(MODELS)
  assert set(result["sizes"]) == set(MODELS)
  for name in MODELS:
    s = result["sizes"][name]
    files = s["files"]
    assert set(files) == {"float32", *deploy_files.PACKED_FILES}
    for arm, f in files.items():
      assert f["bytes"] == os.path.getsize(folder / "files" / f["path"])
      assert f["mb"] == pytest.approx(f["bytes"] / 1e6)
      assert f["ratio_fp32_over_this"] == pytest.approx(
          files["float32"]["bytes"] / f["bytes"])
    # The float32 file holds every float value in 4 bytes (plus headers).
    assert s["float32_bytes_formula"] == 4 * s["num_float_values"]
    assert files["float32"]["bytes"] >= s["float32_bytes_formula"]
    with np.load(folder / "files" / files["float32"]["path"]) as f:
      assert sum(f[k].size for k in f.files) == s["num_float_values"]
      assert all(f[k].dtype == np.float32 for k in f.files)
    assert (files["packed_fp16"]["bytes"] <= files["packed_fp32"]["bytes"]
            < files["float32"]["bytes"])
    for arm, (_, dtype, fold) in deploy_files.PACKED_FILES.items():
      header = packed_format.load(folder / "files" / files[arm]["path"]).header
      assert (header["model"], header["float_dtype"],
              header["fold_batchnorm"]) == (name, dtype, fold)
  # ResNet-18's float weights (stem, 1x1 downsamples, fc) are large: float16
  # takes off a good part; it is over 10x smaller than float32 either way.
  r18 = result["sizes"]["resnet18_1w1a"]["files"]
  assert r18["packed_fp16"]["bytes"] < 0.8 * r18["packed_fp32"]["bytes"]
  assert r18["packed_fp32"]["ratio_fp32_over_this"] > 10
  assert result["paper"]["resnet18_1w1a"]["size_ratio"] == 16.64


def test_latency_arithmetic_and_agreement(bench, run_result):
  result, _, _ = run_result
  assert set(result["latency"]) == {"single", "multi"}
  for mode, lat in result["latency"].items():
    assert set(lat["models"]) == set(MODELS)
    for name in MODELS:
      m = lat["models"][name]
      for arm in deploy_latency.LATENCY_ARMS:
        a = m[arm]
        assert len(a["times_ms"]) == a["reps"] == 2
        assert a["median_ms"] == pytest.approx(
            statistics.median(a["times_ms"]))
        assert a["p90_ms"] == pytest.approx(np.percentile(a["times_ms"], 90))
        assert 0 < a["cpu_utilization"] < 2.5
      float_ms, real_ms = (m["float32"]["median_ms"],
                           m["float32_real"]["median_ms"])
      assert m["speedup"] == pytest.approx(
          float_ms / m["packed"]["median_ms"])
      assert m["speedup_folded"] == pytest.approx(
          float_ms / m["packed_folded"]["median_ms"])
      assert m["speedup_vs_real"] == pytest.approx(
          real_ms / m["packed"]["median_ms"])
      assert m["speedup_jax_vs_real"] == pytest.approx(
          real_ms / m["packed_jax"]["median_ms"])
      assert m["native_over_jax"] == pytest.approx(
          m["packed_jax"]["median_ms"] / m["packed"]["median_ms"])
      # The native and JAX kernels give the same logits.
      assert m["backend"] == ("native" if native.available() else "jax")
      assert m["packed_equals_packed_jax"]
      # Unfolded, the packed file computes the float eval's arithmetic.
      assert m["packed"]["rel_logit_diff_vs_float32"] < 1e-5
      assert m["packed"]["same_argmax_as_float32"]
      row = result["summary"][name]
      assert row[f"{mode}_speedup"] == m["speedup"]
      assert row[f"{mode}_target_met"] == (m["speedup"] >= 3.4)
      assert row[f"{mode}_vs_real_target_met"] == (m["speedup_vs_real"] >= 4)
      # Batch-8 throughput: images/s from the median call.
      tp = lat["throughput"][name]
      assert tp["batch"] == 8
      for arm in deploy_latency.THROUGHPUT_ARMS:
        assert tp[arm]["images_per_s"] == pytest.approx(
            8e3 / tp[arm]["median_ms"])
        assert row[f"{mode}_batch8_{arm}_images_per_s"] == (
            tp[arm]["images_per_s"])
      assert tp["speedup_vs_real"] == pytest.approx(
          tp["packed"]["images_per_s"] / tp["float32_real"]["images_per_s"])
      assert row["packed_fp16_mb"] == (
          result["sizes"][name]["files"]["packed_fp16"]["mb"])


def test_thread_modes_ran_as_asked(bench, run_result):
  result, _, _ = run_result
  single = result["latency"]["single"]["process"]
  multi = result["latency"]["multi"]["process"]
  assert deploy_latency.SINGLE_THREAD_XLA_FLAGS in single["xla_flags"]
  assert deploy_latency.SINGLE_THREAD_XLA_FLAGS not in multi["xla_flags"]
  assert len(single["cpu_affinity"]) == 1
  assert len(multi["cpu_affinity"]) == len(os.sched_getaffinity(0))
  # Pinned to one core: it cannot use more (small slack for timer rounding).
  assert result["latency"]["single"]["cpu_utilization"] <= 1.05


def test_outputs_written(run_result):
  result, _, out = run_result
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  png = out.with_suffix(".png")
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_time_interleaved_alternates():
  calls = []
  arms = {k: (lambda k=k: calls.append(k)) for k in "ab"}
  out = deploy_latency.time_interleaved(arms, reps=2, warmup=1)
  assert calls == ["a", "b", "a", "b", "a", "b"]
  assert all(len(o["times_s"]) == 2 for o in out.values())
  with pytest.raises(ValueError, match="warmup=0"):
    deploy_latency.time_interleaved(arms, reps=1, warmup=0)


def test_bad_options_are_named(bench):
  with pytest.raises(ValueError, match="nope"):
    bench.main(["--models=cresnet20_1w1a,nope"])
  with pytest.raises(ValueError, match="'quad'"):
    bench.run(["cresnet20_1w1a"], threads=["single", "quad"])
  with pytest.raises(ValueError, match="reps=0"):
    bench.run(["cresnet20_1w1a"], reps=0)
  with pytest.raises(ValueError, match="image_size_imagenet=16"):
    bench.run(["resnet18_1w1a"], image_size_imagenet=16)
