"""One command for a GPU or TPU: ours against the reference's PyTorch there.

  python -m benchmarks.accelerator --budget_s=1800 \
      --data_dir=/path/holding/cifar-10-batches-bin

Runs on whatever JAX sees (GPU, TPU, or the CPU, where ``--size=tiny``
keeps it short), in one process, within ``--budget_s`` seconds (shared out
30/25/45% between the three parts below, or ``--shares``; a part that runs
short leaves its time to the next; compiles are part of the budget). It
measures:

1. step speed (`benchmarks.lib.accelerator_step`): our jitted train step in
   float32 and bfloat16 against the reference's PyTorch step on torch's
   device (CUDA when torch sees a GPU: eager float32 and the reference's
   float16 autocast), interleaved, at batch 256 and 1024;
2. the training loop's images/s (`benchmarks.lib.accelerator_loop`): the
   trainer on real CIFAR-10 with host input and with device-resident input,
   against the step alone: the share of an epoch that goes to input;
3. time to accuracy (`benchmarks.lib.time_to_accuracy`): the CIFAR-10
   ResNet-20 recipe shortened to the epochs that fit, ours and PyTorch's
   side by side, test top-1 per epoch, wall time, 600 epochs projected;

and records the devices, versions and clocks (before and after). Writes
``<out_dir>/<device>.json`` (e.g. nvidia-h200.json, cpu.json) and a PNG
beside it. ``--deterministic`` runs everything with XLA's GPU determinism
flags (`ovsw_jax.training.determinism`): run once with and once without to
see what determinism costs on a GPU.

Needs only jax, flax, optax, orbax, grain, torch and numpy/matplotlib, and
the CIFAR-10 binaries (``--data_dir``); no network.
"""

from __future__ import annotations

import time

_PROCESS_START = time.perf_counter()  # The budget counts the imports too.

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import os
from pathlib import Path
import sys
from typing import Any, Optional

# Before JAX starts: leave the GPU's memory to torch too, and keep compiled
# steps across the trainer runs of the loop section.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      "/tmp/ovsw_jax_accelerator_compile_cache")

from benchmarks.lib import budget as budget_lib
from benchmarks.lib import device_info
from benchmarks.lib import machine
from benchmarks.lib import results
from ovsw_jax.training import determinism
# pylint: enable=g-import-not-at-top,wrong-import-position

SHARES = {"step_speed": 0.30, "loop": 0.25, "time_to_accuracy": 0.45}
# Per --size: the model's options, step-speed batches, loop and recipe
# batch, training and test images used (None: all), eval batch.
SIZES = {
    "full": {"model_options": {}, "batch_sizes": (256, 1024),
             "batch_size": 256, "train_examples": None,
             "eval_examples": None, "eval_batch_size": 1000},
    "tiny": {"model_options": {"stage_sizes": (1, 1, 1)},
             "batch_sizes": (16, 32), "batch_size": 16,
             "train_examples": 256, "eval_examples": 128,
             "eval_batch_size": 64},
}
DEFAULT_OUT_DIR = Path(__file__).parent / "results" / "accelerator"


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--budget_s", type=float, default=1800.0)
  parser.add_argument("--data_dir", default=None,
                      help="folder holding cifar-10-batches-bin (default: "
                      "$OVSW_DATA_DIR, then ~/.cache/ovsw_jax/data)")
  parser.add_argument("--out_dir", default=str(DEFAULT_OUT_DIR))
  parser.add_argument("--size", choices=sorted(SIZES), default="full")
  parser.add_argument("--batch_sizes", default=None,
                      help="comma-separated step-speed batch sizes")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="the loop's and the recipe's batch size")
  parser.add_argument("--train_examples", type=int, default=None,
                      help="time to accuracy on the first this many "
                      "CIFAR-10 training images (default: all)")
  parser.add_argument("--eval_examples", type=int, default=None,
                      help="... and test images")
  parser.add_argument("--max_epochs", type=int, default=None)
  parser.add_argument("--method", default="ovsw")
  parser.add_argument("--no_torch", action="store_true",
                      help="leave out the PyTorch arms")
  parser.add_argument("--deterministic", action="store_true",
                      help="XLA's GPU determinism flags for the whole run")
  parser.add_argument("--torch_threads", type=int, default=None,
                      help="torch.set_num_threads (default: torch's)")
  parser.add_argument("--shares", default=None,
                      help="the budget's fractions for step speed, loop and "
                      "time to accuracy, e.g. 0.3,0.25,0.45 (the default)")
  args = parser.parse_args(argv)
  if args.budget_s <= 0:
    parser.error(f"--budget_s={args.budget_s} must be > 0")
  if args.shares:
    values = [float(v) for v in args.shares.split(",")]
    if len(values) != 3 or min(values) <= 0 or abs(sum(values) - 1) > 1e-6:
      parser.error(f"--shares={args.shares}: three positive fractions that "
                   "add up to 1, e.g. 0.3,0.25,0.45")
    args.shares = dict(zip(SHARES, values))
  return args


