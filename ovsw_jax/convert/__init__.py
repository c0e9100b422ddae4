"""PyTorch checkpoints (the reference's, torchvision's) as Flax variables.

* `state_dict`: the mapping of a ``state_dict`` to ``{'params',
  'batch_stats'}`` (`convert_state_dict`, `load_torch_checkpoint`,
  `torch_key_map`), key sets checked both ways;
* `files`: the converted ``.npz`` that ``python -m ovsw_jax.convert``
  (`cli`) writes, read back without torch;
* `loading`: `load_variables`, either kind of file, as
  ``config.teacher_file`` takes it.

Example::

  python -m ovsw_jax.convert --model=resnet34 \\
      --torch_file=resnet34-b627a593.pth --out=resnet34_torchvision.npz
"""

from ovsw_jax.convert import files
from ovsw_jax.convert import loading
from ovsw_jax.convert import state_dict
from ovsw_jax.convert.loading import load_variables
from ovsw_jax.convert.state_dict import abstract_variables
from ovsw_jax.convert.state_dict import convert_state_dict
from ovsw_jax.convert.state_dict import IGNORED_SUFFIXES
from ovsw_jax.convert.state_dict import load_torch_checkpoint
from ovsw_jax.convert.state_dict import strip_prefix
from ovsw_jax.convert.state_dict import torch_key_map

__all__ = [
    "IGNORED_SUFFIXES", "abstract_variables", "convert_state_dict", "files",
    "load_torch_checkpoint", "load_variables", "loading", "state_dict",
    "strip_prefix", "torch_key_map",
]
