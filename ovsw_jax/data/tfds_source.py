"""Any TFDS dataset prepared in array_record format, read without TensorFlow.

Reads with ``tfds.builder(name, data_dir).as_data_source(split)`` (random
access; needs ``importlib_resources``, not TensorFlow). Images may come as
encoded bytes (an ``Image`` feature, decoded here with PIL) or as uint8 arrays
(a ``Tensor`` feature).

Preprocessing depends on whether the dataset's images have a fixed size:

- variable size (ImageNet): train = random resized crop (area 0.08-1, ratio
  3/4-4/3) to ``image_size`` + horizontal flip (+ optional PCA lighting);
  eval = resize the shorter side to ``image_size / 0.875`` (256 for 224) and
  take the central ``image_size`` crop.
- fixed size: resized to ``image_size`` if that differs from the native size;
  train = random crop with ``H // 8`` zero padding + horizontal flip (the
  CIFAR recipe); eval = nothing more.

Normalisation uses ImageNet's mean/std for ``imagenet2012``; for other
datasets the `mean`/`std` options, or else statistics estimated on up to 256
evenly spaced training images.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import threading
from typing import Any, Sequence

import numpy as np

from ovsw_jax.data import augment
from ovsw_jax.data import imagenet_transform
from ovsw_jax.data import jpeg
from ovsw_jax.data import tfds_options
from ovsw_jax.data.source import DataNotFoundError, DatasetInfo
from ovsw_jax.data.source import check_channels

IMAGENET_MEAN = imagenet_transform.IMAGENET_MEAN
IMAGENET_STD = imagenet_transform.IMAGENET_STD
TRAIN_AUGMENTS = tfds_options.TRAIN_AUGMENTS
_STATS_SAMPLES = 256

_SOURCES: dict[tuple[Any, ...], Any] = {}
_LOCK = threading.Lock()


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('TFDS datasets need tensorflow-datasets and '
                      'importlib_resources (TensorFlow is not needed): pip '
                      'install tensorflow-datasets importlib_resources') from e
  return tfds


def _how_to_prepare(name: str, data_dir: str | None) -> str:
  where = data_dir or '~/tensorflow_datasets (or $TFDS_DATA_DIR)'
  d = data_dir or '~/tensorflow_datasets'
  text = ''
  if name.split('/')[0].split(':')[0] == 'imagenet2012':
    text = (f' ImageNet needs a manual download: put ILSVRC2012_img_train.tar '
            f'and ILSVRC2012_img_val.tar in {d}/downloads/manual/, then')
  else:
    text = ' To prepare it,'
  return (f'TFDS dataset {name!r} is not prepared in array_record format under '
          f'{where}.{text} run, on a machine with TensorFlow: `tfds build '
          f'{name} --data_dir={d} --file_format=array_record` (then copy '
          f'{d}/{name.split("/")[0].split(":")[0]}/ here if built elsewhere).')


def open_builder(name: str, data_dir: str | None):
  """The prepared tfds builder, else DataNotFoundError saying how to prepare."""
  tfds = _tfds()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    # Unknown names raise DatasetNotFoundError; unreadable folders, others.
    raise DataNotFoundError(
        f'{_how_to_prepare(name, data_dir)} ({type(e).__name__}: '
        f'{str(e).splitlines()[0]})') from e
  if not builder.is_prepared():
    raise DataNotFoundError(_how_to_prepare(name, data_dir))
  fmt = str(getattr(builder.info.file_format, 'value',
                    builder.info.file_format))
  if fmt not in ('array_record', 'parquet'):
    raise DataNotFoundError(
        f'TFDS dataset {name!r} in {builder.data_dir} is in {fmt} format, '
        'which needs TensorFlow to read. ' + _how_to_prepare(name, data_dir))
  return builder


def _data_source(name: str, data_dir: str | None, split: str, image_key: str,
                 skip_decoding: bool):
  """A random-access source, opened once per process (and per split)."""
  key = (name, data_dir, split, image_key, skip_decoding)
  with _LOCK:
    if key not in _SOURCES:
      tfds = _tfds()
      decoders = ({image_key: tfds.decode.SkipDecoding()}
                  if skip_decoding else None)
      _SOURCES[key] = open_builder(name, data_dir).as_data_source(
          split=split, decoders=decoders)
    return _SOURCES[key]


def _to_pil(value: Any, channels: int):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if isinstance(value, (bytes, bytearray)):
    img = Image.open(io.BytesIO(value))
  else:
    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[-1] == 1:
      arr = arr[..., 0]
    img = Image.fromarray(arr.astype(np.uint8))
  mode = 'L' if channels == 1 else 'RGB'
  return img if img.mode == mode else img.convert(mode)


def _to_array(img) -> np.ndarray:
  arr = np.asarray(img, dtype=np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


@dataclasses.dataclass(frozen=True, kw_only=True)
class TfdsSource:
  """A prepared TFDS dataset; see the module docstring for preprocessing."""
  info: DatasetInfo
  tfds_name: str
  data_dir: str | None
  train_split: str
  eval_split: str
  image_key: str
  label_key: str
  skip_decoding: bool
  native_size: tuple[int, int] | None  # (H, W) when fixed, else None.
  train_augment: str
  min_scale: float = 0.08
  lighting: float = 0.0
  decoder: str = 'pil_draft'
  device_normalize: bool = False

  @property
  def decode_bound(self) -> bool:
    """Batches are built by decoding encoded images (e.g. ImageNet's JPEGs):
    `pipeline.default_num_threads` gives them a thread per core."""
    return self.skip_decoding

  @property
  def _size(self) -> tuple[int, int]:
    return self.info.image_shape[:2]

  def _read(self, split: str, indices: np.ndarray) -> list[dict[str, Any]]:
    ds = _data_source(self.tfds_name, self.data_dir, split, self.image_key,
                      self.skip_decoding)
    idx = [int(i) for i in indices]
    if hasattr(ds, '__getitems__'):
      return list(ds.__getitems__(idx))
    return [ds[i] for i in idx]

  def _labels(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.asarray([int(r[self.label_key]) for r in records], np.int32)

  def _fixed(self, img) -> np.ndarray:
    h, w = self._size
    if img.size != (w, h):
      from PIL import Image  # pylint: disable=g-import-not-at-top
      img = img.resize((w, h), Image.BILINEAR)
    return _to_array(img)

  def train_examples(self, indices: np.ndarray, seed: int,
                     epoch: int) -> tuple[np.ndarray, np.ndarray]:
    records = self._read(self.train_split, indices)
    c = self.info.image_shape[2]
    h, w = self._size
    if self.train_augment == 'inception_crop':
      images = imagenet_transform.train_crops(
          lambda k, box_fn: self._crop_resize(records[k][self.image_key], c,
                                              box_fn, (h, w)),
          indices, seed, epoch, self.min_scale)
    else:
      images = np.stack([self._fixed(_to_pil(r[self.image_key], c))
                         for r in records])
      if self.train_augment == 'pad_crop_flip':
        images = augment.random_pad_crop_flip(images, indices, seed, epoch,
                                              pad=h // 8, flip=True)
    return imagenet_transform.finish(
        images, self.info.mean, self.info.std,
        device_normalize=self.device_normalize, lighting=self.lighting,
        seed=seed, epoch=epoch, indices=indices), self._labels(records)

  def _crop_resize(self, value: Any, channels: int, box_fn: jpeg.BoxFn,
                   out_hw: tuple[int, int]) -> np.ndarray:
    """Crop + bilinear resize; encoded RGB bytes decode only what it needs."""
    if isinstance(value, (bytes, bytearray)) and channels == 3:
      return jpeg.decode_crop_resize(bytes(value), box_fn, out_hw,
                                     self.decoder)
    from PIL import Image  # pylint: disable=g-import-not-at-top
    img = _to_pil(value, channels)
    top, left, ch, cw = box_fn(img.size[1], img.size[0])
    return _to_array(img.resize((out_hw[1], out_hw[0]), Image.BILINEAR,
                                box=(left, top, left + cw, top + ch)))

  def _eval_image(self, value: Any, channels: int) -> np.ndarray:
    if self.native_size is not None:
      return self._fixed(_to_pil(value, channels))
    return self._crop_resize(value, channels,
                             imagenet_transform.eval_box(self._size),
                             self._size)

  def eval_examples(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    records = self._read(self.eval_split, indices)
    c = self.info.image_shape[2]
    images = np.stack([self._eval_image(r[self.image_key], c)
                       for r in records])
    return (imagenet_transform.finish(images, self.info.mean, self.info.std,
                                      device_normalize=self.device_normalize),
            self._labels(records))


@functools.lru_cache(maxsize=16)
def _estimate_stats(name: str, data_dir: str | None, split: str,
                    image_key: str, skip_decoding: bool, channels: int,
                    num_examples: int) -> tuple[tuple[float, ...],
                                                tuple[float, ...]]:
  ds = _data_source(name, data_dir, split, image_key, skip_decoding)
  n = min(_STATS_SAMPLES, num_examples)
  idx = np.linspace(0, num_examples - 1, n).round().astype(int)
  total = np.zeros(channels)
  total_sq = np.zeros(channels)
  count = 0
  for i in idx:
    img = _to_array(_to_pil(ds[int(i)][image_key], channels)) / 255.0
    total += img.sum((0, 1))
    total_sq += (img**2).sum((0, 1))
    count += img.shape[0] * img.shape[1]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _default_stats(name: str, data_dir: str | None, split: str,
                   image_key: str, skip_decoding: bool, channels: int,
                   num_train: int):
  """ImageNet's published mean/std, else estimated from the train split."""
  if name.split('/')[0].split(':')[0] == 'imagenet2012':
    return IMAGENET_MEAN, IMAGENET_STD
  return _estimate_stats(name, data_dir, split, image_key, skip_decoding,
                         channels, num_train)


def make_source(name: str, data_dir: str | None = None, *,
                image_size: int | Sequence[int] | None = None,
                train_split: str = 'train', eval_split: str | None = None,
                image_key: str = 'image', label_key: str = 'label',
                num_classes: int | None = None,
                train_augment: str | None = None, augment: bool = True,
                min_scale: float = 0.08, lighting: float = 0.0,
                mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None,
                decoder: str = 'auto', device_normalize: bool = False,
                display_name: str | None = None) -> TfdsSource:
  """A source over a TFDS dataset prepared in array_record format.

  Args:
    name: the TFDS name, e.g. "imagenet2012" or "mnist:3.0.1".
    data_dir: the TFDS data_dir (None: TFDS's default).
    image_size: output size, an int (square) or (H, W). Default: the native
      size for fixed-size datasets, 224 otherwise.
    train_split, eval_split: TFDS split names; eval_split defaults to
      "validation" when the dataset has one, else "test".
    image_key, label_key: feature names.
    num_classes: needed only when the label is not a ClassLabel.
    train_augment: "inception_crop", "pad_crop_flip" or "none"; the default
      depends on whether the images have a fixed size (module docstring).
    augment: False turns training augmentation off (like "none").
    min_scale: smallest area fraction of the random resized crop.
    lighting: std of AlexNet PCA lighting noise (0 = off; the reference's
      ImageNet recipe uses 0.1); RGB only.
    mean, std: per-channel statistics in [0, 1] units.
    decoder: how encoded RGB images are decoded, one of `jpeg.DECODERS`
      ("auto": the native crop decoder where it is built, else "pil_draft";
      the source's ``decoder`` says which).
    device_normalize: yield uint8 images (4x fewer bytes to the device) for
      the jitted step to normalise (`device_normalize.normalizer`).
    display_name: the `DatasetInfo.name` (default: `name`).

  Raises:
    DataNotFoundError: the dataset is not prepared in a readable format.
  """
  tfds = _tfds()
  builder = open_builder(name, data_dir)
  features, splits = builder.info.features, builder.info.splits
  eval_split = tfds_options.resolve_splits_and_keys(
      name, splits, features, train_split=train_split, eval_split=eval_split,
      image_key=image_key, label_key=label_key)
  image_feature = features[image_key]
  channels, native = tfds_options.image_layout(name,
                                               tuple(image_feature.shape))
  size = tfds_options.output_size(name, image_size, native)
  train_augment = tfds_options.resolve_train_augment(name, train_augment,
                                                     augment, native)
  decoder = tfds_options.check_image_options(name, channels, lighting,
                                             device_normalize, decoder)
  if num_classes is None:
    num_classes = getattr(features[label_key], 'num_classes', None)
    if num_classes is None:
      raise ValueError(f'{name}: the label {label_key!r} is not a ClassLabel; '
                       'pass num_classes.')
  skip_decoding = isinstance(image_feature, tfds.features.Image)
  num_train = splits[train_split].num_examples
  if mean is None or std is None:
    est_mean, est_std = _default_stats(name, data_dir, train_split, image_key,
                                       skip_decoding, channels, num_train)
    mean = est_mean if mean is None else mean
    std = est_std if std is None else std
  display = display_name or name
  info = DatasetInfo(
      name=display, num_classes=int(num_classes),
      image_shape=(size[0], size[1], channels), num_train=num_train,
      num_eval=splits[eval_split].num_examples,
      mean=check_channels(display, mean, channels, 'mean'),
      std=check_channels(display, std, channels, 'std'))
  return TfdsSource(info=info, tfds_name=name, data_dir=data_dir,
                    train_split=train_split, eval_split=eval_split,
                    image_key=image_key, label_key=label_key,
                    skip_decoding=skip_decoding, native_size=native,
                    train_augment=train_augment, min_scale=float(min_scale),
                    lighting=float(lighting), decoder=decoder,
                    device_normalize=bool(device_normalize))
