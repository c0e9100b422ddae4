"""Export a trained model to a packed 1-bit file (`ovsw_jax.deploy.format`).

`export_model` packs a model and its variables; from a training workdir (its
``config.json`` and latest checkpoint) the command line does it
(`ovsw_jax.deploy.cli`)::

  python -m ovsw_jax.deploy export --workdir=/tmp/r20 --out=/tmp/r20.npz \
      [--checkpoint=latest|best|<step>] [--float_dtype=float32|float16] \
      [--config=configs/cifar10_resnet20.py]

Binary kernels keep only their signs, 32 to a word, and their per-channel
scale; BatchNorm stays as it is (float32), run by flax's own code, so the
packed logits equal the float eval's bit for bit.

With ``fold_batchnorm=True`` (`export_model`), the scale of each binary layer
and the BatchNorm that directly follows a conv are folded into one
per-channel affine (exact algebra, but float32 rounds it differently, which
can flip a sign downstream), and so is a BatchNorm that directly follows a
float conv (a float32 epilogue after the conv, whose kernel is stored as it
is). Which BatchNorm follows which layer is read from the model itself: the
model is traced once and a BatchNorm whose input *is* a conv's output is
folded into that conv.

Float layers are stored in ``--float_dtype`` (default float32, which keeps
the packed logits equal to the float eval's). float16 halves their bytes; the
logits then differ from the float32 eval by the float16 rounding of those
weights (measured in benchmarks/deploy.py and the tests).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax import layers
from ovsw_jax.deploy import bitpack
from ovsw_jax.deploy import format as format_lib
from ovsw_jax.deploy import model_layout
from ovsw_jax.deploy import schema

FLOAT_DTYPES = schema.FLOAT_DTYPES
# ReCUConv and every other BinaryConv subclass included.
_BINARY = (layers.BinaryConv, layers.BinaryDense)
_FLOAT = (nn.Conv, nn.Dense)


def _trace(model: nn.Module, variables: Mapping[str, Any],
           image_shape: Sequence[int]) -> tuple[dict, dict]:
  """Which modules run, in order, and which BatchNorm follows which layer.

  Returns:
    ``(calls, follows)``: ``calls[path] = (module, input shape)`` for binary
    layers, float convs/denses and BatchNorms; ``follows[bn_path] =
    producer_path`` where the BatchNorm's input is that layer's output.
  """
  calls: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}
  outputs: dict[int, str] = {}
  follows: dict[str, str] = {}
  keep_alive = []  # ids are only unique among live objects.

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__":
      return out
    if isinstance(module, _BINARY + _FLOAT + (nn.BatchNorm,)):
      name = "/".join(module.path)
      if name in calls:
        raise ValueError(f"module {name!r} is called twice; export supports "
                         "models that call each layer once")
      calls[name] = (module, tuple(args[0].shape))
      if isinstance(module, nn.BatchNorm) and id(args[0]) in outputs:
        follows[name] = outputs[id(args[0])]
      if isinstance(module, _BINARY + _FLOAT):
        outputs[id(out)] = name
        keep_alive.append(out)
    return out

  def run():
    with nn.intercept_methods(interceptor):
      return model.apply(variables, jnp.zeros((1, *image_shape), jnp.float32),
                         train=False)

  jax.eval_shape(run)
  return calls, follows


def _get(tree: Mapping[str, Any], path: str) -> Any:
  node = tree
  for p in path.split("/"):
    node = node[p]
  return node


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
  *parents, leaf = path.split("/")
  node = tree
  for p in parents:
    node = node.setdefault(p, {})
  node[leaf] = value


def _paths(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
  """'a/b' paths of the subtrees whose values are arrays (module paths)."""
  out = []
  for k, v in tree.items():
    if isinstance(v, Mapping) and any(isinstance(x, Mapping)
                                      for x in v.values()):
      out.extend(_paths(v, f"{prefix}{k}/"))
    else:
      out.append(f"{prefix}{k}")
  return out


def _bn_affine(module: nn.BatchNorm, params: Mapping[str, Any],
               stats: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """BatchNorm's eval formula as ``x * mul + add`` (computed in float64)."""
  mean = np.asarray(stats["mean"], np.float64)
  var = np.asarray(stats["var"], np.float64)
  gamma = (np.asarray(params["scale"], np.float64) if module.use_scale
           else np.ones_like(mean))
  beta = (np.asarray(params["bias"], np.float64) if module.use_bias
          else np.zeros_like(mean))
  mul = gamma / np.sqrt(var + module.epsilon)
  return mul, beta - mean * mul


