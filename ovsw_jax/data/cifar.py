"""CIFAR-10 and CIFAR-100 from the official files (binary or python pickles).

Looked for in `data_dir` itself or in its official sub-folder:

- CIFAR-10, binary: ``cifar-10-batches-bin/data_batch_{1..5}.bin``,
  ``test_batch.bin`` (records of 1 label byte + 3072 pixel bytes, CHW);
- CIFAR-10, python: ``cifar-10-batches-py/data_batch_{1..5}``, ``test_batch``;
- CIFAR-100, binary: ``cifar-100-binary/train.bin``, ``test.bin`` (coarse
  label byte, fine label byte, 3072 pixel bytes);
- CIFAR-100, python: ``cifar-100-python/train``, ``test``.

CIFAR-100 uses the 100 fine labels. When nothing is found and `download` is
true, the official archive is downloaded into `data_dir`, its md5 checked,
and extracted; when that fails, `DataNotFoundError` says what must go where.
Decoded arrays are cached per process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import tarfile
import threading
import urllib.request
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from ovsw_jax.data.source import DataNotFoundError, DatasetInfo
from ovsw_jax.data.source import PadCropFlipSource

Downloader = Callable[[str, str], None]

_URL = 'https://www.cs.toronto.edu/~kriz/'
# (archive, md5, folder it extracts to), preferred first for downloading.
_ARCHIVES = {
    'cifar10': [('cifar-10-binary.tar.gz', 'c32a1d4ab5d03f1284b67883e8d87530',
                 'cifar-10-batches-bin'),
                ('cifar-10-python.tar.gz', 'c58f30108f718f92721af3b95e74349a',
                 'cifar-10-batches-py')],
    'cifar100': [('cifar-100-python.tar.gz',
                  'eb9058c3a382ffc7106e4002c42a8d85', 'cifar-100-python')],
}
# (folder, train files, test files, format).
_LAYOUTS = {
    'cifar10': [
        ('cifar-10-batches-bin', [f'data_batch_{i}.bin' for i in range(1, 6)],
         ['test_batch.bin'], 'bin10'),
        ('cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)],
         ['test_batch'], 'py10'),
    ],
    'cifar100': [
        ('cifar-100-binary', ['train.bin'], ['test.bin'], 'bin100'),
        ('cifar-100-python', ['train'], ['test'], 'py100'),
    ],
}
NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}
NUM_TRAIN, NUM_TEST = 50_000, 10_000
MEAN = {'cifar10': (0.4914, 0.4822, 0.4465),
        'cifar100': (0.5071, 0.4865, 0.4409)}
STD = {'cifar10': (0.2470, 0.2435, 0.2616),
       'cifar100': (0.2673, 0.2564, 0.2762)}


class CifarArrays(NamedTuple):
  """Decoded CIFAR: uint8 images [N, 32, 32, 3] (HWC, RGB), int32 labels [N]."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


_CACHE: dict[tuple[str, str], CifarArrays] = {}
_LOCK = threading.Lock()


def default_data_dir() -> str:
  """``$OVSW_DATA_DIR``, else ``~/.cache/ovsw_jax/data``."""
  return os.environ.get('OVSW_DATA_DIR') or os.path.expanduser(
      '~/.cache/ovsw_jax/data')


def _check_name(name: str) -> None:
  if name not in _LAYOUTS:
    raise ValueError(f'Unknown CIFAR dataset {name!r}; use "cifar10" or '
                     '"cifar100".')


def find_files(name: str, data_dir: str) -> tuple[str, Path] | None:
  """(format, folder) of the first complete official layout found, or None."""
  _check_name(name)
  root = Path(data_dir).expanduser()
  for folder, train, test, fmt in _LAYOUTS[name]:
    for candidate in (root / folder, root):
      if all((candidate / f).is_file() for f in train + test):
        return fmt, candidate
  return None


