"""Images/s of the real jitted train step, OvSW against vanilla (and PyTorch).

  python benchmarks/train_step.py --model=cresnet20_1w1a --method=ovsw \
      --batch_size=128 --steps=30 --warmup=3 [--compare_torch] \
      [--half_precision] [--profile_steps=5] \
      [--out=benchmarks/results/train_step.json]

Times the step that `ovsw_jax.train_lib.train_and_evaluate` runs, built the
way it builds it (`create_experiment`, `create_train_state`, `jit_train_step`
over `parallel.create_mesh()`, batch placed with `parallel.shard_batch`), for
``--method`` and for 'vanilla' in the same process. The data are synthetic
and one batch stays on the device for every step, so the input pipeline is
NOT measured: this is the step alone. On CPU the trainer compiles its step
with `ovsw_jax.parallel.CPU_COMPILER_OPTIONS` (the CPU fast path); the arm
'<method>_portable' is the same step compiled with XLA's defaults, timed
beside it.

With ``--compare_torch`` it also times the reference's step in PyTorch
(benchmarks/torch_step.py: eager, float32, ``torch.set_num_threads``
threads, AGS/SAD as per-layer Python loops after backward), with and without
the method. Then all arms start from the PyTorch model's weights (converted
with `ovsw_jax.convert`; our state is built as `create_train_state` builds
it, minus the init), so their first losses agree (see first_loss_note).

The arms run interleaved, in blocks of ``--block`` steps each in turn, so that
a change in the machine's load hits all of them alike. A step's time runs
from the call to `jax.block_until_ready` of its outputs (PyTorch on the CPU
is synchronous); images/s is batch_size / the median step time. The load
average at start and end, sampled at every round, and each arm's CPU use
(process CPU seconds / wall seconds) show how noisy the machine was.

``breakdown`` times, with separately jitted functions on the same batch and
params: the forward (train mode, loss), forward + backward
(`jax.value_and_grad`), and each method's optimizer update
(``tx.update`` + `optax.apply_updates`); for cResNet20 also the three
convolutions of one binary conv per stage shape (forward, input gradient,
kernel gradient; PyTorch's too with ``--compare_torch``). PyTorch's step is
split into phases (forward, backward, AGS/SAD hooks, optimizer).

``--profile_steps`` traces that many steps with `jax.profiler` and reports
where the time goes, per XLA op and per kind of op (`profile_step`):
convolutions (forward, input gradient, kernel gradient), layout transposes,
reductions, elementwise fusions.

Prints one JSON line; writes it (indented) to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path
import platform
import re
import statistics
import sys
import time
from typing import Any, Callable, Mapping, Optional

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))  # For `configs`, a plain directory.

from configs import default  # pylint: disable=g-import-not-at-top
from ovsw_jax import layers  # pylint: disable=g-import-not-at-top
from ovsw_jax import models  # pylint: disable=g-import-not-at-top
from ovsw_jax import parallel  # pylint: disable=g-import-not-at-top
from ovsw_jax import train_lib  # pylint: disable=g-import-not-at-top

# What the issue asks of the step (reported, not enforced).
TARGET_OURS_OVER_TORCH = 1.5      # images/s, ours / PyTorch's, with OvSW
TARGET_OVSW_OVERHEAD = 0.02       # step time, OvSW / vanilla - 1
DATA_NOTE = ("synthetic images, one batch kept on the device for every step: "
             "the input pipeline is not measured")


# ----------------------------------------------------------------------------
# Our step
# ----------------------------------------------------------------------------


def make_config(model: str = "cresnet20_1w1a", method: str = "ovsw",
                batch_size: int = 128, image_size: int = 32,
                half_precision: bool = False, seed: int = 0,
                model_options: Optional[Mapping[str, Any]] = None
                ) -> ml_collections.ConfigDict:
  """configs/default.py's CIFAR recipe on synthetic images of this size."""
  if image_size < 1:
    raise ValueError(f"--image_size={image_size} must be positive")
  config = default.get_config()
  config.model = model
  if model_options:
    config.model_options = dict(model_options)
  config.method = method
  config.batch_size = batch_size
  config.half_precision = half_precision
  config.seed = seed
  config.dataset = "synthetic"
  config.dataset_options = {"image_shape": (image_size, image_size, 3)}
  config.progress_bar = False
  return config


