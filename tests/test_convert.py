"""PyTorch reference -> Flax conversion: same logits for all five models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="the converter tests compare against PyTorch models; "
    "install torch (CPU build) to run them")

from ovsw_jax import convert  # pylint: disable=g-import-not-at-top
from ovsw_jax import models  # pylint: disable=g-import-not-at-top
from benchmarks.lib import torch_reference  # pylint: disable=g-import-not-at-top

_SIZES = {"cresnet20_1w1a": 32, "cresnet18_1w1a": 32, "vggsmall_1w1a": 32,
          "resnet18_1w1a": 64, "resnet34_1w1a": 64}


def _reference(name, num_classes, seed=0, **kw):
  """A torch model with random weights and meaningful BN statistics/affine."""
  torch.manual_seed(seed)
  net = torch_reference.build(name, num_classes, **kw)
  bns = [m for m in net.modules()
         if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
  with torch.no_grad():
    for m in bns:  # non-tiny gammas, so the ImageNet branches matter
      m.weight.uniform_(0.5, 1.5)
      m.bias.normal_(0.0, 0.2)
      m.momentum = None  # one pass sets the running stats to batch stats
    net.train()
    size = _SIZES[name]
    net(torch.randn(4, 3, size, size))
    for m in bns:  # then move them off the batch statistics
      m.running_mean.add_(0.1 * torch.randn_like(m.running_mean))
      m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
      m.momentum = 0.1
    for p in net.parameters():
      if p.ndim == 1 and p.shape[0] == num_classes:  # head bias
        p.normal_(0.0, 0.1)
  return net.eval()


def _logits_both(name, net, num_classes, train=False, seed=1, **kw):
  size = _SIZES[name]
  x = np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype(
      np.float32)
  variables = convert.convert_state_dict(name, net.state_dict())
  model = models.get_model(name, num_classes, **kw)
  net.train(train)
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  # Jitted: compiling once is much faster than running op by op.
  if train:
    got, updates = jax.jit(functools.partial(
        model.apply, train=True, mutable=["batch_stats"]))(variables, x)
    return np.asarray(got), want, updates
  apply = jax.jit(functools.partial(model.apply, train=False))
  return np.asarray(apply(variables, x)), want, None


# Models with a torch reference here (not yet ReActNet's).
@pytest.mark.parametrize(
    "name", [n for n in models.list_models() if n in _SIZES])
def test_eval_logits_match_torch(name):
  num_classes = 10 if _SIZES[name] == 32 else 7
  net = _reference(name, num_classes)
  got, want, _ = _logits_both(name, net, num_classes)
  assert got.shape == want.shape == (2, num_classes)
  assert np.abs(want).max() > 0.1  # not a degenerate all-zero comparison
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_train_mode_matches_torch_cresnet20():
  net = _reference("cresnet20_1w1a", 10)
  stem_mean_before = net.bn1.running_mean.clone()
  got, want, updates = _logits_both("cresnet20_1w1a", net, 10, train=True)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  # Same EMA of the batch mean (the variances differ: torch folds in the
  # unbiased batch variance, Flax the biased one).
  assert not np.allclose(net.bn1.running_mean, stem_mean_before)
  np.testing.assert_allclose(updates["batch_stats"]["bn1"]["mean"],
                             net.bn1.running_mean.numpy(), atol=1e-5)


def test_learnable_scaling_factor_and_sad_buffers():
  net = _reference("cresnet20_1w1a", 10, scaling_factor=True)
  state = net.state_dict()
  with torch.no_grad():
    for k, v in state.items():
      if k.endswith("scaling_factor"):
        v.uniform_(0.2, 2.0)
  # The reference keeps SAD buffers in its binary convs: ignored.
  state["layer1.0.conv1.tracker"] = torch.zeros(16, 16, 3, 3)
  state["layer1.0.conv1.weight_prev"] = torch.zeros(16, 16, 3, 3)
  variables = convert.convert_state_dict("cresnet20_1w1a", state)
  np.testing.assert_array_equal(
      variables["params"]["layer2_0"]["conv1"]["scale"],
      state["layer2.0.conv1.scaling_factor"].numpy())
  x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = jax.jit(models.get_model("cresnet20_1w1a", 10,
                                 learnable_scale=True).apply)(variables, x)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_layouts_and_key_map():
  net = _reference("vggsmall_1w1a", 10)
  state = net.state_dict()
  v = convert.convert_state_dict("VGGSmall_1w1a", state)
  w = state["conv3.weight"].numpy()
  np.testing.assert_array_equal(v["params"]["conv3"]["latent_kernel"],
                                w.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(v["params"]["nonlinear5"]["negative_slope"],
                                state["nonlinear5.weight"].numpy())
  np.testing.assert_array_equal(v["batch_stats"]["bn4"]["var"],
                                state["bn4.running_var"].numpy())
  # fc row for (h, w, c) = (1, 2, 3) is PyTorch's column c * 16 + h * 4 + w.
  np.testing.assert_array_equal(v["params"]["fc"]["kernel"][(1 * 4 + 2) * 512 + 3],
                                state["fc.weight"].numpy()[:, 3 * 16 + 1 * 4 + 2])
  key_map = convert.torch_key_map("cresnet18_1w1a", 10)
  assert key_map["params/layer2_0/shortcut_conv/latent_kernel"] == (
      "layer2.0.shortcut.0.weight")
  assert key_map["batch_stats/layer2_0/shortcut_bn/var"] == (
      "layer2.0.shortcut.1.running_var")
  assert key_map["params/fc/kernel"] == "fc.weight"
  key_map = convert.torch_key_map("resnet18_1w1a", 1000)
  assert key_map["params/layer3_0/downsample_conv/kernel"] == (
      "layer3.0.downsample.0.weight")
  assert convert.torch_key_map("cresnet20_1w1a", 10)["params/fc/bias"] == (
      "linear.bias")


def test_bad_state_dicts_are_reported():
  state = {k: v.numpy() for k, v in
           _reference("cresnet20_1w1a", 10).state_dict().items()}
  missing = dict(state)
  del missing["layer1.0.bn1.running_var"]
  missing["layer9.0.conv1.weight"] = np.zeros((16, 16, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"missing keys \['layer1\.0\.bn1\."
                     r"running_var'\], unexpected keys \['layer9\.0"):
    convert.convert_state_dict("cresnet20_1w1a", missing)
  wrong = dict(state)
  wrong["layer2.1.conv2.weight"] = np.zeros((32, 16, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"'layer2\.1\.conv2\.weight'.*"
                     r"\(32, 16, 3, 3\).*\(32, 32, 3, 3\)"):
    convert.convert_state_dict("cresnet20_1w1a", wrong)
  with pytest.raises(ValueError, match=r"num_classes=100.*'linear\.weight': "
                     r"got \(10, 64\), expected \(100, 64\)"):
    convert.convert_state_dict("cresnet20_1w1a", state, num_classes=100)
  with pytest.raises(ValueError, match="Unknown model 'resnet50'"):
    convert.convert_state_dict("resnet50", state)


def test_load_torch_checkpoint_unwraps(tmp_path):
  net = _reference("cresnet20_1w1a", 100)
  wrapped = {"epoch": 3, "best_acc1": 50.0, "state_dict":
             {"module." + k: v for k, v in net.state_dict().items()}}
  path = tmp_path / "model_best.pth"
  torch.save(wrapped, path)
  variables = convert.load_torch_checkpoint(path, "cResNet20_1w1a")
  assert variables["params"]["fc"]["kernel"].shape == (64, 100)
  np.testing.assert_array_equal(
      variables["params"]["layer3_2"]["bn2"]["bias"],
      net.layer3[2].bn2.bias.detach().numpy())
  x = jnp.asarray(np.random.default_rng(5).normal(size=(1, 32, 32, 3)),
                  jnp.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(np.array(x).transpose(0, 3, 1, 2))).numpy()
  got = jax.jit(models.get_model("cresnet20_1w1a", 100).apply)(variables, x)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
  assert jax.tree.all(jax.tree.map(lambda a: a.dtype == np.float32,
                                   variables))
