"""ReActNet's two-stage recipe, shared by the ReActNet configs.

Stage 1 trains binary activations with float weights from scratch
(``binarize_weights=False``, weight decay 1e-5); stage 2 binarizes the
weights too and starts from stage 1's workdir (``init_from``, required; weight
decay 0). Both use Adam at lr 5e-4 with a per-epoch linear decay to 0 and no
warmup, decay only on conv/dense kernels (the reference's ``train.py``), and
distil from a teacher when one is given (``teacher_workdir`` or
``teacher_file``). `imagenet_teacher` names ReActNet's: torchvision's
ImageNet-pretrained ResNet-34 (``ResNet34_Weights.IMAGENET1K_V1``, the file
resnet34-b627a593.pth), our real-valued ``resnet34``, converted once::

  python -m ovsw_jax.convert --model=resnet34 \
      --torch_file=resnet34-b627a593.pth --out=resnet34_torchvision.npz
"""

import ml_collections

from ovsw_jax.training import config as config_lib

STAGES = ("stage1", "stage2")
# ReActNet's teacher, as `python -m ovsw_jax.convert` writes it (above).
TEACHER_MODEL = "resnet34"
TEACHER_FILE = "resnet34_torchvision.npz"


def imagenet_teacher(config: ml_collections.ConfigDict
                     ) -> ml_collections.ConfigDict:
  """Distils from torchvision's ResNet-34, converted to `TEACHER_FILE` (a
  path relative to the working directory; ``--config.teacher_file=<path>``
  points elsewhere, ``--config.teacher_file=''`` trains without it)."""
  config.teacher_model = TEACHER_MODEL
  config.teacher_file = TEACHER_FILE
  return config


def apply_stage(config: ml_collections.ConfigDict, stage: str
                ) -> ml_collections.ConfigDict:
  """Sets ReActNet's recipe for ``stage`` ('stage1' or 'stage2') on config.

  Raises:
    ValueError: an unknown stage, naming the valid ones.
  """
  if stage not in STAGES:
    raise ValueError(
        f"stage {stage!r}: expected one of {list(STAGES)}, as in "
        "--config=configs/<recipe>.py:stage1")
  config.learning_rate = 5e-4
  config.lr_schedule = "linear"
  config.lr_schedule_granularity = "epoch"
  config.warmup_epochs = 0
  config.weight_decay_on_1d = False
  config.distill_weight = 1.0
  if stage == "stage1":
    config.model_options.binarize_weights = False
    config.weight_decay = 1e-5
  else:
    config.weight_decay = 0.0
    # Required: training stage 2 without stage 1's weights is an error.
    config.init_from = config_lib.INIT_FROM_REQUIRED
  return config
