"""ReCUConv and its tau schedule against a NumPy float64 model.

The model is docs/semantics.md, section 8.

The NumPy model includes a hand-derived backward pass (through the per-channel
mean and std of the weights, the clamp, the STE, the activation estimator and
the per-sample normalisation, which ReCU does not stop-gradient); that
backward is itself checked against finite differences where it is smooth.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovsw_jax import layers
from ovsw_jax import models
from ovsw_jax import recu

K = 2 * math.sqrt(2)


def np_sign(x):
  return np.where(x >= 0, 1.0, -1.0)


def np_w1(w):
  """Per-output-channel standardisation times 2 sqrt(2) (HWIO)."""
  axes = tuple(range(w.ndim - 1))
  c = w - w.mean(axis=axes, keepdims=True)
  s = np.sqrt(w.var(axis=axes, ddof=1, keepdims=True) + 1e-5)
  return c / (s / K)


def np_w1_vjp(w, u):
  """d/dw of sum(w1(w) * u): hand-derived through mean and std."""
  axes = tuple(range(w.ndim - 1))
  n = np.prod([w.shape[a] for a in axes])
  c = w - w.mean(axis=axes, keepdims=True)
  s = np.sqrt(w.var(axis=axes, ddof=1, keepdims=True) + 1e-5)
  u_c = u - u.mean(axis=axes, keepdims=True)
  cu = (c * u).sum(axis=axes, keepdims=True)
  return K / s * u_c - K * c * cu / ((n - 1) * s**3)


def np_norm_vjp(a, v):
  """d/da of sum(a / sqrt(var_n(a, ddof=1) + 1e-5) * v), per sample."""
  axes = tuple(range(1, a.ndim))
  n = np.prod(a.shape[1:])
  c = a - a.mean(axis=axes, keepdims=True)
  s = np.sqrt(a.var(axis=axes, ddof=1, keepdims=True) + 1e-5)
  av = (a * v).sum(axis=axes, keepdims=True)
  return v / s - c * av / ((n - 1) * s**3)


def np_conv(a, w, stride, pad):
  """Cross-correlation, NHWC x HWIO, symmetric zero padding."""
  kh, kw = w.shape[:2]
  ap = np.pad(a, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (ap.shape[1] - kh) // stride + 1
  wo = (ap.shape[2] - kw) // stride + 1
  out = np.zeros((a.shape[0], ho, wo, w.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      out += ap[:, i:i + stride * ho:stride, j:j + stride * wo:stride] @ w[i, j]
  return out


def np_conv_vjp(a, w, g, stride, pad):
  """Gradients of sum(conv(a, w) * g) w.r.t. a and w."""
  kh, kw = w.shape[:2]
  ap = np.pad(a, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho, wo = g.shape[1:3]
  ga, gw = np.zeros_like(ap), np.zeros_like(w)
  for i in range(kh):
    for j in range(kw):
      sl = np.s_[:, i:i + stride * ho:stride, j:j + stride * wo:stride]
      gw[i, j] = np.einsum("nyxi,nyxo->io", ap[sl], g)
      ga[sl] += g @ w[i, j].T
  return ga[:, pad:ap.shape[1] - pad, pad:ap.shape[2] - pad], gw


def np_recu(a, w, alpha, tau, g, stride, pad, train=True):
  """Forward and gradients (a, w, alpha) of sum(out * g), section 8."""
  w1 = np_w1(w)
  with np.errstate(divide="ignore"):  # tau = 1: Q = inf, no clamp
    q = -np.abs(w1).mean() * np.log(2 - 2 * tau)
  inside = np.abs(w1) <= q
  w_b = np_sign(np.clip(w1, -q, q))
  if train:
    s = np.sqrt(a.var(axis=(1, 2, 3), ddof=1, keepdims=True) + 1e-5)
    a_n = a / s
  else:
    a_n = a
  a_b = np_sign(a_n)
  y = np_conv(a_b, w_b, stride, pad)
  out = y * alpha
  g_alpha = (y * g).sum(axis=(0, 1, 2))
  g_ab, g_wb = np_conv_vjp(a_b, w_b, g * alpha, stride, pad)
  g_w = np_w1_vjp(w, g_wb * inside)   # STE, then the clamp's mask
  g_an = g_ab * np.maximum(0, 2 - 2 * np.abs(a_n))
  g_a = np_norm_vjp(a, g_an) if train else g_an
  return out, (g_a, g_w, g_alpha), inside


def test_np_backward_helpers_match_finite_differences():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 3, 2, 4))
  u = rng.normal(size=w.shape)
  a = rng.normal(size=(2, 3, 3, 2))
  v = rng.normal(size=a.shape)
  f_w = lambda w: np.sum(np_w1(w) * u)
  f_a = lambda a: np.sum(a / np.sqrt(
      a.var(axis=(1, 2, 3), ddof=1, keepdims=True) + 1e-5) * v)
  for f, x, vjp in ((f_w, w, np_w1_vjp(w, u)), (f_a, a, np_norm_vjp(a, v))):
    fd = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
      e = np.zeros_like(x)
      e[idx] = 1e-6
      fd[idx] = (f(x + e) - f(x - e)) / 2e-6
    np.testing.assert_allclose(vjp, fd, rtol=1e-6, atol=1e-7)


def _setup(stride=1, kernel=3, seed=0, features=5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  conv = recu.ReCUConv(features, kernel_size=(kernel, kernel),
                       strides=(stride, stride))
  variables = conv.init(jax.random.key(seed), jnp.asarray(x))
  params = variables["params"]
  # Heavier tails than the init, so that tau=0.85 clamps a few weights.
  params = {
      "latent_kernel": jnp.asarray(
          rng.standard_t(3, size=params["latent_kernel"].shape), jnp.float32),
      "alpha": params["alpha"],
  }
  return conv, x, params, variables[recu.TAU_COLLECTION]


@pytest.mark.parametrize("stride,kernel", [(1, 3), (2, 3), (2, 1)])
def test_forward_and_gradients_match_numpy(stride, kernel):
  conv, x, params, tau_vars = _setup(stride, kernel)
  tau = 0.85
  tau_vars = recu.set_tau(tau_vars, tau)
  out_shape = conv.apply({"params": params, "recu": tau_vars}, x,
                         train=True).shape
  g = np.random.default_rng(1).normal(size=out_shape).astype(np.float32)

  def loss(params, x):
    y = conv.apply({"params": params, "recu": tau_vars}, x, train=True)
    return jnp.sum(y * g), y

  (_, y), (g_params, g_x) = jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True)(params, jnp.asarray(x))

  w = np.asarray(params["latent_kernel"], np.float64)
  alpha = np.asarray(params["alpha"], np.float64)
  out, (g_a, g_w, g_alpha), inside = np_recu(
      x.astype(np.float64), w, alpha, tau, g.astype(np.float64), stride,
      kernel // 2)
  assert 0 < (~inside).sum() < inside.size  # the clamp is exercised
  np.testing.assert_allclose(y, out, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_params["alpha"], g_alpha, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(g_params["latent_kernel"], g_w, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(g_x, g_a, rtol=1e-4, atol=1e-4)


def test_activation_norm_gradient_differs_from_stop_gradient():
  conv, x, params, tau_vars = _setup()
  g = np.random.default_rng(2).normal(size=(2, 6, 6, 5)).astype(np.float32)
  w = np.asarray(params["latent_kernel"], np.float64)
  alpha = np.asarray(params["alpha"], np.float64)
  _, (g_a, _, _), _ = np_recu(x.astype(np.float64), w, alpha, 0.85,
                              g.astype(np.float64), 1, 1)
  g_x = jax.grad(lambda x: jnp.sum(conv.apply(
      {"params": params, "recu": tau_vars}, x, train=True) * g))(
          jnp.asarray(x))
  # A stop-gradient divisor would give just g_an / s.
  s = np.sqrt(x.astype(np.float64).var(axis=(1, 2, 3), ddof=1,
                                       keepdims=True) + 1e-5)
  a_n = x / s
  g_ab, _ = np_conv_vjp(np_sign(a_n), np_sign(np.clip(np_w1(w), -9, 9)),
                        g * alpha, 1, 1)
  stopped = g_ab * np.maximum(0, 2 - 2 * np.abs(a_n)) / s
  np.testing.assert_allclose(g_x, g_a, rtol=1e-4, atol=1e-4)
  assert np.max(np.abs(g_a - stopped)) > 1e-3


def test_tau_changes_the_clamp_and_one_disables_it():
  conv, x, params, tau_vars = _setup()
  g = np.random.default_rng(3).normal(size=(2, 6, 6, 5)).astype(np.float32)
  w = np.asarray(params["latent_kernel"], np.float64)
  alpha = np.asarray(params["alpha"], np.float64)
  traces = []

  @jax.jit
  def grad_w(params, tau_vars):
    traces.append(1)
    return jax.grad(lambda p: jnp.sum(conv.apply(
        {"params": p, "recu": tau_vars}, x, train=True) * g))(params)

  counts = []
  for tau in (0.85, 0.95, 1.0):
    got = grad_w(params, recu.set_tau(tau_vars, tau))["latent_kernel"]
    _, (_, want, _), inside = np_recu(x.astype(np.float64), w, alpha, tau,
                                      g.astype(np.float64), 1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    counts.append(inside.sum())
  assert counts[0] < counts[1] < counts[2] == w.size  # tau=1: Q=inf
  assert len(traces) == 1  # a new tau does not recompile


def test_eval_forward_needs_no_tau_and_train_does():
  conv, x, params, tau_vars = _setup()
  w = np.asarray(params["latent_kernel"], np.float64)
  alpha = np.asarray(params["alpha"], np.float64)
  want, _, _ = np_recu(x.astype(np.float64), w, alpha, 0.85,
                       np.zeros((2, 6, 6, 5)), 1, 1, train=False)
  for variables in ({"params": params},
                    {"params": params, "recu": tau_vars}):
    y = conv.apply(variables, x, train=False)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  # Training normalises activations per sample; sign ignores it.
  np.testing.assert_allclose(
      conv.apply({"params": params, "recu": tau_vars}, x, train=True), want,
      rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="'recu' collection"):
    conv.apply({"params": params}, x, train=True)


def test_init_params_and_tau():
  conv = recu.ReCUConv(7, tau_init=0.9)
  variables = conv.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))
  assert variables["params"]["latent_kernel"].shape == (3, 3, 3, 7)
  alpha = np.asarray(variables["params"]["alpha"])
  assert alpha.shape == (7,) and np.all((alpha >= 0) & (alpha < 1))
  assert len(np.unique(alpha)) == 7
  tau = variables[recu.TAU_COLLECTION]["tau"]
  assert tau.dtype == jnp.float32 and float(tau) == np.float32(0.9)
  with pytest.raises(ValueError, match="learnable_scale=False"):
    recu.ReCUConv(7, learnable_scale=False).init(
        jax.random.key(0), jnp.zeros((1, 4, 4, 3)))


def test_recu_tau_schedule():
  e = 200
  a = (0.99 - 0.85) / (math.e - 1)
  b = 0.85 - a
  assert recu.recu_tau(0, e) == pytest.approx(0.85, abs=1e-15)
  assert recu.recu_tau(e // 2, e) == pytest.approx(a * math.exp(0.5) + b,
                                                   abs=1e-15)
  assert recu.recu_tau(e, e) == pytest.approx(0.99, abs=1e-15)
  assert recu.recu_tau(np.int64(e), e) == pytest.approx(0.99, abs=1e-15)
  traced = jax.jit(lambda k: recu.recu_tau(k, e))(jnp.arange(e + 1))
  want = [recu.recu_tau(k, e) for k in range(e + 1)]
  np.testing.assert_allclose(traced, want, rtol=1e-6)
  assert np.all(np.diff(want) > 0)
  assert recu.recu_tau(5, 10, 0.6, 0.7) == pytest.approx(
      0.1 / (math.e - 1) * (math.exp(0.5) - 1) + 0.6)
  for bad in (dict(num_epochs=0), dict(tau_min=0.5), dict(tau_max=1.01),
              dict(tau_min=0.95, tau_max=0.9)):
    kw = dict(num_epochs=10) | bad
    with pytest.raises(ValueError, match="num_epochs|tau_min"):
      recu.recu_tau(1, **kw)


def test_model_with_recu_conv():
  model = models.get_model("cresnet20_1w1a", 10, conv=recu.ReCUConv)
  variables = jax.eval_shape(lambda k: model.init(
      k, jnp.zeros((1, 16, 16, 3)), train=False), jax.random.key(0))
  names = [p[-1].key for p, _ in jax.tree_util.tree_flatten_with_path(
      variables["params"])[0]]
  taus = jax.tree.leaves(variables[recu.TAU_COLLECTION])
  assert len(taus) == names.count(layers.LATENT_KERNEL) == names.count(
      "alpha") == 18
  assert all(t.shape == () and t.dtype == jnp.float32 for t in taus)
  tau_vars = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype),
                          variables[recu.TAU_COLLECTION])
  new = recu.set_tau(tau_vars, 0.97)
  assert jax.tree.structure(new) == jax.tree.structure(tau_vars)
  assert all(float(t) == np.float32(0.97) for t in jax.tree.leaves(new))


@pytest.mark.parametrize("stride", [1, 2])
def test_bfloat16_operands_are_bit_identical_to_float32(stride):
  """ReCUConv inherits BinaryConv's narrow-operand conv: exact for +-1."""
  _, x, params, tau_vars = _setup(stride)
  variables = {"params": params, "recu": recu.set_tau(tau_vars, 0.85)}
  g = np.random.default_rng(4).normal(
      size=(2, 6 // stride, 6 // stride, 5)).astype(np.float32)

  def run(operand_dtype):
    conv = recu.ReCUConv(5, strides=(stride, stride),
                         binary_operand_dtype=operand_dtype)

    def loss(p, x):
      y = conv.apply({**variables, "params": p}, x, train=True)
      return jnp.sum(y * g), y

    (_, y), grads = jax.jit(jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=True))(params, jnp.asarray(x))
    y_eval = jax.jit(lambda p, x: conv.apply({"params": p}, x))(
        params, jnp.asarray(x))
    return y, y_eval, grads

  want, got = run(None), run(jnp.bfloat16)
  assert recu.ReCUConv(5).exact_pm1_operands
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.dtype == b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)


def test_recu_conv_is_a_binary_conv_with_its_own_steps():
  assert issubclass(recu.ReCUConv, layers.BinaryConv)
  # The shared __call__, not a copy: only the steps are overridden.
  assert "__call__" not in vars(recu.ReCUConv)
  conv, _, params, _ = _setup()
  signs, alpha = conv.eval_signs_and_scale(params)
  want = np_sign(np_w1(np.asarray(params["latent_kernel"], np.float64)))
  np.testing.assert_array_equal(signs, want)
  np.testing.assert_array_equal(alpha, np.asarray(params["alpha"]))
