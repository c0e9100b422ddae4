"""CIFAR-100, cResNet18_1w1a.

docs/semantics.md, section 7, CIFAR column (the paper's and the reference's recipe).
"""

from configs import default


def get_config():
  """SGD m 0.9, lr 0.1, batch 256, wd 5e-4 on all params, 5 warmup epochs
  then per-epoch cosine, 600 epochs (paper), OvSW delta 0.04 / lambda 9e-4."""
  config = default.get_config()
  config.model = "cresnet18_1w1a"
  config.dataset = "cifar100"
  config.method = "ovsw"
  config.batch_size = 256
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.weight_decay_on_1d = True
  config.num_epochs = 600  # the paper's CIFAR-100 ablations use 120 (and 60)
  config.warmup_epochs = 5
  config.lr_schedule_granularity = "epoch"
  config.delta = 0.04
  config.dampen_weight = 9e-4
  return config
