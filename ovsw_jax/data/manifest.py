"""The cached file list of an image-folder split: built once, checked on use.

Listing 1.28 million files takes minutes on a bucket, so a split's listing
(`folder_listing.SplitListing`) is written once as a manifest, gzipped JSON,
to ``<data_dir>/.ovsw_jax/manifest-<split>.json.gz`` (or, where data_dir is
not writable, ``~/.cache/ovsw_jax/manifests/<hash of the folder>/``;
``manifest_dir`` chooses another place). Each later use checks that the
manifest still describes the folder, and rebuilds it, saying why, when it
does not; a stale manifest is never used:

- "auto" (the default): a local folder's manifest holds the modification
  time of every folder it lists, which changes whenever an entry is added,
  removed or renamed in that folder; all must be unchanged (one stat per
  folder: 1,000 for ImageNet, milliseconds). On an object store, which has
  no folder times, the class folders must be the same and 64 files spread
  over the list must exist with their recorded sizes; a file added to an
  existing class folder there is only seen by "full" (or a rebuild).
- "full": list the folder again and compare (as slow as building it).

With ``skip_corrupt``, every image is decoded once (`verify`) and the
corrupt ones (those over the decoders' pixel limit included) are recorded
in the manifest with the limit in force, so the check runs once, not per
run (again when the limit changes); they are left out of the dataset and
their count reported.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import json
import os
from typing import Any, Callable

from absl import logging

from ovsw_jax.data import crop_checks
from ovsw_jax.data import folder_listing
from ovsw_jax.data import image_files
from ovsw_jax.data.folder_listing import SplitListing

FORMAT = 'ovsw_jax.imagefolder_manifest'
VERSION = 2  # 2: listings count images beside the class folders
CHECKS = ('auto', 'full')
_SAMPLES = 64


def _cache_dir(root: str) -> str:
  key = hashlib.sha1(root.encode()).hexdigest()[:16]
  return os.path.join(os.path.expanduser('~'), '.cache', 'ovsw_jax',
                      'manifests', key)


def candidate_paths(data_dir: str, split: str,
                    manifest_dir: str | None) -> list[str]:
  """Where the manifest of `split` may be, in the order tried."""
  name = f'manifest-{split.replace("/", "_")}.json.gz'
  if manifest_dir:
    return [folder_listing.join(manifest_dir, name)]
  return [folder_listing.join(folder_listing.join(data_dir, '.ovsw_jax'),
                              name),
          os.path.join(_cache_dir(folder_listing.join(data_dir, split)),
                       name)]


def _open(path: str, mode: str):
  if folder_listing.is_remote(path):
    import fsspec  # pylint: disable=g-import-not-at-top
    return fsspec.open(path, mode, compression='gzip').open()
  return gzip.open(path, mode)


def _read(path: str) -> dict[str, Any] | None:
  try:
    with _open(path, 'rt') as f:
      d = json.load(f)
  except (OSError, EOFError, ValueError):
    return None  # absent or unreadable (half-written): rebuilt
  if d.get('format') != FORMAT or d.get('version') != VERSION:
    return None
  return d


def _write(d: dict[str, Any], paths: list[str]) -> str | None:
  """Writes to the first path that takes it (whole: tmp + rename locally)."""
  for path in paths:
    try:
      if folder_listing.is_remote(path):
        with _open(path, 'wt') as f:
          json.dump(d, f)
      else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f'{path}.tmp-{os.getpid()}'
        with gzip.open(tmp, 'wt') as f:
          json.dump(d, f)
        os.replace(tmp, path)
      return path
    except OSError as e:
      logging.info('Cannot write the manifest %s (%s); trying the next '
                   'place.', path, e)
  return None


def stale_reason(listing: SplitListing, check: str) -> str | None:
  """Why a manifest's listing no longer describes its folder, or None."""
  root = listing.root
  if check == 'full':
    fresh = folder_listing.list_split(root, root)
    if (fresh.files, fresh.sizes) != (listing.files, listing.sizes):
      return 'its files differ from a new listing'
    return None
  if listing.dir_mtimes is not None:
    for rel, mtime in listing.dir_mtimes.items():
      try:
        now = os.stat(folder_listing.join(root, rel)).st_mtime_ns
      except OSError:
        return f'{folder_listing.join(root, rel)} is gone'
      if now != mtime:
        return f'{folder_listing.join(root, rel)} changed since it was listed'
    return None
  return _remote_stale_reason(listing)


