"""Training and evaluation of binary networks with OvSW (SPEC sections 6-7).

The pieces, in the order `train_and_evaluate` uses them:

* `validate_config`: rejects unknown or missing config keys and bad values.
* `create_learning_rate_fn`: the reference's warmup + cosine schedule, set
  per epoch (default) or per step.
* `create_optimizer`, `create_model`: the method ('vanilla', 'ags', 'sad',
  'ovsw', 'lars', 'bop', 'recu', or '+'-joined parts such as 'recu+ovsw') as
  one optax chain and a model, from a small registry of parts
  (`register_method`).
* `TrainState`, `create_train_state`: params, batch_stats, other model
  variables (ReCU's tau), optimizer state, step and RNG key, replicated over
  the mesh.
* `train_step`, `eval_step`: jitted over a 1-D data-parallel mesh (see
  `ovsw_jax.parallel` for why jit with NamedShardings and not pmap).
* `train_and_evaluate`: the loop: logging (metrics.jsonl, TensorBoard, tqdm),
  per-layer flip rates, periodic evaluation, orbax checkpoints, exact resume,
  and stopping on a non-finite loss.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import (Any, Callable, Iterable, Mapping, NamedTuple, Optional,
                    Sequence)

from absl import logging
from flax import struct
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from ovsw_jax import bop
from ovsw_jax import checkpointing
from ovsw_jax import data
from ovsw_jax import diagnostics
from ovsw_jax import layers
from ovsw_jax import models
from ovsw_jax import ops
from ovsw_jax import parallel
from ovsw_jax import recu
from ovsw_jax import transforms

# The config fields `train_and_evaluate` reads; configs/default.py documents
# each one. A config must have exactly these top-level keys.
CONFIG_KEYS = frozenset({
    "model", "model_options",
    "dataset", "data_dir", "dataset_options", "batch_size", "eval_batch_size",
    "prefetch", "worker_count",
    "method", "momentum", "weight_decay", "weight_decay_on_1d", "delta",
    "dampen_weight", "track_momentum", "track_threshold",
    "lars_trust_coefficient", "bop_threshold", "bop_gamma", "recu_tau_min",
    "recu_tau_max",
    "learning_rate", "num_epochs", "num_train_steps", "warmup_epochs",
    "lr_schedule_granularity", "cosine_lr_offset",
    "seed", "half_precision", "cpu_fast_path", "log_every_steps",
    "flip_stats_every_steps",
    "checkpoint_every_steps", "keep_checkpoints", "async_checkpointing",
    "eval_every_epochs", "eval_only", "eval_checkpoint", "progress_bar",
})

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
# The run's config as JSON, written at the start of training: what
# `ovsw_jax.export` rebuilds the model from.
CONFIG_FILE = "config.json"


# ----------------------------------------------------------------------------
# Config validation
# ----------------------------------------------------------------------------


def _as_dict(options: Any) -> dict[str, Any]:
  if options is None:
    return {}
  if isinstance(options, ml_collections.ConfigDict):
    return options.to_dict()
  return dict(options)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks a config's keys against `CONFIG_KEYS` and its values.

  Args:
    config: a full config, e.g. from configs/default.py.

  Raises:
    ValueError: naming the unknown or missing keys (with the valid ones), or
      the bad value and what would be valid.
  """
  keys = set(config.keys())
  valid = ", ".join(sorted(CONFIG_KEYS))
  unknown = sorted(keys - CONFIG_KEYS)
  if unknown:
    raise ValueError(
        f"unknown config key{'s' if len(unknown) > 1 else ''} "
        f"{', '.join(repr(k) for k in unknown)}; valid keys: {valid}")
  missing = sorted(CONFIG_KEYS - keys)
  if missing:
    raise ValueError(
        f"config is missing key(s) {missing}: start from "
        "configs/default.py's get_config(), which sets every field")

  def check(ok: bool, key: str, expected: str) -> None:
    if not ok:
      raise ValueError(f"config.{key}={config[key]!r}: expected {expected}")

  def positive_int(key, allow=()):
    v = config[key]
    check(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and
          (v > 0 or v in allow), key,
          "a positive int" + (f" or one of {list(allow)}" if allow else ""))

  positive_int("batch_size")
  positive_int("eval_batch_size", allow=(-1,))
  positive_int("num_train_steps", allow=(-1,))
  positive_int("log_every_steps")
  positive_int("flip_stats_every_steps", allow=(-1, 0))
  positive_int("checkpoint_every_steps", allow=(-1, 0))
  positive_int("keep_checkpoints")
  check(config.num_train_steps > 0 or config.num_epochs > 0, "num_epochs",
        "> 0 (or set num_train_steps)")
  check(config.warmup_epochs >= 0, "warmup_epochs", ">= 0")
  check(config.eval_every_epochs >= 0, "eval_every_epochs",
        ">= 0 (0: evaluate only at the end)")
  check(config.learning_rate > 0, "learning_rate", "> 0")
  check(config.weight_decay >= 0, "weight_decay", ">= 0")
  check(0 <= config.momentum < 1, "momentum", "in [0, 1)")
  check(config.lr_schedule_granularity in ("epoch", "step"),
        "lr_schedule_granularity", "'epoch' or 'step'")
  check(config.eval_checkpoint in ("latest", "best"), "eval_checkpoint",
        "'latest' or 'best'")
  check(config.lars_trust_coefficient > 0, "lars_trust_coefficient", "> 0")
  check(config.bop_threshold >= 0, "bop_threshold", ">= 0")
  check(0 < config.bop_gamma <= 1, "bop_gamma", "in (0, 1]")
  check(0.5 < config.recu_tau_min <= 1, "recu_tau_min",
        "in (0.5, 1] (ReCU: 0.85)")
  check(config.recu_tau_min <= config.recu_tau_max <= 1, "recu_tau_max",
        f"in [recu_tau_min={config.recu_tau_min}, 1] (ReCU: 0.99)")
  method_parts(config.method)  # Raises on unknown parts.


# ----------------------------------------------------------------------------
# Learning rate
# ----------------------------------------------------------------------------


