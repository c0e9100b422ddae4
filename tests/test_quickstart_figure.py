"""README's quickstart figure against the seed sweep that backs it.

benchmarks/results/quickstart_seeds.json holds the quickstart's eval top-1 and
wall time per seed (`python -m benchmarks.quickstart_seeds`) and the
quickstart config those runs used. README's figure must be the sweep's seed-0
value and lie in its range, its time must be the sweep's, and the config must
still be configs/quickstart.py's: a changed quickstart fails here until the
sweep is rerun.
"""

import json
import os
import re

from benchmarks import quickstart_seeds
from ovsw_jax.training import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(REPO, "benchmarks", "results", "quickstart_seeds.json")
RERUN = ("rerun `python -m benchmarks.quickstart_seeds --seeds=0,1,2 "
         "--out=benchmarks/results/quickstart_seeds.json` and update README's "
         "quickstart figure and time from it")


def _sweep() -> dict:
  with open(SWEEP) as f:
    return json.load(f)


def _readme() -> str:
  with open(os.path.join(REPO, "README.md")) as f:
    return f.read()


def _quickstart_row() -> str:
  rows = [l for l in _readme().splitlines() if l.startswith("| Quickstart:")]
  assert len(rows) == 1, "README's Results table needs one Quickstart row"
  return rows[0]


def test_sweep_ran_the_current_quickstart_config():
  sweep = _sweep()
  recorded = sweep["config"]
  assert quickstart_seeds.config_sha256(recorded) == sweep["config_sha256"]
  current = quickstart_seeds.quickstart_config()
  # A key added to the schema since the sweep passes only at its default
  # (a new feature left off, a new method's field): the quickstart sets it
  # to nothing else. A key the sweep recorded must hold the recorded value.
  defaults = json.loads(config_lib.default_config().to_json_best_effort(
      sort_keys=True))
  added = {k for k in set(current) - set(recorded)
           if current[k] == defaults.get(k, "<absent>")}
  changed = sorted(k for k in (set(recorded) | set(current)) - added
                   if recorded.get(k, "<absent>") != current.get(k, "<absent>"))
  assert not changed, (
      f"configs/quickstart.py differs from the config the quickstart sweep "
      f"ran (fields {changed}): {RERUN}")


def test_readme_figure_and_time_are_the_sweeps():
  sweep = _sweep()
  runs = {r["seed"]: r for r in sweep["runs"]}
  assert sorted(runs) == [0, 1, 2]
  top1 = [100 * r["eval_top1"] for r in runs.values()]
  wall = [r["wall_time_s"] for r in runs.values()]
  assert all(r["eval_count"] == 297 for r in runs.values())  # digits' eval
  row = _quickstart_row()
  m = re.search(r"\*\*(\d+\.\d)%\*\* eval top-1 \(seed 0; seeds 0-2: "
                r"(\d+\.\d)-(\d+\.\d)%", row)
  assert m, f"no '**X%** eval top-1 (seed 0; seeds 0-2: A-B%' in {row!r}"
  figure, low, high = (float(g) for g in m.groups())
  msg = ("README's quickstart row disagrees with "
         f"benchmarks/results/quickstart_seeds.json: {RERUN}")
  assert figure == round(100 * runs[0]["eval_top1"], 1), msg
  assert (low, high) == (round(min(top1), 1), round(max(top1), 1)), msg
  assert low <= figure <= high
  m = re.search(r"(\d+)-(\d+) s wall", row)
  assert m, f"no 'A-B s wall' in {row!r}"
  assert (int(m.group(1)), int(m.group(2))) == (
      round(min(wall)), round(max(wall))), msg
  # The time is stated once, here: the install section points at this row.
  install = _readme().split("## Install and run", 1)[1].split("\n## ", 1)[0]
  assert not re.search(r"\d+ s\b|minute", install), (
      "README's install section states a quickstart time; point at Results")


def test_readme_does_not_claim_ci_runs_the_quickstart():
  with open(os.path.join(REPO, ".ci", "run")) as f:
    ci = f.read()
  assert "quickstart" not in ci
  assert ("`.ci/run` runs the second line in a fresh virtualenv; it does not "
          "train the quickstart") in " ".join(_readme().split())
