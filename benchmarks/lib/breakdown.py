"""Where the train step's time goes: its parts, jitted and timed apart.

`breakdown`: the forward (train mode, loss), forward + backward
(`jax.value_and_grad`) and each method's optimizer update. `conv_breakdown`:
the three convolutions of one binary conv per cResNet20 stage shape
(forward, input gradient, kernel gradient), and PyTorch's.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.lib import arms as arms_lib
from benchmarks.lib import timing
from ovsw_jax import layers


def breakdown(arms: Mapping[str, arms_lib.JaxArm], reps: int,
              compiler_options: Optional[Mapping[str, Any]] = None
              ) -> dict[str, Any]:
  """Forward, forward + backward and optimizer-update times of our step.

  The forward and its gradient are the method-independent part: they are
  timed once, with the first arm's params. Each arm's ``tx`` update is timed
  on that gradient. All separately jitted with ``compiler_options`` (the
  step's; so XLA cannot fuse across them as it does in the whole step),
  medians over ``reps`` calls after one compiling call.
  """
  options = dict(compiler_options) if compiler_options else None
  first = next(iter(arms.values()))
  state, batch = first.state, first.batch

  def loss_fn(params):
    # steps.train_step's loss, without its metrics.
    step_key = jax.random.fold_in(state.rng, state.step)
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats,
         **(state.model_state or {})}, batch["image"],
        train=True, mutable=["batch_stats"], rngs={"dropout": step_key})
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), batch["label"]).mean()
    return loss, updates["batch_stats"]

  forward = jax.jit(loss_fn, compiler_options=options)
  forward_backward = jax.jit(jax.value_and_grad(loss_fn, has_aux=True),
                             compiler_options=options)
  params = state.params
  _, grads = forward_backward(params)

  fns = {"forward": functools.partial(forward, params),
         "forward_backward": functools.partial(forward_backward, params)}
  for name, arm in arms.items():
    tx, opt_state, p = arm.experiment.tx, arm.state.opt_state, arm.state.params

    def update(grads, opt_state, params, tx=tx):
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    update = jax.jit(update, compiler_options=options)

    fns[f"optimizer_update_{name}"] = functools.partial(update, grads,
                                                        opt_state, p)
  out = {f"{k}_s": v for k, v in timing.interleave(fns, reps).items()}
  out["backward_s"] = out["forward_backward_s"] - out["forward_s"]
  out["reps"] = reps
  out["note"] = ("separately jitted functions on the same batch and params; "
                 "backward_s = forward_backward_s - forward_s")
  return out


# cResNet20's binary convs: per stage, (spatial size divisor, channels); six
# 3x3 convs per stage (the first of stages 2-3 has stride 2, timed here as
# the stride-1 conv of its output size).
_CRESNET20_STAGES = ((1, 16), (2, 32), (4, 64))
_CONVS_PER_STAGE = 6
_OPS = ("forward", "input_grad", "kernel_grad")


def _binary_conv(x, w, operand_dtype=None):
  return layers.binary_conv_general(x, w, (1, 1), ((1, 1), (1, 1)),
                                    operand_dtype)


def _three(conv: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
  """A conv, and its gradients with respect to the input and the kernel."""
  return {
      "forward": conv,
      "input_grad": (
          lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
      "kernel_grad": (
          lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]),
  }


def _jax_calls(x, w, g, dtype, compiler_options):
  """Our three convolutions of one stage shape, ready to call."""
  xj, wj, gj = (jnp.asarray(a, dtype) for a in (x, w, g))
  options = dict(compiler_options) if compiler_options else None
  if options:
    # As the fast path runs them: +-1 operands read in bfloat16.
    fast = functools.partial(_binary_conv, operand_dtype=jnp.bfloat16)
    fns = {k: jax.jit(f, compiler_options=options)
           for k, f in _three(fast).items()}
    fns.update({f"portable_{k}": jax.jit(f)
                for k, f in _three(_binary_conv).items()})
  else:
    fns = {k: jax.jit(f) for k, f in _three(_binary_conv).items()}
  return {k: (functools.partial(f, xj, wj) if k.endswith("forward") else
              functools.partial(f, xj, wj, gj)) for k, f in fns.items()}


def _torch_calls(x, w, g):
  """PyTorch's three (NCHW; the backward through
  ``aten.convolution_backward``, which autograd calls)."""
  import torch  # pylint: disable=g-import-not-at-top
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
  gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())

  def torch_backward(mask):
    return torch.ops.aten.convolution_backward(
        gt, xt, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

  return {
      "torch_forward": functools.partial(
          torch.nn.functional.conv2d, xt, wt, None, 1, 1),
      "torch_input_grad": functools.partial(
          torch_backward, [True, False, False]),
      "torch_kernel_grad": functools.partial(
          torch_backward, [False, True, False]),
  }


def conv_breakdown(batch_size: int, image_size: int, dtype: Any, reps: int,
                   compare_torch: bool = False,
                   compiler_options: Optional[Mapping[str, Any]] = None
                   ) -> dict[str, Any]:
  """The three convolutions of a binary conv's step, per cResNet20 stage.

  For each stage's shape, the convolution as `ovsw_jax.layers.BinaryConv`
  calls it (NHWC, HWIO, padding 1, +-1 operands in ``dtype``), and the two
  that its gradient takes: with respect to the input and to the kernel
  (each `jax.vjp` of the forward, jitted alone). With ``compiler_options``
  (the CPU fast path's) they are compiled with them and the forward reads
  the operands in bfloat16, as the fast path's step does; the float32 ones
  compiled with XLA's defaults are then ``portable_*``. With
  ``compare_torch``, also PyTorch's. Medians of ``reps``.
  """
  rng = np.random.default_rng(0)
  out: dict[str, Any] = {}
  totals = {"ours": 0.0, "torch": 0.0}
  for divisor, channels in _CRESNET20_STAGES:
    size = max(image_size // divisor, 1)
    x = np.sign(rng.standard_normal((batch_size, size, size, channels))
                ).astype(np.float32)
    w = np.sign(rng.standard_normal((3, 3, channels, channels))
                ).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    calls = _jax_calls(x, w, g, dtype, compiler_options)
    if compare_torch:
      calls.update(_torch_calls(x, w, g))
    stage = {f"{k}_s": v for k, v in timing.interleave(calls, reps).items()}
    out[f"{size}x{size}x{channels}"] = stage
    totals["ours"] += _CONVS_PER_STAGE * sum(stage[f"{k}_s"] for k in _OPS)
    if compare_torch:
      totals["torch"] += _CONVS_PER_STAGE * sum(
          stage[f"torch_{k}_s"] for k in _OPS)
  out["all_binary_convs_per_step_s"] = (
      totals if compare_torch else {"ours": totals["ours"]})
  out["note"] = (
      f"one binary conv per stage shape, batch {batch_size}; "
      f"{_CONVS_PER_STAGE} per stage in a step (the stride-2 ones counted "
      "as stride 1 of their output size), so all_binary_convs_per_step_s "
      "approximates the step's binary-conv time: forward + input_grad + "
      "kernel_grad (the first conv's input_grad is needed too: its input "
      "comes from the stem)")
  return out
