"""train.py as a newcomer meets it: nested overrides, RESULT line, errors."""

import json
import os
import shutil
import subprocess

from ovsw_jax import data
from tests.test_train import TINY
from tests.test_train import subprocess_env
from tests.test_train import train_cmd


def test_synthetic_default_eval_set_is_small():
  assert data.get_dataset_info("synthetic").num_eval == 500


def test_nested_dict_overrides_result_line_and_restart_refusal(
    tmp_path, compile_cache):
  overrides = {k: v for k, v in TINY.items() if k != "dataset_options"}
  overrides["num_train_steps"] = 4
  nested = ["--config.dataset_options.image_shape=(8, 8, 3)",
            "--config.dataset_options.num_train=64",
            "--config.dataset_options.num_eval=12"]
  workdir = tmp_path / "run"
  cmd = train_cmd(workdir, overrides, nested)
  env = subprocess_env(compile_cache)
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert len(lines) == 1
  result = json.loads(lines[0][len("RESULT "):])
  assert result["eval_count"] == 12 and result["step"] == 4
  assert 0.0 <= result["eval_top1"] <= 1.0 and result["wall_time_s"] > 0
  with open(workdir / "config.json") as f:
    assert json.load(f)["dataset_options"] == {
        "image_shape": [8, 8, 3], "num_train": 64, "num_eval": 12}

  # The checkpoints are lost, metrics.jsonl is not: one line, exit 1.
  shutil.rmtree(workdir / "checkpoints")
  before = (workdir / "metrics.jsonl").read_text()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "restart_from_scratch=True" in last
  assert (workdir / "metrics.jsonl").read_text() == before
  assert not os.path.exists(workdir / "checkpoints" / "4")
