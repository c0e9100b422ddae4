"""README's quickstart figure against the sweep that backs it.

benchmarks/results/quickstart_seeds.json holds the quickstart's eval top-1
and wall times per (seed, device count) (`python -m
benchmarks.quickstart_seeds`) and the quickstart config those runs used.
README's row (and the results page's) must quote the sweep's range, the sweep
must meet the quickstart's targets (at least 90% on every run, a spread of at
most 3 points), and the config must still be configs/quickstart.py's: a
changed quickstart fails here until the sweep is rerun.
"""

import json
import os
import re

from benchmarks import quickstart_seeds
from ovsw_jax.training import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = os.path.join(REPO, "benchmarks", "results", "quickstart_seeds.json")
RERUN = ("rerun `python -m benchmarks.quickstart_seeds --seeds=0,1,2,3,4 "
         "--device_counts=1,4 --out=benchmarks/results/quickstart_seeds.json` "
         "and update the quickstart rows of README and docs/results.md")
PAGES = ("README.md", os.path.join("docs", "results.md"))


def _sweep() -> dict:
  with open(SWEEP) as f:
    return json.load(f)


def _read(page: str) -> str:
  with open(os.path.join(REPO, page)) as f:
    return f.read()


def _quickstart_row(page: str) -> str:
  rows = [l for l in _read(page).splitlines() if l.startswith("| Quickstart:")]
  assert len(rows) == 1, f"{page}'s results table needs one Quickstart row"
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


def test_sweep_covers_seeds_and_device_counts_and_meets_its_targets():
  runs = _sweep()["runs"]
  assert sorted((r["seed"], r["device_count"]) for r in runs) == sorted(
      (s, d) for s in range(5) for d in (1, 4))
  assert all(r["eval_count"] == 297 for r in runs)  # digits' whole eval
  top1 = [100 * r["eval_top1"] for r in runs]
  assert min(top1) >= 90, f"a quickstart run fell below 90%: {top1}"
  assert max(top1) - min(top1) <= 3, f"spread over 3 points: {top1}"


def test_pages_quote_the_sweep():
  runs = _sweep()["runs"]
  top1 = [100 * r["eval_top1"] for r in runs]
  wall = [r["process_wall_s"] for r in runs]
  for page in PAGES:
    row = _quickstart_row(page)
    msg = f"{page}'s quickstart row disagrees with the sweep: {RERUN}"
    m = re.search(r"\*\*(\d+\.\d)-(\d+\.\d)%\*\* eval top-1 over seeds 0-4 "
                  r"on 1 and 4 devices \(mean (\d+\.\d)%", row)
    assert m, f"no '**A-B%** eval top-1 over seeds 0-4 on 1 and 4 devices " \
        f"(mean M%' in {page}'s row {row!r}"
    low, high, mean = (float(g) for g in m.groups())
    assert (low, high) == (round(min(top1), 1), round(max(top1), 1)), msg
    assert mean == round(sum(top1) / len(top1), 1), msg
    m = re.search(r"(\d+)-(\d+) s wall", row)
    assert m, f"no 'A-B s wall' in {page}'s row {row!r}"
    assert (int(m.group(1)), int(m.group(2))) == (
        round(min(wall)), round(max(wall))), msg
  # The time is stated once, in Results: the install section points there.
  install = _read("README.md").split("## Install and run", 1)[1].split(
      "\n## ", 1)[0]
  assert not re.search(r"\d+ s\b|minute", install), (
      "README's install section states a quickstart time; point at Results")


def test_readme_does_not_claim_ci_runs_the_quickstart():
  with open(os.path.join(REPO, ".ci", "run")) as f:
    ci = f.read()
  assert "quickstart" not in ci
  assert ("`.ci/run` runs the second line in a fresh virtualenv; it does not "
          "train the quickstart") in " ".join(_read("README.md").split())
