"""Devices, meshes and shardings for data-parallel training on 1 or N hosts.

Training runs one `jax.jit`-compiled step over a 1-D device mesh with the axis
``'data'``: the batch is sharded along it and the parameters and optimizer
state are replicated. Why jit with `NamedSharding`s and not `jax.pmap`:

* `jax.pmap` is in maintenance mode; jit over a mesh is what JAX recommends for
  new code.
* The jitted function sees the whole *logical* (global) batch, and XLA inserts
  the cross-device all-reduces itself. So BatchNorm statistics are computed
  over the global batch, and the gradients that reach AGS/SAD are already the
  mean over the global batch (docs/semantics.md, section 6), with no ``axis_name`` or
  ``lax.pmean`` anywhere in the model or the optimizer.
* The same code runs on 1 CPU, 8 GPUs or a multi-host TPU pod: only the mesh
  changes.

Multi-host: call `initialize_distributed` first thing (before any other JAX
call); every process then feeds its own rows of each batch, and
`shard_batch` assembles them into one global `jax.Array` with
`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = "data"

# Environment variables that mean "this process is one of several", set by the
# launchers that jax.distributed.initialize() can read its settings from.
_CLUSTER_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError as e:
    raise ValueError(f"environment variable {name}={value!r} is not an "
                     "integer") from e


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           auto: bool = False) -> bool:
  """Joins this process to a multi-process JAX run when there is one.

  Where the settings come from, first match wins:

  1. the arguments (``coordinator_address``, ``num_processes``,
     ``process_id``), e.g. from train.py's flags;
  2. the environment variables ``JAX_COORDINATOR_ADDRESS``,
     ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``;
  3. a cluster launcher that `jax.distributed.initialize` detects itself
     (SLURM, Open MPI, ...; TPU pods need ``auto=True``), when it reports more
     than one process, or ``auto=True``.

  With none of these the run is single-process and nothing is initialised.
  Must be called before anything else touches JAX's backends. On CPU the
  cross-process collectives use gloo.

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator service.
    num_processes: total number of processes.
    process_id: this process's index in ``[0, num_processes)``.
    auto: let JAX detect the cluster (TPU pods, SLURM, Open MPI, K8s).

  Returns:
    True if `jax.distributed.initialize` was called.
  """
  coordinator_address = (coordinator_address or
                         os.environ.get("JAX_COORDINATOR_ADDRESS") or None)
  if num_processes is None:
    num_processes = _env_int("JAX_NUM_PROCESSES")
  if process_id is None:
    process_id = _env_int("JAX_PROCESS_ID")

  explicit = (coordinator_address is not None or num_processes is not None or
              process_id is not None)
  launcher = any((_env_int(v) or 1) > 1 for v in _CLUSTER_SIZE_VARS)
  if not (explicit or launcher or auto):
    return False
  if explicit and num_processes == 1:
    return False
  if explicit and None in (coordinator_address, num_processes, process_id):
    raise ValueError(
        "a multi-process run needs all of coordinator_address, num_processes "
        f"and process_id; got coordinator_address={coordinator_address!r}, "
        f"num_processes={num_processes!r}, process_id={process_id!r}. Pass "
        "all three (flags --coordinator_address/--num_processes/--process_id "
        "or env JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID).")
  # CPU devices of different processes talk through gloo; this setting only
  # affects the CPU backend, so it is harmless on GPU/TPU.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)
  logging.info("jax.distributed: process %d of %d, %d local / %d global "
               "devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def create_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A 1-D mesh with the axis ``'data'`` over ``devices`` (default: all).

  Uses `jax.sharding.Mesh` directly: its axes are of the Auto type, so jit
  may propagate shardings freely (`jax.make_mesh` now defaults to Explicit).
  """
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of parameters and optimizer state: a full copy on every device."""
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch: split along its leading (batch) axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh,
                     name: str = "batch_size") -> None:
  """Raises a ValueError unless ``batch_size`` splits evenly over the mesh.

  Args:
    batch_size: the global batch size (all hosts together).
    mesh: the data-parallel mesh.
    name: the config field the value came from, for the message.
  """
  num_devices = mesh.devices.size
  num_processes = jax.process_count()
  if batch_size <= 0 or batch_size % num_devices:
    lower = max(num_devices, batch_size // num_devices * num_devices)
    upper = (batch_size // num_devices + 1) * num_devices
    raise ValueError(
        f"global {name}={batch_size} is not divisible by the number of "
        f"devices ({num_devices}): each device must get the same number of "
        f"rows. Set --config.{name} to a multiple of {num_devices} (e.g. "
        f"{lower} or {upper}).")
  if batch_size % num_processes:
    raise ValueError(
        f"global {name}={batch_size} is not divisible by the number of "
        f"processes ({num_processes}). Set --config.{name} to a multiple of "
        f"{num_processes}.")


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Builds global arrays, sharded along 'data', from this host's rows.

  Args:
    batch: this process's rows of the global batch (numpy arrays with the
      same leading size on every process), or global arrays already split
      along 'data' (e.g. made on the devices), which are kept as they are.
    mesh: the data-parallel mesh.

  Returns:
    A dict of global `jax.Array`s whose leading axis is the global batch.
  """
  sharding = data_sharding(mesh)
  return {
      k: v if _split_along_data(v, sharding) else
      jax.make_array_from_process_local_data(sharding, np.asarray(v))
      for k, v in batch.items()
  }


def _split_along_data(value: Any, sharding: NamedSharding) -> bool:
  return (isinstance(value, jax.Array)
          and value.sharding.is_equivalent_to(sharding, value.ndim))

