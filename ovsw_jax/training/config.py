"""The one config schema of training: every field, its default and its checks.

`default_config` documents each field in one flat place (big_vision style);
the recipes in configs/ start from it and change a few fields. The valid keys
are exactly its keys (`CONFIG_KEYS`): `validate_config` rejects any other key,
and train.py names the valid ones for a bad ``--config.KEY`` override.
"""

from __future__ import annotations

import difflib
from typing import Any, Sequence

import ml_collections
from ml_collections import config_dict
import numpy as np


def default_config() -> ml_collections.ConfigDict:
  """The defaults: OvSW on CIFAR-10 with the reference's CIFAR recipe."""
  config = ml_collections.ConfigDict()
  for fields in (_model_fields, _data_fields, _method_fields,
                 _schedule_fields, _run_fields, _stage_fields):
    fields(config)
  return config


def _model_fields(config: ml_collections.ConfigDict) -> None:
  """The network."""

  # --- Model -----------------------------------------------------------------
  # One of ovsw_jax.models.list_models(): the binary cresnet20_1w1a,
  # cresnet18_1w1a, vggsmall_1w1a, resnet18_1w1a, resnet34_1w1a, ReActNet's
  # reactnet_a, react_resnet18/34 (and _cifar variants); the real-valued
  # resnet18, resnet34, resnet18_cifar, resnet34_cifar (torchvision's
  # architecture; teachers), which train with method 'vanilla' or 'adam'.
  config.model = "cresnet20_1w1a"
  # Extra keyword arguments of ovsw_jax.models.get_model (e.g.
  # activation_estimator, weight_estimator, learnable_scale).
  config.model_options = ml_collections.ConfigDict()



def _data_fields(config: ml_collections.ConfigDict) -> None:
  """The dataset, batch sizes and input pipeline."""
  # --- Data ------------------------------------------------------------------
  # 'cifar10', 'cifar100', 'imagenet2012', 'tfds:<name>', 'imagefolder'
  # (data_dir/train/<class>/..., val/...), 'image_records' (written by
  # python -m ovsw_jax.data.prepare), 'synthetic' or 'digits' (sklearn's 8x8
  # digits upsampled to 16x16x1, no download). train.py --help lists each
  # one's dataset_options.
  config.dataset = "cifar10"
  # Where the dataset lives; None: the data module's default (env
  # OVSW_DATA_DIR, then its built-in locations).
  config.data_dir = config_dict.placeholder(str)  # None, overridable.
  # Extra options of the dataset, e.g. for 'synthetic': image_shape,
  # num_classes, num_train, num_eval.
  config.dataset_options = ml_collections.ConfigDict()
  # Global batch size (all devices of all hosts); must divide by the device
  # count.
  config.batch_size = 256
  # Global eval batch size; -1: batch_size. The last batch is padded and
  # masked, so every eval image counts exactly once.
  config.eval_batch_size = -1
  # Batches prepared ahead of the device, and grain worker processes (0: in
  # the main process).
  config.prefetch = 2
  config.worker_count = 0
  # Where batches are made: True: on the devices, from the dataset kept in
  # their memory as uint8 (placed once; ovsw_jax.data.device_input); False:
  # by the host pipeline; 'auto': on the devices for the in-memory datasets
  # (cifar10, cifar100, digits, synthetic) on a GPU or TPU. Both make the
  # same batches bit for bit: this key never changes a result, only speed.
  config.input_on_device = config_dict.FieldReference("auto",
                                                      field_type=object)



