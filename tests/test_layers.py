"""BinaryConv / BinaryDense against a NumPy model.

The model is docs/semantics.md, section 2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovsw_jax import layers
from ovsw_jax import ops

# Numerics that matter on a GPU/TPU (`-m accelerator`). Float32 results are
# compared with float64 NumPy models at float32 tolerances, which on a GPU
# hold only at full float32 precision (not TF32): `float32_matmuls`.
pytestmark = [pytest.mark.accelerator,
              pytest.mark.usefixtures("float32_matmuls")]


def np_sign(x):
  return np.where(x >= 0, 1.0, -1.0)


def np_scale(w):
  axes = tuple(range(w.ndim - 1))
  std = np.sqrt(w.var(axis=axes, ddof=1, keepdims=True) + 1e-5)
  return np.abs((w - w.mean(axis=axes, keepdims=True)) / std).mean(axis=axes)


def np_sample_std(a):
  axes = tuple(range(1, a.ndim))
  return np.sqrt(a.var(axis=axes, ddof=1, keepdims=True) + 1e-5)


def np_conv(a, w, stride, pad):
  """Cross-correlation, NHWC x HWIO, symmetric zero padding."""
  kh, kw = w.shape[:2]
  ap = np.pad(a, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (ap.shape[1] - kh) // stride + 1
  wo = (ap.shape[2] - kw) // stride + 1
  out = np.zeros((a.shape[0], ho, wo, w.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      patch = ap[:, i:i + stride * ho:stride, j:j + stride * wo:stride]
      out += patch @ w[i, j]
  return out


def np_conv_grads(a_b, w_b, g, stride, pad):
  """Gradients of sum(conv(a_b, w_b) * g) w.r.t. a_b and w_b."""
  kh, kw = w_b.shape[:2]
  ap = np.pad(a_b, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho, wo = g.shape[1:3]
  ga = np.zeros_like(ap)
  gw = np.zeros_like(w_b)
  for i in range(kh):
    for j in range(kw):
      sl = np.s_[:, i:i + stride * ho:stride, j:j + stride * wo:stride]
      gw[i, j] = np.einsum("nyxi,nyxo->io", ap[sl], g)
      ga[sl] += g @ w_b[i, j].T
  return ga[:, pad:pad + a_b.shape[1], pad:pad + a_b.shape[2]], gw


@pytest.mark.parametrize("stride,ksize", [(1, 3), (2, 3), (2, 1)])
def test_binary_conv_matches_numpy(stride, ksize):
  rng = np.random.default_rng(stride * 10 + ksize)
  a = rng.normal(size=(3, 8, 8, 5)).astype(np.float32) * 0.7
  conv = layers.BinaryConv(6, kernel_size=(ksize, ksize),
                           strides=(stride, stride))
  variables = conv.init(jax.random.PRNGKey(0), jnp.asarray(a))
  w = np.asarray(variables["params"]["latent_kernel"], np.float64)
  assert w.shape == (ksize, ksize, 5, 6)

  pad = ksize // 2
  std = np_sample_std(a.astype(np.float64))
  a_n = a / std
  scale = np_scale(w)
  expected = np_conv(np_sign(a_n), np_sign(w), stride, pad) * scale

  out_train = conv.apply(variables, jnp.asarray(a), train=True)
  out_eval = conv.apply(variables, jnp.asarray(a), train=False)
  np.testing.assert_allclose(out_train, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out_eval, expected, rtol=1e-5, atol=1e-5)

  # Gradients: STE to w; Bi-Real window on the normalised input, divided by
  # the (stopped) per-sample std; the scale carries no gradient.
  g = rng.normal(size=expected.shape)
  loss = lambda p, x: jnp.sum(conv.apply(p, x, train=True) * g)
  gp, gx = jax.grad(loss, argnums=(0, 1))(variables, jnp.asarray(a))
  ga_b, gw_b = np_conv_grads(np_sign(a_n), np_sign(w), g * scale, stride, pad)
  np.testing.assert_allclose(gp["params"]["latent_kernel"], gw_b,
                             rtol=1e-4, atol=1e-4)
  expected_gx = ga_b * np.maximum(0, 2 - 2 * np.abs(a_n)) / std
  np.testing.assert_allclose(gx, expected_gx, rtol=1e-4, atol=1e-4)


def test_eval_gradient_uses_unnormalised_input():
  a = np.linspace(-2, 2, 2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
  conv = layers.BinaryConv(2, kernel_size=(1, 1))
  v = conv.init(jax.random.PRNGKey(1), jnp.asarray(a))
  w = np.asarray(v["params"]["latent_kernel"])
  gx = jax.grad(lambda x: conv.apply(v, x, train=False).sum())(jnp.asarray(a))
  expected = (np.ones((2, 4, 4, 2)) * np_scale(w)) @ np_sign(w)[0, 0].T
  expected *= np.maximum(0, 2 - 2 * np.abs(a))
  np.testing.assert_allclose(gx, expected, rtol=1e-5, atol=1e-6)


def test_learnable_scale_initialised_to_mean_abs():
  a = jnp.ones((1, 6, 6, 4))
  conv = layers.BinaryConv(3, learnable_scale=True)
  v = conv.init(jax.random.PRNGKey(2), a)
  w = np.asarray(v["params"]["latent_kernel"])
  np.testing.assert_allclose(v["params"]["scale"],
                             np.abs(w).mean(axis=(0, 1, 2)), rtol=1e-6)
  # The scale is trained: it gets a gradient.
  g = jax.grad(lambda p: conv.apply(p, a, train=True).sum())(v)
  assert np.all(np.abs(np.asarray(g["params"]["scale"])) > 0)


def test_kaiming_normal_init_statistics():
  conv = layers.BinaryConv(256, kernel_size=(3, 3))
  w = conv.init(jax.random.PRNGKey(3), jnp.ones((1, 4, 4, 128)))["params"][
      "latent_kernel"]
  # fan_in = 3*3*128; untruncated normal with std sqrt(2 / fan_in).
  np.testing.assert_allclose(np.std(w), np.sqrt(2 / (9 * 128)), rtol=0.02)
  assert np.abs(np.asarray(w)).max() > 2.5 * np.sqrt(2 / (9 * 128))


def test_binary_dense_matches_numpy():
  rng = np.random.default_rng(7)
  x = rng.normal(size=(4, 10)).astype(np.float32)
  dense = layers.BinaryDense(3)
  v = dense.init(jax.random.PRNGKey(0), jnp.asarray(x))
  w = np.asarray(v["params"]["latent_kernel"], np.float64)
  x_n = x / np_sample_std(x.astype(np.float64))
  expected = np_sign(x_n) @ np_sign(w) * np_scale(w)
  np.testing.assert_allclose(dense.apply(v, jnp.asarray(x), train=True),
                             expected, rtol=1e-5, atol=1e-5)
  g = rng.normal(size=expected.shape)
  gw = jax.grad(lambda p: jnp.sum(dense.apply(p, jnp.asarray(x), train=True)
                                  * g))(v)["params"]["latent_kernel"]
  np.testing.assert_allclose(gw, np_sign(x_n).T @ (g * np_scale(w)),
                             rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_is_exact_on_binary_operands():
  rng = np.random.default_rng(5)
  a = jnp.asarray(rng.normal(size=(2, 6, 6, 8)), jnp.float32)
  conv32 = layers.BinaryConv(4)
  conv16 = layers.BinaryConv(4, dtype=jnp.bfloat16)
  v = conv32.init(jax.random.PRNGKey(0), a)
  y32 = conv32.apply(v, a)
  y16 = conv16.apply(v, a)
  assert y16.dtype == jnp.bfloat16
  assert v["params"]["latent_kernel"].dtype == jnp.float32
  # Sums of +-1 up to 72 terms are exact in bf16; only the scale rounds.
  np.testing.assert_allclose(np.asarray(y16, np.float32), y32, rtol=1e-2)


def test_float_activations_option():
  a = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 3)),
                  jnp.float32)
  conv = layers.BinaryConv(2, binarize_activations=False)
  v = conv.init(jax.random.PRNGKey(0), a)
  w = np.asarray(v["params"]["latent_kernel"])
  np.testing.assert_allclose(conv.apply(v, a, train=True),
                             np_conv(np.asarray(a), np_sign(w), 1, 1)
                             * np_scale(w), rtol=1e-5, atol=1e-5)


def test_wrong_input_rank_is_a_clear_error():
  with pytest.raises(ValueError, match=r"rank 4.*\(8, 8, 3\).*x\[None\]"):
    layers.BinaryConv(4).init(jax.random.PRNGKey(0), jnp.ones((8, 8, 3)))
  with pytest.raises(ValueError, match="rank 2"):
    layers.BinaryDense(4).init(jax.random.PRNGKey(0), jnp.ones((2, 3, 4)))


def test_estimators_selectable_by_name_and_function():
  a = jnp.linspace(-3, 3, 2 * 3 * 3 * 2).reshape(2, 3, 3, 2)
  by_name = layers.BinaryConv(2, activation_estimator="ste_sign",
                              normalize_activations=False)
  v = by_name.init(jax.random.PRNGKey(0), a)
  gx = jax.grad(lambda x: by_name.apply(v, x, train=True).sum())(a)
  assert np.all(np.asarray(gx)[np.abs(np.asarray(a)) > 1] == 0)
  calls = []

  def my_sign(x):
    calls.append(x.shape)
    return jnp.where(x >= 0, 1.0, -1.0)

  by_fn = layers.BinaryConv(2, weight_estimator=my_sign)
  by_fn.apply(v, a)
  assert calls == [(3, 3, 2, 2)]


def test_exact_pm1_operands_only_for_builtin_estimators_and_binary_inputs():
  assert layers.BinaryConv(4).exact_pm1_operands
  assert layers.BinaryConv(4, activation_estimator="ste_sign",
                           weight_estimator=ops.swish_sign).exact_pm1_operands
  assert not layers.BinaryConv(4, binarize_activations=False
                               ).exact_pm1_operands
  # A custom estimator may not be +-1 forward: no narrowing.
  assert not layers.BinaryConv(4, activation_estimator=jnp.tanh
                               ).exact_pm1_operands
  assert not layers.BinaryDense(4, weight_estimator=lambda w: w
                                ).exact_pm1_operands


@pytest.mark.parametrize("learnable_scale", [False, True])
def test_eval_signs_and_scale_are_the_eval_forwards(learnable_scale):
  rng = np.random.default_rng(7)
  a = jnp.asarray(rng.normal(size=(2, 5, 5, 3)), jnp.float32)
  conv = layers.BinaryConv(4, learnable_scale=learnable_scale)
  params = conv.init(jax.random.PRNGKey(1), a)["params"]
  signs, scale = conv.eval_signs_and_scale(params)
  w = np.asarray(params["latent_kernel"], np.float64)
  np.testing.assert_array_equal(signs, np_sign(w))
  want = (np.asarray(params["scale"]) if learnable_scale
          else np.asarray(jax.jit(layers.standardized_weight_scale)(
              params["latent_kernel"])))
  np.testing.assert_array_equal(scale, want)
  if not learnable_scale:
    np.testing.assert_allclose(scale, np_scale(w), rtol=1e-5)
  # The eval forward is exactly conv(sign(a), signs) * scale.
  y = jax.jit(conv.apply)({"params": params}, a)
  np.testing.assert_allclose(
      y, np_conv(np_sign(np.asarray(a)), signs, 1, 1) * scale, rtol=1e-6,
      atol=1e-6)


def test_torch_padding_is_k_over_2_per_side():
  assert layers.torch_padding((3, 3)) == ((1, 1), (1, 1))
  assert layers.torch_padding((7, 1)) == ((3, 3), (0, 0))
