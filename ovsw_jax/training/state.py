"""The train state: params, BatchNorm statistics, model variables, optimizer.

`TrainState` is flax's, plus ``batch_stats`` (as in flax's examples/imagenet),
the model's other non-trainable collections (ReCU's tau) and the run's PRNG
key. `create_train_state` builds it replicated over the mesh;
`abstract_train_state` gives its structure for restoring a checkpoint, and
`checkpoint_items` the arrays a checkpoint holds.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from flax import struct
from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from ovsw_jax.training import cpu_fast_path as fast_path_lib
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training.methods import ModelStateFn


class TrainState(train_state.TrainState):
  """Flax's TrainState plus BatchNorm statistics, other model variables and
  a PRNG key.

  Attributes:
    batch_stats: the ``batch_stats`` collection.
    model_state: the model's other non-trainable collections, e.g.
      ``{'recu': ...}`` (ReCU's tau); ``{}`` for most models. Passed to every
      ``apply``, never mutated by it.
    rng: the run's PRNG key.
    teacher: None, or the frozen `ovsw_jax.training.distill.Teacher` whose
      logits the train step's loss distils; never checkpointed (a run
      attaches it after restoring, from its config).
    model_state_fn: static; None or the method's schedule of
      ``model_state`` (see `create_model_state_fn`), applied by `train_step`
      before each forward pass.
  """
  batch_stats: Any = None
  model_state: Any = None
  rng: jax.Array = None
  teacher: Any = None
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


def create_train_state(model, tx: optax.GradientTransformation,
                       image_shape: Sequence[int], seed: int,
                       mesh: jax.sharding.Mesh,
                       model_state_fn: Optional[ModelStateFn] = None,
                       cpu_fast_path: bool = True) -> TrainState:
  """Initialises the model and optimizer, replicated over ``mesh``.

  Every host computes the same values from ``seed``. Params and optimizer
  state are float32 whatever the model's compute dtype. ``model_state_fn``
  (`create_model_state_fn`; the experiment's) schedules the model's
  non-trainable variables, e.g. ReCU's tau. ``cpu_fast_path``
  (config.cpu_fast_path) compiles the init program faster on a CPU mesh,
  to the same values (`cpu_fast_path.init_compiler_options`).
  """
  init = _init_fn(model, tx, image_shape, seed, model_state_fn)
  return jax.jit(init, out_shardings=mesh_lib.replicated(mesh),
                 compiler_options=fast_path_lib.init_compiler_options(
                     mesh, cpu_fast_path))()


def _init_fn(model, tx, image_shape, seed, model_state_fn=None):
  def init():
    key = jax.random.PRNGKey(seed)
    params_key, state_key = jax.random.split(key)
    variables = model.init(params_key, jnp.zeros((1, *image_shape),
                                                 jnp.float32), train=False)
    model_state = {k: v for k, v in variables.items()
                   if k not in ("params", "batch_stats")}
    state = TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        model_state=model_state, rng=state_key,
        model_state_fn=model_state_fn)
    # flax's step=0 becomes a weakly typed int32; a restored step is not, so
    # a resumed run would compile train_step a second time.
    return state.replace(step=jnp.zeros((), jnp.int32))
  return init


def abstract_train_state(model, tx, image_shape, seed, mesh,
                         model_state_fn: Optional[ModelStateFn] = None
                         ) -> TrainState:
  """`create_train_state`'s structure, as ShapeDtypeStructs with shardings."""
  shapes = jax.eval_shape(_init_fn(model, tx, image_shape, seed,
                                   model_state_fn))
  sharding = mesh_lib.replicated(mesh)
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
      shapes)
