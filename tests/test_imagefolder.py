"""The imagefolder dataset on generated folders: values, order, shards,
resume, the manifest, and each bad input's one-line error."""

import io
import logging
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from ovsw_jax import data
from ovsw_jax.data import augment
from ovsw_jax.data import crop_checks
from ovsw_jax.data import dataset_digest
from ovsw_jax.data import image_files
from ovsw_jax.data import imagefolder
from ovsw_jax.data import manifest
from ovsw_jax.data import DataNotFoundError
from tests import image_folder_data as folder_data

SIZE = 24


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return folder_data.write_image_folder(
      str(tmp_path_factory.mktemp("imagefolder")))


def _copy(folder, tmp_path) -> str:
  dst = str(tmp_path / "copy")
  shutil.copytree(folder, dst, ignore=shutil.ignore_patterns(".ovsw_jax"))
  return dst


def _source(data_dir, **options):
  """A new source (nothing cached in this process: the folder may have
  changed since the last one)."""
  imagefolder.examples.cache_clear()
  return imagefolder.make_source(data_dir, **{"image_size": SIZE, **options})


def _pil_eval(raw: bytes, mean, std) -> np.ndarray:
  """The eval transform in PIL: RGB, resize the shorter side to
  SIZE / 0.875, central SIZE crop (one box resize), normalise."""
  img = Image.open(io.BytesIO(raw)).convert("RGB")
  top, left, h, w = augment.eval_crop_box(img.size[1], img.size[0],
                                          out_hw=(SIZE, SIZE), fraction=0.875)
  out = np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR,
                              box=(left, top, left + w, top + h)))
  return (out / np.float32(255) - np.float32(mean)) / np.float32(std)


def test_classes_order_formats_and_values(folder, caplog):
  with caplog.at_level(logging.WARNING):
    source = _source(folder, decoder="pil")
  info = source.info
  assert info.class_names == folder_data.CLASSES
  assert (info.num_classes, info.num_train, info.num_eval) == (3, 12, 6)
  assert info.image_shape == (SIZE, SIZE, 3)
  # The text file is ignored and counted; the hidden file is not a file.
  assert "ignored 1 files that are not images" in caplog.text
  assert "notes.txt" in caplog.text
  # Eval: ImageFolder's order (class, then name); each value as PIL makes
  # it, grayscale, palette PNG, BMP included (val has a BMP and a gray).
  images, labels = source.eval_examples(np.arange(6))
  val = folder_data.images("val")
  assert list(labels) == [folder_data.CLASSES.index(c) for c, _, _ in val]
  for k, (_, _, raw) in enumerate(val):
    np.testing.assert_allclose(images[k], _pil_eval(raw, info.mean, info.std),
                               atol=1e-5)
  # Train: the gray, CMYK, PNG and palette images come out as RGB crops.
  train, labels = source.train_examples(np.arange(12), seed=1, epoch=0)
  assert train.shape == (12, SIZE, SIZE, 3) and np.isfinite(train).all()
  assert list(labels) == [0] * 4 + [1] * 4 + [2] * 4
  gray = train[1] * np.float32(info.std) + np.float32(info.mean)
  np.testing.assert_allclose(gray[..., 0], gray[..., 1], atol=1e-5)


def test_auto_decoder_is_native_where_built_and_close_to_pil(folder):
  from ovsw_jax.data import native_jpeg  # pylint: disable=g-import-not-at-top
  auto = _source(folder, image_size=40)
  assert auto.decoder == ("native" if native_jpeg.available()
                          else "pil_draft")
  pil = _source(folder, image_size=40, decoder="pil")
  # At 40 px no crop is twice the output (no DCT-domain downscale): the
  # decoders differ by rounding (IDCT, and the filter's float vs PIL's
  # fixed point), in levels of 255.
  a, b = (s.eval_examples(np.arange(6))[0] for s in (auto, pil))
  levels = np.abs(a - b) * np.float32(auto.info.std) * 255
  assert levels.mean() < 0.5 and levels.max() < 8


