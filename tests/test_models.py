"""The five models: sizes, building blocks, modes, options.

The architectures are those of docs/semantics.md, section 3.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ovsw_jax import layers
from ovsw_jax import models
from ovsw_jax import ops
from ovsw_jax.models import blocks

# Numerics that matter on a GPU/TPU (`-m accelerator`). Float32 results are
# compared with float64 NumPy models at float32 tolerances, which on a GPU
# hold only at full float32 precision (not TF32): `float32_matmuls`.
pytestmark = [pytest.mark.accelerator,
              pytest.mark.usefixtures("float32_matmuls")]

# name: (num_classes, trainable params, of which binary conv kernels)
_COUNTS = {
    "cresnet20_1w1a": (10, 269_850, 267_264),
    "cresnet18_1w1a": (10, 11_174_986, 11_157_504),
    "vggsmall_1w1a": (10, 4_660_618, 4_571_136),
    "resnet18_1w1a": (1000, 11_690_536, 10_985_472),
    "resnet34_1w1a": (1000, 21_798_696, 21_086_208),
}
_TEST_SIZE = {"cresnet20_1w1a": 32, "cresnet18_1w1a": 32, "vggsmall_1w1a": 32,
              "resnet18_1w1a": 64, "resnet34_1w1a": 64}


def _abstract(model, size=32, batch=1):
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)


def _flat(tree):
  return traverse_util.flatten_dict(tree)


def _random_variables(model, size=32, seed=0):
  """Random, non-degenerate variables without running (slow) Flax init."""
  rng = np.random.default_rng(seed)
  abstract = _abstract(model, size)

  def fill(path, leaf):
    name = path[-1].key
    shape = leaf.shape
    if name in ("kernel", layers.LATENT_KERNEL):
      v = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]) / 2)
    elif name in ("scale", "var"):
      v = rng.uniform(0.5, 1.5, shape)
    elif name in ("bias", "mean"):
      v = rng.normal(0, 0.1, shape)
    elif name == "negative_slope":
      v = np.full(shape, 0.25)
    else:
      raise AssertionError(f"unexpected leaf {path}")
    return jnp.asarray(v, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


@functools.lru_cache(maxsize=None)
def _apply(name, num_classes=10, train=False, **kwargs):
  """Jitted ``model.apply``, shared across tests (compiling is the slow part;
  op-by-op execution is slower still)."""
  model = models.get_model(name, num_classes, **kwargs)
  mutable = ["batch_stats"] if train else False
  return jax.jit(functools.partial(model.apply, train=train, mutable=mutable))


def _images(n, size, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(
      size=(n, size, size, 3)), jnp.float32)


@pytest.mark.parametrize("name", list(_COUNTS))
def test_parameter_counts_match_reference(name):
  num_classes, total, binary = _COUNTS[name]
  # ImageNet shapes don't depend on the image size: trace at 64x64.
  variables = _abstract(models.get_model(name, num_classes),
                        size=_TEST_SIZE[name])
  params = _flat(variables["params"])
  assert sum(np.prod(v.shape) for v in params.values()) == total
  assert sum(np.prod(v.shape) for k, v in params.items()
             if k[-1] == layers.LATENT_KERNEL) == binary
  assert all(v.dtype == jnp.float32 for v in params.values())
  # Running statistics live in batch_stats, two per BN channel.
  bn_channels = sum(np.prod(v.shape) for k, v in params.items()
                    if k[-1] == "scale" and layers.LATENT_KERNEL not in
                    {kk[-1] for kk in params if kk[:-1] == k[:-1]})
  assert sum(np.prod(v.shape) for v in _flat(
      variables["batch_stats"]).values()) == 2 * bn_channels


def test_layer_names_and_shapes():
  p = _flat(_abstract(models.get_model("cresnet18_1w1a", 10))["params"])
  assert p[("conv1", "kernel")].shape == (3, 3, 3, 64)
  assert p[("layer2_0", "shortcut_conv", layers.LATENT_KERNEL)].shape == (
      1, 1, 64, 128)
  assert ("layer2_1", "shortcut_conv", layers.LATENT_KERNEL) not in p
  assert p[("fc", "kernel")].shape == (512, 10)
  assert p[("fc", "bias")].shape == (10,)
  p = _flat(_abstract(models.get_model("resnet34_1w1a", 5), 64)["params"])
  assert p[("conv1", "kernel")].shape == (7, 7, 3, 64)
  assert p[("layer3_0", "downsample_conv", "kernel")].shape == (1, 1, 128, 256)
  assert ("layer3_1", "downsample_conv", "kernel") not in p
  assert p[("layer3_5", "conv2", layers.LATENT_KERNEL)].shape == (
      3, 3, 256, 256)
  assert ("layer3_6", "conv2", layers.LATENT_KERNEL) not in p
  p = _flat(_abstract(models.get_model("vggsmall_1w1a", 10))["params"])
  assert p[("nonlinear5", "negative_slope")].shape == (512,)
  assert p[("fc", "kernel")].shape == (8192, 10)
  p = _flat(_abstract(models.get_model("cresnet20_1w1a", 10))["params"])
  assert not any("shortcut" in "/".join(k) for k in p)  # option A: no params


def test_registry_and_errors():
  assert models.list_models() == list(models.MODELS)
  # ReActNet's models (issue 16) follow; tests/test_react.py counts them.
  assert list(models.MODELS)[:len(_COUNTS)] == list(_COUNTS)
  assert isinstance(models.get_model("cResNet20_1w1a", 10), models.CResNet20)
  with pytest.raises(ValueError, match=r"Unknown model 'resnet50'.*"
                     r"cresnet20_1w1a.*resnet34_1w1a"):
    models.get_model("resnet50", 10)
  with pytest.raises(ValueError, match=r"Unknown option\(s\) \['depth'\].*"
                     r"bn_axis_name"):
    models.get_model("resnet18_1w1a", 10, depth=18)
  with pytest.raises(ValueError, match="num_classes must be a positive int"):
    models.get_model("vggsmall_1w1a", 0)
  model = models.get_model("cresnet20_1w1a", 10)
  with pytest.raises(ValueError, match=r"NHWC.*\(32, 32, 3\).*x\[None\]"):
    model.init(jax.random.key(0), jnp.zeros((32, 32, 3)))


def test_hardtanh_prelu_option_a_and_max_pool():
  x = np.random.default_rng(0).normal(size=(2, 4, 6, 8)).astype(np.float32)
  np.testing.assert_array_equal(blocks.hardtanh(3 * x), np.clip(3 * x, -1, 1))

  prelu = blocks.PReLU()
  v = prelu.init(jax.random.key(0), x)
  np.testing.assert_array_equal(v["params"]["negative_slope"], np.full(8, .25))
  slope = np.linspace(-1, 1, 8).astype(np.float32)
  np.testing.assert_allclose(
      prelu.apply({"params": {"negative_slope": slope}}, x),
      np.where(x >= 0, x, slope * x), rtol=1e-6)

  # Option A: 2x2 average pool, then planes // 4 zero channels each side.
  y = np.asarray(blocks.option_a_shortcut(jnp.asarray(x), 8, 16, 2))
  pooled = x.astype(np.float64).reshape(2, 2, 2, 3, 2, 8).mean(axis=(2, 4))
  assert y.shape == (2, 2, 3, 16)
  # float32 sums of four O(1) values round by ~1e-7 absolute, which is
  # more than rtol=1e-6 of a mean near 0 (seen: 3e-8 at -0.003).
  np.testing.assert_allclose(y[..., 4:12], pooled, rtol=1e-6, atol=1e-7)
  assert not y[..., :4].any() and not y[..., 12:].any()
  assert blocks.option_a_shortcut(jnp.asarray(x), 8, 8, 1) is not None
  np.testing.assert_array_equal(
      blocks.option_a_shortcut(jnp.asarray(x), 8, 8, 1), x)

  # torch's MaxPool2d(3, 2, padding=1) never picks a padded cell: with
  # all-negative input the corner is the max of its 2x2 valid cells, not 0.
  neg = -1 - np.abs(x)
  out = np.asarray(blocks.max_pool_torch(jnp.asarray(neg), 3, 2, padding=1))
  assert out.shape == (2, 2, 3, 8)
  np.testing.assert_array_equal(out[:, 0, 0], neg[:, :2, :2].max(axis=(1, 2)))
  np.testing.assert_array_equal(out[:, 1, 2], neg[:, 1:4, 3:6].max(axis=(1, 2)))


def test_inits():
  # ImageNet: every 2-D BN scale 1e-8, the head BN 1. One block per stage
  # and a tiny image keep the (compiled) init cheap; the code is the same.
  model = models.get_model("resnet18_1w1a", 10, stage_sizes=(1, 1))
  # rbg keys compile about twice as fast as threefry ones here.
  key = jax.random.key(0, impl="rbg")
  p = jax.jit(model.init)(key, jnp.zeros((1, 8, 8, 3)))["params"]
  scales = {k: v for k, v in _flat(p).items() if k[-1] == "scale"}
  assert len(scales) == 1 + 2 * 2 + 1 + 1  # stem, blocks, downsample, head
  for k, v in scales.items():
    np.testing.assert_array_equal(v, np.float32(1.0 if k[0] == "bn2" else 1e-8))
  std = np.std(p["layer2_0"]["conv2"][layers.LATENT_KERNEL])
  assert abs(std / np.sqrt(2 / (9 * 128)) - 1) < 0.02  # kaiming fan_in
  std = np.std(p["layer2_0"]["downsample_conv"]["kernel"])
  assert abs(std / np.sqrt(2 / 64) - 1) < 0.03
  # VGG-small: N(0, sqrt(2 / (k k C_out))) convs, N(0, 0.01) dense, PReLU .25.
  p = jax.jit(models.get_model("vggsmall_1w1a", 10).init)(
      jax.random.fold_in(key, 1), jnp.zeros((1, 32, 32, 3)))["params"]
  assert abs(np.std(p["conv5"][layers.LATENT_KERNEL]) /
             np.sqrt(2 / (9 * 512)) - 1) < 0.02
  assert abs(np.std(p["conv0"]["kernel"]) / np.sqrt(2 / (9 * 128)) - 1) < 0.1
  assert abs(np.std(p["fc"]["kernel"]) / 0.01 - 1) < 0.05
  assert not np.any(p["fc"]["bias"])
  np.testing.assert_array_equal(p["nonlinear5"]["negative_slope"], 0.25)


@pytest.mark.parametrize("name", list(_COUNTS))
def test_forward_is_per_sample_in_eval(name):
  """In eval, an image's logits don't depend on the rest of the batch."""
  model = models.get_model(name, 7)
  # Small images keep it fast; the layer shapes don't change (but VGG's fc).
  size = _TEST_SIZE[name] // 2
  variables = _random_variables(model, size)
  x = _images(3, size, seed=1)
  apply = _apply(name, 7)
  logits = np.asarray(apply(variables, x[:2]))
  assert logits.shape == (2, 7) and logits.dtype == np.float32
  assert np.all(np.isfinite(logits))
  assert not np.allclose(logits[0], logits[1], atol=1e-3)
  other = np.asarray(apply(variables, x[::2]))
  np.testing.assert_allclose(other[0], logits[0], atol=1e-5)


def _stem_conv_np(x, kernel):
  """Float conv3x3, padding 1 (torch), in NumPy: the cResNet20 stem."""
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  return sum(np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + w], kernel[i, j])
             for i in range(3) for j in range(3))


def test_cresnet20_train_updates_batch_stats_eval_uses_them():
  model = models.get_model("cresnet20_1w1a", 10)
  x = _images(4, 32, seed=3)
  variables = _random_variables(model)
  # Fresh statistics, as after init: mean 0, var 1.
  variables["batch_stats"] = jax.tree.map(
      lambda s: jnp.zeros_like(s), variables["batch_stats"])
  variables["batch_stats"] = jax.tree_util.tree_map_with_path(
      lambda p, s: s + (p[-1].key == "var"), variables["batch_stats"])
  logits, updates = _apply("cresnet20_1w1a", train=True)(variables, x)
  stem = _stem_conv_np(np.asarray(x), np.asarray(
      variables["params"]["conv1"]["kernel"]))
  new = updates["batch_stats"]["bn1"]
  # Flax momentum 0.9 == torch momentum 0.1, from mean 0 / var 1.
  np.testing.assert_allclose(new["mean"], 0.1 * stem.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new["var"], 0.9 + 0.1 * stem.var(axis=(0, 1, 2)),
                             rtol=1e-4)
  # Every BN was updated (head included).
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b),
                         variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed))
  # Eval: running statistics, nothing to update; train: batch statistics.
  # Eval BN with running stats (mean 0, var 1) is gamma x / sqrt(1 + eps)
  # + beta, for the stem BN too.
  eval_logits, inter = jax.jit(functools.partial(
      model.apply, train=False,
      capture_intermediates=lambda m, _: m.scope.path == ("bn1",)))(
          variables, x)
  assert not np.allclose(eval_logits, logits, atol=1e-3)
  bn1 = variables["params"]["bn1"]
  np.testing.assert_allclose(
      inter["intermediates"]["bn1"]["__call__"][0],
      stem / np.sqrt(1 + 1e-5) * bn1["scale"] + bn1["bias"], rtol=1e-4,
      atol=1e-5)


def test_bfloat16_compute_float32_params():
  model = models.get_model("cresnet20_1w1a", 10, dtype=jnp.bfloat16)
  x = _images(2, 32)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(_abstract(model)))
  variables = _random_variables(model)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
  logits, _ = _apply("cresnet20_1w1a", train=True, dtype=jnp.bfloat16)(
      variables, x)
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
  jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=False))(
      variables, x)
  convs = [e for e in jaxpr.jaxpr.eqns
           if e.primitive.name == "conv_general_dilated"]
  assert len(convs) == 19  # stem + 18 binary
  assert all(v.aval.dtype == jnp.bfloat16 for e in convs for v in e.invars)


def test_conv_and_estimator_options_reach_every_binary_conv():
  calls = []

  def counting_sign(a):
    calls.append(a.shape)
    return ops.approx_sign(a)

  model = models.get_model("cresnet20_1w1a", 10, learnable_scale=True,
                           activation_estimator=counting_sign)
  p = _flat(_abstract(model)["params"])
  assert len(calls) == 18
  scales = [k for k in p if k[-1] == "scale" and layers.LATENT_KERNEL in
            {kk[-1] for kk in p if kk[:-1] == k[:-1]}]
  assert len(scales) == 18
  assert p[("layer3_1", "conv2", "scale")].shape == (64,)

  class FloatConv(nn.Module):
    """A stand-in conv: plain float weights, to check `conv` is honoured."""
    features: int
    kernel_size: tuple = (3, 3)
    strides: tuple = (1, 1)
    dtype: object = None

    @nn.compact
    def __call__(self, x, train=False):
      return nn.Conv(self.features, self.kernel_size, self.strides,
                     padding=blocks.torch_padding(self.kernel_size),
                     use_bias=False, dtype=self.dtype, name="inner")(x)

  for name in ("cresnet20_1w1a", "cresnet18_1w1a", "resnet18_1w1a"):
    num_classes, total, binary = _COUNTS[name]
    p = _flat(_abstract(models.get_model(name, num_classes, conv=FloatConv),
                        size=_TEST_SIZE[name])["params"])
    assert not any(k[-1] == layers.LATENT_KERNEL for k in p)
    assert sum(np.prod(v.shape) for k, v in p.items()
               if "inner" in k) == binary
    assert sum(np.prod(v.shape) for v in p.values()) == total


def test_bn_axis_name_pools_statistics_over_mapped_axis():
  x = _images(4, 32, seed=4)
  plain = models.get_model("cresnet20_1w1a", 10)
  variables = _random_variables(plain)
  want, want_updates = _apply("cresnet20_1w1a", train=True)(variables, x)

  def sharded(model):
    fn = lambda xs: model.apply(variables, xs, train=True,
                                mutable=["batch_stats"])
    return jax.jit(jax.vmap(fn, axis_name="batch"))(
        x.reshape(2, 2, 32, 32, 3))

  pooled = models.get_model("cresnet20_1w1a", 10, bn_axis_name="batch")
  got, got_updates = sharded(pooled)
  np.testing.assert_allclose(got.reshape(4, 10), want, atol=1e-4)
  # (Each shard normalising its own 2 images would give other values.)
  np.testing.assert_allclose(
      got_updates["batch_stats"]["layer2_0"]["bn1"]["mean"][0],
      want_updates["batch_stats"]["layer2_0"]["bn1"]["mean"], atol=1e-5)


def test_hardtanh_gradient_is_zero_at_the_bounds_like_torch():
  from ovsw_jax.models import blocks
  x = jnp.array([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
  np.testing.assert_array_equal(blocks.hardtanh(x),
                                [-1, -1, -0.5, 0, 0.5, 1, 1])
  g = jax.grad(lambda v: blocks.hardtanh(v).sum())(x)
  np.testing.assert_array_equal(g, [0, 0, 1, 1, 1, 0, 0])
