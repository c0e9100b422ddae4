"""README's deployment commands on the quickstart's kind of run (digits)."""

import json
import os
import subprocess
import sys

from ovsw_jax.training import loop
from ovsw_jax.training import workdir as workdir_lib
from tests.test_train import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _deploy(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "ovsw_jax.deploy", *args],
                        env=env, capture_output=True, text=True, cwd=REPO,
                        check=False, timeout=300)


def test_digits_run_exports_without_data_and_evaluates(tmp_path):
  config = tiny_config(dataset="digits", dataset_options={},
                       num_train_steps=2, checkpoint_every_steps=2)
  workdir = str(tmp_path / "run")
  result = loop.train_and_evaluate(config, workdir)
  # The exporting machine has no dataset files: the run's data_dir is gone.
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  with open(path) as f:
    saved = json.load(f)
  saved["data_dir"] = str(tmp_path / "absent")
  with open(path, "w") as f:
    json.dump(saved, f)

  out = str(tmp_path / "q.npz")
  proc = _deploy("export", f"--workdir={workdir}", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "orbax" not in proc.stderr  # library INFO logs stay quiet
  proc = _deploy("evaluate", f"--packed={out}", "--dataset=digits")
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluated = json.loads(proc.stdout.strip().splitlines()[-1])
  assert evaluated["count"] == result["eval_count"]
  assert abs(evaluated["top1"] - result["eval_top1"]) < 1e-9

  # A wrong dataset, a workdir without checkpoint, a missing workdir: one
  # line each, and a non-zero exit.
  empty = tmp_path / "empty"
  (empty / "checkpoints").mkdir(parents=True)
  with open(empty / workdir_lib.CONFIG_FILE, "w") as f:
    json.dump(saved, f)
  for args, message in [
      (("evaluate", f"--packed={out}", "--dataset=synthetic"),
       "this model expects 16x16x1 inputs"),
      (("export", f"--workdir={empty}", f"--out={out}"), "no checkpoint in"),
      (("export", f"--workdir={tmp_path / 'nope'}", f"--out={out}"),
       "does not exist"),
  ]:
    proc = _deploy(*args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
