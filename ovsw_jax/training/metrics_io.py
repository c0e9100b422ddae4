"""A run's metric records: chunk files under workdir/metrics/, TensorBoard.

`MetricsWriter` writes one JSON record per log step (process 0 only) into
numbered chunk files, ``workdir/metrics/chunk-000000.jsonl``, ... Object
stores (``gs://``) cannot append, so each flush writes a new chunk through
`etils.epath`; a kill loses at most the records since the last flush.
`read_metrics` reads them back in step order (and the single metrics.jsonl
of runs made before the chunks); `summary_line` and `layer_table` format a
record for the log.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Mapping, Optional

from etils import epath
import numpy as np

from ovsw_jax.training import tensorboard

METRICS_DIR = "metrics"
# The single append-only file of runs made before the chunk files.
LEGACY_METRICS_FILE = "metrics.jsonl"
_CHUNK = re.compile(r"chunk-(\d+)\.jsonl$")


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


def _chunks(workdir: epath.Path) -> list[tuple[int, epath.Path]]:
  """(sequence number, path) of the workdir's chunk files, in order."""
  folder = workdir / METRICS_DIR
  if not folder.exists():
    return []
  found = [(int(m.group(1)), p) for p in folder.iterdir()
           if (m := _CHUNK.search(p.name))]
  return sorted(found)


def metric_files(workdir: str | epath.PathLike) -> list[epath.Path]:
  """The files holding a workdir's records: the legacy metrics.jsonl (when
  not empty) and the chunk files, in order."""
  workdir = epath.Path(workdir)
  legacy = workdir / LEGACY_METRICS_FILE
  files = [legacy] if legacy.exists() and legacy.stat().length > 0 else []
  return files + [path for _, path in _chunks(workdir)]


