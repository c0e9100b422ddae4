"""Run-to-run determinism on GPUs: the XLA flags ``config.deterministic`` sets.

A CPU run is deterministic, and so is a TPU run (no atomics, no autotuning).
A GPU run by default is not, for two reasons (XLA's docs/determinism.md):

- autotuning: XLA times several kernels (cuDNN convolutions, cuBLAS and
  Triton GEMMs) when it compiles and keeps the fastest, so two processes can
  pick different kernels, which sum in different orders;
- atomics: some kernels (scatter, select-and-scatter, some reductions,
  convolutions and GEMMs) accumulate with atomic adds, whose order changes
  from run to run.

Either makes a resumed run drift from an uninterrupted one in the last bits,
and the drift grows with training. ``--xla_gpu_deterministic_ops=true``
turns off autotuning and excludes the non-deterministic kernels;
``--xla_gpu_exclude_nondeterministic_ops=true`` is the second half alone
(deterministic_ops implies it; it is named too so that the intent survives
XLA renaming the first). XLA reads ``XLA_FLAGS`` once, when JAX starts its
first backend, so `configure` must run before any JAX computation:
train.py calls it first thing, and `train_and_evaluate` calls it again and
refuses a backend that started without the flags.

What it costs: the deterministic kernels and the loss of autotuning slow a
GPU step; by how much depends on the model and the GPU, and is unmeasured
here (no GPU was available when this was written); ``python -m
benchmarks.accelerator --deterministic`` measures it on the machine at hand.
"""

from __future__ import annotations

import os

from ovsw_jax import backend_state

# What XLA needs for run-to-run determinism on GPUs (flag, value).
DETERMINISTIC_FLAGS = (("xla_gpu_deterministic_ops", "true"),
                       ("xla_gpu_exclude_nondeterministic_ops", "true"))
_TRUE = ("", "true", "1")


def _xla_flags() -> dict[str, str]:
  """XLA_FLAGS as {name: value}; a repeated flag keeps its last value."""
  flags = {}
  for token in os.environ.get("XLA_FLAGS", "").split():
    name, _, value = token.lstrip("-").partition("=")
    flags[name] = value.lower()
  return flags


def flags_set() -> bool:
  """Whether XLA_FLAGS holds every one of `DETERMINISTIC_FLAGS`, on."""
  flags = _xla_flags()
  return all(flags.get(name) in _TRUE for name, _ in DETERMINISTIC_FLAGS)


def flag_line() -> str:
  """The flags as XLA_FLAGS spells them."""
  return " ".join(f"--{n}={v}" for n, v in DETERMINISTIC_FLAGS)


def configure(deterministic: bool) -> None:
  """Adds `DETERMINISTIC_FLAGS` to XLA_FLAGS when ``deterministic``.

  Does nothing when ``deterministic`` is False (nothing is removed: flags a
  user set stay) or when the flags are already there.

  Raises:
    ValueError: XLA_FLAGS turns one of them off explicitly, or JAX started
      its backend before this call, so XLA can no longer see them.
  """
  if not deterministic or flags_set():
    return
  flags = _xla_flags()
  off = [n for n, _ in DETERMINISTIC_FLAGS
         if n in flags and flags[n] not in _TRUE]
  if off:
    raise ValueError(
        f"config.deterministic=True, but XLA_FLAGS turns off {off}; remove "
        f"{'them' if len(off) > 1 else 'it'} from XLA_FLAGS.")
  if backend_state.backend_started():
    raise ValueError(
        "config.deterministic=True needs XLA flags that XLA reads only when "
        "JAX starts its backend, and it has started already. Call "
        "ovsw_jax.training.determinism.configure(True) before any JAX "
        f"computation, or set XLA_FLAGS='{flag_line()}' before starting "
        "Python (train.py does this itself).")
  missing = [f"--{n}={v}" for n, v in DETERMINISTIC_FLAGS
             if flags.get(n) not in _TRUE]
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", "").strip(), *missing]).strip()