def test_two_processes_shard_disjoint_and_complete_and_resume(folder):
  kw = dict(seed=5, image_size=SIZE, prefetch=0)
  one = data.create_train_iterator("imagefolder", folder, 6, process_index=0,
                                   process_count=1, **kw)
  two = [data.create_train_iterator("imagefolder", folder, 6, process_index=p,
                                    process_count=2, **kw) for p in (0, 1)]
  seen = []
  for step in range(4):  # two epochs of 2 steps
    batch = next(one)
    halves = [next(it) for it in two]
    for key in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([h[key] for h in halves]), batch[key])
    seen.append(batch["image"])
  # Within an epoch, no training image twice (the 12 are all distinct).
  epoch0 = np.concatenate(seen[:2]).reshape(12, -1)
  assert len({row.tobytes() for row in epoch0}) == 12
  # Resume: start_step=3 yields what step 3 of a fresh iterator did.
  resumed = data.create_train_iterator("imagefolder", folder, 6,
                                       process_index=0, process_count=1,
                                       start_step=3, **kw)
  np.testing.assert_array_equal(next(resumed)["image"], seen[3])
  # Eval over 2 processes: every val image exactly once (4 per batch).
  rows = []
  for p in (0, 1):
    for b in data.create_eval_iterator("imagefolder", folder, 4,
                                       process_index=p, process_count=2,
                                       image_size=SIZE, prefetch=0):
      rows += [(p, img.tobytes()) for img in b["image"][b["mask"]]]
  whole = _source(folder).eval_examples(np.arange(6))[0]
  assert sorted(r for _, r in rows) == sorted(i.tobytes() for i in whole)


def test_manifest_is_cached_checked_and_rebuilt(folder, tmp_path, caplog):
  d = _copy(folder, tmp_path)
  _source(d)
  path = manifest.candidate_paths(d, "train", None)[0]
  assert os.path.exists(path)
  listing, _ = manifest.load_listing(d, "train", "t")
  assert manifest.stale_reason(listing, "auto") is None
  assert manifest.stale_reason(listing, "full") is None
  # A new image: the manifest no longer matches, and is rebuilt, saying so.
  shutil.copy(os.path.join(d, "train", "cat", "cat_0000.JPEG"),
              os.path.join(d, "train", "cat", "cat_0009.JPEG"))
  assert "changed since it was listed" in manifest.stale_reason(listing,
                                                                "auto")
  with caplog.at_level(logging.WARNING):
    assert _source(d).info.num_train == 13
  assert "manifest" in caplog.text and "stale" in caplog.text
  # A removed class folder's image: the same.
  os.remove(os.path.join(d, "train", "fish", "fish_0001.JPEG"))
  assert _source(d).info.num_train == 12
  # A damaged manifest file is rebuilt, not trusted.
  with open(path, "wb") as f:
    f.write(b"\x1f\x8bdamaged")
  assert _source(d).info.num_train == 12
  # manifest_dir puts it elsewhere.
  other = str(tmp_path / "manifests")
  _source(d, manifest_dir=other)
  assert sorted(os.listdir(other)) == ["manifest-train.json.gz",
                                       "manifest-val.json.gz"]


def _one_line_error(exc_type, match, data_dir, **options):
  with pytest.raises(exc_type, match=match) as e:
    _source(data_dir, **options)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_each_bad_input_has_its_one_line_error(folder, tmp_path):
  d = _copy(folder, tmp_path)
  os.makedirs(os.path.join(d, "train", "empty_class"))
  msg = _one_line_error(ValueError, "holds no images", d)
  assert os.path.join(d, "train", "empty_class") in msg
  os.rmdir(os.path.join(d, "train", "empty_class"))
  shutil.copytree(os.path.join(d, "val", "cat"), os.path.join(d, "val", "cow"))
  msg = _one_line_error(ValueError, "different class folders", d)
  assert "only in val: ['cow']" in msg
  shutil.rmtree(os.path.join(d, "val", "cow"))
  _one_line_error(DataNotFoundError, "is not a folder", d,
                  eval_split="validation")
  _one_line_error(ValueError, "no data_dir", None)
  empty = tmp_path / "empty"
  (empty / "train" / "a").mkdir(parents=True)
  (empty / "train" / "a" / "readme.md").write_text("x")
  (empty / "val").mkdir()
  msg = _one_line_error(ValueError, "no images under", str(empty))
  assert "1 non-image files were ignored" in msg


