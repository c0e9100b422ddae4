"""XNOR-popcount inference of a packed model (`ovsw_jax.deploy.format`).

Inference runs the model's own Flax definition (`ovsw_jax.models`) with its
binary convolutions and BatchNorms intercepted (`flax.linen.intercept_methods`):
each binary conv packs its input's signs and computes an exact integer XNOR +
popcount convolution from the packed weights; nothing else changes, so the
float path (residuals, pooling, head) is the model's own code::

  packed_model = format.load("r20.npz")
  logits = make_predict_fn(packed_model)(images)

Two backends compute the binary convs, with identical results:

* ``'native'``: the C++ kernel behind XLA's FFI (`ovsw_jax.deploy.native`),
  built at install when a C++ compiler is present; XLA:CPU only;
* ``'jax'``: pure JAX (`ovsw_jax.deploy.bitpack.xnor_conv`), everywhere.

``'auto'`` (the default) takes the native one on CPU when it is built.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ovsw_jax.deploy import bitpack
from ovsw_jax.deploy import format as format_lib
from ovsw_jax.deploy import native
from ovsw_jax.deploy.format import PackedModel

BACKENDS = ("auto", "native", "jax")
# The native kernel's weights, next to each binary conv's stored arrays.
NATIVE_WEIGHTS = "w_native"


def _path(module: nn.Module) -> str:
  return "/".join(module.path)


def resolve_backend(backend: str) -> str:
  """'native' or 'jax' for a requested backend (see the module docstring).

  Raises:
    ValueError: an unknown backend, or 'native' where it cannot run.
  """
  if backend not in BACKENDS:
    raise ValueError(f"backend={backend!r}; use one of {list(BACKENDS)}")
  on_cpu = jax.default_backend() == "cpu"
  if backend == "auto":
    return "native" if on_cpu and native.available() else "jax"
  if backend == "native" and not native.available():
    raise ValueError(
        "backend='native': the native XNOR kernel is not built (no C++ "
        "compiler at install?); reinstall with one (pip install -e .) or use "
        "backend='jax'")
  if backend == "native" and not on_cpu:
    raise ValueError(
        f"backend='native' runs on XLA:CPU only, and JAX's default backend "
        f"is {jax.default_backend()!r}; use backend='jax'")
  return backend


def device_arrays(packed: PackedModel, backend: str = "jax"
                  ) -> dict[str, Any]:
  """``packed.arrays()``, plus each binary conv's weights in the native
  kernel's layout (`native.conv_kernel_words`) for the native backend."""
  arrays = packed.arrays()
  if backend == "native":
    for name, entry in packed.header["layers"].items():
      if entry["kind"] == format_lib.BINARY_CONV:
        a = arrays["layers"][name]
        a[NATIVE_WEIGHTS] = jnp.asarray(native.conv_kernel_words(
            np.asarray(a["w"]), entry["kernel_size"], entry["in_features"]))
  return arrays


def binary_conv(entry: Mapping[str, Any], a: Mapping[str, Any], x: jax.Array,
                backend: str, threads: int) -> jax.Array:
  """One binary conv's exact integer output, by either backend."""
  padding = [tuple(p) for p in entry["padding"]]
  if backend == "native":
    return native.xnor_conv(x, a[NATIVE_WEIGHTS], entry["kernel_size"],
                            entry["strides"], padding, threads)
  return bitpack.xnor_conv(
      bitpack.pack_signs(x), a["w"], a["tap_sums"], entry["in_features"],
      entry["kernel_size"], entry["strides"], padding)


