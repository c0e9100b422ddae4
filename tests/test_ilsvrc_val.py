"""ILSVRC2012's validation labels: every label file format, and sorting the
flat folder into class folders, resumed after an interruption."""

import io
import os
import tarfile

import numpy as np
import pytest

from ovsw_jax.data import ilsvrc_val
from tests import image_folder_data as folder_data

NAMES = [folder_data.val_file_name(k) for k in range(6)]
CLASSES = ["n01", "n02", "n03"]
TRUTH = ["n02", "n01", "n03", "n02", "n03", "n01"]  # NAMES[k]'s class


def _devkit(path, wnids, ids_per_image):
  """A tiny ILSVRC2012_devkit_t12.tar.gz: meta.mat + the ground truth."""
  from scipy import io as sio  # pylint: disable=g-import-not-at-top
  dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")]
  # IDs in an order unlike the sorted names; one non-leaf synset.
  synsets = np.array([(i + 1, w, 0) for i, w in enumerate(wnids)] +
                     [(99, "n00000000", 3)], dtype=dt)
  meta = io.BytesIO()
  sio.savemat(meta, {"synsets": synsets})
  with tarfile.open(path, "w:gz") as tar:
    for name, blob in (("meta.mat", meta.getvalue()),
                       (ilsvrc_val.GROUND_TRUTH, "\n".join(
                           map(str, ids_per_image)).encode())):
      info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/data/{name}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))


@pytest.fixture
def label_files(tmp_path):
  files = {
      "plain.txt": "\n".join(TRUTH),
      "caffe.txt": "\n".join(f"{n} {CLASSES.index(c)}"
                             for n, c in zip(NAMES, TRUTH)),
      "kaggle.csv": "ImageId,PredictionString\n" + "\n".join(
          f"{n[:-5]},{c} 1 2 3 4" for n, c in zip(NAMES, TRUTH)),
  }
  for fname, text in files.items():
    (tmp_path / fname).write_text(text)
  devkit = str(tmp_path / "ILSVRC2012_devkit_t12.tar.gz")
  order = ["n03", "n01", "n02"]  # ILSVRC2012_ID 1, 2, 3
  _devkit(devkit, order, [order.index(c) + 1 for c in TRUTH])
  return {**{f.split(".")[0]: str(tmp_path / f) for f in files},
          "devkit": devkit}


def _flat_val(folder) -> str:
  """NAMES flat in `folder`, each file's bytes naming it."""
  folder.mkdir()
  for n in NAMES:
    (folder / n).write_bytes(n.encode() * 20)
  return str(folder)


def _where(val) -> dict[str, str]:
  """Each image's class folder (its bytes name it)."""
  return {(val / c / n).read_bytes()[:len(n)].decode(): c
          for c in sorted(os.listdir(val)) if (val / c).is_dir()
          for n in os.listdir(val / c) if not n.startswith(".")}


def test_every_label_file_format(label_files, tmp_path):
  for path in label_files.values():
    got = ilsvrc_val.resolve(ilsvrc_val.read_labels(path, NAMES), NAMES,
                             CLASSES, path)
    assert got == [CLASSES.index(c) for c in TRUTH], path
  # Order-based files key labels by image number, whatever the order of
  # the names given.
  labels = ilsvrc_val.read_labels(label_files["plain"], NAMES[::-1])
  assert ilsvrc_val.resolve(labels, [NAMES[4], NAMES[1]], CLASSES,
                            "x") == [2, 0]
  with pytest.raises(ValueError, match="not a label file"):
    (tmp_path / "bad.txt").write_text("a b c\n")
    ilsvrc_val.read_labels(str(tmp_path / "bad.txt"), NAMES)


@pytest.mark.parametrize("kind", ["plain", "devkit", "caffe"])
def test_a_label_count_unlike_the_image_count_is_refused(label_files, kind):
  for names in (NAMES[:5], NAMES + [folder_data.val_file_name(6)]):
    with pytest.raises(ValueError) as e:
      ilsvrc_val.read_labels(label_files[kind], names)
    msg = str(e.value)
    assert "6 labels" in msg and f"{len(names)} images" in msg, msg
    assert "\n" not in msg and "pass the label file" in msg


def test_order_based_labels_need_ilsvrc_names(label_files):
  names = [f"img_{k}.JPEG" for k in range(6)]
  with pytest.raises(ValueError, match="img_0.JPEG is not named "
                     "ILSVRC2012_val_<8 digits>"):
    ilsvrc_val.read_labels(label_files["plain"], names)


def test_sort_and_rerun(label_files, tmp_path):
  val = tmp_path / "val"
  _flat_val(val)
  assert ilsvrc_val.main([f"--val_dir={val}",
                          f"--labels={label_files['devkit']}"]) == 0
  assert _where(val) == dict(zip(NAMES, TRUTH))
  assert sorted(os.listdir(val)) == CLASSES
  # Idempotent: a rerun (nothing left flat) changes nothing.
  assert ilsvrc_val.main([f"--val_dir={val}",
                          f"--labels={label_files['devkit']}"]) == 0
  assert _where(val) == dict(zip(NAMES, TRUTH))


@pytest.mark.parametrize("kind", ["plain", "devkit"])
def test_a_rerun_after_an_interrupted_move_labels_the_rest_right(
    label_files, tmp_path, kind):
  val = tmp_path / "val"
  _flat_val(val)
  # Killed after moving the first two images (in name order, as a run does).
  for n, c in list(zip(NAMES, TRUTH))[:2]:
    (val / c).mkdir()
    os.replace(val / n, val / c / n)
  counts = ilsvrc_val.sort_into_classes(str(val), label_files[kind])
  assert _where(val) == dict(zip(NAMES, TRUTH))
  assert counts == {"n01": 2, "n02": 2, "n03": 2}
  assert not [n for n in os.listdir(val) if n.endswith(".JPEG")]


def test_a_misfiled_image_is_named_not_trusted(label_files, tmp_path):
  val = tmp_path / "val"
  _flat_val(val)
  (val / "n03").mkdir()
  os.replace(val / NAMES[0], val / "n03" / NAMES[0])  # labelled n02
  with pytest.raises(ValueError, match="wrong class folder") as e:
    ilsvrc_val.sort_into_classes(str(val), label_files["plain"])
  assert os.path.join(str(val), "n03", NAMES[0]) in str(e.value)
  assert len(os.listdir(val)) == 6  # nothing was moved


def test_an_interrupted_copy_is_redone(label_files, tmp_path):
  val = tmp_path / "val"
  _flat_val(val)
  # A killed copy: one file cut short where an old run left it, and a
  # temporary file of this version's.
  (val / "n02").mkdir()
  (val / "n02" / NAMES[0]).write_bytes(b"ILSVRC")
  (val / "n02" / f".{NAMES[3]}.partial").write_bytes(b"I")
  ilsvrc_val.sort_into_classes(str(val), label_files["plain"], mode="copy")
  for n, c in zip(NAMES, TRUTH):
    assert (val / c / n).read_bytes() == (val / n).read_bytes()
  assert sorted(os.listdir(val / "n02")) == [NAMES[0], NAMES[3]]


def test_no_label_for_an_image_says_the_fix(label_files, tmp_path):
  val = tmp_path / "val"
  _flat_val(val)
  os.rename(val / NAMES[5], val / "ILSVRC2012_val_00000009.JPEG")
  with pytest.raises(ValueError) as e:
    ilsvrc_val.sort_into_classes(str(val), label_files["kaggle"])
  assert "no label for ILSVRC2012_val_00000009.JPEG" in str(e.value)
  assert "pass the label file of these images" in str(e.value)