def total_train_steps(config: ml_collections.ConfigDict,
                      steps_per_epoch: int) -> int:
  """``num_train_steps`` if set, else ``num_epochs * steps_per_epoch``."""
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(round(config.num_epochs * steps_per_epoch))


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> optax.Schedule:
  """The reference's schedule: linear warmup, then cosine (SPEC section 7).

  With ``W = warmup_epochs``, ``E`` the number of epochs (``num_train_steps /
  steps_per_epoch`` when num_train_steps is set), ``lr = learning_rate`` and
  ``c = cosine_lr_offset`` (1e-5):

  * ``lr_schedule_granularity='epoch'`` (the reference sets the LR once per
    epoch; ``e = step // steps_per_epoch``)::

      e <  W:  lr * (e + 1) / W
      e >= W:  0.5 * (1 + cos(pi * (e - W) / (E - W))) * lr + c

  * ``'step'``: the same two phases per step, with ``s = step`` and
    ``S = steps_per_epoch``: ``lr * (s + 1) / (W * S)`` during warmup (lr at
    its last step), then ``0.5 * (1 + cos(pi * (s - W*S) / ((E - W) * S))) *
    lr + c``.

  Joined with `optax.join_schedules` at step ``W * steps_per_epoch``.

  Args:
    config: reads learning_rate, warmup_epochs, num_epochs, num_train_steps,
      lr_schedule_granularity, cosine_lr_offset.
    steps_per_epoch: optimizer steps per epoch.

  Returns:
    A schedule: step count (int, traceable) -> learning rate (float32).
  """
  spe = int(steps_per_epoch)
  if spe < 1:
    raise ValueError(f"steps_per_epoch={steps_per_epoch} must be >= 1")
  lr = float(config.learning_rate)
  offset = float(config.cosine_lr_offset)
  warmup = int(config.warmup_epochs)
  epochs = total_train_steps(config, spe) / spe
  # A run no longer than the warmup never reaches the cosine phase; any
  # positive length keeps its (unused) formula finite.
  cosine_epochs = max(epochs - warmup, 1.0 / spe)
  if config.lr_schedule_granularity == "epoch":
    unit = lambda step: jnp.floor_divide(step, spe).astype(jnp.float32)
    warmup_len, cosine_len = float(warmup), float(cosine_epochs)
  else:
    unit = lambda step: jnp.asarray(step, jnp.float32)
    warmup_len, cosine_len = float(warmup * spe), float(cosine_epochs * spe)

  def warmup_fn(step):
    return lr * (unit(step) + 1.0) / warmup_len

  def cosine_fn(step):
    # 0.5 * (1 + cos(x)) written as cos(x / 2)**2, which keeps float32
    # precision near the end, where 1 + cos(x) cancels.
    return jnp.square(jnp.cos(0.5 * jnp.pi * unit(step) / cosine_len)) * lr \
        + offset

  if warmup == 0:
    return cosine_fn
  return optax.join_schedules([warmup_fn, cosine_fn], [warmup * spe])


# ----------------------------------------------------------------------------
# Optimizer: a registry of method parts
# ----------------------------------------------------------------------------

# A 'gradient' or 'optimizer' part builds transformations from the config
# and the LR schedule.
PartBuilder = Callable[[ml_collections.ConfigDict, optax.Schedule],
                       Sequence[optax.GradientTransformation]]

# (model_state, epoch, num_epochs) -> (model_state, metrics); see ModelChange.
ModelStateUpdate = Callable[[dict[str, Any], jax.Array, float],
                            tuple[dict[str, Any], dict[str, jax.Array]]]


class ModelChange(NamedTuple):
  """What a 'model' part (e.g. 'recu') changes in the network.

  Attributes:
    options: keyword arguments for `ovsw_jax.models.get_model`, e.g.
      ``{'conv': ReCUConv}``; a key also set in ``config.model_options`` is
      an error.
    update: None, or ``update(model_state, epoch, num_epochs) ->
      (model_state, metrics)``. ``model_state`` maps the model's variable
      collections other than params and batch_stats (e.g. ReCU's 'recu') to
      their trees; the train step calls ``update`` before the forward pass
      with the 0-based epoch of the step (an int32 array, so the values change
      once per epoch without recompiling) and the run's length in epochs. The
      scalar ``metrics`` join the step's metrics.
  """
  options: Mapping[str, Any]
  update: Optional[ModelStateUpdate] = None


class MethodPart(NamedTuple):
  """One registered piece of a method.

  Attributes:
    stage: 'gradient': transformations applied, in the method's order, to the
      gradient before weight decay (AGS, SAD, LARS's trust ratio, ...);
      'optimizer': replaces the default weight decay + SGD momentum (Bop,
      ...; at most one per method); 'model': changes the network and its
      non-trainable state (ReCU; ``build(config) -> ModelChange``); 'alias':
      expands to other parts (``build`` is unused).
    build: the builder (`PartBuilder`, or for 'model' parts a function of the
      config returning a `ModelChange`).
    expands_to: for aliases, the parts it stands for.
  """
  stage: str
  build: Optional[Callable[..., Any]] = None
  expands_to: tuple[str, ...] = ()


_METHOD_PARTS: dict[str, MethodPart] = {}


def register_method(name: str, stage: str,
                    build: Optional[Callable[..., Any]] = None,
                    expands_to: Sequence[str] = ()) -> None:
  """Registers a method part usable in ``config.method`` ('a+b+...').

  Args:
    name: the part's name (no '+').
    stage: 'gradient', 'optimizer', 'model' or 'alias' (see `MethodPart`).
    build: for 'gradient' and 'optimizer' parts a `PartBuilder`; for 'model'
      parts ``build(config) -> ModelChange``.
    expands_to: for 'alias' parts, the parts it stands for, in order.
  """
  if "+" in name or not name:
    raise ValueError(f"method part name {name!r} must be non-empty without '+'")
  if stage not in ("gradient", "optimizer", "model", "alias"):
    raise ValueError(f"stage={stage!r}: expected 'gradient', 'optimizer', "
                     "'model' or 'alias'")
  if (stage == "alias") != (build is None):
    raise ValueError("aliases take expands_to and no build; other parts a "
                     "build function")
  _METHOD_PARTS[name] = MethodPart(stage, build, tuple(expands_to))


