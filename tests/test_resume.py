"""Resuming: checkpoint cadence, a run killed before its first checkpoint,
the config guard (training/resume_guard.py) and a finished run's rerun."""

import json
import os
import re
import subprocess

import numpy as np
import pytest

from configs import default
from ovsw_jax.training import config as config_lib
from ovsw_jax.training import loop
from ovsw_jax.training import metrics_io
from ovsw_jax.training import restart
from ovsw_jax.training import resume_guard
from ovsw_jax.training import schedules
from ovsw_jax.training import tensorboard
from ovsw_jax.training import workdir as workdir_lib
from killed_runs import committed_steps
from killed_runs import kill_when
from test_train import all_leaves
from test_train import compile_cache  # pylint: disable=unused-import  (a fixture)
from test_train import info_from_libraries
from test_train import load_recipe
from test_train import subprocess_env
from test_train import tiny_config
from test_train import train_cmd


def _quickstart_like(**overrides):
  """Quickstart's cadence: 11 steps an epoch, 20 epochs, an eval every 5."""
  config = default.get_config()
  config.update({"num_epochs": 20, "eval_every_epochs": 5,
                 "log_every_steps": 20, "checkpoint_every_steps": 0,
                 **overrides})
  return config


def test_checkpoint_every_steps_0_saves_at_each_eval_and_the_end():
  config = _quickstart_like()
  plan = schedules.plan_steps(config, 11, 0, 220)
  assert plan.evals == plan.saves == {55, 110, 165, 220}
  # Resumed at step 110: the rest of them.
  assert schedules.plan_steps(config, 11, 110, 220).saves == {165, 220}
  config.eval_every_epochs = 0  # Only the final eval, and its save.
  assert schedules.plan_steps(config, 11, 0, 220).saves == {220}


def _earlier_run(workdir, config, last_step, steps_per_epoch=11):
  """A workdir as a run of ``config`` leaves it when killed after writing
  its records up to ``last_step`` (every log step, evals at their steps)."""
  workdir_lib.write_config(config, workdir)
  plan = schedules.plan_steps(config, steps_per_epoch, 0, 220)
  writer = metrics_io.MetricsWriter(workdir)
  for step in sorted(s for s in plan.log if s <= last_step):
    record = {"epoch": step / steps_per_epoch, "train_loss": 1.0 / step}
    if step in plan.evals:
      record["eval_top1"] = 0.5
    writer.write(step, record)
  writer.close()
  return metrics_io.read_metrics(workdir)


def _tree(folder):
  return {os.path.relpath(os.path.join(root, name), folder):
          open(os.path.join(root, name), "rb").read()
          for root, _, names in os.walk(folder) for name in names}


def test_a_run_killed_before_its_first_checkpoint_restarts_cleanly(tmp_path):
  workdir = str(tmp_path)
  # checkpoint_every_steps=60: its first save would have been at step 60.
  earlier = _quickstart_like(checkpoint_every_steps=60)
  records = _earlier_run(workdir, earlier, last_step=55)
  assert restart.unsaved_run(workdir) == (55, 60)
  before = _tree(os.path.join(workdir, "metrics"))
  config_text = open(os.path.join(workdir, "config.json")).read()
  restart.check_fresh_start(workdir, restart_from_scratch=False)
  # Nothing is left in the way of the new run, and nothing is lost.
  for name in ("metrics", "tensorboard", "config.json"):
    assert not os.path.exists(os.path.join(workdir, name)), name
  aside = os.path.join(workdir, "metrics.before_restart")
  assert _tree(aside) == before
  assert open(os.path.join(workdir, "config.json.before_restart")).read() == (
      config_text)
  assert os.path.isdir(os.path.join(workdir, "tensorboard.before_restart"))
  assert records[-1]["step"] == 55


def _killed_before_first_flush(workdir):
  """A workdir as a run leaves it when killed before its metric writer's
  first flush (at the first eval or save, or after 30 s): config.json, an
  empty metrics/ and TensorBoard events; the files' contents."""
  workdir_lib.write_config(tiny_config(), workdir)
  os.makedirs(os.path.join(workdir, "metrics"))
  events = tensorboard.create_writer(workdir)
  events.write(20, {"train_loss": 1.5})
  events.close()
  return _tree(workdir)


