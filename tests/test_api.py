"""The package's public names: declared in __all__ and importable."""

import jax.numpy as jnp

import ovsw_jax

# The public names that issue 12 keeps working from `ovsw_jax`.
KEPT = ("sign_ste", "approx_sign", "ste_sign", "swish_sign", "BinaryConv",
        "BinaryDense", "get_model", "list_models", "adaptive_gradient_scaling",
        "silence_awareness_decay", "ovsw", "binary_kernel_mask",
        "ags_diagnostics", "sad_diagnostics", "ReCUConv", "bop")


def test_all_names_exist_and_include_the_kept_ones():
  missing = [n for n in ovsw_jax.__all__ if not hasattr(ovsw_jax, n)]
  assert not missing
  assert set(KEPT) <= set(ovsw_jax.__all__)
  assert len(set(ovsw_jax.__all__)) == len(ovsw_jax.__all__)


def test_state_classes_are_the_transforms_own():
  tx = ovsw_jax.ovsw(0.1, mask=ovsw_jax.binary_kernel_mask)
  state = tx.init({"conv": {"latent_kernel": jnp.ones((3, 2))}})
  assert isinstance(state[0].inner_state, ovsw_jax.AdaptiveGradientScalingState)
  assert isinstance(state[1].inner_state, ovsw_jax.SilenceAwarenessDecayState)
  bop_state = ovsw_jax.bop.bop().init({"w": jnp.ones(2)})
  assert isinstance(bop_state, ovsw_jax.BopState)
