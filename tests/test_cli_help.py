"""Every command line answers --help with its flags and exit status 0."""

import importlib
import inspect
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = ("convergence", "deploy", "deploy_layers", "input_pipeline",
              "optimizer_state", "quickstart_seeds", "react_stages",
              "step_variants", "throughput", "train_step")


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, *args], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        check=False)


@pytest.mark.parametrize("args,flags", [
    (["train.py", "--help"], ["--config", "--workdir", "--num_processes"]),
    (["-m", "ovsw_jax.deploy", "--help"], ["export", "evaluate"]),
    (["-m", "ovsw_jax.deploy", "export", "--help"],
     ["--workdir", "--out", "--checkpoint", "--float_dtype", "--config"]),
    (["-m", "ovsw_jax.deploy", "evaluate", "--help"],
     ["--packed", "--dataset", "--batch_size", "--backend"]),
    (["-m", "ovsw_jax.summary", "--help"], ["--model", "--image_shape"]),
])
def test_help_lists_the_flags_and_exits_0(args, flags):
  proc = _run(*args)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for flag in flags:
    assert flag in proc.stdout, (flag, proc.stdout[-2000:])


def test_deploy_without_a_command_shows_the_commands_and_exits_2():
  proc = _run("-m", "ovsw_jax.deploy")
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: expected a command, got no command")
  assert "export" in proc.stderr and "evaluate" in proc.stderr


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_help(name, capsys, monkeypatch):
  flags, cpus = os.environ.get("XLA_FLAGS"), os.sched_getaffinity(0)
  module = importlib.import_module(f"benchmarks.{name}")
  # Importing a benchmark sets nothing in the importer's process (a pinned
  # core or single-thread flags would leak into every later test).
  assert os.environ.get("XLA_FLAGS") == flags
  assert os.sched_getaffinity(0) == cpus
  monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
  takes_argv = bool(inspect.signature(module.main).parameters)
  with pytest.raises(SystemExit) as done:
    module.main(["--help"]) if takes_argv else module.main()
  assert done.value.code == 0
  assert "--" in capsys.readouterr().out


def test_train_help_names_every_model_and_method():
  # train.py's docstring (its --help) lists them without importing JAX, so
  # it is written out by hand: it must follow the registries.
  import re  # pylint: disable=g-import-not-at-top
  import train  # pylint: disable=g-import-not-at-top
  from ovsw_jax import models  # pylint: disable=g-import-not-at-top
  from ovsw_jax.training import methods  # pylint: disable=g-import-not-at-top
  doc = train.__doc__
  section = doc.split("Models (", 1)[1].split("Methods (", 1)[0]
  binary, real = section.split("  binary", 1)[1].split("real-valued", 1)
  names = lambda text: set(re.split(r"[\s,]+", text.strip()))
  assert names(real) == set(models.REAL_VALUED)
  assert names(binary) == set(models.list_models()) - set(models.REAL_VALUED)
  listed = doc.split("Methods (", 1)[1].split("Datasets (", 1)[0]
  listed = listed.split("docs/training.md):", 1)[1]
  assert set(re.findall(r"\b[a-z]+\b", listed)) == set(
      methods.registered_parts())