def _parse_lines(text: str, tolerate_last: bool) -> list[dict[str, Any]]:
  lines = [line for line in text.splitlines() if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      # Only the legacy file's last line can be cut short by a kill; a
      # chunk is written whole.
      if not tolerate_last or i < len(lines) - 1:
        raise
  return records


def _read_all(workdir: epath.Path) -> list[dict[str, Any]]:
  """All records, in the order they were written."""
  records = []
  legacy = workdir / LEGACY_METRICS_FILE
  if legacy.exists():
    records += _parse_lines(legacy.read_text(), tolerate_last=True)
  for _, path in _chunks(workdir):
    records += _parse_lines(path.read_text(), tolerate_last=False)
  return records


class MetricsWriter:
  """Writes metric records to workdir/metrics/ chunks and TensorBoard.

  One JSON object per line, always with ``step``. Training records (every
  log_every_steps and at each epoch's end) hold ``epoch``, ``train_loss``,
  ``train_top1``, ``train_top5``, ``ags_ratio`` and ``silent_fraction``
  (means over the steps since the previous record), ``lr`` and, with ReCU,
  ``recu_tau`` (of the last step), ``images_per_sec`` (evaluation and
  checkpointing excluded), ``ags_ratio/<param>`` and
  ``silent_fraction/<param>`` per binary kernel (as of the last step) and,
  every flip_stats_every_steps, ``flip_rate`` and ``flip_rate/<param>``: the
  fraction of binary weights whose sign changed since the previous
  measurement. ``ags_ratio`` is AGS's gradient-to-weight norm ratio per
  output channel, measured *before* AGS scales the gradient and averaged
  over all channels of the binary kernels (`ovsw_jax.transforms.
  ags_diagnostics`; after scaling each channel's ratio is at least delta).
  Evaluation adds ``eval_loss``, ``eval_top1``, ``eval_top5``
  and ``eval_count`` (images counted). Floats are the float32 values as
  Python floats, unrounded.

  Records are buffered and written as a new chunk file at most every
  ``flush_every_s`` seconds, with every evaluation record and on `close`.
  Only process 0 writes. TensorBoard events (workdir/tensorboard) go through
  `ovsw_jax.training.tensorboard` (tensorboardX, no TensorFlow); without
  tensorboardX only the chunks are written (and a line in the log says so).
  """

  def __init__(self, workdir: str, enabled: bool = True,
               keep_until_step: Optional[int] = None,
               flush_every_s: float = 30.0):
    """Opens the workdir's metrics for adding records.

    Args:
      workdir: the run's directory: a local path or any `etils.epath` path
        (``gs://bucket/run``).
      enabled: False on processes other than 0.
      keep_until_step: drop the records of later steps first: a run resumed
        from a checkpoint at this step redoes them.
      flush_every_s: the longest time a record waits in memory.
    """
    self._enabled = enabled
    self._summary = None
    self._buffer: list[dict[str, Any]] = []
    self._flush_every_s = flush_every_s
    self._last_flush = time.time()
    if not enabled:
      return
    self._workdir = epath.Path(workdir)
    (self._workdir / METRICS_DIR).mkdir(parents=True, exist_ok=True)
    chunks = _chunks(self._workdir)
    self._next = chunks[-1][0] + 1 if chunks else 0
    if keep_until_step is not None:
      self._truncate(keep_until_step, chunks)
    # Resumed: TensorBoard hides the killed run's events of the steps redone.
    self._summary = tensorboard.create_writer(
        self._workdir,
        None if keep_until_step is None else keep_until_step + 1)

  def _truncate(self, keep_until_step: int, chunks) -> None:
    """Rewrites the records up to ``keep_until_step`` as one new chunk."""
    legacy = self._workdir / LEGACY_METRICS_FILE
    records = _read_all(self._workdir)
    if all(r["step"] <= keep_until_step for r in records) and \
        not legacy.exists():
      return
    # Write the kept records first, then remove the old files: a kill in
    # between leaves duplicates that read_metrics drops, never a gap.
    self._buffer = [r for r in records if r["step"] <= keep_until_step]
    self.flush()
    for _, path in chunks:
      path.unlink()
    if legacy.exists():
      legacy.unlink()

  def write(self, step: int, values: Mapping[str, Any]) -> None:
    if not self._enabled:
      return
    record = {"step": int(step)}
    record.update({k: to_json_value(v) for k, v in values.items()})
    self._buffer.append(record)
    if ("eval_count" in record
        or time.time() - self._last_flush >= self._flush_every_s):
      self.flush()
    if self._summary is not None:
      self._summary.write(int(step), record)

  def flush(self) -> None:
    """Writes the buffered records as the next chunk file (whole)."""
    self._last_flush = time.time()
    if not self._enabled or not self._buffer:
      return
    path = self._workdir / METRICS_DIR / f"chunk-{self._next:06d}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in self._buffer))
    self._next += 1
    self._buffer = []
    if self._summary is not None:
      self._summary.flush()

  def close(self) -> None:
    self.flush()
    if self._summary is not None:
      self._summary.close()


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The metric records of a run, in step order.

  Args:
    workdir: the run's directory (local or any `etils.epath` path).

  Returns:
    Dicts with ``step`` and the logged keys (``train_loss``, ``eval_top1``,
    ...; see `MetricsWriter`), from the chunk files and, for older runs,
    metrics.jsonl. Records of the same step keep their written order; a
    record repeated by a kill during a resume's rewrite is dropped.

  Raises:
    FileNotFoundError: the workdir holds no metrics.
  """
  path = epath.Path(workdir)
  if not _chunks(path) and not (path / LEGACY_METRICS_FILE).exists():
    raise FileNotFoundError(
        f"no metrics under {workdir} (neither {METRICS_DIR}/chunk-*.jsonl "
        f"nor {LEGACY_METRICS_FILE}); pass the --workdir of a training run")
  records, seen = [], set()
  for record in _read_all(path):
    key = json.dumps(record, sort_keys=True)
    if key not in seen:
      seen.add(key)
      records.append(record)
  # sorted() is stable: eval-only records stay after their step's training
  # record.
  return sorted(records, key=lambda r: r["step"])


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
