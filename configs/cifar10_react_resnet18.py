"""CIFAR-10, ReAct-ResNet-18 (32x32 stem) with OvSW, ReActNet's two stages.

    python train.py --config=configs/cifar10_react_resnet18.py:stage1 \\
        --workdir=runs/c10_react18_s1
    python train.py --config=configs/cifar10_react_resnet18.py:stage2 \\
        --workdir=runs/c10_react18_s2 --config.init_from=runs/c10_react18_s1

A CIFAR-scale version of configs/imagenet_react_resnet18.py (ReActNet gives
no CIFAR recipe): the stages of configs/react_stages.py with OvSW's CIFAR
hyperparameters (docs/semantics.md, section 7). Without a teacher the loss
is the labels' cross-entropy; add one with --config.teacher_workdir.
"""

from configs import default
from configs import react_stages


def get_config(stage: str = "stage1"):
  """Adam lr 5e-4, linear decay, batch 256, 200 epochs a stage, AGS and SAD
  in front of Adam (delta 0.04, lambda 9e-4)."""
  config = default.get_config()
  config.model = "react_resnet18_cifar"
  config.dataset = "cifar10"
  config.method = "ovsw+adam"
  config.batch_size = 256
  config.num_epochs = 200
  config.delta = 0.04
  config.dampen_weight = 9e-4
  return react_stages.apply_stage(config, stage)
