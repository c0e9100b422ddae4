"""Tests of the training system: ovsw_jax.training and train.py.

Most runs use synthetic 8x8 images and a cResNet20 cut to one block per stage
(model_options stage_sizes=(1, 1, 1)) so that compiling stays short. Runs that
need several devices or processes happen in subprocesses, with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before JAX starts.
Subprocesses share a persistent compilation cache (per test session).
"""

import glob
import json
import math
import os
import re
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from conftest import TEST_PLATFORM, require_test_devices  # pylint: disable=wrong-import-position
from killed_runs import committed_steps  # pylint: disable=wrong-import-position
from configs import default  # pylint: disable=wrong-import-position
from ovsw_jax.training import checkpointing  # pylint: disable=wrong-import-position
from ovsw_jax.training import config as config_lib  # pylint: disable=wrong-import-position
from ovsw_jax.training import determinism  # pylint: disable=wrong-import-position
from ovsw_jax.training import experiment as experiment_lib  # pylint: disable=wrong-import-position
from ovsw_jax.training import loop  # pylint: disable=wrong-import-position
from ovsw_jax.training import methods  # pylint: disable=wrong-import-position
from ovsw_jax.training import metrics_io  # pylint: disable=wrong-import-position
from ovsw_jax.training import schedules  # pylint: disable=wrong-import-position
from ovsw_jax.training import state as state_lib  # pylint: disable=wrong-import-position
from ovsw_jax import transforms  # pylint: disable=wrong-import-position

RECIPES = ("cifar10_resnet20", "cifar10_resnet18", "cifar10_vggsmall",
           "cifar100_resnet18", "imagenet_resnet18", "imagenet_resnet34",
           "quickstart")

# A small run: synthetic 8x8 images, cResNet20 with one block per stage.
TINY = {
    # The defaults' recipe, which train.py's runs (configs/quickstart.py)
    # and the in-process runs (default.get_config()) then share: a resume
    # that mixes the two must not change a key that changes training.
    "method": "ovsw",
    "learning_rate": 0.1,
    "lr_schedule_granularity": "epoch",
    "model": "cresnet20_1w1a",
    "model_options": {"stage_sizes": (1, 1, 1)},
    "dataset": "synthetic",
    "dataset_options": {"image_shape": (8, 8, 3), "num_train": 64,
                        "num_eval": 20},
    "batch_size": 8,
    "num_train_steps": 10,
    "warmup_epochs": 1,
    "log_every_steps": 5,
    "checkpoint_every_steps": 5,
    "eval_every_epochs": 0,
    "progress_bar": False,
    "prefetch": 0,
}


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.update({**TINY, **overrides})
  return config


def load_recipe(name: str) -> ml_collections.ConfigDict:
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  return module.get_config()


def config_flags_for(overrides) -> list[str]:
  """--config.KEY=VALUE flags for train.py (dicts are given whole)."""
  return [f"--config.{k}={v!r}" if isinstance(v, (dict, tuple)) else
          f"--config.{k}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
  # One folder per session, also for the modules that import this fixture
  # (each gets its own instance): their subprocesses share compiled programs.
  path = tmp_path_factory.getbasetemp() / "jax_compile_cache"
  path.mkdir(exist_ok=True)
  return str(path)


# XLA:CPU's backend optimisations off for the tests' subprocesses: they
# take a third of a tiny run's compile time (13.1 s -> 8.6 s for train.py on
# TINY, measured on 2 cores), while these runs are a few steps of a tiny
# model. Runs compared bitwise are compiled alike.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0"
                      " --xla_llvm_disable_expensive_passes=true")


def subprocess_env(compile_cache, devices=1, fast_compile=True):
  """The environment of a test's subprocess: CPU, ``devices`` simulated
  devices, the session's compile cache; ``fast_compile=False`` for a run
  compared bitwise with one compiled in the test process.

  With OVSW_TEST_PLATFORM set to an accelerator (conftest.TEST_PLATFORM),
  that platform with XLA's determinism flags, or a skip if the machine has
  fewer than ``devices`` of it.
  """
  require_test_devices(devices)
  env = dict(os.environ)
  env.update({
      "JAX_PLATFORMS": TEST_PLATFORM,
      "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
      "XLA_FLAGS": (f"--xla_force_host_platform_device_count={devices} "
                    + (FAST_COMPILE_FLAGS if fast_compile else "")
                    + ("" if TEST_PLATFORM == "cpu"
                       else " " + determinism.flag_line())),
      "JAX_COMPILATION_CACHE_DIR": compile_cache,
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
  })
  return env


