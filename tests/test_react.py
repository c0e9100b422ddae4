"""ReActNet layers and models: parameter counts, RPReLU and ReActConv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovsw_jax import models
from ovsw_jax import react


def _counts(name):
  model = models.get_model(name, 1000)
  # The parameter shapes don't depend on the image size: trace at 64x64.
  shape = (1, 64, 64, 3)
  # eval_shape: no real init of ~29M params.
  variables = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape)))
  leaves = jax.tree_util.tree_leaves_with_path(variables["params"])
  total = sum(int(np.prod(l.shape)) for _, l in leaves)
  binary = sum(int(np.prod(l.shape)) for p, l in leaves
               if "latent_kernel" in jax.tree_util.keystr(p))
  return total, binary


@pytest.mark.parametrize("name,total,binary", [
    ("reactnet_a", 29_343_592, 28_253_184),
    ("react_resnet18", 11_704_424, 10_985_472),
    ("react_resnet34", 21_827_432, 21_086_208),
])
def test_parameter_counts_match_the_reference(name, total, binary):
  assert _counts(name) == (total, binary)


def test_rprelu_is_shift_prelu_shift():
  x = jnp.linspace(-2, 2, 12).reshape(3, 4)
  params = {"shift_in": {"bias": jnp.array([0.1, -0.2, 0.3, 0.0])},
            "negative_slope": jnp.array([0.25, 0.5, 1.0, 0.0]),
            "shift_out": {"bias": jnp.array([1.0, 2.0, 3.0, 4.0])}}
  y = react.RPReLU().apply({"params": params}, x)
  z = np.asarray(x) + np.array([0.1, -0.2, 0.3, 0.0])
  want = np.where(z >= 0, z, np.array([0.25, 0.5, 1.0, 0.0]) * z) + np.array(
      [1.0, 2.0, 3.0, 4.0])
  np.testing.assert_allclose(y, want, rtol=1e-6)


def _reference_conv(a, w):
  """ReActNet's HardBinaryConv: the scale inside the detached kernel."""
  scale = jnp.mean(jnp.abs(w), axis=(0, 1, 2))
  clipped = jnp.clip(w, -1, 1)
  w_b = (jax.lax.stop_gradient(scale * jnp.where(w >= 0, 1.0, -1.0))
         - jax.lax.stop_gradient(clipped) + clipped)
  a_b = jnp.where(a >= 0, 1.0, -1.0)
  return jax.lax.conv_general_dilated(
      a_b, w_b, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)


def test_react_conv_forward_and_kernel_gradient_match_the_reference():
  a = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 3))
  w = 0.8 * jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4))
  conv = react.ReActConv(4, (3, 3), normalize_activations=False)
  apply = lambda k: conv.apply({"params": {"latent_kernel": k}}, a,
                               train=True)
  np.testing.assert_allclose(apply(w), _reference_conv(a, w), rtol=1e-5,
                             atol=1e-5)
  g = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 5, 4))
  ours = jax.grad(lambda k: jnp.sum(apply(k) * g))(w)
  ref = jax.grad(lambda k: jnp.sum(_reference_conv(a, k) * g))(w)
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
  # The clipped STE: no gradient where |w| >= 1.
  assert np.all(np.asarray(ours)[np.abs(np.asarray(w)) >= 1] == 0)


def test_eval_signs_and_scale_is_sign_and_mean_abs():
  w = jax.random.normal(jax.random.PRNGKey(3), (3, 3, 2, 5))
  signs, scale = react.ReActConv(5, (3, 3)).eval_signs_and_scale(
      {"latent_kernel": w})
  np.testing.assert_array_equal(signs, np.where(np.asarray(w) >= 0, 1, -1))
  np.testing.assert_allclose(scale, np.abs(np.asarray(w)).mean((0, 1, 2)),
                             rtol=1e-6)


