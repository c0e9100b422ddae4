"""PyTorch re-implementations of the five reference models.

Written from docs/semantics.md (sections 2-3) with the reference's module
names, so their ``state_dict`` keys are the reference's: ``conv1``, ``bn1``,
``layer{i}.{j}.conv1/bn1/conv2/bn2``, ``shortcut.0/.1`` (cResNet18),
``downsample.0/.1`` (ImageNet), ``bn2``, ``linear`` (cResNet20) / ``fc``; VGG:
``conv0..conv5``, ``bn0..bn5``, ``nonlinear5`` (PReLU), ``fc``. The PyTorch
step (`benchmarks.lib.torch_step`) trains them; the converter's tests
(tests/test_convert.py) check `ovsw_jax.convert` against them. Imports torch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _sign(x: torch.Tensor) -> torch.Tensor:
  # 0 -> +1, as ovsw_jax.ops (torch.sign would give 0).
  return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class BinaryConv2d(nn.Conv2d):
  """The reference's "xnor" binary conv (docs/semantics.md, section 2),
  forward only."""

  def __init__(self, in_planes, out_planes, kernel_size, stride=1,
               padding=0, scaling_factor=False):
    super().__init__(in_planes, out_planes, kernel_size, stride=stride,
                     padding=padding, bias=False)
    nn.init.kaiming_normal_(self.weight, mode="fan_in", nonlinearity="relu")
    if scaling_factor:
      self.scaling_factor = nn.Parameter(self.weight.abs().mean(dim=[1, 2, 3]))

  def channel_scale(self) -> torch.Tensor:
    if hasattr(self, "scaling_factor"):
      return self.scaling_factor
    w = self.weight.detach()
    w0 = w - w.mean([1, 2, 3], keepdim=True)
    w1 = w0 / torch.sqrt(w0.var([1, 2, 3], keepdim=True) + 1e-5)
    return w1.abs().mean([1, 2, 3])

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.training:
      x = x / torch.sqrt(x.var(dim=[1, 2, 3], keepdim=True) + 1e-5).detach()
    out = F.conv2d(_sign(x), _sign(self.weight), None, self.stride,
                   self.padding)
    return out * self.channel_scale().view(1, -1, 1, 1)


def bconv3x3(in_planes, out_planes, stride=1, **kw):
  return BinaryConv2d(in_planes, out_planes, 3, stride=stride, padding=1, **kw)


class BiRealBlock(nn.Module):
  """Residual around every binary conv; option-A or float-conv shortcut."""

  def __init__(self, in_planes, planes, stride, shortcut, **kw):
    super().__init__()
    self.conv1 = bconv3x3(in_planes, planes, stride, **kw)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = bconv3x3(planes, planes, **kw)
    self.bn2 = nn.BatchNorm2d(planes)
    self.kind = shortcut
    self.pad = 0 if planes == in_planes else planes // 4
    self.changes = stride != 1 or in_planes != planes
    if self.changes and shortcut == "float_conv":
      self.downsample = nn.Sequential(
          nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
          nn.BatchNorm2d(planes))

  def shortcut(self, x):
    if not self.changes:
      return x
    if self.kind == "option_a":
      x = F.avg_pool2d(x, 2)
      return F.pad(x, (0, 0, 0, 0, self.pad, self.pad), "constant", 0)
    return self.downsample(x)

  def forward(self, x):
    x1 = F.hardtanh(self.bn1(self.conv1(x)) + self.shortcut(x))
    return F.hardtanh(self.bn2(self.conv2(x1)) + x1)


class CResNet20(nn.Module):
  """cResNet20; ``stage_sizes`` blocks per stage (3, 3, 3: the paper's)."""

  def __init__(self, num_classes=10, stage_sizes=(3, 3, 3), **kw):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    in_planes = 16
    for i, (planes, blocks) in enumerate(zip((16, 32, 64), stage_sizes)):
      stage = []
      for j in range(blocks):
        stride = 2 if i > 0 and j == 0 else 1
        stage.append(BiRealBlock(in_planes, planes, stride, "option_a", **kw))
        in_planes = planes
      setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
    self.bn2 = nn.BatchNorm1d(64)
    self.linear = nn.Linear(64, num_classes)

  def forward(self, x):
    x = F.hardtanh(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    x = F.avg_pool2d(x, x.shape[3]).flatten(1)
    return self.linear(self.bn2(x))


class BasicBlock(nn.Module):
  """cResNet18 block: binary 1x1 conv + BN shortcut."""

  def __init__(self, in_planes, planes, stride, **kw):
    super().__init__()
    self.conv1 = bconv3x3(in_planes, planes, stride, **kw)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = bconv3x3(planes, planes, **kw)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != planes:
      self.shortcut = nn.Sequential(
          BinaryConv2d(in_planes, planes, 1, stride=stride, **kw),
          nn.BatchNorm2d(planes))

  def forward(self, x):
    out = F.hardtanh(self.bn1(self.conv1(x)))
    return F.hardtanh(self.bn2(self.conv2(out)) + self.shortcut(x))


class CResNet18(nn.Module):

  def __init__(self, num_classes=10, **kw):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    in_planes = 64
    for i, planes in enumerate((64, 128, 256, 512)):
      stride = 1 if i == 0 else 2
      setattr(self, f"layer{i + 1}", nn.Sequential(
          BasicBlock(in_planes, planes, stride, **kw),
          BasicBlock(planes, planes, 1, **kw)))
      in_planes = planes
    self.bn2 = nn.BatchNorm2d(512)
    self.fc = nn.Conv2d(512, num_classes, 1)

  def forward(self, x):
    x = self.bn1(self.conv1(x))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    x = F.adaptive_avg_pool2d(x, 1)
    return self.fc(self.bn2(x)).flatten(1)


class VGGSmall(nn.Module):

  def __init__(self, num_classes=10, **kw):
    super().__init__()
    self.conv0 = nn.Conv2d(3, 128, 3, padding=1, bias=False)
    self.bn0 = nn.BatchNorm2d(128)
    widths = (128, 128, 256, 256, 512, 512)
    for i in range(1, 6):
      setattr(self, f"conv{i}", bconv3x3(widths[i - 1], widths[i], **kw))
      setattr(self, f"bn{i}", nn.BatchNorm2d(widths[i]))
    self.nonlinear5 = nn.PReLU(512)
    self.fc = nn.Linear(512 * 4 * 4, num_classes)

  def forward(self, x):
    x = F.hardtanh(self.bn0(self.conv0(x)))
    for i, pool in zip(range(1, 6), (True, False, True, False, True)):
      x = getattr(self, f"conv{i}")(x)
      if pool:
        x = F.max_pool2d(x, 2, 2)
      x = getattr(self, f"bn{i}")(x)
      x = F.hardtanh(x) if i < 5 else self.nonlinear5(x)
    return self.fc(x.flatten(1))


class ResNetImageNet(nn.Module):

  def __init__(self, stage_sizes, num_classes=1000, **kw):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    in_planes = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), stage_sizes)):
      stage = []
      for j in range(n):
        stride = 2 if i > 0 and j == 0 else 1
        stage.append(BiRealBlock(in_planes, planes, stride, "float_conv", **kw))
        in_planes = planes
      setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
    self.bn2 = nn.BatchNorm1d(512)
    self.fc = nn.Linear(512, num_classes)
    for m in self.modules():
      if isinstance(m, nn.BatchNorm2d):
        nn.init.constant_(m.weight, 1e-8)

  def forward(self, x):
    x = F.hardtanh(self.bn1(self.conv1(x)))
    x = F.max_pool2d(x, 3, 2, padding=1)
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    x = F.adaptive_avg_pool2d(x, 1).flatten(1)
    return self.fc(self.bn2(x))


def build(name: str, num_classes: int, **kw) -> nn.Module:
  """The PyTorch model for an `ovsw_jax.models` name."""
  if name == "cresnet20_1w1a":
    return CResNet20(num_classes, **kw)
  if name == "cresnet18_1w1a":
    return CResNet18(num_classes, **kw)
  if name == "vggsmall_1w1a":
    return VGGSmall(num_classes, **kw)
  if name == "resnet18_1w1a":
    return ResNetImageNet((2, 2, 2, 2), num_classes, **kw)
  if name == "resnet34_1w1a":
    return ResNetImageNet((3, 4, 6, 3), num_classes, **kw)
  raise ValueError(f"Unknown model {name!r}.")
