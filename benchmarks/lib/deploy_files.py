"""The deploy benchmark's models and files: float32 and packed, measured.

Every model with random weights (`random_variables`: sizes do not depend on
the values, nor does XLA's run time); the float32 file is one uncompressed
``.npz`` of its params and batch_stats, the packed files are
`ovsw_jax.deploy.export.export_model` + `ovsw_jax.deploy.format.save`.
`RealConv` builds the real-valued network of the same shapes.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from flax import linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from ovsw_jax import layers
from ovsw_jax import models
from ovsw_jax.deploy import export
from ovsw_jax.deploy import format as packed_format

MB = 1e6
CIFAR_CLASSES, IMAGENET_CLASSES = 10, 1000
# Files per model in the work folder.
FP32_FILE = "{}_fp32.npz"
PACKED_FILES = {  # arm -> (file, float_dtype, fold_batchnorm)
    "packed_fp32": ("{}_packed_fp32.npz", "float32", False),
    "packed_fp16": ("{}_packed_fp16.npz", "float16", False),
    "packed_fp32_folded": ("{}_packed_fp32_folded.npz", "float32", True),
}


class RealConv(nn.Module):
  """A plain float conv in `layers.BinaryConv`'s place (and signature).

  Builds the real-valued network of the same shapes (the paper's 32/32
  backbone) on the binary model's weights: the kernel keeps the name
  `layers.LATENT_KERNEL` and is used as it is, activations are not binarized.
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Any = None
  dtype: Any = None
  kernel_init: Any = layers.kaiming_normal_fan_in()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # Same forward in both modes.
    ks = tuple(self.kernel_size)
    kernel = self.param(layers.LATENT_KERNEL, self.kernel_init,
                        (*ks, x.shape[-1], self.features), jnp.float32)
    dtype = self.dtype or x.dtype
    padding = self.padding
    if padding is None:
      padding = layers.torch_padding(ks)
    return lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), tuple(self.strides), padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def model_setup(name: str, image_size_imagenet: int = 224
                ) -> tuple[Any, tuple[int, int, int], int]:
  """``(module, image_shape, num_classes)`` of a model as benchmarked.

  CIFAR models (32x32 inputs) get 10 classes, ImageNet ones 1000 and
  ``image_size_imagenet`` square inputs (ResNets pool globally: their weights
  do not depend on it).
  """
  name = models.canonical_name(name)
  shape = models.INPUT_SHAPES[name]
  if shape[0] == 32:
    num_classes = CIFAR_CLASSES
  else:
    if image_size_imagenet < 32:
      raise ValueError(f"--image_size_imagenet={image_size_imagenet} is too "
                       "small for a ResNet's 5 downsamplings; use >= 32")
    num_classes = IMAGENET_CLASSES
    shape = (image_size_imagenet, image_size_imagenet, shape[2])
  return models.get_model(name, num_classes), shape, num_classes


def random_variables(model: Any, image_shape: Sequence[int],
                     seed: int = 0) -> dict[str, Any]:
  """Random params and batch_stats of the model's shapes (host float32).

  The shapes come from tracing ``model.init`` (`jax.eval_shape`: running it
  compiles for some 10 s a model here). Values: kernels ``N(0, 1 / fan_in)``,
  BatchNorm scales and variances ``U(0.5, 1.5)``, biases and means ``N(0,
  0.1^2)``: activations and logits of order 1 (the init's small BatchNorm
  scales make them ~1e-7), so packed and float logits compare meaningfully.
  Sizes and XLA's run time do not depend on the values.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(seed),
                          jnp.zeros((1, *image_shape), jnp.float32))
  flat = traverse_util.flatten_dict(
      {k: v for k, v in shapes.items() if k in ("params", "batch_stats")})
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in flat.items():
    shape, leaf_name = tuple(leaf.shape), path[-1]
    if leaf_name in ("scale", "var") and len(shape) == 1:
      value = rng.uniform(0.5, 1.5, shape)
    elif len(shape) >= 2:
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    else:
      value = 0.1 * rng.standard_normal(shape)
    out[path] = value.astype(np.float32)
  return traverse_util.unflatten_dict(out)


def save_float32(variables: Mapping[str, Any], path: str) -> int:
  """Writes params + batch_stats as one uncompressed float32 ``.npz``.

  Returns:
    The file's size in bytes.
  """
  flat = traverse_util.flatten_dict(dict(variables), sep="/")
  np.savez(path, **{k: np.asarray(v, np.float32) for k, v in flat.items()})
  return os.path.getsize(path)


def load_float32(path: str) -> dict[str, Any]:
  """Inverse of `save_float32`."""
  with np.load(path) as f:
    flat = {k: f[k] for k in f.files}
  return traverse_util.unflatten_dict(flat, sep="/")


def write_files(name: str, folder: str, image_size_imagenet: int = 224,
                seed: int = 0) -> dict[str, Any]:
  """Writes a model's float32 and packed files and measures them.

  Returns:
    ``{'num_float_values', 'float32_bytes_formula', 'files': {arm: {'path',
    'bytes', 'mb', 'ratio_fp32_over_this'}}}``, arms 'float32' and those of
    `PACKED_FILES`.
  """
  model, shape, _ = model_setup(name, image_size_imagenet)
  variables = random_variables(model, shape, seed)
  files = {}
  fp32_path = os.path.join(folder, FP32_FILE.format(name))
  fp32_bytes = save_float32(variables, fp32_path)
  files["float32"] = {"path": fp32_path, "bytes": fp32_bytes}
  for arm, (pattern, dtype, fold) in PACKED_FILES.items():
    path = os.path.join(folder, pattern.format(name))
    packed = export.export_model(
        model, variables, model_name=name, model_options={},
        image_shape=shape, float_dtype=dtype, fold_batchnorm=fold)
    packed_format.save(packed, path)
    files[arm] = {"path": path, "bytes": os.path.getsize(path)}
  for entry in files.values():
    entry["mb"] = entry["bytes"] / MB
    entry["ratio_fp32_over_this"] = fp32_bytes / entry["bytes"]
  return {
      "num_float_values": int(sum(np.size(x)
                                  for x in jax.tree.leaves(variables))),
      "float32_bytes_formula": export.float32_bytes(variables),
      "files": files,
  }

