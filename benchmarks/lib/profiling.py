"""Per-op time of our jitted train step, from a `jax.profiler` trace.

The trace's XLA:CPU events name each op; the compiled HLO says what each op
is (a convolution and which of its three, a layout transpose, a reduction,
an elementwise fusion), so the step's time can be grouped by kind.
"""

from __future__ import annotations

from pathlib import Path
import re
import tempfile
import time
from typing import Any

import jax

from benchmarks.lib import arms as arms_lib


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


def _trace(arm: arms_lib.JaxArm, steps: int
           ) -> tuple[float, dict[str, list[int]], dict[str, list[int]]]:
  """Wall seconds per step while tracing, and each op's start and end times.

  XLA:CPU marks each op with an event at its start and an "end: <op>"
  event when it completes; convolutions run asynchronously on the intra-op
  pool, so their own event covers only the launch.
  """
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
  return wall, starts, ends


def _op_seconds(op_starts: list[int], op_ends: list[int], steps: int
                ) -> float:
  """Seconds per step of one op: each start to the first end after it."""
  op_ends = sorted(op_ends)
  total = 0.0
  for start_ns in sorted(op_starts):
    end_ns = next((e for e in op_ends if e >= start_ns), None)
    if end_ns is not None:
      op_ends.remove(end_ns)
      total += (end_ns - start_ns) * 1e-9 / steps
  return total


def profile_step(arm: arms_lib.JaxArm, steps: int, top: int = 12
                 ) -> dict[str, Any]:
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
  hlo = arm.step_fn.lower(arm.state, arm.batch).compile().as_text()
  bodies = _hlo_instructions(hlo)
  wall, starts, ends = _trace(arm, steps)
  per_op: dict[str, float] = {}
  unattributed = 0.0
  for name, op_starts in starts.items():
    total = _op_seconds(op_starts, ends.get(name, []), steps)
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
  by_time = sorted(categories.items(), key=lambda kv: -kv[1])
  return {
      "steps": steps,
      "wall_per_step_s": wall,
      "op_time_per_step_s": busy,
      "categories_s": dict(by_time),
      "categories_share": {k: v / busy for k, v in by_time},
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
