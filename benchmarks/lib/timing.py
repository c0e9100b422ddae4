"""The interleaved timer: every arm takes its turn, so load hits all alike.

On a shared machine the load changes while a benchmark runs. Timing arm A's
steps and then arm B's would put any change between the two into their
ratio; running them in turns, a few calls at a time, spreads it over both.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np


def time_interleaved(arms: Mapping[str, Callable[[], Any]], steps: int,
                     warmup: int, block: int,
                     on_warmup: Optional[Callable[[str, int], None]] = None,
                     deadline: Optional[float] = None) -> dict[str, Any]:
  """Runs every arm's calls in turn, ``block`` at a time, timing each call.

  A call's time runs until `jax.block_until_ready` of what it returns (an
  arm that returns None, e.g. a synchronous step, is timed as it runs).

  Args:
    arms: name -> a function running one call.
    steps: timed calls per arm.
    warmup: untimed calls per arm first (compilation happens in the first).
    block: consecutive calls of one arm before the next arm's turn.
    on_warmup: called after each warmup call with (arm, index).
    deadline: a `time.perf_counter()` after which no new round starts once
      every arm has ``min(steps, 3)`` timed calls; None: all ``steps``.

  Returns:
    name -> {'times': per-call seconds, 'cpu_utilization': process CPU
    seconds / wall seconds over its timed calls, 'first_step_s': wall time
    of the first call (compile included), None without warmup}; plus, under
    the key '_load', the 1-minute load average sampled before every round.
  """
  if steps < 1 or warmup < 0 or block < 1:
    raise ValueError(f"steps={steps} must be >= 1, warmup={warmup} >= 0 and "
                     f"block={block} >= 1")
  out = {name: {"times": [], "cpu_s": 0.0, "first_step_s": None}
         for name in arms}
  for name, fn in arms.items():
    for i in range(warmup):
      t = time.perf_counter()
      jax.block_until_ready(fn())
      if i == 0:
        out[name]["first_step_s"] = time.perf_counter() - t
      if on_warmup is not None:
        on_warmup(name, i)
  load = []
  while any(len(o["times"]) < steps for o in out.values()):
    if (deadline is not None and time.perf_counter() > deadline
        and all(len(o["times"]) >= min(steps, 3) for o in out.values())):
      break
    load.append(os.getloadavg()[0])
    for name, fn in arms.items():
      for _ in range(min(block, steps - len(out[name]["times"]))):
        c, t = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn())
        out[name]["times"].append(time.perf_counter() - t)
        out[name]["cpu_s"] += time.process_time() - c
  for o in out.values():
    o["cpu_utilization"] = o.pop("cpu_s") / sum(o["times"])
  out["_load"] = load
  return out


def interleave(calls: Mapping[str, Callable[[], Any]], reps: int
               ) -> dict[str, float]:
  """Median seconds per call: one untimed (compiling) call each, then
  ``reps`` rounds in which every call takes its turn."""
  timed = time_interleaved(calls, steps=reps, warmup=1, block=1)
  timed.pop("_load")
  return {k: statistics.median(v["times"]) for k, v in timed.items()}


def summarize(times: Sequence[float], batch_size: int) -> dict[str, Any]:
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


def summarize_ms(times_s: Sequence[float]) -> dict[str, Any]:
  """Median, p10/p90, mean, min of per-call seconds, in ms."""
  ms = np.asarray(times_s, np.float64) * 1e3
  return {"reps": len(ms), "median_ms": float(np.median(ms)),
          "p10_ms": float(np.percentile(ms, 10)),
          "p90_ms": float(np.percentile(ms, 90)),
          "mean_ms": float(ms.mean()), "min_ms": float(ms.min())}