def test_corrupt_image_errors_or_is_skipped_and_counted(folder, tmp_path,
                                                         caplog):
  d = _copy(folder, tmp_path)
  bad = os.path.join(d, "train", "dog", "dog_0001.JPEG")
  with open(bad, "rb") as f:
    raw = f.read()
  with open(bad, "wb") as f:
    f.write(raw[:len(raw) // 2])  # truncated
  source = _source(d)
  k = source._examples().train.files.index("dog/dog_0001.JPEG")  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="is not a readable image") as e:
    source.train_examples(np.array([k]), seed=0, epoch=0)
  assert bad in str(e.value) and "skip_corrupt=True" in str(e.value)
  assert "\n" not in str(e.value)
  with caplog.at_level(logging.WARNING):
    skipping = _source(d, skip_corrupt=True)
  assert skipping.info.num_train == 11
  assert "skipped 1 corrupt images" in caplog.text and bad in caplog.text
  images, _ = skipping.train_examples(np.arange(11), seed=0, epoch=0)
  assert np.isfinite(images).all()


def test_flat_ilsvrc_val_read_directly(folder, tmp_path):
  d = _copy(folder, tmp_path)
  shutil.rmtree(os.path.join(d, "val"))
  labels = folder_data.write_flat_val(os.path.join(d, "val"))
  msg = _one_line_error(ValueError, "ILSVRC2012's validation layout", d)
  assert "python -m ovsw_jax.data.ilsvrc_val" in msg
  label_file = tmp_path / "labels.txt"
  label_file.write_text("\n".join(labels) + "\n")
  flat = _source(d, eval_labels=str(label_file))
  sorted_ = _source(folder)
  assert flat.info.num_eval == 6
  # Ordered by (label, name): the same multiset of (label, image) pairs as
  # the class-folder layout of the same images.
  a, la = flat.eval_examples(np.arange(6))
  b, lb = sorted_.eval_examples(np.arange(6))
  assert sorted(zip(la, (x.tobytes() for x in a))) == sorted(
      zip(lb, (x.tobytes() for x in b)))
  assert list(la) == sorted(la)


def test_flat_images_beside_class_folders_are_an_unfinished_sort(
    folder, tmp_path, caplog):
  d = _copy(folder, tmp_path)
  val = os.path.join(d, "val")
  # What --mode=copy leaves: each flat image is also in its class folder.
  shutil.copy(os.path.join(val, "dog", "dog_0000.bmp"), val)
  with caplog.at_level(logging.WARNING):
    assert _source(d).info.num_eval == 6
  assert "ignored 1 flat images beside the class folders" in caplog.text
  # An interrupted sort's leftover: in no class folder.
  os.replace(os.path.join(val, "cat", "cat_0001.JPEG"),
             os.path.join(val, "cat_0001.JPEG"))
  msg = _one_line_error(ValueError, "leftover flat images", d)
  assert os.path.join(val, "cat_0001.JPEG") in msg
  assert f"python -m ovsw_jax.data.ilsvrc_val --val_dir={val}" in msg


def test_an_image_over_the_pixel_limit_says_so_or_is_skipped(
    folder, tmp_path, monkeypatch):
  d = _copy(folder, tmp_path)
  big = os.path.join(d, "train", "dog", "dog_0003.JPEG")
  # 60,000 pixels; the others have at most 64 x 64.
  Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(big, "JPEG")
  monkeypatch.setenv(crop_checks.MAX_IMAGE_PIXELS_ENV, "10000")
  source = _source(d)
  k = source._examples().train.files.index("dog/dog_0003.JPEG")  # pylint: disable=protected-access
  with pytest.raises(crop_checks.ImageTooLargeError) as e:
    source.train_examples(np.array([k]), seed=0, epoch=0)
  assert not isinstance(e.value, image_files.CorruptImageError)
  assert big in str(e.value) and "OVSW_MAX_IMAGE_PIXELS" in str(e.value)
  assert "\n" not in str(e.value)
  # skip_corrupt's pass over the images applies the decoder's limit...
  assert _source(d, skip_corrupt=True).info.num_train == 11
  # ...as it is now: a new limit redoes the cached verdicts.
  monkeypatch.setenv(crop_checks.MAX_IMAGE_PIXELS_ENV, "100000")
  assert _source(d, skip_corrupt=True).info.num_train == 12


def test_a_png_is_decoded_once_and_a_truncated_one_refused(
    folder, tmp_path, monkeypatch):
  source = _source(folder)
  files = source._examples().train.files  # pylint: disable=protected-access
  pngs = np.array([k for k, f in enumerate(files) if f.endswith(".png")])
  assert len(pngs) == 2
  opened, real_open = [], Image.open
  monkeypatch.setattr(Image, "open",
                      lambda *a, **k: opened.append(1) or real_open(*a, **k))
  source.train_examples(pngs, seed=0, epoch=0)
  assert len(opened) == len(pngs)  # no decode before the decode
  monkeypatch.undo()
  d = _copy(folder, tmp_path)
  bad = os.path.join(d, "train", "fish", "fish_0000.png")
  with open(bad, "r+b") as f:
    f.truncate(os.path.getsize(bad) // 2)
  source = _source(d)
  k = source._examples().train.files.index("fish/fish_0000.png")  # pylint: disable=protected-access
  with pytest.raises(image_files.CorruptImageError) as e:
    source.train_examples(np.array([k]), seed=0, epoch=0)
  assert bad in str(e.value) and "skip_corrupt=True" in str(e.value)
  assert "\n" not in str(e.value)


def test_every_process_must_see_the_same_examples(folder, tmp_path):
  d = _copy(folder, tmp_path)
  same = _source(d).info
  assert same.digest == _source(folder).info.digest  # another path
  source = _source(d)
  os.remove(os.path.join(d, "train", "dog", "dog_0002.JPEG"))
  fewer = _source(d).info
  assert fewer.digest != same.digest and fewer.num_train == 11
  # A grain worker process lists the folder again: it must find what the
  # source was built on.
  imagefolder.examples.cache_clear()
  with pytest.raises(ValueError, match="the source was built on 12 train") \
      as e:
    source.train_examples(np.arange(2), seed=0, epoch=0)
  assert "\n" not in str(e.value) and fewer.digest[:12] in str(e.value)
  # Across hosts (here two stand-ins: the rows each would contribute).
  rows = lambda *infos: lambda _: np.stack([
      np.array([i.num_train, i.num_eval, *bytes.fromhex(i.digest)])
      for i in infos])
  with pytest.raises(ValueError) as e:
    dataset_digest.check_processes_agree(same, 2, rows(same, fewer))
  msg = str(e.value)
  assert "process 0 12 train / 6 eval examples" in msg, msg
  assert f"process 1 11 train / 6 eval examples, digest {fewer.digest[:12]}" \
      in msg and "\n" not in msg
  dataset_digest.check_processes_agree(same, 2, rows(same, same))
  dataset_digest.check_processes_agree(fewer, 1, None)  # one process: no-op
  # A checkpoint records it; a resume on other data is told what changed.
  meta = {"step": 5, **dataset_digest.record(same)}
  assert dataset_digest.change_since(meta, same) is None
  msg = dataset_digest.change_since(meta, fewer)
  assert "then 12 train / 6 eval examples" in msg and "now 11 train" in msg