def method_parts(method: str) -> list[str]:
  """The registered, non-alias parts of ``method``, in order.

  Raises:
    ValueError: for an unknown part (listing the known ones), a part given
      twice, or two 'optimizer' parts.
  """
  if not isinstance(method, str) or not method:
    raise ValueError(f"config.method={method!r} must be a non-empty string")
  parts = []

  def expand(name):
    if name not in _METHOD_PARTS:
      raise ValueError(
          f"unknown method part {name!r} in config.method={method!r}; known "
          f"parts: {sorted(_METHOD_PARTS)} (join several with '+')")
    part = _METHOD_PARTS[name]
    if part.stage == "alias":
      for sub in part.expands_to:
        expand(sub)
    elif name in parts:
      raise ValueError(f"config.method={method!r} applies {name!r} twice")
    else:
      parts.append(name)

  for name in method.split("+"):
    expand(name.strip())
  optimizers = [p for p in parts if _METHOD_PARTS[p].stage == "optimizer"]
  if len(optimizers) > 1:
    raise ValueError(f"config.method={method!r} names several optimizers "
                     f"{optimizers}; use at most one")
  return parts


def weight_decay_mask(config: ml_collections.ConfigDict
                      ) -> Optional[Callable[[Any], Any]]:
  """None (decay everything) or a mask that skips 1-D params (ImageNet)."""
  if config.weight_decay_on_1d:
    return None
  return lambda params: jax.tree.map(lambda x: x.ndim > 1, params)


def _sgd(config, learning_rate_fn):
  """Weight decay (masked as configured) then SGD momentum (SPEC section 6)."""
  decay = optax.add_decayed_weights(config.weight_decay)
  mask = weight_decay_mask(config)
  if mask is not None:
    decay = optax.masked(decay, mask)
  return [decay,
          optax.trace(decay=config.momentum, nesterov=False),
          optax.scale_by_learning_rate(learning_rate_fn)]


def _ags(config, learning_rate_fn):
  del learning_rate_fn
  return [optax.masked(transforms.adaptive_gradient_scaling(config.delta),
                       transforms.binary_kernel_mask)]


def _sad(config, learning_rate_fn):
  del learning_rate_fn
  return [optax.masked(
      transforms.silence_awareness_decay(config.dampen_weight,
                                         config.track_momentum,
                                         config.track_threshold),
      transforms.binary_kernel_mask)]


def _lars(config, learning_rate_fn):
  """LARS's layer-wise trust ratio on binary kernels, where AGS would sit.

  ``g <- lars_trust_coefficient * ||w|| / ||g|| * g`` per binary kernel (the
  whole layer; a zero norm leaves g unchanged), before weight decay and SGD
  momentum, so the scaled gradient accumulates in the momentum as AGS's does.
  Unlike AGS (a per-channel floor on ``||g|| / ||w||``), the ratio is set, up
  or down, whatever the gradient's magnitude (OvSW paper, appendix D).
  """
  del learning_rate_fn
  return [optax.masked(
      optax.scale_by_trust_ratio(
          trust_coefficient=config.lars_trust_coefficient),
      transforms.binary_kernel_mask)]


def _binary_or_float(params: Any) -> Any:
  """`optax.partition` labels: 'binary' on binary latent kernels."""
  return jax.tree.map(lambda b: "binary" if b else "float",
                      transforms.binary_kernel_mask(params))


def _bop(config, learning_rate_fn):
  """Bop on the binary kernels; weight decay + SGD momentum on the rest.

  The float params keep the recipe's optimizer (not the Bop paper's Adam),
  so that 'bop' differs from 'vanilla' only in how binary weights move. Bop
  flips signs and never changes ``|w|``; it gets no weight decay.
  """
  return [optax.partition(
      {"binary": bop.bop(config.bop_threshold, config.bop_gamma),
       "float": optax.chain(*_sgd(config, learning_rate_fn))},
      _binary_or_float)]


def _recu(config):
  """ReCU convs (`ovsw_jax.recu.ReCUConv`) with tau set once per epoch."""

  def update(model_state, epoch, num_epochs):
    tau = recu.recu_tau(epoch, num_epochs, config.recu_tau_min,
                        config.recu_tau_max)
    taus = recu.set_tau(model_state[recu.TAU_COLLECTION], tau)
    return {**model_state, recu.TAU_COLLECTION: taus}, {"recu_tau": tau}

  conv = functools.partial(recu.ReCUConv, tau_init=config.recu_tau_min)
  return ModelChange(options={"conv": conv}, update=update)


register_method("vanilla", "alias", expands_to=())
register_method("sgd", "optimizer", _sgd)
register_method("ags", "gradient", _ags)
register_method("sad", "gradient", _sad)
# The same chain as transforms.ovsw (AGS -> SAD -> weight decay -> SGD).
register_method("ovsw", "alias", expands_to=("ags", "sad"))
register_method("lars", "gradient", _lars)
register_method("bop", "optimizer", _bop)
register_method("recu", "model", _recu)


def create_optimizer(config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule
                     ) -> optax.GradientTransformation:
  """The method's optimizer: its gradient parts, then its optimizer part.

  ``config.method`` is '+'-joined registered parts. Gradient parts (AGS, SAD,
  LARS's trust ratio, restricted to binary latent kernels) come first in the
  given order; then the optimizer part, by default weight decay + SGD
  momentum ('sgd'). So 'vanilla' is wd + SGD, 'ags' is AGS + wd + SGD, 'sad'
  is SAD + wd + SGD, 'ovsw' ('ags+sad') is `ovsw_jax.transforms.ovsw`,
  'lars+sad' is trust ratio + SAD + wd + SGD and 'bop' is Bop on binary
  kernels with wd + SGD on the rest. 'model' parts ('recu') add nothing
  here: 'recu+ovsw' has the optimizer of 'ovsw' (see `create_model`).

  Args:
    config: reads method, weight_decay, weight_decay_on_1d, momentum, delta,
      dampen_weight, track_momentum, track_threshold, lars_trust_coefficient,
      bop_threshold, bop_gamma.
    learning_rate_fn: the schedule.

  Returns:
    One flat `optax.chain`.
  """
  parts = method_parts(config.method)
  gradient = [p for p in parts if _METHOD_PARTS[p].stage == "gradient"]
  optimizer = [p for p in parts if _METHOD_PARTS[p].stage == "optimizer"]
  chain = []
  for name in gradient + (optimizer or ["sgd"]):
    chain.extend(_METHOD_PARTS[name].build(config, learning_rate_fn))
  return optax.chain(*chain)


# ----------------------------------------------------------------------------
# State and steps
# ----------------------------------------------------------------------------


# Model-state schedule of a run: (model_state, step) -> (model_state, metrics).
ModelStateFn = Callable[[dict[str, Any], jax.Array],
                        tuple[dict[str, Any], dict[str, jax.Array]]]


