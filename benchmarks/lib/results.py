"""Benchmark results as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional

import jax
import numpy as np


def save_json(result: Mapping[str, Any], path: str | Path,
              indent: int = 2) -> None:
  """Writes ``result`` indented to ``path``, creating its folder."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=indent) + "\n")


def write_json(result: Mapping[str, Any], out: Optional[str]) -> None:
  """Prints ``result`` as one JSON line; writes it indented to ``out``."""
  print(json.dumps(result))
  if out:
    save_json(result, out)


def to_json(tree: Any) -> Any:
  """``tree`` with arrays as lists, NumPy scalars as Python's, NaN as None."""
  if isinstance(tree, dict):
    return {str(k): to_json(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [to_json(v) for v in tree]
  if isinstance(tree, (np.ndarray, jax.Array)):
    return to_json(np.asarray(tree).tolist())
  if isinstance(tree, (np.floating, float)):
    v = float(tree)
    return None if math.isnan(v) else v
  if isinstance(tree, np.integer):
    return int(tree)
  return tree
