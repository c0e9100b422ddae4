"""Writing one array_record shard of `prepare`, so that a kill loses nothing.

A shard is written to a temporary local file, read back (its record count),
then put in place whole: renamed into a local output folder, or uploaded to
an object store (``gs://...``: an object appears whole or not at all). Only
then is its marker written, ``<out>/.prepare/<shard>.json``: the
fingerprint of what the shard holds (its examples' names, labels and
sizes in bytes), its record count, its per-class counts and the files it
skipped. A rerun skips every shard whose marker has the current fingerprint
(and, without ``skip_corrupt``, skipped nothing: `is_current`), and writes
the rest again; as the records and the writer's options are the same, so
are the bytes.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import tempfile
from typing import Any, Sequence

from ovsw_jax.data import folder_listing
from ovsw_jax.data import image_files
from ovsw_jax.data import image_records
from ovsw_jax.data import prepare_inputs

MARKERS = '.prepare'
# One record per group: random access reads just one record (grain's advice).
WRITER_OPTIONS = 'group_size:1'


def fingerprint(examples: Sequence[prepare_inputs.Example]) -> str:
  """What a shard holds, as a hash of its examples' names, labels, sizes."""
  h = hashlib.sha256()
  for e in examples:
    h.update(f'{e.label}\t{e.name}\t{e.where.size}\n'.encode())
  return h.hexdigest()


def is_current(marker: dict[str, Any] | None,
               examples: Sequence[prepare_inputs.Example],
               skip_corrupt: bool) -> bool:
  """Whether a shard with this marker is what a run would write now.

  Its examples must have the fingerprint recorded, and a shard that
  skipped corrupt images is kept only by a run that skips them too (a run
  without ``skip_corrupt`` writes it again, stopping at the first).
  """
  return (marker is not None
          and marker['fingerprint'] == fingerprint(examples)
          and (skip_corrupt or not marker['skipped']))


def _fs(path: str):
  import fsspec  # pylint: disable=g-import-not-at-top
  return fsspec.core.url_to_fs(path)


def marker_path(out: str, shard: str) -> str:
  return folder_listing.join(folder_listing.join(out, MARKERS),
                             f'{shard}.json')


def read_marker(out: str, shard: str) -> dict[str, Any] | None:
  path = marker_path(out, shard)
  try:
    if folder_listing.is_remote(path):
      fs, p = _fs(path)
      return json.loads(fs.cat_file(p))
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_text(path: str, text: str) -> None:
  """Writes a small file whole (tmp + rename; an object store's put)."""
  if folder_listing.is_remote(path):
    fs, p = _fs(path)
    fs.pipe_file(p, text.encode())
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)


def _put(local: str, out: str, name: str) -> None:
  dest = folder_listing.join(out, name)
  if folder_listing.is_remote(dest):
    fs, p = _fs(dest)
    fs.put_file(local, p)
    os.remove(local)
  else:
    os.replace(local, dest)


def write_shard(out: str, shard: str,
                examples: Sequence[prepare_inputs.Example],
                skip_corrupt: bool) -> dict[str, Any]:
  """Writes one shard and its marker; returns the marker.

  Raises:
    image_files.CorruptImageError: an image that does not decode (naming
      it), unless `skip_corrupt`.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  local_dir = (tempfile.gettempdir() if folder_listing.is_remote(out)
               else out)
  os.makedirs(local_dir, exist_ok=True)
  tmp = os.path.join(local_dir, f'.{shard}.tmp-{os.getpid()}')
  counts: collections.Counter = collections.Counter()
  skipped: dict[str, str] = {}
  writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
  try:
    for e in examples:
      data = prepare_inputs.read_bytes(e.where)
      problem = image_files.image_problem(data, thorough=True)
      if problem is not None:
        where = (e.where.path if e.where.offset < 0
                 else f'{e.name} in {e.where.path}')
        if not skip_corrupt:
          raise image_files.CorruptImageError(image_files.corrupt_message(
              where, problem, '--skip_corrupt'))
        skipped[e.name] = problem
        continue
      writer.write(image_records.encode_record(e.label, e.name, data))
      counts[e.label] += 1
  except BaseException:
    writer.close()
    os.remove(tmp)
    raise
  writer.close()
  reader = array_record_module.ArrayRecordReader(tmp)
  written = reader.num_records()
  reader.close()
  if written != sum(counts.values()):
    raise RuntimeError(f'{shard}: wrote {sum(counts.values())} records but '
                       f'read back {written}; is the disk full?')
  with open(tmp, 'rb') as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  _put(tmp, out, shard)
  marker = {'fingerprint': fingerprint(examples), 'num_records': written,
            'class_counts': {str(k): v for k, v in sorted(counts.items())},
            'skipped': skipped, 'sha256': digest}
  write_text(marker_path(out, shard), json.dumps(marker, sort_keys=True))
  return marker