def make_batch(batch_size: int, image_size: int, num_classes: int,
               seed: int = 0) -> dict[str, np.ndarray]:
  """Normalised-looking float32 NHWC images and int32 labels."""
  rng = np.random.default_rng(seed)
  return {
      "image": rng.standard_normal(
          (batch_size, image_size, image_size, 3), dtype=np.float32),
      "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
  }


class JaxArm:
  """Our jitted train step for one method, as `train_and_evaluate` runs it.

  Attributes:
    config: the run's config.
    experiment: `train_lib.create_experiment(config)`.
    state: the train state (donated and replaced at every step).
    step_fn: `train_lib.jit_train_step`.
    batch: the device-resident batch.
    last_metrics: the metrics of the last step.
  """

  def __init__(self, config: ml_collections.ConfigDict,
               batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh,
               variables: Optional[Mapping[str, Any]] = None):
    """Builds the state and the jitted step.

    Args:
      config: from `make_config` (``config.cpu_fast_path`` picks the step's
        compiler options, as in the trainer).
      batch: host arrays ('image', 'label').
      mesh: the data-parallel mesh.
      variables: {'params', 'batch_stats'} to start from instead of the
        model's init (e.g. converted from the PyTorch model).
    """
    parallel.check_batch_size(config.batch_size, mesh)
    self.config = config
    self.experiment = train_lib.create_experiment(config)
    self.mesh = mesh
    if variables is None:
      self.state = train_lib.create_train_state(
          self.experiment.model, self.experiment.tx,
          self.experiment.info.image_shape, config.seed, mesh,
          self.experiment.model_state_fn)
    else:
      self.state = state_from_variables(self.experiment, variables,
                                        config.seed, mesh)
    self.step_fn = train_lib.jit_train_step(
        self.experiment.learning_rate_fn, mesh, config.cpu_fast_path)
    self.batch = parallel.shard_batch(batch, mesh)
    self.last_metrics: dict[str, jax.Array] = {}

  def __call__(self) -> None:
    self.state, self.last_metrics = self.step_fn(self.state, self.batch)
    jax.block_until_ready((self.state, self.last_metrics))

  def loss(self) -> float:
    return float(self.last_metrics["loss"])


def state_from_variables(experiment: train_lib.Experiment,
                         variables: Mapping[str, Any], seed: int,
                         mesh: jax.sharding.Mesh) -> train_lib.TrainState:
  """`train_lib.create_train_state`'s state, from given variables.

  The same fields (step 0, a fresh optimizer state, the RNG key derived from
  ``seed`` as there), replicated over ``mesh``; built eagerly, which skips
  compiling the model's init.

  Raises:
    ValueError: the method schedules model variables (e.g. ReCU's tau),
      which ``variables`` do not hold.
  """
  if experiment.model_state_fn is not None:
    raise ValueError(
        "this method schedules non-trainable model variables, which a "
        "converted state_dict lacks; start from the model's init instead")
  params = jax.tree.map(jnp.asarray, variables["params"])
  batch_stats = jax.tree.map(jnp.asarray, variables["batch_stats"])
  _, rng = jax.random.split(jax.random.PRNGKey(seed))
  state = train_lib.TrainState.create(
      apply_fn=experiment.model.apply, params=params, tx=experiment.tx,
      batch_stats=batch_stats, model_state={}, rng=rng)
  return jax.device_put(state, parallel.replicated(mesh))


# ----------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------


