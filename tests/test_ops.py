"""Estimators: exact +-1 forward and the documented surrogate gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ovsw_jax import ops

# Numerics that matter on a GPU/TPU (`-m accelerator`). Float32 results are
# compared with float64 NumPy models at float32 tolerances, which on a GPU
# hold only at full float32 precision (not TF32): `float32_matmuls`.
pytestmark = [pytest.mark.accelerator,
              pytest.mark.usefixtures("float32_matmuls")]

X = np.array([-3.0, -1.2, -1.0, -0.6, -1e-3, 0.0, 1e-3, 0.4, 1.0, 1.7, 5.0],
             np.float32)
SIGN = np.where(X >= 0, 1.0, -1.0)


def _grad(fn, x):
  # Weighted sum so that the test also checks g is multiplied, not replaced.
  w = jnp.arange(1, x.size + 1, dtype=x.dtype)
  return jax.grad(lambda v: jnp.sum(fn(v) * w))(x), np.arange(1, x.size + 1)


def _swish_grad(x, beta):
  bx = beta * x.astype(np.float64)
  return beta * (2 - bx * np.tanh(bx / 2)) / (1 + np.cosh(bx))


CASES = [
    ("sign_ste", ops.sign_ste, lambda x: np.ones_like(x)),
    ("approx_sign", ops.approx_sign,
     lambda x: np.maximum(0, 2 - 2 * np.abs(x))),
    ("ste_sign", lambda x: ops.ste_sign(x, 1.0),
     lambda x: (np.abs(x) <= 1.0).astype(np.float32)),
    ("ste_sign_clip0.5", lambda x: ops.ste_sign(x, 0.5),
     lambda x: (np.abs(x) <= 0.5).astype(np.float32)),
    ("swish_sign", ops.swish_sign, lambda x: _swish_grad(x, 5.0)),
    ("swish_sign_b2", lambda x: ops.swish_sign(x, 2.0),
     lambda x: _swish_grad(x, 2.0)),
]


@pytest.mark.parametrize("name,fn,dfn", CASES, ids=[c[0] for c in CASES])
def test_forward_and_gradient_float32(name, fn, dfn):
  x = jnp.asarray(X)
  np.testing.assert_array_equal(fn(x), SIGN)
  g, w = _grad(fn, x)
  np.testing.assert_allclose(g, w * dfn(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,fn,dfn", CASES, ids=[c[0] for c in CASES])
def test_bfloat16_jit_vmap(name, fn, dfn):
  x = jnp.asarray(X, jnp.bfloat16)
  y = jax.jit(jax.vmap(fn))(x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y, np.float32), SIGN)
  g = jax.jit(jax.grad(lambda v: jnp.sum(fn(v).astype(jnp.float32))))(x)
  assert g.dtype == jnp.bfloat16
  x32 = np.asarray(x, np.float32)  # the bf16-rounded inputs
  np.testing.assert_allclose(np.asarray(g, np.float32), dfn(x32),
                             rtol=2e-2, atol=2e-2)


def test_zero_maps_to_plus_one():
  for fn in ops.ESTIMATORS.values():
    assert float(fn(jnp.zeros(()))) == 1.0
    assert float(fn(-jnp.zeros(()))) == 1.0  # -0.0 >= 0 too


def test_second_order_and_vmap_of_grad():
  # grad-of-vmap and vmap-of-grad agree (custom_vjp under batching).
  x = jnp.asarray(X).reshape(1, -1).repeat(3, 0) * jnp.array([[1.], [.5], [2.]])
  per_row = jax.vmap(jax.grad(lambda v: jnp.sum(ops.approx_sign(v))))(x)
  whole = jax.grad(lambda v: jnp.sum(ops.approx_sign(v)))(x)
  np.testing.assert_allclose(per_row, whole)
  np.testing.assert_allclose(whole, np.maximum(0, 2 - 2 * np.abs(np.asarray(x))))


def test_get_estimator():
  assert ops.get_estimator("approx_sign") is ops.approx_sign
  custom = lambda x: x
  assert ops.get_estimator(custom) is custom
  with pytest.raises(ValueError, match="Unknown estimator 'sgn'.*approx_sign"):
    ops.get_estimator("sgn")
