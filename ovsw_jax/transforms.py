"""OvSW's optax gradient transformations (docs/semantics.md, sections 4-6).

* `adaptive_gradient_scaling` (AGS): raises each output channel's gradient norm
  to at least ``delta`` times its weight norm; the mirror image of
  `optax.adaptive_grad_clip`, which caps that ratio from above.
* `silence_awareness_decay` (SAD): tracks how often each weight's sign flips and
  adds an extra weight decay to the "silent" ones, which have not flipped
  lately.
* `ovsw`: the reference chain AGS -> SAD -> weight decay -> SGD momentum.

Both transforms record their diagnostics in their state while they update, so
that `ags_diagnostics` and `sad_diagnostics` read them out of any optimizer
state (chain, masked, inject_hyperparams, MultiSteps, partition) without
recomputing anything.

"Per output channel" means reducing over every axis but the last (Flax kernels
are HWIO for convolutions and (in, out) for dense layers); a 0-d or 1-d leaf is
a single group.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

# Re-exported: the masks lived here before `ovsw_jax.masks`.
# pylint: disable=unused-import
from ovsw_jax.masks import binary_kernel_mask
from ovsw_jax.masks import check_mask
from ovsw_jax.masks import Mask
from ovsw_jax.masks import path_name
# The states and their readers live in `ovsw_jax.transform_states`.
from ovsw_jax.transform_states import AdaptiveGradientScalingState
from ovsw_jax.transform_states import ags_diagnostics
from ovsw_jax.transform_states import has_ags_state
from ovsw_jax.transform_states import has_sad_state
from ovsw_jax.transform_states import sad_diagnostics
from ovsw_jax.transform_states import SilenceAwarenessDecayState
# pylint: enable=unused-import

# The wording of optax's own (private) `base.NO_PARAMS_MSG`.
_NO_PARAMS_MSG = (
    "You are using a transformation that requires the current value of "
    "parameters, but you are not passing `params` when calling `update`."
)


def _is_concrete(x: Any) -> bool:
  """Whether ``x`` is a plain number, not an (injected) array hyperparameter."""
  return isinstance(x, numbers.Real)


def _masked(
    inner: optax.GradientTransformation, mask: Optional[Mask], name: str
) -> optax.GradientTransformation:
  """`optax.masked` that checks the mask's structure at init (None: no mask)."""
  if mask is None:
    return inner
  tx = optax.masked(inner, mask)

  def init_fn(params):
    # A tree without leaves (optax.tree_map_params's placeholder) has nothing
    # to check, and optax.masked passes it through unmasked.
    if jax.tree.leaves(params):
      check_mask(mask(params) if callable(mask) else mask, params, name)
    return tx.init(params)

  return optax.GradientTransformationExtraArgs(init_fn, tx.update)