def time_interleaved(arms: Mapping[str, Callable[[], Any]], steps: int,
                     warmup: int, block: int,
                     on_warmup: Optional[Callable[[str, int], None]] = None
                     ) -> dict[str, dict[str, Any]]:
  """Runs every arm's steps in turn, ``block`` at a time, timing each step.

  Args:
    arms: name -> a function running one synchronous step.
    steps: timed steps per arm.
    warmup: untimed steps per arm first (compilation happens in the first).
    block: consecutive steps of one arm before the next arm's turn.
    on_warmup: called after each warmup step with (arm, index).

  Returns:
    name -> {'times': per-step seconds, 'cpu_utilization': process CPU
    seconds / wall seconds over its timed steps, 'first_step_s': wall time of
    the first call (compile included)}; plus, under the key '_load', the
    1-minute load average sampled before every round.
  """
  if steps < 1 or warmup < 0 or block < 1:
    raise ValueError(f"steps={steps} must be >= 1, warmup={warmup} >= 0 and "
                     f"block={block} >= 1")
  out = {name: {"times": [], "cpu_s": 0.0, "first_step_s": None}
         for name in arms}
  for name, fn in arms.items():
    for i in range(warmup):
      t = time.perf_counter()
      fn()
      if i == 0:
        out[name]["first_step_s"] = time.perf_counter() - t
      if on_warmup is not None:
        on_warmup(name, i)
  load = []
  while any(len(o["times"]) < steps for o in out.values()):
    load.append(os.getloadavg()[0])
    for name, fn in arms.items():
      for _ in range(min(block, steps - len(out[name]["times"]))):
        c, t = time.process_time(), time.perf_counter()
        fn()
        out[name]["times"].append(time.perf_counter() - t)
        out[name]["cpu_s"] += time.process_time() - c
  for o in out.values():
    o["cpu_utilization"] = o.pop("cpu_s") / sum(o["times"])
  out["_load"] = load
  return out


def summarize(times: list[float], batch_size: int) -> dict[str, Any]:
  """Median step time, images/s from it, and the spread."""
  q = np.percentile(times, [10, 25, 75, 90])
  median = statistics.median(times)
  return {
      "steps": len(times),
      "median_step_s": median,
      "images_per_sec": batch_size / median,
      "mean_step_s": statistics.fmean(times),
      "p10_step_s": float(q[0]), "p25_step_s": float(q[1]),
      "p75_step_s": float(q[2]), "p90_step_s": float(q[3]),
      "min_step_s": min(times), "max_step_s": max(times),
  }


def ratios(result: Mapping[str, Any], method: str) -> dict[str, float]:
  """The step-time and images/s ratios between the arms of ``result``."""
  ours = result["ours"]
  out = {f"ours_{method}_over_vanilla_step_time":
         ours[method]["median_step_s"] / ours["vanilla"]["median_step_s"]}
  if "torch" in result:
    torch_ = result["torch"]
    out[f"torch_{method}_over_vanilla_step_time"] = (
        torch_[method]["median_step_s"] / torch_["vanilla"]["median_step_s"])
    for arm in (method, "vanilla"):
      out[f"ours_over_torch_images_per_sec_{arm}"] = (
          ours[arm]["images_per_sec"] / torch_[arm]["images_per_sec"])
  return out


def _time_once(fn: Callable[[], Any]) -> float:
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def interleave(calls: Mapping[str, Callable[[], Any]], reps: int
               ) -> dict[str, float]:
  """Median seconds per call: one untimed (compiling) call each, then
  ``reps`` rounds in which every call takes its turn, as the steps do."""
  for call in calls.values():
    jax.block_until_ready(call())  # compile / warm up
  samples: dict[str, list[float]] = {k: [] for k in calls}
  for _ in range(reps):
    for k, call in calls.items():
      samples[k].append(_time_once(call))
  return {k: statistics.median(v) for k, v in samples.items()}


def write_json(result: Mapping[str, Any], out: Optional[str]) -> None:
  """Prints ``result`` as one JSON line; writes it indented to ``out``."""
  print(json.dumps(result))
  if out:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")