def _method_fields(config: ml_collections.ConfigDict) -> None:
  """The method and its optimizer's hyperparameters."""
  # --- Method / optimizer ----------------------------------------------------
  # '+'-joined parts applied to the gradient, in order, before weight decay
  # and SGD: 'vanilla' (none: plain wd + SGD, the only kind with 'adam' for
  # a real-valued model), 'ags', 'sad', 'ovsw' (= 'ags+sad', the
  # reference's order), 'lars' (LARS's layer-wise trust ratio in AGS's
  # place). AGS, SAD and LARS act on the binary latent kernels only. Peers:
  # 'bop' (Bop flips binary kernels; wd + SGD on the float params),
  # 'recu' (ReCU binary convs, tau set per epoch), 'irnet' (IR-Net convs,
  # EDE's (k, t) set per epoch), 'rbnn' (RBNN convs, rotations refitted per
  # epoch), 'adabin' (AdaBin convs and Maxout). Combine freely, e.g.
  # 'irnet+ovsw', 'rbnn+ovsw', 'adabin+ovsw',
  # 'recu+ovsw', 'recu+ags', 'recu+sad', 'lars+sad'. 'adam': wd + Adam in
  # SGD's place (ReActNet's recipe), e.g. 'ovsw+adam'.
  config.method = "ovsw"
  config.momentum = 0.9           # SGD momentum (no Nesterov)
  config.weight_decay = 5e-4
  # False: no weight decay on 1-D params (BatchNorm, biases, PReLU): the
  # ImageNet recipe.
  config.weight_decay_on_1d = True
  config.delta = 0.04             # AGS: min ||g||/||w|| per output channel
  config.dampen_weight = 9e-4     # SAD: extra decay (lambda) of silent weights
  config.track_momentum = 0.999   # SAD: flip-tracker momentum m
  config.track_threshold = 1e-4   # SAD: silent if tracker < tau
  # 'lars': each binary kernel's gradient is rescaled to this times its
  # weight norm (||g|| = c * ||w||, per layer). 0.04 matches AGS's CIFAR delta
  # (a floor on the same ratio, per channel).
  config.lars_trust_coefficient = 0.04
  # 'bop' (Helwegen et al. 2019; larq's defaults): flip a binary weight when
  # its gradient EMA m exceeds bop_threshold in magnitude and agrees in sign
  # with it; m <- (1 - bop_gamma) m + bop_gamma g.
  config.bop_threshold = 1e-8
  config.bop_gamma = 1e-4
  # 'recu' (Xu et al. 2021): the clamp quantile tau goes from recu_tau_min at
  # epoch 0 to recu_tau_max at the last epoch, A*exp(e/E) + B, set per epoch.
  config.recu_tau_min = 0.85
  config.recu_tau_max = 0.99
  # 'irnet' (Qin et al. 2020): EDE's t rises from irnet_t_min to irnet_t_max
  # on a log scale, set per epoch; k = max(1/t, 1).
  config.irnet_t_min = 0.1
  config.irnet_t_max = 10.0
  # 'rbnn' (Lin et al. 2020): the same log schedule of t (k = max(1/t, 1)),
  # and the rotations R1, R2 refitted at the first step of every
  # rbnn_rotation_update-th epoch.
  config.rbnn_t_min = 0.01
  config.rbnn_t_max = 10.0
  config.rbnn_rotation_update = 1
  # 'adabin' (Tu et al. 2022): EDE's t from adabin_t_min to adabin_t_max.
  config.adabin_t_min = 0.001
  config.adabin_t_max = 10.0



def _schedule_fields(config: ml_collections.ConfigDict) -> None:
  """The learning-rate schedule and the run's length."""
  # --- Schedule --------------------------------------------------------------
  config.learning_rate = 0.1      # peak learning rate
  config.num_epochs = 600         # the paper's CIFAR length
  # Total steps; -1: num_epochs * steps_per_epoch. When set, the cosine phase
  # ends at this step (num_epochs is then num_train_steps / steps_per_epoch).
  config.num_train_steps = -1
  config.warmup_epochs = 5
  # 'epoch': the reference's per-epoch staircase, lr*(e+1)/W for e < W, then
  # 0.5*(1+cos(pi*(e-W)/(E-W)))*lr + cosine_lr_offset. 'step': the same curve
  # evaluated at fractional epochs (smooth, per step).
  config.lr_schedule_granularity = "epoch"
  config.cosine_lr_offset = 1e-5  # added in the cosine phase (reference)
  # After the warmup: 'cosine' (OvSW's reference) or 'linear' (ReActNet's
  # Adam recipe: lr * (1 - t / T) down to 0 at the end of the run).
  config.lr_schedule = "cosine"



