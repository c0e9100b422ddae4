"""The states of OvSW's transforms, and the readers of their diagnostics.

`AdaptiveGradientScalingState` and `SilenceAwarenessDecayState` are what
`ovsw_jax.transforms.adaptive_gradient_scaling` and
`ovsw_jax.transforms.silence_awareness_decay` keep; both record their
diagnostics while they update, so `ags_diagnostics` and `sad_diagnostics`
read them out of any optimizer state (chain, masked, inject_hyperparams,
MultiSteps, partition) without recomputing anything. `ovsw_jax.transforms`
re-exports every name here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ovsw_jax.masks import path_name


class AdaptiveGradientScalingState(NamedTuple):
  """Diagnostics of the last `adaptive_gradient_scaling` update.

  Attributes:
    ratio: per leaf, the mean over its output channels of ``gn / pn`` (the
      eps-clamped ``||g_c|| / ||w_c||``) before scaling; 0 before any update.
    mean_ratio: the same mean over all channels of all leaves.
    num_groups: the number of channels behind ``mean_ratio`` (a constant), to
      weight means of several states (e.g. under `optax.partition`).
  """

  ratio: optax.Updates
  mean_ratio: jax.Array  # shape=(), float32
  num_groups: jax.Array  # shape=(), int32


class SilenceAwarenessDecayState(NamedTuple):
  """State of `silence_awareness_decay`.

  Attributes:
    tracker: per weight, the exponential moving average of its sign flips
      (float32, same shapes as the params, starts at 0).
    prev_sign: per weight, True where the weight was >= 0 at the last update
      (bool: 1 byte per weight, not a float copy of the weights).
    silent_fraction: per leaf, the fraction of weights that were silent at the
      last update (and got the extra decay); all silent before any update.
  """

  tracker: optax.Updates
  prev_sign: optax.Updates
  silent_fraction: optax.Updates


def _find_states(opt_state: optax.OptState, state_type: type) -> list[Any]:
  """All states of ``state_type`` anywhere in a (nested) optimizer state."""
  return [
      s for _, s in optax.tree_utils.tree_get_all_with_path(
          opt_state, state_type.__name__)
      if isinstance(s, state_type)
  ]


def has_ags_state(opt_state: optax.OptState) -> bool:
  """Whether an optimizer state holds an `adaptive_gradient_scaling` state."""
  return bool(_find_states(opt_state, AdaptiveGradientScalingState))


def has_sad_state(opt_state: optax.OptState) -> bool:
  """Whether an optimizer state holds a `silence_awareness_decay` state."""
  return bool(_find_states(opt_state, SilenceAwarenessDecayState))


def ags_diagnostics(opt_state: optax.OptState) -> dict[str, jax.Array]:
  """Reads AGS's gradient-to-weight norm ratios (before scaling) from a state.

  ``ags_ratio`` is measured on the gradient AGS receives, *before* AGS
  scales it: for each output channel ``c`` of each leaf AGS sees (in the
  trainer: the binary latent kernels; the gradient averaged over devices,
  before SAD, weight decay and momentum),

      r_c = max(||g_c||, grad_eps) / max(||w_c||, param_eps)

  with ``w`` the params before the update (eps: 1e-6 and 1e-3 by default).
  ``ags_ratio`` is the mean of ``r_c`` over all channels of all leaves (each
  channel counts once, whatever its leaf's size); ``ags_ratio/<path>`` the
  mean over one leaf's channels. AGS then scales every channel with
  ``r_c < delta`` up to ``delta``, so after scaling each channel's ratio is
  ``max(r_c, delta)``: an ``ags_ratio`` below ``delta`` means that many
  channels were scaled up.

  Args:
    opt_state: any optimizer state holding `adaptive_gradient_scaling`'s,
      possibly nested in chain, masked, inject_hyperparams, MultiSteps or
      partition states.

  Returns:
    ``{'ags_ratio': mean of r_c over all channels, 'ags_ratio/<param path>':
    mean over that leaf's channels, ...}`` from the last update (0 before
    any). Several AGS states (e.g. one per `optax.partition` label) are
    averaged weighted by their channel counts. Pure, so it can run under
    `jax.jit`.

  Raises:
    ValueError: the state holds no AGS state (check with `has_ags_state`).
  """
  states = _find_states(opt_state, AdaptiveGradientScalingState)
  if not states:
    raise ValueError(
        "ags_diagnostics: the optimizer state holds no "
        "adaptive_gradient_scaling state; build the optimizer with "
        "ovsw() or adaptive_gradient_scaling(), or check has_ags_state() "
        "first.")
  out = {}
  for state in states:
    for path, r in jax.tree_util.tree_flatten_with_path(state.ratio)[0]:
      out[f"ags_ratio/{path_name(path)}"] = r
  if len(states) == 1:
    out["ags_ratio"] = states[0].mean_ratio
  else:  # e.g. one AGS per optax.partition label: weight by channel counts
    groups = [s.num_groups.astype(jnp.float32) for s in states]
    out["ags_ratio"] = sum(s.mean_ratio * n for s, n in zip(states, groups)) / (
        jnp.maximum(sum(groups), 1.0))
  return out


def sad_diagnostics(opt_state: optax.OptState) -> dict[str, jax.Array]:
  """Reads SAD's fractions of silent weights from an optimizer state.

  Args:
    opt_state: any optimizer state holding `silence_awareness_decay`'s,
      possibly nested in chain, masked, inject_hyperparams, MultiSteps or
      partition states.

  Returns:
    ``{'silent_fraction': over all tracked weights, 'silent_fraction/<param
    path>': per leaf, ...}`` as of the last update (leaves masked out of SAD
    are absent). Pure, so it can run under `jax.jit`.

  Raises:
    ValueError: the state holds no SAD state (check with `has_sad_state`).
  """
  states = _find_states(opt_state, SilenceAwarenessDecayState)
  if not states:
    raise ValueError(
        "sad_diagnostics: the optimizer state holds no "
        "silence_awareness_decay state; build the optimizer with ovsw() "
        "or silence_awareness_decay(), or check has_sad_state() first.")
  out = {}
  silent, size = jnp.zeros([], jnp.float32), 0
  for state in states:
    fractions = jax.tree_util.tree_flatten_with_path(state.silent_fraction)[0]
    for (path, f), t in zip(fractions, jax.tree.leaves(state.tracker)):
      out[f"silent_fraction/{path_name(path)}"] = f
      silent += f * t.size
      size += t.size
  out["silent_fraction"] = silent / max(size, 1)
  return out
