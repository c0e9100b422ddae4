"""Fixtures shared by several test modules."""

import os

import pytest

# Non-partitionable threefry for the tests and their subprocesses (set
# before JAX is imported): XLA compiles a model's init about 2.5x faster
# (cResNet20: 13.3 s -> 5.1 s on 2 cores), and nearly every test initialises
# a model. Only the random values differ; every comparison in the suite is
# between runs that draw them the same way. Set
# JAX_THREEFRY_PARTITIONABLE=true to test with JAX's default.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "false")
# On a GPU, test processes (xdist workers, training subprocesses) share it:
# none may take 75% of its memory up front. (No effect on CPUs.)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Where the tests' training subprocesses run: 'cpu' (the default; N devices
# are simulated CPU devices) or an accelerator's JAX platform ('cuda',
# 'rocm', 'tpu'), for `-m accelerator` on a GPU/TPU machine: there with
# XLA's determinism flags, and a test needing more devices than the machine
# has is skipped, naming why (docs/accelerators.md).
TEST_PLATFORM = os.environ.get("OVSW_TEST_PLATFORM", "cpu")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CIFAR_DIR = os.environ.get("OVSW_DATA_DIR") or os.path.join(
    os.path.dirname(REPO), "shared", "data")


def require_cifar10() -> str:
  """The folder holding cifar-10-batches-bin, or skip with the reason."""
  if not os.path.isdir(os.path.join(CIFAR_DIR, "cifar-10-batches-bin")):
    pytest.skip(f"CIFAR-10 binaries not found under {CIFAR_DIR} (set "
                "OVSW_DATA_DIR to the folder holding cifar-10-batches-bin)")
  return CIFAR_DIR


def require_test_devices(count: int) -> None:
  """Skips, naming why, unless `TEST_PLATFORM` has ``count`` devices here
  (simulated CPU devices always do)."""
  if TEST_PLATFORM == "cpu":
    return
  import jax  # pylint: disable=g-import-not-at-top
  have = len(jax.devices(TEST_PLATFORM))
  if have < count:
    pytest.skip(f"needs {count} {TEST_PLATFORM} devices, this machine has "
                f"{have}; unset OVSW_TEST_PLATFORM to run it on {count} "
                "simulated CPU devices")


@pytest.fixture
def float32_matmuls():
  """float32 convolutions and matmuls at full float32 precision.

  Tests comparing float32 results with float64 NumPy models use float32
  tolerances. GPUs compute float32 convolutions and matmuls in TF32 by
  default (10-bit mantissas), where those tolerances hold only for exact
  (+-1) operands, so on an accelerator these tests run at 'highest'
  precision. On a CPU this changes nothing.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() == "cpu":
    yield
    return
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="session")
def cifar10_run(tmp_path_factory):
  """A short real CIFAR-10 run of cResNet20 (trained once per session).

  150 steps of 64 (a fifth of an epoch, about a minute): no augmentation,
  lr 0.2 decayed per step by the cosine. This reached 29% test top-1 here (it
  takes some 100 more steps with the recipe's constant first-epoch lr).

  Returns:
    ``(config, workdir, result)`` of `loop.train_and_evaluate`.
  """
  from configs import default  # pylint: disable=g-import-not-at-top
  from ovsw_jax.training import loop  # pylint: disable=g-import-not-at-top
  data_dir = require_cifar10()
  workdir = str(tmp_path_factory.mktemp("cifar10_run"))
  config = default.get_config()
  config.update({
      "dataset": "cifar10", "data_dir": data_dir,
      "dataset_options": {"download": False, "augment": False},
      "batch_size": 64, "eval_batch_size": 1000, "num_train_steps": 150,
      "warmup_epochs": 0, "learning_rate": 0.2,
      "lr_schedule_granularity": "step", "log_every_steps": 50,
      "checkpoint_every_steps": 0, "eval_every_epochs": 0,
      "flip_stats_every_steps": 0, "progress_bar": False})
  result = loop.train_and_evaluate(config, workdir)
  return config, workdir, result


@pytest.fixture(scope="session", autouse=True)
def persistent_compile_cache(tmp_path_factory):
  """One persistent compilation cache for the test session.

  Many tests build the same tiny model's train step again (a resumed run, a
  rerun after a refusal, a subprocess of train.py); each build recompiles
  from scratch (seconds to tens of seconds on 2 cores) unless XLA's
  executable comes from this cache. Subprocesses inherit it through the
  environment. Results do not depend on it: a cached executable is the one
  the same program compiled to.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # shared by the xdist workers of this session
  folder = os.environ.get("OVSW_TEST_COMPILE_CACHE") or str(
      base / "jax_compile_cache")
  settings = {"jax_compilation_cache_dir": folder,
              "jax_persistent_cache_min_compile_time_secs": 0.0,
              "jax_persistent_cache_min_entry_size_bytes": 0}
  saved = {k: getattr(jax.config, k) for k in settings}
  env_saved = {k: os.environ.get(k) for k in _CACHE_ENV}
  compilation_cache.reset_cache()
  for k, v in settings.items():
    jax.config.update(k, v)
  os.environ.update({"JAX_COMPILATION_CACHE_DIR": folder,
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
  yield folder
  for k, v in saved.items():
    jax.config.update(k, v)
  for k, v in env_saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  compilation_cache.reset_cache()


_CACHE_ENV = ("JAX_COMPILATION_CACHE_DIR",
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")


def pytest_terminal_summary(terminalreporter):
  """One line at the end of the run when tests skipped for want of CIFAR-10
  (README, "Tests that need data"), so a green run says what it left out."""
  skipped = terminalreporter.stats.get("skipped", [])
  reasons = [r.longrepr[2] for r in skipped
             if isinstance(getattr(r, "longrepr", None), tuple)]
  missing = sum("CIFAR-10" in reason for reason in reasons)
  if missing:
    terminalreporter.write_line(
        f"{missing} test(s) skipped: the real CIFAR-10 was not found under "
        f"{CIFAR_DIR}; set OVSW_DATA_DIR to the folder holding "
        "cifar-10-batches-bin to run them.")
