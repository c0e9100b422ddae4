"""An ImageNet-like TFDS array_record dataset of real-photo JPEGs, no download.

Each image is a random crop (area 30-100%), flip and colour change of one of
scikit-learn's two sample photos (``load_sample_images``: china.jpg,
flower.jpg, 427x640), resized to ImageNet's typical sizes (long side
400-600, short/long 0.66-0.8, so about 500x375 on average; a quarter
portrait) and re-encoded as JPEG at quality 90. Read it back as
``dataset="tfds:ovsw_imagenet_like"`` with ``data_dir`` the folder given.
"""

from __future__ import annotations

import io

import numpy as np

NAME = 'ovsw_imagenet_like'
DATASET = 'tfds:' + NAME


def _photos():
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  return load_sample_images().images


def make_jpeg(photos, seed: int, index: int, size_scale: float = 1.0,
              quality: int = 90) -> bytes:
  """JPEG bytes of example `index`: a function of (seed, index) only."""
  from PIL import Image, ImageEnhance  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([seed, index])
  photo = photos[int(rng.integers(len(photos)))]
  ph, pw = photo.shape[:2]
  long_side = int(rng.integers(400, 601) * size_scale)
  short_side = max(8, int(round(long_side * rng.uniform(0.66, 0.8))))
  portrait = rng.uniform() < 0.25
  out_h, out_w = ((long_side, short_side) if portrait
                  else (short_side, long_side))
  # A crop of the photo with the output's aspect ratio, 30-100% of the most
  # that fits.
  fit = min(ph / out_h, pw / out_w) * np.sqrt(rng.uniform(0.3, 1.0))
  ch, cw = int(out_h * fit), int(out_w * fit)
  top = int(rng.integers(ph - ch + 1))
  left = int(rng.integers(pw - cw + 1))
  img = Image.fromarray(photo[top:top + ch, left:left + cw])
  img = img.resize((out_w, out_h), Image.BICUBIC)
  if rng.uniform() < 0.5:
    img = img.transpose(Image.FLIP_LEFT_RIGHT)
  img = ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
  img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def write_dataset(data_dir: str, num_train: int, num_eval: int,
                  num_classes: int = 10, seed: int = 0,
                  size_scale: float = 1.0) -> str:
  """Writes the dataset under `data_dir` in array_record format.

  Args:
    data_dir: the TFDS data_dir to write into.
    num_train, num_eval: examples in the 'train' and 'validation' splits.
    num_classes: labels are ``index % num_classes``.
    seed: decides every image.
    size_scale: multiplies the image sizes (< 1 for tiny test datasets).

  Returns:
    The dataset name to train on, "tfds:ovsw_imagenet_like".
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if num_train < 1 or num_eval < 1:
    raise ValueError(f'num_train={num_train} and num_eval={num_eval} must be '
                     '>= 1.')
  photos = _photos()
  sizes = {'train': num_train, 'validation': num_eval}

  class OvswImagenetLike(tfds.core.GeneratorBasedBuilder,
                         skip_registration=True):
    """ImageNet-like JPEGs from scikit-learn's sample photos."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(None, None, 3),
                                           encoding_format='jpeg'),
              'label': tfds.features.ClassLabel(num_classes=num_classes)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {s: self._generate_examples(s) for s in sizes}

    def _generate_examples(self, split):
      offset = 0 if split == 'train' else num_train
      for i in range(sizes[split]):
        # Stored as encoded: tfds keeps the bytes as they are.
        yield i, {'image': make_jpeg(photos, seed, offset + i, size_scale),
                  'label': i % num_classes}

  OvswImagenetLike(data_dir=data_dir,
                   file_format='array_record').download_and_prepare()
  return DATASET


def header_size(data: bytes) -> tuple[int, int]:
  """(height, width) from the JPEG header, without decoding."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  w, h = Image.open(io.BytesIO(data)).size
  return h, w
