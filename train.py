"""Trains or evaluates a binary network with OvSW.

  python train.py --config=configs/cifar10_resnet20.py --workdir=/tmp/r20

Any config field can be overridden, e.g. ``--config.batch_size=128``; the
fields and what they do: ovsw_jax/training/config.py. Running the same
command again resumes from the latest checkpoint in --workdir (a changed
field that changes training needs --config.allow_config_change=True).
Multi-host: run one process per host with --coordinator_address,
--num_processes and --process_id (or the JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID environment variables), or
--distributed_auto on a managed cluster (TPU pod, SLURM, ...).

Models (--config.model; docs/models.md):
  binary        cresnet20_1w1a, cresnet18_1w1a, vggsmall_1w1a,
                resnet18_1w1a, resnet34_1w1a, reactnet_a, reactnet_a_cifar,
                react_resnet18, react_resnet34, react_resnet18_cifar
  real-valued   resnet18, resnet34, resnet18_cifar, resnet34_cifar
Methods (--config.method, parts joined by '+', e.g. ovsw+adam;
docs/training.md): adabin, adam, ags, bop, irnet, lars, ovsw (= ags+sad),
rbnn, recu, sad, sgd, vanilla

Datasets (--config.dataset) and their options
(--config.dataset_options.KEY=VALUE; docs/imagefolder.md, ovsw_jax.data):
  cifar10, cifar100   download, downloader, augment, num_train, num_eval
  digits              augment, num_eval
  synthetic           image_shape, num_classes, num_train, num_eval,
                      data_seed, augment, pad, flip
  imagenet2012, tfds:<name>  (TFDS array_record)
                      image_size, train_split, eval_split, image_key,
                      label_key, num_classes, train_augment, augment,
                      min_scale, lighting, mean, std, decoder,
                      device_normalize
  imagefolder         (--config.data_dir holds train/<class>/, val/<class>/)
                      image_size, train_split, eval_split, classes,
                      eval_labels, skip_corrupt, augment, min_scale,
                      lighting, mean, std, decoder, device_normalize,
                      manifest_dir, manifest_check
  image_records       (--config.data_dir: python -m ovsw_jax.data.prepare's
                      output) image_size, train_split, eval_split, augment,
                      min_scale, lighting, mean, std, decoder,
                      device_normalize
"""

import json
import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
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
    # New keys are accepted so that --config.dataset_options.KEY=VALUE can add
    # KEY to a dict field (empty by default); `parse_flags` then rejects any
    # unknown top-level key, and the dataset or model rejects a nested key it
    # does not take, naming the valid ones. (This needs an unlocked config.)
    lock_config=False, accept_new_attributes=True)
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str, status: int = 1) -> None:
  """Exits with ``status`` and a one-line message, no traceback."""
  line = " ".join(message.split())
  print(f"error: {line}", file=sys.stderr, flush=True)
  sys.exit(status)


# absl's help flags exit with status 1; asked for, help is no error.
_HELP = {"--help": True, "-h": True, "-?": True, "--helpshort": True,
         "--helpfull": False}


def _help_if_asked(argv: list[str]) -> None:
  """Prints the help (--helpfull: every library's flags too); exits 0."""
  asked = [_HELP[a] for a in argv[1:] if a in _HELP]
  if asked:
    app.usage(shorthelp=asked[0], writeto_stdout=True)
    sys.exit(0)


def parse_flags(argv: list[str]) -> list[str]:
  """Parses flags; a bad ``--config.KEY`` override gives one clear line.

  ``--config.dataset_options.KEY=VALUE`` (or model_options) sets KEY of that
  dict, VALUE read as a Python literal (``64``, ``False``, ``(1, 1, 1)``).
  Flag errors exit with status 2; ``--help`` exits 0.
  """
  _help_if_asked(argv)
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}\nPass --helpfull to list the flags.", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, ValueError, TypeError) as e:
    # config_flags applies --config.KEY=VALUE overrides while parsing and
    # raises a bare AttributeError/KeyError/TypeError for a bad KEY.
    _fail(_override_error(argv, e), status=2)
  # Imported after parsing: --help stays fast.
  from ovsw_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  try:
    config_lib.validate_config(FLAGS.config)  # names an unknown key
  except ValueError as e:
    _fail(str(e), status=2)
  return rest


def _override_error(argv: list[str], error: Exception) -> str:
  """The line for a ``--config.A.B`` override that could not be applied."""
  from ovsw_jax.training import config as config_lib  # pylint: disable=g-import-not-at-top
  defaults = config_lib.default_config()
  keys = [a.split("=", 1)[0][len("--config."):] for a in argv
          if a.startswith("--config.")]
  for key in keys:
    top, _, rest = key.partition(".")
    if top not in config_lib.CONFIG_KEYS:
      return config_lib.unknown_keys_message([top])
    if rest and not isinstance(defaults[top],
                               (dict, ml_collections.ConfigDict)):
      return (f"--config.{key}: config.{top} is a single value, not a dict; "
              f"set it with --config.{top}=VALUE")
  return f"bad --config override: {type(error).__name__}: {error}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  # Imported here so that --help stays fast and jax.distributed is set up
  # before anything initialises the JAX backends.
  from ovsw_jax import data  # pylint: disable=g-import-not-at-top
  from ovsw_jax.training import checkpointing  # pylint: disable=g-import-not-at-top
  from ovsw_jax.training import determinism  # pylint: disable=g-import-not-at-top
  from ovsw_jax.training import loop  # pylint: disable=g-import-not-at-top
  from ovsw_jax.training import mesh  # pylint: disable=g-import-not-at-top

  if not FLAGS["verbosity"].present:
    # The trainer's own INFO lines, but only the libraries' warnings
    # (--verbosity=0 shows them all): orbax logs a dozen INFO lines per
    # checkpoint, JAX one per backend it probes and lacks ("Unable to
    # initialize backend 'tpu'" on every machine without libtpu).
    checkpointing.quiet_orbax_logs()
    std_logging.getLogger("jax").setLevel(std_logging.WARNING)
  try:
    # XLA reads its flags when JAX starts a backend: before anything else.
    determinism.configure(FLAGS.config.deterministic)
  except ValueError as e:
    _fail(str(e))
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
  keys = ("step", "preempted", "finished", "eval_top1", "eval_top5", "eval_count",
          "wall_time_s")
  print("RESULT " + json.dumps({k: float(result[k]) if k.startswith(
      ("eval_top", "wall")) else result[k] for k in keys if k in result}),
        flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
