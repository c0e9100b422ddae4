"""ReActNet's reference state_dicts -> Flax: same eval logits.

A compact torch transcription of liuzechun/ReActNet's step-2 models (module
names and parameter shapes as in its ``reactnet.py`` and ``birealnet.py``;
eval-mode forward only) with random weights; `convert.convert_state_dict`
must give our models the same logits.
"""

import functools

import jax
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="the converter tests compare against PyTorch models")
from torch import nn  # pylint: disable=g-import-not-at-top
import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

from ovsw_jax import convert  # pylint: disable=g-import-not-at-top
from ovsw_jax import models  # pylint: disable=g-import-not-at-top


class Shift(nn.Module):  # the reference's LearnableBias
  def __init__(self, c):
    super().__init__()
    self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))

  def forward(self, x):
    return x + self.bias


class BinConv(nn.Module):  # HardBinaryConv, eval forward
  def __init__(self, cin, cout, k, stride, flat):
    super().__init__()
    self.shape, self.stride, self.pad = (cout, cin, k, k), stride, k // 2
    w = torch.zeros(cout * cin * k * k, 1) if flat else torch.zeros(
        self.shape)
    if flat:
      self.weights = nn.Parameter(w)
    else:
      self.weight = nn.Parameter(w)

  def forward(self, x):
    w = (self.weights if hasattr(self, "weights") else self.weight).view(
        self.shape)
    scale = w.abs().mean(dim=(1, 2, 3)).view(1, -1, 1, 1)
    return F.conv2d(torch.sign(x), torch.sign(w), stride=self.stride,
                    padding=self.pad) * scale


class MobileBlock(nn.Module):  # reactnet.py's BasicBlock
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.move11, self.move21 = Shift(cin), Shift(cin)
    self.binary_3x3 = BinConv(cin, cin, 3, stride, True)
    self.bn1 = nn.BatchNorm2d(cin)
    self.move12, self.prelu1, self.move13 = Shift(cin), nn.PReLU(cin), Shift(
        cin)
    if cin == cout:
      self.binary_pw, self.bn2 = BinConv(cin, cout, 1, 1, True), (
          nn.BatchNorm2d(cout))
    else:
      self.binary_pw_down1 = BinConv(cin, cin, 1, 1, True)
      self.binary_pw_down2 = BinConv(cin, cin, 1, 1, True)
      self.bn2_1, self.bn2_2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cin)
    self.move22, self.prelu2, self.move23 = Shift(cout), nn.PReLU(cout), (
        Shift(cout))
    self.stride, self.same = stride, cin == cout

  def forward(self, x):
    out1 = self.bn1(self.binary_3x3(self.move11(x)))
    if self.stride == 2:
      x = F.avg_pool2d(x, 2, 2)
    out1 = self.move13(self.prelu1(self.move12(x + out1)))
    out2 = self.move21(out1)
    if self.same:
      out2 = self.bn2(self.binary_pw(out2)) + out1
    else:
      out2 = torch.cat([self.bn2_1(self.binary_pw_down1(out2)) + out1,
                        self.bn2_2(self.binary_pw_down2(out2)) + out1], 1)
    return self.move23(self.prelu2(self.move22(out2)))


class Stem(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(32)

  def forward(self, x):
    return self.bn1(self.conv1(x))


class ReActNetA(nn.Module):
  def __init__(self, num_classes):
    super().__init__()
    chans = [32, 64, 128, 128, 256, 256] + [512] * 6 + [1024] * 2
    self.feature = nn.ModuleList([Stem()] + [
        MobileBlock(chans[i - 1], chans[i],
                    2 if chans[i - 1] != chans[i] and chans[i] != 64 else 1)
        for i in range(1, len(chans))])
    self.fc = nn.Linear(1024, num_classes)

  def forward(self, x):
    for block in self.feature:
      x = block(x)
    return self.fc(x.mean(dim=(2, 3)))


class ResBlock(nn.Module):  # birealnet.py's BasicBlock
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.move0 = Shift(cin)
    self.binary_conv = BinConv(cin, cout, 3, stride, False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.move1, self.prelu, self.move2 = Shift(cout), nn.PReLU(cout), Shift(
        cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(
          nn.AvgPool2d(2, stride), nn.Conv2d(cin, cout, 1, bias=False),
          nn.BatchNorm2d(cout))

  def forward(self, x):
    out = self.bn1(self.binary_conv(self.move0(x)))
    res = x if self.downsample is None else self.downsample(x)
    return self.move2(self.prelu(self.move1(out + res)))


class ReActResNet(nn.Module):
  def __init__(self, blocks, num_classes):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    cin = 64
    for s, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
      layer = []
      for b in range(n):
        layer.append(ResBlock(cin, width, 2 if s > 0 and b == 0 else 1))
        cin = width
      setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
    self.fc = nn.Linear(512, num_classes)

  def forward(self, x):
    x = F.max_pool2d(self.bn1(self.conv1(x)), 3, 2, 1)
    for s in range(1, 5):
      x = getattr(self, f"layer{s}")(x)
    return self.fc(x.mean(dim=(2, 3)))


def _randomized(net):
  torch.manual_seed(0)
  with torch.no_grad():
    for name, p in net.named_parameters():
      if "prelu" in name:
        p.uniform_(0.1, 0.5)
      elif name.endswith("bias") and p.ndim == 4:  # shifts
        p.normal_(0.0, 0.1)
      elif "bn" in name or "downsample.2" in name:
        p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(
            0.0, 0.2)
      else:
        p.normal_(0.0, 0.1)
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.running_mean.normal_(0.0, 0.1)
        m.running_var.uniform_(0.5, 2.0)
  return net.eval()


@pytest.mark.parametrize("name,build", [
    ("reactnet_a", lambda: ReActNetA(10)),
    ("react_resnet18", lambda: ReActResNet((4, 4, 4, 4), 10)),
])
def test_reference_state_dicts_give_the_same_logits(name, build):
  net = _randomized(build())
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  variables = convert.convert_state_dict(name, net.state_dict())
  model = models.get_model(name, 10)
  got = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert set(convert.torch_key_map(name, 10).values()) == {
      k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
