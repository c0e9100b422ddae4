"""Tests of ovsw_jax.masks: masks and labels from the parameter tree alone."""

import jax
import optax
import pytest

from ovsw_jax import masks
from ovsw_jax import transforms
from ovsw_jax.masks import binary_kernel_mask, binary_or_float


def test_binary_kernel_mask_on_dicts_and_frozendicts():
  from flax.core import FrozenDict  # pylint: disable=g-import-not-at-top
  tree = {"conv": {"latent_kernel": 1, "scale": 2}, "bn": {"bias": 3}}
  want = {"conv": {"latent_kernel": True, "scale": False},
          "bn": {"bias": False}}
  assert binary_kernel_mask(tree) == want
  assert binary_kernel_mask({"params": tree}) == {"params": want}
  frozen = binary_kernel_mask(FrozenDict({"params": tree}))
  assert isinstance(frozen, FrozenDict)
  assert frozen.unfreeze() == {"params": want}


def test_transforms_still_exports_the_mask_helpers():
  assert transforms.binary_kernel_mask is masks.binary_kernel_mask
  assert transforms.check_mask is masks.check_mask
  assert transforms.path_name is masks.path_name


def test_binary_or_float_labels_partition_the_params():
  tree = {"conv": {"latent_kernel": 1.0, "alpha": 2.0}, "fc": {"kernel": 3.0}}
  assert binary_or_float(tree) == {
      "conv": {"latent_kernel": "binary", "alpha": "float"},
      "fc": {"kernel": "float"}}
  # As optax.partition's labels: each group sees only its own leaves.
  tx = optax.partition({"binary": optax.scale(-1.0), "float": optax.scale(0.0)},
                       binary_or_float)
  updates, _ = tx.update(tree, tx.init(tree), tree)
  assert jax.tree.map(float, updates) == {
      "conv": {"latent_kernel": -1.0, "alpha": 0.0}, "fc": {"kernel": 0.0}}


def test_path_name_joins_keys_attributes_and_indices():
  tree = {"params": {"conv1": {"latent_kernel": 0}}, "list": [0, 1]}
  names = [masks.path_name(p)
           for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert names == ["list/0", "list/1", "params/conv1/latent_kernel"]


def test_check_mask_names_both_structures():
  with pytest.raises(ValueError, match="`my_mask` must have the structure"):
    masks.check_mask({"a": True}, {"b": 1.0}, name="my_mask")
  masks.check_mask({"a": True}, {"a": {"x": 1.0, "y": 2.0}})  # a prefix fits