def _run_fields(config: ml_collections.ConfigDict) -> None:
  """Seed, precision, logging, checkpoints, evaluation."""
  # --- Run -------------------------------------------------------------------
  config.seed = 0
  # bfloat16 compute; params, optimizer state and the loss stay float32.
  config.half_precision = False
  # The CPU fast path: compile the train and eval steps with
  # ovsw_jax.training.cpu_fast_path.CPU_COMPILER_OPTIONS (XLA's own convolutions, YNNPACK's
  # reductions), the init program with INIT_COMPILER_OPTIONS (LLVM -O1: the
  # same values, compiled faster), and let the binary convs read their +-1
  # operands in bfloat16 (exact). False: XLA's defaults and float32 operands.
  # No effect on GPU/TPU.
  config.cpu_fast_path = True
  config.log_every_steps = 100
  # Per-layer sign-flip rate between two measurements every this many steps;
  # -1: log_every_steps, 0: off.
  config.flip_stats_every_steps = -1
  # -1: once per epoch; 0: after each eval (eval_every_epochs) and at the
  # end. A kill loses at most the steps since the last checkpoint.
  config.checkpoint_every_steps = -1
  config.keep_checkpoints = 3     # latest kept, plus the best by eval top-1
  config.async_checkpointing = True
  # Start at step 0 in a workdir that holds a run's record (metric files or
  # set-aside unreadable checkpoints); the old metrics are moved aside.
  config.restart_from_scratch = False
  # Resume although this config differs from the workdir's config.json in
  # keys that change training (e.g. num_epochs, learning_rate); without it
  # such a resume stops, naming each changed key. The change is recorded in
  # <workdir>/config_history.jsonl. Keys in RESUME_NEUTRAL_KEYS never stop it.
  config.allow_config_change = False
  config.eval_every_epochs = 1    # 0: only at the end
  # Evaluate a checkpoint instead of training: 'latest' or 'best' one.
  config.eval_only = False
  config.eval_checkpoint = "latest"
  config.progress_bar = True      # tqdm bar per epoch (process 0, on a terminal)
  # A jax.profiler trace of this many steps, after 2 warm-up steps, into
  # <workdir>/profile (ovsw_jax.training.profiling); 0: off.
  config.profile_steps = 0
  # Run-to-run determinism on GPUs (ovsw_jax.training.determinism): XLA's
  # deterministic kernels and no autotuning, set in XLA_FLAGS before JAX
  # starts its backend. Slower on GPUs; no effect on CPUs and TPUs. Changes
  # which GPU kernels compute a step, not what the step computes.
  config.deterministic = False


def _stage_fields(config: ml_collections.ConfigDict) -> None:
  """Staged training and distillation (ReActNet's two-stage recipe)."""
  # --- Stages / distillation -------------------------------------------------
  # A previous stage's workdir: a new run (no checkpoint of its own yet)
  # starts from that workdir's latest params and batch_stats, with a fresh
  # optimizer state. Its config.json must build the same parameter tree
  # (e.g. stage 1's model_options.binarize_weights=False). None: from init.
  config.init_from = config_dict.placeholder(str)
  # The teacher of the distribution loss: a workdir of ours (its config.json
  # names the model) at teacher_checkpoint ('latest', 'best' or a step), or a
  # teacher_file: a .npz written by `python -m ovsw_jax.convert` (it names
  # its model; e.g. torchvision's ResNet-34 as model 'resnet34', ReActNet's
  # teacher), or a PyTorch .pth of model teacher_model, converted on load.
  # None for both: no teacher.
  config.teacher_workdir = config_dict.placeholder(str)
  config.teacher_checkpoint = "latest"
  config.teacher_file = config_dict.placeholder(str)
  config.teacher_model = config_dict.placeholder(str)
  # With a teacher, loss = (1 - w) * cross-entropy + w * distribution loss
  # (ReActNet's KD_loss: -sum softmax(teacher) * log_softmax(student)); 1.0
  # is ReActNet's recipe (the teacher's soft labels alone).
  config.distill_weight = 1.0