def test_a_run_killed_before_its_first_records_restarts_cleanly(tmp_path,
                                                                 caplog):
  # The rerun must not write its curves into the dead run's events.
  workdir = str(tmp_path)
  before = _killed_before_first_flush(workdir)
  restart.check_fresh_start(workdir, restart_from_scratch=False)
  assert "stopped before writing its first records" in caplog.text
  assert sorted(os.listdir(workdir)) == [
      "config.json.before_restart", "metrics.before_restart",
      "tensorboard.before_restart"]
  assert {k.replace(".before_restart", ""): v
          for k, v in _tree(workdir).items()} == before
  # Events without a config.json are not a training run's (an eval_only
  # attempt writes events, never config.json): left alone, no verdict.
  workdir = str(tmp_path / "eval_only")
  tensorboard.create_writer(workdir).close()
  before = _tree(workdir)
  caplog.clear()
  restart.check_fresh_start(workdir, restart_from_scratch=False)
  assert _tree(workdir) == before and not caplog.text


def test_two_processes_take_process_0s_restart_verdict(tmp_path,
                                                       compile_cache):
  # Process 0 alone decides and moves; process 1 takes its verdict after
  # the moves: it neither warns nor reads a half-moved workdir, and a
  # refusal stops both (no process left waiting at a collective).
  from test_preemption import _launch_pair  # pylint: disable=g-import-not-at-top
  from test_preemption import PAIR  # pylint: disable=g-import-not-at-top
  killed = tmp_path / "killed"
  before = _killed_before_first_flush(str(killed))
  lost = tmp_path / "lost"
  os.makedirs(lost / "checkpoints" / "5.unreadable")
  outs = {}
  for name in ("killed", "lost"):
    procs = _launch_pair(tmp_path / name, compile_cache)
    outs[name] = [(p.communicate(timeout=400)[0], p.returncode)
                  for p in procs]
  (out0, rc0), (out1, rc1) = outs["killed"]
  assert rc0 == rc1 == 0, out0[-3000:] + out1[-3000:]
  assert "stopped before writing its first records" in out0
  assert "stopped before" not in out1
  aside = killed / "tensorboard.before_restart"
  assert _tree(str(aside)) == {os.path.relpath(k, "tensorboard"): v
                               for k, v in before.items()
                               if k.startswith("tensorboard")}
  assert metrics_io.read_metrics(str(killed))[-1]["step"] == PAIR[
      "num_train_steps"]
  (out0, rc0), (out1, rc1) = outs["lost"]
  assert rc0 == rc1 == 1, out0[-3000:] + out1[-3000:]
  assert "which had saved checkpoints; refusing" in out0
  assert "process 0 refused to restart at step 0" in out1
  assert sorted(os.listdir(lost)) == ["checkpoints"]


def test_a_run_whose_checkpoints_are_gone_still_needs_the_flag(tmp_path):
  workdir = str(tmp_path)
  # Its records reach step 60, past its first save (after the eval at step
  # 55), but checkpoints/ holds nothing: they were lost.
  _earlier_run(workdir, _quickstart_like(), last_step=60)
  assert restart.unsaved_run(workdir) is None
  before = _tree(workdir)
  with pytest.raises(restart.RestartRefusedError,
                     match=r"which had saved checkpoints; refusing .*"
                     r"--config.restart_from_scratch=True"):
    restart.check_fresh_start(workdir, restart_from_scratch=False)
  assert _tree(workdir) == before
  restart.check_fresh_start(workdir, restart_from_scratch=True)
  assert not os.path.exists(os.path.join(workdir, "metrics"))
  assert _tree(os.path.join(workdir, "metrics.before_restart")) == {
      os.path.relpath(k, "metrics"): v for k, v in before.items()
      if k.startswith("metrics" + os.sep)}


