"""Tiny image folders and ILSVRC-style archives for the tests, made with PIL.

`write_image_folder` writes 3 classes of small images (40-64 px, each a
class colour plus noise) in mixed formats: JPEG, PNG, BMP, one grayscale
JPEG, one CMYK JPEG and one palette PNG, plus a text file and a hidden file
that are not images. `write_ilsvrc_tars` packs the same images as
ILSVRC2012's train tar (one inner tar per class) and flat val tar, with a
label file.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image

CLASSES = ("cat", "dog", "fish")
TRAIN_PER_CLASS = 4
VAL_PER_CLASS = 2
_COLOURS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))


def _image(label: int, seed: int) -> Image.Image:
  rng = np.random.default_rng(seed)
  h, w = rng.integers(40, 65, size=2)
  base = np.array(_COLOURS[label], np.float32)
  pixels = base + rng.normal(0, 30, (h, w, 3))
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _encode(img: Image.Image, kind: str) -> tuple[bytes, str]:
  """(bytes, extension) of an image in one of the mixed formats."""
  buf = io.BytesIO()
  if kind == "gray":
    img.convert("L").save(buf, "JPEG", quality=90)
  elif kind == "cmyk":
    img.convert("CMYK").save(buf, "JPEG", quality=90)
  elif kind == "png":
    img.save(buf, "PNG")
    return buf.getvalue(), ".png"
  elif kind == "palette":
    img.convert("P", palette=Image.ADAPTIVE, colors=16).save(buf, "PNG")
    return buf.getvalue(), ".png"
  elif kind == "bmp":
    img.save(buf, "BMP")
    return buf.getvalue(), ".bmp"
  else:
    img.save(buf, "JPEG", quality=90)
  return buf.getvalue(), ".JPEG"


# Which file gets which format: (split, class index, image index) -> kind.
_KINDS = {("train", 0, 1): "gray", ("train", 1, 2): "cmyk",
          ("train", 2, 0): "png", ("train", 2, 3): "palette",
          ("val", 1, 0): "bmp", ("val", 0, 1): "gray"}


def images(split: str):
  """(class, file name, bytes) of a split, in ImageFolder's order."""
  per = TRAIN_PER_CLASS if split == "train" else VAL_PER_CLASS
  out = []
  for c, cls in enumerate(CLASSES):
    for i in range(per):
      seed = (0 if split == "train" else 1000) + 100 * c + i
      data, ext = _encode(_image(c, seed), _KINDS.get((split, c, i), "jpeg"))
      out.append((cls, f"{cls}_{i:04d}{ext}", data))
  return out


def write_image_folder(root: str, extras: bool = True) -> str:
  """``root/train/<class>/*`` and ``root/val/<class>/*``; returns root."""
  for split in ("train", "val"):
    for cls, name, data in images(split):
      os.makedirs(os.path.join(root, split, cls), exist_ok=True)
      with open(os.path.join(root, split, cls, name), "wb") as f:
        f.write(data)
  if extras:
    with open(os.path.join(root, "train", "cat", "notes.txt"), "w") as f:
      f.write("not an image")
    with open(os.path.join(root, "train", "dog", ".DS_Store"), "wb") as f:
      f.write(b"\0" * 8)
  return root


def val_file_name(k: int) -> str:
  return f"ILSVRC2012_val_{k + 1:08d}.JPEG"


def write_flat_val(folder: str) -> list[str]:
  """The val images flat, ILSVRC-named, shuffled across classes; returns
  each file's class (one class name per line: a label file's content)."""
  os.makedirs(folder, exist_ok=True)
  val = images("val")
  order = np.random.default_rng(7).permutation(len(val))
  labels = []
  for k, j in enumerate(order):
    cls, _, data = val[j]
    with open(os.path.join(folder, val_file_name(k)), "wb") as f:
      f.write(data)
    labels.append(cls)
  return labels


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  info.mtime = 0
  tar.addfile(info, io.BytesIO(data))


def write_ilsvrc_tars(folder: str) -> tuple[str, str, str]:
  """(train tar, val tar, label file) in ILSVRC2012's layout."""
  os.makedirs(folder, exist_ok=True)
  train_tar = os.path.join(folder, "ILSVRC2012_img_train.tar")
  by_class: dict[str, list] = {}
  for cls, name, data in images("train"):
    by_class.setdefault(cls, []).append((name, data))
  with tarfile.open(train_tar, "w") as outer:
    for cls in reversed(CLASSES):  # archive order must not matter
      buf = io.BytesIO()
      with tarfile.open(fileobj=buf, mode="w") as inner:
        for name, data in reversed(by_class[cls]):
          _add(inner, name, data)
      _add(outer, f"{cls}.tar", buf.getvalue())
  flat = os.path.join(folder, "flat_val")
  labels = write_flat_val(flat)
  val_tar = os.path.join(folder, "ILSVRC2012_img_val.tar")
  with tarfile.open(val_tar, "w") as tar:
    for k in range(len(labels)):
      with open(os.path.join(flat, val_file_name(k)), "rb") as f:
        _add(tar, val_file_name(k), f.read())
  label_file = os.path.join(folder, "val_labels.txt")
  with open(label_file, "w") as f:
    f.write("\n".join(labels) + "\n")
  return train_tar, val_tar, label_file
