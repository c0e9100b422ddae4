"""Training: config schema, method registry, state, steps, mesh, loop.

The modules, in the order data flows through them:

* `config`: the one config schema (`default_config`, `CONFIG_KEYS`,
  `validate_config`); `schedules`: learning-rate schedules;
* `methods`: the method registry (`register_method`; the optimizer chain
  and model changes of 'ovsw', 'recu+ovsw', ...); `peer_methods`: RBNN's
  and AdaBin's parts;
* `experiment`: what a config builds (dataset info, model, optimizer);
* `state`: `TrainState`; `steps`: the jitted train/eval steps;
* `mesh`: devices, mesh, shardings, jax.distributed; `cpu_fast_path`: the
  CPU-only compiler options and bfloat16 binary operands; `determinism`:
  XLA's GPU determinism flags (``config.deterministic``);
* `input_feed`: where batches are made, host or devices
  (``config.input_on_device``);
* `checkpointing`, `checkpoint_saver` (saves retried, then a loud stop),
  `workdir` (config.json, checkpoint choice), `resume_guard` (a resume's
  config against config.json), `restart` (step 0 in a used workdir),
  `metrics_io` (metric chunk files, read_metrics), `tensorboard`,
  `progress`;
* `loop`: `train_and_evaluate`, `load_checkpoint`.
"""

from ovsw_jax.training.config import CONFIG_KEYS
from ovsw_jax.training.config import default_config
from ovsw_jax.training.experiment import create_experiment
from ovsw_jax.training.experiment import validate_config
from ovsw_jax.training.loop import load_checkpoint
from ovsw_jax.training.loop import train_and_evaluate
from ovsw_jax.training.methods import register_method
# Registers 'rbnn' and 'adabin'.
from ovsw_jax.training import peer_methods  # pylint: disable=unused-import
from ovsw_jax.training.metrics_io import read_metrics
from ovsw_jax.training.state import TrainState

__all__ = [
    "CONFIG_KEYS", "default_config", "create_experiment", "validate_config",
    "load_checkpoint", "train_and_evaluate", "register_method",
    "read_metrics", "TrainState",
]