@pytest.mark.parametrize("name", ["reactnet_a_cifar", "react_resnet18_cifar"])
def test_cifar_variants_shapes(name):
  model = models.get_model(name, 10)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
  logits, variables = jax.eval_shape(
      lambda: model.init_with_output(jax.random.PRNGKey(1), x))
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  # The stride-1 stem keeps 32x32 CIFAR images at 32x32 into the blocks.
  stem = variables["params"]["conv1"]["kernel"].shape
  assert stem == ((3, 3, 3, 32) if name == "reactnet_a_cifar"
                  else (3, 3, 3, 64))


@pytest.mark.parametrize("granularity", ["epoch", "step"])
def test_linear_schedule_is_reactnets_lambda(granularity):
  from ovsw_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  from ovsw_jax.training import schedules  # pylint: disable=g-import-not-at-top
  config = config_lib.default_config()
  config.update(lr_schedule="linear", learning_rate=5e-4, num_epochs=10,
                warmup_epochs=0, lr_schedule_granularity=granularity)
  config_lib.validate_config(config)
  fn = schedules.create_learning_rate_fn(config, steps_per_epoch=4)
  steps = np.arange(40)
  t = steps // 4 if granularity == "epoch" else steps
  total = 10 if granularity == "epoch" else 40
  np.testing.assert_allclose([fn(s) for s in steps],
                             5e-4 * (1 - t / total), rtol=1e-5, atol=1e-10)
  config.lr_schedule = "step"
  with pytest.raises(ValueError, match="lr_schedule"):
    config_lib.validate_config(config)


def _float64_case(seed, shape):
  rng = np.random.default_rng(seed)
  return rng.normal(size=shape), rng.normal(size=shape[-1]) * 0.3, (
      rng.normal(size=shape))


def test_rsign_forward_and_gradients_are_bireal_in_float64():
  x, b, g = _float64_case(0, (4, 3, 5))
  with jax.enable_x64(True):
    rsign = react.RSign(param_dtype=jnp.float64)
    f = lambda p, x: rsign.apply({"params": {"shift": {"bias": p}}}, x)
    y = f(jnp.asarray(b), jnp.asarray(x))
    gb, gx = jax.grad(lambda p, x: jnp.sum(f(p, x) * g), argnums=(0, 1))(
        jnp.asarray(b), jnp.asarray(x))
    assert y.dtype == jnp.float64 and gx.dtype == jnp.float64
  z = x + b
  np.testing.assert_array_equal(y, np.where(z >= 0, 1.0, -1.0))
  # Bi-Real: d sign(z) / dz ~ 2 + 2z on [-1, 0), 2 - 2z on [0, 1), else 0.
  dz = np.where((z >= -1) & (z < 0), 2 + 2 * z,
                np.where((z >= 0) & (z < 1), 2 - 2 * z, 0.0))
  np.testing.assert_allclose(gx, g * dz, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(gb, (g * dz).sum(axis=(0, 1)), rtol=1e-12,
                             atol=1e-14)


def test_rprelu_gradients_match_numpy_in_float64():
  x, b1, g = _float64_case(1, (6, 4))
  rng = np.random.default_rng(2)
  slope, b2 = rng.uniform(0.1, 0.9, 4), rng.normal(size=4)
  with jax.enable_x64(True):
    module = react.RPReLU(param_dtype=jnp.float64)

    def out(b1, slope, b2, x):
      params = {"shift_in": {"bias": b1}, "negative_slope": slope,
                "shift_out": {"bias": b2}}
      return jnp.sum(module.apply({"params": params}, x) * g)

    grads = jax.grad(out, argnums=(0, 1, 2, 3))(
        *(jnp.asarray(v) for v in (b1, slope, b2, x)))
  z = x + b1
  dz = np.where(z >= 0, 1.0, slope)
  want = ((g * dz).sum(0), (g * np.where(z >= 0, 0.0, z)).sum(0), g.sum(0),
          g * dz)
  for got, expected in zip(grads, want):
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
