"""Fuzzing of the native code under AddressSanitizer + UBSan, summarised.

  python -m benchmarks.fuzz_native [--jpeg=20000] [--packed=600] \
      [--kernel=300] [--seed=0] [--seconds=1e9] [--build_dir=DIR] \
      [--out=benchmarks/results/fuzz_native.json]

Builds both native libraries with ``OVSW_SANITIZE=1`` into a folder of
their own (`benchmarks.lib.sanitized_build`; ``--build_dir`` reuses one),
then runs the three drivers in one sanitized process
(`benchmarks.lib.fuzz_main`): the JPEG decoder on mutated, truncated and
spliced files of several encoders with random and bad boxes and sizes
(`fuzz_jpeg`), the packed-file loader and both inference backends on damaged
files (`fuzz_packed`), and the kernel's FFI entry on random and bad
geometries (`fuzz_kernel`). The summary holds the inputs tried, the
outcomes (refusals by kind), the counts of what must never happen
(``failures``, all 0 on a clean run), any sanitizer report, the command,
the git commit it ran at (``+dirty``: with uncommitted changes) and the
machine (with the load average at the start and the end).
A crash or hang names the input to replay (``--seed``, driver, index).
The CI test (tests/test_native_fuzz.py) is a short run of the same.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

from benchmarks.lib import fuzz_jpeg
from benchmarks.lib import fuzz_kernel
from benchmarks.lib import fuzz_packed
from benchmarks.lib import machine
from benchmarks.lib import results
from benchmarks.lib import sanitized_build

FAILURES = {"jpeg": fuzz_jpeg.FAILURES, "packed": fuzz_packed.FAILURES,
            "kernel": fuzz_kernel.FAILURES}


def fuzz(build_lib: str | os.PathLike[str], workdir: str, *, seed: int,
         jpeg: int, packed: int, kernel: int, seconds: float = 1e9,
         timeout: float = 3600.0) -> dict[str, Any]:
  """Runs the drivers under the sanitizers; returns their summary.

  Returns:
    ``{'seed', 'jpeg', 'packed', 'kernel'}`` (each driver's counts), plus
    ``'returncode'``, ``'sanitizer_reports'`` (lines), ``'failures'``
    (driver -> what must never happen -> count, only the non-zero ones) and,
    when the process died, ``'died_at'`` (the input it was running) and its
    stderr's tail.
  """
  os.makedirs(workdir, exist_ok=True)
  files = fuzz_packed.write_base_files(workdir) if packed else []
  out, progress = Path(workdir, "counts.json"), Path(workdir, "progress")
  args = ["--seed", str(seed), "--jpeg", str(jpeg), "--packed", str(packed),
          "--kernel", str(kernel), "--seconds", str(seconds), "--out",
          str(out), "--progress", str(progress), "--packed_files", *files]
  start = time.time()
  proc = sanitized_build.run(build_lib, "benchmarks.lib.fuzz_main", args,
                             timeout)
  summary = json.loads(out.read_text()) if out.exists() else {"seed": seed}
  summary.update(returncode=proc.returncode,
                 seconds=round(time.time() - start, 1),
                 sanitizer_reports=sanitized_build.reports(proc.stderr))
  if proc.returncode != 0:
    summary["died_at"] = progress.read_text().strip() if progress.exists() \
        else None
    summary["stderr_tail"] = proc.stderr[-4000:]
  summary["failures"] = {
      d: {f: summary[d].get(f, 0) for f in names if summary[d].get(f, 0)}
      for d, names in FAILURES.items() if d in summary}
  summary["failures"] = {d: f for d, f in summary["failures"].items() if f}
  return summary


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--jpeg", type=int, default=20000)
  parser.add_argument("--packed", type=int, default=600)
  parser.add_argument("--kernel", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--seconds", type=float, default=1e9,
                      help="per driver: stop starting inputs after this")
  parser.add_argument("--build_dir", default=None,
                      help="a sanitizer build to reuse (its --build-lib)")
  parser.add_argument("--out", default=None)
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  reason = sanitized_build.unavailable_reason()
  if reason:
    raise SystemExit(reason)
  provenance = {
      "command": machine.command_line("benchmarks.fuzz_native", argv),
      "git_commit": machine.git_commit()}
  with tempfile.TemporaryDirectory() as tmp:
    start = time.time()
    build_lib = args.build_dir or sanitized_build.build(tmp)
    build_seconds = time.time() - start
    load_start = os.getloadavg()
    summary = fuzz(build_lib, os.path.join(tmp, "run"), seed=args.seed,
                   jpeg=args.jpeg, packed=args.packed, kernel=args.kernel,
                   seconds=args.seconds)
  summary["build_seconds"] = round(build_seconds, 1)
  summary["sanitizers"] = "address,undefined (OVSW_SANITIZE=1, gcc)"
  info = machine.machine_info()
  info.update(loadavg_start=list(load_start), loadavg_end=list(
      os.getloadavg()))
  summary["machine"] = info
  summary = {**provenance, **summary}
  results.write_json(summary, args.out)
  clean = (summary["returncode"] == 0 and not summary["sanitizer_reports"]
           and not summary["failures"])
  print(f"{'clean' if clean else 'NOT CLEAN'}: "
        + ", ".join(f"{d} {summary[d]['inputs']} inputs"
                    for d in FAILURES if d in summary), file=sys.stderr)
  if not clean:
    raise SystemExit(1)
  return summary


if __name__ == "__main__":
  main()
