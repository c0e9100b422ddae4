"""Training with device-resident input (config.input_on_device) and with
config.deterministic: the trainer's results do not depend on where batches
are made, resume stays exact, and the determinism flags reach XLA."""

import os
import re
import subprocess

import jax
import numpy as np
import pytest

from ovsw_jax.training import config as config_lib
from ovsw_jax.training import determinism
from ovsw_jax.training import input_feed
from ovsw_jax.training import loop
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import metrics_io
from killed_runs import committed_steps, kill_when
from test_train import EQUIV, TINY, all_leaves, compile_cache  # pylint: disable=unused-import
from test_train import run_python, subprocess_env, tiny_config, train_cmd

pytestmark = pytest.mark.accelerator


def test_config_values_and_auto_resolution(monkeypatch):
  for bad in ("yes", 1, None):
    with pytest.raises(ValueError, match="input_on_device=.*'auto', True or"):
      config_lib.validate_config(tiny_config(input_on_device=bad))
  mesh = mesh_lib.create_mesh(jax.devices()[:1])
  assert not input_feed.wants_device_input(tiny_config(), mesh)  # CPU
  assert input_feed.wants_device_input(tiny_config(input_on_device=True),
                                       mesh)

  class Accelerator:  # A mesh whose devices say they are GPUs.
    class devices:  # pylint: disable=invalid-name
      flat = [type("Device", (), {"platform": "gpu"})()]

  assert input_feed.wants_device_input(tiny_config(), Accelerator)
  assert not input_feed.wants_device_input(
      tiny_config(input_on_device=False), Accelerator)
  # A dataset read from files stays on the host under 'auto', and True
  # names the fix.
  monkeypatch.setattr(input_feed, "_source", lambda config: object())
  assert not input_feed.wants_device_input(tiny_config(), Accelerator)
  with pytest.raises(ValueError, match="'synthetic' is read from files.*"
                     "input_on_device to False or 'auto'"):
    input_feed.wants_device_input(tiny_config(input_on_device=True), mesh)


def test_device_input_gives_the_hosts_steps_on_1_and_4_devices(
    compile_cache):
  """N steps (across an epoch end) and an eval, with batches made on the
  host, on the devices (replicated) and, on 4, sharded: bitwise equal."""
  result = run_python(f"""
      import json
      import jax, jax.numpy as jnp, numpy as np
      from configs import default
      from ovsw_jax.data import device_input
      from ovsw_jax.training import experiment as experiment_lib
      from ovsw_jax.training import input_feed, mesh as mesh_lib
      from ovsw_jax.training import state as state_lib, steps as steps_lib
      config = default.get_config()
      config.update({{**{TINY!r}, **{EQUIV!r}}})
      exp = experiment_lib.create_experiment(config)
      out = {{}}
      for n in (1, 4):
        mesh = mesh_lib.create_mesh(jax.devices()[:n])
        step = steps_lib.jit_train_step(exp.learning_rate_fn, mesh)
        evaluate = steps_lib.jit_eval_step(mesh)
        init = state_lib.create_train_state(exp.model, exp.tx,
                                            exp.info.image_shape, 0, mesh)
        for arm in ("host", "replicated", "sharded")[:2 if n == 1 else 3]:
          feed = input_feed.InputFeed(config, mesh, on_device=arm != "host")
          if arm == "sharded":
            feed.device = device_input.DeviceInput(
                feed.device.source, mesh, placement="sharded")
          state = jax.tree.map(jnp.copy, init)  # the step donates it
          batches = feed.train_batches(0)
          losses = []
          for _ in range(6):
            state, metrics = step(state, next(batches))
            losses.append(float(metrics["loss"]))
          batches.close()
          ev = steps_lib.evaluate(evaluate, state, feed.eval_batches(8), mesh)
          out[f"{{n}}/{{arm}}"] = (losses, jax.device_get(state.params), ev)
      same = {{k: all(np.array_equal(a, b) for a, b in zip(
                  jax.tree.leaves(out[k][1]),
                  jax.tree.leaves(out[k.split("/")[0] + "/host"][1])))
              for k in out}}
      print(json.dumps({{"losses": {{k: v[0] for k, v in out.items()}},
                         "evals": {{k: v[2] for k, v in out.items()}},
                         "same_params": same}}))
      """, subprocess_env(compile_cache, devices=4))
  losses, evals = result["losses"], result["evals"]
  assert set(losses) == {"1/host", "1/replicated", "4/host", "4/replicated",
                         "4/sharded"}
  for key in losses:
    n = key.split("/")[0]
    assert losses[key] == losses[f"{n}/host"], key  # bitwise: same floats
    assert evals[key] == evals[f"{n}/host"], key
    assert result["same_params"][key], key
    assert evals[key]["eval_count"] == 20
  assert len(set(losses["1/host"])) == 6  # the params did move


