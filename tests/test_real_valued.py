"""Real-valued models in the trainer: what each method means for them.

'vanilla' and 'sgd' are the same plain weight decay + SGD momentum, 'adam'
Adam; the parts that act on binary weights are refused, naming them.
"""

import re

import jax
import numpy as np
import pytest

from configs import cifar10_float_resnet18
from ovsw_jax import models
from ovsw_jax.training import experiment as experiment_lib
from ovsw_jax.training import methods
from tests.test_methods import small_config


def _float_config(**overrides):
  return small_config(model="resnet18_cifar",
                      model_options={"width": 4, "stage_sizes": (1, 1, 1, 1)},
                      **overrides)


def test_vanilla_is_plain_sgd_on_every_parameter():
  """One step of 'vanilla' and of 'sgd' on a real-valued model's params are
  ``-lr * (g + wd * w)`` (momentum's first step) on every leaf."""
  config = _float_config(method="vanilla", weight_decay=0.1)
  experiment_lib.validate_config(config)
  rng = np.random.default_rng(0)
  # A real-valued model's leaves: kernels, BatchNorm, the head's bias.
  shapes = {"conv1": {"kernel": (3, 3, 3, 4)}, "bn1": {"scale": (4,)},
            "fc": {"kernel": (4, 10), "bias": (10,)}}
  params = jax.tree.map(rng.normal, shapes, is_leaf=lambda x: isinstance(
      x, tuple))
  grads = jax.tree.map(rng.normal, shapes, is_leaf=lambda x: isinstance(
      x, tuple))
  for method in ("vanilla", "sgd"):
    config.method = method
    tx = methods.create_optimizer(config, lambda step: 0.5)
    updates, _ = tx.update(grads, tx.init(params), params)
    jax.tree.map(lambda u, g, w: np.testing.assert_allclose(
        u, -0.5 * (g + 0.1 * w), rtol=1e-6), updates, grads, params)


@pytest.mark.parametrize("method,parts", [
    ("ovsw", ["ags", "sad"]), ("ovsw+adam", ["ags", "sad"]),
    ("bop", ["bop"]), ("recu", ["recu"]), ("lars+sad", ["lars", "sad"])])
def test_binary_parts_are_refused_with_a_real_valued_model(method, parts):
  with pytest.raises(ValueError, match=re.escape(
      f"config.method={method!r}: its part(s) {parts} act on binary "
      "weights, and config.model='resnet18_cifar' is real-valued (no binary "
      "layer); use --config.method=vanilla")):
    experiment_lib.validate_config(_float_config(method=method))


def test_the_float_recipe_validates_and_builds_no_binary_operands():
  config = cifar10_float_resnet18.get_config()
  experiment_lib.validate_config(config)
  assert (config.method, config.model) == ("vanilla", "resnet18_cifar")
  experiment_lib.validate_config(_float_config(method="adam"))
  # The CPU fast path leaves a model without binary convs alone.
  model = methods.create_model(_float_config(method="vanilla"), 10,
                               platform="cpu")
  assert model == models.get_model("resnet18_cifar", 10, width=4,
                                   stage_sizes=(1, 1, 1, 1))
  assert sorted(models.REAL_VALUED) == [
      "resnet18", "resnet18_cifar", "resnet34", "resnet34_cifar"]
  assert models.is_binary("react_resnet18_cifar")