def train_cmd(workdir, overrides, extra=()):
  return [sys.executable, os.path.join(REPO, "train.py"),
          f"--config={os.path.join(REPO, 'configs', 'quickstart.py')}",
          f"--workdir={workdir}", *config_flags_for(overrides), *extra]


def info_from_libraries(stderr: str) -> set[str]:
  """Source files of absl INFO lines not from ovsw_jax or train.py.

  train.py logs its own progress at INFO; libraries (orbax: a dozen lines
  per checkpoint) only log warnings unless --verbosity is given.
  """
  ours = {os.path.basename(p) for p in glob.glob(
      os.path.join(REPO, "ovsw_jax", "**", "*.py"), recursive=True)}
  ours = (ours - {"__init__.py"}) | {"train.py"}
  files = re.findall(r"^I\d{4} \S+ +\d+ (\S+?):\d+\]", stderr, re.M)
  return set(files) - ours


def run_python(code, env, timeout=300):
  """Runs a Python snippet; returns the JSON it prints on its last line."""
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                        env=env, capture_output=True, text=True,
                        timeout=timeout, cwd=REPO, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def all_leaves(state):
  items = state_lib.checkpoint_items(state)
  return jax.tree_util.tree_flatten_with_path(jax.device_get(items))[0]


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


def test_default_config_has_exactly_the_known_keys():
  assert set(default.get_config().keys()) == config_lib.CONFIG_KEYS
  for name in RECIPES:
    experiment_lib.validate_config(load_recipe(name))


def test_unknown_config_key_is_rejected_with_valid_names():
  config = default.get_config()
  config.lerning_rate = 0.1
  with pytest.raises(ValueError, match=r"unknown config key 'lerning_rate' "
                     r"\(did you mean 'learning_rate'\?\); "
                     r"valid keys: .*\blearning_rate\b"):
    experiment_lib.validate_config(config)
  config.zzz = 1  # nothing close: no guess
  with pytest.raises(ValueError, match=r"unknown config keys 'lerning_rate' "
                     r"\(did you mean 'learning_rate'\?\), 'zzz'; valid"):
    experiment_lib.validate_config(config)
  config = default.get_config()
  config.method = "ovsw+agss"
  with pytest.raises(ValueError, match=r"unknown method part 'agss'.*'ags'"):
    experiment_lib.validate_config(config)


def test_unknown_override_on_the_command_line(tmp_path, compile_cache):
  proc = subprocess.run(
      train_cmd(tmp_path, {"lerning_rate": 0.1}),
      env=subprocess_env(compile_cache), capture_output=True, text=True,
      timeout=120, check=False)
  assert proc.returncode == 2
  assert ("unknown config key 'lerning_rate' (did you mean "
          "'learning_rate'?); valid keys:") in proc.stderr
  assert "learning_rate" in proc.stderr
  assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------
# Learning-rate schedule (docs/semantics.md, section 7)
# ---------------------------------------------------------------------------


def reference_lr(epoch, lr=0.1, warmup=5, epochs=600):
  """The reference's per-epoch rule, in float64."""
  if epoch < warmup:
    return lr * (epoch + 1) / warmup
  return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) /
                             (epochs - warmup))) * lr + 1e-5


def test_lr_schedule_per_epoch_matches_the_reference_formula():
  config = load_recipe("cifar10_resnet20")
  spe = 195  # CIFAR-10 at batch 256.
  fn = schedules.create_learning_rate_fn(config, spe)
  for step in (0, 1, 194, 195, 390, 4 * spe + 7, 5 * spe - 1, 5 * spe,
               5 * spe + 194, 100 * spe + 3, 302 * spe, 599 * spe + 194):
    epoch = step // spe
    np.testing.assert_allclose(float(fn(step)), reference_lr(epoch),
                               rtol=2e-6, err_msg=f"step {step}")
  # Constant within an epoch (a staircase).
  assert float(fn(5 * spe)) == float(fn(5 * spe + 194))
  # num_train_steps sets the end of the cosine: E = steps / spe.
  config.num_train_steps = 20 * spe
  fn = schedules.create_learning_rate_fn(config, spe)
  np.testing.assert_allclose(float(fn(12 * spe)), reference_lr(12, epochs=20),
                             rtol=2e-6)