RESUME = {**TINY, "num_train_steps": 40, "checkpoint_every_steps": 10,
          "log_every_steps": 10, "deterministic": True}


def test_sigkill_and_resume_on_device_input_equals_a_host_input_run(
    tmp_path, compile_cache):
  """A run on device input, SIGKILLed and rerun, ends bitwise equal to an
  uninterrupted run on host input (both with config.deterministic)."""
  env = subprocess_env(compile_cache)
  straight = subprocess.Popen(
      train_cmd(tmp_path / "straight", {**RESUME, "input_on_device": False}),
      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  killed_dir = tmp_path / "killed"
  on_device = {**RESUME, "input_on_device": True}
  victim = subprocess.Popen(train_cmd(killed_dir, on_device), env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  kill_when(victim, lambda: committed_steps(killed_dir), "a checkpoint")
  at_kill = committed_steps(killed_dir)
  assert at_kill and max(at_kill) < 40
  resumed = subprocess.run(train_cmd(killed_dir, on_device), env=env,
                           capture_output=True, text=True, timeout=300,
                           check=False)
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  match = re.search(r"Resuming from the checkpoint at step (\d+)",
                    resumed.stderr)
  assert match and int(match.group(1)) >= min(at_kill)
  _, err = straight.communicate(timeout=300)
  assert straight.returncode == 0, err[-4000:]
  config = tiny_config(**RESUME)
  a, step_a = loop.load_checkpoint(config, tmp_path / "straight")
  b, step_b = loop.load_checkpoint(config, killed_dir)
  assert step_a == step_b == 40
  for (path, x), (_, y) in zip(all_leaves(a), all_leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=str(path))
  logs = [[(r["step"], r.get("train_loss"), r.get("eval_loss")) for r in
           metrics_io.read_metrics(d)] for d in (tmp_path / "straight",
                                                killed_dir)]
  assert logs[0] == logs[1]


DUMP_DEBUG_OPTIONS = """
    import glob, json, os
    from ovsw_jax.training import determinism
    determinism.configure(True)
    import jax
    jax.jit(lambda x: x + 1)(1.0)  # starts the backend and compiles
    text = "".join(open(p).read() for p in glob.glob(
        os.path.join({dump!r}, "*.debug_options")))
    print(json.dumps({{"debug_options": text,
                      "xla_flags": os.environ["XLA_FLAGS"]}}))
    """


def test_deterministic_flags_reach_xla(tmp_path, compile_cache):
  """XLA compiles with the flags: its dump of the debug options a module was
  compiled with lists them (a boolean option appears there only when on)."""
  env = subprocess_env(compile_cache)
  env["XLA_FLAGS"] += f" --xla_dump_to={tmp_path}"
  env["JAX_COMPILATION_CACHE_DIR"] = ""  # a cached executable is not dumped
  result = run_python(DUMP_DEBUG_OPTIONS.format(dump=str(tmp_path)), env)
  for name, value in determinism.DETERMINISTIC_FLAGS:
    assert f"{name}: {value}" in result["debug_options"], name
    assert f"--{name}={value}" in result["xla_flags"]
  assert "xla_force_host_platform_device_count" in result["xla_flags"]


def test_deterministic_refuses_a_started_backend(monkeypatch, tmp_path):
  jax.devices()  # The backend is running (without the flags).
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  with pytest.raises(ValueError, match="has started already.*configure"):
    loop.train_and_evaluate(tiny_config(deterministic=True), str(tmp_path))
  assert not os.listdir(tmp_path)  # refused before writing anything
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")
  with pytest.raises(ValueError, match="turns off.*deterministic_ops"):
    determinism.configure(True)
  # Set before the backend started: accepted, and nothing is added twice.
  monkeypatch.setenv("XLA_FLAGS", determinism.flag_line())
  determinism.configure(True)
  assert os.environ["XLA_FLAGS"] == determinism.flag_line()
  determinism.configure(False)
  assert os.environ["XLA_FLAGS"] == determinism.flag_line()
