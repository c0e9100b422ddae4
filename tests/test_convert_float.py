"""Real-valued ResNets against torchvision's (a transcription of its source):
same eval logits after conversion, key sets checked both ways, the converted
file as a teacher, and no binary parameter in the summary."""

import functools

import jax
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="the converter tests compare against PyTorch models; "
    "install torch (CPU build) to run them")

from benchmarks.lib import torchvision_resnet  # pylint: disable=g-import-not-at-top
from ovsw_jax import convert  # pylint: disable=g-import-not-at-top
from ovsw_jax import models  # pylint: disable=g-import-not-at-top
from ovsw_jax.convert import cli  # pylint: disable=g-import-not-at-top
from ovsw_jax.summary import summary  # pylint: disable=g-import-not-at-top
from ovsw_jax.training import distill  # pylint: disable=g-import-not-at-top
from ovsw_jax.training import mesh as mesh_lib  # pylint: disable=g-import-not-at-top

_BUILD = {
    "resnet18": torchvision_resnet.resnet18,
    "resnet34": torchvision_resnet.resnet34,
    "resnet18_cifar": lambda n: torchvision_resnet.cifar_variant(
        torchvision_resnet.resnet18(n)),
}


def _torchvision(name, num_classes, seed=0):
  """torchvision's model with random weights and BatchNorm statistics and
  affines away from their init, in eval mode."""
  torch.manual_seed(seed)
  net = _BUILD[name](num_classes)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.2)
        m.running_mean.normal_(0.0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return net.eval()


def _logits(net, x):
  with torch.no_grad():
    return net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


@functools.lru_cache(maxsize=None)
def _apply(name, num_classes):
  model = models.get_model(name, num_classes)
  return jax.jit(functools.partial(model.apply, train=False))


# ResNet-18/34 with torchvision's 7x7 stem and max pool at 32x32 (stage 4 at
# 1x1), the CIFAR variant at 16x16: small inputs, the whole architecture.
@pytest.mark.parametrize("name,size", [("resnet18", 32), ("resnet34", 32),
                                       ("resnet18_cifar", 16)])
def test_eval_logits_match_torchvision(name, size):
  net = _torchvision(name, 7)
  x = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(
      np.float32)
  variables = convert.convert_state_dict(name, net.state_dict())
  got = np.asarray(_apply(name, 7)(variables, x))
  want = _logits(net, x)
  assert got.shape == want.shape == (2, 7)
  assert np.abs(want).max() > 0.1  # not a degenerate all-zero comparison
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_same_parameters_and_none_binary(name):
  net = _BUILD[name](1000)
  s = summary(models.get_model(name, 1000), models.INPUT_SHAPES[name])
  assert s.total("binary_params") == 0 and s.total("binary_macs") == 0
  assert s.total("float_params") == sum(p.numel() for p in net.parameters())
  assert not models.is_binary(name)
  # Every torchvision key, and no other, has a Flax leaf.
  keys = set(convert.torch_key_map(name, 1000).values())
  assert keys == {k for k in net.state_dict()
                  if not k.endswith("num_batches_tracked")}


def test_key_sets_are_checked_both_ways():
  state = _torchvision("resnet18", 7).state_dict()
  del state["layer3.0.downsample.1.running_var"]
  state["layer5.0.conv1.weight"] = torch.zeros(8, 8, 3, 3)
  with pytest.raises(ValueError, match=(
      r"missing keys \['layer3\.0\.downsample\.1\.running_var'\], "
      r"unexpected keys \['layer5\.0\.conv1\.weight'\]")):
    convert.convert_state_dict("resnet18", state)
  # A ResNet-18 state_dict is no ResNet-34.
  with pytest.raises(ValueError, match=r"missing keys \['layer1\.2\.bn1"):
    convert.convert_state_dict("resnet34",
                               _torchvision("resnet18", 7).state_dict())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """torchvision's ResNet-18 saved as a .pth, converted by the command."""
  root = tmp_path_factory.mktemp("converted")
  net = _torchvision("resnet18_cifar", 7, seed=2)
  torch.save(net.state_dict(), root / "resnet18.pth")
  assert cli.main([
      "--model=resnet18_cifar", f"--torch_file={root / 'resnet18.pth'}",
      f"--out={root / 'resnet18.npz'}"]) == 0
  return net, root


def _teacher_config(**fields):
  config = ml_collections.ConfigDict(
      {"teacher_workdir": None, "teacher_checkpoint": "latest",
       "teacher_file": None, "teacher_model": None, "distill_weight": 1.0})
  config.update(fields)
  return config


def test_teacher_file_takes_the_converted_file(converted):
  net, root = converted
  name, variables = convert.load_variables(root / "resnet18.npz")
  assert name == "resnet18_cifar"
  np.testing.assert_array_equal(
      variables["params"]["layer2_0"]["downsample_conv"]["kernel"],
      net.layer2[0].downsample[0].weight.detach().numpy().transpose(
          2, 3, 1, 0))
  mesh = mesh_lib.create_mesh()
  x = np.random.default_rng(3).normal(size=(2, 16, 16, 3)).astype(np.float32)
  teacher = distill.load_teacher(
      _teacher_config(teacher_file=str(root / "resnet18.npz")), 7, mesh)
  # The teacher is torchvision's model: its module, its logits.
  assert teacher.apply_fn.__self__ == models.get_model("resnet18_cifar", 7)
  np.testing.assert_allclose(_apply("resnet18_cifar", 7)(teacher.variables, x),
                             _logits(net, x), rtol=0, atol=2e-4)
  # The .pth itself, converted on load, gives the same teacher.
  from_pth = distill.load_teacher(
      _teacher_config(teacher_file=str(root / "resnet18.pth"),
                      teacher_model="resnet18_cifar"), 7, mesh)
  jax.tree.map(np.testing.assert_array_equal, teacher.variables,
               from_pth.variables)


def test_converted_file_errors_name_the_fix(converted, capsys):
  _, root = converted
  npz, pth = str(root / "resnet18.npz"), str(root / "resnet18.pth")
  # The command refuses a checkpoint of another model in one line.
  with pytest.raises(SystemExit):
    cli.main(["--model=resnet34_cifar", f"--torch_file={pth}",
              f"--out={root / 'no.npz'}"])
  assert "missing keys ['layer1.2.bn1.bias'" in capsys.readouterr().err
  assert not (root / "no.npz").exists()
  with pytest.raises(ValueError, match="holds a 'resnet18_cifar', not a "
                     "'resnet34'"):
    convert.load_variables(npz, "resnet34")
  with pytest.raises(ValueError, match="7 classes, this run 100"):
    convert.load_variables(npz, num_classes=100)
  with pytest.raises(ValueError, match="PyTorch checkpoint: name its model.*"
                     "python -m ovsw_jax.convert"):
    convert.load_variables(pth)
  _, variables = convert.load_variables(npz)
  del variables["batch_stats"]["bn1"]
  variables["params"]["fc"]["kernel"] = np.zeros((3, 7), np.float32)
  convert.files.save(root / "bad.npz", variables, "resnet18_cifar", 7)
  with pytest.raises(ValueError, match=(
      r"missing \['batch_stats/bn1/mean', 'batch_stats/bn1/var'\], "
      r"unexpected \[\], shapes \['params/fc/kernel: \(3, 7\) in the file, "
      r"\(512, 7\) in the model'\]")):
    convert.load_variables(root / "bad.npz")
