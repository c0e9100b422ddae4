"""CIFAR-10, a real-valued ResNet-18 (32x32 stem): a teacher for distillation.

    python train.py --config=configs/cifar10_float_resnet18.py \\
        --workdir=runs/c10_float_resnet18

The common CIFAR recipe for a float ResNet-18: SGD momentum 0.9 at lr 0.1,
batch 128, weight decay 5e-4 on every parameter, cosine decay over 200 epochs
with no warmup. Method 'vanilla': plain weight decay + SGD (OvSW's parts act
on binary weights, which this model has none of). Its workdir is a teacher:
``--config.teacher_workdir=runs/c10_float_resnet18`` in
configs/cifar10_react_resnet18.py's stages.
"""

from configs import default


def get_config():
  """SGD m 0.9, lr 0.1, batch 128, wd 5e-4, per-step cosine, 200 epochs."""
  config = default.get_config()
  config.model = "resnet18_cifar"
  config.dataset = "cifar10"
  config.method = "vanilla"
  config.batch_size = 128
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.weight_decay_on_1d = True
  config.num_epochs = 200
  config.warmup_epochs = 0
  config.lr_schedule_granularity = "step"
  return config
