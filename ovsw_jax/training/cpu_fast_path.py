"""The CPU fast path: how a run starts and steps faster on XLA:CPU.

Three parts, all on the CPU backend only (tests/test_fast_path.py checks
them against XLA's defaults):

* `compiler_options`: XLA options for the jitted steps (`CPU_COMPILER_OPTIONS`).
* `init_compiler_options`: XLA options for the program that initialises the
  train state (`INIT_COMPILER_OPTIONS`): it compiles in under half the time,
  to the same bits.
* `narrow_binary_operands`: the binary convs read their +-1 operands in
  bfloat16, with float32 sums (`ovsw_jax.layers.binary_conv_general`).

``config.cpu_fast_path=False`` turns all three off (the portable path). GPU
and TPU always compile with XLA's defaults and float32 operands.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Optional

from absl import logging
import jax
from jax.sharding import Mesh
import numpy as np

from ovsw_jax import layers

# The model options that decide whether a binary conv's operands are +-1.
_CONV_OPTIONS = ("activation_estimator", "weight_estimator",
                 "binarize_activations", "binarize_weights")

# The CPU fast path: XLA options for the jitted train and eval steps, on CPU
# only. jaxlib 0.10's XLA:CPU hands convolutions and dots to YNNPACK and
# keeps reductions in its own loops (the default of
# xla_cpu_experimental_ynn_fusion_type). For the binary ResNets the reverse
# is faster: XLA's own 3x3 convolutions beat YNNPACK's at 16x16 and 8x8
# feature maps (about 1.7x), and YNNPACK's reductions (BatchNorm, the
# per-sample normalisation) beat XLA's. Setting the list to dots and
# reductions measured +18-25% images/s on the cResNet20 train step
# (benchmarks/train_step.py times it side by side with the default, arm
# '<method>_portable'); results agree to float rounding (tests/
# test_fast_path.py). GPU and TPU compile with their defaults.
CPU_COMPILER_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}

# The init program (random params, zero optimizer state) runs once, yet on
# XLA:CPU its compile was the largest single cost of the quickstart's start:
# each parameter's threefry loop becomes large fused kernels that LLVM
# optimises at XLA's default level. At -O1 the cResNet20 init compiles in
# 1.7 s instead of 3.7 s (JAX's default, partitionable threefry; 2 cores)
# and gives the same bits (the test compares every leaf with the default
# compile, in both threefry modes); -O0 would be faster still but rounds
# the normal initialisers differently.
INIT_COMPILER_OPTIONS: dict[str, Any] = {"xla_backend_optimization_level": 1}


@functools.lru_cache(maxsize=None)
def _options_supported(items: tuple[tuple[str, Any], ...]) -> bool:
  """Whether this jaxlib's XLA:CPU accepts the options (asked once each):
  compiles a tiny function with them.

  The step options are experimental XLA flags; a jaxlib that renamed or
  dropped one rejects the compile, and the programs then compile with
  XLA's defaults instead of failing.
  """
  options = dict(items)
  try:
    cpu = jax.devices("cpu")[0]
    jax.jit(lambda x: x + 1, compiler_options=options).lower(
        jax.ShapeDtypeStruct((1,), np.float32,
                             sharding=jax.sharding.SingleDeviceSharding(cpu))
    ).compile()
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("XLA:CPU rejected %s (%s); compiling with XLA's "
                    "defaults instead", options, e)
    return False
  return True


def uses_cpu_fast_path(platform: str, cpu_fast_path: bool = True) -> bool:
  """Whether steps on ``platform`` take the CPU fast path: only on CPU, and
  only when ``cpu_fast_path`` (config.cpu_fast_path) asks for it."""
  return cpu_fast_path and platform == "cpu"


def compiler_options(mesh: Mesh, cpu_fast_path: bool = True
                     ) -> Optional[dict[str, Any]]:
  """XLA options for the steps jitted over ``mesh``, chosen per backend.

  Args:
    mesh: the mesh the step runs on; its devices' platform decides.
    cpu_fast_path: False compiles with XLA's defaults everywhere (the
      portable path).

  Returns:
    `CPU_COMPILER_OPTIONS` on a CPU mesh whose jaxlib accepts them, else None
    (XLA's defaults; always on GPU and TPU).
  """
  return _options_for(mesh, cpu_fast_path, CPU_COMPILER_OPTIONS)


def init_compiler_options(mesh: Mesh, cpu_fast_path: bool = True
                          ) -> Optional[dict[str, Any]]:
  """XLA options for the program that initialises the train state.

  Args:
    mesh: the mesh the state is replicated over; its devices' platform
      decides.
    cpu_fast_path: False compiles with XLA's defaults everywhere.

  Returns:
    `INIT_COMPILER_OPTIONS` on a CPU mesh whose jaxlib accepts them, else
    None (XLA's defaults; always on GPU and TPU).
  """
  return _options_for(mesh, cpu_fast_path, INIT_COMPILER_OPTIONS)


def _options_for(mesh: Mesh, cpu_fast_path: bool, options: Mapping[str, Any]
                 ) -> Optional[dict[str, Any]]:
  """A copy of ``options`` on a CPU mesh on the fast path whose jaxlib
  accepts them, else None (XLA's defaults)."""
  platform = mesh.devices.flat[0].platform
  if (uses_cpu_fast_path(platform, cpu_fast_path)
      and _options_supported(tuple(sorted(options.items())))):
    return dict(options)
  return None


def narrow_binary_operands(platform: str, enabled: bool,
                           options: Mapping[str, Any]) -> bool:
  """Whether the CPU fast path reads the binary convs' operands in bfloat16.

  Args:
    platform: the backend the model runs on.
    enabled: config.cpu_fast_path.
    options: the model's keyword options (`ovsw_jax.models.get_model`).

  Only where it is exact and measured faster: on the CPU backend, with a
  conv that says its operands are exactly +-1 (`layers.BinaryConv` and its
  subclasses, through ``exact_pm1_operands``); never over an explicit
  ``binary_operand_dtype``.
  """
  if not uses_cpu_fast_path(platform, enabled):
    return False
  if "binary_operand_dtype" in options:
    return False
  # The models pass these options on to every binary conv; a conv built
  # with them answers for itself.
  conv_options = {k: options[k] for k in _CONV_OPTIONS if k in options}
  conv = options.get("conv", layers.BinaryConv)(features=1, **conv_options)
  return isinstance(conv, layers.BinaryConv) and conv.exact_pm1_operands
