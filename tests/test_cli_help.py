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
  module = importlib.import_module(f"benchmarks.{name}")
  monkeypatch.setattr(sys, "argv", [f"{name}.py", "--help"])
  takes_argv = bool(inspect.signature(module.main).parameters)
  with pytest.raises(SystemExit) as done:
    module.main(["--help"]) if takes_argv else module.main()
  assert done.value.code == 0
  assert "--" in capsys.readouterr().out
