"""Fuzz driver of the native JPEG crop decoder (run under the sanitizers).

Seeds: crops of scikit-learn's sample photos, small and of odd sizes, encoded
by several encoders (PIL baseline, progressive, optimized, with restart
markers, grayscale, 4:4:4, CMYK; simplejpeg's libjpeg-turbo at 4:2:2 and
4:1:1). Each input (a function of (seed, index) only) is a seed, mutated
(bit flips, interesting bytes, truncation, splicing two files, a segment
deleted or repeated, the SOF's declared size changed, up to a bomb), with a
random box and output size, a fifth of them bad on purpose. Every call goes
through the Python wrapper and, for bad arguments, also straight to the C
function, so both layers' checks run under ASan and UBSan.

Each outcome is counted, and the ones that must never happen are counted as
`FAILURES`: a bad argument accepted, an image over the pixel limit decoded,
an untouched seed refused or decoded unlike PIL's scaled decode, an
exception other than the documented ones.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import io
import sys
from typing import Any, Callable

import numpy as np

from ovsw_jax.data import crop_checks
from ovsw_jax.data import jpeg
from ovsw_jax.data import native_jpeg

FAILURES = ("bad_argument_accepted", "bomb_decoded", "seed_refused",
            "seed_mismatch", "unexpected_exception", "c_layer_accepted")
# Bad arguments, as (box from the image's (h, w), out_hw).
BAD_ARGUMENTS: dict[str, Callable[[int, int], tuple[Any, Any]]] = {
    "out_zero": lambda h, w: ((0, 0, h, w), (0, 8)),
    "out_negative": lambda h, w: ((0, 0, h, w), (8, -8)),
    "out_huge": lambda h, w: ((0, 0, h, w), (70000, 8)),
    "box_nan": lambda h, w: ((float("nan"), 0, h, w), (8, 8)),
    "box_inf": lambda h, w: ((0, 0, h, float("inf")), (8, 8)),
    "box_zero": lambda h, w: ((0, 0, 0, w), (8, 8)),
    "box_negative": lambda h, w: ((0, 0, h, -w), (8, 8)),
    "box_outside": lambda h, w: ((h + 5, w + 5, 4, 4), (8, 8)),
    "box_past_edge": lambda h, w: ((1, 1, h, w), (8, 8)),
    "box_huge": lambda h, w: ((1, 1, 1e9, 1e9), (8, 8)),
    "box_above": lambda h, w: ((-2, 0, 4, 4), (8, 8)),
}


@functools.lru_cache(maxsize=1)
def seeds() -> tuple[tuple[str, bytes], ...]:
  """(encoder, JPEG bytes) of every seed."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import simplejpeg  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = load_sample_images().images
  out = []
  sizes = [(17, 23), (64, 48), (33, 97), (120, 90), (8, 8), (1, 130)]
  for i, (h, w) in enumerate(sizes):
    photo = photos[i % len(photos)]
    img = Image.fromarray(photo[37 * i:37 * i + 4 * h, 51 * i:51 * i + 4 * w]
                          ).resize((w, h), Image.BICUBIC)
    pil = {
        "pil_baseline": {"quality": 90},
        "pil_progressive": {"quality": 85, "progressive": True},
        "pil_optimize": {"quality": 75, "optimize": True},
        "pil_restart": {"quality": 90, "restart_marker_blocks": 2},
        "pil_444": {"quality": 95, "subsampling": 0},
    }
    for name, kw in pil.items():
      out.append((name, _save(img, **kw)))
    out.append(("pil_gray", _save(img.convert("L"), quality=90)))
    out.append(("pil_cmyk", _save(img.convert("CMYK"), quality=90)))
    rgb = np.ascontiguousarray(np.asarray(img))
    for sub in ("422", "411"):
      out.append((f"simplejpeg_{sub}", simplejpeg.encode_jpeg(
          rgb, quality=80, colorsubsampling=sub, fastdct=True)))
  return tuple(out)


def _save(img, **kw) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format="JPEG", **kw)
  return buf.getvalue()


def declare_size(data: bytes, h: int, w: int) -> bytes:
  """``data`` whose SOF header declares h x w (the pixels stay as they are);
  unchanged when it has no SOF0/1/2 marker."""
  for sof in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
    i = data.find(sof)
    if i >= 0 and i + 9 <= len(data):
      return (data[:i + 5] + h.to_bytes(2, "big") + w.to_bytes(2, "big") +
              data[i + 9:])
  return data


def _mutate(rng: np.random.Generator, data: bytes,
            other: bytes) -> tuple[str, bytes]:
  """One random mutation of ``data`` (``other``: a second seed to splice)."""
  b = bytearray(data)
  kind = rng.choice(["none", "bitflip", "bytes", "truncate", "splice",
                     "delete", "repeat", "size", "bomb"],
                    p=[.1, .2, .15, .15, .1, .1, .05, .1, .05])
  if kind == "bitflip":
    for i in rng.integers(0, len(b), int(rng.integers(1, 9))):
      b[i] ^= 1 << int(rng.integers(8))
  elif kind == "bytes":
    for i in rng.integers(0, len(b), int(rng.integers(1, 5))):
      b[i] = int(rng.choice([0x00, 0xFF, 0x7F, 0x80, 0xD8, 0xD9, 0xC0]))
  elif kind == "truncate":
    b = b[:int(rng.integers(1, len(b)))]
  elif kind == "splice":
    b = b[:int(rng.integers(1, len(b)))] + other[int(rng.integers(
        len(other))):]
  elif kind in ("delete", "repeat"):
    i = int(rng.integers(len(b)))
    j = min(len(b), i + int(rng.integers(1, 64)))
    b = b[:i] + b[j:] if kind == "delete" else b[:j] + b[i:j] + b[j:]
  elif kind in ("size", "bomb"):
    h, w = ((int(rng.integers(1, 300)), int(rng.integers(1, 300)))
            if kind == "size" else (int(rng.integers(20000, 65501)),) * 2)
    b = bytearray(declare_size(bytes(b), h, w))
  return str(kind), bytes(b)