def _remote_stale_reason(listing: SplitListing) -> str | None:
  import fsspec  # pylint: disable=g-import-not-at-top
  fs, path = fsspec.core.url_to_fs(listing.root)
  if listing.classes:
    now = tuple(sorted(
        e['name'].rstrip('/').rsplit('/', 1)[-1]
        for e in fs.ls(path, detail=True) if e.get('type') == 'directory'))
    now = tuple(c for c in now if not c.startswith('.'))
    if now != listing.classes:
      return "its class folders differ from the folder's"
  n = len(listing.files)
  m = min(n, _SAMPLES)
  for k in sorted({round(i * (n - 1) / max(1, m - 1)) for i in range(m)}):
    p = f'{path}/{listing.files[k]}'
    if not fs.exists(p) or int(fs.info(p).get('size', -1)) != \
        listing.sizes[k]:
      return f'{listing.root}/{listing.files[k]} is gone or changed'
  return None


def verify(listing: SplitListing, read: Callable[[str], bytes],
           threads: int | None = None) -> dict[str, str]:
  """Decodes every image once; {relative path: problem} of the corrupt."""
  threads = threads or min(32, 2 * len(os.sched_getaffinity(0)))

  def problem(rel: str) -> str | None:
    return image_files.image_problem(read(folder_listing.join(
        listing.root, rel)), thorough=True)

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    found = pool.map(problem, listing.files, chunksize=64)
    return {rel: p for rel, p in zip(listing.files, found) if p is not None}


def load_listing(data_dir: str, split: str, what: str, *,
                 manifest_dir: str | None = None, check: str = 'auto',
                 verify_with: Callable[[str], bytes] | None = None
                 ) -> tuple[SplitListing, dict[str, str] | None]:
  """The split's listing from its manifest, (re)built when needed.

  Args:
    data_dir: the dataset folder; the split is ``data_dir/split``.
    split: the split folder's name.
    what: how messages name it.
    manifest_dir: where manifests go (default: see the module docstring).
    check: "auto" or "full" (module docstring).
    verify_with: when given (skip_corrupt), reads a file's bytes: every
      image is decoded once and the corrupt ones returned (and cached).

  Returns:
    ``(listing, corrupt)``: corrupt is {relative path: problem}, or None
    without `verify_with`.
  """
  if check not in CHECKS:
    raise ValueError(f'{what}: manifest_check={check!r}; use one of {CHECKS}')
  root = folder_listing.join(data_dir, split)
  paths = candidate_paths(data_dir, split, manifest_dir)
  cached = next((d for d in map(_read, paths) if d is not None), None)
  listing, reason = None, 'none was found'
  if cached is not None:
    listing = SplitListing.from_json(cached['listing'])
    reason = ('it lists another folder' if listing.root != root
              else stale_reason(listing, check))
    if reason is None:
      folder_listing.check_listing(listing, what)
  if reason is not None:
    if cached is not None:
      logging.warning('%s: the manifest of %s is stale (%s); rebuilding it.',
                      what, root, reason)
    logging.info('%s: listing %s (once: the list is cached).', what, root)
    listing = folder_listing.list_split(root, what)
    cached = {'format': FORMAT, 'version': VERSION,
              'listing': listing.to_json()}
  corrupt = cached.get('corrupt')
  # Images over the pixel limit count as corrupt: a new limit, new verdicts.
  limit = crop_checks.max_image_pixels()
  if cached.get('corrupt_pixel_limit') != limit:
    corrupt = None
  if verify_with is not None and corrupt is None:
    logging.info('%s: decoding all %d images of %s once to find corrupt '
                 'ones (skip_corrupt=True).', what, len(listing.files), root)
    corrupt = cached['corrupt'] = verify(listing, verify_with)
    cached['corrupt_pixel_limit'] = limit
    reason = reason or 'verified'
  if reason is not None:
    where = _write(cached, paths)
    logging.info('%s: %d images in %d classes listed in %s.', what,
                 len(listing.files), len(listing.classes), where or
                 'memory only (no writable place for the manifest)')
  return listing, (corrupt if verify_with is not None else None)
