"""The train and eval steps, jitted over the data-parallel mesh.

jit with NamedShardings, not pmap (in maintenance mode): the step sees the
global batch and XLA inserts the all-reduces, so BatchNorm statistics and the
gradient AGS/SAD see are global-batch means with no axis_name in the model,
and the same code runs on 1 CPU, 8 GPUs or a multi-host pod.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import optax

from ovsw_jax import transforms
from ovsw_jax.training import cpu_fast_path as fast_path_lib
from ovsw_jax.training import distill
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training.state import TrainState


def _topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is among the k largest logits (per example).

  The label's rank, counted per row (logits above it, and equal ones at a
  lower index: `jax.lax.top_k`'s order), so each row needs only its own
  logits. `jax.lax.top_k` itself is not split along the batch by XLA's SPMD
  partitioner: it all-gathered the logits in every eval step, and many such
  steps in flight on 4 simulated CPU devices aborted the process in the
  collective's rendezvous.
  """
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  index = jnp.arange(logits.shape[-1])
  ahead = (logits > label_logit) | ((logits == label_logit)
                                     & (index < labels[:, None]))
  return (jnp.sum(ahead, axis=-1) < k).astype(jnp.float32)


InputFn = Callable[[jax.Array], jax.Array]


def _model_input(batch: Mapping[str, jax.Array],
                 input_fn: InputFn | None) -> jax.Array:
  """The batch's images as the model takes them (e.g. uint8 normalised)."""
  return batch["image"] if input_fn is None else input_fn(batch["image"])


