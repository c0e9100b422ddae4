"""A run's metric records: workdir/metrics.jsonl and TensorBoard.

`MetricsWriter` writes one JSON record per log step (process 0 only);
`read_metrics` reads them back in order; `summary_line` and `layer_table`
format a record for the log.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

from absl import logging
import numpy as np

METRICS_FILE = "metrics.jsonl"


def to_json_value(v: Any) -> Any:
  if isinstance(v, (str, bool, int)) or v is None:
    return v
  if isinstance(v, (np.integer,)):
    return int(v)
  a = np.asarray(v)
  if a.dtype.kind in "iu":
    return int(a)
  # The float32 value as a Python float, unrounded.
  return float(a)


class MetricsWriter:
  """Writes metric records to workdir/metrics.jsonl and TensorBoard.

  One JSON object per line, always with ``step``. Training records (every
  log_every_steps and at each epoch's end) hold ``epoch``, ``train_loss``,
  ``train_top1``, ``train_top5``, ``ags_ratio`` and ``silent_fraction``
  (means over the steps since the previous record), ``lr`` and, with ReCU,
  ``recu_tau`` (of the last step), ``images_per_sec`` (evaluation and
  checkpointing excluded), ``ags_ratio/<param>`` and ``silent_fraction/<param>`` per binary kernel
  (as of the last step) and, every flip_stats_every_steps, ``flip_rate``
  and ``flip_rate/<param>``: the fraction of binary weights whose sign
  changed since the previous measurement. Evaluation adds ``eval_loss``,
  ``eval_top1``, ``eval_top5`` and ``eval_count`` (images counted). Floats
  are the float32 values as Python floats, unrounded.

  Only process 0 writes. TensorBoard goes through `clu.metric_writers`, which
  needs TensorFlow; without it only the JSONL file is written (and a line in
  the log says so).
  """

  def __init__(self, workdir: str, enabled: bool = True,
               keep_until_step: Optional[int] = None):
    """Opens workdir/metrics.jsonl for appending.

    Args:
      workdir: the run's directory.
      enabled: False on processes other than 0.
      keep_until_step: drop the records of later steps first: a run resumed
        from a checkpoint at this step redoes them.
    """
    self._enabled = enabled
    self._file = None
    self._summary = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    if keep_until_step is not None and os.path.exists(path):
      records = [r for r in read_metrics(workdir)
                 if r["step"] <= keep_until_step]
      with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
      os.replace(path + ".tmp", path)
    self._file = open(path, "a")
    try:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self._summary = metric_writers.create_default_writer(
          os.path.join(workdir, "tensorboard"), asynchronous=False)
    except ImportError as e:
      logging.info("TensorBoard summaries off (clu.metric_writers: %s); "
                   "metrics go to %s only.", e, METRICS_FILE)

  def write(self, step: int, values: Mapping[str, Any]) -> None:
    if not self._enabled:
      return
    record = {"step": int(step)}
    record.update({k: to_json_value(v) for k, v in values.items()})
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._summary is not None:
      scalars = {k: v for k, v in record.items()
                 if k != "step" and isinstance(v, (int, float))
                 and not isinstance(v, bool)}
      self._summary.write_scalars(int(step), scalars)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._summary is not None:
      self._summary.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of workdir/metrics.jsonl, in order.

  A last line cut short (the run was killed while writing it) is skipped.
  """
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    lines = [line for line in f if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i < len(lines) - 1:
        raise
  return records


def summary_line(record: Mapping[str, Any]) -> str:
  """'loss 0.53 top-1 0.83 lr 0.1 silent 0.91 flips 0.012 604 img/s'."""
  parts = [f"loss {float(record['train_loss']):.4f}",
           f"top-1 {float(record['train_top1']):.4f}",
           f"lr {float(record['lr']):.4g}"]
  if "silent_fraction" in record:
    parts.append(f"silent {float(record['silent_fraction']):.4f}")
  if "flip_rate" in record:
    parts.append(f"flips {float(record['flip_rate']):.4g}")
  parts.append(f"{record['images_per_sec']:.1f} img/s")
  return " ".join(parts)


def layer_table(record: Mapping[str, Any]) -> str:
  """Per binary kernel: silent fraction and last flip rate, one per line."""
  layers = sorted({k.split("/", 1)[1] for k in record
                   if k.startswith(("silent_fraction/", "flip_rate/"))})
  lines = []
  for layer in layers:
    cells = [f"{name} {float(record[f'{key}/{layer}']):.4f}"
             for key, name in (("silent_fraction", "silent"),
                               ("flip_rate", "flip rate"))
             if f"{key}/{layer}" in record]
    lines.append(f"  {layer}: " + ", ".join(cells))
  return "\n".join(lines)
