"""Tests of ovsw_jax.transforms against NumPy models.

The models are docs/semantics.md, sections 4-6.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ovsw_jax import transforms
from ovsw_jax.transforms import (adaptive_gradient_scaling, ags_diagnostics,
                                 binary_kernel_mask, ovsw, sad_diagnostics,
                                 silence_awareness_decay)

# Numerics that matter on a GPU/TPU (`-m accelerator`). Float32 results are
# compared with float64 NumPy models at float32 tolerances, which on a GPU
# hold only at full float32 precision (not TF32): `float32_matmuls`.
pytestmark = [pytest.mark.accelerator,
              pytest.mark.usefixtures("float32_matmuls")]

# ----------------------------------------------------------------- NumPy model


def np_ags(g, w, delta, grad_eps=1e-6, param_eps=1e-3):
  """Section 4 (AGS, Eq. 14) for one leaf.

  Returns (scaled g, per-channel ratio gn/pn before scaling).
  """
  g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
  axis = tuple(range(g.ndim - 1)) if g.ndim >= 2 else None
  gn = np.maximum(np.sqrt(np.sum(g**2, axis=axis, keepdims=True)), grad_eps)
  pn = np.maximum(np.sqrt(np.sum(w**2, axis=axis, keepdims=True)), param_eps)
  ratio = gn / pn
  return np.where(ratio < delta, g * delta * pn / gn, g), ratio.ravel()


class NumpyOvSW:
  """Section 6 in float64: AGS -> SAD on `binary` leaves, decay, momentum."""

  def __init__(self, params, binary, lr, momentum, weight_decay, delta,
               dampen, track_momentum, threshold):
    self.binary, self.lr, self.momentum = binary, lr, momentum
    self.wd, self.delta, self.dampen = weight_decay, delta, dampen
    self.m, self.tau = track_momentum, threshold
    self.trace = {k: np.zeros_like(w) for k, w in params.items()}
    self.tracker = {k: np.zeros_like(params[k]) for k in binary}
    self.prev_sign = {k: params[k] >= 0 for k in binary}
    self.count = 0

  def step(self, params, grads):
    """Returns new params; leaves ratios and silent fractions on self."""
    self.ratio, self.silent = {}, {}
    new = {}
    for k, w in params.items():
      g = grads[k]
      if k in self.binary:
        g, self.ratio[k] = np_ags(g, w, self.delta)
        flipped = (w >= 0) != self.prev_sign[k]
        self.tracker[k] = self.m * self.tracker[k] + (1 - self.m) * flipped
        silent = self.tracker[k] < self.tau
        self.silent[k] = silent.mean()
        g = g + self.dampen * silent * w
        self.prev_sign[k] = w >= 0
      g = g + self.wd * w
      self.trace[k] = self.momentum * self.trace[k] + g
      new[k] = w - self.lr(self.count) * self.trace[k]
    self.count += 1
    return new


def _nest(flat):
  """{'conv/latent_kernel': x} -> {'params': {'conv': {'latent_kernel': x}}}."""
  out = {}
  for path, x in flat.items():
    node = out.setdefault("params", {})
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = x
  return out


def _flat(tree):
  return {
      transforms.path_name(p)[len("params/"):]: np.asarray(x)
      for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


# ------------------------------------------------------------ the full chain


def test_ovsw_matches_numpy_model_with_flips_and_silent_weights():
  rng = np.random.default_rng(0)
  conv = rng.normal(0, 0.3, (3, 3, 2, 4))
  conv[..., 3] = 4.0 * np.sign(conv[..., 3])  # a channel far from zero
  dense = rng.normal(0, 0.3, (6, 3))
  dense[0] = [5.0, -5.0, 5.0]
  init = {"conv/latent_kernel": conv, "dense/latent_kernel": dense,
          "dense/bias": rng.normal(0, 0.1, (3,))}
  binary = ("conv/latent_kernel", "dense/latent_kernel")
  # Per-channel gradient scales, so that AGS scales some channels and not
  # others; the large-weight channels get tiny gradients.
  scale = {"conv/latent_kernel": np.array([1e-3, 1e-2, 1.0, 1e-4]),
           "dense/latent_kernel": np.array([1e-3, 0.5, 2.0]),
           "dense/bias": np.array([0.1, 1.0, 0.01])}
  hp = dict(momentum=0.9, weight_decay=5e-3, delta=0.04, dampen=0.05,
            track_momentum=0.999, threshold=1e-4)
  lr = lambda count: 0.1 / (1.0 + 0.1 * count)
  model = NumpyOvSW(init, binary, lr=lr, **hp)

  tx = ovsw(lr, momentum=hp["momentum"], weight_decay=hp["weight_decay"],
            delta=hp["delta"], dampen_weight=hp["dampen"],
            track_momentum=hp["track_momentum"],
            track_threshold=hp["threshold"], mask=binary_kernel_mask)
  params = _nest({k: jnp.asarray(v, jnp.float32) for k, v in init.items()})
  state = tx.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    diags = {**ags_diagnostics(state), **sad_diagnostics(state)}
    return optax.apply_updates(params, updates), state, diags

  np_params = dict(init)
  for _ in range(30):
    grads = {k: rng.normal(0, 1, v.shape) * scale[k] for k, v in init.items()}
    params, state, diags = step(
        params, state, _nest({k: jnp.asarray(g, jnp.float32)
                              for k, g in grads.items()}))
    np_params = model.step(np_params, grads)
    got = _flat(params)
    for k in init:
      np.testing.assert_allclose(got[k], np_params[k], rtol=1e-5, atol=1e-6,
                                 err_msg=k)
    sad_state = state[1].inner_state
    tracker = _flat(sad_state.tracker)
    for k in binary:
      np.testing.assert_allclose(tracker[k], model.tracker[k], atol=1e-7)
      np.testing.assert_array_equal(_flat(sad_state.prev_sign)[k],
                                    model.prev_sign[k])
      np.testing.assert_allclose(diags[f"ags_ratio/params/{k}"],
                                 model.ratio[k].mean(), rtol=1e-5)
      np.testing.assert_allclose(diags[f"silent_fraction/params/{k}"],
                                 model.silent[k], rtol=1e-6)
    all_ratios = np.concatenate([model.ratio[k] for k in binary])
    np.testing.assert_allclose(diags["ags_ratio"], all_ratios.mean(), rtol=1e-5)
    n_silent = sum(model.silent[k] * init[k].size for k in binary)
    np.testing.assert_allclose(diags["silent_fraction"],
                               n_silent / sum(init[k].size for k in binary),
                               rtol=1e-6)
    assert "ags_ratio/params/dense/bias" not in diags
    assert "silent_fraction/params/dense/bias" not in diags

  # The run exercised both SAD branches and both AGS branches.
  flipped = np.concatenate([(model.tracker[k] > 0).ravel() for k in binary])
  assert 0 < flipped.sum() < flipped.size
  all_ratios = np.concatenate([model.ratio[k] for k in binary])
  assert (all_ratios < hp["delta"]).any() and (all_ratios >= hp["delta"]).any()


def test_ovsw_defaults_and_state_layout():
  params = {"a": {"latent_kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
  state = ovsw(0.1, mask=binary_kernel_mask).init(params)
  sad = state[1].inner_state
  assert isinstance(sad, transforms.SilenceAwarenessDecayState)
  assert sad.prev_sign["a"]["latent_kernel"].dtype == jnp.bool_
  assert sad.tracker["a"]["latent_kernel"].dtype == jnp.float32
  assert isinstance(sad.prev_sign["a"]["bias"], optax.MaskedNode)
  # Section 6 defaults: lr*(g + wd*w) with a fresh momentum buffer, AGS, SAD.
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = ovsw(0.1).update(grads, ovsw(0.1).init(params), params)
  # Zero grads: AGS leaves them 0, all weights silent -> decay 9e-4 + 5e-4.
  np.testing.assert_allclose(updates["a"]["latent_kernel"],
                             -0.1 * (9e-4 + 5e-4), rtol=1e-6)


# ------------------------------------------------------------------------ AGS


def test_ags_matches_formula_including_eps_clamps_and_unchanged_branch():
  w = {"dense": jnp.array([[3.0, 0.0, 1.0, 0.0], [4.0, 0.0, 0.0, 0.0]]),
       "vec": jnp.array([0.6, 0.8]), "scalar": jnp.array(2.0)}
  g = {"dense": jnp.array([[0.03, 0.0, 2.0, 0.6e-5], [0.04, 0.0, 0.0, 0.8e-5]]),
       "vec": jnp.array([0.0, 0.02]), "scalar": jnp.array(-0.5)}
  tx = adaptive_gradient_scaling(0.04)
  updates, state = jax.jit(tx.update)(g, tx.init(w), w)
  # col 0: ratio 0.05/5 -> x4; col 1: zero grad and param -> clamped, stays 0;
  # col 2: ratio 2 -> unchanged; col 3: zero param, ratio 1e-5/1e-3 -> x4.
  np.testing.assert_allclose(
      updates["dense"], [[0.12, 0.0, 2.0, 2.4e-5], [0.16, 0.0, 0.0, 3.2e-5]],
      rtol=1e-5)
  # The 1-d leaf is one group.
  np.testing.assert_allclose(updates["vec"], [0.0, 0.04], rtol=1e-5)
  np.testing.assert_allclose(updates["scalar"], -0.5)  # ratio 0.25: unchanged
  ratios = [0.01, 1e-6 / 1e-3, 2.0, 0.01]
  np.testing.assert_allclose(state.ratio["dense"], np.mean(ratios), rtol=1e-5)
  np.testing.assert_allclose(state.ratio["vec"], 0.02, rtol=1e-5)
  np.testing.assert_allclose(state.ratio["scalar"], 0.25, rtol=1e-6)
  np.testing.assert_allclose(state.mean_ratio,
                             np.mean(ratios + [0.02, 0.25]), rtol=1e-5)
  assert int(state.num_groups) == 6
  # ags_ratio is read before scaling: the update's own ratios are
  # max(r, delta) per channel (col 0: 0.01 recorded, 0.04 applied).
  np.testing.assert_allclose(ags_diagnostics(state)["ags_ratio"],
                             state.mean_ratio)
  applied = (np.linalg.norm(updates["dense"], axis=0)
             / np.maximum(np.linalg.norm(w["dense"], axis=0), 1e-3))
  np.testing.assert_allclose(applied[[0, 2, 3]], [0.04, 2.0, 0.04],
                             rtol=1e-5)
  # A ratio exactly at delta is left alone; just below it is raised to delta.
  tx = adaptive_gradient_scaling(0.5)
  w1 = jnp.array([2.0])
  u, _ = tx.update(jnp.array([1.0]), tx.init(w1), w1)
  np.testing.assert_array_equal(u, [1.0])
  u, _ = tx.update(jnp.array([0.75]), tx.init(w1), w1)
  np.testing.assert_allclose(u, [1.0], rtol=1e-6)


def test_ags_groups_per_output_channel_of_conv_kernel():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(3, 3, 2, 5)).astype(np.float32)
  g = (rng.normal(size=w.shape) * np.array([1e-3, 1e-2, 0.1, 1.0, 10.0])
       ).astype(np.float32)
  tx = adaptive_gradient_scaling(0.04)
  u, state = tx.update(jnp.asarray(g), tx.init(jnp.asarray(w)), jnp.asarray(w))
  expected, ratio = np_ags(g, w, 0.04)
  np.testing.assert_allclose(u, expected, rtol=1e-5)
  np.testing.assert_allclose(state.ratio, ratio.mean(), rtol=1e-5)


def test_ags_chains_with_adam():
  rng = np.random.default_rng(2)
  w = {"k": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  tx = optax.chain(adaptive_gradient_scaling(0.04), optax.adam(1e-2))
  ref = optax.adam(1e-2)
  state, ref_state = tx.init(w), ref.init(w)
  step = jax.jit(tx.update)
  for _ in range(3):
    g = rng.normal(size=(4, 3)) * np.array([1e-3, 1.0, 1e-2])
    u, state = step({"k": jnp.asarray(g, jnp.float32)}, state, w)
    scaled, _ = np_ags(g, w["k"], 0.04)
    ref_u, ref_state = ref.update({"k": jnp.asarray(scaled, jnp.float32)},
                                  ref_state, w)
    np.testing.assert_allclose(u["k"], ref_u["k"], rtol=1e-4, atol=1e-7)
    w = optax.apply_updates(w, u)


def test_ags_injected_delta_changes_result():
  w = jnp.array([[3.0], [4.0]])
  g = jnp.array([[0.03], [0.04]])  # ratio 0.01
  tx = optax.inject_hyperparams(adaptive_gradient_scaling)(delta=0.04)
  state = tx.init(w)
  update = jax.jit(tx.update)
  u, state = update(g, state, w)
  np.testing.assert_allclose(u, g * 4, rtol=1e-5)
  state.hyperparams["delta"] = jnp.asarray(0.02)
  u, state = update(g, state, w)
  np.testing.assert_allclose(u, g * 2, rtol=1e-5)
  state.hyperparams["delta"] = jnp.asarray(0.005)  # below the ratio
  u, state = update(g, state, w)
  np.testing.assert_allclose(u, g, rtol=1e-6)
  np.testing.assert_allclose(ags_diagnostics(state)["ags_ratio"], 0.01,
                             rtol=1e-5)


# ------------------------------------------------------------------------ SAD


def test_sad_tracker_and_silent_fraction_on_a_known_flip_pattern():
  lam, g = 0.1, jnp.full((4,), 0.5)
  tx = silence_awareness_decay(lam, momentum=0.5, threshold=0.2)
  # 0 and -0.0 count as + (like sign_ste).
  ws = [[1.0, -1.0, 1.0, 0.0], [-1.0, -1.0, 1.0, -0.0],
        [-1.0, 1.0, 1.0, -1.0], [1.0, 1.0, 1.0, -1.0], [1.0, 1.0, 1.0, -1.0]]
  trackers = [[0.5, 0, 0, 0], [0.25, 0.5, 0, 0.5], [0.625, 0.25, 0, 0.25],
              [0.3125, 0.125, 0, 0.125]]
  fractions = [0.75, 0.25, 0.25, 0.75]
  state = tx.init(jnp.asarray(ws[0]))
  assert state.prev_sign.dtype == jnp.bool_
  np.testing.assert_array_equal(state.prev_sign, [True, False, True, True])
  np.testing.assert_array_equal(state.silent_fraction, 1.0)
  update = jax.jit(tx.update)
  for w, tracker, fraction in zip(ws[1:], trackers, fractions):
    w = jnp.asarray(w)
    u, state = update(g, state, w)
    np.testing.assert_array_equal(state.tracker, tracker)
    silent = np.asarray(tracker) < 0.2
    np.testing.assert_allclose(u, 0.5 + lam * silent * np.asarray(w),
                               rtol=1e-6)
    np.testing.assert_array_equal(state.prev_sign, np.asarray(w) >= 0)
    np.testing.assert_array_equal(state.silent_fraction, fraction)
    np.testing.assert_array_equal(sad_diagnostics(state)["silent_fraction"],
                                  fraction)


def test_sad_one_flip_keeps_a_weight_active_for_about_2300_steps():
  tx = silence_awareness_decay(1.0)
  w0, w1 = jnp.array([1.0, 1.0]), jnp.array([-1.0, 1.0])
  state = tx.init(w0)
  _, state = tx.update(jnp.zeros(2), state, w1)  # weight 0 flips once
  np.testing.assert_allclose(state.tracker, [1e-3, 0.0], rtol=1e-5)

  def body(state, _):
    _, state = tx.update(jnp.zeros(2), state, w1)
    return state, state.tracker[0]

  _, tracker = jax.lax.scan(body, state, length=2400)
  silent_after = int(np.argmax(np.asarray(tracker) < 1e-4)) + 1
  assert 2290 < silent_after < 2310  # 0.999**k < 0.1 for k >= 2302


def test_sad_masked_to_binary_kernels_and_injected_dampen_weight():
  params = {"params": {"conv": {"latent_kernel": jnp.array([[0.5, -2.0]]),
                                "bias": jnp.array([3.0, -1.0])}}}
  g = jax.tree.map(jnp.ones_like, params)
  inner = optax.inject_hyperparams(silence_awareness_decay)(dampen_weight=0.1)
  tx = optax.masked(inner, binary_kernel_mask)
  state = tx.init(params)
  update = jax.jit(tx.update)
  u, state = update(g, state, params)
  conv = u["params"]["conv"]
  np.testing.assert_allclose(conv["latent_kernel"], [[1.05, 0.8]], rtol=1e-6)
  np.testing.assert_array_equal(conv["bias"], [1.0, 1.0])  # masked out
  state.inner_state.hyperparams["dampen_weight"] = jnp.asarray(0.5)
  u, state = update(g, state, params)
  np.testing.assert_allclose(u["params"]["conv"]["latent_kernel"],
                             [[1.25, 0.0]], rtol=1e-6)
  assert set(sad_diagnostics(state)) == {
      "silent_fraction", "silent_fraction/params/conv/latent_kernel"}


# ------------------------------------------------------------- composability


def test_partition_binary_ags_sgd_and_float_adam():
  params = {"conv": {"latent_kernel": jnp.array([[3.0, 1.0], [4.0, 0.0]])},
            "head": {"kernel": jnp.array([[0.5, -0.5]]), "bias": jnp.zeros(2)}}
  labels = lambda p: jax.tree.map(lambda b: "binary" if b else "float",
                                  binary_kernel_mask(p))
  tx = optax.partition(
      {"binary": optax.chain(adaptive_gradient_scaling(0.04),
                             optax.sgd(0.1, momentum=0.9)),
       "float": optax.adam(1e-2)}, labels)
  g = {"conv": {"latent_kernel": jnp.array([[0.03, 1.0], [0.04, 0.0]])},
       "head": {"kernel": jnp.array([[1.0, 2.0]]), "bias": jnp.ones(2)}}
  state = tx.init(params)
  u, state = jax.jit(tx.update)(g, state, params)
  # Column 0: ratio 0.01 -> x4; column 1: ratio 1 -> unchanged.
  np.testing.assert_allclose(u["conv"]["latent_kernel"],
                             -0.1 * np.array([[0.12, 1.0], [0.16, 0.0]]),
                             rtol=1e-5)
  adam = optax.adam(1e-2)
  ref, _ = adam.update(g["head"], adam.init(params["head"]), params["head"])
  np.testing.assert_allclose(u["head"]["kernel"], ref["kernel"], rtol=1e-6)
  np.testing.assert_allclose(u["head"]["bias"], ref["bias"], rtol=1e-6)
  diags = jax.jit(ags_diagnostics)(state)
  assert set(diags) == {"ags_ratio", "ags_ratio/conv/latent_kernel"}
  np.testing.assert_allclose(diags["ags_ratio"], (0.01 + 1.0) / 2, rtol=1e-5)
  assert not transforms.has_sad_state(state)
  with pytest.raises(ValueError, match="no silence_awareness_decay state"):
    sad_diagnostics(state)


def test_ags_diagnostics_weights_several_states_by_channel_count():
  params = {"a": jnp.ones((2, 3)), "b": jnp.ones((2, 1))}
  grads = {"a": jnp.full((2, 3), 0.1), "b": jnp.ones((2, 1))}
  tx = optax.partition({"x": adaptive_gradient_scaling(0.04),
                        "y": adaptive_gradient_scaling(0.04)},
                       {"a": "x", "b": "y"})
  _, state = tx.update(grads, tx.init(params), params)
  diags = ags_diagnostics(state)
  np.testing.assert_allclose(diags["ags_ratio/a"], 0.1, rtol=1e-6)
  np.testing.assert_allclose(diags["ags_ratio/b"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(diags["ags_ratio"], (3 * 0.1 + 1.0) / 4,
                             rtol=1e-6)


def test_multisteps_ovsw_equals_ovsw_on_mean_gradient():
  rng = np.random.default_rng(3)
  params = {"l": {"latent_kernel": jnp.asarray(rng.normal(size=(3, 2)),
                                               jnp.float32),
                  "bias": jnp.zeros(2)}}
  g1, g2 = [jax.tree.map(lambda x: jnp.asarray(
      rng.normal(size=x.shape) * 0.01, jnp.float32), params) for _ in range(2)]
  make = functools.partial(ovsw, 0.1, mask=binary_kernel_mask)
  tx = optax.MultiSteps(make(), every_k_schedule=2)
  state = tx.init(params)
  update = jax.jit(tx.update)
  u1, state = update(g1, state, params)
  np.testing.assert_array_equal(u1["l"]["latent_kernel"], 0.0)
  u2, state = update(g2, state, params)
  ref = make()
  mean_g = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  ref_u, ref_state = ref.update(mean_g, ref.init(params), params)
  np.testing.assert_allclose(u2["l"]["latent_kernel"],
                             ref_u["l"]["latent_kernel"], rtol=1e-5)
  np.testing.assert_allclose(u2["l"]["bias"], ref_u["l"]["bias"], rtol=1e-5)
  got, want = ags_diagnostics(state), ags_diagnostics(ref_state)
  assert set(got) == {"ags_ratio", "ags_ratio/l/latent_kernel"}
  np.testing.assert_allclose(got["ags_ratio"], want["ags_ratio"], rtol=1e-5)
  assert set(sad_diagnostics(state)) == set(sad_diagnostics(ref_state))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("delta", [0.0, -0.1])
def test_ags_rejects_nonpositive_delta(delta):
  with pytest.raises(ValueError, match=f"delta must be > 0, got {delta}"):
    adaptive_gradient_scaling(delta)


@pytest.mark.parametrize("kwargs, match", [
    (dict(momentum=1.0), "momentum must be in \\[0, 1\\), got 1.0"),
    (dict(momentum=-0.1), "momentum must be in \\[0, 1\\), got -0.1"),
    (dict(threshold=-1e-4), "threshold must be >= 0"),
    (dict(dampen_weight=-1.0), "dampen_weight must be >= 0, got -1.0"),
])
def test_sad_rejects_bad_hyperparameters(kwargs, match):
  kwargs = {"dampen_weight": 1e-3, **kwargs}
  with pytest.raises(ValueError, match=match):
    silence_awareness_decay(**kwargs)


@pytest.mark.parametrize("momentum", [1.0, 1.5, -0.5])
def test_ovsw_rejects_sgd_momentum_outside_unit_interval(momentum):
  with pytest.raises(ValueError, match=f"momentum must be in .*got {momentum}"):
    ovsw(0.1, momentum=momentum)


def test_mask_structure_mismatch_names_both_structures():
  params = {"a": {"latent_kernel": jnp.ones(2)}, "b": jnp.ones(2)}
  with pytest.raises(ValueError, match=r"mask structure .*'c'.*params"
                     r" structure .*'a'"):
    ovsw(0.1, mask={"c": True, "b": False}).init(params)
  with pytest.raises(ValueError, match="weight_decay_mask"):
    ovsw(0.1, weight_decay_mask={"a": True}).init(params)


@pytest.mark.parametrize("tx", [adaptive_gradient_scaling(0.04),
                                silence_awareness_decay(1e-3)])
def test_transforms_need_params(tx):
  w = jnp.ones(3)
  with pytest.raises(ValueError, match="not passing `params`"):
    tx.update(w, tx.init(w))


def test_ovsw_default_mask_is_binary_kernels_and_none_means_all_leaves():
  params = {"stem": {"kernel": jnp.ones((2, 3))},
            "conv": {"latent_kernel": jnp.ones((2, 3))},
            "bn": {"scale": jnp.ones(3)}}
  grads = jax.tree.map(jnp.zeros_like, params)
  # Zero grads: with SAD, a silent leaf decays by 9e-4 on top of 5e-4.
  updates, state = ovsw(0.1).update(grads, ovsw(0.1).init(params), params)
  np.testing.assert_allclose(updates["conv"]["latent_kernel"],
                             -0.1 * (9e-4 + 5e-4), rtol=1e-6)
  np.testing.assert_allclose(updates["stem"]["kernel"], -0.1 * 5e-4,
                             rtol=1e-6)
  np.testing.assert_allclose(updates["bn"]["scale"], -0.1 * 5e-4, rtol=1e-6)
  assert set(sad_diagnostics(state)) == {
      "silent_fraction", "silent_fraction/conv/latent_kernel"}
  tx = ovsw(0.1, mask=None)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["bn"]["scale"], -0.1 * (9e-4 + 5e-4),
                             rtol=1e-6)


def test_diagnostics_readers_raise_without_their_state():
  params = {"conv": {"latent_kernel": jnp.ones((2, 3))}}
  state = optax.sgd(0.1).init(params)
  assert not transforms.has_ags_state(state)
  assert not transforms.has_sad_state(state)
  with pytest.raises(ValueError, match="no adaptive_gradient_scaling state"):
    ags_diagnostics(state)
  with pytest.raises(ValueError, match="no silence_awareness_decay state"):
    sad_diagnostics(state)
  assert transforms.has_sad_state(ovsw(0.1).init(params))
