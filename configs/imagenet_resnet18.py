"""ImageNet-1K, ResNet18_1w1a (reported top-1 61.6, top-5 83.1).

docs/semantics.md, section 7, ImageNet column (the paper's and the reference's recipe).
"""

from configs import default


def get_config():
  """SGD m 0.9, lr 0.1, batch 512, wd 1e-4 not on 1-D params, 5 warmup epochs
  then per-epoch cosine, 200 epochs, OvSW delta 0.01 (code) / lambda 2e-5."""
  config = default.get_config()
  config.model = "resnet18_1w1a"
  config.dataset = "imagenet2012"
  config.method = "ovsw"
  config.batch_size = 512
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.weight_decay_on_1d = False  # no decay on BN, biases, PReLU
  config.num_epochs = 200
  config.warmup_epochs = 5
  config.lr_schedule_granularity = "epoch"
  # The authors' code uses 0.01; the paper's text says 0.02.
  config.delta = 0.01
  config.dampen_weight = 2e-5
  return config