def test_diff_splits_guarded_from_neutral_keys():
  saved = json.loads(tiny_config().to_json_best_effort())
  del saved["allow_config_change"]  # A run of a version without it.
  saved["a_removed_key"] = 1  # Cannot change training now: ignored.
  new = tiny_config(learning_rate=0.05, log_every_steps=1, num_epochs=30,
                    model_options={"stage_sizes": (1, 1, 2)},
                    allow_config_change=True)
  changes = resume_guard.diff(saved, new)
  # num_epochs: ignored while num_train_steps sets the length on both sides.
  assert changes.guarded == {"learning_rate": (0.1, 0.05),
                             "model_options.stage_sizes": ([1, 1, 1],
                                                           [1, 1, 2])}
  assert changes.neutral == {"allow_config_change": (False, True),
                             "log_every_steps": (5, 1)}
  assert resume_guard.describe(changes.guarded) == (
      "learning_rate 0.1 -> 0.05, model_options.stage_sizes [1, 1, 1] -> "
      "[1, 1, 2]")
  assert not resume_guard.diff(saved, tiny_config()).guarded
  saved["num_train_steps"] = -1
  assert "num_epochs" in resume_guard.diff(saved, new).guarded
  # Every neutral key is a config key: a misspelt one would guard nothing.
  assert config_lib.RESUME_NEUTRAL_KEYS <= config_lib.CONFIG_KEYS


def test_the_config_guard_and_a_finished_runs_rerun(tmp_path, caplog):
  workdir = str(tmp_path)
  # 2 and then 4 steps: the programs test_restart and test_train compile.
  config = tiny_config(num_train_steps=2, checkpoint_every_steps=2)
  first = loop.train_and_evaluate(config, workdir)
  records = metrics_io.read_metrics(workdir)
  config_json = open(os.path.join(workdir, "config.json")).read()
  checkpoints = _tree(os.path.join(workdir, "checkpoints"))

  # Finished: said so, nothing evaluated or written again.
  again = loop.train_and_evaluate(
      tiny_config(num_train_steps=2, checkpoint_every_steps=1,
                  log_every_steps=1), workdir)
  assert again["finished"] and again["step"] == 2
  assert again["eval_top1"] == first["eval_top1"]
  assert metrics_io.read_metrics(workdir) == records
  assert open(os.path.join(workdir, "config.json")).read() == config_json

  # Changed keys that change training: one line, before any restore (the
  # new model would not fit the checkpoint: it would be set aside).
  changed = tiny_config(num_train_steps=4, learning_rate=0.05,
                        model_options={"stage_sizes": (1, 1, 2)})
  with pytest.raises(resume_guard.ConfigChangedError) as error:
    loop.train_and_evaluate(changed, workdir)
  message = str(error.value)
  assert "\n" not in message
  assert ("in keys that change training: learning_rate 0.1 -> 0.05, "
          "model_options.stage_sizes [1, 1, 1] -> [1, 1, 2], "
          "num_train_steps 2 -> 4." in message)
  assert "checkpoint at step 2" in message
  assert "--config.allow_config_change=True" in message
  assert f"--config.init_from={workdir}" in message  # for a model change
  assert _tree(os.path.join(workdir, "checkpoints")) == checkpoints
  assert open(os.path.join(workdir, "config.json")).read() == config_json
  assert resume_guard.read_history(workdir) == []

  # Allowed, but another model: the checkpoint cannot hold it. One line
  # naming init_from; no warning per checkpoint; nothing set aside.
  caplog.clear()
  other = tiny_config(num_train_steps=2, allow_config_change=True,
                      model_options={"stage_sizes": (1, 1, 2)})
  with pytest.raises(ValueError, match=(
      r"cannot be read with the changed config \(model_options.stage_sizes "
      r"\[1, 1, 1\] -> \[1, 1, 2\]\): step 2 \(.*\)\. Keep those keys .*"
      r"--config.init_from=")) as error:
    loop.train_and_evaluate(other, workdir)
  assert "\n" not in str(error.value)
  assert "unreadable" not in caplog.text
  assert _tree(os.path.join(workdir, "checkpoints")) == checkpoints
  assert resume_guard.read_history(workdir) == []

  # Allowed: trains on, with the change recorded.
  longer = tiny_config(num_train_steps=4, checkpoint_every_steps=2,
                       allow_config_change=True)
  result = loop.train_and_evaluate(longer, workdir)
  assert result["step"] == 4 and "finished" not in result
  [entry] = resume_guard.read_history(workdir)
  assert entry["step"] == 2 and entry["guarded"] == ["num_train_steps"]
  assert entry["changes"] == {"num_train_steps": [2, 4],
                              "allow_config_change": [False, True]}
  assert entry["time"].endswith("+00:00")
  saved = workdir_lib.read_config(workdir)
  assert saved.num_train_steps == 4 and saved.allow_config_change
  assert [r["step"] for r in metrics_io.read_metrics(workdir)
          if "eval_top1" in r] == [2, 4]
  assert committed_steps(workdir) == [2, 4]

  # The same command without the flag: config.json holds the change now.
  longer.allow_config_change = False
  assert loop.train_and_evaluate(longer, workdir)["finished"]


