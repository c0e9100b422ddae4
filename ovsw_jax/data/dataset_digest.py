"""Which examples a dataset holds, as a digest: the same on every process.

Batches are indices into the example list, so every process (each host,
and each grain worker process) must see the same list: a host whose copy of
an image folder lacks a file, or whose manifest is older, would shift every
example after it, duplicating some and dropping others without an error,
or hang a collective. Sources that list their examples (the image folder,
the prepared records) put a digest of (classes, files, labels) in
`DatasetInfo.digest`, and it is checked:

- in each grain worker process, against the digest of the process that
  built the source (`imagefolder`);
- across processes, when an iterator is created (`check_processes_agree`,
  with ``jax.process_count() > 1``): a mismatch stops every process with
  one line naming the digests and counts;
- on resume: checkpoints record it (`record`); resuming on a dataset whose
  digest differs logs a warning (`change_since`) and goes on, since a
  corrected or extended dataset is a legitimate reason to continue, but
  the batches from there on are not those the first run would have seen.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ovsw_jax.data.source import DatasetInfo

META_KEY = 'dataset_digest'  # in a checkpoint's meta
_CHECKED: set[tuple[str, int]] = set()


def listing_digest(classes: Sequence[str],
                   splits: Iterable[tuple[Sequence[str], Sequence[int]]]
                   ) -> str:
  """sha256 (hex) of the class names and each split's (name, int) list:
  an image folder's files and labels, or prepared shards (file and sha256)
  and their record counts."""
  h = hashlib.sha256()
  h.update('\n'.join(classes).encode() + b'\0')
  for files, labels in splits:
    h.update(f'split {len(files)}\n'.encode())
    for f, l in zip(files, labels):
      h.update(f'{int(l)}\t{f}\n'.encode())
  return h.hexdigest()


def describe(info: DatasetInfo) -> str:
  return (f'{info.num_train} train / {info.num_eval} eval examples, '
          f'digest {(info.digest or "")[:12]}')


def _allgather(row: np.ndarray) -> np.ndarray:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(row))


def check_processes_agree(
    info: DatasetInfo, process_count: int | None = None,
    gather: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
  """Stops every process when they do not see the same examples.

  A collective: every process calls it at the same point (iterator
  creation does); once per digest per process.

  Args:
    info: this process's dataset info (nothing to check without a digest).
    process_count: default ``jax.process_count()``; 1: nothing to check.
    gather: stacks each process's row (default: JAX's
      ``multihost_utils.process_allgather``).

  Raises:
    ValueError: the processes' digests or counts differ, naming them.
  """
  if process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_count = jax.process_count()
  if process_count < 2 or not info.digest or (
      (info.digest, process_count) in _CHECKED):
    return
  row = np.array([info.num_train, info.num_eval,
                  *bytes.fromhex(info.digest)], np.int32)
  rows = np.asarray((gather or _allgather)(row)).reshape(process_count, -1)
  differ = [p for p in range(process_count)
            if not np.array_equal(rows[p], rows[0])]
  if differ:
    seen = lambda r: (f'{int(r[0])} train / {int(r[1])} eval examples, '
                      f'digest {bytes(r[2:].astype(np.uint8)).hex()[:12]}')
    raise ValueError(
        f'{info.name}: the processes see different examples: process 0 '
        f'{seen(rows[0])}, process {differ[0]} {seen(rows[differ[0]])} '
        f'({len(differ)} of {process_count} processes differ from process 0)'
        '; every host must read the same data: one shared folder, or '
        'identical copies (and the same manifest_dir or none)')
  _CHECKED.add((info.digest, process_count))


def record(info: DatasetInfo) -> dict[str, Any]:
  """What a checkpoint's meta records of the dataset: ``{META_KEY: {digest,
  num_train, num_eval}}``, or {} without a digest."""
  if not info.digest:
    return {}
  return {META_KEY: {'digest': info.digest, 'num_train': info.num_train,
                     'num_eval': info.num_eval}}


def change_since(meta: dict[str, Any], info: DatasetInfo) -> str | None:
  """Why the dataset is not the one a checkpoint's meta recorded, or None
  (also when either has no digest)."""
  recorded = meta.get(META_KEY)
  if not recorded or not info.digest or recorded['digest'] == info.digest:
    return None
  return (f'{info.name} is not the dataset this checkpoint was trained on: '
          f'then {recorded["num_train"]} train / {recorded["num_eval"]} eval '
          f'examples (digest {recorded["digest"][:12]}), now '
          f'{describe(info)}: files, labels or classes changed. Resuming on '
          'it: from here the batches differ from those of an uninterrupted '
          'run. For an exact resume restore the data as it was; to train on '
          'the new data from scratch use a new workdir')
