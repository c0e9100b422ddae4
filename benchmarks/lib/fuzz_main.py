"""The fuzzers' process: ``python -m benchmarks.lib.fuzz_main`` (started by
`benchmarks.fuzz_native` under the sanitizer build; see `sanitized_build`).

Runs the decoder, packed-file and kernel drivers for the given number of
inputs each (or until ``--seconds`` runs out), and writes their counts as
JSON. Before each input it writes ``driver index`` to ``--progress``, so an
input that crashes the process can be replayed from (seed, driver, index);
an input that runs over ``--input_timeout`` seconds (a hang) makes
faulthandler print every thread's stack and exit with status 1.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import os
import sys
import tempfile
import time

from benchmarks.lib import fuzz_jpeg
from benchmarks.lib import fuzz_kernel
from benchmarks.lib import fuzz_packed
from ovsw_jax.data import native_jpeg
from ovsw_jax.deploy import native


def _loop(name: str, one_input, seed: int, count: int, deadline: float,
          progress: str, input_timeout: float) -> dict[str, int]:
  counts: collections.Counter = collections.Counter()
  for index in range(count):
    if time.time() > deadline:
      break
    with open(progress, "w") as f:
      f.write(f"{name} {index}\n")
    faulthandler.dump_traceback_later(input_timeout, exit=True)
    one_input(seed, index, counts)
    faulthandler.cancel_dump_traceback_later()
    counts["inputs"] += 1
  return dict(counts)


def main(argv: list[str]) -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--jpeg", type=int, default=0, help="decoder inputs")
  p.add_argument("--packed", type=int, default=0, help="packed-file inputs")
  p.add_argument("--kernel", type=int, default=0, help="kernel inputs")
  p.add_argument("--packed_files", nargs="*", default=[])
  p.add_argument("--seconds", type=float, default=1e9,
                 help="stop starting inputs after this long (per driver)")
  p.add_argument("--input_timeout", type=float, default=60.0)
  p.add_argument("--progress", required=True)
  p.add_argument("--out", required=True)
  args = p.parse_args(argv)
  # The sanitized build, not the installed one.
  assert native_jpeg.available() and native.available()
  build = os.environ["OVSW_NATIVE_BUILD"]
  assert str(native.library_path()).startswith(build)
  summary = {"seed": args.seed}
  with tempfile.TemporaryDirectory() as tmp:
    drivers = [
        ("jpeg", fuzz_jpeg.one_input, args.jpeg),
        ("packed", fuzz_packed.Runner(args.packed_files, tmp).one_input
         if args.packed else None, args.packed),
        ("kernel", fuzz_kernel.one_input, args.kernel),
    ]
    for name, one_input, count in drivers:
      start = time.time()
      if count:
        summary[name] = _loop(name, one_input, args.seed, count,
                              start + args.seconds, args.progress,
                              args.input_timeout)
        summary[name]["seconds"] = round(time.time() - start, 1)
  with open(args.out, "w") as f:
    json.dump(summary, f, indent=1, sort_keys=True)


if __name__ == "__main__":
  main(sys.argv[1:])
