"""Quickstart: OvSW cResNet20_1w1a on sklearn's digits, minutes on a CPU.

The digits ship with scikit-learn (1,500 train / 297 eval images, 16x16x1), so
nothing is downloaded::

  python train.py --config=configs/quickstart.py --workdir=/tmp/quickstart

README's Results table has its accuracy and time, from
benchmarks/results/quickstart_seeds.json (`python -m
benchmarks.quickstart_seeds`); tests/test_quickstart_figure.py fails when this
config no longer matches the one that sweep ran.
"""

from configs import default


def get_config():
  """The CIFAR recipe shortened to 20 epochs of batch 128 (220 steps)."""
  config = default.get_config()
  config.model = "cresnet20_1w1a"
  config.dataset = "digits"
  config.method = "ovsw"
  config.batch_size = 128
  config.num_epochs = 20
  config.warmup_epochs = 1
  config.learning_rate = 0.1
  config.log_every_steps = 20
  config.eval_every_epochs = 5
  config.checkpoint_every_steps = 0  # after each eval and at the end
  return config
