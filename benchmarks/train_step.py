"""Images/s of the real jitted train step, OvSW against vanilla (and PyTorch).

  python -m benchmarks.train_step --model=cresnet20_1w1a --method=ovsw \
      --batch_size=128 --steps=30 --warmup=3 [--compare_torch] \
      [--half_precision] [--profile_steps=5] \
      [--out=benchmarks/results/train_step.json]

Times the step that `ovsw_jax.training.loop.train_and_evaluate` runs, built
the way it builds it (`benchmarks.lib.arms.JaxArm`: `create_experiment`,
`create_train_state`, `jit_train_step` over `mesh.create_mesh()`, the batch
placed with `mesh.shard_batch`), for ``--method`` and for 'vanilla' in the
same process. The data are synthetic and one batch stays on the device for
every step, so the input pipeline is NOT measured: this is the step alone.
On CPU the trainer compiles its step with
`ovsw_jax.training.cpu_fast_path.CPU_COMPILER_OPTIONS` (the CPU fast path);
the arm '<method>_portable' is the same step compiled with XLA's defaults,
timed beside it.

With ``--compare_torch`` it also times the reference's step in PyTorch
(`benchmarks.lib.torch_step`: eager, float32, ``torch.set_num_threads``
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

``breakdown`` (`benchmarks.lib.breakdown`) times, with separately jitted
functions on the same batch and params: the forward (train mode, loss), forward + backward
(`jax.value_and_grad`), and each method's optimizer update
(``tx.update`` + `optax.apply_updates`); for cResNet20 also the three
convolutions of one binary conv per stage shape (forward, input gradient,
kernel gradient; PyTorch's too with ``--compare_torch``). PyTorch's step is
split into phases (forward, backward, AGS/SAD hooks, optimizer).

``--profile_steps`` traces that many steps with `jax.profiler` and reports
where the time goes, per XLA op and per kind of op
(`benchmarks.lib.profiling`): convolutions (forward, input gradient, kernel
gradient), layout transposes, reductions, elementwise fusions.

Prints one JSON line; writes it (indented) to ``--out`` when given. The run
itself is `benchmarks.lib.step_comparison.run`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks.lib import results
from benchmarks.lib import step_comparison
from ovsw_jax import models
# pylint: enable=g-import-not-at-top,wrong-import-position


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
  result = step_comparison.run(model=args.model, method=args.method,
               batch_size=args.batch_size, image_size=args.image_size,
               steps=args.steps, warmup=args.warmup, block=args.block,
               half_precision=args.half_precision,
               compare_torch=args.compare_torch,
               torch_threads=args.torch_threads,
               torch_sign=args.torch_sign,
               breakdown_reps=args.breakdown_reps, seed=args.seed,
               profile_steps=args.profile_steps,
               log=lambda s: print(s, file=sys.stderr, flush=True))
  results.write_json(result, args.out)
  return result


if __name__ == "__main__":
  main()