def _channel_norm(x: jax.Array) -> jax.Array:
  """L2 norm per output channel, kept broadcastable against ``x``.

  Groups as OvSW does: over all axes but the last, and a 0-d or 1-d array is
  one group. (`optax.transforms.unitwise_norm` treats 3-d arrays and arrays
  with unit axes differently, hence this helper.)
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  axis = tuple(range(x.ndim - 1)) if x.ndim >= 2 else None
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))


def adaptive_gradient_scaling(
    delta: float,
    grad_eps: float = 1e-6,
    param_eps: float = 1e-3,
) -> optax.GradientTransformation:
  """Scales up per-channel gradients that are small relative to the weights.

  For each output channel ``c`` of each leaf (reducing over all axes but the
  last; a 0-d or 1-d leaf is one group), with ``gn = max(||g_c||, grad_eps)``
  and ``pn = max(||w_c||, param_eps)``::

    g_c <- g_c * delta * pn / gn   if gn / pn < delta,  else g_c unchanged.

  The ratio ``||g|| / ||w||`` of every channel is thereby raised to at least
  ``delta``, so that weights far from zero still receive updates large enough
  to flip their sign. Every leaf it is given is scaled: wrap it in
  `optax.masked` (e.g. with `binary_kernel_mask`) to restrict it to binary
  kernels. ``delta`` may be injected with `optax.inject_hyperparams`.

  Args:
    delta: the minimum ratio of gradient norm to weight norm, > 0.
    grad_eps: floor of the gradient norm (a zero gradient stays zero).
    param_eps: floor of the weight norm, for weights at or near zero.

  Returns:
    A :class:`optax.GradientTransformation` whose state
    (`AdaptiveGradientScalingState`) records the ratios ``gn / pn`` measured
    before scaling (read them with `ags_diagnostics`: ``ags_ratio``).

  References:
    Xiang et al., `OvSW: Overcoming Silent Weights for Accurate Binary Neural
    Networks <https://arxiv.org/abs/2407.05257>`_, ECCV 2024
  """
  if _is_concrete(delta) and delta <= 0:
    raise ValueError(f"delta must be > 0, got {delta}. OvSW uses 0.01-0.04.")
  for name, eps in (("grad_eps", grad_eps), ("param_eps", param_eps)):
    if _is_concrete(eps) and eps <= 0:
      raise ValueError(f"{name} must be > 0 to avoid division by 0, got {eps}.")

  def init_fn(params):
    leaves = jax.tree.leaves(params)
    num_groups = sum(x.shape[-1] if x.ndim >= 2 else 1 for x in leaves)
    return AdaptiveGradientScalingState(
        ratio=jax.tree.map(lambda _: jnp.zeros([], jnp.float32), params),
        mean_ratio=jnp.zeros([], jnp.float32),
        num_groups=jnp.asarray(num_groups, jnp.int32),
    )

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(_NO_PARAMS_MSG)
    g_norm = jax.tree.map(lambda g: jnp.maximum(_channel_norm(g), grad_eps),
                          updates)
    p_norm = jax.tree.map(lambda w: jnp.maximum(_channel_norm(w), param_eps),
                          params)
    ratio = jax.tree.map(jnp.divide, g_norm, p_norm)

    def scale(g, gn, pn, r):
      scaled = g * (delta * pn / gn)
      return jnp.where(r < delta, scaled, g).astype(g.dtype)

    updates = jax.tree.map(scale, updates, g_norm, p_norm, ratio)
    ratios = jax.tree.leaves(ratio)
    if ratios:
      mean_ratio = jnp.mean(jnp.concatenate([r.ravel() for r in ratios]))
    else:
      mean_ratio = jnp.zeros([], jnp.float32)
    new_state = AdaptiveGradientScalingState(
        ratio=jax.tree.map(lambda r: jnp.mean(r).astype(jnp.float32), ratio),
        mean_ratio=mean_ratio.astype(jnp.float32),
        num_groups=state.num_groups,
    )
    return updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)


def silence_awareness_decay(
    dampen_weight: float,
    momentum: float = 0.999,
    threshold: float = 1e-4,
) -> optax.GradientTransformation:
  """Adds weight decay to "silent" weights, whose sign has not flipped lately.

  Elementwise, with the current params ``w`` (before this step's update)::

    flipped   = sign(w) != prev_sign          # sign: w >= 0 is +, as sign_ste
    tracker   = momentum * tracker + (1 - momentum) * flipped
    silent    = tracker < threshold
    g         = g + dampen_weight * silent * w
    prev_sign = sign(w)

  ``prev_sign`` starts as the sign of the params given to ``init``. With the
  defaults, one flip keeps a weight "not silent" for about 2,300 steps. Every
  leaf it is given is affected: wrap it in `optax.masked` (e.g. with
  `binary_kernel_mask`) to restrict it to binary kernels. ``dampen_weight`` may
  be injected with `optax.inject_hyperparams`.

  Args:
    dampen_weight: the extra weight decay of silent weights, >= 0.
    momentum: decay of the flip tracker, in [0, 1).
    threshold: weights whose tracker is below it are silent, >= 0.

  Returns:
    A :class:`optax.GradientTransformation` whose state
    (`SilenceAwarenessDecayState`) holds the tracker, the previous signs and
    the silent fraction of each leaf.

  References:
    Xiang et al., `OvSW: Overcoming Silent Weights for Accurate Binary Neural
    Networks <https://arxiv.org/abs/2407.05257>`_, ECCV 2024
  """
  if _is_concrete(dampen_weight) and dampen_weight < 0:
    raise ValueError(f"dampen_weight must be >= 0, got {dampen_weight}.")
  if _is_concrete(momentum) and not 0 <= momentum < 1:
    raise ValueError(
        f"momentum must be in [0, 1), got {momentum}. OvSW uses 0.999.")
  if _is_concrete(threshold) and threshold < 0:
    raise ValueError(f"threshold must be >= 0, got {threshold}.")

  def silent_fraction(tracker):
    return jax.tree.map(
        lambda t: jnp.mean(t < threshold, dtype=jnp.float32), tracker)

  def init_fn(params):
    tracker = jax.tree.map(lambda w: jnp.zeros(w.shape, jnp.float32), params)
    return SilenceAwarenessDecayState(
        tracker=tracker,
        prev_sign=jax.tree.map(lambda w: w >= 0, params),
        silent_fraction=silent_fraction(tracker),
    )

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(_NO_PARAMS_MSG)
    sign = jax.tree.map(lambda w: w >= 0, params)
    tracker = jax.tree.map(
        lambda t, s, p: momentum * t + (1 - momentum) * (s != p).astype(
            t.dtype), state.tracker, sign, state.prev_sign)

    def decay(g, t, w):
      silent = (t < threshold).astype(g.dtype)
      return g + dampen_weight * silent * w

    updates = jax.tree.map(decay, updates, tracker, params)
    return updates, SilenceAwarenessDecayState(
        tracker=tracker, prev_sign=sign,
        silent_fraction=silent_fraction(tracker))

  return optax.GradientTransformation(init_fn, update_fn)


def ovsw(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    delta: float = 0.04,
    dampen_weight: float = 9e-4,
    track_momentum: float = 0.999,
    track_threshold: float = 1e-4,
    mask: Optional[Mask] = binary_kernel_mask,
    weight_decay_mask: Optional[Mask] = None,
) -> optax.GradientTransformation:
  """SGD with momentum, AGS and SAD: the optimizer of OvSW.

  docs/semantics.md, section 6; the paper's Algorithm 1.

  In the reference order::

    g -> AGS (masked) -> SAD (masked) -> + weight_decay * w (weight_decay_mask)
      -> t = momentum * t + g  (no Nesterov, t starts at 0)
      -> update = -learning_rate * t

  Args:
    learning_rate: a scalar or a schedule (a function of the step count).
    momentum: SGD momentum.
    weight_decay: plain weight decay, on the leaves of ``weight_decay_mask``.
    delta: AGS's minimum gradient-to-weight norm ratio.
    dampen_weight: SAD's extra decay of silent weights.
    track_momentum: SAD's flip-tracker momentum.
    track_threshold: SAD's silence threshold.
    mask: where AGS and SAD apply, as in `optax.masked`: a tree of bools of the
      params' structure (or a prefix of it) or a callable building one from the
      params. Default: `binary_kernel_mask` (the binary convs' latent kernels
      only, as in the paper; the float stem, head and BatchNorm are left
      alone). Pass None, explicitly, to apply them to every leaf.
    weight_decay_mask: the same for weight decay; None decays every leaf (the
      CIFAR recipe). For ImageNet, skip 1-d params, e.g.
      ``lambda p: jax.tree.map(lambda x: x.ndim > 1, p)``.

  Returns:
    A :class:`optax.GradientTransformation`.

  References:
    Xiang et al., `OvSW: Overcoming Silent Weights for Accurate Binary Neural
    Networks <https://arxiv.org/abs/2407.05257>`_, ECCV 2024
  """
  if _is_concrete(momentum) and not 0 <= momentum < 1:
    raise ValueError(
        f"momentum must be in [0, 1), got {momentum}. OvSW uses 0.9.")
  return optax.chain(
      _masked(adaptive_gradient_scaling(delta), mask, "mask"),
      _masked(
          silence_awareness_decay(dampen_weight, track_momentum,
                                  track_threshold),
          mask, "mask"),
      _masked(optax.add_decayed_weights(weight_decay), weight_decay_mask,
              "weight_decay_mask"),
      optax.trace(decay=momentum, nesterov=False),
      optax.scale_by_learning_rate(learning_rate),
  )