def _not_found_message(name: str, root: Path, failure: str | None) -> str:
  lines = [f'{name} not found under {str(root)!r}. Put the official files in '
           'one of these folders (data_dir may also be the folder itself):']
  for folder, train, test, _ in _LAYOUTS[name]:
    lines.append(f'  {root / folder}/: {", ".join(train + test)}')
  lines.append('They come from these archives (extract into data_dir):')
  for archive, md5, _ in _ARCHIVES[name]:
    lines.append(f'  {_URL}{archive} (md5 {md5})')
  if failure:
    lines.append(f'Downloading failed: {failure}')
  else:
    lines.append('Downloading is off (download=False).')
  return '\n'.join(lines)


def _urlretrieve(url: str, dest: str) -> None:
  with urllib.request.urlopen(url, timeout=60) as response, open(dest,
                                                                'wb') as f:
    while chunk := response.read(1 << 20):
      f.write(chunk)


def _md5(path: Path) -> str:
  h = hashlib.md5()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 20):
      h.update(chunk)
  return h.hexdigest()


def download_archive(name: str, data_dir: str,
             downloader: Downloader | None = None) -> None:
  """Downloads the official archive into `data_dir`, checks md5, extracts.

  Args:
    name: "cifar10" or "cifar100".
    data_dir: the folder to extract into (created if needed).
    downloader: ``downloader(url, dest_path)`` writes the file at `url` to
      `dest_path`; defaults to urllib. Injectable for tests.

  Raises:
    OSError (or whatever `downloader` raises) when the download fails,
    ValueError when the md5 does not match (the file is deleted).
  """
  _check_name(name)
  archive, md5, _ = _ARCHIVES[name][0]
  root = Path(data_dir).expanduser()
  root.mkdir(parents=True, exist_ok=True)
  dest = root / (archive + '.part')
  try:
    (downloader or _urlretrieve)(_URL + archive, str(dest))
    got = _md5(dest)
    if got != md5:
      raise ValueError(f'md5 of {_URL + archive} is {got}, expected {md5}')
    with tarfile.open(dest, 'r:gz') as tar:
      if hasattr(tarfile, 'data_filter'):
        tar.extractall(root, filter='data')
      else:  # Python < 3.11.4: no extraction filters.
        tar.extractall(root)  # noqa: S202
  finally:
    dest.unlink(missing_ok=True)


