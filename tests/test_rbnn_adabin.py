"""RBNNConv, AdaBinConv and Maxout against NumPy float64 models.

The backward passes are hand-derived: RBNN's training-aware sign and the
adjustable rotated weight (through the per-channel and per-sample
standardisations, whose backward `tests.test_irnet` checks against finite
differences); AdaBin's adaptive sets (through the per-channel mean and
population std, with gradient, and the learnable alpha_a, beta_a). The
rotation update is checked against a NumPy transcription of the authors'
loop, and the 'rbnn' method part runs it only at an epoch's first step.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovsw_jax import adabin
from ovsw_jax import rbnn
from ovsw_jax.training import experiment as experiment_lib
from ovsw_jax.training import methods
from tests.test_irnet import np_balanced
from tests.test_irnet import np_balanced_vjp
from tests.test_irnet import np_ede_grad
from tests.test_methods import small_config
from tests.test_recu import np_conv
from tests.test_recu import np_conv_vjp
from tests.test_recu import np_sign


def np_standardize_vjp(x, u, axes):
  """d/dx of sum(((x - mean) / std(ddof=1)) * u) over ``axes``."""
  n = np.prod([x.shape[a] for a in axes])
  c = x - x.mean(axis=axes, keepdims=True)
  s = c.std(axis=axes, ddof=1, keepdims=True)
  x_s, u_c = c / s, u - u.mean(axis=axes, keepdims=True)
  return (u_c - x_s * (x_s * u).sum(axis=axes, keepdims=True) / (n - 1)) / s


def np_matrices(w2):
  kh, kw, c_in, c_out = w2.shape
  a, b = rbnn.rotation_shape(c_in * kh * kw)
  return w2.transpose(3, 2, 0, 1).reshape(c_out, a, b)


def np_rbnn_grad(x, k, t):
  return k * np.maximum(0, math.sqrt(2) * t - t * t * np.abs(x))


def np_rbnn(a, w, theta, scale, r1, r2, k, t, g, stride, pad):
  """Forward and gradients (a, w, theta, scale) of sum(out * g)."""
  axes_n = (1, 2, 3)
  c = a - a.mean(axis=axes_n, keepdims=True)
  a2 = c / c.std(axis=axes_n, ddof=1, keepdims=True)
  w2 = np_balanced(w)
  rot = (r1.T @ np_matrices(w2) @ r2).reshape(
      w.shape[3], w.shape[2], w.shape[0], w.shape[1]).transpose(2, 3, 1, 0)
  blend = np.abs(np.sin(theta))
  w3 = w2 + blend * (rot - w2)
  a_b, w_b = np_sign(a2), np_sign(w3)
  y = np_conv(a_b, w_b, stride, pad)
  g_ab, g_wb = np_conv_vjp(a_b, w_b, g * scale, stride, pad)
  g_w3 = g_wb * np_rbnn_grad(w3, k, t)
  g_theta = (g_w3 * (rot - w2)).sum(axis=(0, 1, 2)) * np.sign(
      np.sin(theta)) * np.cos(theta)
  g_w = np_balanced_vjp(w, g_w3 * (1 - blend))
  g_a = np_standardize_vjp(a, g_ab * np_rbnn_grad(a2, 1.0, max(t, 1.0)),
                           axes_n)
  return y * scale, g_a, g_w, g_theta, (y * g).sum(axis=(0, 1, 2))


@pytest.mark.parametrize("stride,k,t", [(1, 100.0, 0.01), (2, 1.0, 3.0)])
def test_rbnn_forward_and_gradients_match_numpy(stride, k, t):
  rng = np.random.default_rng(stride)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  conv = rbnn.RBNNConv(5, strides=(stride, stride))
  variables = conv.init(jax.random.key(0), jnp.asarray(x))
  state = rbnn.set_schedule(variables[rbnn.COLLECTION], k, t)
  w = rng.normal(size=(3, 3, 3, 5))
  params = {"latent_kernel": jnp.asarray(w, jnp.float32),
            "scale": jnp.asarray(rng.uniform(0.5, 1.5, 5), jnp.float32),
            "rotate": jnp.asarray(rng.uniform(0.3, 1.3, 5), jnp.float32)}
  g = rng.normal(size=(2, 6 // stride, 6 // stride, 5))
  r1, r2 = (np.asarray(state[n], np.float64) for n in (rbnn.R1, rbnn.R2))
  assert r1.shape == (3, 3) and r2.shape == (9, 9)  # 27 = 3 x 9
  np.testing.assert_allclose(r2 @ r2.T, np.eye(9), atol=1e-5)
  want, g_a, g_w, g_theta, g_scale = np_rbnn(
      x.astype(np.float64), w, np.asarray(params["rotate"], np.float64),
      np.asarray(params["scale"], np.float64), r1, r2, k, t, g, stride, 1)

  def loss(params, x):
    y = conv.apply({"params": params, rbnn.COLLECTION: state}, x, train=True)
    return jnp.sum(y * g.astype(np.float32)), y

  (_, y), (g_p, g_x) = jax.jit(jax.value_and_grad(loss, (0, 1),
                                                  has_aux=True))(
      params, jnp.asarray(x))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_x, g_a, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g_p["latent_kernel"], g_w, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g_p["rotate"], g_theta, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g_p["scale"], g_scale, rtol=1e-5, atol=1e-4)
  # Eval: the same forward (activations standardised there too).
  np.testing.assert_array_equal(
      conv.apply({"params": params, rbnn.COLLECTION: state}, x), y)
  with pytest.raises(ValueError, match="'rbnn' collection"):
    conv.apply({"params": params}, x)
  with pytest.raises(ValueError, match="RBNN .* cannot be exported"):
    conv.eval_signs_and_scale(params)


def np_rotation_update(x, r1, r2, rounds=3):
  """The authors' loop (lmbxmu/RBNN, BinarizeConv2d.forward), in float64."""
  for _ in range(rounds):
    b = np.sign(r1.T @ x @ r2)
    d1 = sum(bi @ r2.T @ xi.T for bi, xi in zip(b, x))
    u1, _, v1h = np.linalg.svd(d1)      # torch.svd's V is v1h.T
    r1 = v1h.T @ u1.T
    d2 = sum(xi.T @ r1 @ bi for xi, bi in zip(x, b))
    u2, _, v2h = np.linalg.svd(d2)
    r2 = u2 @ v2h
  return r1, r2


