"""Trains or evaluates a binary network with OvSW.

  python train.py --config=configs/cifar10_resnet20.py --workdir=/tmp/r20

Any config field can be overridden, e.g. ``--config.batch_size=128``. Running
the same command again resumes from the latest checkpoint in --workdir.
Multi-host: run one process per host with --coordinator_address,
--num_processes and --process_id (or the JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID environment variables), or
--distributed_auto on a managed cluster (TPU pod, SLURM, ...).
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0, for a multi-process run.")
flags.DEFINE_integer("num_processes", None, "Number of processes.")
flags.DEFINE_integer("process_id", None, "Index of this process.")
flags.DEFINE_bool("distributed_auto", False,
                  "Let jax.distributed detect the cluster (TPU pod, SLURM).")
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py).",
    lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str) -> None:
  """Exits with status 1 and a one-line message, no traceback."""
  line = " ".join(message.split())
  print(f"error: {line}", file=sys.stderr, flush=True)
  sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; a bad ``--config.KEY`` override gives one clear line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}\nPass --helpfull to list the flags.", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, ValueError, TypeError) as e:
    # config_flags applies --config.KEY=VALUE overrides while parsing and
    # raises a bare AttributeError/KeyError for an unknown KEY.
    from ovsw_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
    valid = sorted(config_lib.CONFIG_KEYS)
    keys = [a.split("=", 1)[0][len("--config."):] for a in argv
            if a.startswith("--config.")]
    unknown = [k for k in keys if k.split(".", 1)[0] not in valid]
    nested = [k for k in keys if "." in k and k not in unknown]
    if unknown:
      print(f"error: unknown config key {unknown[0]!r}; valid keys: "
            f"{', '.join(valid)}", file=sys.stderr)
    elif nested and isinstance(e, (AttributeError, KeyError)):
      top, key = nested[0].split(".", 1)
      print(f"error: config.{top} has no key {key!r}; to add keys, set the "
            f"whole dict, e.g. --config.{top}=\"{{'{key}': VALUE}}\"",
            file=sys.stderr)
    else:
      print(f"error: bad --config value: {type(e).__name__}: {e}",
            file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  # Imported here so that --help stays fast and jax.distributed is set up
  # before anything initialises the JAX backends.
  from ovsw_jax import data  # pylint: disable=g-import-not-at-top
  from ovsw_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from ovsw_jax.training import loop  # pylint: disable=g-import-not-at-top
  from ovsw_jax.training import mesh  # pylint: disable=g-import-not-at-top

  checkpointing.quiet_orbax_logs()
  mesh.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                              FLAGS.process_id, auto=FLAGS.distributed_auto)
  try:
    result = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (data.DataNotFoundError, ValueError, FloatingPointError,
          FileNotFoundError, RuntimeError) as e:
    # Bad input, missing data, a diverged run: the message says what to do,
    # a traceback would bury it (--verbosity=1 shows it).
    if logging.get_verbosity() >= logging.DEBUG:
      raise
    _fail(str(e))
  # One machine-readable line for scripts (and README's figure check).
  keys = ("step", "preempted", "eval_top1", "eval_top5", "eval_count",
          "wall_time_s")
  print("RESULT " + json.dumps({k: float(result[k]) if k.startswith(
      ("eval_top", "wall")) else result[k] for k in keys if k in result}),
        flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