def _read_bin(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
  raw = np.fromfile(path, dtype=np.uint8)
  record = label_bytes + 3072
  if raw.size % record:
    raise ValueError(f'{path}: size {raw.size} is not a multiple of the '
                     f'{record}-byte CIFAR record; is the file truncated?')
  raw = raw.reshape(-1, record)
  labels = raw[:, label_bytes - 1].astype(np.int32)  # Last label byte: fine.
  images = raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def _read_pickle(path: Path, key: bytes) -> tuple[np.ndarray, np.ndarray]:
  with open(path, 'rb') as f:
    d = pickle.load(f, encoding='bytes')
  images = np.asarray(d[b'data'], np.uint8).reshape(-1, 3, 32, 32)
  images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
  return images, np.asarray(d[key], np.int32)


def _read_split(fmt: str, folder: Path,
                files: list[str]) -> tuple[np.ndarray, np.ndarray]:
  parts = []
  for f in files:
    if fmt == 'bin10':
      parts.append(_read_bin(folder / f, 1))
    elif fmt == 'bin100':
      parts.append(_read_bin(folder / f, 2))
    elif fmt == 'py10':
      parts.append(_read_pickle(folder / f, b'labels'))
    else:
      parts.append(_read_pickle(folder / f, b'fine_labels'))
  return (np.concatenate([p[0] for p in parts]),
          np.concatenate([p[1] for p in parts]))


def load(name: str, data_dir: str | None = None, download: bool = True,
         downloader: Downloader | None = None) -> CifarArrays:
  """Decoded CIFAR-10/100 arrays, cached per process.

  Args:
    name: "cifar10" or "cifar100".
    data_dir: folder holding the official files or their official sub-folder;
      None means `default_data_dir()`.
    download: whether to fetch the official archive when the files are absent.
    downloader: see `download_archive`.

  Returns:
    CifarArrays with 50,000 training and 10,000 test examples.

  Raises:
    DataNotFoundError: the files are absent and could not be downloaded.
  """
  _check_name(name)
  root = Path(data_dir or default_data_dir()).expanduser()
  with _LOCK:
    found = find_files(name, str(root))
    if found is None:
      failure = None
      if download:
        try:
          download_archive(name, str(root), downloader)
        except Exception as e:  # pylint: disable=broad-except
          failure = f'{type(e).__name__}: {e}'
        found = find_files(name, str(root))
        if found is None and failure is None:
          failure = 'the archive did not contain the expected files'
      if found is None:
        raise DataNotFoundError(_not_found_message(name, root, failure))
    fmt, folder = found
    key = (name, str(folder.resolve()))
    if key not in _CACHE:
      _, train, test, _ = next(l for l in _LAYOUTS[name] if l[3] == fmt)
      arrays = CifarArrays(*_read_split(fmt, folder, train),
                           *_read_split(fmt, folder, test))
      for split, n in (('train', NUM_TRAIN), ('test', NUM_TEST)):
        got = len(getattr(arrays, f'{split}_labels'))
        if got != n:
          raise ValueError(f'{folder}: the {split} files hold {got} examples, '
                           f'expected {n}; are they the official ones?')
      _CACHE[key] = arrays
    return _CACHE[key]


def dataset_info(name: str) -> DatasetInfo:
  _check_name(name)
  return DatasetInfo(name=name, num_classes=NUM_CLASSES[name],
                     image_shape=(32, 32, 3), num_train=NUM_TRAIN,
                     num_eval=NUM_TEST, mean=MEAN[name], std=STD[name])


@dataclasses.dataclass(frozen=True, kw_only=True)
class CifarSource(PadCropFlipSource):
  """CIFAR from the official files; train: random crop 32 pad 4 + flip."""
  data_dir: str | None = None
  download: bool = True
  downloader: Downloader | None = None

  def arrays(self) -> CifarArrays:
    return load(self.info.name, self.data_dir, self.download, self.downloader)

  def raw(self, indices: np.ndarray,
          train: bool) -> tuple[np.ndarray, np.ndarray]:
    a = self.arrays()
    if train:
      return a.train_images[indices], a.train_labels[indices]
    return a.test_images[indices], a.test_labels[indices]

  def pixel_codes(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
    # The decoded arrays themselves (uint8 already): no copy.
    a = self.arrays()
    if train:
      return (a.train_images[:self.info.num_train],
              a.train_labels[:self.info.num_train])
    return (a.test_images[:self.info.num_eval],
            a.test_labels[:self.info.num_eval])


def _first(what: str, value: int | None, total: int) -> int:
  if value is None:
    return total
  if isinstance(value, bool) or not isinstance(value, int) or not (
      1 <= value <= total):
    raise ValueError(f'cifar: {what}={value!r} must be an int in '
                     f'[1, {total}] (or None: all of them).')
  return value


def make_source(name: str, data_dir: str | None = None, *,
                download: bool = True,
                downloader: Downloader | None = None,
                augment: bool = True, num_train: int | None = None,
                num_eval: int | None = None) -> CifarSource:
  """A CIFAR source; checks (and if need be downloads) the files right away.

  Args:
    name, data_dir, download, downloader: see `load`.
    augment: whether training examples are augmented.
    num_train, num_eval: use only the first this many training / test
      images (quick runs and benchmarks at a small size); None: all.
  """
  info = dataset_info(name)
  info = info._replace(num_train=_first('num_train', num_train, NUM_TRAIN),
                       num_eval=_first('num_eval', num_eval, NUM_TEST))
  source = CifarSource(info=info, pad=4, flip=True,
                       augment=augment, data_dir=data_dir, download=download,
                       downloader=downloader)
  source.arrays()
  return source
