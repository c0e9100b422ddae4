"""How a TFDS dataset's options resolve for `tfds_source.make_source`.

Each function checks one group of options against the dataset (its splits
and features, its image layout) and returns the resolved value, or raises
naming the bad value and the valid choices.
"""

from __future__ import annotations

from typing import Any, Sequence

from ovsw_jax.data import jpeg

TRAIN_AUGMENTS = ('inception_crop', 'pad_crop_flip', 'none')


def resolve_splits_and_keys(name: str, splits: Any, features: Any, *,
                            train_split: str, eval_split: str | None,
                            image_key: str, label_key: str) -> str:
  """The eval split (None: 'validation' if there is one, else 'test');
  raises naming the valid choices when a split or feature key is absent."""
  if eval_split is None:
    eval_split = 'validation' if 'validation' in splits else 'test'
  for what, split in (('train_split', train_split), ('eval_split', eval_split)):
    try:
      splits[split]
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{name}: {what}={split!r} is not a split of this '
                       f'dataset; it has {sorted(splits)}.') from e
  for what, key in (('image_key', image_key), ('label_key', label_key)):
    if key not in features:
      raise ValueError(f'{name}: {what}={key!r} is not a feature; the '
                       f'features are {sorted(features.keys())}.')
  return eval_split


def image_layout(name: str, shape: tuple[Any, ...]
                 ) -> tuple[int, tuple[int, int] | None]:
  """(channels, native (H, W) or None for variable-size images)."""
  channels = shape[-1] if len(shape) == 3 and shape[-1] else 3
  if channels not in (1, 3):
    raise ValueError(f'{name}: images with {channels} channels are not '
                     'supported (1 or 3).')
  native = shape[:2] if len(shape) == 3 and None not in shape[:2] else None
  return channels, native


def output_size(name: str, image_size: int | Sequence[int] | None,
                native: tuple[int, int] | None) -> tuple[int, ...]:
  """The output (H, W): ``image_size``, else native, else 224 x 224."""
  if image_size is None:
    size = native or (224, 224)
  elif isinstance(image_size, int):
    size = (image_size, image_size)
  else:
    size = tuple(int(s) for s in image_size)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f'{name}: image_size={image_size} must be an int or '
                     '(height, width).')
  return size


def resolve_train_augment(name: str, train_augment: str | None,
                          augment: bool,
                          native: tuple[int, int] | None) -> str:
  """The training augmentation: by image size when None; 'none' if off."""
  if train_augment is None:
    train_augment = 'pad_crop_flip' if native else 'inception_crop'
  if train_augment not in TRAIN_AUGMENTS:
    raise ValueError(f'{name}: train_augment={train_augment!r}; use one of '
                     f'{TRAIN_AUGMENTS}.')
  return train_augment if augment else 'none'


def check_image_options(name: str, channels: int, lighting: float,
                        device_normalize: bool, decoder: str) -> str:
  """Raises on options that do not go together; the decoder to use."""
  if lighting and channels != 3:
    raise ValueError(f'{name}: lighting={lighting} needs RGB images.')
  if lighting and device_normalize:
    raise ValueError(f'{name}: lighting={lighting} is added to float images '
                     'on the host; set device_normalize=False to use it.')
  return jpeg.check_decoder(decoder)
