"""Whether JAX has started a backend in this process.

Two things change once it has: XLA has read ``XLA_FLAGS`` (so
`ovsw_jax.training.determinism` can no longer set them), and the process
runs XLA's thread pools (so forking it can deadlock or crash the child:
`ovsw_jax.data.prepare` spawns its workers then). Kept apart so that both the
data and the training modules can ask without importing each other.
"""

from __future__ import annotations


def backend_started() -> bool:
  """Whether JAX has started a backend (after which XLA_FLAGS is read)."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  started = getattr(xla_bridge, "backends_are_initialized", None)
  if started is not None:
    return started()
  return bool(getattr(xla_bridge, "_backends", {}))  # older/newer JAX