def settings(args: argparse.Namespace) -> dict[str, Any]:
  """The run's settings: --size's, with the flags that override them."""
  out = dict(SIZES[args.size])
  if args.batch_sizes:
    out["batch_sizes"] = tuple(int(b) for b in args.batch_sizes.split(","))
  for key in ("batch_size", "train_examples", "eval_examples"):
    if getattr(args, key) is not None:
      out[key] = getattr(args, key)
  from ovsw_jax.data import cifar  # pylint: disable=g-import-not-at-top
  out.update({"size": args.size, "method": args.method,
              "model": "cresnet20_1w1a", "budget_s": args.budget_s,
              "data_dir": args.data_dir or cifar.default_data_dir(),
              "max_epochs": args.max_epochs,
              "compare_torch": not args.no_torch and torch_reason() is None,
              "torch_left_out": ("--no_torch" if args.no_torch
                                 else torch_reason()),
              "deterministic": args.deterministic,
              "torch_threads": args.torch_threads,
              "shares": args.shares or SHARES})
  return out


def torch_reason() -> Optional[str]:
  """Why the PyTorch arms cannot run on JAX's device (None: they can).

  PyTorch runs on CUDA GPUs and on the CPU here; on any other accelerator
  (a TPU) it would run on the host, which is not a comparison on the same
  device.
  """
  import jax  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  if backend == "cpu":
    return None
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return "torch is not installed"
  if backend == "gpu" and torch.cuda.is_available():
    return None
  return (f"JAX runs on {backend}, torch sees no such device (it would run "
          "on the host CPU)")


def recipe(s: dict[str, Any], subset: bool):
  """configs/cifar10_resnet20.py on the real CIFAR-10 at these settings;
  ``subset``: on the first train_examples / eval_examples images."""
  from configs import cifar10_resnet20  # pylint: disable=g-import-not-at-top
  config = cifar10_resnet20.get_config()
  options = {"download": False}
  if subset and s["train_examples"]:
    options["num_train"] = s["train_examples"]
  if subset and s["eval_examples"]:
    options["num_eval"] = s["eval_examples"]
  config.update({"method": s["method"], "batch_size": s["batch_size"],
                 "eval_batch_size": s["eval_batch_size"],
                 "data_dir": s["data_dir"], "dataset_options": options,
                 "model_options": dict(s["model_options"]),
                 "progress_bar": False, "deterministic": s["deterministic"]})
  return config


def device_entry() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  devices = device_info.jax_devices()
  desc = f"{devices['count']} x {', '.join(devices['kinds'])}"
  if jax.default_backend() == "cpu":
    desc += f" ({machine.cpu_model()})"
  return {"description": desc, "slug": device_info.device_slug(),
          "jax": devices, "torch": device_info.torch_devices()}


def _epoch_estimates(s, step, loop_result, num_train, num_eval):
  """Seconds per epoch (train + eval) of each side, from the step speeds."""
  from benchmarks.lib import accelerator_step  # pylint: disable=g-import-not-at-top
  b = s["batch_size"]
  ours = accelerator_step.ours_step_seconds(step, b)
  if ours is None:  # the loop's step alone (its batch is the recipe's)
    ours = b / loop_result["step_alone"]["images_per_sec"]
  entry = step.get("batch_sizes", {}).get(str(b), {}).get("arms", {})
  torch_arms = [v["median_step_s"] for k, v in entry.items()
                if k.startswith("torch/")]
  torch_s = min(torch_arms) if torch_arms else 3 * ours
  steps = num_train // b
  # An eval image costs about a third of a training image.
  estimate = lambda t: t * (steps + num_eval / b / 3)
  out = {"ours": 1.3 * estimate(ours)}
  if s["compare_torch"]:
    out["torch"] = 1.3 * estimate(torch_s)
  return out


