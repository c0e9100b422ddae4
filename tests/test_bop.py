"""Bop (Helwegen et al., 2019) against hand-made cases and a NumPy model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ovsw_jax import bop as bop_lib
from ovsw_jax import transforms


def np_bop_step(w, m, g, threshold, gamma):
  """One Bop step in NumPy float64 (m in float32 as the transform keeps it)."""
  m = ((1 - gamma) * m + gamma * g.astype(np.float32)).astype(np.float32)
  flip = (np.abs(m) > threshold) & ((m > 0) == (w >= 0))
  return np.where(flip, -w, w), m, flip


def test_single_step_hand_made_cases():
  # gamma 0.5: m = g / 2, all exact in float32.
  w = jnp.array([1.0, -1.0, 1.0, -1.0, 1.0, 0.75, -2.5, 1.0])
  g = jnp.array([
      1.0,     # m = 0.5 > 0.25, same sign as w: flip
      -1.0,    # m = -0.5, w < 0: flip
      -1.0,    # m = -0.5, w > 0: gradient says keep, no flip
      1.0,     # m = 0.5, w < 0: no flip
      0.5,     # m = 0.25 == threshold: not above it, no flip
      0.5 + 2**-20,   # m just above the threshold: flip (keeps |w|)
      -3.0,    # w < 0, m < 0: flip (keeps |w|)
      0.0,     # m = 0: no flip
  ])
  tx = bop_lib.bop(threshold=0.25, gamma=0.5)
  state = tx.init(w)
  updates, state = tx.update(g, state, w)
  new = optax.apply_updates(w, updates)
  np.testing.assert_array_equal(
      new, [-1.0, 1.0, 1.0, -1.0, 1.0, -0.75, 2.5, 1.0])
  np.testing.assert_array_equal(
      updates, [-2.0, 2.0, 0.0, 0.0, 0.0, -1.5, 5.0, 0.0])
  np.testing.assert_array_equal(state.momentum, np.asarray(g) / 2)
  assert state.momentum.dtype == jnp.float32


def test_momentum_accumulates_until_the_threshold():
  # A constant gradient c: m_t = c (1 - 0.9**t), crosses 0.3 c at t = 4.
  c, gamma = 2.0, 0.1
  threshold = 0.3 * c
  w = jnp.ones((3,))
  tx = bop_lib.bop(threshold=threshold, gamma=gamma)
  state = tx.init(w)
  flipped_at = None
  for t in range(1, 8):
    updates, state = tx.update(jnp.full((3,), c), state, w)
    w = optax.apply_updates(w, updates)
    np.testing.assert_allclose(state.momentum, c * (1 - 0.9**t), rtol=1e-6)
    if flipped_at is None and float(w[0]) < 0:
      flipped_at = t
  assert flipped_at == 4
  # Once flipped to -1, the positive m disagrees in sign: it stays -1.
  np.testing.assert_array_equal(w, -np.ones(3))


def test_matches_numpy_model_over_steps_under_jit():
  rng = np.random.default_rng(0)
  params = {"a": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
            "b": np.sign(rng.normal(size=(5, 6))).astype(np.float32)}
  threshold, gamma = 1e-3, 0.05
  tx = bop_lib.bop(threshold, gamma)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  p_jax = jax.tree.map(jnp.asarray, params)
  state = tx.init(p_jax)
  p_np = {k: v.astype(np.float64) for k, v in params.items()}
  m_np = {k: np.zeros(v.shape, np.float32) for k, v in params.items()}
  n_flips = 0
  for _ in range(6):
    grads = {k: (rng.normal(size=v.shape) * 0.05).astype(np.float32)
             for k, v in params.items()}
    updates, state = step(grads, state, p_jax)
    p_jax = optax.apply_updates(p_jax, updates)
    for k in params:
      p_np[k], m_np[k], flip = np_bop_step(p_np[k], m_np[k], grads[k],
                                           threshold, gamma)
      n_flips += flip.sum()
      np.testing.assert_array_equal(p_jax[k], p_np[k])
      np.testing.assert_allclose(state.momentum[k], m_np[k], rtol=1e-6,
                                 atol=1e-9)
      # Only signs change: magnitudes are exactly the initial ones.
      np.testing.assert_array_equal(np.abs(p_jax[k]), np.abs(params[k]))
  assert 0 < n_flips < sum(v.size for v in params.values()) * 6


def test_partition_with_sgd_for_float_params():
  rng = np.random.default_rng(1)
  params = {
      "conv": {"latent_kernel": jnp.asarray(
          rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
      "bn": {"scale": jnp.ones((4,)), "bias": jnp.zeros((4,))},
  }
  labels = lambda p: jax.tree.map(lambda b: "binary" if b else "float",
                                  transforms.binary_kernel_mask(p))
  tx = optax.partition({"binary": bop_lib.bop(1e-2, 0.5),
                        "float": optax.sgd(0.1)}, labels)
  state = tx.init(params)
  grads = jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  new = optax.apply_updates(params, updates)
  w = np.asarray(params["conv"]["latent_kernel"], np.float64)
  want_w, _, flip = np_bop_step(
      w, np.zeros(w.shape, np.float32),
      np.asarray(grads["conv"]["latent_kernel"]), 1e-2, 0.5)
  assert 0 < flip.sum() < flip.size
  np.testing.assert_array_equal(new["conv"]["latent_kernel"], want_w)
  for name in ("scale", "bias"):
    np.testing.assert_allclose(
        new["bn"][name], params["bn"][name] - 0.1 * grads["bn"][name],
        rtol=1e-6)


def test_injected_gamma_and_errors():
  tx = optax.inject_hyperparams(bop_lib.bop)(threshold=0.0, gamma=0.25)
  w = jnp.array([1.0, 1.0])
  state = tx.init(w)
  _, state = tx.update(jnp.array([1.0, -1.0]), state, w)
  state.hyperparams["gamma"] = jnp.asarray(0.5)
  updates, state = tx.update(jnp.array([1.0, -1.0]), state, w)
  # m = 0.5 * 0.25 + 0.5 * 1 = 0.625
  np.testing.assert_allclose(state.inner_state.momentum, [0.625, -0.625])
  np.testing.assert_array_equal(updates, [-2.0, 0.0])
  with pytest.raises(ValueError, match="params"):
    bop_lib.bop().update(w, bop_lib.bop().init(w))
  with pytest.raises(ValueError, match="threshold must be >= 0"):
    bop_lib.bop(threshold=-1.0)
  with pytest.raises(ValueError, match=r"gamma must be in \(0, 1\]"):
    bop_lib.bop(gamma=0.0)
