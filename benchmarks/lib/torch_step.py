"""The reference's PyTorch training step: benchmarks/train_step.py's baseline.

One step does what the reference's trainer does per batch (github.com/
JingyangXiang/OvSW: trainers/ovsw.py, model/modules/ovsw.py), in eager mode
and float32 on the CPU (the reference runs CUDA AMP, which a CPU lacks):

1. forward and cross-entropy;
2. ``optimizer.zero_grad()``, ``loss.backward()``;
3. a Python loop over the binary convs, each doing (docs/semantics.md,
   sections 4-5): AGS: per output channel ``gn = max(||g_c||, 1e-6)``,
   ``pn = max(||w_c||, 1e-3)``, ``g_c *= delta * pn / gn`` where ``gn / pn < delta``; SAD: a
   float32 tracker and a float32 copy of the previous weights, ``tracker =
   m * tracker + (1 - m) * (sign(w) != sign(w_prev))``, ``g += lambda *
   (tracker < tau) * w``, ``w_prev = w.clone()``; each also computes its mean
   (the ratio the reference logs);
4. ``torch.optim.SGD(momentum=0.9, weight_decay=wd)``: weight decay on every
   param, then momentum (docs/semantics.md, section 6);
5. top-1/top-5 of the batch, as the reference logs them.

The networks are `benchmarks.lib.torch_reference`'s (the reference's module
names, so `ovsw_jax.convert.convert_state_dict` maps their weights to ours),
with each binary conv given the reference's training gradients: the Bi-Real
estimator ``g * max(0, 2 - 2|a|)`` on activations and identity
straight-through on weights. Like the reference, the forward binarizes with
``torch.sign`` (0 -> 0) by default; ovsw_jax maps 0 to +1 (docs/semantics.md,
section 1). The two differ only where an activation is exactly 0, which
happens: a binary conv's outputs are discrete, so BatchNorm can return an
exact 0, and the option-A shortcut adds zero channels. ``build_model(...,
sign='ovsw_jax')`` binarizes as ovsw_jax does (``torch.where(x >= 0, 1, -1)``:
two kernels, against ``torch.sign``'s one, so the reference's sign is the one
to time).
"""

from __future__ import annotations

import copy
import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from benchmarks.lib import torch_reference

# The parts of ovsw_jax's `config.method` this step implements.
METHOD_PARTS = frozenset({"ags", "sad"})
# How the forward binarizes: the reference's torch.sign (0 -> 0), or
# ovsw_jax's 0 -> +1.
SIGNS = ("reference", "ovsw_jax")


def _sign(x: torch.Tensor, zero_to_plus_one: bool) -> torch.Tensor:
  if zero_to_plus_one:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
  return torch.sign(x)


class _ApproxSign(torch.autograd.Function):
  """sign(a); gradient g * max(0, 2 - 2|a|) (Bi-Real, the reference's)."""

  @staticmethod
  def forward(ctx, x, zero_to_plus_one):
    ctx.save_for_backward(x)
    return _sign(x, zero_to_plus_one)

  @staticmethod
  def backward(ctx, grad):
    x, = ctx.saved_tensors
    return grad * (2 - 2 * x.abs()).clamp(min=0), None


class _SignSTE(torch.autograd.Function):
  """sign(w); identity gradient (the reference's 'ste' weights)."""

  @staticmethod
  def forward(ctx, x, zero_to_plus_one):
    return _sign(x, zero_to_plus_one)

  @staticmethod
  def backward(ctx, grad):
    return grad.clone(), None


class TrainableBinaryConv2d(torch_reference.BinaryConv2d):
  """`torch_reference.BinaryConv2d` with the reference's training gradients.

  Attributes:
    zero_to_plus_one: binarize 0 to +1 (ovsw_jax) instead of 0 (torch.sign).
  """

  zero_to_plus_one = False

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.training:
      x = x / torch.sqrt(x.var(dim=[1, 2, 3], keepdim=True) + 1e-5).detach()
    out = self._conv_forward(
        _ApproxSign.apply(x, self.zero_to_plus_one),
        _SignSTE.apply(self.weight, self.zero_to_plus_one), None)
    # channel_scale reads weight.detach(): no gradient, as the reference's
    # @torch.no_grad get_scale.
    return out * self.channel_scale().view(1, -1, 1, 1)


def build_model(model_name: str, num_classes: int, seed: int = 0,
                sign: str = "reference", **model_kwargs) -> torch.nn.Module:
  """A reference network (train mode) whose binary convs can be trained.

  Args:
    model_name: an `ovsw_jax.models` name.
    num_classes: number of logits.
    seed: `torch.manual_seed` for the init.
    sign: 'reference' (torch.sign, 0 -> 0) or 'ovsw_jax' (0 -> +1).
    **model_kwargs: for the model's class (e.g. cResNet20's stage_sizes).
  """
  if sign not in SIGNS:
    raise ValueError(f"sign={sign!r}: expected one of {SIGNS}")
  torch.manual_seed(seed)
  net = torch_reference.build(model_name, num_classes, **model_kwargs)
  for module in net.modules():
    if type(module) is torch_reference.BinaryConv2d:  # pylint: disable=unidiomatic-typecheck
      # Same parameters and state_dict keys; only forward/backward change.
      module.__class__ = TrainableBinaryConv2d
      module.zero_to_plus_one = sign == "ovsw_jax"
  return net.train()


def binary_convs(net: torch.nn.Module) -> list[torch.nn.Module]:
  return [m for m in net.modules()
          if isinstance(m, torch_reference.BinaryConv2d)]