def test_lr_schedule_per_step():
  config = load_recipe("cifar10_resnet20")
  config.lr_schedule_granularity = "step"
  spe = 10
  fn = schedules.create_learning_rate_fn(config, spe)
  for step in (0, 7, 49):  # warmup: lr * (s + 1) / (W * spe)
    np.testing.assert_allclose(float(fn(step)), 0.1 * (step + 1) / 50,
                               rtol=2e-6)
  for step in (50, 51, 3000, 5999):
    expected = 0.5 * (1 + math.cos(math.pi * (step - 50) / 5950)) * 0.1 + 1e-5
    np.testing.assert_allclose(float(fn(step)), expected, rtol=2e-6)


# ---------------------------------------------------------------------------
# Optimizer construction
# ---------------------------------------------------------------------------


def _toy_params():
  k = jax.random.split(jax.random.PRNGKey(1), 4)
  return {
      "conv": {"latent_kernel": jax.random.normal(k[0], (3, 3, 4, 8)) * 0.1},
      "bn": {"scale": 1.0 + jax.random.normal(k[1], (8,)) * 0.1},
      "fc": {"kernel": jax.random.normal(k[2], (8, 5)),
             "bias": jnp.zeros(5)},
  }


def _run(tx, params, grads_seq):
  state = tx.init(params)
  for g in grads_seq:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _grads(params, n=3):
  keys = jax.random.split(jax.random.PRNGKey(7), n)
  return [jax.tree.map(lambda x, k=k: 1e-3 * jax.random.normal(k, x.shape),
                       params) for k in keys]


def test_ovsw_method_is_transforms_ovsw():
  config = default.get_config()
  lr = schedules.create_learning_rate_fn(tiny_config(), 8)
  params = _toy_params()
  grads = _grads(params)
  ours = _run(methods.create_optimizer(config, lr), params, grads)
  ref = _run(transforms.ovsw(lr, mask=transforms.binary_kernel_mask),
             params, grads)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)
  # 'ags+sad' is the same chain as 'ovsw'.
  config.method = "ags+sad"
  same = _run(methods.create_optimizer(config, lr), params, grads)
  for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(a, b)


def test_vanilla_method_and_weight_decay_mask():
  config = default.get_config()
  config.method = "vanilla"
  config.weight_decay = 1e-2
  lr = 0.1
  params = _toy_params()
  (g,) = _grads(params, 1)
  new = _run(methods.create_optimizer(config, lambda s: lr), params, [g])
  # One SGD step from a zero momentum buffer: w - lr * (g + wd * w).
  for w, gw, nw in zip(jax.tree.leaves(params), jax.tree.leaves(g),
                       jax.tree.leaves(new)):
    np.testing.assert_allclose(nw, w - lr * (gw + 1e-2 * w), rtol=1e-6,
                               atol=1e-7)
  config.weight_decay_on_1d = False
  new = _run(methods.create_optimizer(config, lambda s: lr), params, [g])
  np.testing.assert_allclose(new["bn"]["scale"],
                             params["bn"]["scale"] - lr * g["bn"]["scale"],
                             rtol=1e-6)
  np.testing.assert_allclose(
      new["fc"]["kernel"],
      params["fc"]["kernel"] - lr * (g["fc"]["kernel"] +
                                     1e-2 * params["fc"]["kernel"]),
      rtol=1e-6)


def test_ags_only_touches_binary_kernels():
  config = default.get_config()
  config.method = "ags"
  config.weight_decay = 0.0
  params = _toy_params()
  (g,) = _grads(params, 1)
  new = _run(methods.create_optimizer(config, lambda s: 1.0), params, [g])
  # Float leaves: plain SGD (g is small, AGS would have scaled it up).
  np.testing.assert_allclose(new["fc"]["kernel"],
                             params["fc"]["kernel"] - g["fc"]["kernel"],
                             rtol=1e-6)
  # Binary kernel: each channel's step norm raised to delta * ||w_c||.
  step = np.asarray(params["conv"]["latent_kernel"] -
                    new["conv"]["latent_kernel"]).reshape(-1, 8)
  w = np.asarray(params["conv"]["latent_kernel"]).reshape(-1, 8)
  np.testing.assert_allclose(np.linalg.norm(step, axis=0),
                             0.04 * np.linalg.norm(w, axis=0), rtol=1e-5)