class TrainState(train_state.TrainState):
  """Flax's TrainState plus BatchNorm statistics, other model variables and
  a PRNG key.

  Attributes:
    batch_stats: the ``batch_stats`` collection.
    model_state: the model's other non-trainable collections, e.g.
      ``{'recu': ...}`` (ReCU's tau); ``{}`` for most models. Passed to every
      ``apply``, never mutated by it.
    rng: the run's PRNG key.
    model_state_fn: static; None or the method's schedule of
      ``model_state`` (see `create_model_state_fn`), applied by `train_step`
      before each forward pass.
  """
  batch_stats: Any = None
  model_state: Any = None
  rng: jax.Array = None
  model_state_fn: Optional[ModelStateFn] = struct.field(
      pytree_node=False, default=None)


def checkpoint_items(state: TrainState) -> dict[str, Any]:
  """The arrays of a state that a checkpoint holds (``model_state`` only
  when the model has one)."""
  items = {"params": state.params, "batch_stats": state.batch_stats,
           "opt_state": state.opt_state, "step": state.step, "rng": state.rng}
  if state.model_state:
    items["model_state"] = state.model_state
  return items


def model_changes(config: ml_collections.ConfigDict
                  ) -> list[tuple[str, ModelChange]]:
  """The method's 'model' parts as (name, `ModelChange`), in order."""
  return [(name, _METHOD_PARTS[name].build(config))
          for name in method_parts(config.method)
          if _METHOD_PARTS[name].stage == "model"]


def create_model(config: ml_collections.ConfigDict, num_classes: int):
  """The config's model; bfloat16 compute with half_precision.

  ``config.model_options`` plus the options of the method's 'model' parts
  (e.g. 'recu': ``conv=ReCUConv``).

  Raises:
    ValueError: a part sets an option that model_options (or another part)
      sets too.
  """
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  options = _as_dict(config.model_options)
  for name, change in model_changes(config):
    clash = sorted(set(change.options) & set(options))
    if clash:
      raise ValueError(
          f"config.method={config.method!r}: its part {name!r} sets the model "
          f"option(s) {clash}, which config.model_options (or another part) "
          "sets too; remove them from config.model_options")
    options.update(change.options)
  if _narrow_binary_operands(config, options):
    options["binary_operand_dtype"] = jnp.bfloat16
  return models.get_model(config.model, num_classes, dtype=dtype, **options)


def _narrow_binary_operands(config: ml_collections.ConfigDict,
                            options: Mapping[str, Any]) -> bool:
  """Whether the CPU fast path reads the binary convs' operands in bfloat16.

  Only where it is exact and measured faster: on the CPU backend, with
  `layers.BinaryConv` (or a subclass) and the built-in estimators, whose
  forward is exactly +-1; never over an explicit ``binary_operand_dtype``.
  """
  # .get: configs saved by an older ovsw_jax (e.g. a workdir's config.json
  # being exported) lack the key.
  if not parallel.uses_cpu_fast_path(jax.default_backend(),
                                     config.get("cpu_fast_path", True)):
    return False
  if "binary_operand_dtype" in options:
    return False
  conv = options.get("conv", layers.BinaryConv)
  while isinstance(conv, functools.partial):
    conv = conv.func
  if not (isinstance(conv, type) and issubclass(conv, layers.BinaryConv)):
    return False
  return all(options.get(k) is None or options.get(k) in ops.ESTIMATORS
             for k in ("activation_estimator", "weight_estimator"))


def create_model_state_fn(config: ml_collections.ConfigDict,
                          steps_per_epoch: int) -> Optional[ModelStateFn]:
  """The method's schedule of non-trainable model variables, or None.

  Chains the ``update`` of every 'model' part (see `ModelChange`). The
  returned function maps ``(model_state, step)`` -- ``step`` the number of
  steps already taken, as in the LR schedule -- to the model state for the
  next step and its metrics, with ``epoch = step // steps_per_epoch`` and
  ``num_epochs = total steps / steps_per_epoch``. Being a function of the
  step, it makes resumed runs exact; the state is checkpointed as well.
  """
  updates = [c.update for _, c in model_changes(config)
             if c.update is not None]
  if not updates:
    return None
  spe = int(steps_per_epoch)
  num_epochs = total_train_steps(config, spe) / spe

  def model_state_fn(model_state, step):
    epoch = jnp.floor_divide(step, spe)
    metrics = {}
    for update in updates:
      model_state, values = update(model_state, epoch, num_epochs)
      metrics.update(values)
    return model_state, metrics

  return model_state_fn


def create_train_state(model, tx: optax.GradientTransformation,
                       image_shape: Sequence[int], seed: int,
                       mesh: jax.sharding.Mesh,
                       model_state_fn: Optional[ModelStateFn] = None
                       ) -> TrainState:
  """Initialises the model and optimizer, replicated over ``mesh``.

  Every host computes the same values from ``seed``. Params and optimizer
  state are float32 whatever the model's compute dtype. ``model_state_fn``
  (`create_model_state_fn`; the experiment's) schedules the model's
  non-trainable variables, e.g. ReCU's tau.
  """
  init = _init_fn(model, tx, image_shape, seed, model_state_fn)
  return jax.jit(init, out_shardings=parallel.replicated(mesh))()


def _init_fn(model, tx, image_shape, seed, model_state_fn=None):
  def init():
    key = jax.random.PRNGKey(seed)
    params_key, state_key = jax.random.split(key)
    variables = model.init(params_key, jnp.zeros((1, *image_shape),
                                                 jnp.float32), train=False)
    model_state = {k: v for k, v in variables.items()
                   if k not in ("params", "batch_stats")}
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        model_state=model_state, rng=state_key,
        model_state_fn=model_state_fn)
  return init


def abstract_train_state(model, tx, image_shape, seed, mesh,
                         model_state_fn: Optional[ModelStateFn] = None
                         ) -> TrainState:
  """`create_train_state`'s structure, as ShapeDtypeStructs with shardings."""
  shapes = jax.eval_shape(_init_fn(model, tx, image_shape, seed,
                                   model_state_fn))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      shapes)


