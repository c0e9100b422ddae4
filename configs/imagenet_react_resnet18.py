"""ImageNet-1K, ReAct-ResNet-18 with OvSW, ReActNet's two stages.

    python -m ovsw_jax.convert --model=resnet34 \\
        --torch_file=resnet34-b627a593.pth --out=resnet34_torchvision.npz
    python train.py --config=configs/imagenet_react_resnet18.py:stage1 \\
        --workdir=runs/react18_s1
    python train.py --config=configs/imagenet_react_resnet18.py:stage2 \\
        --workdir=runs/react18_s2 --config.init_from=runs/react18_s1

Both stages distil from ReActNet's teacher, torchvision's ImageNet ResNet-34
(``ResNet34_Weights.IMAGENET1K_V1``: resnet34-b627a593.pth), converted once
by the first command into resnet34_torchvision.npz in the working directory
(configs/react_stages.py, `imagenet_teacher`); ``--config.teacher_file``
points elsewhere.

docs/semantics.md, section 7 for OvSW's ImageNet hyperparameters; the stages
are configs/react_stages.py's.
"""

from configs import default
from configs import react_stages


def get_config(stage: str = "stage1"):
  """Adam lr 5e-4, linear decay, batch 512, 256 epochs a stage, OvSW's AGS
  and SAD in front of Adam (delta 0.01, lambda 2e-5), distilling from
  torchvision's ResNet-34."""
  config = default.get_config()
  config.model = "react_resnet18"
  config.dataset = "imagenet2012"
  config.method = "ovsw+adam"
  config.batch_size = 512
  config.num_epochs = 256
  config.delta = 0.01
  config.dampen_weight = 2e-5
  return react_stages.imagenet_teacher(
      react_stages.apply_stage(config, stage))
