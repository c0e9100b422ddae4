"""benchmarks/step_variants.py: the tried reformulations compute the same
thing, and the option variants are timed (or rejected) as recorded."""

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from benchmarks import step_variants


@pytest.fixture(scope="module")
def sv():
  return step_variants


def _kernel_grad_numpy(x, g):
  """dW[i, j, c, d] = sum_{n,h,w} xpad[n, h+i, w+j, c] g[n, h, w, d]."""
  n, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return np.stack([
      np.einsum("nhwc,nhwd->cd", xp[:, i:i + h, j:j + w], g)
      for i in range(3) for j in range(3)]).reshape(3, 3, x.shape[-1], -1)


@pytest.mark.parametrize("name", ["kernel_grad_per_tap", "kernel_grad_im2col",
                                  "kernel_grad_batched"])
def test_kernel_gradient_reformulations_match_numpy(sv, name):
  rng = np.random.default_rng(1)
  x = np.sign(rng.standard_normal((3, 5, 6, 4))).astype(np.float32)
  g = rng.standard_normal((3, 5, 6, 7)).astype(np.float32)
  want = _kernel_grad_numpy(x.astype(np.float64), g.astype(np.float64))
  got = np.asarray(jax.jit(getattr(sv, name))(jnp.asarray(x), jnp.asarray(g)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # And XLA's own kernel gradient agrees with the same model.
  conv = lambda w: lax.conv_general_dilated(  # pylint: disable=g-long-lambda
      jnp.asarray(x), w, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  xla = jax.vjp(conv, jnp.zeros((3, 3, 4, 7)))[1](jnp.asarray(g))[0]
  np.testing.assert_allclose(np.asarray(xla), want, rtol=1e-5, atol=1e-5)


def test_conv_variants_are_exact_or_close(sv):
  r = sv.conv_variants(batch_size=2, reps=1, image_size=8)
  assert set(r) == {"8x8x16", "4x4x32", "2x2x64"}
  for stage in r.values():
    # +-1 operands: every forward formulation sums small integers exactly.
    for k in ("forward_bf16_conv", "forward_int8_conv",
              "forward_f32_im2col_dot", "forward_int8_im2col_dot"):
      assert stage[k]["max_abs_deviation"] == 0.0, k
    for k in ("kernel_grad_9_tap_dots", "kernel_grad_im2col_dot",
              "kernel_grad_9_batched_dots"):
      assert stage[k]["max_abs_deviation"] <= 1e-5 * stage[k]["ref_max_abs"]
    for k, v in stage.items():
      assert v["ms"] > 0
      base = "forward_f32_conv" if k.startswith("forward") else (
          "kernel_grad_xla_conv")
      assert v["time_over_xla_conv"] == pytest.approx(
          v["ms"] / stage[base]["ms"])


def test_step_variants_time_each_and_report_rejections(sv):
  variants = {"xla_defaults": (None, False),
              "fast_path": sv.STEP_VARIANTS["fast_path"],
              "bogus": ({"xla_cpu_no_such_option_exists": "1"}, False)}
  r = sv.step_variants("ovsw", batch_size=4, steps=2, variants=variants,
                       model_options={"stage_sizes": (1, 1, 1)},
                       image_size=8)
  assert set(r["variants"]) == {"xla_defaults", "fast_path"}
  assert "xla_cpu_no_such_option_exists" in r["rejected"]["bogus"]
  assert r["variants"]["xla_defaults"]["over_xla_defaults"] == 1.0
  fast = r["variants"]["fast_path"]
  assert fast["compiler_options"] == sv.STEP_VARIANTS["fast_path"][0]
  assert fast["bf16_operands"] and not (
      r["variants"]["xla_defaults"]["bf16_operands"])
  assert fast["images_per_sec"] > 0
  assert fast["over_xla_defaults"] == pytest.approx(
      fast["images_per_sec"] / r["variants"]["xla_defaults"]["images_per_sec"])
