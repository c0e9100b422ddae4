"""The deployment command lines, and `export_checkpoint` behind them.

The only deploy module that imports `ovsw_jax.training`: it reads a training
workdir (its config and checkpoint) through the training package's public
functions. Run as ``python -m ovsw_jax.deploy <command>`` (`__main__`)::

  python -m ovsw_jax.deploy export --workdir=/tmp/r20 --out=/tmp/r20.npz \
      [--checkpoint=latest|best|<step>] [--float_dtype=float32|float16] \
      [--config=configs/cifar10_resnet20.py]
  python -m ovsw_jax.deploy evaluate --packed=/tmp/r20.npz \
      [--dataset=cifar10] [--data_dir=...] [--batch_size=500] \
      [--backend=auto|native|jax]

Evaluate defaults to the dataset, data_dir and dataset options the model
was trained with (the export records them).

Each prints one JSON line: the export's sizes and step, or the packed
model's top-1 and speed on the dataset's eval split.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Optional, Sequence, Union

import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ovsw_jax import data
from ovsw_jax import models
from ovsw_jax.deploy import export as export_lib
from ovsw_jax.deploy import format as format_lib
from ovsw_jax.deploy import infer
from ovsw_jax.training import config as config_lib
from ovsw_jax.training import checkpointing
from ovsw_jax.training import methods
from ovsw_jax.training import workdir as workdir_lib


def _which(checkpoint: str) -> Union[str, int]:
  """'latest', 'best' or a step number, as `loop.load_checkpoint` takes."""
  if checkpoint in ("latest", "best"):
    return checkpoint
  try:
    return int(checkpoint)
  except ValueError:
    raise ValueError(
        f"checkpoint={checkpoint!r}; use 'latest', 'best' or a step "
        "number") from None


def _read_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                     checkpoint: str):
  """(params, batch_stats, model_state, meta, step) of a checkpoint, read
  without a target structure: neither the optimizer nor the dataset's files
  are needed, only the checkpoint."""
  checkpointing.quiet_orbax_logs()
  manager = checkpointing.create_manager(
      workdir_lib.checkpoint_dir(workdir), keep=config.keep_checkpoints,
      read_only=True)
  try:
    step = workdir_lib.choose_step(manager, _which(checkpoint))
    restored = manager.restore(step, args=ocp.args.Composite(**{
        checkpointing.STATE: ocp.args.StandardRestore(),
        checkpointing.META: ocp.args.JsonRestore()}))
  finally:
    manager.close()
  items = restored[checkpointing.STATE]
  return (items["params"], items.get("batch_stats"),
          items.get("model_state"), dict(restored[checkpointing.META]), step)


def _image_shape(config: ml_collections.ConfigDict,
                 meta: dict[str, Any]) -> tuple[int, ...]:
  """The run's input shape: recorded in the checkpoint, else the dataset's
  (digits and the synthetic sets know theirs without files), else the
  model's default."""
  if "image_shape" in meta:
    return tuple(int(d) for d in meta["image_shape"])
  options = config_lib.as_dict(config.dataset_options)
  if "image_shape" in options:
    return tuple(options["image_shape"])
  try:
    return tuple(data.get_dataset_info(config.dataset, config.data_dir,
                                       **options).image_shape)
  except data.DataNotFoundError:
    return tuple(models.INPUT_SHAPES[models.canonical_name(config.model)])


def _json_options(options: dict[str, Any]) -> dict[str, Any]:
  """The dataset options a packed file can carry (JSON values only)."""
  out = {}
  for k, v in options.items():
    try:
      out[k] = json.loads(json.dumps(v))
    except TypeError:
      pass  # e.g. a downloader function: evaluate does without it
  return out