def _topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is among the k largest logits (per example)."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def train_step(state: TrainState, batch: Mapping[str, jax.Array],
               learning_rate_fn: optax.Schedule
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a (global) batch.

  Under jit over the data mesh the model sees the whole global batch, so
  BatchNorm statistics and the loss are global-batch means and the gradient
  is averaged over all devices before the optimizer (AGS) sees it.

  Returns:
    The new state and scalar metrics: loss, top1, top5, lr (of this step),
    from the optimizer state ags_ratio and silent_fraction when the method
    has them, and those of ``state.model_state_fn`` (recu_tau with 'recu').
  """
  step_key = jax.random.fold_in(state.rng, state.step)
  model_state, model_metrics = state.model_state or {}, {}
  if state.model_state_fn is not None:
    model_state, model_metrics = state.model_state_fn(model_state, state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats, **model_state},
        batch["image"], train=True, mutable=["batch_stats"],
        rngs={"dropout": step_key})
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["label"]).mean()
    return loss, (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if state.model_state_fn is not None:
    new_state = new_state.replace(model_state=model_state)
  metrics = {
      "loss": loss,
      "top1": _topk_correct(logits, batch["label"], 1).mean(),
      "top5": _topk_correct(logits, batch["label"], 5).mean(),
      "lr": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
      **{k: jnp.asarray(v, jnp.float32) for k, v in model_metrics.items()},
  }
  # Only the scalar summaries; per-layer values are read at log time.
  for fn, key in ((transforms.ags_diagnostics, "ags_ratio"),
                  (transforms.sad_diagnostics, "silent_fraction")):
    values = fn(new_state.opt_state)
    if key in values:
      metrics[key] = values[key]
  return new_state, metrics


def eval_step(state: TrainState, batch: Mapping[str, jax.Array],
              totals: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Adds a (padded) eval batch's sums to ``totals``; padding has mask 0."""
  logits = state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats,
       **(state.model_state or {})},
      batch["image"], train=False).astype(jnp.float32)
  mask = batch["mask"].astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  sums = {
      "loss": jnp.sum(loss * mask),
      "top1": jnp.sum(_topk_correct(logits, batch["label"], 1) * mask),
      "top5": jnp.sum(_topk_correct(logits, batch["label"], 5) * mask),
      "count": jnp.sum(mask),
  }
  return jax.tree.map(jnp.add, totals, sums)


def jit_train_step(learning_rate_fn: optax.Schedule, mesh: jax.sharding.Mesh,
                   cpu_fast_path: bool = True
                   ) -> Callable[[TrainState, Mapping[str, jax.Array]],
                                 tuple[TrainState, dict[str, jax.Array]]]:
  """`train_step` jitted over ``mesh``: batch split along 'data', state
  replicated (and donated: the old state's buffers are reused).

  On a CPU mesh, ``cpu_fast_path`` compiles with
  `parallel.CPU_COMPILER_OPTIONS` (see `parallel.compiler_options`); other
  backends always use XLA's defaults.
  """
  # jit with NamedShardings, not pmap (in maintenance mode): the step sees
  # the global batch and XLA inserts the all-reduces, so BatchNorm statistics
  # and the gradient AGS/SAD see are global-batch means with no axis_name in
  # the model, and the same code runs on 1 CPU, 8 GPUs or a multi-host pod.
  replicated = parallel.replicated(mesh)
  return jax.jit(
      functools.partial(train_step, learning_rate_fn=learning_rate_fn),
      in_shardings=(replicated, parallel.data_sharding(mesh)),
      out_shardings=(replicated, replicated),
      donate_argnums=(0,),
      compiler_options=parallel.compiler_options(mesh, cpu_fast_path))


def jit_eval_step(mesh: jax.sharding.Mesh, cpu_fast_path: bool = True
                  ) -> Callable[..., dict[str, jax.Array]]:
  """`eval_step` jitted over ``mesh`` (batch split, state and totals
  replicated); ``cpu_fast_path`` as in `jit_train_step`."""
  replicated = parallel.replicated(mesh)
  return jax.jit(
      eval_step,
      in_shardings=(replicated, parallel.data_sharding(mesh), replicated),
      out_shardings=replicated,
      compiler_options=parallel.compiler_options(mesh, cpu_fast_path))


def _zero_eval_totals() -> dict[str, jax.Array]:
  return {k: jnp.zeros([], jnp.float32)
          for k in ("loss", "top1", "top5", "count")}


def evaluate(eval_fn: Callable[..., Any], state: TrainState,
             batches: Iterable[Mapping[str, np.ndarray]],
             mesh: jax.sharding.Mesh) -> dict[str, float]:
  """One pass over eval batches (this host's rows of each global batch).

  Returns:
    eval_loss, eval_top1, eval_top5 (means over the unpadded examples) and
    eval_count (how many examples were counted).
  """
  totals = jax.device_put(_zero_eval_totals(), parallel.replicated(mesh))
  for batch in batches:
    totals = eval_fn(state, parallel.shard_batch(batch, mesh), totals)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  if count == 0:
    raise ValueError("the eval split yielded no examples")
  return {"eval_loss": float(totals["loss"]) / count,
          "eval_top1": float(totals["top1"]) / count,
          "eval_top5": float(totals["top5"]) / count,
          "eval_count": int(round(count))}


def _layer_diagnostics(opt_state) -> dict[str, jax.Array]:
  """Per-layer AGS ratios and silent fractions as of the last step.

  The overall values are left out: the log records the mean of the per-step
  values over the log window instead.
  """
  values = {**transforms.ags_diagnostics(opt_state),
            **transforms.sad_diagnostics(opt_state)}
  return {k: v for k, v in values.items() if "/" in k}


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


# ----------------------------------------------------------------------------
# Metrics output
# ----------------------------------------------------------------------------


def _to_json_value(v: Any) -> Any:
  if isinstance(v, (str, bool, int)) or v is None:
    return v
  if isinstance(v, (np.integer,)):
    return int(v)
  a = np.asarray(v)
  if a.dtype.kind in "iu":
    return int(a)
  # The float32 value as a Python float, unrounded.
  return float(a)


