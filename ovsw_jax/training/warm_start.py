"""Variables from another run's workdir: a later stage's start, a teacher.

`restore_variables` reads a workdir's config.json and one of its
checkpoints, and returns the model with its params, batch_stats and other
model variables. `initialise_from` starts a new run from them
(``config.init_from``: ReActNet's stage 2 from stage 1), with a fresh
optimizer state.
"""

from __future__ import annotations

from typing import Any, Union

import jax
import ml_collections
import optax

from ovsw_jax.training import checkpointing
from ovsw_jax.training import mesh as mesh_lib
from ovsw_jax.training import state as state_lib
from ovsw_jax.training import workdir as workdir_lib
from ovsw_jax.training.experiment import create_experiment


def restore_variables(workdir: str, which: Union[str, int],
                      mesh: jax.sharding.Mesh
                      ) -> tuple[ml_collections.ConfigDict, Any,
                                 dict[str, Any], int]:
  """A run's model and variables at one checkpoint, replicated over ``mesh``.

  Args:
    workdir: the run's workdir (holding config.json and checkpoints/).
    which: 'latest', 'best' or a step number.
    mesh: where the arrays go (replicated).

  Returns:
    ``(config, model, variables, step)``: the run's config, its Flax module,
    ``{'params', 'batch_stats', **model_state}`` and the checkpoint's step.

  Raises:
    FileNotFoundError: no config.json, or no such checkpoint.
  """
  config = workdir_lib.read_config(workdir)
  platform = mesh.devices.flat[0].platform
  experiment = create_experiment(config, platform=platform)
  manager = checkpointing.create_manager(
      workdir_lib.checkpoint_dir(workdir), keep=config.keep_checkpoints,
      read_only=True)
  try:
    step = workdir_lib.choose_step(manager, which)
    abstract = state_lib.abstract_train_state(
        experiment.model, experiment.tx, experiment.info.image_shape,
        config.seed, mesh, experiment.model_state_fn)
    items, _, step = checkpointing.restore(
        manager, state_lib.checkpoint_items(abstract), step=step,
        set_aside_unreadable=False)
  finally:
    manager.close()
  variables = {"params": items["params"],
               "batch_stats": items["batch_stats"],
               **items.get("model_state", {})}
  return config, experiment.model, variables, step


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in
          jax.tree_util.tree_leaves_with_path(tree)}


def check_same_tree(name: str, want: Any, got: Any, source: str) -> None:
  """Raises a ValueError naming the leaves where ``got`` differs from
  ``want`` (missing, extra or of another shape)."""
  want, got = _shapes(want), _shapes(got)
  if want == got:
    return
  diffs = [f"{k}: {want.get(k)} here, {got.get(k)} in {source}"
           for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
  raise ValueError(
      f"the {name} of {source} do not fit this run's model ("
      + "; ".join(diffs[:5]) + (" ..." if len(diffs) > 5 else "")
      + "): init_from needs a run of the same model and width (only "
      "options such as binarize_weights may differ)")


def initialise_from(state: state_lib.TrainState, workdir: str,
                    tx: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh) -> state_lib.TrainState:
  """``state`` with the params and batch_stats of ``workdir``'s latest
  checkpoint, and the optimizer state ``tx.init`` gives for them.

  The step, PRNG key and model state stay ``state``'s: the new run starts
  at step 0 with its own schedule.

  Raises:
    ValueError: the checkpoint's trees differ from ``state``'s.
  """
  _, _, variables, step = restore_variables(workdir, "latest", mesh)
  source = f"{workdir} (step {step})"
  check_same_tree("params", state.params, variables["params"], source)
  check_same_tree("batch_stats", state.batch_stats, variables["batch_stats"],
                  source)
  opt_state = jax.jit(tx.init, out_shardings=mesh_lib.replicated(mesh))(
      variables["params"])
  return state.replace(params=variables["params"],
                       batch_stats=variables["batch_stats"],
                       opt_state=opt_state)