def export_checkpoint(workdir: str, out: str, *, checkpoint: str = "latest",
                      float_dtype: str = "float32",
                      config: Optional[ml_collections.ConfigDict] = None
                      ) -> dict[str, Any]:
  """Exports a training workdir's checkpoint to a packed file.

  Args:
    workdir: the training run's workdir (holds config.json and checkpoints/).
    out: the packed file to write.
    checkpoint: 'latest', 'best' or a step number.
    float_dtype: 'float32' or 'float16' for the float layers.
    config: the run's config; default: ``workdir/config.json`` (written by
      the trainer).

  Returns:
    ``{'out', 'file_bytes', 'packed_weight_bytes', 'container_bytes',
    'float32_bytes', 'step', 'model', 'float_dtype'}``: the file's size, the
    bytes of the arrays it stores (what `ovsw_jax.summary` counts as packed
    bytes), the rest of the file (its JSON header and .npz/.npy headers),
    and the float32 size of the same variables.

  Raises:
    FileNotFoundError: no config.json (and no ``config``) or no checkpoint.
  """
  if config is None:
    config = workdir_lib.read_config(workdir)
  params, batch_stats, model_state, meta, step = _read_checkpoint(
      config, workdir, checkpoint)
  num_classes = int(np.shape(params["fc"]["kernel"])[-1])
  model = methods.create_model(config, num_classes)
  variables = {"params": params, "batch_stats": batch_stats or {}}
  variables.update(model_state or {})
  options = config_lib.as_dict(config.model_options)
  image_shape = _image_shape(config, meta)
  dataset_options = config_lib.as_dict(config.dataset_options)
  class_names = meta.get("class_names", dataset_options.get("classes"))
  packed = export_lib.export_model(
      model, variables, model_name=config.model,
      model_options=export_lib.json_model_options(options),
      image_shape=image_shape, float_dtype=float_dtype,
      metadata={"step": int(step), "method": config.method,
                "dataset": config.dataset, "data_dir": config.data_dir,
                # What evaluate needs to rebuild the eval split.
                "dataset_options": _json_options(dataset_options),
                "workdir": os.fspath(workdir_lib.workdir_path(workdir))},
      class_names=class_names)
  size = format_lib.save(packed, out)
  weights = format_lib.array_bytes(packed)
  return {"out": out, "file_bytes": size, "packed_weight_bytes": weights,
          "container_bytes": size - weights,
          "float32_bytes": export_lib.float32_bytes(variables),
          "step": int(step), "model": config.model,
          "float_dtype": float_dtype}


def _export_main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # no orbax INFO lines
  config = f.config if f["config"].present else None
  result = export_checkpoint(f.workdir, f.out, checkpoint=f.checkpoint,
                             float_dtype=f.float_dtype, config=config)
  print(json.dumps(result))


def _define_export_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("workdir", None, "The training run's workdir.")
  flags.DEFINE_string("out", None, "The packed file to write.")
  flags.DEFINE_string("checkpoint", "latest",
                      "'latest', 'best' or a step number.")
  flags.DEFINE_enum("float_dtype", "float32", list(export_lib.FLOAT_DTYPES),
                    "Storage dtype of the float layers.")
  config_flags.DEFINE_config_file(
      "config", None, "The run's config (default: workdir/config.json), "
      "with the same --config.<key> overrides as in training.",
      lock_config=True)
  flags.mark_flags_as_required(["workdir", "out"])


_EXPORT_HELP = """usage: python -m ovsw_jax.deploy export --workdir=DIR --out=FILE [flags]

Packs a training workdir's checkpoint into one file for 1-bit inference
(binary kernels as bits, float layers in float_dtype) and prints one JSON
line: file_bytes (the file's size), packed_weight_bytes (the arrays it
stores: what `python -m ovsw_jax.summary` calls packed), container_bytes
(the rest: JSON header, .npz/.npy headers), float32_bytes (the same
variables in float32), the step and the model."""


def export_command(argv: Sequence[str]) -> None:
  """``export``: absl flags (``--config`` takes ``--config.<key>=...``).

  ``--help`` lists the flags and exits 0 (absl's own --help would show the
  flags of ``__main__``, which defines none, and exit 1).
  """
  import sys  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  _define_export_flags()
  if any(a in ("--help", "-h", "-?", "--helpshort", "--helpfull")
         for a in argv[1:]):
    print(f"{_EXPORT_HELP}\n\nflags:\n"
          f"{flags.FLAGS.module_help(sys.modules[__name__])}")
    sys.exit(0)
  app.run(_export_main, argv=list(argv))