def _random_args(rng: np.random.Generator, h: int, w: int
                 ) -> tuple[str, tuple[float, ...], tuple[int, int]]:
  """(bad-argument kind or 'valid', box, out_hw) for an h x w image."""
  if rng.uniform() < 0.2:
    kind = str(rng.choice(sorted(BAD_ARGUMENTS)))
    box, out_hw = BAD_ARGUMENTS[kind](h, w)
    return kind, box, out_hw
  bh = float(rng.uniform(0.05, 1.0)) * h
  bw = float(rng.uniform(0.05, 1.0)) * w
  top, left = float(rng.uniform(0, h - bh)), float(rng.uniform(0, w - bw))
  out_hw = (int(rng.integers(1, 65)), int(rng.integers(1, 65)))
  return "valid", (top, left, bh, bw), out_hw


def _outcome(data: bytes, box, out_hw) -> tuple[str, Any]:
  """(what the wrapper did, its pixels if it decoded)."""
  try:
    out = native_jpeg.decode_crop_resize(data, box, out_hw)
  except crop_checks.ImageTooLargeError:
    return "refused_too_large", None
  except native_jpeg.JpegDecodeError:
    return "refused_corrupt", None
  except ValueError:
    return "refused_argument", None
  except Exception:  # pylint: disable=broad-except
    return "unexpected_exception", None
  if out is None:
    return "not_rgb", None
  assert out.shape == (*out_hw, 3) and out.dtype == np.uint8
  return "decoded", out


def _c_layer(data: bytes, box, out_hw) -> int:
  """The C function's status for arguments the wrapper refuses."""
  err = ctypes.create_string_buffer(256)
  pixels = np.zeros(8 * 8 * 3, np.uint8)  # the C checks before it writes
  return native_jpeg._load().ovsw_jpeg_decode_crop_resize(  # pylint: disable=protected-access
      data, len(data), np.asarray(box, np.float64).ctypes.data,
      int(out_hw[0]), int(out_hw[1]), 0, crop_checks.max_image_pixels(),
      pixels.ctypes.data, err, 256)


def _matches_reference(data: bytes, box, out_hw, got: np.ndarray) -> bool:
  """Whether ``got`` is the picture PIL's or simplejpeg's scaled decode
  gives (within 4 levels of 255 on average: libjpeg versions upsample 4:2:2
  chroma differently; a wrong crop or garbage is far over)."""
  errors = [float(np.abs(got.astype(int) - jpeg.decode_crop_resize(
      data, lambda h, w: box, out_hw, ref).astype(int)).mean())
            for ref in ("pil_draft", "simplejpeg")]
  return min(errors) < 4.0


def one_input(seed: int, index: int, counts: collections.Counter) -> None:
  """Runs input ``index`` of ``seed`` and counts what happened."""
  rng = np.random.default_rng([seed, index])
  failures_before = sum(counts[f] for f in FAILURES)
  corpus = seeds()
  encoder, data = corpus[int(rng.integers(len(corpus)))]
  mutation, data = _mutate(rng, data, corpus[int(rng.integers(len(corpus)))][1])
  counts[f"mutation:{mutation}"] += 1
  counts[f"encoder:{encoder}"] += 1
  hw = native_jpeg.image_size(data)
  if hw is None:
    counts["outcome:not_a_jpeg"] += 1
    return
  kind, box, out_hw = _random_args(rng, *hw)
  outcome, pixels = _outcome(data, box, out_hw)
  counts[f"outcome:{outcome}"] += 1
  too_large = hw[0] * hw[1] > crop_checks.max_image_pixels()
  if kind != "valid":
    counts[f"bad_argument:{kind}"] += 1
    if outcome in ("decoded", "not_rgb"):
      counts["bad_argument_accepted"] += 1
    if _c_layer(data, box, out_hw) not in (3, 4):
      counts["c_layer_accepted"] += 1
  elif too_large and outcome != "refused_too_large":
    counts["bomb_decoded"] += 1
  elif mutation == "none" and encoder != "pil_cmyk":
    if outcome != "decoded":
      counts["seed_refused"] += 1
    elif not _matches_reference(data, box, out_hw, pixels):
      counts["seed_mismatch"] += 1
  if outcome == "unexpected_exception":
    counts["unexpected_exception"] += 1
  if sum(counts[f] for f in FAILURES) > failures_before:
    print(f"jpeg input {index} ({encoder}, {mutation}, {kind}, box={box}, "
          f"out_hw={out_hw}): {outcome}", file=sys.stderr)