# The quickstart's recipe (digits) at a test's size: 10 steps an epoch, an
# eval and a checkpoint after each, 20 steps.
QUICK = {"model_options": {"stage_sizes": (1, 1, 1)}, "batch_size": 150,
         "num_train_steps": 20, "warmup_epochs": 1, "eval_every_epochs": 1,
         "checkpoint_every_steps": 0, "log_every_steps": 5,
         "progress_bar": False, "prefetch": 0}


@pytest.mark.accelerator  # bitwise resume on whatever backend runs it
def test_quickstart_killed_between_evals_resumes_bitwise(tmp_path,
                                                         compile_cache):
  env = subprocess_env(compile_cache)
  # One after the other: the later runs find the programs compiled.
  straight = subprocess.run(train_cmd(tmp_path / "straight", QUICK),
                            env=env, capture_output=True, text=True,
                            timeout=300, check=False)
  assert straight.returncode == 0, straight.stderr[-4000:]
  workdir = tmp_path / "killed"
  # 1. Killed between two evals, once a checkpoint is saved.
  victim = subprocess.Popen(train_cmd(workdir, QUICK), env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  kill_when(victim, lambda: committed_steps(workdir), "a checkpoint")
  at_kill = committed_steps(workdir)
  assert max(at_kill) < 20
  # 2. Resumed from its checkpoint, it ends as the straight run, bitwise.
  resumed = subprocess.run(train_cmd(workdir, QUICK), env=env,
                           capture_output=True, text=True, timeout=300,
                           check=False)
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  match = re.search(r"Resuming from the checkpoint at step (\d+)",
                    resumed.stderr)
  assert match and int(match.group(1)) in at_kill
  assert info_from_libraries(resumed.stderr) == set()  # restore + saves
  config = load_recipe("quickstart")
  config.update(QUICK)
  a, _ = loop.load_checkpoint(config, str(tmp_path / "straight"))
  b, step = loop.load_checkpoint(config, str(workdir))
  assert step == 20
  for (path, x), (_, y) in zip(all_leaves(a), all_leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=str(path))
  # The metrics were rewound to the checkpoint: they read as one run.
  records = metrics_io.read_metrics(str(workdir))
  assert [(r["step"], r.get("train_loss"), r.get("eval_top1"))
          for r in records] == [
              (r["step"], r.get("train_loss"), r.get("eval_top1"))
              for r in metrics_io.read_metrics(str(tmp_path / "straight"))]
  # 3. The same command again: finished, exit 0, no second eval record.
  again = subprocess.run(train_cmd(workdir, QUICK), env=env,
                         capture_output=True, text=True, timeout=300,
                         check=False)
  assert again.returncode == 0, again.stderr[-4000:]
  assert "is finished" in again.stderr
  assert "Resuming" not in again.stderr  # nothing is resumed
  assert json.loads(again.stdout.split("RESULT ", 1)[1])["finished"]
  assert metrics_io.read_metrics(str(workdir)) == records
  # 4. A changed learning rate: one line, exit 1.
  lr = config.learning_rate
  changed = subprocess.run(
      train_cmd(workdir, {**QUICK, "learning_rate": lr * 2}), env=env,
      capture_output=True, text=True, timeout=300, check=False)
  assert changed.returncode == 1
  last = changed.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and (
      f"learning_rate {lr!r} -> {lr * 2!r}" in last), changed.stderr[-2000:]
