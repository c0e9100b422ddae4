"""torchvision's ResNet-18/34, transcribed: the reference of the float ResNets.

A transcription of ``torchvision/models/resnet.py`` from torchvision 0.28.0
(``BasicBlock``, ``ResNet``, ``resnet18``, ``resnet34``), restricted to what
ResNet-18/34 use: basic blocks, ``groups=1``, ``width_per_group=64``, no
dilation, BatchNorm2d, no ``zero_init_residual``. Module names, and so the
``state_dict`` keys, are torchvision's (``conv1``, ``bn1``,
``layer{i}.{j}.conv1/bn1/conv2/bn2``, ``layer{i}.{j}.downsample.0/.1``,
``fc``), as is the initialisation. torchvision itself does not import beside
the torch CPU build used here; this file is what the converter's tests
(tests/test_convert_float.py) compare `ovsw_jax.convert` against. Imports
torch.

`cifar_variant` makes the usual CIFAR change to a torchvision ResNet: a 3x3
stride-1 ``conv1`` and no max pool.
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
  """3x3 convolution with padding."""
  return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride,
                   padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
  """1x1 convolution."""
  return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride,
                   bias=False)


class BasicBlock(nn.Module):
  """torchvision's ``BasicBlock`` (expansion 1)."""

  expansion = 1

  def __init__(self, inplanes: int, planes: int, stride: int = 1,
               downsample: nn.Module | None = None) -> None:
    super().__init__()
    self.conv1 = conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample
    self.stride = stride

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
      identity = self.downsample(x)
    out += identity
    return self.relu(out)


class ResNet(nn.Module):
  """torchvision's ``ResNet`` with basic blocks."""

  def __init__(self, layers: list[int], num_classes: int = 1000) -> None:
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2,
                           padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(self.inplanes)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(64, layers[0])
    self.layer2 = self._make_layer(128, layers[1], stride=2)
    self.layer3 = self._make_layer(256, layers[2], stride=2)
    self.layer4 = self._make_layer(512, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out",
                                nonlinearity="relu")
      elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)

  def _make_layer(self, planes: int, blocks: int,
                  stride: int = 1) -> nn.Sequential:
    downsample = None
    if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
      downsample = nn.Sequential(
          conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
          nn.BatchNorm2d(planes * BasicBlock.expansion))
    layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * BasicBlock.expansion
    for _ in range(1, blocks):
      layers.append(BasicBlock(self.inplanes, planes))
    return nn.Sequential(*layers)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    x = torch.flatten(self.avgpool(x), 1)
    return self.fc(x)


def resnet18(num_classes: int = 1000) -> ResNet:
  """torchvision's ``resnet18()`` (no pretrained weights)."""
  return ResNet([2, 2, 2, 2], num_classes)


def resnet34(num_classes: int = 1000) -> ResNet:
  """torchvision's ``resnet34()`` (no pretrained weights)."""
  return ResNet([3, 4, 6, 3], num_classes)


def cifar_variant(net: ResNet) -> ResNet:
  """``net`` with the usual CIFAR stem: a 3x3 stride-1 ``conv1`` (same key)
  and no max pool."""
  net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1,
                        bias=False)
  nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out",
                          nonlinearity="relu")
  net.maxpool = nn.Identity()
  return net
