"""What a newcomer meets on train.py's command line, and synthetic's defaults.

The override tests go through train.py's real flag parsing under
``absl.app.run`` (config_flags reads ``sys.argv``, so only a fresh process
parses as a user's command does). None of them trains.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

from ovsw_jax import data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = ["train.py", f"--config={os.path.join(REPO, 'configs', 'quickstart.py')}",
              "--workdir=/nonexistent/ovsw_cli_test"]

# train.py's own flag parser under app.run; main prints the parsed config.
PARSED_CONFIG = """
    import json, sys
    import train
    from absl import app
    sys.argv = {argv!r}
    app.run(lambda argv: print(train.FLAGS.config.to_json(sort_keys=True)),
            flags_parser=train.parse_flags)
"""


def _env():
  return {**os.environ, "JAX_PLATFORMS": "cpu",
          "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(args, timeout=120):
  return subprocess.run(args, capture_output=True, text=True, cwd=REPO,
                        env=_env(), timeout=timeout, check=False)


def test_synthetic_default_eval_set_is_small():
  assert data.get_dataset_info("synthetic").num_eval == 500


def test_nested_dict_overrides_reach_the_config():
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  argv = QUICKSTART + [
      "--config.dataset_options={'augment': False}",
      "--config.dataset_options.num_eval=64",
      "--config.model_options.stage_sizes=(1, 1, 1)",
      "--config.model_options.learnable_scale",
      "--config.model_options.weight_estimator=ste",
      "--config.batch_size=64"]
  proc = _run([sys.executable, "-c",
               textwrap.dedent(PARSED_CONFIG.format(argv=argv))])
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["dataset_options"] == {"augment": False, "num_eval": 64}
  assert got["model_options"] == {"stage_sizes": [1, 1, 1],
                                  "learnable_scale": True,
                                  "weight_estimator": "ste"}
  want = json.loads(quickstart.get_config().to_json(sort_keys=True))
  want.update(batch_size=64, dataset_options=got["dataset_options"],
              model_options=got["model_options"])
  assert got == want  # nothing else changed


def test_bad_nested_overrides_are_one_line():
  # A key the dataset does not take: named, with the valid ones (the dataset
  # checks its options before loading anything).
  proc = _run([sys.executable, *QUICKSTART, "--config.dataset_options.nope=1"])
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert lines[-1] == ("error: Unknown option(s) ['nope'] for dataset "
                       "'digits'; valid options: ['augment', 'num_eval'].")
  assert "Traceback" not in proc.stderr
  # A key inside a field that is not a dict: refused while parsing.
  proc = _run([sys.executable, *QUICKSTART, "--config.seed.x=1"])
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --config.seed.x: config.seed is a single value, not a dict; "
      "set it with --config.seed=VALUE"]


def test_no_backend_probe_lines_unless_verbosity_asks(tmp_path):
  # JAX probes every backend it knows when JAX_PLATFORMS is unset, and logs
  # each it lacks at INFO ("Unable to initialize backend 'tpu'"). eval_only
  # in an empty workdir starts JAX, then stops (no checkpoint).
  env = {k: v for k, v in _env().items() if k != "JAX_PLATFORMS"}
  args = [sys.executable, "train.py",
          f"--config={os.path.join(REPO, 'configs', 'quickstart.py')}",
          f"--workdir={tmp_path}", "--config.eval_only=True"]
  runs = [subprocess.run(args + extra, capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=120, check=False)
          for extra in ([], ["--verbosity=0"])]
  quiet, verbose = runs
  assert quiet.returncode == verbose.returncode == 1
  assert quiet.stderr.strip().splitlines() == [
      f"error: no checkpoint in {tmp_path}/checkpoints; train first (same "
      "--workdir, eval_only=False)"], quiet.stderr[-2000:]
  # The lines are there to be asked for: without libtpu the TPU probe fails.
  if importlib.util.find_spec("libtpu") is None:
    assert "Unable to initialize backend 'tpu'" in verbose.stderr
