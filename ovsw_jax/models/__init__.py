"""The OvSW models, ReActNet's, real-valued ResNets, and a registry by name.

The binary architectures are described in docs/semantics.md, section 3.
The real-valued ResNet-18/34 (`float_resnet`, torchvision's architecture,
and CIFAR variants) are teachers for distillation; `is_binary` tells them
apart (`REAL_VALUED`).

Example::

  model = get_model("cresnet20_1w1a", num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  logits, updates = model.apply(variables, images, train=True,
                                mutable=["batch_stats"])

Every model takes NHWC images, ``train`` switches BatchNorm to batch
statistics (collection ``batch_stats``) and the binary convs to their training
forward. Binary latent weights are the parameters named ``latent_kernel``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn

from ovsw_jax.models import blocks
from ovsw_jax.models import float_resnet
from ovsw_jax.models import resnet_cifar
from ovsw_jax.models import resnet_imagenet
from ovsw_jax.models import vgg
from ovsw_jax.models.react_resnet import ReActResNet18, ReActResNet34
from ovsw_jax.models.float_resnet import FloatResNet
from ovsw_jax.models.reactnet import ReActNetA
from ovsw_jax.models.resnet_cifar import CResNet18, CResNet20
from ovsw_jax.models.resnet_imagenet import ResNet, ResNet18, ResNet34
from ovsw_jax.models.vgg import VGGSmall

# name -> module constructor. Names are the reference's ``--arch`` choices,
# lower-cased (`get_model` accepts either case).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "cresnet20_1w1a": CResNet20,
    "cresnet18_1w1a": CResNet18,
    "vggsmall_1w1a": VGGSmall,
    "resnet18_1w1a": ResNet18,
    "resnet34_1w1a": ResNet34,
    # ReActNet (issue 16); the _cifar variants have a stride-1 stem.
    "reactnet_a": ReActNetA,
    "reactnet_a_cifar": functools.partial(ReActNetA, stem_stride=1),
    "react_resnet18": ReActResNet18,
    "react_resnet34": ReActResNet34,
    "react_resnet18_cifar": functools.partial(ReActResNet18, cifar_stem=True),
    # Real-valued, torchvision's architecture (ReActNet's teacher is its
    # ResNet-34); the _cifar variants have a 3x3 stride-1 stem, no max pool.
    "resnet18": float_resnet.FloatResNet18,
    "resnet34": float_resnet.FloatResNet34,
    "resnet18_cifar": functools.partial(float_resnet.FloatResNet18,
                                        cifar_stem=True),
    "resnet34_cifar": functools.partial(float_resnet.FloatResNet34,
                                        cifar_stem=True),
}

# The models with no binary layer (no ``latent_kernel``): methods that act on
# binary weights (AGS, SAD, Bop, ...) have nothing to do there.
REAL_VALUED = frozenset(
    {"resnet18", "resnet34", "resnet18_cifar", "resnet34_cifar"})

# Input (H, W, C) each model is meant for; VGG-small's classifier size
# (8192 = 512 * 4 * 4) depends on it.
INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "cresnet20_1w1a": (32, 32, 3),
    "cresnet18_1w1a": (32, 32, 3),
    "vggsmall_1w1a": (32, 32, 3),
    "resnet18_1w1a": (224, 224, 3),
    "resnet34_1w1a": (224, 224, 3),
    "reactnet_a": (224, 224, 3),
    "reactnet_a_cifar": (32, 32, 3),
    "react_resnet18": (224, 224, 3),
    "react_resnet34": (224, 224, 3),
    "react_resnet18_cifar": (32, 32, 3),
    "resnet18": (224, 224, 3),
    "resnet34": (224, 224, 3),
    "resnet18_cifar": (32, 32, 3),
    "resnet34_cifar": (32, 32, 3),
}


def list_models() -> list[str]:
  """Names accepted by `get_model`."""
  return list(MODELS)


def is_binary(name: str) -> bool:
  """Whether the model called ``name`` has binary layers (see `REAL_VALUED`).

  Raises:
    ValueError: if no model is called ``name``.
  """
  return canonical_name(name) not in REAL_VALUED


def canonical_name(name: str) -> str:
  """The registry key for ``name`` (case-insensitive).

  Raises:
    ValueError: if no model is called ``name``.
  """
  key = name.lower() if isinstance(name, str) else name
  if key not in MODELS:
    raise ValueError(
        f"Unknown model {name!r}; valid names are {list_models()}.")
  return key


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds the model called ``name``.

  Args:
    name: one of `list_models()` (case-insensitive, so the reference's
      ``cResNet20_1w1a`` works too).
    num_classes: number of logits.
    **kwargs: module attributes: ``dtype`` (compute dtype; params stay
      float32), ``bn_axis_name``; for the binary models ``conv`` (binary conv
      module class, default `ovsw_jax.layers.BinaryConv`),
      ``activation_estimator``, ``weight_estimator``, ``learnable_scale``,
      ``binary_operand_dtype`` (passed to every binary conv); ``stage_sizes``
      for the ResNets, ``width`` for the ReAct-ResNets and real-valued
      ResNets.

  Returns:
    An unbound ``flax.linen.Module``; call as ``model.apply(variables, x,
    train=...)`` with NHWC ``x``.

  Raises:
    ValueError: for an unknown name, a bad ``num_classes`` or an unknown
      keyword.
  """
  key = canonical_name(name)
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or (
      num_classes < 1):
    raise ValueError(
        f"num_classes must be a positive int, got {num_classes!r}.")
  valid = blocks.config_fields(MODELS[key])
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise ValueError(
        f"Unknown option(s) {unknown} for model {key!r}; valid options are "
        f"{sorted(k for k in valid if k != 'num_classes')}.")
  return MODELS[key](num_classes=num_classes, **kwargs)


__all__ = [
    "CResNet18", "CResNet20", "FloatResNet", "INPUT_SHAPES", "MODELS",
    "REAL_VALUED", "ResNet", "ResNet18", "ResNet34", "VGGSmall", "blocks",
    "canonical_name", "float_resnet", "get_model", "is_binary", "list_models",
    "resnet_cifar", "resnet_imagenet", "vgg",
]
