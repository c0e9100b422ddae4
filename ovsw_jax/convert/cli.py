"""``python -m ovsw_jax.convert``: a PyTorch checkpoint to a converted file.

  python -m ovsw_jax.convert --model=resnet34 \\
      --torch_file=resnet34-b627a593.pth --out=resnet34_torchvision.npz

Converts the ``state_dict`` (`state_dict.load_torch_checkpoint`: keys
checked both ways, shapes checked) and writes it with `files.save`; the
``.npz`` then serves as ``--config.teacher_file`` with no torch installed.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

import jax
import numpy as np

from ovsw_jax import models
from ovsw_jax.convert import files
from ovsw_jax.convert import state_dict


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Converts ``--torch_file`` for ``--model`` into ``--out``; returns 0."""
  parser = argparse.ArgumentParser(
      prog="python -m ovsw_jax.convert",
      description="Convert a PyTorch state_dict (the reference's or "
      "torchvision's) into a .npz of Flax variables.")
  parser.add_argument("--model", required=True,
                      help=f"one of {models.list_models()}")
  parser.add_argument("--torch_file", required=True,
                      help="a torch.save'd state_dict (or a dict holding one "
                      "under 'state_dict')")
  parser.add_argument("--out", required=True, help="the .npz to write")
  parser.add_argument("--num_classes", type=int, default=None,
                      help="default: read from the checkpoint's head")
  parser.add_argument("--trusted_pickle", action="store_true",
                      help="torch.load with weights_only=False (only for "
                      "trusted files that pickle other objects)")
  args = parser.parse_args(argv)
  if args.model.lower() not in models.list_models():
    parser.error(f"--model={args.model!r}: expected one of "
                 f"{models.list_models()}")
  if not args.out.endswith(".npz"):
    parser.error(f"--out={args.out!r}: the converted file must end in .npz")
  if not os.path.isfile(args.torch_file):
    parser.error(f"--torch_file={args.torch_file!r}: no such file")
  name = models.canonical_name(args.model)
  try:
    variables = state_dict.load_torch_checkpoint(
        args.torch_file, name, args.num_classes,
        weights_only=not args.trusted_pickle)
  except ValueError as e:  # Keys or shapes that do not fit: one line.
    parser.error(str(e))
  num_classes = int(np.shape(variables["params"]["fc"]["kernel"])[-1])
  size = files.save(args.out, variables, name, num_classes,
                    source=os.path.basename(args.torch_file))
  count = sum(int(np.size(v)) for v in jax.tree.leaves(variables))
  print(f"{args.out}: {name}, {num_classes} classes, {count:,} values, "
        f"{size / 2**20:.1f} MiB")
  return 0