def test_rotation_update_and_its_epoch_schedule_match_numpy():
  """'rbnn' refits R1, R2 at an epoch's first step only, as the NumPy loop;
  the fit lowers the quantisation error ||B - R1^T X R2|| of the code."""
  conv = rbnn.RBNNConv(8)
  x = jnp.zeros((1, 4, 4, 4))
  variables = conv.init(jax.random.key(2), x)
  w = np.random.default_rng(5).normal(size=(3, 3, 4, 8))
  params = {**variables["params"], "latent_kernel": jnp.asarray(w,
                                                                jnp.float32)}
  state = {"layer": variables[rbnn.COLLECTION]}
  r1, r2 = (np.asarray(state["layer"][n], np.float64)
            for n in (rbnn.R1, rbnn.R2))
  x_np = np_matrices(np_balanced(w))
  want1, want2 = np_rotation_update(x_np, r1, r2)

  def error(r1, r2):
    v = r1.T @ x_np @ r2
    return np.linalg.norm(np.sign(v) - v)

  assert error(want1, want2) < error(r1, r2)
  config = small_config(method="rbnn+ovsw", num_epochs=2)
  fn = methods.create_model_state_fn(config, steps_per_epoch=2)
  model_state = {rbnn.COLLECTION: state}
  for step, rotates in ((1, False), (2, True)):
    out, metrics = jax.jit(fn)(model_state, jnp.int32(step),
                               {"layer": params})
    got = out[rbnn.COLLECTION]["layer"]
    if rotates:
      np.testing.assert_allclose(got[rbnn.R1], want1, atol=2e-4)
      np.testing.assert_allclose(got[rbnn.R2], want2, atol=2e-4)
    else:
      np.testing.assert_array_equal(got[rbnn.R1], r1.astype(np.float32))
    k, t = rbnn_schedule = (float(metrics["rbnn_k"]), float(metrics["rbnn_t"]))
    want_t = 10 ** (-2 + 3 * (step // 2) / 2)
    assert rbnn_schedule == pytest.approx((max(1 / want_t, 1), want_t),
                                          rel=1e-6)
    assert float(got[rbnn.T]) == pytest.approx(t) and float(
        got[rbnn.K]) == pytest.approx(k)


def np_adabin(a, w, alpha, beta, k, t, g, stride, pad):
  """Forward and gradients (a, w, alpha_a, beta_a) of sum(out * g)."""
  u = (a - beta) / alpha
  phi = np.maximum(0, 2 - 2 * np.abs(u))
  a_b = alpha * (np_sign(u) + beta)
  axes = (0, 1, 2)
  n = np.prod(w.shape[:3])
  beta_w = w.mean(axis=axes, keepdims=True)
  alpha_w = np.sqrt(((w - beta_w) ** 2).mean(axis=axes, keepdims=True))
  w_n = (w - beta_w) / alpha_w
  s_w = np_sign(w_n)
  w_b = s_w * alpha_w + beta_w
  out = np_conv(a_b, w_b, stride, pad)
  g_ab, v = np_conv_vjp(a_b, w_b, g, stride, pad)
  q = v * alpha_w * np_ede_grad(w_n, k, t)
  mean = lambda z: z.mean(axis=axes, keepdims=True)
  g_w = ((q - mean(q) - w_n * mean(w_n * q)) / alpha_w
         + w_n * (v * s_w).sum(axis=axes, keepdims=True) / n + mean(v))
  g_alpha = np.sum(g_ab * (np_sign(u) + beta - phi * u))
  g_beta = np.sum(g_ab * (alpha - phi))
  return out, g_ab * phi, g_w, g_alpha, g_beta, (a_b, w_b)


@pytest.mark.parametrize("stride,k,t", [(1, 1000.0, 1e-3), (2, 1.0, 3.0)])
def test_adabin_forward_and_gradients_match_numpy(stride, k, t):
  rng = np.random.default_rng(10 + stride)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  conv = adabin.AdaBinConv(4, strides=(stride, stride))
  variables = conv.init(jax.random.key(0), jnp.asarray(x))
  assert set(variables["params"]) == {"latent_kernel", "alpha_a", "beta_a"}
  ede = adabin.irnet.set_ede(variables[adabin.COLLECTION], k, t)
  w = rng.normal(loc=0.3, size=(3, 3, 3, 4))
  alpha, beta = 0.8, 0.2
  params = {"latent_kernel": jnp.asarray(w, jnp.float32),
            "alpha_a": jnp.float32(alpha), "beta_a": jnp.float32(beta)}
  g = rng.normal(size=(2, 6 // stride, 6 // stride, 4))
  want, g_a, g_w, g_alpha, g_beta, (a_b, w_b) = np_adabin(
      x.astype(np.float64), w, alpha, beta, k, t, g, stride, 1)
  # The two sets: {alpha (beta -+ 1)} and {beta_w -+ alpha_w} per channel.
  np.testing.assert_allclose(np.unique(a_b), [alpha * (beta - 1),
                                              alpha * (beta + 1)])
  assert all(len(np.unique(np.round(w_b[..., o], 10))) == 2 for o in range(4))

  def loss(params, x):
    y = conv.apply({"params": params, adabin.COLLECTION: ede}, x, train=True)
    return jnp.sum(y * g.astype(np.float32)), y

  (_, y), (g_p, g_x) = jax.jit(jax.value_and_grad(loss, (0, 1),
                                                  has_aux=True))(
      params, jnp.asarray(x))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(g_x, g_a, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g_p["latent_kernel"], g_w, rtol=1e-4, atol=2e-4)
  np.testing.assert_allclose(g_p["alpha_a"], g_alpha, rtol=1e-4)
  np.testing.assert_allclose(g_p["beta_a"], g_beta, rtol=1e-4)
  # Eval: the same forward (not +-1 operands: equal up to rounding).
  np.testing.assert_allclose(jax.jit(conv.apply)({"params": params}, x), y,
                             rtol=1e-6, atol=1e-5)
  assert not conv.exact_pm1_operands  # no bfloat16 operands
  with pytest.raises(ValueError, match="AdaBin .* cannot be exported"):
    conv.eval_signs_and_scale(params)


def test_maxout_matches_numpy():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(2, 3, 3, 4))
  g = rng.normal(size=x.shape)
  pos, neg = rng.uniform(0.5, 1.5, 4), rng.uniform(0.1, 0.5, 4)
  params = {"pos_scale": jnp.asarray(pos, jnp.float32),
            "neg_scale": jnp.asarray(neg, jnp.float32)}
  m = adabin.Maxout()
  init = m.init(jax.random.key(0), jnp.zeros((1, 4)))["params"]
  np.testing.assert_array_equal(init["pos_scale"], np.ones(4))
  np.testing.assert_array_equal(init["neg_scale"], np.full(4, 0.25))

  def loss(params, x):
    return jnp.sum(m.apply({"params": params}, x) * g)

  g_p, g_x = jax.grad(loss, (0, 1))(params, jnp.asarray(x, jnp.float32))
  relu_p, relu_n = np.maximum(x, 0), np.maximum(-x, 0)
  np.testing.assert_allclose(
      m.apply({"params": params}, jnp.asarray(x, jnp.float32)),
      pos * relu_p - neg * relu_n, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(g_x, g * np.where(x > 0, pos, neg), rtol=1e-6)
  np.testing.assert_allclose(g_p["pos_scale"], (g * relu_p).sum((0, 1, 2)),
                             rtol=1e-5)
  np.testing.assert_allclose(g_p["neg_scale"], -(g * relu_n).sum((0, 1, 2)),
                             rtol=1e-5)


def test_registry_parts_build_the_models_and_check_their_fields():
  for method, conv, extra in (("rbnn+ovsw", rbnn.RBNNConv, {}),
                              ("adabin+ovsw", adabin.AdaBinConv,
                               {"nonlinearity": adabin.Maxout})):
    assert methods.method_parts(method) == [method.split("+")[0], "ags", "sad"]
    model = methods.create_model(small_config(method=method), 10)
    assert model.conv.func is conv
    assert {k: getattr(model, k) for k in extra} == extra
  # AdaBin's sets are not +-1: the CPU fast path leaves them float32.
  assert model.binary_operand_dtype is None
  k, t = model.conv.keywords["k_init"], model.conv.keywords["t_init"]
  assert (k, t) == pytest.approx((1000.0, 0.001))
  with pytest.raises(ValueError, match=r"Unknown option\(s\) \['nonlinearity"):
    methods.create_model(small_config(method="adabin",
                                      model="cresnet18_1w1a"), 10)
  for key, value, reported, expected in (
      ("rbnn_t_max", 0.001, "rbnn_t_max", r"in \[rbnn_t_min=0.01, inf\)"),
      ("rbnn_rotation_update", 0, "rbnn_rotation_update", "an int >= 1"),
      ("adabin_t_min", 0.0, "adabin_t_max", r"in \[adabin_t_min=0.0, inf\)")):
    with pytest.raises(ValueError,
                       match=rf"config.{reported}=.*expected {expected}"):
      experiment_lib.validate_config(small_config(**{key: value}))