def train_step(state: TrainState, batch: Mapping[str, jax.Array],
               learning_rate_fn: optax.Schedule,
               input_fn: InputFn | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a (global) batch.

  Under jit over the data mesh the model sees the whole global batch, so
  BatchNorm statistics and the loss are global-batch means and the gradient
  is averaged over all devices before the optimizer (AGS) sees it.
  ``input_fn`` maps the batch's images to the model's input first (e.g.
  `data.device_normalize.normalizer` for uint8 batches).

  With ``state.teacher`` the loss is `distill.training_loss`'s: the
  teacher's eval-mode logits, from its frozen variables, enter the loss.

  Returns:
    The new state and scalar metrics: loss, top1, top5, lr (of this step),
    distill_loss with a teacher,
    from the optimizer state ags_ratio and silent_fraction when the method
    has them, and those of ``state.model_state_fn`` (recu_tau with 'recu').
  """
  step_key = jax.random.fold_in(state.rng, state.step)
  model_state, model_metrics = state.model_state or {}, {}
  images = _model_input(batch, input_fn)
  if state.model_state_fn is not None:
    model_state, model_metrics = state.model_state_fn(
        model_state, state.step, state.params)
  teacher = state.teacher
  teacher_logits = None if teacher is None else teacher.logits(images)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats, **model_state},
        images, train=True, mutable=["batch_stats"],
        rngs={"dropout": step_key})
    logits = logits.astype(jnp.float32)
    loss, loss_metrics = distill.training_loss(
        logits, batch["label"], teacher_logits,
        None if teacher is None else teacher.weight)
    return loss, (logits, updates["batch_stats"], loss_metrics)

  (loss, (logits, batch_stats, loss_metrics)), grads = jax.value_and_grad(
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
      **loss_metrics,
  }
  # Only the scalar summaries; per-layer values are read at log time.
  for has, fn, key in (
      (transforms.has_ags_state, transforms.ags_diagnostics, "ags_ratio"),
      (transforms.has_sad_state, transforms.sad_diagnostics,
       "silent_fraction")):
    if has(new_state.opt_state):
      metrics[key] = fn(new_state.opt_state)[key]
  return new_state, metrics


def eval_step(state: TrainState, batch: Mapping[str, jax.Array],
              totals: dict[str, jax.Array],
              input_fn: InputFn | None = None) -> dict[str, jax.Array]:
  """Adds a (padded) eval batch's per-row values to ``totals``.

  ``totals`` holds one value per row of the global batch (loss, top1, top5,
  count), sharded along 'data' like the batch: adding them needs no
  cross-device reduction, so an eval step runs no collective. `evaluate`
  sums the rows once at the end. Padding rows have mask 0. ``input_fn`` as
  in `train_step`.
  """
  logits = state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats,
       **(state.model_state or {})},
      _model_input(batch, input_fn), train=False).astype(jnp.float32)
  mask = batch["mask"].astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  rows = {
      "loss": loss * mask,
      "top1": _topk_correct(logits, batch["label"], 1) * mask,
      "top5": _topk_correct(logits, batch["label"], 5) * mask,
      "count": mask,
  }
  return jax.tree.map(jnp.add, totals, rows)


def jit_train_step(learning_rate_fn: optax.Schedule, mesh: jax.sharding.Mesh,
                   cpu_fast_path: bool = True,
                   input_fn: InputFn | None = None
                   ) -> Callable[[TrainState, Mapping[str, jax.Array]],
                                 tuple[TrainState, dict[str, jax.Array]]]:
  """`train_step` jitted over ``mesh``: batch split along 'data', state
  replicated (and donated: the old state's buffers are reused).

  On a CPU mesh, ``cpu_fast_path`` compiles with
  `cpu_fast_path.CPU_COMPILER_OPTIONS` (see its `compiler_options`); other
  backends always use XLA's defaults.
  """
  # jit with NamedShardings, not pmap (in maintenance mode): the step sees
  # the global batch and XLA inserts the all-reduces, so BatchNorm statistics
  # and the gradient AGS/SAD see are global-batch means with no axis_name in
  # the model, and the same code runs on 1 CPU, 8 GPUs or a multi-host pod.
  replicated = mesh_lib.replicated(mesh)
  return jax.jit(
      functools.partial(train_step, learning_rate_fn=learning_rate_fn,
                        input_fn=input_fn),
      in_shardings=(replicated, mesh_lib.data_sharding(mesh)),
      out_shardings=(replicated, replicated),
      donate_argnums=(0,),
      compiler_options=fast_path_lib.compiler_options(mesh, cpu_fast_path))


def jit_eval_step(mesh: jax.sharding.Mesh, cpu_fast_path: bool = True,
                  input_fn: InputFn | None = None
                  ) -> Callable[..., dict[str, jax.Array]]:
  """`eval_step` jitted over ``mesh``: state replicated, batch and per-row
  totals split along 'data' (so the step holds no collective);
  ``cpu_fast_path`` and ``input_fn`` as in `jit_train_step`."""
  replicated = mesh_lib.replicated(mesh)
  rows = mesh_lib.data_sharding(mesh)
  return jax.jit(
      functools.partial(eval_step, input_fn=input_fn),
      in_shardings=(replicated, rows, rows),
      out_shardings=rows,
      donate_argnums=(2,),
      compiler_options=fast_path_lib.compiler_options(mesh, cpu_fast_path))


_EVAL_KEYS = ("loss", "top1", "top5", "count")


def _zero_eval_totals(rows: int, mesh: jax.sharding.Mesh
                      ) -> dict[str, jax.Array]:
  """Per-row zeros for the ``rows`` rows of a global batch, split along
  'data'."""
  return _zeros_fn(rows, mesh)()


@functools.lru_cache(maxsize=8)
def _zeros_fn(rows: int, mesh: jax.sharding.Mesh):
  return jax.jit(
      lambda: {k: jnp.zeros([rows], jnp.float32) for k in _EVAL_KEYS},
      out_shardings=mesh_lib.data_sharding(mesh))


def evaluate(eval_fn: Callable[..., Any], state: TrainState,
             batches: Iterable[Mapping[str, Any]],
             mesh: jax.sharding.Mesh) -> dict[str, float]:
  """One pass over eval batches (this host's rows of each global batch, or
  global arrays already split along 'data').

  The per-row totals stay sharded during the pass and are summed across
  devices once, at the end, so no eval step waits on the other devices.

  Returns:
    eval_loss, eval_top1, eval_top5 (means over the unpadded examples) and
    eval_count (how many examples were counted).
  """
  totals = None
  for batch in batches:
    batch = mesh_lib.shard_batch(batch, mesh)
    if totals is None:
      totals = _zero_eval_totals(batch["label"].shape[0], mesh)
    totals = eval_fn(state, batch, totals)
  if totals is None:
    raise ValueError("the eval split yielded no batches")
  sums = jax.jit(lambda t: jax.tree.map(jnp.sum, t),
                 out_shardings=mesh_lib.replicated(mesh))(totals)
  totals = jax.device_get(sums)
  count = float(totals["count"])
  if count == 0:
    raise ValueError("the eval split yielded no examples")
  return {"eval_loss": float(totals["loss"]) / count,
          "eval_top1": float(totals["top1"]) / count,
          "eval_top5": float(totals["top5"]) / count,
          "eval_count": int(round(count))}


def optimizer_diagnostics(opt_state) -> dict[str, jax.Array]:
  """AGS's and SAD's diagnostics, of whichever of the two the state holds
  (`transforms.ags_diagnostics`, `transforms.sad_diagnostics`); {} for a
  method with neither."""
  values = {}
  if transforms.has_ags_state(opt_state):
    values.update(transforms.ags_diagnostics(opt_state))
  if transforms.has_sad_state(opt_state):
    values.update(transforms.sad_diagnostics(opt_state))
  return values


def layer_diagnostics(opt_state) -> dict[str, jax.Array]:
  """Per-layer AGS ratios and silent fractions as of the last step.

  The overall values are left out: the log records the mean of the per-step
  values over the log window instead.
  """
  return {k: v for k, v in optimizer_diagnostics(opt_state).items()
          if "/" in k}
