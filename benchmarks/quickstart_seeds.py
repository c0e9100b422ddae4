"""The quickstart over seeds and device counts: the range README quotes.

  python -m benchmarks.quickstart_seeds --seeds=0,1,2,3,4 \
      --device_counts=1,4 --out=benchmarks/results/quickstart_seeds.json

Runs ``train.py --config=configs/quickstart.py`` once per (seed, device
count), each in its own fresh workdir and process (simulated CPU devices:
``XLA_FLAGS=--xla_force_host_platform_device_count=N``), one run at a time,
reads the ``RESULT {...}`` line train.py prints, and writes each run's eval
top-1, train.py's wall time (compilation included) and the whole process's
wall time (imports too), with the machine's description and the quickstart
config the runs used (`quickstart_config`). A BNN's accuracy moves with the
float rounding of the machine and the device count, so the range over both
is the figure. `tests/test_quickstart_figure.py` checks README's quickstart
row against this file, and that configs/quickstart.py still equals the
recorded config (a changed quickstart needs this sweep rerun).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_quickstart(seed: int, workdir: str, device_count: int = 1) -> dict:
  """train.py's RESULT line for the quickstart at ``seed`` on
  ``device_count`` simulated CPU devices, plus the process's wall time."""
  env = dict(os.environ, XLA_FLAGS=(
      f"{os.environ.get('XLA_FLAGS', '')} "
      f"--xla_force_host_platform_device_count={device_count}").strip())
  start = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "train.py"),
       f"--config={os.path.join(REPO, 'configs', 'quickstart.py')}",
       f"--workdir={workdir}", f"--config.seed={seed}",
       "--config.progress_bar=False"],
      capture_output=True, text=True, check=False, cwd=REPO, env=env)
  process_s = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f"seed {seed} on {device_count} devices failed: "
                       f"{proc.stderr[-2000:]}")
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return {**json.loads(line[len("RESULT "):]), "process_wall_s": process_s}


def quickstart_config() -> dict[str, Any]:
  """configs/quickstart.py's config as JSON (what config.json records)."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  return json.loads(quickstart.get_config().to_json_best_effort(
      sort_keys=True))


def config_sha256(config: dict[str, Any]) -> str:
  """A short fingerprint of a config's JSON (sorted keys)."""
  text = json.dumps(config, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2,3,4")
  parser.add_argument("--device_counts", default="1,4")
  parser.add_argument("--note", default="",
                      help="what else ran on the machine, for the record")
  parser.add_argument("--out",
                      default="benchmarks/results/quickstart_seeds.json")
  args = parser.parse_args(argv)
  from benchmarks.lib import machine  # pylint: disable=g-import-not-at-top
  config = quickstart_config()
  commit = machine.git_commit()
  load_start = os.getloadavg()
  runs = []
  for devices in (int(d) for d in args.device_counts.split(",")):
    for seed in (int(s) for s in args.seeds.split(",")):
      with tempfile.TemporaryDirectory() as workdir:
        runs.append({"seed": seed, "device_count": devices,
                     **run_quickstart(seed, workdir, devices)})
      print(json.dumps(runs[-1]), flush=True)
  top1 = [r["eval_top1"] for r in runs]
  result = {
      "command": "python -m benchmarks.quickstart_seeds --seeds="
                 f"{args.seeds} --device_counts={args.device_counts} "
                 f"--out={args.out}",
      "machine": machine.machine_info(),
      "note": args.note,
      "load_average_1_5_15min": {"start": load_start,
                                 "end": os.getloadavg()},
      "git_commit": commit,
      "config_sha256": config_sha256(config), "config": config,
      "runs": runs, "eval_top1_min": min(top1), "eval_top1_max": max(top1),
      "eval_top1_mean": sum(top1) / len(top1),
      "eval_top1_spread": max(top1) - min(top1),
  }
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
