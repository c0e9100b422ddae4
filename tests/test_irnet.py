"""IRNetConv (Libra-PB + EDE) and its (k, t) schedule against NumPy float64.

The backward is hand-derived (EDE's ``k t (1 - tanh(t x)^2)`` on activations
and balanced weights, then through the per-channel mean and ddof=1 std); the
standardisation's backward is checked against finite differences.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovsw_jax import irnet
from tests.test_recu import np_conv, np_conv_vjp, np_sign


def np_balanced(w):
  axes = tuple(range(w.ndim - 1))
  c = w - w.mean(axis=axes, keepdims=True)
  return c / c.std(axis=axes, ddof=1, keepdims=True)


def np_balanced_vjp(w, u):
  """d/dw of sum(balanced(w) * u), per output channel."""
  axes = tuple(range(w.ndim - 1))
  n = np.prod([w.shape[a] for a in axes])
  w_s = np_balanced(w)
  s = (w - w.mean(axis=axes, keepdims=True)).std(axis=axes, ddof=1,
                                                 keepdims=True)
  u_c = u - u.mean(axis=axes, keepdims=True)
  return (u_c - w_s * (w_s * u).sum(axis=axes, keepdims=True) / (n - 1)) / s


def np_ede_grad(x, k, t):
  return k * t * (1 - np.tanh(t * x) ** 2)


def np_irnet(a, w, k, t, g, stride, pad):
  """Forward and gradients (a, w) of sum(out * g)."""
  w_s = np_balanced(w)
  scale = 2.0 ** np.round(np.log2(np.abs(w_s).mean(axis=(0, 1, 2))))
  a_b, w_b = np_sign(a), np_sign(w_s)
  out = np_conv(a_b, w_b, stride, pad) * scale
  g_ab, g_wb = np_conv_vjp(a_b, w_b, g * scale, stride, pad)
  g_w = np_balanced_vjp(w, g_wb * np_ede_grad(w_s, k, t))
  return out, g_ab * np_ede_grad(a, k, t), g_w, scale


def test_balanced_vjp_matches_finite_differences():
  rng = np.random.default_rng(0)
  w, u = rng.normal(size=(3, 3, 2, 4)), rng.normal(size=(3, 3, 2, 4))
  fd = np.zeros_like(w)
  for idx in np.ndindex(w.shape):
    e = np.zeros_like(w)
    e[idx] = 1e-6
    fd[idx] = (np.sum(np_balanced(w + e) * u) -
               np.sum(np_balanced(w - e) * u)) / 2e-6
  np.testing.assert_allclose(np_balanced_vjp(w, u), fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("stride,k,t", [(1, 10.0, 0.1), (2, 1.0, 3.0)])
def test_forward_and_gradients_match_numpy(stride, k, t):
  rng = np.random.default_rng(stride)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  conv = irnet.IRNetConv(5, strides=(stride, stride))
  variables = conv.init(jax.random.key(0), jnp.asarray(x))
  ede = irnet.set_ede(variables[irnet.EDE_COLLECTION], k, t)
  w = rng.normal(size=variables["params"]["latent_kernel"].shape)
  params = {"latent_kernel": jnp.asarray(w, jnp.float32)}
  want, g_a, g_w, scale = np_irnet(
      x.astype(np.float64), w, k, t,
      g := rng.normal(size=(2, 6 // stride, 6 // stride, 5)), stride, 1)

  def loss(params, x):
    y = conv.apply({"params": params, irnet.EDE_COLLECTION: ede}, x,
                   train=True)
    return jnp.sum(y * g.astype(np.float32)), y

  (_, y), (g_p, g_x) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
      params, jnp.asarray(x))
  # Libra-PB's scale is a power of two per channel.
  assert np.all(np.log2(scale) == np.round(np.log2(scale)))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_x, g_a, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(g_p["latent_kernel"], g_w, rtol=1e-4, atol=1e-4)
  # Eval: the same forward, without the collection.
  np.testing.assert_array_equal(conv.apply({"params": params}, x), y)
  with pytest.raises(ValueError, match="'irnet' collection"):
    conv.apply({"params": params}, x, train=True)


def test_ede_schedule_is_the_authors_log_up():
  e = 100
  assert irnet.ede_schedule(0, e) == pytest.approx((10.0, 0.1))
  assert irnet.ede_schedule(50, e) == pytest.approx((1.0, 1.0))
  assert irnet.ede_schedule(75, e) == pytest.approx((1.0, 10 ** 0.5))
  k, t = irnet.ede_schedule(jnp.int32(25), e)
  assert (float(k), float(t)) == pytest.approx((10 ** 0.5, 10 ** -0.5),
                                               rel=1e-6)
  with pytest.raises(ValueError, match="t_min=0"):
    irnet.ede_schedule(0, e, t_min=0.0)


def test_eval_signs_and_scale_are_the_eval_forward():
  rng = np.random.default_rng(3)
  conv = irnet.IRNetConv(4)
  x = jnp.asarray(rng.normal(size=(1, 5, 5, 3)), jnp.float32)
  params = conv.init(jax.random.key(1), x)["params"]
  signs, scale = conv.eval_signs_and_scale(params)
  want = np_conv(np_sign(np.asarray(x, np.float64)), signs, 1, 1) * scale
  np.testing.assert_allclose(conv.apply({"params": params}, x), want,
                             rtol=1e-6, atol=1e-6)
  assert math.isclose(float(np.log2(scale).round().sum()),
                      float(np.log2(scale).sum()))