def breakdown(arms: Mapping[str, JaxArm], reps: int,
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
    # train_lib.train_step's loss, without its metrics.
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
  out = {f"{k}_s": v for k, v in interleave(fns, reps).items()}
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


def _binary_conv(x, w, operand_dtype=None):
  return layers.binary_conv_general(x, w, (1, 1), ((1, 1), (1, 1)),
                                    operand_dtype)


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
  ``compare_torch``, also PyTorch's (NCHW; the
  backward through ``aten.convolution_backward``, which autograd calls).
  Medians of ``reps``.
  """
  if compare_torch:
    import torch  # pylint: disable=g-import-not-at-top
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
    xj, wj, gj = (jnp.asarray(a, dtype) for a in (x, w, g))

    def three(conv):
      return {
          "forward": conv,
          "input_grad": (
              lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
          "kernel_grad": (
              lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]),
      }

    options = dict(compiler_options) if compiler_options else None
    if options:
      # As the fast path runs them: +-1 operands read in bfloat16.
      fast = functools.partial(_binary_conv, operand_dtype=jnp.bfloat16)
      fns = {k: jax.jit(f, compiler_options=options)
             for k, f in three(fast).items()}
      fns.update({f"portable_{k}": jax.jit(f)
                  for k, f in three(_binary_conv).items()})
    else:
      fns = {k: jax.jit(f) for k, f in three(_binary_conv).items()}
    calls = {k: (functools.partial(f, xj, wj) if k.endswith("forward") else
                 functools.partial(f, xj, wj, gj)) for k, f in fns.items()}
    if compare_torch:
      xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
      wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
      gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())

      def torch_backward(mask, xt=xt, wt=wt, gt=gt):
        return torch.ops.aten.convolution_backward(
            gt, xt, wt, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

      calls.update({
          "torch_forward": functools.partial(
              torch.nn.functional.conv2d, xt, wt, None, 1, 1),
          "torch_input_grad": functools.partial(
              torch_backward, [True, False, False]),
          "torch_kernel_grad": functools.partial(
              torch_backward, [False, True, False]),
      })
    stage = {f"{k}_s": v for k, v in interleave(calls, reps).items()}
    out[f"{size}x{size}x{channels}"] = stage
    totals["ours"] += _CONVS_PER_STAGE * sum(
        stage[f"{k}_s"] for k in ("forward", "input_grad", "kernel_grad"))
    if compare_torch:
      totals["torch"] += _CONVS_PER_STAGE * sum(
          stage[f"torch_{k}_s"]
          for k in ("forward", "input_grad", "kernel_grad"))
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


def _hlo_instructions(hlo_text: str) -> dict[str, str]:
  """Instruction name -> its line plus the body of the computation it calls."""
  computations: dict[str, list[str]] = {}
  lines: dict[str, str] = {}
  current = None
  for line in hlo_text.splitlines():
    if line and not line.startswith(" ") and line.rstrip().endswith("{"):
      current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      computations[current] = []
      continue
    if current is not None:
      computations[current].append(line)
    stripped = line.strip().removeprefix("ROOT ")
    if stripped.startswith("%") and " = " in stripped:
      name, rest = stripped[1:].split(" = ", 1)
      lines[name] = rest
  out = {}
  for name, rest in lines.items():
    body = rest
    if "calls=%" in rest:
      called = rest.split("calls=%", 1)[1].split(",", 1)[0].split()[0]
      body += "\n" + "\n".join(computations.get(called, []))
    out[name] = body
  return out


def _op_category(name: str, body: str) -> str:
  """Coarse kind of one compiled op, from its name and HLO."""
  if "convolution(" in body:
    window = re.search(r"window=\{size=([0-9x]+)", body)
    sizes = [int(v) for v in window.group(1).split("x")] if window else []
    # The kernel gradient convolves the input with the output gradient: its
    # window is the feature map, not the 3x3 (or 1x1) kernel. (XLA builds it
    # anew, without the op_name metadata the other two keep.)
    if any(v > 3 for v in sizes):
      return "convolution: kernel gradient"
    if "transpose(jvp(" in body:
      return "convolution: input gradient"
    return "convolution: forward"
  if " dot(" in body:
    return "dot"
  # XLA names an op for its root: a fusion rooted at a transpose or copy
  # moves data between layouts (elementwise producers fused into it).
  if "transpose" in name or "copy" in name:
    return "layout: transpose / copy"
  if "reduce(" in body or "reduce-window(" in body:
    return "reductions (BatchNorm, normalisation, loss, AGS norms)"
  return "elementwise and other"


def profile_step(arm: JaxArm, steps: int, top: int = 12) -> dict[str, Any]:
  """Per-op time of our jitted step, from a `jax.profiler` trace.

  Traces ``steps`` steps, reads the XLA:CPU ops' start and end events from
  the compute threads, sums each op's start-to-end time, then per category
  (the compiled HLO says what each op is). Ops run concurrently on the
  threads, so the op times add up to more than the wall time.

  Returns:
    wall_per_step_s (while tracing), op_time_per_step_s, per-category
    seconds and shares, the ``top`` slowest ops, and unattributed_s (events
    not named for an op of the step).
  """
  import tempfile  # pylint: disable=g-import-not-at-top
  hlo = arm.step_fn.lower(arm.state, arm.batch).compile().as_text()
  bodies = _hlo_instructions(hlo)
  arm()  # warm
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    with jax.profiler.trace(tmp):
      for _ in range(steps):
        arm()
    wall = (time.perf_counter() - start) / steps
    traces = sorted(Path(tmp).rglob("*.xplane.pb"))
    if not traces:
      raise RuntimeError(f"jax.profiler wrote no trace under {tmp}")
    data = jax.profiler.ProfileData.from_file(str(traces[0]))
  # XLA:CPU marks each op with an event at its start and an "end: <op>"
  # event when it completes; convolutions run asynchronously on the
  # intra-op pool, so their own event covers only the launch. An op's time
  # is from its start to its end marker.
  starts: dict[str, list[int]] = {}
  ends: dict[str, list[int]] = {}
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):
        continue  # the compute threads run the ops
      for event in line.events:
        if event.name.startswith("end: "):
          ends.setdefault(event.name[5:], []).append(event.start_ns)
        elif not event.name.startswith(("ThunkExecutor", "ThreadpoolListener")):
          starts.setdefault(event.name, []).append(event.start_ns)
  per_op: dict[str, float] = {}
  unattributed = 0.0
  for name, op_starts in starts.items():
    op_ends = sorted(ends.get(name, []))
    total = 0.0
    for start_ns in sorted(op_starts):
      end_ns = next((e for e in op_ends if e >= start_ns), None)
      if end_ns is not None:
        op_ends.remove(end_ns)
        total += (end_ns - start_ns) * 1e-9 / steps
    if name in bodies:
      per_op[name] = total
    else:
      unattributed += total
  categories: dict[str, float] = {}
  for name, seconds in per_op.items():
    kind = _op_category(name, bodies[name])
    categories[kind] = categories.get(kind, 0.0) + seconds
  busy = sum(categories.values())  # op time, summed over threads
  slowest = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
  return {
      "steps": steps,
      "wall_per_step_s": wall,
      "op_time_per_step_s": busy,
      "categories_s": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
      "categories_share": {k: v / busy for k, v in sorted(
          categories.items(), key=lambda kv: -kv[1])},
      "slowest_ops": [{"op": name, "op_time_s": seconds,
                       "category": _op_category(name, bodies[name]),
                       "hlo": bodies[name].split("\n", 1)[0][:160]}
                      for name, seconds in slowest],
      "unattributed_s": unattributed,
      "note": ("seconds per step of the XLA:CPU ops, each from its start "
               "event to its 'end:' event on the compute threads of a "
               "jax.profiler trace, grouped by what the compiled HLO says "
               "each op is; ops run concurrently on the threads, so their "
               "sum exceeds the wall time"),
  }


# ----------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
  import flax  # pylint: disable=g-import-not-at-top
  info = {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": _jaxlib_version(),
      "flax": flax.__version__,
      "optax": optax.__version__,
      "platform": platform.platform(),
      "cpu_count": os.cpu_count(),
      "cpu_model": _cpu_model(),
      "jax_devices": [str(d) for d in jax.devices()],
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  return info


def _jaxlib_version() -> Optional[str]:
  try:
    import jaxlib  # pylint: disable=g-import-not-at-top
    return jaxlib.__version__
  except (ImportError, AttributeError):
    return None


def _cpu_model() -> Optional[str]:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return None


def run(model: str = "cresnet20_1w1a", method: str = "ovsw",
        batch_size: int = 128, image_size: int = 32, steps: int = 30,
        warmup: int = 3, block: int = 3, half_precision: bool = False,
        compare_torch: bool = False, torch_threads: int = 2,
        torch_sign: str = "reference", breakdown_reps: int = 10,
        seed: int = 0, model_options: Optional[Mapping[str, Any]] = None,
        profile_steps: int = 0,
        log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
  """Runs the benchmark; returns the result (see the module docstring).

  Args:
    model, method, batch_size, image_size, half_precision, seed: the run.
    model_options: `config.model_options` (e.g. a smaller ``stage_sizes``
      for tests); not with ``compare_torch``, whose network is fixed.
    steps: timed steps per arm.
    warmup: untimed steps per arm before (at least 1: it compiles).
    block: consecutive steps of one arm per turn.
    compare_torch: also time the PyTorch reference step.
    torch_threads: `torch.set_num_threads`.
    torch_sign: how PyTorch binarizes: 'reference' (torch.sign, 0 -> 0: the
      reference's cost) or 'ovsw_jax' (0 -> +1: the same values as ours).
    breakdown_reps: calls per function of the breakdown; 0: none.
    profile_steps: steps of ``method``'s step to trace for `profile_step`
      (and of its portable twin, when there is one); 0: none.
    log: progress messages.

  Returns:
    The JSON-able result.
  """
  load_start = os.getloadavg()
  if warmup < 1:
    raise ValueError(f"--warmup={warmup} must be >= 1: the first step "
                     "compiles and must not be timed")
  parts = train_lib.method_parts(method)  # Raises on an unknown method.
  if compare_torch and model_options:
    raise ValueError(
        f"model_options={dict(model_options)} cannot be used with "
        "compare_torch: the PyTorch network is the reference's, unchanged")
  methods = [method] if method == "vanilla" else [method, "vanilla"]
  mesh = parallel.create_mesh()
  configs = {m: make_config(model, m, batch_size, image_size, half_precision,
                            seed, model_options) for m in methods}
  num_classes = train_lib.create_experiment(configs[method]).info.num_classes
  batch = make_batch(batch_size, image_size, num_classes, seed)
  info = machine_info()

  variables, torch_steps = None, {}
  if compare_torch:
    log("building the PyTorch steps")
    torch_steps, variables, torch_info = _torch_arms(
        model, num_classes, parts, method, configs[method], batch,
        torch_threads, torch_sign, seed)
    info.update(torch_info)

  log(f"building our steps for {methods}")
  jax_arms = {m: JaxArm(configs[m], batch, mesh, variables) for m in methods}
  fast_options = parallel.compiler_options(mesh)
  if fast_options is not None:
    # The same step compiled with XLA's defaults, timed side by side: what
    # the CPU fast path (parallel.CPU_COMPILER_OPTIONS) is worth.
    portable = ml_collections.ConfigDict(configs[method])
    portable.cpu_fast_path = False
    jax_arms[f"{method}_portable"] = JaxArm(portable, batch, mesh, variables)
  arms: dict[str, Callable[[], Any]] = {
      f"ours/{m}": arm for m, arm in jax_arms.items()}
  arms.update({f"torch/{m}": fn for m, fn in torch_steps.items()})

  first_losses: dict[str, float] = {}
  torch_phase: dict[str, list[dict[str, float]]] = {m: [] for m in torch_steps}

  def on_warmup(name, i):
    if i == 0:
      first_losses[name] = _arm_loss(name, jax_arms, torch_steps)
      log(f"{name}: first step done, loss {first_losses[name]:.6f}")

  log(f"timing {list(arms)}: {warmup} warmup + {steps} steps each, blocks of "
      f"{block}")
  timed = time_interleaved(
      {k: _recording(k, fn, torch_steps, torch_phase)
       for k, fn in arms.items()}, steps, warmup, block, on_warmup)
  load_samples = timed.pop("_load")

  result: dict[str, Any] = {
      "benchmark": "train_step",
      "config": {"model": model, "method": method, "batch_size": batch_size,
                 "image_size": image_size, "half_precision": half_precision,
                 "steps": steps, "warmup": warmup, "block": block,
                 "seed": seed, "devices": len(mesh.devices.flat),
                 "model_options": dict(model_options or {}),
                 "start": "weights converted from the PyTorch model"
                          if compare_torch else "the model's init"},
      "data": DATA_NOTE,
      "timing": ("per-step wall time to block_until_ready; arms interleaved "
                 f"in blocks of {block}; images_per_sec = batch_size / "
                 "median step time"),
  }
  for side in ("ours", "torch"):
    names = [k for k in timed if k.startswith(side + "/")]
    if not names:
      continue
    result[side] = {}
    for k in names:
      m = k.split("/", 1)[1]
      entry = summarize(timed[k]["times"], batch_size)
      entry["cpu_utilization"] = timed[k]["cpu_utilization"]
      entry["first_step_s"] = timed[k]["first_step_s"]
      entry["first_loss"] = first_losses[k]
      entry["last_loss"] = _arm_loss(k, jax_arms, torch_steps)
      entry["times_s"] = timed[k]["times"]
      result[side][m] = entry
  if compare_torch:
    # The phases of the timed steps (the warmup ones are recorded first).
    result["torch_phases_median_s"] = {
        m: {p: statistics.median(r[p] for r in rows[warmup:])
            for p in rows[0]}
        for m, rows in torch_phase.items()}
    result["torch_note"] = (
        f"eager float32, torch.set_num_threads({torch_threads}); AGS/SAD as "
        "per-layer Python loops after backward (benchmarks/torch_step.py); "
        "phases: forward (+loss), backward (+zero_grad), hooks (AGS/SAD), "
        "optimizer (SGD step + top-1/5)")
  first = list(first_losses.values())
  result["first_loss_spread"] = max(first) - min(first)
  result["first_loss_note"] = (
      "every arm starts from the same weights and batch, so their first "
      "losses agree, unless rounding flips the sign of a value that is 0 in "
      "exact arithmetic (binary convs' outputs are discrete, so BatchNorm "
      "can output exact zeros)"
      + ("; or where an activation is exactly 0, which torch.sign maps to 0 "
         "and ovsw_jax to +1 (--torch_sign=ovsw_jax makes that agree)"
         if compare_torch and torch_sign == "reference" else ""))
  result["ratios"] = ratios(result, method)
  result["cpu_fast_path"] = {"compiler_options": fast_options}
  if fast_options is not None:
    result["cpu_fast_path"]["images_per_sec_over_portable"] = (
        result["ours"][method]["images_per_sec"]
        / result["ours"][f"{method}_portable"]["images_per_sec"])
  if method != "vanilla":
    overhead = result["ratios"][f"ours_{method}_over_vanilla_step_time"] - 1
    result["targets"] = {
        f"{method}_overhead_max": TARGET_OVSW_OVERHEAD,
        f"{method}_overhead": overhead,
        f"{method}_overhead_met": bool(overhead <= TARGET_OVSW_OVERHEAD)}
    if compare_torch:
      speedup = result["ratios"][f"ours_over_torch_images_per_sec_{method}"]
      result["targets"].update({
          "ours_over_torch_min": TARGET_OURS_OVER_TORCH,
          "ours_over_torch": speedup,
          "ours_over_torch_met": bool(speedup >= TARGET_OURS_OVER_TORCH)})

  if breakdown_reps > 0:
    log(f"breakdown: {breakdown_reps} reps each")
    result["breakdown"] = breakdown({m: jax_arms[m] for m in methods},
                                    breakdown_reps, fast_options)
    step_s = {m: result["ours"][m]["median_step_s"] for m in methods}
    result["breakdown"]["full_step_s"] = step_s
    if models.canonical_name(model) == "cresnet20_1w1a":
      result["breakdown"]["binary_convs"] = conv_breakdown(
          batch_size, image_size,
          jnp.bfloat16 if half_precision else jnp.float32, breakdown_reps,
          compare_torch, fast_options)
  if profile_steps > 0:
    log(f"profiling {profile_steps} steps")
    result["profile"] = {m: profile_step(jax_arms[m], profile_steps)
                         for m in jax_arms if m != "vanilla"}
  info["loadavg_start"] = list(load_start)
  info["loadavg_end"] = list(os.getloadavg())
  info["loadavg_1min_per_round"] = load_samples
  result["machine"] = info
  return result


def _arm_loss(name, jax_arms, torch_steps) -> float:
  side, m = name.split("/", 1)
  if side == "ours":
    return jax_arms[m].loss()
  return torch_steps[m].last_loss


def _recording(name, fn, torch_steps, torch_phase):
  """``fn``, plus, for a PyTorch arm, its phase times after each call."""
  side, m = name.split("/", 1)
  if side != "torch":
    return fn

  def call():
    fn()
    torch_phase[m].append(dict(torch_steps[m].step.times))
  return call


class _TorchArm:
  """A `torch_step.TorchStep` on a fixed batch, keeping its last loss."""

  def __init__(self, step, images, labels):
    self.step, self.images, self.labels = step, images, labels
    self.last_loss = float("nan")

  def __call__(self):
    self.last_loss = self.step(self.images, self.labels)["loss"]


def _torch_arms(model, num_classes, parts, method, config, batch, threads,
                sign, seed):
  """PyTorch arms for ``method`` and vanilla, their common start (as Flax
  variables) and version info."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_step  # pylint: disable=g-import-not-at-top
  from ovsw_jax import convert  # pylint: disable=g-import-not-at-top

  torch_step.method_flags(parts)  # Fail before building anything.
  torch.set_num_threads(threads)
  net = torch_step.build_model(model, num_classes, seed, sign)
  variables = convert.convert_state_dict(model, net.state_dict(), num_classes)
  lr = float(train_lib.create_experiment(config).learning_rate_fn(0))
  images = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy())
  labels = torch.from_numpy(batch["label"].astype(np.int64))
  steps = {}
  for m, m_parts in ((method, parts), ("vanilla", [])):
    if m in steps:
      continue
    step = torch_step.TorchStep(
        torch_step.copy_model(net), m_parts, learning_rate=lr,
        momentum=config.momentum, weight_decay=config.weight_decay,
        delta=config.delta, dampen_weight=config.dampen_weight,
        track_momentum=config.track_momentum,
        track_threshold=config.track_threshold)
    steps[m] = _TorchArm(step, images, labels)
  info = {"torch": torch.__version__, "torch_num_threads":
          torch.get_num_threads(), "torch_learning_rate": lr,
          "torch_sign": sign}
  return steps, variables, info


