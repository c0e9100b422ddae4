"""The quickstart over a few seeds: the range README's figure must lie in.

  python -m benchmarks.quickstart_seeds --seeds=0,1,2 \
      --out=benchmarks/results/quickstart_seeds.json

Runs ``train.py --config=configs/quickstart.py`` once per seed (each in its
own fresh workdir), reads the ``RESULT {...}`` line train.py prints, and
writes the per-seed eval top-1 and wall time with the machine's description.
`tests/test_quickstart_figure.py` checks README's quickstart figure against
this file's range.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

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


def machine() -> dict:
  """CPU model, AVX flags and core count (`lscpu`)."""
  info = {"platform": platform.platform(), "nproc": os.cpu_count()}
  try:
    text = subprocess.run(["lscpu"], capture_output=True, text=True,
                          check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return info
  for line in text.splitlines():
    if line.startswith("Model name:"):
      info["cpu"] = line.split(":", 1)[1].strip()
    if line.startswith("Flags:"):
      flags = line.split()
      info["avx2"] = "avx2" in flags
      info["avx512f"] = "avx512f" in flags
  return info


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--out",
                      default="benchmarks/results/quickstart_seeds.json")
  args = parser.parse_args(argv)
  runs = []
  for seed in (int(s) for s in args.seeds.split(",")):
    with tempfile.TemporaryDirectory() as workdir:
      runs.append({"seed": seed, **run_quickstart(seed, workdir)})
    print(json.dumps(runs[-1]), flush=True)
  top1 = [r["eval_top1"] for r in runs]
  result = {
      "command": "python -m benchmarks.quickstart_seeds --seeds="
                 f"{args.seeds}",
      "machine": machine(),
      "note": "shared machine: other jobs were running, so wall times are "
              "upper bounds",
      "runs": runs, "eval_top1_min": min(top1), "eval_top1_max": max(top1),
  }
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