def eval_dataset(packed: format_lib.PackedModel, dataset: Optional[str],
                 data_dir: Optional[str]
                 ) -> tuple[str, Optional[str], dict[str, Any]]:
  """(dataset, data_dir, options) to evaluate on: the ones given, else the
  ones the export recorded (the training run's). A dataset with an
  ``image_size`` option and no recorded options gets the model's size."""
  meta = packed.header.get("metadata", {})
  recorded = meta.get("dataset")
  dataset = dataset or recorded or "cifar10"
  options: dict[str, Any] = {}
  if dataset == recorded:
    data_dir = data_dir or meta.get("data_dir")
    options = dict(meta.get("dataset_options") or {})
  if "image_size" in data.dataset_options(dataset) and \
      "image_size" not in options:
    options["image_size"] = list(packed.image_shape[:2])
  return dataset, data_dir, options


def _check_dataset(packed: format_lib.PackedModel, dataset: str,
                   data_dir: Optional[str], options: dict[str, Any]) -> None:
  """Raises when the dataset's images or classes are not the model's."""
  info = data.get_dataset_info(dataset, data_dir, **options)
  expected, got = tuple(packed.image_shape), tuple(info.image_shape)
  recorded = packed.header.get("metadata", {}).get("dataset", "...")
  if got != expected:
    raise ValueError(
        f"this model expects {'x'.join(map(str, expected))} inputs, but "
        f"--dataset={dataset} has {'x'.join(map(str, got))} images; pass the "
        f"dataset it was trained on (--dataset={recorded}, whose options the "
        "export records: leave --dataset out)")
  names = tuple(info.class_names or ())
  if packed.class_names and names and names != packed.class_names:
    raise ValueError(
        f"the model's {len(packed.class_names)} classes "
        f"{list(packed.class_names[:3])}... are not --dataset={dataset}'s "
        f"{len(names)} classes {list(names[:3])}...; evaluate on data with "
        "the model's classes")


def evaluate_command(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """``evaluate``: top-1 of a packed file on a dataset; prints it as JSON.

  Args:
    argv: the flags (``--packed``, ``--dataset``, ``--data_dir``,
      ``--batch_size``, ``--logits_out``, ``--backend``), without the
      program name.

  Returns:
    ``{'packed', 'model', 'dataset', 'top1', 'count', 'images_per_sec',
    'file_bytes', 'backend'}``, as printed (``backend``: the binary convs'
    kernel that ran).
  """
  parser = argparse.ArgumentParser(
      prog="python -m ovsw_jax.deploy evaluate",
      description="Evaluate a packed 1-bit model (XNOR-popcount inference).")
  parser.add_argument("--packed", required=True, help="file from export")
  parser.add_argument("--dataset", default=None,
                      help="default: the dataset the model was trained on, "
                      "with its options (recorded by export); or cifar10, "
                      "cifar100, imagenet2012, imagefolder, image_records, "
                      "digits, synthetic")
  parser.add_argument("--data_dir", default=None,
                      help="default: the training run's data_dir")
  parser.add_argument("--batch_size", type=int, default=500)
  parser.add_argument("--logits_out", default=None,
                      help="also write every image's logits here (.npy, "
                      "N x classes float32, in the eval split's order)")
  parser.add_argument("--backend", default="auto", choices=infer.BACKENDS,
                      help="the binary convs' kernel: native (C++, XLA:CPU, "
                      "built at install), jax, or auto (native where it "
                      "can run); the logits are the same")
  args = parser.parse_args(argv)
  backend = infer.resolve_backend(args.backend)
  packed = format_lib.load(args.packed)
  dataset, data_dir, options = eval_dataset(packed, args.dataset,
                                            args.data_dir)
  _check_dataset(packed, dataset, data_dir, options)
  result = infer.evaluate(packed, dataset, data_dir, args.batch_size,
                          keep_logits=args.logits_out is not None,
                          backend=backend, dataset_options=options)
  if args.logits_out is not None:
    np.save(args.logits_out, result["logits"])
  out = {"packed": args.packed, "model": packed.header["model"],
         "dataset": dataset, "top1": result["top1"],
         "count": result["count"],
         "images_per_sec": result["images_per_sec"],
         "file_bytes": os.path.getsize(args.packed), "backend": backend}
  print(json.dumps(out))
  return out
