"""Fixtures shared by several test modules."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CIFAR_DIR = os.environ.get("OVSW_DATA_DIR") or os.path.join(
    os.path.dirname(REPO), "shared", "data")


def require_cifar10() -> str:
  """The folder holding cifar-10-batches-bin, or skip with the reason."""
  if not os.path.isdir(os.path.join(CIFAR_DIR, "cifar-10-batches-bin")):
    pytest.skip(f"CIFAR-10 binaries not found under {CIFAR_DIR} (set "
                "OVSW_DATA_DIR to the folder holding cifar-10-batches-bin)")
  return CIFAR_DIR


@pytest.fixture(scope="session")
def cifar10_run(tmp_path_factory):
  """A short real CIFAR-10 run of cResNet20 (trained once per session).

  150 steps of 64 (a fifth of an epoch, about a minute): no augmentation,
  lr 0.2 decayed per step by the cosine. This reached 29% test top-1 here (it
  takes some 100 more steps with the recipe's constant first-epoch lr).

  Returns:
    ``(config, workdir, result)`` of `loop.train_and_evaluate`.
  """
  from configs import default  # pylint: disable=g-import-not-at-top
  from ovsw_jax.training import loop  # pylint: disable=g-import-not-at-top
  data_dir = require_cifar10()
  workdir = str(tmp_path_factory.mktemp("cifar10_run"))
  config = default.get_config()
  config.update({
      "dataset": "cifar10", "data_dir": data_dir,
      "dataset_options": {"download": False, "augment": False},
      "batch_size": 64, "eval_batch_size": 1000, "num_train_steps": 150,
      "warmup_epochs": 0, "learning_rate": 0.2,
      "lr_schedule_granularity": "step", "log_every_steps": 50,
      "checkpoint_every_steps": 0, "eval_every_epochs": 0,
      "flip_stats_every_steps": 0, "progress_bar": False})
  result = loop.train_and_evaluate(config, workdir)
  return config, workdir, result
