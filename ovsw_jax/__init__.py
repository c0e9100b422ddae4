"""ovsw_jax: OvSW (ECCV 2024) binary neural networks in JAX/Flax/optax.

The public API, re-exported (`__all__`)::

  ovsw_jax.sign_ste, approx_sign, ste_sign, swish_sign   # estimators (ops)
  ovsw_jax.BinaryConv, BinaryDense, LATENT_KERNEL        # layers
  ovsw_jax.get_model, list_models                        # binary and float models
  ovsw_jax.binary_kernel_mask, binary_or_float           # masks
  ovsw_jax.adaptive_gradient_scaling, silence_awareness_decay, ovsw,
  ovsw_jax.AdaptiveGradientScalingState, SilenceAwarenessDecayState,
  ovsw_jax.ags_diagnostics, sad_diagnostics              # optax transforms
  ovsw_jax.ReCUConv, recu.recu_tau                       # peer method: ReCU
  ovsw_jax.bop.bop, BopState                             # peer method: Bop
  ovsw_jax.read_metrics                                  # a run's records
  ovsw_jax.summary(model, input_shape)                   # bit-aware summary

and the submodules `ops`, `layers`, `models`, `masks`, `transforms`,
`diagnostics`, `recu` and `bop`. The exact semantics are in
docs/semantics.md.

Submodules not imported here (they pull in heavier dependencies): `data`
(input pipelines), `convert` (PyTorch checkpoints: the reference's,
torchvision's; ``python -m ovsw_jax.convert``), `training`
(config schema, method registry, train state and steps, mesh, checkpoints,
the training loop) and `deploy` (bit packing, export to a packed 1-bit
file, the file format, XNOR-popcount inference, and its command lines).
"""

from ovsw_jax import bop
from ovsw_jax import diagnostics
from ovsw_jax import layers
from ovsw_jax import masks
from ovsw_jax import models
from ovsw_jax import ops
from ovsw_jax import recu
from ovsw_jax import transforms
from ovsw_jax.bop import BopState
from ovsw_jax.layers import BinaryConv
from ovsw_jax.layers import BinaryDense
from ovsw_jax.layers import LATENT_KERNEL
from ovsw_jax.masks import binary_kernel_mask
from ovsw_jax.masks import binary_or_float
from ovsw_jax.models import get_model
from ovsw_jax.models import list_models
from ovsw_jax.ops import approx_sign
from ovsw_jax.ops import sign_ste
from ovsw_jax.ops import ste_sign
from ovsw_jax.ops import swish_sign
from ovsw_jax.recu import ReCUConv
# The function; `python -m ovsw_jax.summary` still runs the module.
from ovsw_jax.summary import summary
from ovsw_jax.transforms import adaptive_gradient_scaling
from ovsw_jax.transforms import AdaptiveGradientScalingState
from ovsw_jax.transforms import ags_diagnostics
from ovsw_jax.transforms import has_ags_state
from ovsw_jax.transforms import has_sad_state
from ovsw_jax.transforms import ovsw
from ovsw_jax.transforms import sad_diagnostics
from ovsw_jax.transforms import silence_awareness_decay
from ovsw_jax.transforms import SilenceAwarenessDecayState

__version__ = "0.1.0"


def read_metrics(workdir):
  """A training run's metric records, in step order (dicts with ``step``).

  See `ovsw_jax.training.metrics_io.read_metrics`; the workdir may be local
  or any `etils.epath` path (``gs://...``). Imported on call: the training
  package is heavier than the rest of the top level.
  """
  from ovsw_jax.training import metrics_io  # pylint: disable=g-import-not-at-top
  return metrics_io.read_metrics(workdir)

__all__ = [
    # Submodules.
    "bop", "diagnostics", "layers", "masks", "models", "ops", "recu",
    "transforms",
    # Estimators.
    "approx_sign", "sign_ste", "ste_sign", "swish_sign",
    # Layers and models.
    "BinaryConv", "BinaryDense", "LATENT_KERNEL", "ReCUConv", "get_model",
    "list_models",
    # Masks, optax transforms, their states and diagnostics.
    "AdaptiveGradientScalingState", "BopState", "SilenceAwarenessDecayState",
    "adaptive_gradient_scaling", "ags_diagnostics", "binary_kernel_mask",
    "binary_or_float", "has_ags_state", "has_sad_state", "ovsw",
    "sad_diagnostics", "silence_awareness_decay",
    # A run's records; a model's bit-aware summary.
    "read_metrics", "summary",
]