class _Packer:
  """Builds a packed model's layer table, arrays and float variables.

  One method per kind of layer; `export_model` calls them in the model's
  call order (the traced ``calls``).
  """

  def __init__(self, variables: Mapping[str, Any], calls: dict,
               follows: dict[str, str]):
    self.params = jax.device_get(variables["params"])
    self.stats = jax.device_get(variables.get("batch_stats", {}))
    self.calls, self.follows = calls, follows
    self.folded_into = {producer: bn for bn, producer in follows.items()}
    self.table: dict[str, dict[str, Any]] = {}
    self.arrays: dict[str, dict[str, np.ndarray]] = {}
    self.float_params = jax.tree.map(np.asarray, self.params)
    self.bn_variables: dict[str, Any] = {}
    self.binary_paths: list[str] = []

  def _bn_params(self, module: nn.BatchNorm, name: str) -> Mapping[str, Any]:
    return (_get(self.params, name) if module.use_scale or module.use_bias
            else {})

  def folded_affine(self, name: str, out_features: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The affine of the BatchNorm folded into layer ``name`` (identity if
    none), marking that BatchNorm as folded."""
    bn_name = self.folded_into.get(name)
    if bn_name is None:
      return np.ones(out_features), np.zeros(out_features)
    bn_module, _ = self.calls[bn_name]
    self.table[bn_name] = {"kind": format_lib.BN_FOLDED, "into": name}
    return _bn_affine(bn_module, self._bn_params(bn_module, bn_name),
                      _get(self.stats, bn_name))

  def binary_layer(self, name: str, module: nn.Module,
                   in_shape: Sequence[int]) -> None:
    """Packs a binary conv/dense: signs, tap sums, scale (and folded BN)."""
    if not module.binarize_activations:
      raise ValueError(
          f"layer {name!r} has binarize_activations=False (float "
          "activations): it has no XNOR-popcount form; export supports "
          "1-bit activations only")
    if not getattr(module, "binarize_weights", True):
      raise ValueError(
          f"layer {name!r} has binarize_weights=False (float weights, e.g. "
          "ReActNet's stage 1): export a run whose weights are binary (its "
          "stage 2)")
    signs, scale = module.eval_signs_and_scale(_get(self.params, name))
    bn_mul, bn_add = self.folded_affine(name, signs.shape[-1])
    # The fields `schema.check` expects of this layer when the file is read.
    entry = model_layout.binary_fields(module, signs.shape, in_shape)
    if signs.ndim == 4:
      w, tap_sums = bitpack.pack_conv_kernel_np(signs)
      entry["kind"] = format_lib.BINARY_CONV
      self.arrays[name] = {"w": w, "tap_sums": tap_sums}
    else:
      entry.update(kind=format_lib.BINARY_DENSE)
      self.arrays[name] = {"w": bitpack.pack_dense_kernel_np(signs)}
    if name in self.folded_into:
      self.arrays[name].update(mul=(scale * bn_mul).astype(np.float32),
                               add=bn_add.astype(np.float32))
    else:
      self.arrays[name]["mul"] = scale
    self.table[name] = entry
    self.binary_paths.append(name)
    _set(self.float_params, name, None)  # Latent weights are not exported.

  def float_affine(self, name: str) -> None:
    """A float conv/dense followed by a folded BN: a float32 epilogue."""
    # The BN goes into an epilogue, not into the kernel: a kernel scaled by a
    # tiny BN gamma could underflow in float16.
    p = _get(self.params, name)
    bn_mul, bn_add = self.folded_affine(name, p["kernel"].shape[-1])
    self.table[name] = {"kind": format_lib.FLOAT_AFFINE}
    self.arrays[name] = {"mul": bn_mul.astype(np.float32),
                         "add": bn_add.astype(np.float32)}

  def batchnorm(self, name: str, module: nn.BatchNorm,
                fold_batchnorm: bool) -> None:
    """Keeps a BatchNorm as it is, or (folding) makes it an affine."""
    if not fold_batchnorm:
      # Kept as they are (float32), run by flax's own BatchNorm.
      if module.use_scale or module.use_bias:
        _set(self.bn_variables, f"params/{name}", _get(self.params, name))
      _set(self.bn_variables, f"batch_stats/{name}", _get(self.stats, name))
    elif name not in self.follows:
      mul, add = _bn_affine(module, self._bn_params(module, name),
                            _get(self.stats, name))
      self.table[name] = {"kind": format_lib.BN_AFFINE}
      self.arrays[name] = {"mul": mul.astype(np.float32),
                           "add": add.astype(np.float32)}
    if module.use_scale or module.use_bias:
      _set(self.float_params, name, None)

  def variables(self, float_dtype: str) -> dict[str, Any]:
    """The float variables: float layers in ``float_dtype``, BN in float32."""
    dtype = np.dtype(float_dtype)
    float_params = jax.tree.map(
        lambda a: np.asarray(a).astype(dtype)
        if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a),
        _prune(self.float_params))
    out = {"params": float_params}
    for collection, tree in self.bn_variables.items():
      for name in _paths(tree):
        _set(out, f"{collection}/{name}",
             jax.tree.map(lambda a: np.asarray(a, np.float32),
                          _get(tree, name)))
    return out


def _prune(tree: Any) -> Any:
  """``tree`` without its None leaves and the dicts left empty."""
  if not isinstance(tree, Mapping):
    return tree
  out = {k: _prune(v) for k, v in tree.items() if v is not None}
  return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}


def export_model(model: nn.Module, variables: Mapping[str, Any], *,
                 model_name: str, model_options: Mapping[str, Any],
                 image_shape: Sequence[int], float_dtype: str = "float32",
                 fold_batchnorm: bool = False,
                 metadata: Optional[Mapping[str, Any]] = None,
                 class_names: Optional[Sequence[str]] = None
                 ) -> format_lib.PackedModel:
  """Packs a model's eval-mode forward.

  Args:
    model: the trained Flax module (one of `ovsw_jax.models`, with any binary
      layer: `layers.BinaryConv` or a subclass such as `recu.ReCUConv`,
      `layers.BinaryDense`), whose binary layers give their eval-time signs
      and scale (``eval_signs_and_scale``).
    variables: its ``{'params', 'batch_stats', ...}``.
    model_name: its name in `ovsw_jax.models` (to rebuild it at load).
    model_options: JSON-serialisable `get_model` keyword arguments (only the
      ones that change the float path; the binary conv class need not be
      given: binary layers are replaced at inference).
    image_shape: one input image's (H, W, C).
    float_dtype: 'float32' or 'float16', for the float conv/dense weights
      (BatchNorm always stays float32). float16 makes the logits differ from
      the float eval's (see the module docstring).
    fold_batchnorm: fold each binary layer's scale and the BatchNorm that
      directly follows a conv into one float32 per-channel affine, and every
      other BatchNorm into an affine. Fewer operations, but not bit-exact:
      BatchNorm's float32 rounding changes in the last bit, and in a BNN a
      pre-activation within that rounding of 0 flips its sign. False keeps
      the eval path's arithmetic: logits equal the float eval's.
    metadata: extra JSON-serialisable facts for the header (e.g. the step).
    class_names: each label's name, kept in the header (None: not known).

  Returns:
    A `format.PackedModel`; write it with `format.save`.

  Raises:
    ValueError: an unknown float dtype, or a layer export cannot pack.
  """
  if float_dtype not in FLOAT_DTYPES:
    raise ValueError(f"float_dtype={float_dtype!r}; use one of "
                     f"{list(FLOAT_DTYPES)}")
  calls, follows = _trace(model, variables, image_shape)
  packer = _Packer(variables, calls, follows if fold_batchnorm else {})
  for name, (module, in_shape) in calls.items():
    if isinstance(module, _BINARY):
      packer.binary_layer(name, module, in_shape)
    elif isinstance(module, _FLOAT) and name in packer.folded_into:
      packer.float_affine(name)
  for name, (module, _) in calls.items():
    if isinstance(module, nn.BatchNorm):
      packer.batchnorm(name, module, fold_batchnorm)
  header = {
      "format": format_lib.FORMAT, "version": format_lib.VERSION,
      "model": model_name, "model_options": dict(model_options),
      "num_classes": int(model.num_classes),
      "image_shape": [int(d) for d in image_shape],
      "float_dtype": float_dtype, "fold_batchnorm": bool(fold_batchnorm),
      "binary_layers": packer.binary_paths,
      "layers": packer.table,
      "metadata": dict(metadata or {}),
  }
  if class_names is not None:
    if len(class_names) != int(model.num_classes):
      raise ValueError(f"{len(class_names)} class names for a model of "
                       f"{model.num_classes} classes")
    header["class_names"] = [str(c) for c in class_names]
  return format_lib.PackedModel(header=header, layers=packer.arrays,
                                variables=packer.variables(float_dtype))


def float32_bytes(variables: Mapping[str, Any]) -> int:
  """Bytes of the eval variables (params + batch_stats) in float32."""
  leaves = jax.tree.leaves({k: v for k, v in variables.items()
                            if k in ("params", "batch_stats")})
  return int(sum(np.size(x) for x in leaves) * 4)


def json_model_options(options: Mapping[str, Any]) -> dict[str, Any]:
  """The model options a packed file can carry.

  The binary conv class (``conv``) is dropped: binary layers are replaced at
  inference.

  Raises:
    ValueError: an option that is not JSON-serialisable.
  """
  out = {}
  for k, v in options.items():
    if k == "conv":
      continue
    try:
      json.dumps(v)
    except TypeError as e:
      raise ValueError(
          f"model option {k}={v!r} cannot be stored in a packed file (not "
          "JSON); export supports string/number options only") from e
    out[k] = v
  return out
