"""The reference's PyTorch training step and evaluation, on torch's device.

`torch_step.TorchStep` is the reference's per-batch work in eager float32
on the CPU. On a GPU the reference trains with CUDA automatic mixed
precision (its trainers/ovsw.py): the forward and the loss under
``torch.autocast(float16)``, ``GradScaler``: scale the loss, backward,
unscale the gradients, then AGS/SAD on the unscaled gradients, then the
scaler's optimizer step; loss, top-1 and top-5 read with ``.item()`` every
step (which waits for the GPU, as the reference's logging does). `DeviceStep`
is that, with AMP on or off; evaluation (`evaluate`) runs in float32, as the
reference's ``validate``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.lib import torch_step

# Precisions of the PyTorch arms: eager float32 anywhere; float16 autocast
# (the reference's training precision) where CUDA is.
FLOAT32, AMP_FLOAT16 = "float32", "float16_amp"


def device() -> torch.device:
  """CUDA's first GPU when torch sees one, else the CPU."""
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def precisions(dev: torch.device) -> list[str]:
  """The precisions the reference's step runs in on ``dev``."""
  return [FLOAT32, AMP_FLOAT16] if dev.type == "cuda" else [FLOAT32]


def synchronize(dev: torch.device) -> None:
  if dev.type == "cuda":
    torch.cuda.synchronize(dev)


def to_torch(batch: Mapping[str, np.ndarray], dev: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
  """NHWC float32 images and int labels as NCHW and int64 on ``dev``."""
  images = torch.from_numpy(np.ascontiguousarray(
      np.asarray(batch["image"]).transpose(0, 3, 1, 2)))
  labels = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64))
  pin = dev.type == "cuda"
  if pin:
    images, labels = images.pin_memory(), labels.pin_memory()
  return (images.to(dev, non_blocking=pin), labels.to(dev, non_blocking=pin))


class DeviceStep(torch_step.TorchStep):
  """`torch_step.TorchStep` on the net's device, with the reference's AMP.

  Attributes:
    amp: float16 autocast and a GradScaler (the reference's GPU training).
    scaler: the GradScaler (a pass-through when ``amp`` is off).
  """

  def __init__(self, net: torch.nn.Module, parts: Sequence[str],
               learning_rate: float, amp: bool = False, **kwargs: Any):
    """Args: as `TorchStep` (``net`` already on its device), and ``amp``."""
    super().__init__(net, parts, learning_rate, **kwargs)
    self.amp = amp
    dev = next(net.parameters()).device
    if amp and dev.type != "cuda":
      raise ValueError(f"float16 autocast is the reference's CUDA training; "
                       f"this net is on {dev}")
    self.scaler = torch.amp.GradScaler(dev.type, enabled=amp)

  def set_learning_rate(self, lr: float) -> None:
    for group in self.optimizer.param_groups:
      group["lr"] = lr

  def __call__(self, images: torch.Tensor, labels: torch.Tensor
               ) -> dict[str, float]:
    with torch.autocast(images.device.type, dtype=torch.float16,
                        enabled=self.amp):
      logits = self.net(images)
      loss = F.cross_entropy(logits, labels)
    self.optimizer.zero_grad()
    self.scaler.scale(loss).backward()
    self.scaler.unscale_(self.optimizer)
    if self.hooks is not None:
      self.hooks()
    self.scaler.step(self.optimizer)
    self.scaler.update()
    with torch.no_grad():
      top = logits.topk(min(5, logits.shape[1]), dim=1).indices
      hit = top == labels[:, None]
      return {"loss": loss.item(),
              "top1": hit[:, :1].any(1).float().mean().item(),
              "top5": hit.any(1).float().mean().item()}


def make_step(model: str, num_classes: int, parts: Sequence[str],
              config: Any, amp: bool, dev: torch.device, seed: int = 0,
              **model_kwargs: Any) -> DeviceStep:
  """The reference's network (its init, ``seed``) and step on ``dev``, with
  ``config``'s SGD, AGS and SAD settings and its first learning rate."""
  net = torch_step.build_model(model, num_classes, seed, **model_kwargs)
  return DeviceStep(
      net.to(dev), parts, learning_rate=float(config.learning_rate),
      amp=amp, momentum=config.momentum, weight_decay=config.weight_decay,
      delta=config.delta, dampen_weight=config.dampen_weight,
      track_momentum=config.track_momentum,
      track_threshold=config.track_threshold)


@torch.no_grad()
def evaluate(net: torch.nn.Module, batches: Iterable[Mapping[str, Any]],
             dev: torch.device) -> dict[str, float]:
  """Float32 eval (train mode restored after): mean loss and top-1 over
  the unmasked rows of ``batches`` (`data.create_eval_iterator`'s)."""
  net.eval()
  loss, correct, count = 0.0, 0, 0
  try:
    for batch in batches:
      mask = np.asarray(batch["mask"])
      images, labels = to_torch(
          {"image": np.asarray(batch["image"])[mask],
           "label": np.asarray(batch["label"])[mask]}, dev)
      logits = net(images).float()
      loss += F.cross_entropy(logits, labels, reduction="sum").item()
      correct += int((logits.argmax(1) == labels).sum().item())
      count += int(mask.sum())
  finally:
    net.train()
  return {"eval_loss": loss / count, "eval_top1": correct / count,
          "eval_count": count}
