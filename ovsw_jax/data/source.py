"""What a data source is: its description, its error, and in-memory sources.

A source gives random access to examples by index and turns them into
normalised float32 images. Training examples are augmented with randomness
drawn from ``(seed, epoch, example index)`` only (see `augment.uniforms`), so a
batch is the same whichever process, thread or worker builds it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Protocol, Sequence

import numpy as np

from ovsw_jax.data import augment


class DataNotFoundError(FileNotFoundError):
  """The dataset's files are not where they were looked for.

  The message names the files, the folder they must go in and how to get them.
  """


class DatasetInfo(NamedTuple):
  """What a model and a trainer need to know about a dataset.

  Attributes:
    name: the dataset's name as given to `get_dataset_info`.
    num_classes: number of labels; labels are ints in ``[0, num_classes)``.
    image_shape: ``(H, W, C)`` of the images the iterators yield (after
      preprocessing: cropping, resizing).
    num_train: number of training examples (one epoch).
    num_eval: number of evaluation examples (test or validation split).
    mean: per-channel mean subtracted from the images, in units where pixel
      values lie in [0, 1] (i.e. raw uint8 / 255).
    std: per-channel std the images are divided by, in the same [0, 1] units.
    class_names: each label's name (e.g. its class folder), where the
      dataset has names; None otherwise.
    digest: which examples it holds, in order (a hash of its classes,
      files and labels: `dataset_digest`), where the source lists them;
      None otherwise. Equal digests: the same examples.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_eval: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  class_names: tuple[str, ...] | None = None
  digest: str | None = None


class Source(Protocol):
  """Random access to one dataset's examples, preprocessed."""

  info: DatasetInfo

  def train_examples(self, indices: np.ndarray, seed: int,
                     epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Augmented, normalised images [n, H, W, C] float32, labels [n] int32."""

  def eval_examples(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised evaluation images [n, H, W, C] float32, labels [n] int32."""


@dataclasses.dataclass(frozen=True)
class PadCropFlipSource:
  """Base of sources of fixed-size image arrays, held or made in memory.

  Subclasses implement `raw(indices, train)`, which returns the images as
  arrays ``[n, H, W, C]`` whose values times `pixel_scale` lie in [0, 1], and
  the labels. Training augmentation is the CIFAR one: random crop back to
  ``(H, W)`` from the image zero-padded by `pad` pixels on each side, then a
  random horizontal flip when `flip` (padding happens before normalisation,
  as with torchvision's ``RandomCrop(padding=...)`` on a PIL image).

  Subclasses must stay cheap to pickle (grain ships them to worker
  processes): hold paths and options, and cache big arrays per process.
  """
  info: DatasetInfo
  pad: int = 4
  flip: bool = True
  augment: bool = True
  pixel_scale: float = 1.0 / 255.0

  def raw(self, indices: np.ndarray,
          train: bool) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError

  def train_examples(self, indices: np.ndarray, seed: int,
                     epoch: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = self.raw(indices, train=True)
    if self.augment and (self.pad > 0 or self.flip):
      images = augment.random_pad_crop_flip(
          images, indices, seed=seed, epoch=epoch, pad=self.pad, flip=self.flip)
    return self._normalize(images), labels.astype(np.int32)

  def eval_examples(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images, labels = self.raw(indices, train=False)
    return self._normalize(images), labels.astype(np.int32)

  def _normalize(self, images: np.ndarray) -> np.ndarray:
    return augment.normalize(images, self.info.mean, self.info.std,
                             self.pixel_scale)

  # Device-resident input (`ovsw_jax.data.device_input`) keeps a whole split
  # on the devices as uint8 codes and looks the normalised values up in
  # `code_table`. By default the codes are the raw uint8 images.

  def code_values(self) -> np.ndarray:
    """float32 [K]: the raw image value that code k stands for."""
    return np.arange(256, dtype=np.float32)

  def pixel_codes(self, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """A whole split as uint8 codes [N, H, W, C] and int32 labels [N].

    ``code_values()[codes]`` equals `raw`'s images. Read in chunks, so a
    source that makes its examples (synthetic) never holds more than one
    chunk's temporaries.

    Raises:
      TypeError: `raw` gives images that are not uint8 (a subclass with
        other images overrides this and `code_values`).
    """
    n = self.info.num_train if train else self.info.num_eval
    chunk = 4096
    parts = [self.raw(np.arange(s, min(s + chunk, n)), train)
             for s in range(0, n, chunk)]
    images = np.concatenate([p[0] for p in parts])
    if images.dtype != np.uint8:
      raise TypeError(
          f'{self.info.name}: raw images are {images.dtype}, not uint8; '
          'override pixel_codes and code_values to keep it on the devices.')
    return images, np.concatenate([p[1] for p in parts]).astype(np.int32)

  def code_table(self) -> np.ndarray:
    """float32 [K, C]: the normalised value of code k in channel c.

    `_normalize` of `code_values`, so looking codes up in it gives the host's
    normalised images bit for bit, on any device (a gather, no arithmetic).
    """
    channels = self.info.image_shape[-1]
    values = np.repeat(self.code_values()[:, None], channels, axis=1)
    return self._normalize(values)


def check_channels(name: str, values: Sequence[float], channels: int,
                   what: str) -> tuple[float, ...]:
  """Broadcasts a per-channel statistic (a scalar or one value per channel)."""
  values = tuple(float(v) for v in np.atleast_1d(values))
  if len(values) == 1:
    values = values * channels
  if len(values) != channels:
    raise ValueError(f'{name}: {what}={values} has {len(values)} values but '
                     f'the images have {channels} channels; give one value '
                     'or one per channel.')
  return values