# What a later stage's recipe sets init_from to until the command line gives
# the previous stage's workdir; `validate_config` refuses it.
INIT_FROM_REQUIRED = "<required: the previous stage's workdir>"

# The keys a config must have, exactly; defined by `default_config` alone.
CONFIG_KEYS = frozenset(default_config().keys())

# Keys that cannot change training (the parameters and optimizer state a run
# reaches at each step): a resumed run may change them without
# allow_config_change (`ovsw_jax.training.resume_guard`); every other key is
# guarded. Logging, checkpoint and evaluation cadence are here; the batches
# are a pure function of (seed, step), so the input pipeline's workers and
# buffering are too; data_dir is, so that a dataset may move between a run
# and its resume. input_on_device makes the host pipeline's batches bit for
# bit; deterministic changes which GPU kernels compute a step, not its
# formula (a non-deterministic GPU run has no exact resume to keep anyway).
# A new key that cannot change training is added here.
RESUME_NEUTRAL_KEYS = frozenset({
    "log_every_steps", "flip_stats_every_steps", "progress_bar",
    "profile_steps",
    "checkpoint_every_steps", "keep_checkpoints", "async_checkpointing",
    "restart_from_scratch", "allow_config_change",
    "eval_every_epochs", "eval_batch_size", "eval_only", "eval_checkpoint",
    "data_dir", "prefetch", "worker_count", "input_on_device",
    "deterministic",
})