# ---------------------------------------------------------------------------
# Data parallelism: devices and hosts
# ---------------------------------------------------------------------------

# lr 0.01 and batch 16: at lr 0.1 with batch 8 this tiny net's gradients are
# so large that the (legitimately) different summation order of the 4-device
# all-reduce grows ~3x per step, past 1e-5 within 5 steps.
EQUIV = {"learning_rate": 0.01, "batch_size": 16}


@pytest.mark.accelerator
def test_four_devices_match_one_device(compile_cache):
  result = run_python(f"""
      import json
      import jax, numpy as np
      from configs import default
      from ovsw_jax import data
      from ovsw_jax.training import experiment as experiment_lib, loop
      from ovsw_jax.training import mesh as mesh_lib, state as state_lib
      from ovsw_jax.training import steps as steps_lib
      config = default.get_config()
      config.update({{**{TINY!r}, **{EQUIV!r}}})
      exp = experiment_lib.create_experiment(config)
      out = {{}}
      for n in (1, 4):
        mesh = mesh_lib.create_mesh(jax.devices()[:n])
        state = state_lib.create_train_state(exp.model, exp.tx,
                                             exp.info.image_shape, 0, mesh)
        step = steps_lib.jit_train_step(exp.learning_rate_fn, mesh)
        batches = data.create_train_iterator(
            "synthetic", None, 16, 0, prefetch=0, **config.dataset_options)
        losses = []
        for _ in range(5):
          state, metrics = step(state, mesh_lib.shard_batch(next(batches),
                                                            mesh))
          losses.append(float(metrics["loss"]))
        out[n] = (losses, jax.device_get(state.params),
                  len(state.params["conv1"]["kernel"].sharding.device_set))
      diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
          jax.tree.leaves(out[1][1]), jax.tree.leaves(out[4][1])))
      try:
        config.batch_size = 6
        loop.train_and_evaluate(config, "/nonexistent",
                                     mesh=mesh_lib.create_mesh())
        error = ""
      except ValueError as e:
        error = str(e)
      print(json.dumps({{"losses1": out[1][0], "losses4": out[4][0],
                         "devices": [out[1][2], out[4][2]],
                         "param_diff": diff, "error": error}}))
      """, subprocess_env(compile_cache, devices=4))
  assert result["devices"] == [1, 4]
  np.testing.assert_allclose(result["losses4"], result["losses1"], atol=1e-5)
  assert result["param_diff"] < 1e-5
  # The params did move (so the comparison means something).
  assert len(set(result["losses1"])) == 5
  error = result["error"]
  assert "batch_size=6" in error and "(4)" in error and "multiple of 4" in error


def damage_checkpoints(workdir, step="*"):
  """Truncates the array data files of ``step``'s checkpoint (all: '*')."""
  files = [p for p in glob.glob(os.path.join(workdir, "checkpoints", step,
                                             "state", "**", "*"),
                                recursive=True)
           if os.path.isfile(p) and f"{os.sep}d{os.sep}" in p]
  assert files
  for p in files:
    with open(p, "r+b") as f:
      f.truncate(3)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# ---------------------------------------------------------------------------
# Checkpoints and faults
# ---------------------------------------------------------------------------


def test_checkpoints_keep_the_latest_and_the_best(tmp_path):
  manager = checkpointing.create_manager(tmp_path, keep=2)
  tree = {"w": jnp.arange(3.0), "step": jnp.int32(0)}
  top1 = {1: 0.5, 2: 0.9, 3: 0.2, 4: None, 5: 0.3}
  for step, value in top1.items():
    checkpointing.save(manager, step, {"w": tree["w"] + step,
                                       "step": jnp.int32(step)},
                       meta={"step": step},
                       metrics=None if value is None else {"eval_top1": value})
  manager.wait_until_finished()
  assert manager.all_steps() == [2, 4, 5]  # best (0.9) + latest two
  assert manager.best_step() == 2
  state, meta, step = checkpointing.restore(
      manager, checkpointing.abstract_like(tree), step=2)
  assert step == 2 and meta == {"step": 2}
  np.testing.assert_array_equal(state["w"], np.arange(3.0) + 2)
  manager.close()