def main(argv=None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="cresnet20_1w1a",
                      choices=models.list_models())
  parser.add_argument("--method", default="ovsw",
                      help="config.method, e.g. ovsw, ags, sad, vanilla")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=30,
                      help="timed steps per arm")
  parser.add_argument("--warmup", type=int, default=3,
                      help="untimed steps per arm (the first compiles)")
  parser.add_argument("--block", type=int, default=3,
                      help="consecutive steps of one arm per turn")
  parser.add_argument("--half_precision", action="store_true",
                      help="bfloat16 compute in our model (PyTorch stays "
                           "float32)")
  parser.add_argument("--compare_torch", action="store_true")
  parser.add_argument("--torch_threads", type=int, default=2)
  parser.add_argument("--torch_sign", default="reference",
                      choices=("reference", "ovsw_jax"),
                      help="PyTorch's binarization: torch.sign (0 -> 0, the "
                           "reference's) or 0 -> +1 (ovsw_jax's values)")
  parser.add_argument("--breakdown_reps", type=int, default=10,
                      help="calls per breakdown function; 0: no breakdown")
  parser.add_argument("--profile_steps", type=int, default=0,
                      help="steps to trace for the per-op profile; 0: none")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None,
                      help="write the JSON here (default: print only)")
  args = parser.parse_args(argv)
  result = run(model=args.model, method=args.method,
               batch_size=args.batch_size, image_size=args.image_size,
               steps=args.steps, warmup=args.warmup, block=args.block,
               half_precision=args.half_precision,
               compare_torch=args.compare_torch,
               torch_threads=args.torch_threads,
               torch_sign=args.torch_sign,
               breakdown_reps=args.breakdown_reps, seed=args.seed,
               profile_steps=args.profile_steps,
               log=lambda s: print(s, file=sys.stderr, flush=True))
  write_json(result, args.out)
  return result


if __name__ == "__main__":
  main()
