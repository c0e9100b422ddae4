"""benchmarks/convergence.py on a tiny synthetic dataset.

One `main` run (arms vanilla and ovsw, one seed, 2 epochs of 4 steps) is
shared by the tests; the resume test trains the ovsw arm once more, stopped
after its first epoch and then resumed, and must reproduce that run exactly.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import convergence

OPTIONS = {"image_shape": [8, 8, 3], "num_classes": 10, "num_train": 128,
           "num_eval": 40}
BATCH, EPOCHS, SEED = 32, 2, 0
STEPS_PER_EPOCH = OPTIONS["num_train"] // BATCH
ARMS = ("vanilla", "ovsw")
# Values that depend on the wall clock, not on the training.
TIMING_KEYS = ("train_seconds", "images_per_sec")


@pytest.fixture(scope="module")
def bench():
  return convergence


def _config(bench, arm):
  config = bench.study_config(arm, SEED, EPOCHS, BATCH, 0.1, None, OPTIONS)
  config.dataset = "synthetic"  # As main() does.
  return config


@pytest.fixture(scope="module")
def fast_compiles(tmp_path_factory):
  """Cheaper compiles while this module runs.

  Each run compiles its init and train step anew (some 20 s on 2 cores).
  A persistent compilation cache lets the resume test's runs reuse what
  `main` compiled, and non-partitionable threefry compiles cResNet20's init
  in about a third of the time (other random values; nothing here depends on
  them).
  """
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  settings = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jax")),
              "jax_persistent_cache_min_compile_time_secs": 0.0,
              "jax_threefry_partitionable": False}
  saved = {k: getattr(jax.config, k) for k in settings}
  compilation_cache.reset_cache()
  for k, v in settings.items():
    jax.config.update(k, v)
  yield
  for k, v in saved.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def study(bench, fast_compiles, tmp_path_factory):  # pylint: disable=unused-argument
  """``(runs_dir, result returned by main, result read from --out)``."""
  root = tmp_path_factory.mktemp("convergence")
  runs_dir, out = root / "runs", root / "results" / "convergence.json"
  result = bench.main([
      f"--runs_dir={runs_dir}", f"--arms={','.join(ARMS)}", f"--seeds={SEED}",
      f"--epochs={EPOCHS}", f"--batch_size={BATCH}", "--dataset=synthetic",
      f"--dataset_options={json.dumps(OPTIONS)}", f"--out={out}"])
  return runs_dir, result, json.loads(out.read_text())


@pytest.fixture(scope="module")
def num_binary_weights(bench):
  """Sizes of all latent kernels of cResNet20 summed, from its init shapes."""
  from ovsw_jax.training import experiment  # pylint: disable=g-import-not-at-top
  model = experiment.create_experiment(_config(bench, "vanilla")).model
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0),
                         jnp.zeros((1, *OPTIONS["image_shape"])),
                         train=False))
  leaves = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
  sizes = {jax.tree_util.keystr(p): int(np.prod(x.shape)) for p, x in leaves
           if getattr(p[-1], "key", None) == "latent_kernel"}
  assert len(sizes) == 18  # cResNet20: 3 stages x 3 blocks x 2 convs.
  return sum(sizes.values())


def _without_timing(run):
  run = json.loads(json.dumps(run))
  for entry in run["history"] + [run["final"]]:
    for k in TIMING_KEYS:
      entry.pop(k)
  return run


def test_result_structure(study):
  _, result, written = study
  assert written["summary"] == result["summary"]
  assert written["missing_runs"] == [] and written["arms"] == list(ARMS)
  assert written["seeds"] == [SEED] and written["dataset"] == "synthetic"
  assert [r["arm"] for r in written["runs"]] == list(ARMS)
  assert set(written["summary"]) == set(ARMS)
  png = study[0].parent / "results" / "convergence.png"
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  for run in written["runs"]:
    assert run["seed"] == SEED
    assert run["config"]["method"] == run["arm"]
    assert run["config"]["num_epochs"] == EPOCHS
    history = run["history"]
    assert [h["step"] for h in history] == [STEPS_PER_EPOCH,
                                            2 * STEPS_PER_EPOCH]
    assert [h["epoch"] for h in history] == [1.0, 2.0]
    assert run["final"] == history[-1]
    for h in history:
      assert h["eval_count"] == OPTIONS["num_eval"]
      # Top-1 is a count of correct examples out of num_eval.
      assert h["eval_top1"] * OPTIONS["num_eval"] == pytest.approx(
          round(h["eval_top1"] * OPTIONS["num_eval"]), abs=1e-4)
      assert 0 <= h["eval_top1"] <= h["eval_top5"] <= 1
      assert np.isfinite(h["train_loss"]) and h["images_per_sec"] > 0
    # The finished run on disk is what main returned.
    on_disk = json.loads(
        (study[0] / f"{run['arm']}_s{SEED}" / "run.json").read_text())
    assert on_disk == run


def test_flip_statistics_are_consistent(study, num_binary_weights):
  for run in study[2]["runs"]:
    hist = run["flip_count_histogram"]
    overall = np.asarray(hist["overall"])
    layers = [k for k in hist if k != "overall"]
    assert len(layers) == 18
    assert overall.sum() == num_binary_weights
    np.testing.assert_array_equal(overall,
                                  np.sum([hist[k] for k in layers], axis=0))
    never = run["final"]["never_flipped"]
    assert never["overall"] == pytest.approx(overall[0] / overall.sum(),
                                             rel=1e-6)
    for k in layers:
      assert never[k] == pytest.approx(hist[k][0] / sum(hist[k]), rel=1e-6)
      # flip counts against |w| bin the same weights and the same counts.
      vs_w = run["flip_count_vs_abs_w"][k]
      n = np.asarray(vs_w["count"])
      assert n.sum() == sum(hist[k])
      mean = np.nan_to_num(np.asarray(vs_w["mean_flip_count"], np.float64))
      assert (n * mean).sum() / n.sum() == pytest.approx(
          run["mean_flip_count"][k], rel=1e-6)
      nf = np.nan_to_num(np.asarray(vs_w["never_flipped_fraction"],
                                    np.float64))
      assert (n * nf).sum() == pytest.approx(hist[k][0], abs=1e-6)
      # With no count in the clipped last bin, the histogram gives the mean.
      if hist[k][-1] == 0:
        assert np.dot(hist[k], np.arange(len(hist[k]))) / sum(
            hist[k]) == pytest.approx(run["mean_flip_count"][k], rel=1e-6)
    assert np.asarray(run["flip_count_vs_abs_w"]["overall"]["count"]).sum() \
        == num_binary_weights
    # Weights that flipped once have flipped for good: never-flipped shrinks.
    first, last = (h["never_flipped"]["overall"] for h in run["history"])
    assert 0 <= last <= first < 1


def test_summary_matches_runs(study):
  _, _, written = study
  for run in written["runs"]:
    s = written["summary"][run["arm"]]
    assert s["seeds"] == [SEED] and s["final_top1_std"] is None
    assert s["final_top1"] == [run["final"]["eval_top1"]]
    assert s["final_top1_mean"] == run["final"]["eval_top1"]
    assert s["best_top1_mean"] == max(h["eval_top1"] for h in run["history"])
    assert s["never_flipped_mean"] == run["final"]["never_flipped"]["overall"]
    hist = np.asarray(run["flip_count_histogram"]["overall"])
    assert s["mean_flip_count_lower_bound"] == pytest.approx(
        np.dot(hist, np.arange(len(hist))) / hist.sum())
    assert s["images_per_sec_mean"] == pytest.approx(
        np.mean([h["images_per_sec"] for h in run["history"]]))


class _Interrupt(Exception):
  pass


def test_resume_is_exact(bench, study, tmp_path):
  from ovsw_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  arm = "ovsw"  # The arm with the most optimizer state to restore.
  run_dir = tmp_path / f"{arm}_s{SEED}"
  run_dir.mkdir()
  messages = []

  def stop_after_first_epoch(message):
    messages.append(message)
    if f"{run_dir.name} epoch" in message:  # Logged after the checkpoint.
      raise _Interrupt(message)

  with pytest.raises(_Interrupt, match="epoch 1.00"):
    bench.run_one(_config(bench, arm), run_dir, log=stop_after_first_epoch)
  assert not (run_dir / "run.json").exists()
  manager = checkpointing.create_manager(run_dir / "checkpoints",
                                         read_only=True)
  assert list(manager.all_steps()) == [STEPS_PER_EPOCH]
  manager.close()

  resumed = bench.run_one(_config(bench, arm), run_dir, log=messages.append)
  assert len(messages) == 3
  assert messages[1].strip() == f"resuming {run_dir.name} at epoch 1"
  assert f"{run_dir.name} epoch 2.00" in messages[2]
  assert (run_dir / "run.json").exists()
  uninterrupted = next(r for r in study[2]["runs"] if r["arm"] == arm)
  assert _without_timing(resumed) == _without_timing(uninterrupted)


def test_runs_with_other_settings_are_not_mixed(bench, study, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  run_dir = tmp_path / f"vanilla_s{SEED}"
  shutil.copytree(study[0] / f"vanilla_s{SEED}", run_dir)
  config = _config(bench, "vanilla")
  config.learning_rate = 0.05
  # A finished run (run.json) and a run's recorded settings (config.json)
  # are both checked before anything is reused or resumed.
  with pytest.raises(ValueError, match=r"other settings \(learning_rate"):
    bench.run_one(config, run_dir)
  (run_dir / "run.json").unlink()
  with pytest.raises(ValueError, match=r"other settings \(learning_rate"):
    bench.run_one(config, run_dir)


def test_aggregate_only_lists_missing_runs(bench, study, tmp_path):
  runs_dir, _, written = study
  out = tmp_path / "aggregate.json"
  result = bench.main([
      f"--runs_dir={runs_dir}", "--arms=vanilla,sad,ovsw", "--seeds=0,1",
      "--aggregate_only", f"--out={out}"])
  assert result["missing_runs"] == ["sad_s0", "vanilla_s1", "sad_s1",
                                    "ovsw_s1"]
  assert result["runs"] == written["runs"]
  assert result["summary"] == written["summary"]
  assert json.loads(out.read_text())["missing_runs"] == result["missing_runs"]
  assert out.with_suffix(".png").exists()

  # Rerunning the study trains nothing: finished runs are read back.
  again = bench.main([
      f"--runs_dir={runs_dir}", f"--arms={','.join(ARMS)}", f"--seeds={SEED}",
      f"--epochs={EPOCHS}", f"--batch_size={BATCH}", "--dataset=synthetic",
      f"--dataset_options={json.dumps(OPTIONS)}"])
  assert again["runs"] == written["runs"] and again["missing_runs"] == []

  # Nothing finished: nothing summarised and no file written.
  empty_out = tmp_path / "empty.json"
  empty = bench.main([f"--runs_dir={tmp_path / 'none'}", "--arms=vanilla",
                      "--seeds=0", "--aggregate_only", f"--out={empty_out}"])
  assert empty["missing_runs"] == ["vanilla_s0"] and empty["summary"] == {}
  assert not empty_out.exists()


def test_ovsw_pairs_are_the_differences_of_the_summary():
  summary = {a: {"final_top1_mean": t, "never_flipped_mean": n}
             for a, t, n in (("vanilla", 0.30, 0.9), ("ovsw", 0.35, 0.5),
                             ("rbnn", 0.40, 0.8), ("rbnn+ovsw", 0.38, 0.6),
                             ("adabin", 0.5, 0.7))}
  pairs = convergence.ovsw_pairs(summary)
  assert sorted(pairs) == ["rbnn", "vanilla"]
  assert pairs["vanilla"]["with_ovsw"] == "ovsw"
  assert pairs["rbnn"]["final_top1_diff"] == pytest.approx(-2.0)
  assert pairs["vanilla"]["never_flipped_diff"] == pytest.approx(-40.0)