# Reading the damaged checkpoint leaves tensorstore callbacks aimed at an
# asyncio loop orbax has closed; Python reports them as unraisable.
@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
  config = tiny_config(num_train_steps=4, checkpoint_every_steps=2,
                       log_every_steps=2, keep_checkpoints=3)
  workdir = str(tmp_path)
  loop.train_and_evaluate(config, workdir)
  assert committed_steps(workdir) == [2, 4]
  original, _ = loop.load_checkpoint(config, workdir)
  damage_checkpoints(workdir, "4")

  with caplog.at_level("WARNING"):
    result = loop.train_and_evaluate(config, workdir)
  assert re.search(r"Checkpoint at step 4 .* is unreadable .*restoring the "
                   r"previous one \(step 2\)", caplog.text)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4.unreadable"))
  assert result["step"] == 4
  # Steps 3-4 were redone from step 2: the same params, bit for bit.
  redone, _ = loop.load_checkpoint(config, workdir)
  for (path, x), (_, y) in zip(all_leaves(original), all_leaves(redone)):
    np.testing.assert_array_equal(x, y, err_msg=str(path))

  # The metrics: one record per log step, float32 values unrounded.
  records = metrics_io.read_metrics(workdir)
  first = records[0]
  assert first["step"] == 2 and first["epoch"] == 0.25
  for key in ("train_loss", "train_top1", "train_top5", "lr", "ags_ratio",
              "silent_fraction", "images_per_sec", "flip_rate",
              "flip_rate/layer1_0/conv1/latent_kernel",
              "silent_fraction/layer3_0/conv2/latent_kernel",
              "ags_ratio/layer2_0/conv1/latent_kernel"):
    assert key in first, key
  for key in ("train_loss", "lr", "flip_rate", "silent_fraction"):
    assert float(np.float32(first[key])) == first[key]
  np.testing.assert_allclose(first["lr"], 0.1, rtol=1e-6)  # warmup epoch 0
  assert 0 < first["flip_rate"] < 1
  assert records[-1]["eval_count"] == 20

  # eval_only reads the latest checkpoint and appends its result.
  config.eval_only = True
  evaluated = loop.train_and_evaluate(config, workdir)
  assert evaluated["step"] == 4
  assert evaluated["eval_count"] == 20
  assert evaluated["eval_top1"] == result["eval_top1"]
  last = metrics_io.read_metrics(workdir)[-1]
  assert last["eval_checkpoint"] == "latest" and last["step"] == 4


def test_non_finite_loss_stops_naming_the_step(tmp_path):
  workdir = str(tmp_path)
  loop.train_and_evaluate(
      tiny_config(num_train_steps=2, checkpoint_every_steps=2), workdir)
  # Resume with an absurd learning rate, saving after every finite step.
  config = tiny_config(num_train_steps=8, checkpoint_every_steps=1,
                       log_every_steps=8, learning_rate=1e30,
                       allow_config_change=True)
  with pytest.raises(FloatingPointError) as info:
    loop.train_and_evaluate(config, workdir)
  message = str(info.value)
  match = re.search(r"at step (\d+)", message)
  assert match, message
  bad_step = int(match.group(1))
  kept = committed_steps(workdir)
  assert kept and max(kept) < bad_step <= 8
  assert f"last good checkpoint (step {max(kept)})" in message or (
      "non-finite parameters" in message)
  # Every checkpoint left is finite.
  for step in kept:
    state, _ = loop.load_checkpoint(config, workdir, which=step)
    for path, x in all_leaves(state):
      if np.issubdtype(x.dtype, np.floating):
        assert np.all(np.isfinite(x)), (step, path)
  # The losses up to the reported step: finite before it, not at it.
  records = [r for r in metrics_io.read_metrics(workdir) if "train_loss" in r]
  assert all(np.isfinite(r["train_loss"]) for r in records)


def test_missing_data_exits_with_the_message(tmp_path, compile_cache):
  proc = subprocess.run(
      train_cmd(tmp_path / "w", {"dataset": "cifar10",
                                 "data_dir": str(tmp_path / "nothing"),
                                 "dataset_options": {"download": False}}),
      env=subprocess_env(compile_cache), capture_output=True, text=True,
      timeout=120, check=False)
  assert proc.returncode == 1
  assert "error:" in proc.stderr and "nothing" in proc.stderr
  assert "cifar-10" in proc.stderr.lower()
  assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------
