"""Base of sources whose examples are encoded image files: ImageNet-style.

A subclass says how to fetch examples by index (`encoded`: their bytes,
names and labels); this base turns them into batches with the ImageNet
transforms (`imagenet_transform`), through the decoder dispatch
(`jpeg.decode_crop_resize`: the native crop decoder where it is built, else
PIL). Any format PIL reads works; grayscale, palette, CMYK and RGBA images
become RGB (as torchvision's loader's ``convert('RGB')``).

A file whose bytes do not decode raises `image_files.CorruptImageError`
naming it (a truncated JPEG included, which libjpeg would quietly fill with
grey: `image_files.check_image`; other formats are decoded once, by PIL,
which refuses truncated data); one over the pixel limit raises
`crop_checks.ImageTooLargeError` naming it and the limit's setting.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from ovsw_jax.data import crop_checks
from ovsw_jax.data import image_files
from ovsw_jax.data import imagenet_transform
from ovsw_jax.data import jpeg
from ovsw_jax.data.source import DatasetInfo
from ovsw_jax.data.source import check_channels

TRAIN, EVAL = 'train', 'eval'
IMAGENET_MEAN = imagenet_transform.IMAGENET_MEAN
IMAGENET_STD = imagenet_transform.IMAGENET_STD


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncodedImageSource:
  """Examples are encoded images; subclasses implement `encoded`.

  Attributes:
    info: the dataset's description (image_shape gives the output size).
    augment: False: training examples get the eval transform.
    min_scale: smallest area fraction of the random resized crop.
    lighting: std of AlexNet's PCA lighting noise (0: off).
    decoder: a resolved `jpeg.DECODERS` name.
    device_normalize: yield uint8 images, normalised in the jitted step.
    corrupt_option: the option that skips corrupt files, for messages.
  """
  info: DatasetInfo
  augment: bool = True
  min_scale: float = 0.08
  lighting: float = 0.0
  decoder: str = 'pil_draft'
  device_normalize: bool = False
  corrupt_option: str = 'dataset_options.skip_corrupt'

  # Batches are decode-bound: `pipeline.default_num_threads` gives them a
  # thread per core (the decoders release the GIL).
  decode_bound = True

  @classmethod
  def create(cls, name: str, size: tuple[int, int],
             class_names: Sequence[str], num_train: int, num_eval: int, *,
             mean: Sequence[float], std: Sequence[float], augment: bool,
             min_scale: float, lighting: float, decoder: str,
             device_normalize: bool, digest: str | None = None,
             **fields: Any) -> 'EncodedImageSource':
    """A source of `size` RGB images with these classes and counts.

    Args:
      name: the dataset's name, for the info and messages.
      size: the output (height, width), as `tfds_options.output_size`
        checks it.
      class_names: the class names, in label order.
      num_train, num_eval: the splits' example counts.
      mean, std: per-channel statistics (one value or three).
      augment, min_scale, lighting, decoder, device_normalize: as the
        attributes (decoder resolved: `tfds_options.check_image_options`).
      digest: which examples these are (`dataset_digest`).
      **fields: the subclass's own fields.

    Raises:
      ValueError: mean or std without one value or three.
    """
    info = DatasetInfo(
        name=name, num_classes=len(class_names), image_shape=(*size, 3),
        num_train=int(num_train), num_eval=int(num_eval),
        mean=check_channels(name, mean, 3, 'mean'),
        std=check_channels(name, std, 3, 'std'),
        class_names=tuple(class_names), digest=digest)
    return cls(info=info, augment=bool(augment), min_scale=float(min_scale),
               lighting=float(lighting), decoder=decoder,
               device_normalize=bool(device_normalize), **fields)

  def encoded(self, split: str, indices: np.ndarray
              ) -> tuple[list[bytes], list[str], np.ndarray]:
    """(encoded images, names for messages, int32 labels) of `split`'s
    examples `indices` (`TRAIN` or `EVAL`)."""
    raise NotImplementedError

  def _decoder(self, values: list[bytes], names: list[str]):
    out_hw = tuple(self.info.image_shape[:2])

    def decode(k: int, box_fn: jpeg.BoxFn) -> np.ndarray:
      image_files.check_image(values[k], names[k], self.corrupt_option)
      try:
        return jpeg.decode_crop_resize(values[k], box_fn, out_hw,
                                       self.decoder)
      except crop_checks.ImageTooLargeError as e:
        # Not corrupt: its own advice (the pixel limit), and the file.
        raise crop_checks.ImageTooLargeError(
            f'{names[k]}: {e}; or set {self.corrupt_option}=True to skip '
            'such images') from e
      except (OSError, ValueError, SyntaxError) as e:
        raise image_files.CorruptImageError(image_files.corrupt_message(
            names[k], f'{type(e).__name__}: {e}', self.corrupt_option)) from e
    return decode

  def train_examples(self, indices: np.ndarray, seed: int,
                     epoch: int) -> tuple[np.ndarray, np.ndarray]:
    values, names, labels = self.encoded(TRAIN, indices)
    decode = self._decoder(values, names)
    if self.augment:
      images = imagenet_transform.train_crops(decode, indices, seed, epoch,
                                              self.min_scale)
    else:
      images = imagenet_transform.eval_crops(decode, len(values),
                                             self.info.image_shape[:2])
    return imagenet_transform.finish(
        images, self.info.mean, self.info.std,
        device_normalize=self.device_normalize,
        lighting=self.lighting if self.augment else 0.0, seed=seed,
        epoch=epoch, indices=indices), labels

  def eval_examples(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, names, labels = self.encoded(EVAL, indices)
    images = imagenet_transform.eval_crops(self._decoder(values, names),
                                           len(values),
                                           self.info.image_shape[:2])
    return imagenet_transform.finish(
        images, self.info.mean, self.info.std,
        device_normalize=self.device_normalize), labels
