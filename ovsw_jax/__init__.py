"""ovsw_jax: OvSW (ECCV 2024) binary neural networks in JAX/Flax/optax.

The public API, re-exported::

  ovsw_jax.sign_ste, approx_sign, ste_sign, swish_sign   # estimators (ops)
  ovsw_jax.BinaryConv, BinaryDense                       # layers
  ovsw_jax.get_model, list_models                        # the five models
  ovsw_jax.adaptive_gradient_scaling, silence_awareness_decay, ovsw,
  ovsw_jax.binary_kernel_mask, ags_diagnostics, sad_diagnostics  # optax
  ovsw_jax.ReCUConv, recu.recu_tau, bop.bop              # peer methods

Submodules not imported here (they pull in heavier dependencies): `data`
(input pipelines), `train_lib`, `checkpointing`, `parallel`, `convert`, and
for deployment `bitpack` (XNOR-popcount ops), `export` (trained model ->
packed 1-bit file) and `packed` (the file format, loader and inference).
"""

from ovsw_jax import bop
from ovsw_jax import diagnostics
from ovsw_jax import layers
from ovsw_jax import models
from ovsw_jax import ops
from ovsw_jax import recu
from ovsw_jax import transforms
from ovsw_jax.layers import BinaryConv
from ovsw_jax.layers import BinaryDense
from ovsw_jax.layers import LATENT_KERNEL
from ovsw_jax.models import get_model
from ovsw_jax.models import list_models
from ovsw_jax.recu import ReCUConv

from ovsw_jax.ops import approx_sign
from ovsw_jax.ops import sign_ste
from ovsw_jax.ops import ste_sign
from ovsw_jax.ops import swish_sign
from ovsw_jax.transforms import adaptive_gradient_scaling
from ovsw_jax.transforms import ags_diagnostics
from ovsw_jax.transforms import binary_kernel_mask
from ovsw_jax.transforms import ovsw
from ovsw_jax.transforms import sad_diagnostics
from ovsw_jax.transforms import silence_awareness_decay

__version__ = "0.1.0"
