"""Sign-flip diagnostics of binary weights (the paper's "silent weights").

A binary weight is ``sign(w)`` of a latent float weight ``w`` (``w >= 0`` is +1,
as in `ovsw_jax.ops.sign_ste`); it only changes when ``w`` crosses zero. These
functions measure how often that happens, on parameter trees alone, restricted
by default to the latent kernels of binary layers
(`ovsw_jax.masks.binary_kernel_mask`):

* `flip_rate`: the fraction of weights whose sign differs between two params.
* `FlipRecord` (`init_flip_record`, `update_flip_record`): per-weight flip
  counts over a run; `never_flipped_fraction` and `flip_count_vs_magnitude`
  summarise it, the latter giving the data behind the paper's figure 1 (flip
  count against latent-weight magnitude).

Results are keyed by the '/'-joined parameter path (e.g.
``'params/stage1_block0/conv1/latent_kernel'``) plus ``'overall'``, which
weights every selected weight equally.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ovsw_jax import masks

OVERALL = "overall"


def _selected_leaves(
    params: optax.Params, mask: Optional[masks.Mask]
) -> dict[str, jax.Array]:
  """The leaves of ``params`` selected by ``mask``, keyed by their path name."""
  if mask is None:
    mask = masks.binary_kernel_mask
  mask_tree = mask(params) if callable(mask) else mask
  masks.check_mask(mask_tree, params)
  # Broadcast the (possibly prefix) mask to one bool per leaf of params.
  flags = jax.tree.leaves(jax.tree.map(
      lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask_tree, params))
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  selected = {
      masks.path_name(path): x
      for (path, x), keep in zip(leaves, flags) if keep
  }
  if not selected:
    raise ValueError(
        "The mask selects no parameter (by default only leaves named"
        f" '{masks.LATENT_KERNEL}' are selected); pass `mask=` to choose"
        " leaves, e.g. `mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)`.")
  return selected


def _with_overall(per_leaf: dict[str, jax.Array],
                  sizes: dict[str, int]) -> dict[str, jax.Array]:
  """Adds the size-weighted mean of the per-leaf fractions under 'overall'."""
  total = sum(sizes.values())
  overall = sum(per_leaf[k] * sizes[k] for k in per_leaf) / total
  return {**per_leaf, OVERALL: overall}


def flip_rate(
    old_params: optax.Params,
    new_params: optax.Params,
    mask: Optional[masks.Mask] = None,
) -> dict[str, jax.Array]:
  """Fraction of weights whose sign differs between two parameter trees.

  Args:
    old_params: params before (e.g. one optimizer step earlier).
    new_params: params after, same structure.
    mask: which leaves to measure: a tree of bools (or a prefix of the params
      tree) or a callable building it from ``old_params``; default
      `masks.binary_kernel_mask`.

  Returns:
    ``{path: fraction flipped, ..., 'overall': fraction over all selected
    weights}`` as float32 scalars. Pure, so it can run under `jax.jit`.
  """
  old = _selected_leaves(old_params, mask)
  new = _selected_leaves(new_params, mask)
  rates = {
      k: jnp.mean((old[k] >= 0) != (new[k] >= 0), dtype=jnp.float32)
      for k in old
  }
  return _with_overall(rates, {k: v.size for k, v in old.items()})


class FlipRecord(NamedTuple):
  """Per-weight sign-flip history of the selected leaves, keyed by path name.

  Attributes:
    initial_sign: True where the weight was >= 0 at `init_flip_record`.
    prev_sign: True where the weight was >= 0 at the last update.
    ever_flipped: True where a flip was seen between two recorded params.
    flip_count: number of flips seen between consecutive recorded params.
  """

  initial_sign: dict[str, jax.Array]  # bool
  prev_sign: dict[str, jax.Array]  # bool
  ever_flipped: dict[str, jax.Array]  # bool
  flip_count: dict[str, jax.Array]  # int32


def init_flip_record(
    params: optax.Params, mask: Optional[masks.Mask] = None
) -> FlipRecord:
  """Starts a flip record at ``params`` (usually the initial params).

  Args:
    params: the parameter tree.
    mask: which leaves to track, as in `flip_rate` (default: binary kernels).

  Returns:
    A `FlipRecord` with no flips. It is a pytree of arrays: it can be
    checkpointed and passed through `jax.jit`.
  """
  sign = {k: x >= 0 for k, x in _selected_leaves(params, mask).items()}
  return FlipRecord(
      initial_sign=sign,
      prev_sign=sign,
      ever_flipped={k: jnp.zeros_like(s) for k, s in sign.items()},
      flip_count={k: jnp.zeros(s.shape, jnp.int32) for k, s in sign.items()},
  )


def update_flip_record(record: FlipRecord, params: optax.Params) -> FlipRecord:
  """Records the flips between the last recorded params and ``params``.

  Call it after every optimizer step for exact counts. Called every k steps,
  it sees only net sign changes over those k steps: a weight that flips and
  flips back in between is not counted, so counts (and ``ever_flipped``) are
  lower bounds.

  Args:
    record: the record so far.
    params: the current parameter tree (same structure as at init).

  Returns:
    The updated `FlipRecord`. Pure, so it can run under `jax.jit`.
  """
  leaves = {
      masks.path_name(path): x
      for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  missing = sorted(set(record.prev_sign) - set(leaves))
  if missing:
    raise ValueError(
        f"params lack the recorded leaves {missing}; pass the same parameter"
        " tree as to `init_flip_record`.")
  sign = {k: leaves[k] >= 0 for k in record.prev_sign}
  flipped = {k: sign[k] != record.prev_sign[k] for k in sign}
  return FlipRecord(
      initial_sign=record.initial_sign,
      prev_sign=sign,
      ever_flipped={k: record.ever_flipped[k] | flipped[k] for k in sign},
      flip_count={
          k: record.flip_count[k] + flipped[k].astype(jnp.int32) for k in sign
      },
  )


def never_flipped_fraction(record: FlipRecord) -> dict[str, jax.Array]:
  """Fraction of weights never seen to flip, per leaf and 'overall'.

  Args:
    record: a `FlipRecord`.

  Returns:
    ``{path: fraction, ..., 'overall': fraction over all tracked weights}`` as
    float32 scalars. Pure, so it can run under `jax.jit`.
  """
  fractions = {
      k: jnp.mean(~e, dtype=jnp.float32) for k, e in record.ever_flipped.items()
  }
  return _with_overall(fractions,
                       {k: e.size for k, e in record.ever_flipped.items()})


def _binned(abs_w: np.ndarray, counts: np.ndarray,
            edges: np.ndarray) -> dict[str, np.ndarray]:
  """Per-bin statistics of flip counts against |w| (the last bin is closed)."""
  num_bins = len(edges) - 1
  # np.digitize's bins are [e_i, e_{i+1}); fold values at the top edge (and
  # above, if edges were given) into the last bin.
  idx = np.clip(np.digitize(abs_w, edges) - 1, 0, num_bins - 1)
  n = np.bincount(idx, minlength=num_bins)
  total = np.bincount(idx, weights=counts, minlength=num_bins)
  never = np.bincount(idx, weights=counts == 0, minlength=num_bins)
  with np.errstate(invalid="ignore", divide="ignore"):
    return {
        "bin_edges": edges,
        "count": n,
        "mean_flip_count": np.where(n > 0, total / n, np.nan),
        "never_flipped_fraction": np.where(n > 0, never / n, np.nan),
    }


def flip_count_vs_magnitude(
    record: FlipRecord,
    params: optax.Params,
    num_bins: int = 20,
    bin_edges: Optional[np.ndarray] = None,
) -> dict[str, dict[str, np.ndarray]]:
  """Flip counts against latent-weight magnitude (the paper's figure 1).

  Bins the tracked weights by ``|w|`` (``w`` from ``params``, usually the final
  params) and summarises their flip counts per bin. Runs on the host (NumPy).

  Args:
    record: a `FlipRecord` of the run.
    params: the params whose magnitudes to bin, same tree as the record's.
    num_bins: number of equal-width bins on ``[0, max |w|]`` (per leaf, and
      over all leaves for 'overall').
    bin_edges: increasing edges to use everywhere instead (so that runs and
      layers are comparable); values beyond the last edge go in the last bin,
      values below the first in the first.

  Returns:
    ``{path: stats, ..., 'overall': stats}`` where stats holds NumPy arrays:
    ``bin_edges`` (num_bins + 1), and per bin ``count`` (weights),
    ``mean_flip_count`` and ``never_flipped_fraction`` (NaN for empty bins).
  """
  if bin_edges is None and num_bins < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
  leaves = {
      masks.path_name(path): x
      for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  abs_w = {k: np.abs(np.asarray(leaves[k], np.float64)).ravel()
           for k in record.flip_count}
  counts = {k: np.asarray(c).ravel() for k, c in record.flip_count.items()}

  def edges_for(a):
    if bin_edges is not None:
      return np.asarray(bin_edges, np.float64)
    top = a.max() if a.size and a.max() > 0 else 1.0
    return np.linspace(0.0, top, num_bins + 1)

  out = {k: _binned(abs_w[k], counts[k], edges_for(abs_w[k])) for k in abs_w}
  all_w = np.concatenate(list(abs_w.values()))
  out[OVERALL] = _binned(all_w, np.concatenate(list(counts.values())),
                         edges_for(all_w))
  return out
