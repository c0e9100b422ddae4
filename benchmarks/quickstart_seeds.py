"""The quickstart over a few seeds: the range README's figure must lie in.

  python -m benchmarks.quickstart_seeds --seeds=0,1,2 \
      --out=benchmarks/results/quickstart_seeds.json

Runs ``train.py --config=configs/quickstart.py`` once per seed (each in its
own fresh workdir), reads the ``RESULT {...}`` line train.py prints, and
writes the per-seed eval top-1 and wall time with the machine's description
and the quickstart config the runs used (`quickstart_config`).
`tests/test_quickstart_figure.py` checks README's quickstart figure against
this file's range, and that configs/quickstart.py still equals the recorded
config (a changed quickstart needs this sweep rerun).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quickstart(seed: int, workdir: str) -> dict:
  """train.py's RESULT line for the quickstart at ``seed``."""
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "train.py"),
       f"--config={os.path.join(REPO, 'configs', 'quickstart.py')}",
       f"--workdir={workdir}", f"--config.seed={seed}",
       "--config.progress_bar=False"],
      capture_output=True, text=True, check=False, cwd=REPO)
  if proc.returncode != 0:
    raise RuntimeError(f"seed {seed} failed: {proc.stderr[-2000:]}")
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def quickstart_config() -> dict[str, Any]:
  """configs/quickstart.py's config as JSON (what config.json records)."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  return json.loads(quickstart.get_config().to_json_best_effort(
      sort_keys=True))


def config_sha256(config: dict[str, Any]) -> str:
  """A short fingerprint of a config's JSON (sorted keys)."""
  text = json.dumps(config, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def git_commit() -> str:
  """The checkout's HEAD, with '+dirty' if tracked files differ from it."""
  def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True,
                          check=False, cwd=REPO).stdout.strip()
  return git("rev-parse", "HEAD") + (
      "+dirty" if git("status", "--porcelain", "--untracked-files=no")
      else "")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--out",
                      default="benchmarks/results/quickstart_seeds.json")
  args = parser.parse_args(argv)
  from benchmarks.lib import machine  # pylint: disable=g-import-not-at-top
  config = quickstart_config()
  commit = git_commit()
  load_start = os.getloadavg()
  runs = []
  for seed in (int(s) for s in args.seeds.split(",")):
    with tempfile.TemporaryDirectory() as workdir:
      runs.append({"seed": seed, **run_quickstart(seed, workdir)})
    print(json.dumps(runs[-1]), flush=True)
  top1 = [r["eval_top1"] for r in runs]
  result = {
      "command": "python -m benchmarks.quickstart_seeds --seeds="
                 f"{args.seeds} --out={args.out}",
      "machine": machine.machine_info(),
      "note": "shared machine: other jobs were running, so wall times are "
              "upper bounds",
      "load_average_1_5_15min": {"start": load_start,
                                 "end": os.getloadavg()},
      "git_commit": commit,
      "config_sha256": config_sha256(config), "config": config,
      "runs": runs, "eval_top1_min": min(top1), "eval_top1_max": max(top1),
      "eval_top1_mean": sum(top1) / len(top1),
  }
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