def run(s: dict[str, Any], log=print) -> dict[str, Any]:
  """All parts within ``s['budget_s']``; returns the JSON-able result."""
  from benchmarks.lib import accelerator_loop  # pylint: disable=g-import-not-at-top
  from benchmarks.lib import accelerator_step  # pylint: disable=g-import-not-at-top
  from benchmarks.lib import time_to_accuracy  # pylint: disable=g-import-not-at-top
  from ovsw_jax import data  # pylint: disable=g-import-not-at-top
  budget = budget_lib.Budget(s["budget_s"], s["shares"],
                             start=_PROCESS_START)
  load_start = os.getloadavg()
  result: dict[str, Any] = {
      "benchmark": "accelerator", "config": results.to_json(s),
      "device": device_entry(), "versions": device_info.versions(),
      "clocks": {"start": device_info.clocks()}}
  base = recipe(s, subset=False)
  info = data.get_dataset_info("cifar10", s["data_dir"], download=False)
  short = recipe(s, subset=True)  # time to accuracy
  short_info = data.get_dataset_info("cifar10", s["data_dir"],
                                     **short.dataset_options.to_dict())
  common = dict(model=s["model"], method=s["method"], image_size=32,
                model_options=s["model_options"], seed=0,
                compare_torch=s["compare_torch"], block=2)

  t = time.perf_counter()
  log("step speed")
  step = accelerator_step.step_speed(
      s["batch_sizes"], budget.section_seconds("step_speed"), log, **common)
  result["step_speed"] = step
  budget.record("step_speed", time.perf_counter() - t)

  t = time.perf_counter()
  log("training loop by input")
  alone = step.get("batch_sizes", {}).get(str(s["batch_size"]), {}).get(
      "arms", {}).get("ours/float32")
  step_s = alone["median_step_s"] if alone else 0.05
  result["loop"] = accelerator_loop.loop_speed(
      base, budget.section_seconds("loop"), step_s, info.num_train, log)
  budget.record("loop", time.perf_counter() - t)

  t = time.perf_counter()
  # The recipe's step compiles anew (its schedule is part of the program).
  seconds = budget.section_seconds("time_to_accuracy") - (
      alone["first_step_s"] if alone else 0.0)
  estimates = _epoch_estimates(s, step, result["loop"],
                               short_info.num_train, short_info.num_eval)
  epochs = time_to_accuracy.plan_epochs(seconds, estimates, s["max_epochs"])
  log(f"time to accuracy: {epochs} epochs (estimated {estimates} s each, "
      f"{seconds:.0f} s left)")
  from benchmarks.lib import torch_device  # pylint: disable=g-import-not-at-top
  tta = time_to_accuracy.time_to_accuracy(
      short, epochs, log, s["compare_torch"],
      torch_amp=torch_device.AMP_FLOAT16 in torch_device.precisions(
          torch_device.device()),
      torch_kwargs=dict(s["model_options"]),
      full_split=(info.num_train, info.num_eval))
  tta["epoch_estimates_s"] = estimates
  result["time_to_accuracy"] = tta
  budget.record("time_to_accuracy", time.perf_counter() - t)

  result["clocks"]["end"] = device_info.clocks()
  result["budget"] = budget.summary()
  result["machine"] = {**machine.machine_info(),
                       "loadavg_start": list(load_start),
                       "loadavg_end": list(os.getloadavg())}
  return results.to_json(result)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
  args = parse_args(argv)
  # XLA reads its flags when JAX starts a backend: first.
  determinism.configure(args.deterministic)
  s = settings(args)
  if s["compare_torch"] and args.torch_threads:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(args.torch_threads)
  result = run(s, log=lambda m: print(m, file=sys.stderr, flush=True))
  # How to make this file again, and from which code.
  result = {"command": machine.command_line(
      "benchmarks.accelerator", sys.argv[1:] if argv is None else argv),
            "git_commit": machine.git_commit(), **result}
  out_dir = Path(args.out_dir)
  path = out_dir / f"{result['device']['slug']}.json"
  results.save_json(result, path)
  try:
    from benchmarks.lib import accelerator_plot  # pylint: disable=g-import-not-at-top
    accelerator_plot.plot(result, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png').name}",
          file=sys.stderr)
  except ImportError as e:  # matplotlib is only needed for the figure
    print(f"wrote {path}; no figure ({e}: pip install matplotlib)",
          file=sys.stderr)
  return result


if __name__ == "__main__":
  main()