def as_dict(options: Any) -> dict[str, Any]:
  """A dict-valued config field (ConfigDict, dict or None) as a plain dict."""
  if options is None:
    return {}
  if isinstance(options, ml_collections.ConfigDict):
    return options.to_dict()
  return dict(options)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks a config's keys against `CONFIG_KEYS`, then its values.

  The method name is checked against the method registry by
  `ovsw_jax.training.experiment.validate_config`, which calls this first.

  Args:
    config: a full config, e.g. from `default_config` or configs/*.py.

  Raises:
    ValueError: naming the unknown or missing keys (with the valid ones), or
      the bad value and what would be valid.
  """
  _check_keys(config)
  _check_values(config)


def unknown_keys_message(unknown: Sequence[str]) -> str:
  """The error line for config keys not in the schema: each with the
  closest valid key, if one is close, then the valid keys."""
  named = []
  for key in unknown:
    close = difflib.get_close_matches(key, CONFIG_KEYS, n=1)
    named.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close
                               else ""))
  return (f"unknown config key{'s' if len(unknown) > 1 else ''} "
          f"{', '.join(named)}; valid keys: {', '.join(sorted(CONFIG_KEYS))}")


def _check_keys(config: ml_collections.ConfigDict) -> None:
  keys = set(config.keys())
  unknown = sorted(keys - CONFIG_KEYS)
  if unknown:
    raise ValueError(unknown_keys_message(unknown))
  missing = sorted(CONFIG_KEYS - keys)
  if missing:
    raise ValueError(
        f"config is missing key(s) {missing}: start from "
        "configs/default.py's get_config(), which sets every field")


def _check_values(config: ml_collections.ConfigDict) -> None:
  """Raises a ValueError naming the first field with a bad value."""

  def check(ok: bool, key: str, expected: str) -> None:
    if not ok:
      raise ValueError(f"config.{key}={config[key]!r}: expected {expected}")

  def positive_int(key, allow=()):
    v = config[key]
    check(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and
          (v > 0 or v in allow), key,
          "a positive int" + (f" or one of {list(allow)}" if allow else ""))

  positive_int("batch_size")
  positive_int("eval_batch_size", allow=(-1,))
  positive_int("num_train_steps", allow=(-1,))
  positive_int("log_every_steps")
  positive_int("flip_stats_every_steps", allow=(-1, 0))
  positive_int("checkpoint_every_steps", allow=(-1, 0))
  positive_int("keep_checkpoints")
  positive_int("profile_steps", allow=(0,))
  check(config.num_train_steps > 0 or config.num_epochs > 0, "num_epochs",
        "> 0 (or set num_train_steps)")
  check(config.warmup_epochs >= 0, "warmup_epochs", ">= 0")
  check(config.eval_every_epochs >= 0, "eval_every_epochs",
        ">= 0 (0: evaluate only at the end)")
  check(config.learning_rate > 0, "learning_rate", "> 0")
  check(config.weight_decay >= 0, "weight_decay", ">= 0")
  check(0 <= config.momentum < 1, "momentum", "in [0, 1)")
  check(config.lr_schedule_granularity in ("epoch", "step"),
        "lr_schedule_granularity", "'epoch' or 'step'")
  check(config.lr_schedule in ("cosine", "linear"), "lr_schedule",
        "'cosine' or 'linear'")
  check(config.eval_checkpoint in ("latest", "best"), "eval_checkpoint",
        "'latest' or 'best'")
  check(isinstance(config.input_on_device, bool)
        or config.input_on_device == "auto", "input_on_device",
        "'auto', True or False")
  check(isinstance(config.deterministic, bool), "deterministic",
        "True or False")
  check(config.lars_trust_coefficient > 0, "lars_trust_coefficient", "> 0")
  check(config.bop_threshold >= 0, "bop_threshold", ">= 0")
  check(0 < config.bop_gamma <= 1, "bop_gamma", "in (0, 1]")
  check(0.5 < config.recu_tau_min <= 1, "recu_tau_min",
        "in (0.5, 1] (ReCU: 0.85)")
  check(config.recu_tau_min <= config.recu_tau_max <= 1, "recu_tau_max",
        f"in [recu_tau_min={config.recu_tau_min}, 1] (ReCU: 0.99)")
  _check_stage_values(config, check)
  check(0 < config.irnet_t_min <= config.irnet_t_max, "irnet_t_max",
        f"in [irnet_t_min={config.irnet_t_min}, inf) with irnet_t_min > 0 "
        "(IR-Net: 0.1 and 10)")
  check(0 < config.rbnn_t_min <= config.rbnn_t_max, "rbnn_t_max",
        f"in [rbnn_t_min={config.rbnn_t_min}, inf) with rbnn_t_min > 0 "
        "(RBNN: 0.01 and 10)")
  check(isinstance(config.rbnn_rotation_update, int)
        and config.rbnn_rotation_update >= 1, "rbnn_rotation_update",
        "an int >= 1 (epochs between rotation updates; RBNN: 1)")
  check(0 < config.adabin_t_min <= config.adabin_t_max, "adabin_t_max",
        f"in [adabin_t_min={config.adabin_t_min}, inf) with adabin_t_min > 0"
        " (AdaBin: 0.001 and 10)")


def _check_stage_values(config: ml_collections.ConfigDict, check) -> None:
  """The staged-training and distillation fields."""
  check(config.init_from != INIT_FROM_REQUIRED, "init_from",
        "the previous stage's workdir: this recipe's later stage needs "
        "--config.init_from=<that workdir>")
  check(0 <= config.distill_weight <= 1, "distill_weight", "in [0, 1]")
  which = config.teacher_checkpoint
  # A step may come as a string from --config.teacher_checkpoint=1000.
  check(which in ("latest", "best")
        or (isinstance(which, str) and which.isdigit()) or (
            isinstance(which, (int, np.integer))
            and not isinstance(which, bool) and which >= 0),
        "teacher_checkpoint",
        "'latest', 'best' or a step number >= 0")
  check(not (config.teacher_workdir and config.teacher_file), "teacher_file",
        "None when teacher_workdir is set (one teacher)")
  check(not config.teacher_file or bool(config.teacher_model)
        or str(config.teacher_file).endswith(".npz"), "teacher_model",
        "a model name with a PyTorch teacher_file (e.g. 'resnet34'), to "
        "convert its state_dict; or convert it once with `python -m "
        "ovsw_jax.convert` and pass the .npz")