def apply(packed: PackedModel, arrays: Mapping[str, Any],
          images: jax.Array, backend: str = "jax",
          threads: int = 1) -> jax.Array:
  """Logits of ``images`` (NHWC float) by XNOR-popcount inference.

  Args:
    packed: the model (its header and module definition are used).
    arrays: `device_arrays` of it for ``backend``; a separate argument so
      that `jax.jit` takes them as inputs rather than as constants baked into
      the program.
    images: ``(N, H, W, C)`` normalised as in training.
    backend: 'jax' or 'native' (`resolve_backend`).
    threads: the native kernel's threads per conv.

  Returns:
    float32 logits ``(N, num_classes)``.
  """
  table = packed.header["layers"]
  layer_arrays = arrays["layers"]

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    name = _path(context.module)
    entry = table.get(name)
    if entry is None:
      return next_fun(*args, **kwargs)
    kind = entry["kind"]
    if kind == format_lib.BN_FOLDED:
      return args[0]
    a = layer_arrays[name]
    if kind == format_lib.BN_AFFINE:
      x = args[0]
      return (x.astype(jnp.float32) * a["mul"] + a["add"]).astype(x.dtype)
    if kind == format_lib.FLOAT_AFFINE:
      y = next_fun(*args, **kwargs)
      return (y.astype(jnp.float32) * a["mul"] + a["add"]).astype(y.dtype)
    x = args[0]
    if x.ndim != (4 if kind == format_lib.BINARY_CONV else 2):
      raise ValueError(f"layer {name!r} got input of shape {x.shape}")
    if kind == format_lib.BINARY_CONV:
      y = binary_conv(entry, a, x, backend, threads)
    elif kind == format_lib.BINARY_DENSE:
      y = bitpack.xnor_dense(bitpack.pack_signs(x), a["w"],
                             entry["in_features"])
    else:
      raise format_lib.PackedFormatError(
          f"unknown layer kind {kind!r} for {name!r}")
    # The int -> float conversion is exact; `* mul` is the float eval's own
    # `conv(a_b, w_b) * scale` when the BatchNorm is not folded (no `add`).
    y = y.astype(x.dtype) * a["mul"].astype(x.dtype)
    if "add" in a:
      y = y + a["add"].astype(x.dtype)
    return y

  model = packed.model()
  with nn.intercept_methods(interceptor):
    logits = model.apply(arrays["variables"],
                         jnp.asarray(images, jnp.float32), train=False)
  return logits.astype(jnp.float32)


def make_predict_fn(packed: PackedModel, backend: str = "auto",
                    threads: Optional[int] = None
                    ) -> Callable[[jax.Array], jax.Array]:
  """A jitted ``images -> logits`` with the packed arrays on the device.

  Args:
    packed: the model.
    backend: 'auto', 'native' or 'jax' (`resolve_backend`); all give the
      same logits.
    threads: the native kernel's threads per conv (default: the cores this
      process may use, `native.default_threads`).
  """
  backend = resolve_backend(backend)
  threads = native.default_threads() if threads is None else int(threads)
  if threads < 1:
    raise ValueError(f"threads={threads} must be >= 1")
  arrays = device_arrays(packed, backend)
  fn = jax.jit(lambda arr, x: apply(packed, arr, x, backend, threads))
  return lambda images: fn(arrays, images)


def evaluate(packed: PackedModel, dataset: str = "cifar10",
             data_dir: Optional[str] = None, batch_size: int = 500,
             keep_logits: bool = False, backend: str = "auto",
             dataset_options: Optional[Mapping[str, Any]] = None
             ) -> dict[str, Any]:
  """Top-1 of a packed model on a dataset's eval split (every image once).

  Args:
    packed: the model, from `ovsw_jax.deploy.format.load`.
    dataset, data_dir: the eval split to read.
    batch_size: images per call of the predict function.
    keep_logits: also return every image's logits (N x classes float32;
      off by default: ImageNet's would take 200 MB).
    backend: of the binary convs (`make_predict_fn`).
    dataset_options: the dataset's options (e.g. image_size).

  Returns:
    ``{'top1', 'count', 'images_per_sec', 'predictions'}`` (predictions as
    an int32 array in the eval split's order), plus ``'logits'`` in that
    order if ``keep_logits``.
  """
  from ovsw_jax import data  # pylint: disable=g-import-not-at-top
  predict = make_predict_fn(packed, backend)
  preds, logits, correct, count, seconds = [], [], 0, 0, 0.0
  for batch in data.create_eval_iterator(dataset, data_dir, batch_size,
                                         **dict(dataset_options or {})):
    t = time.time()
    out = np.asarray(predict(batch["image"]))
    p = out.argmax(axis=-1)
    seconds += time.time() - t
    keep = np.asarray(batch["mask"]).astype(bool)
    preds.append(p[keep])
    if keep_logits:
      logits.append(out[keep])
    correct += int(np.sum(p[keep] == np.asarray(batch["label"])[keep]))
    count += int(keep.sum())
  result = {"top1": correct / count, "count": count,
            "images_per_sec": count / seconds,
            "predictions": np.concatenate(preds).astype(np.int32)}
  if keep_logits:
    result["logits"] = np.concatenate(logits).astype(np.float32)
  return result
