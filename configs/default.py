"""The defaults every recipe starts from: `ovsw_jax.training.config`.

Each recipe in this directory starts from `get_config()` and changes a few
fields. Every field is documented, with its default, in
ovsw_jax/training/config.py (`default_config`), the one place the valid keys
are defined. Override any field on the command line::

  python train.py --config=configs/cifar10_resnet20.py --workdir=/tmp/r20 \\
      --config.batch_size=128 --config.dataset=synthetic \\
      --config.dataset_options="{'image_shape': (16, 16, 3), 'num_train': 512}" \\
      --config.dataset_options.num_eval=100

Unknown keys are rejected, with the list of valid ones.
"""

import ml_collections

from ovsw_jax.training import config as config_lib


def get_config() -> ml_collections.ConfigDict:
  """The defaults: OvSW on CIFAR-10 with the reference's CIFAR recipe."""
  return config_lib.default_config()
