"""ovsw_jax's native libraries under AddressSanitizer + UBSan, and a Python
that runs them.

`build` compiles both extensions with ``OVSW_SANITIZE=1`` (setup.py's
sanitizer option) into a folder of their own, leaving the installed ones
alone; `run` starts a Python module with that build loaded
(``$OVSW_NATIVE_BUILD``) and the sanitizer runtimes preloaded (Python itself
is not instrumented, so libasan must come first; libstdc++ with it, or
ASan's C++ exception interceptor finds nothing to wrap in a C Python);
`reports` finds sanitizer reports in its stderr.
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil
import subprocess
import sys
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
LIBRARIES = ("ovsw_jax/data/_jpeg_crop*.so", "ovsw_jax/deploy/_xnor_kernel*.so")
# What a sanitizer prints when it finds something.
REPORT_MARKERS = ("ERROR: AddressSanitizer", "runtime error:",
                  "UndefinedBehaviorSanitizer", "ERROR: LeakSanitizer",
                  "AddressSanitizer: CHECK failed")


def _compiler_file(name: str) -> Optional[str]:
  """The compiler's copy of a runtime library, or None."""
  cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
  if cxx is None:
    return None
  path = subprocess.run([cxx, f"-print-file-name={name}"], check=False,
                        capture_output=True, text=True).stdout.strip()
  return path if os.path.isabs(path) and os.path.exists(path) else None


def unavailable_reason() -> Optional[str]:
  """Why a sanitizer build cannot run here (None if it can)."""
  if sys.platform != "linux":
    return "the sanitizer build is set up for Linux only"
  for name in ("libasan.so", "libstdc++.so.6"):
    if _compiler_file(name) is None:
      return (f"the C++ compiler has no {name} (install gcc's libasan, e.g. "
              "apt install libasan8, to run the sanitizer fuzzers)")
  return None


def build(out_dir: str | os.PathLike[str], jobs: int = 2) -> Path:
  """Compiles both native libraries with OVSW_SANITIZE=1 under ``out_dir``.

  Returns:
    The ``--build-lib`` folder (what ``$OVSW_NATIVE_BUILD`` names).

  Raises:
    RuntimeError: a library did not build (the compiler's output attached).
  """
  out = Path(out_dir)
  lib = out / "lib"
  proc = subprocess.run(
      [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(lib),
       "--build-temp", str(out / "tmp"), "--parallel", str(jobs)],
      cwd=REPO, env={**os.environ, "OVSW_SANITIZE": "1"}, check=False,
      capture_output=True, text=True)
  missing = [g for g in LIBRARIES if not list(lib.glob(g))]
  if proc.returncode != 0 or missing:
    raise RuntimeError(f"the sanitizer build failed ({missing} missing):\n"
                       f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
  return lib


def environment(build_lib: str | os.PathLike[str]) -> dict[str, str]:
  """The environment of a Python that runs ``build_lib``'s libraries."""
  preload = [_compiler_file("libasan.so"), _compiler_file("libstdc++.so.6")]
  return {
      **os.environ,
      "OVSW_NATIVE_BUILD": str(build_lib),
      "LD_PRELOAD": " ".join(p for p in preload if p),
      # Python's own allocations are never freed at exit: not leaks of ours.
      "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:exitcode=86",
      "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
      "JAX_PLATFORMS": "cpu",
  }


def run(build_lib: str | os.PathLike[str], module: str, args: Sequence[str],
        timeout: float) -> subprocess.CompletedProcess:
  """``python -m module args`` under the sanitizers (no exception on a
  non-zero exit: the caller reads it with `reports`)."""
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                        env=environment(build_lib), capture_output=True,
                        text=True, timeout=timeout, check=False)


def reports(stderr: str) -> list[str]:
  """The sanitizer report lines in a process's stderr."""
  return [line for line in stderr.splitlines()
          if any(m in line for m in REPORT_MARKERS)]
