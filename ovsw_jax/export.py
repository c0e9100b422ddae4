"""Export a trained model to a packed 1-bit file (`ovsw_jax.packed`).

From a training workdir (its ``config.json`` and latest checkpoint)::

  python -m ovsw_jax.export --workdir=/tmp/r20 --out=/tmp/r20.npz \
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
import os
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from ovsw_jax import bitpack
from ovsw_jax import layers
from ovsw_jax import models
from ovsw_jax import packed as packed_lib

FLOAT_DTYPES = ("float16", "float32")
# ReCUConv and every other BinaryConv subclass included.
_BINARY = (layers.BinaryConv, layers.BinaryDense)
_FLOAT = (nn.Conv, nn.Dense)


def _resolve_padding(module, in_hw: Sequence[int]) -> list[list[int]]:
  ks = tuple(module.kernel_size)
  if module.padding is None:
    return [list(p) for p in layers.torch_padding(ks)]
  if isinstance(module.padding, str):
    return [list(p) for p in lax.padtype_to_pads(
        tuple(in_hw), ks, tuple(module.strides), module.padding)]
  return [list(p) for p in module.padding]


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


def export_model(model: nn.Module, variables: Mapping[str, Any], *,
                 model_name: str, model_options: Mapping[str, Any],
                 image_shape: Sequence[int], float_dtype: str = "float32",
                 fold_batchnorm: bool = False,
                 metadata: Optional[Mapping[str, Any]] = None
                 ) -> packed_lib.PackedModel:
  """Packs a model's eval-mode forward.

  Args:
    model: the trained Flax module (one of `ovsw_jax.models`, any binary conv
      class: `layers.BinaryConv`, `layers.BinaryDense`, `recu.ReCUConv`).
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

  Returns:
    A `packed.PackedModel`; write it with `packed.save`.

  Raises:
    ValueError: an unknown float dtype, or a layer export cannot pack.
  """
  if float_dtype not in FLOAT_DTYPES:
    raise ValueError(f"float_dtype={float_dtype!r}; use one of "
                     f"{list(FLOAT_DTYPES)}")
  params = jax.device_get(variables["params"])
  stats = jax.device_get(variables.get("batch_stats", {}))
  calls, follows = _trace(model, variables, image_shape)
  if not fold_batchnorm:
    follows = {}
  folded_into = {producer: bn for bn, producer in follows.items()}

  table: dict[str, dict[str, Any]] = {}
  arrays: dict[str, dict[str, np.ndarray]] = {}
  float_params = jax.tree.map(np.asarray, params)
  bn_variables: dict[str, Any] = {}
  binary_paths = []

  def folded_affine(name: str, out_features: int):
    bn_name = folded_into.get(name)
    if bn_name is None:
      return np.ones(out_features), np.zeros(out_features)
    bn_module, _ = calls[bn_name]
    table[bn_name] = {"kind": packed_lib.BN_FOLDED, "into": name}
    return _bn_affine(bn_module, _get(params, bn_name) if bn_module.use_scale
                      or bn_module.use_bias else {}, _get(stats, bn_name))

  for name, (module, in_shape) in calls.items():
    if isinstance(module, _BINARY):
      if not module.binarize_activations:
        raise ValueError(
            f"layer {name!r} has binarize_activations=False (float "
            "activations): it has no XNOR-popcount form; export supports "
            "1-bit activations only")
      p = _get(params, name)
      signs, scale = module.eval_signs_and_scale(p)
      bn_mul, bn_add = folded_affine(name, signs.shape[-1])
      entry = {"in_features": int(signs.shape[-2])}
      if signs.ndim == 4:
        w, tap_sums = bitpack.pack_conv_kernel_np(signs)
        entry.update(kind=packed_lib.BINARY_CONV,
                     kernel_size=list(signs.shape[:2]),
                     strides=list(module.strides),
                     padding=_resolve_padding(module, in_shape[1:3]))
        arrays[name] = {"w": w, "tap_sums": tap_sums}
      else:
        entry.update(kind=packed_lib.BINARY_DENSE)
        arrays[name] = {"w": bitpack.pack_dense_kernel_np(signs)}
      if name in folded_into:
        arrays[name].update(mul=(scale * bn_mul).astype(np.float32),
                            add=bn_add.astype(np.float32))
      else:
        arrays[name]["mul"] = scale
      table[name] = entry
      binary_paths.append(name)
      _set(float_params, name, None)  # Latent weights are not exported.
    elif isinstance(module, _FLOAT) and name in folded_into:
      # The BN goes into a float32 epilogue, not into the kernel: a kernel
      # scaled by a tiny BN gamma could underflow in float16.
      p = _get(params, name)
      bn_mul, bn_add = folded_affine(name, p["kernel"].shape[-1])
      table[name] = {"kind": packed_lib.FLOAT_AFFINE}
      arrays[name] = {"mul": bn_mul.astype(np.float32),
                      "add": bn_add.astype(np.float32)}

  for name, (module, _) in calls.items():
    if isinstance(module, nn.BatchNorm):
      if not fold_batchnorm:
        # Kept as they are (float32), run by flax's own BatchNorm.
        if module.use_scale or module.use_bias:
          _set(bn_variables, f"params/{name}", _get(params, name))
        _set(bn_variables, f"batch_stats/{name}", _get(stats, name))
      elif name not in follows:
        mul, add = _bn_affine(
            module, _get(params, name) if module.use_scale or module.use_bias
            else {}, _get(stats, name))
        table[name] = {"kind": packed_lib.BN_AFFINE}
        arrays[name] = {"mul": mul.astype(np.float32),
                        "add": add.astype(np.float32)}
      if module.use_scale or module.use_bias:
        _set(float_params, name, None)

  def prune(tree):
    if not isinstance(tree, Mapping):
      return tree
    out = {k: prune(v) for k, v in tree.items() if v is not None}
    return {k: v for k, v in out.items() if not (isinstance(v, dict)
                                                 and not v)}

  dtype = np.dtype(float_dtype)
  float_params = jax.tree.map(
      lambda a: np.asarray(a).astype(dtype)
      if np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a),
      prune(float_params))
  variables_out = {"params": float_params}
  for collection, tree in bn_variables.items():
    for name in _paths(tree):
      _set(variables_out, f"{collection}/{name}",
           jax.tree.map(lambda a: np.asarray(a, np.float32),
                        _get(tree, name)))
  header = {
      "format": packed_lib.FORMAT, "version": packed_lib.VERSION,
      "model": model_name, "model_options": dict(model_options),
      "num_classes": int(model.num_classes),
      "image_shape": [int(d) for d in image_shape],
      "float_dtype": float_dtype, "fold_batchnorm": bool(fold_batchnorm),
      "binary_layers": binary_paths,
      "layers": table,
      "metadata": dict(metadata or {}),
  }
  return packed_lib.PackedModel(header=header, layers=arrays,
                                variables=variables_out)


def float32_bytes(variables: Mapping[str, Any]) -> int:
  """Bytes of the eval variables (params + batch_stats) in float32."""
  leaves = jax.tree.leaves({k: v for k, v in variables.items()
                            if k in ("params", "batch_stats")})
  return int(sum(np.size(x) for x in leaves) * 4)


def _json_options(options: Mapping[str, Any]) -> dict[str, Any]:
  """The model options a packed file can carry (the binary conv class is
  dropped: binary layers are replaced at inference)."""
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


def export_checkpoint(workdir: str, out: str, *, checkpoint: str = "latest",
                      float_dtype: str = "float32",
                      config: Optional[Any] = None) -> dict[str, Any]:
  """Exports a training workdir's checkpoint to a packed file.

  Args:
    workdir: the training run's workdir (holds config.json and checkpoints/).
    out: the packed file to write.
    checkpoint: 'latest', 'best' or a step number.
    float_dtype: 'float32' or 'float16' for the float layers.
    config: the run's config; default: ``workdir/config.json`` (written by
      the trainer).

  Returns:
    ``{'out', 'bytes', 'float32_bytes', 'step', 'model', ...}``.

  Raises:
    FileNotFoundError: no config.json (and no ``config``) or no checkpoint.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from ovsw_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from ovsw_jax import train_lib  # pylint: disable=g-import-not-at-top

  if config is None:
    path = os.path.join(workdir, train_lib.CONFIG_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"{path} not found: this workdir was trained without it (older "
          "ovsw_jax). Pass the run's config: --config=configs/<recipe>.py "
          "(with the same overrides as in training).")
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  ckpt_dir = os.path.join(os.path.abspath(workdir), train_lib.CHECKPOINT_DIR)
  manager = checkpointing.create_manager(ckpt_dir, keep=1, best_metric=(
      "eval_top1" if checkpoint == "best" else None), read_only=True)
  try:
    if checkpoint == "latest":
      step = manager.latest_step()
    elif checkpoint == "best":
      step = manager.best_step()
    else:
      step = int(checkpoint)
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt_dir}; train first")
    state, _, step = checkpointing.restore(manager, None, step=step,
                                           set_aside_unreadable=False)
  finally:
    manager.close()
  num_classes = int(np.shape(state["params"]["fc"]["kernel"])[-1])
  model = train_lib.create_model(config, num_classes)
  variables = {"params": state["params"],
               "batch_stats": state.get("batch_stats") or {}}
  variables.update(state.get("model_state") or {})
  options = dict(train_lib._as_dict(config.model_options))  # pylint: disable=protected-access
  image_shape = tuple(train_lib._as_dict(config.dataset_options).get(  # pylint: disable=protected-access
      "image_shape", models.INPUT_SHAPES[models.canonical_name(config.model)]))
  packed = export_model(
      model, variables, model_name=config.model,
      model_options=_json_options(options), image_shape=image_shape,
      float_dtype=float_dtype,
      metadata={"step": int(step), "method": config.method,
                "dataset": config.dataset, "workdir": os.path.abspath(workdir)})
  size = packed_lib.save(packed, out)
  return {"out": out, "bytes": size,
          "float32_bytes": float32_bytes(variables),
          "step": int(step), "model": config.model,
          "float_dtype": float_dtype}


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  config = f.config if f["config"].present else None
  result = export_checkpoint(f.workdir, f.out, checkpoint=f.checkpoint,
                             float_dtype=f.float_dtype, config=config)
  print(json.dumps(result))


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "The training run's workdir.")
  flags.DEFINE_string("out", None, "The packed file to write.")
  flags.DEFINE_string("checkpoint", "latest",
                      "'latest', 'best' or a step number.")
  flags.DEFINE_enum("float_dtype", "float32", list(FLOAT_DTYPES),
                    "Storage dtype of the float layers.")
  config_flags.DEFINE_config_file(
      "config", None, "The run's config (default: workdir/config.json), "
      "with the same --config.<key> overrides as in training.",
      lock_config=True)
  flags.mark_flags_as_required(["workdir", "out"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