# Recipes and real data
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recipe_runs(compile_cache):
  """Each recipe, on synthetic data, built and stepped twice (one subprocess).

  XLA's backend optimisations are off there (subprocess_env): they double
  the compile time of these full-size models and the checks below do not
  depend on them.
  """
  env = subprocess_env(compile_cache)
  return run_python(f"""
      import json
      import jax, jax.numpy as jnp, numpy as np
      from ovsw_jax import data
      from ovsw_jax.training import experiment as experiment_lib, loop
      from ovsw_jax.training import mesh as mesh_lib, state as state_lib
      from ovsw_jax.training import steps as steps_lib
      out = {{}}
      for name in {RECIPES!r}:
        config = __import__("configs." + name,
                            fromlist=["get_config"]).get_config()
        num_classes = {{"cifar100": 100, "imagenet2012": 1000}}.get(
            config.dataset, 10)
        shape = (32, 32, 1 if config.dataset == "digits" else 3)
        config.dataset = "synthetic"
        config.dataset_options = {{"image_shape": shape, "num_train": 8,
                                   "num_classes": num_classes,
                                   "num_eval": 2}}
        config.batch_size = 2
        # The ImageNet recipes run in bfloat16, as they would on accelerators.
        config.half_precision = name.startswith("imagenet")
        exp = experiment_lib.create_experiment(config)
        mesh = mesh_lib.create_mesh(jax.devices()[:1])
        state = state_lib.create_train_state(exp.model, exp.tx, shape, 0,
                                             mesh)
        initial = jax.device_get(state.params)
        step = steps_lib.jit_train_step(exp.learning_rate_fn, mesh)
        batches = data.create_train_iterator(
            "synthetic", None, 2, 0, prefetch=0, **config.dataset_options)
        for _ in range(2):
          state, metrics = step(state, mesh_lib.shard_batch(next(batches),
                                                            mesh))
        logits = jax.eval_shape(
            lambda s: exp.model.apply(
                {{"params": s.params, "batch_stats": s.batch_stats}},
                jnp.zeros((1, *shape)), train=False), state)
        out[name] = {{
            "step": int(state.step),
            "metrics": {{k: float(v) for k, v in metrics.items()}},
            "logits_shape": list(logits.shape),
            "num_classes": num_classes,
            "moved": all(not np.array_equal(a, b) for a, b in zip(
                jax.tree.leaves(initial),
                jax.tree.leaves(jax.device_get(state.params)))),
            # Both steps are in the first warmup epoch (4 steps of 2 of 8
            # images): lr / W per epoch, or lr * (s + 1) / (W * 4) at the
            # second step (s = 1) per step.
            "expected_lr": config.learning_rate / config.warmup_epochs * (
                1.0 if config.lr_schedule_granularity == "epoch"
                else 2 / 4),
            "compute_dtype": jnp.dtype(exp.model.dtype).name,
            "state_dtypes": sorted({{x.dtype.name for x in jax.tree.leaves(
                (state.params, state.batch_stats, state.opt_state))}}),
            "loss_dtype": metrics["loss"].dtype.name,
        }}
      print(json.dumps(out))
      """, env, timeout=900)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_builds_and_takes_two_steps(recipe_runs, name):
  run = recipe_runs[name]
  assert run["step"] == 2
  np.testing.assert_allclose(run["metrics"]["lr"], run["expected_lr"],
                             rtol=1e-6)
  assert np.isfinite(run["metrics"]["loss"])
  assert 0.0 <= run["metrics"]["silent_fraction"] <= 1.0
  assert run["metrics"]["ags_ratio"] > 0.0
  assert run["logits_shape"] == [1, run["num_classes"]]
  assert run["moved"]  # Every parameter changed.
  # bfloat16 compute leaves params, optimizer state and the loss float32.
  assert run["compute_dtype"] == ("bfloat16" if name.startswith("imagenet")
                                  else "float32")
  assert set(run["state_dtypes"]) <= {"float32", "bool", "int32"}
  assert run["loss_dtype"] == "float32"
