"""The machine and versions a benchmark ran on."""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
from typing import Any, Optional, Sequence

import jax

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# The CPU features XLA:CPU's kernels dispatch on (x86 SIMD widths, AMX; ARM's
# NEON / SVE), as /proc/cpuinfo names them.
SIMD_FLAG_PREFIXES = ("sse4", "avx", "fma", "amx", "neon", "asimd", "sve",
                      "f16c", "vnni")


def machine_info() -> dict[str, Any]:
  """Versions, CPU model and SIMD flags, core counts, JAX devices, XLA_FLAGS."""
  import flax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  return {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": _jaxlib_version(),
      "flax": flax.__version__,
      "optax": optax.__version__,
      "platform": platform.platform(),
      "cpu_count": os.cpu_count(),
      "cpu_affinity_count": len(os.sched_getaffinity(0)),
      "cpu_model": cpu_model(),
      "cpu_simd_flags": cpu_simd_flags(),
      "jax_devices": [str(d) for d in jax.devices()],
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def _jaxlib_version() -> Optional[str]:
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    return jaxlib.__version__
  except (ImportError, AttributeError):
    return None


def _cpuinfo_field(*names: str) -> Optional[str]:
  """The first /proc/cpuinfo line's value for one of ``names``."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() in names:
          return value.strip()
  except OSError:
    pass
  return None


def cpu_model() -> Optional[str]:
  """/proc/cpuinfo's model name, else lscpu's, else platform's."""
  model = _cpuinfo_field("model name")
  if model is None and shutil.which("lscpu"):
    proc = subprocess.run(["lscpu"], capture_output=True, text=True,
                          check=False)
    for line in proc.stdout.splitlines():
      key, _, value = line.partition(":")
      if key.strip() == "Model name":
        model = value.strip()
        break
  return model or platform.processor() or None


def cpu_simd_flags() -> list[str]:
  """The CPU's SIMD feature flags (see `SIMD_FLAG_PREFIXES`), sorted."""
  flags = (_cpuinfo_field("flags", "Features") or "").split()
  return sorted(f for f in set(flags) if f.startswith(SIMD_FLAG_PREFIXES))


def git_commit() -> str:
  """The checkout's HEAD, with '+dirty' if tracked files differ from it."""
  def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True,
                          check=False, cwd=_REPO).stdout.strip()
  return git("rev-parse", "HEAD") + (
      "+dirty" if git("status", "--porcelain", "--untracked-files=no")
      else "")


def command_line(module: str, argv: Sequence[str]) -> str:
  """How to run this again: ``python -m <module> <argv...>``, shell-quoted."""
  return shlex.join(["python", "-m", module, *argv])
