"""The method registry: what each ``config.method`` part changes.

``config.method`` is '+'-joined registered parts (`registered_parts`; e.g.
'ovsw' = 'ags+sad', 'recu+ovsw', 'ovsw+adam'). A part has a stage
(`MethodPart`): 'gradient' (AGS, SAD, LARS's trust ratio, before weight
decay), 'optimizer' (replaces weight decay + SGD momentum: Bop, Adam),
'model' (the network and its non-trainable state: ReCU) or 'alias' ('ovsw').

A new method registers its parts with `register_method`; nothing else in
the trainer changes (IR-Net's, RBNN's and AdaBin's are in `peer_methods`).

'vanilla' adds no part: the default optimizer, weight decay + SGD momentum.
For a binary model that is BNN training without OvSW; for a real-valued
model (`ovsw_jax.models.REAL_VALUED`) it is ordinary SGD training, as 'sgd'.
Parts registered ``binary_only`` (all but 'sgd' and 'adam') are refused with
a real-valued model (`experiment.validate_config`), not silently idle.
`create_optimizer`, `create_model` and `create_model_state_fn` build a run's
optimizer chain, network and model-state schedule from the registry.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ovsw_jax import bop
from ovsw_jax import masks
from ovsw_jax import models
from ovsw_jax import recu
from ovsw_jax import transforms
from ovsw_jax.training import config as config_lib
from ovsw_jax.training import cpu_fast_path
from ovsw_jax.training import schedules

# Model-state schedule of a run: (model_state, step, params) ->
# (model_state, metrics).
ModelStateFn = Callable[[dict[str, Any], jax.Array, Any],
                        tuple[dict[str, Any], dict[str, jax.Array]]]

# A 'gradient' or 'optimizer' part builds transformations from the config
# and the LR schedule.
PartBuilder = Callable[[ml_collections.ConfigDict, optax.Schedule],
                       Sequence[optax.GradientTransformation]]

# (model_state, epoch, num_epochs) -> (model_state, metrics); see ModelChange.
ModelStateUpdate = Callable[[dict[str, Any], jax.Array, float],
                            tuple[dict[str, Any], dict[str, jax.Array]]]

# (model_state, params, epoch) -> model_state; see ModelChange.epoch_start.
EpochStart = Callable[[dict[str, Any], Any, jax.Array], dict[str, Any]]


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
    epoch_start: None, or ``epoch_start(model_state, params, epoch) ->
      model_state``, run on the first step of every epoch (after ``update``,
      before the forward pass) with the params that step starts from: for
      state fitted to the weights once per epoch (RBNN's rotations).
  """
  options: Mapping[str, Any]
  update: Optional[ModelStateUpdate] = None
  epoch_start: Optional[EpochStart] = None


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
    binary_only: whether the part acts on binary weights only (masked to
      latent kernels, or changing the binary convs), so that a real-valued
      model has nothing for it to do.
  """
  stage: str
  build: Optional[Callable[..., Any]] = None
  expands_to: tuple[str, ...] = ()
  binary_only: bool = True


_METHOD_PARTS: dict[str, MethodPart] = {}


def register_method(name: str, stage: str,
                    build: Optional[Callable[..., Any]] = None,
                    expands_to: Sequence[str] = (),
                    binary_only: bool = True) -> None:
  """Registers a method part usable in ``config.method`` ('a+b+...').

  Args:
    name: the part's name (no '+').
    stage: 'gradient', 'optimizer', 'model' or 'alias' (see `MethodPart`).
    build: for 'gradient' and 'optimizer' parts a `PartBuilder`; for 'model'
      parts ``build(config) -> ModelChange``.
    expands_to: for 'alias' parts, the parts it stands for, in order.
    binary_only: False for a part that also trains real-valued models (an
      optimizer of every parameter); True (the default) refuses the part
      with a model of `ovsw_jax.models.REAL_VALUED`.
  """
  if "+" in name or not name:
    raise ValueError(f"method part name {name!r} must be non-empty without '+'")
  if stage not in ("gradient", "optimizer", "model", "alias"):
    raise ValueError(f"stage={stage!r}: expected 'gradient', 'optimizer', "
                     "'model' or 'alias'")
  if (stage == "alias") != (build is None):
    raise ValueError("aliases take expands_to and no build; other parts a "
                     "build function")
  _METHOD_PARTS[name] = MethodPart(stage, build, tuple(expands_to),
                                   binary_only)


def registered_parts() -> list[str]:
  """Every part name ``config.method`` can use, aliases too, sorted."""
  return sorted(_METHOD_PARTS)


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
          f"parts: {registered_parts()} (join several with '+')")
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


def binary_only_parts(method: str) -> list[str]:
  """The parts of ``method`` that act on binary weights only (registered
  ``binary_only``): nothing to do on a real-valued model."""
  return [p for p in method_parts(method) if _METHOD_PARTS[p].binary_only]


def weight_decay_mask(config: ml_collections.ConfigDict
                      ) -> Optional[Callable[[Any], Any]]:
  """None (decay everything) or a mask that skips 1-D params (ImageNet)."""
  if config.weight_decay_on_1d:
    return None
  return lambda params: jax.tree.map(lambda x: x.ndim > 1, params)


def _sgd(config, learning_rate_fn):
  """Weight decay (masked as configured) then SGD momentum (docs/semantics.md, section 6)."""
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


def _bop(config, learning_rate_fn):
  """Bop on the binary kernels; weight decay + SGD momentum on the rest.

  The float params keep the recipe's optimizer (not the Bop paper's Adam),
  so that 'bop' differs from 'vanilla' only in how binary weights move. Bop
  flips signs and never changes ``|w|``; it gets no weight decay.
  """
  return [optax.partition(
      {"binary": bop.bop(config.bop_threshold, config.bop_gamma),
       "float": optax.chain(*_sgd(config, learning_rate_fn))},
      masks.binary_or_float)]


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
register_method("sgd", "optimizer", _sgd, binary_only=False)
register_method("ags", "gradient", _ags)
register_method("sad", "gradient", _sad)
# The same chain as transforms.ovsw (AGS -> SAD -> weight decay -> SGD).
register_method("ovsw", "alias", expands_to=("ags", "sad"))
register_method("lars", "gradient", _lars)
register_method("bop", "optimizer", _bop)
register_method("recu", "model", _recu)


def _adam(config, learning_rate_fn):
  """ReActNet's optimizer: L2 weight decay (masked as configured) added to
  the gradient, then Adam (torch's defaults: b1 0.9, b2 0.999, eps 1e-8).

  torch's ``Adam(weight_decay=...)`` adds ``wd * w`` to the gradient before
  its moments, as here (not AdamW's decoupled decay). Gradient parts (AGS,
  SAD) come before it: 'ovsw+adam' is OvSW's transforms in front of Adam.
  """
  decay = optax.add_decayed_weights(config.weight_decay)
  mask = weight_decay_mask(config)
  if mask is not None:
    decay = optax.masked(decay, mask)
  return [decay, optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
          optax.scale_by_learning_rate(learning_rate_fn)]


register_method("adam", "optimizer", _adam, binary_only=False)


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


def model_changes(config: ml_collections.ConfigDict
                  ) -> list[tuple[str, ModelChange]]:
  """The method's 'model' parts as (name, `ModelChange`), in order."""
  return [(name, _METHOD_PARTS[name].build(config))
          for name in method_parts(config.method)
          if _METHOD_PARTS[name].stage == "model"]


def create_model(config: ml_collections.ConfigDict, num_classes: int, *,
                 platform: Optional[str] = None):
  """The config's model; bfloat16 compute with half_precision.

  ``config.model_options`` plus the options of the method's 'model' parts
  (e.g. 'recu': ``conv=ReCUConv``), plus the CPU fast path's bfloat16 binary
  operands where `cpu_fast_path.narrow_binary_operands` allows them.

  Args:
    config: reads model, model_options, method, half_precision,
      cpu_fast_path.
    num_classes: the head's width.
    platform: the backend the model will run on ('cpu', 'gpu', 'tpu');
      None: JAX's default backend.

  Raises:
    ValueError: a part sets an option that model_options (or another part)
      sets too.
  """
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  options = config_lib.as_dict(config.model_options)
  for name, change in model_changes(config):
    clash = sorted(set(change.options) & set(options))
    if clash:
      raise ValueError(
          f"config.method={config.method!r}: its part {name!r} sets the model "
          f"option(s) {clash}, which config.model_options (or another part) "
          "sets too; remove them from config.model_options")
    options.update(change.options)
  platform = platform or jax.default_backend()
  # .get: configs saved by an older ovsw_jax (e.g. a workdir's config.json
  # being exported) lack the key.
  # A real-valued model has no binary conv to narrow.
  if models.is_binary(config.model) and cpu_fast_path.narrow_binary_operands(
      platform, config.get("cpu_fast_path", True), options):
    options["binary_operand_dtype"] = jnp.bfloat16
  return models.get_model(config.model, num_classes, dtype=dtype, **options)


def create_model_state_fn(config: ml_collections.ConfigDict,
                          steps_per_epoch: int) -> Optional[ModelStateFn]:
  """The method's schedule of non-trainable model variables, or None.

  Chains the ``update`` of every 'model' part, then on an epoch's first step
  its ``epoch_start`` (see `ModelChange`). The returned function maps
  ``(model_state, step, params)`` -- ``step`` the number of steps already
  taken, as in the LR schedule -- to the model state for the next step and
  its metrics, with ``epoch = step // steps_per_epoch`` and
  ``num_epochs = total steps / steps_per_epoch``. A function of the step
  (and, at an epoch's first step, of the params) and checkpointed with the
  state, it makes resumed runs exact.
  """
  changes = [c for _, c in model_changes(config)]
  updates = [c.update for c in changes if c.update is not None]
  starts = [c.epoch_start for c in changes if c.epoch_start is not None]
  if not (updates or starts):
    return None
  spe = int(steps_per_epoch)
  num_epochs = schedules.total_train_steps(config, spe) / spe

  def model_state_fn(model_state, step, params):
    epoch = jnp.floor_divide(step, spe)
    metrics = {}
    for update in updates:
      model_state, values = update(model_state, epoch, num_epochs)
      metrics.update(values)
    for start in starts:
      # Only the epoch's first step pays for it (cond runs one branch).
      model_state = jax.lax.cond(
          step % spe == 0, lambda ms, s=start: s(ms, params, epoch),
          lambda ms: ms, model_state)
    return model_state, metrics

  return model_state_fn
