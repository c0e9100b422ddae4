"""Optimizer-state bytes per binary weight of `ovsw()`, against the reference.

The reference PyTorch code keeps, per binary weight, a float32 momentum buffer,
a float32 flip tracker and a float32 copy of the previous weights: 12 bytes.
`ovsw()` stores the previous *sign* as a bool instead: 4 + 4 + 1 = 9 bytes.

  python -m benchmarks.optimizer_state [--model=cresnet20_1w1a]

Prints one JSON line and writes benchmarks/results/optimizer_state.json.
Shapes only (jax.eval_shape): nothing is allocated or computed.
"""

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp

from benchmarks.lib import results
from ovsw_jax import models
from ovsw_jax import transforms
from ovsw_jax.layers import LATENT_KERNEL

REFERENCE_BYTES_PER_BINARY_WEIGHT = 12  # momentum + tracker + float copy


def state_bytes_per_binary_weight(model_name: str) -> dict:
  model = models.get_model(model_name, num_classes=10)
  shape = models.INPUT_SHAPES[model_name]
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))
  params = variables["params"]
  tx = transforms.ovsw(0.1, mask=transforms.binary_kernel_mask)
  state = jax.eval_shape(tx.init, params)

  def nbytes(x):
    return x.size * jnp.dtype(x.dtype).itemsize

  num_binary = sum(
      x.size for p, x in jax.tree_util.tree_leaves_with_path(params)
      if getattr(p[-1], "key", None) == LATENT_KERNEL)
  # State leaves that shadow a binary kernel end in .../latent_kernel.
  # Per-weight state has the kernel's shape; the per-layer diagnostics
  # (AGS ratio, silent fraction: one float32 scalar per layer each) are a
  # fixed overhead, reported apart.
  per_part, per_layer_bytes = {}, 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    if getattr(path[-1], "key", None) != LATENT_KERNEL:
      continue
    if leaf.ndim == 0:
      per_layer_bytes += nbytes(leaf)
      continue
    part = type(_parent_state(state, path)).__name__
    per_part[part] = per_part.get(part, 0) + nbytes(leaf)
  total = sum(per_part.values())
  all_state = sum(nbytes(x) for x in jax.tree.leaves(state))
  return {
      "model": model_name,
      "binary_weights": int(num_binary),
      "state_bytes_per_binary_weight": total / num_binary,
      "breakdown_bytes_per_binary_weight": {
          k: v / num_binary for k, v in sorted(per_part.items())},
      "per_layer_diagnostic_bytes": int(per_layer_bytes),
      "reference_bytes_per_binary_weight": REFERENCE_BYTES_PER_BINARY_WEIGHT,
      "total_optimizer_state_bytes": int(all_state),
  }


def _parent_state(state, path):
  """The innermost NamedTuple state object on ``path`` (e.g. TraceState)."""
  node, owner = state, None
  for entry in path:
    if hasattr(node, "_fields"):
      owner = node
    if hasattr(entry, "name"):
      node = getattr(node, entry.name)
    elif hasattr(entry, "idx"):
      node = node[entry.idx]
    else:
      node = node[entry.key]
  return owner


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="cresnet20_1w1a",
                      choices=models.list_models())
  parser.add_argument("--out", default=str(
      Path(__file__).parent / "results" / "optimizer_state.json"))
  args = parser.parse_args()
  results.write_json(state_bytes_per_binary_weight(args.model), args.out)


if __name__ == "__main__":
  main()
