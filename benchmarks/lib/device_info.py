"""The accelerator a benchmark ran on: JAX's devices, torch's, the clocks.

`machine.machine_info` describes the host (CPU, versions); this adds what
JAX and torch see as devices and, on NVIDIA GPUs, what ``nvidia-smi`` says
about the clocks, power limit and driver (read before and after a run: a
GPU that heats up or shares its power budget runs at other clocks).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any, Optional

import jax

NVIDIA_SMI_FIELDS = ("name", "driver_version", "memory.total",
                     "clocks.sm", "clocks.max.sm", "clocks.mem",
                     "clocks.max.mem", "power.draw", "power.limit",
                     "temperature.gpu", "utilization.gpu")


def device_slug(device: Optional[jax.Device] = None) -> str:
  """A file name for the device: 'cpu', 'nvidia-h200', 'tpu-v5-lite'."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return "cpu"
  kind = getattr(device, "device_kind", "") or device.platform
  return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")


def jax_devices() -> dict[str, Any]:
  """Backend, device count and kinds, per-device memory limit if known."""
  devices = jax.devices()
  first = devices[0]
  stats = first.memory_stats() if hasattr(first, "memory_stats") else None
  return {"backend": jax.default_backend(), "count": len(devices),
          "process_count": jax.process_count(),
          "kinds": sorted({getattr(d, "device_kind", d.platform)
                           for d in devices}),
          "memory_bytes_limit": (stats or {}).get("bytes_limit")}


def versions() -> dict[str, Optional[str]]:
  """Versions of the libraries the comparison depends on."""
  out: dict[str, Optional[str]] = {}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "grain",
               "numpy", "torch"):
    try:
      module = __import__(name, fromlist=["__version__"])
      out[name] = getattr(module, "__version__", None)
    except ImportError:
      out[name] = None
  return out


def torch_devices() -> dict[str, Any]:
  """What torch sees: CUDA devices, their names and capability; cuDNN."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {"available": False}
  out: dict[str, Any] = {"cuda_available": torch.cuda.is_available(),
                         "cuda_version": torch.version.cuda}
  if torch.cuda.is_available():
    out["devices"] = [torch.cuda.get_device_name(i)
                      for i in range(torch.cuda.device_count())]
    out["capability"] = list(torch.cuda.get_device_capability(0))
    out["cudnn_version"] = torch.backends.cudnn.version()
  return out


def gpu_clocks() -> Optional[list[dict[str, str]]]:
  """``nvidia-smi``'s clocks, power and temperature per GPU (None when
  there is no nvidia-smi, e.g. on a CPU or TPU host)."""
  if shutil.which("nvidia-smi") is None:
    return None
  proc = subprocess.run(
      ["nvidia-smi", f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}",
       "--format=csv,noheader"], capture_output=True, text=True,
      check=False, timeout=30)
  if proc.returncode != 0:
    return [{"error": proc.stderr.strip()[-300:]}]
  return [dict(zip(NVIDIA_SMI_FIELDS, (v.strip() for v in line.split(","))))
          for line in proc.stdout.strip().splitlines()]


def cpu_clock_mhz() -> Optional[float]:
  """The current clock of the first core (/proc/cpuinfo), if it says."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("cpu MHz"):
          return float(line.split(":")[1])
  except (OSError, ValueError):
    pass
  return None


def clocks() -> dict[str, Any]:
  """The clocks now: the GPUs' (nvidia-smi) and the host CPU's."""
  return {"gpus": gpu_clocks(), "cpu_mhz": cpu_clock_mhz()}