class MetricsWriter:
  """Writes metric records to workdir/metrics.jsonl and TensorBoard.

  One JSON object per line, always with ``step``. Training records (every
  log_every_steps and at each epoch's end) hold ``epoch``, ``train_loss``,
  ``train_top1``, ``train_top5``, ``ags_ratio`` and ``silent_fraction``
  (means over the steps since the previous record), ``lr`` and, with ReCU,
  ``recu_tau`` (of the last step), ``images_per_sec`` (evaluation and
  checkpointing excluded), ``ags_ratio/<param>`` and ``silent_fraction/<param>`` per binary kernel
  (as of the last step) and, every flip_stats_every_steps, ``flip_rate``
  and ``flip_rate/<param>``: the fraction of binary weights whose sign
  changed since the previous measurement. Evaluation adds ``eval_loss``,
  ``eval_top1``, ``eval_top5`` and ``eval_count`` (images counted). Floats
  are the float32 values as Python floats, unrounded.

  Only process 0 writes. TensorBoard goes through `clu.metric_writers`, which
  needs TensorFlow; without it only the JSONL file is written (and a line in
  the log says so).
  """

  def __init__(self, workdir: str, enabled: bool = True,
               keep_until_step: Optional[int] = None):
    """Opens workdir/metrics.jsonl for appending.

    Args:
      workdir: the run's directory.
      enabled: False on processes other than 0.
      keep_until_step: drop the records of later steps first: a run resumed
        from a checkpoint at this step redoes them.
    """
    self._enabled = enabled
    self._file = None
    self._summary = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    if keep_until_step is not None and os.path.exists(path):
      records = [r for r in read_metrics(workdir)
                 if r["step"] <= keep_until_step]
      with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
      os.replace(path + ".tmp", path)
    self._file = open(path, "a")
    try:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self._summary = metric_writers.create_default_writer(
          os.path.join(workdir, "tensorboard"), asynchronous=False)
    except ImportError as e:
      logging.info("TensorBoard summaries off (clu.metric_writers: %s); "
                   "metrics go to %s only.", e, METRICS_FILE)

  def write(self, step: int, values: Mapping[str, Any]) -> None:
    if not self._enabled:
      return
    record = {"step": int(step)}
    record.update({k: _to_json_value(v) for k, v in values.items()})
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._summary is not None:
      scalars = {k: v for k, v in record.items()
                 if k != "step" and isinstance(v, (int, float))
                 and not isinstance(v, bool)}
      self._summary.write_scalars(int(step), scalars)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._summary is not None:
      self._summary.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of workdir/metrics.jsonl, in order.

  A last line cut short (the run was killed while writing it) is skipped.
  """
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    lines = [line for line in f if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i < len(lines) - 1:
        raise
  return records


# ----------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------


class _Pending:
  """Per-step device metrics kept until the next log, fetched in one go."""

  def __init__(self):
    self.steps: list[int] = []
    self.metrics: list[dict[str, jax.Array]] = []
    self.extra: dict[str, jax.Array] = {}

  def fetch(self) -> tuple[list[int], dict[str, np.ndarray], dict[str, Any]]:
    steps, metrics, extra = self.steps, self.metrics, self.extra
    self.steps, self.metrics, self.extra = [], [], {}
    metrics, extra = jax.device_get((metrics, extra))
    stacked = {k: np.stack([m[k] for m in metrics]) for k in metrics[0]
               } if metrics else {}
    return steps, stacked, extra


def _summary_line(record: Mapping[str, Any]) -> str:
  """'loss 0.53 top-1 0.83 lr 0.1 silent 0.91 flips 0.012 604 img/s'."""
  parts = [f"loss {float(record['train_loss']):.4f}",
           f"top-1 {float(record['train_top1']):.4f}",
           f"lr {float(record['lr']):.4g}"]
  if "silent_fraction" in record:
    parts.append(f"silent {float(record['silent_fraction']):.4f}")
  if "flip_rate" in record:
    parts.append(f"flips {float(record['flip_rate']):.4g}")
  parts.append(f"{record['images_per_sec']:.1f} img/s")
  return " ".join(parts)


def _layer_table(record: Mapping[str, Any]) -> str:
  """Per binary kernel: silent fraction and last flip rate, one per line."""
  layers = sorted({k.split("/", 1)[1] for k in record
                   if k.startswith(("silent_fraction/", "flip_rate/"))})
  lines = []
  for layer in layers:
    cells = [f"{name} {float(record[f'{key}/{layer}']):.4f}"
             for key, name in (("silent_fraction", "silent"),
                               ("flip_rate", "flip rate"))
             if f"{key}/{layer}" in record]
    lines.append(f"  {layer}: " + ", ".join(cells))
  return "\n".join(lines)


def _check_losses(steps: list[int], losses: np.ndarray, manager) -> None:
  """Raises FloatingPointError at the first non-finite loss."""
  bad = np.flatnonzero(~np.isfinite(losses))
  if not len(bad):
    return
  manager.wait_until_finished()
  first = steps[bad[0]]
  kept = manager.latest_step()
  raise FloatingPointError(
      f"training loss is {losses[bad[0]]} at step {first} (the first "
      f"non-finite step since step {steps[0] - 1}); stopping. "
      + (f"The last good checkpoint (step {kept}) in {manager.directory} is "
         "kept" if kept is not None else "No checkpoint was saved yet") +
      ". Lower config.learning_rate, or check the data.")


def _steps_between(every: int, start: int, stop: int) -> set[int]:
  return set(range((start // every + 1) * every, stop + 1, every))


class Experiment(NamedTuple):
  """What a config builds before any array exists.

  Attributes:
    info: the dataset's `DatasetInfo`.
    steps_per_epoch: optimizer steps per epoch.
    total_steps: the run's last step.
    learning_rate_fn: the schedule.
    model: the Flax module.
    tx: the optimizer.
    model_state_fn: the schedule of the model's non-trainable variables
      (ReCU's tau), or None; pass it to `create_train_state`.
  """
  info: data.DatasetInfo
  steps_per_epoch: int
  total_steps: int
  learning_rate_fn: optax.Schedule
  model: Any
  tx: optax.GradientTransformation
  model_state_fn: Optional[ModelStateFn] = None


def create_experiment(config: ml_collections.ConfigDict) -> Experiment:
  """Validates the config and builds the dataset info, model and optimizer.

  Raises:
    ValueError: a bad config.
    ovsw_jax.data.DataNotFoundError: the dataset's files are missing.
  """
  validate_config(config)
  info = data.get_dataset_info(config.dataset, config.data_dir,
                               **_as_dict(config.dataset_options))
  steps_per_epoch = data.steps_per_epoch(info, config.batch_size)
  learning_rate_fn = create_learning_rate_fn(config, steps_per_epoch)
  return Experiment(
      info=info, steps_per_epoch=steps_per_epoch,
      total_steps=total_train_steps(config, steps_per_epoch),
      learning_rate_fn=learning_rate_fn,
      model=create_model(config, info.num_classes),
      tx=create_optimizer(config, learning_rate_fn),
      model_state_fn=create_model_state_fn(config, steps_per_epoch))


def write_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes ``workdir/config.json`` (atomically); returns its path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=1, sort_keys=True))
  os.replace(tmp, path)
  return path


def _checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def load_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                    which: str | int = "latest", *,
                    mesh: Optional[jax.sharding.Mesh] = None
                    ) -> tuple[TrainState, int]:
  """Loads a training checkpoint of ``workdir`` (e.g. for evaluation, export).

  Args:
    config: the config the run was trained with.
    workdir: the run's workdir.
    which: 'latest', 'best' (by eval top-1) or a step number. An unreadable
      checkpoint falls back to the one before it, with a warning.
    mesh: where to place the arrays (replicated); default: all devices.

  Returns:
    The `TrainState` (params, batch_stats, opt_state, step, rng) and its step.

  Raises:
    FileNotFoundError: workdir holds no checkpoint.
  """
  experiment = create_experiment(config)
  mesh = mesh if mesh is not None else parallel.create_mesh()
  manager = checkpointing.create_manager(
      _checkpoint_dir(workdir), keep=config.keep_checkpoints, read_only=True)
  try:
    return _restore(manager, experiment, config, mesh, which)
  finally:
    manager.close()


def _restore(manager, experiment, config, mesh, which):
  if which == "best":
    step = manager.best_step()
  elif which == "latest":
    step = manager.latest_step()
  else:
    step = int(which)
  if step is None:
    raise FileNotFoundError(
        f"no checkpoint in {manager.directory}; train first (same --workdir, "
        "eval_only=False)")
  abstract = abstract_train_state(experiment.model, experiment.tx,
                                  experiment.info.image_shape, config.seed,
                                  mesh, experiment.model_state_fn)
  items, _, step = checkpointing.restore(
      manager, checkpoint_items(abstract), step=step,
      set_aside_unreadable=False)
  return abstract.replace(**items), step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       mesh: Optional[jax.sharding.Mesh] = None
                       ) -> dict[str, Any]:
  """Trains (resuming from workdir's checkpoints) and evaluates.

  With ``config.eval_only`` it only evaluates the latest (or, with
  ``eval_checkpoint='best'``, the best) checkpoint and appends the result to
  metrics.jsonl.

  Args:
    config: a full config (see configs/default.py).
    workdir: where checkpoints, metrics.jsonl and TensorBoard files go. Run
      the same command again to resume from the latest checkpoint.
    mesh: the data-parallel mesh; default: all devices of all processes.

  Returns:
    The final metrics: step, eval_loss, eval_top1, eval_top5, eval_count;
    for a training run also train_loss (last log window), wall_time_s and
    images_per_sec.

  Raises:
    ValueError: a bad config or a batch size the devices cannot split.
    FloatingPointError: a non-finite loss (naming the first bad step) or
      non-finite params at a checkpoint; the last good checkpoint is kept.
    ovsw_jax.data.DataNotFoundError: the dataset's files are missing.
    FileNotFoundError: eval_only without a checkpoint.
  """
  start_time = time.time()
  validate_config(config)
  mesh = mesh if mesh is not None else parallel.create_mesh()
  eval_batch_size = (config.eval_batch_size if config.eval_batch_size > 0
                     else config.batch_size)
  parallel.check_batch_size(config.batch_size, mesh, "batch_size")
  parallel.check_batch_size(eval_batch_size, mesh,
                            "eval_batch_size" if config.eval_batch_size > 0
                            else "batch_size")
  experiment = create_experiment(config)

  p_train_step = jit_train_step(experiment.learning_rate_fn, mesh,
                                config.cpu_fast_path)
  p_eval_step = jit_eval_step(mesh, config.cpu_fast_path)

  def eval_batches():
    return data.create_eval_iterator(
        config.dataset, config.data_dir, eval_batch_size,
        worker_count=config.worker_count, prefetch=config.prefetch,
        **_as_dict(config.dataset_options))

  def run_eval(state):
    return evaluate(p_eval_step, state, eval_batches(), mesh)

  manager = checkpointing.create_manager(
      _checkpoint_dir(workdir), keep=config.keep_checkpoints,
      async_save=config.async_checkpointing, read_only=bool(config.eval_only))
  writer = None
  try:
    if config.eval_only:
      writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
      state, step = _restore(manager, experiment, config, mesh,
                             config.eval_checkpoint)
      result = {"epoch": step / experiment.steps_per_epoch,
                "eval_checkpoint": config.eval_checkpoint, **run_eval(state)}
      writer.write(step, result)
      logging.info("Evaluated the %s checkpoint (step %d): top-1 %.4f, top-5 "
                   "%.4f, loss %.4f on %d images.", config.eval_checkpoint,
                   step, result["eval_top1"], result["eval_top5"],
                   result["eval_loss"], result["eval_count"])
      return {"step": step, **result}

    abstract = abstract_train_state(experiment.model, experiment.tx,
                                    experiment.info.image_shape, config.seed,
                                    mesh, experiment.model_state_fn)
    restored = checkpointing.restore(manager, checkpoint_items(abstract))
    if restored is None:
      state = create_train_state(experiment.model, experiment.tx,
                                 experiment.info.image_shape, config.seed,
                                 mesh, experiment.model_state_fn)
      step = 0
    else:
      items, meta, step = restored
      state = abstract.replace(**items)
      logging.info("Resuming from the checkpoint at step %d (data position "
                   "%d).", step, meta["data_step"])
    if jax.process_index() == 0:
      write_config(config, workdir)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0,
                           keep_until_step=step)
    return _train_loop(config, experiment, state, manager, p_train_step,
                       run_eval, mesh, writer, start_time)
  finally:
    manager.wait_until_finished()
    manager.close()
    if writer is not None:
      writer.close()


def _train_loop(config, experiment, state, manager, p_train_step, run_eval,
                mesh, writer, start_time) -> dict[str, Any]:
  """Runs steps ``state.step + 1 .. total_steps`` with logs, evals, saves."""
  steps_per_epoch = experiment.steps_per_epoch
  total_steps = experiment.total_steps
  is_chief = jax.process_index() == 0
  first_step = int(jax.device_get(state.step))
  flip_every = (config.log_every_steps if config.flip_stats_every_steps == -1
                else config.flip_stats_every_steps)
  checkpoint_every = (steps_per_epoch if config.checkpoint_every_steps == -1
                      else config.checkpoint_every_steps)
  eval_every = int(round(config.eval_every_epochs * steps_per_epoch))

  log_steps = _steps_between(config.log_every_steps, first_step, total_steps)
  epoch_ends = _steps_between(steps_per_epoch, first_step, total_steps)
  if total_steps > first_step:
    epoch_ends.add(total_steps)
  log_steps |= epoch_ends
  flip_steps = (_steps_between(flip_every, first_step, total_steps)
                if flip_every else set())
  eval_steps = (_steps_between(eval_every, first_step, total_steps)
                if eval_every else set())
  save_steps = (_steps_between(checkpoint_every, first_step, total_steps)
                if checkpoint_every else set())
  if total_steps > first_step:
    for steps in (log_steps, eval_steps, save_steps):
      steps.add(total_steps)
    if flip_every:
      flip_steps.add(total_steps)
  # Saving needs the losses checked first: every save step is a log step.
  log_steps |= save_steps | eval_steps

  copy_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p))
  flip_fn = jax.jit(diagnostics.flip_rate)
  diag_fn = jax.jit(_layer_diagnostics)
  finite_fn = jax.jit(lambda s: _all_finite((s.params, s.batch_stats)))
  flip_ref = copy_params(state.params) if flip_steps else None

  train_iter = data.create_train_iterator(
      config.dataset, config.data_dir, config.batch_size, config.seed,
      start_step=first_step, worker_count=config.worker_count,
      prefetch=config.prefetch, **_as_dict(config.dataset_options))

  num_epochs = math.ceil(total_steps / steps_per_epoch)
  pending = _Pending()
  last_record: dict[str, Any] = {}
  last_eval: dict[str, Any] = {}
  window_start, window_images, pause = time.time(), 0, 0.0
  run_images, run_time = 0, 0.0
  bar = None
  try:
    for step in range(first_step + 1, total_steps + 1):
      epoch_index = (step - 1) // steps_per_epoch
      if bar is None:
        bar = tqdm.tqdm(
            total=steps_per_epoch, initial=(step - 1) % steps_per_epoch,
            desc=f"epoch {epoch_index + 1}/{num_epochs}",
            unit="step", leave=False,
            disable=not (config.progress_bar and is_chief))
      batch = parallel.shard_batch(next(train_iter), mesh)
      state, metrics = p_train_step(state, batch)
      pending.steps.append(step)
      pending.metrics.append(metrics)
      window_images += config.batch_size
      bar.update(1)

      if step in flip_steps:
        flips = flip_fn(flip_ref, state.params)
        pending.extra.update({
            ("flip_rate" if k == diagnostics.OVERALL else f"flip_rate/{k}"): v
            for k, v in flips.items()})
        flip_ref = copy_params(state.params)

      if step in log_steps:
        pending.extra.update(diag_fn(state.opt_state))
        steps, stacked, extra = pending.fetch()
        _check_losses(steps, stacked["loss"], manager)
        elapsed = time.time() - window_start - pause
        run_images += window_images
        run_time += elapsed
        record = {"epoch": step / steps_per_epoch}
        for k, v in stacked.items():
          # lr, recu_tau: this step's; the rest: float32 means over the
          # window.
          name = f"train_{k}" if k in ("loss", "top1", "top5") else k
          record[name] = v[-1] if k in ("lr", "recu_tau") else np.float32(
              np.mean(v, dtype=np.float64))
        record["images_per_sec"] = window_images / max(elapsed, 1e-9)
        record.update(extra)
        last_record = record
        bar.set_postfix(loss=f"{float(record['train_loss']):.4f}",
                        top1=f"{float(record['train_top1']):.3f}",
                        lr=f"{float(record['lr']):.4g}")
        if step in epoch_ends:
          bar.close()
        # With a bar, log lines between epoch ends would tear it: it shows
        # them in its postfix instead.
        if bar.disable or step in epoch_ends:
          logging.info("step %d/%d epoch %.2f: %s", step, total_steps,
                       record["epoch"], _summary_line(record))
        window_start, window_images, pause = time.time(), 0, 0.0

      if step in epoch_ends:
        bar.close()
        bar = None

      if step in eval_steps:
        t = time.time()
        last_eval = run_eval(state)
        record.update(last_eval)
        logging.info("step %d eval: top-1 %.4f top-5 %.4f loss %.4f (%d "
                     "images)", step, last_eval["eval_top1"],
                     last_eval["eval_top5"], last_eval["eval_loss"],
                     last_eval["eval_count"])
        pause += time.time() - t

      if step in log_steps:
        writer.write(step, record)

      if step in save_steps:
        t = time.time()
        if not bool(jax.device_get(finite_fn(state))):
          manager.wait_until_finished()
          raise FloatingPointError(
              f"non-finite parameters after step {step}; stopping without "
              f"saving. The last good checkpoint (step "
              f"{manager.latest_step()}) in {manager.directory} is kept.")
        checkpointing.save(
            manager, step, checkpoint_items(state),
            meta={"step": step, "data_step": step,
                  "epoch": step / steps_per_epoch, "method": config.method,
                  "model": config.model, "dataset": config.dataset},
            metrics=({"eval_top1": last_eval["eval_top1"]}
                     if step in eval_steps else None))
        pause += time.time() - t
  finally:
    if bar is not None:
      bar.close()
    close = getattr(train_iter, "close", None)
    if close is not None:
      close()

  if not last_eval:
    # Nothing was trained (already at total_steps): evaluate what we have.
    last_eval = run_eval(state)
    writer.write(first_step, {"epoch": first_step / steps_per_epoch,
                              **last_eval})
  wall = time.time() - start_time
  summary = {
      "step": total_steps,
      **last_eval,
      "train_loss": _to_json_value(last_record.get("train_loss", math.nan)),
      "wall_time_s": wall,
      "images_per_sec": run_images / run_time if run_time > 0 else 0.0,
  }
  if is_chief:
    layers = _layer_table(last_record)
    if layers:
      logging.info("Per binary layer, at step %d:\n%s", total_steps, layers)
    logging.info(
        "Done: final eval top-1 %.4f (top-5 %.4f, %d images), %d steps, wall "
        "time %.1f s, %.1f images/s.", summary["eval_top1"],
        summary["eval_top5"], summary["eval_count"], total_steps, wall,
        summary["images_per_sec"])
  return summary