class OvSWHooks:
  """AGS and SAD on each binary conv's gradient, as the reference's loop.

  Attributes:
    convs: the binary convs, in module order.
    ags, sad: which of the two run.
  """

  def __init__(self, convs: Sequence[torch.nn.Module], ags: bool, sad: bool,
               delta: float = 0.04, dampen_weight: float = 9e-4,
               track_momentum: float = 0.999, track_threshold: float = 1e-4):
    self.convs = list(convs)
    self.ags, self.sad = ags, sad
    self.delta = delta
    self.dampen_weight = dampen_weight
    self.track_momentum = track_momentum
    self.track_threshold = track_threshold
    # The reference's buffers: a float copy of the weights and a tracker.
    self.weight_prev = [m.weight.detach().clone() for m in self.convs] \
        if sad else []
    self.tracker = [torch.zeros_like(m.weight) for m in self.convs] \
        if sad else []

  @torch.no_grad()
  def __call__(self) -> None:
    for i, m in enumerate(self.convs):
      if self.ags:
        grad_norm = torch.norm(m.weight.grad.flatten(1), dim=-1).clamp(
            min=1e-6).reshape(-1, 1, 1, 1)
        param_norm = torch.norm(m.weight.data.flatten(1), dim=-1).clamp(
            min=1e-3).reshape(-1, 1, 1, 1)
        low = torch.less(grad_norm / param_norm, self.delta)
        m.weight.grad = torch.where(
            low, self.delta * param_norm / grad_norm * m.weight.grad,
            m.weight.grad)
        torch.mean(grad_norm / param_norm)  # The reference's logged ratio.
      if self.sad:
        tracker = self.tracker[i]
        tracker *= self.track_momentum
        flipped = torch.not_equal(torch.sign(m.weight),
                                  torch.sign(self.weight_prev[i]))
        tracker += (1 - self.track_momentum) * flipped
        silent = torch.less(tracker, self.track_threshold)
        m.weight.grad = m.weight.grad + self.dampen_weight * silent * \
            m.weight.data
        self.weight_prev[i] = m.weight.data.clone()
        torch.mean(silent * 1.)  # The reference's logged silent fraction.


def method_flags(parts: Sequence[str]) -> tuple[bool, bool]:
  """(ags, sad) for the parts of a method ('vanilla' has none).

  Raises:
    ValueError: a part this step does not implement.
  """
  unknown = sorted(set(parts) - METHOD_PARTS)
  if unknown:
    raise ValueError(
        f"the PyTorch step implements the method parts {sorted(METHOD_PARTS)} "
        f"(and 'vanilla', 'ovsw'), not {unknown}; compare with --method=ovsw, "
        "ags, sad or vanilla")
  return "ags" in parts, "sad" in parts


class TorchStep:
  """One reference training step; call with NCHW images and int64 labels.

  Attributes:
    net: the network (train mode).
    optimizer: SGD with momentum and weight decay.
    hooks: AGS/SAD, or None for a vanilla step.
    times: per-phase seconds of the last step: forward, backward, hooks,
      optimizer (optimizer step and metrics).
  """

  def __init__(self, net: torch.nn.Module, parts: Sequence[str],
               learning_rate: float, momentum: float = 0.9,
               weight_decay: float = 5e-4, delta: float = 0.04,
               dampen_weight: float = 9e-4, track_momentum: float = 0.999,
               track_threshold: float = 1e-4):
    """Steps ``net`` itself (copy it first to keep the original).

    Args:
      net: from `build_model`.
      parts: the method's parts (`ovsw_jax.training.methods.method_parts`): a
        subset of {'ags', 'sad'}; empty for vanilla.
      learning_rate: constant learning rate.
      momentum, weight_decay: SGD's.
      delta, dampen_weight, track_momentum, track_threshold: AGS's and SAD's.
    """
    ags, sad = method_flags(parts)
    self.net = net.train()
    self.optimizer = torch.optim.SGD(
        net.parameters(), lr=learning_rate, momentum=momentum,
        weight_decay=weight_decay)
    self.hooks: Optional[OvSWHooks] = None
    if ags or sad:
      self.hooks = OvSWHooks(binary_convs(net), ags, sad, delta,
                             dampen_weight, track_momentum, track_threshold)
    self.times: dict[str, float] = {}

  def __call__(self, images: torch.Tensor, labels: torch.Tensor
               ) -> dict[str, float]:
    """One step; returns its loss, top1 and top5 (as Python floats)."""
    t0 = time.perf_counter()
    logits = self.net(images)
    loss = F.cross_entropy(logits, labels)
    t1 = time.perf_counter()
    self.optimizer.zero_grad()
    loss.backward()
    t2 = time.perf_counter()
    if self.hooks is not None:
      self.hooks()
    t3 = time.perf_counter()
    self.optimizer.step()
    with torch.no_grad():
      top = logits.topk(min(5, logits.shape[1]), dim=1).indices
      hit = top == labels[:, None]
      metrics = {"loss": loss.item(),
                 "top1": hit[:, :1].any(1).float().mean().item(),
                 "top5": hit.any(1).float().mean().item()}
    t4 = time.perf_counter()
    self.times = {"forward": t1 - t0, "backward": t2 - t1, "hooks": t3 - t2,
                  "optimizer": t4 - t3}
    return metrics


def copy_model(net: torch.nn.Module) -> torch.nn.Module:
  """An independent copy (weights, buffers, train mode)."""
  return copy.deepcopy(net)
