"""prepare: image folder or ILSVRC2012 tars -> array_record shards; the
image_records dataset reads them as the folder's examples."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ovsw_jax import data
from ovsw_jax.data import image_records
from ovsw_jax.data import imagefolder
from ovsw_jax.data import prepare
from ovsw_jax.data import record_shards
from tests import image_folder_data as folder_data
from tests.gcs_emulator import gcs_bucket  # pylint: disable=unused-import
from tests.killed_runs import kill_when

SIZE = 24
PER_SHARD = 5  # 12 train images: 3 shards; 6 val: 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """An image folder, the same images as ILSVRC tars, and a flat val."""
  root = tmp_path_factory.mktemp("inputs")
  folder = folder_data.write_image_folder(str(root / "folder"))
  train_tar, val_tar, labels = folder_data.write_ilsvrc_tars(
      str(root / "tars"))
  flat = str(root / "flat")  # the folder with ILSVRC's flat val
  shutil.copytree(os.path.join(folder, "train"), os.path.join(flat, "train"))
  shutil.copytree(str(root / "tars" / "flat_val"), os.path.join(flat, "val"))
  return {"folder": folder, "train_tar": train_tar, "val_tar": val_tar,
          "labels": labels, "flat": flat}


@pytest.fixture(scope="module")
def prepared(inputs, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("records"))
  info = prepare.prepare(out, data_dir=inputs["folder"],
                         examples_per_shard=PER_SHARD, processes=2)
  return out, info


def _files(out):
  return {f: open(os.path.join(out, f), "rb").read()  # pylint: disable=consider-using-with
          for f in sorted(os.listdir(out)) if f.endswith(".array_record")}


def _batches(dataset, data_dir, **options):
  train = data.create_train_iterator(
      dataset, data_dir, 4, seed=11, process_index=0, process_count=1,
      prefetch=0, image_size=SIZE, **options)
  out = [next(train) for _ in range(5)]  # 3 per epoch: crosses an epoch
  out += list(data.create_eval_iterator(
      dataset, data_dir, 4, process_index=0, process_count=1, prefetch=0,
      image_size=SIZE, **options))
  return out


def test_records_give_the_folders_examples_in_its_order(inputs, prepared):
  out, info = prepared
  assert info["classes"] == list(folder_data.CLASSES)
  assert info["splits"]["train"]["class_counts"] == [4, 4, 4]
  assert info["splits"]["val"]["class_counts"] == [2, 2, 2]
  assert sorted(_files(out)) == [
      "train-00000-of-00003.array_record", "train-00001-of-00003.array_record",
      "train-00002-of-00003.array_record", "val-00000-of-00002.array_record",
      "val-00001-of-00002.array_record"]
  # Record i is the folder's example i: its label, name and bytes.
  source = data.get_source("image_records", out, image_size=SIZE)
  values, names, labels = source.encoded("train", np.arange(12))
  folder = imagefolder.make_source(inputs["folder"], image_size=SIZE)
  f_values, f_names, f_labels = folder.encoded("train", np.arange(12))
  assert values == f_values and list(labels) == list(f_labels)
  assert [n.split(": ")[1] for n in names] == [
      os.path.relpath(n, os.path.join(inputs["folder"], "train"))
      for n in f_names]
  assert source.info.class_names == folder.info.class_names
  for a, b in zip(_batches("image_records", out),
                  _batches("imagefolder", inputs["folder"])):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_tars_give_the_same_records_as_the_folder(inputs, prepared,
                                                  tmp_path, capsys):
  out = str(tmp_path / "from_tars")
  prepare.main([f"--train_tar={inputs['train_tar']}",
                f"--val_tar={inputs['val_tar']}",
                f"--val_labels={inputs['labels']}", f"--out={out}",
                f"--examples_per_shard={PER_SHARD}", "--processes=2"])
  printed = capsys.readouterr().out
  # Per-class counts, printed: label, class, train, val.
  assert "    1  dog                             4        2" in printed
  tars, folder = _files(out), _files(prepared[0])
  assert {k: v for k, v in tars.items() if k.startswith("train")} == {
      k: v for k, v in folder.items() if k.startswith("train")}
  # The val tar is ILSVRC's flat layout: the same examples as the folder
  # whose val/ is that flat folder, read with its label file.
  for a, b in zip(_batches("image_records", out),
                  _batches("imagefolder", inputs["flat"],
                           eval_labels=inputs["labels"])):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


# A fresh interpreter, not a fork of this one: a fork of a process that has
# run array_record's and JAX's threads can crash in the child.
_STALLING_PREPARE = """
import os, sys, time
from ovsw_jax.data import prepare, record_shards
write_shard = record_shards.write_shard

def write_then_stall(out, shard, *args):
  # write_shard, then a stall after the third shard: the kill lands
  # mid-run however slow the machine.
  marker = write_shard(out, shard, *args)
  if len(os.listdir(os.path.join(out, record_shards.MARKERS))) >= 3:
    time.sleep(300)
  return marker

record_shards.write_shard = write_then_stall
prepare.prepare(sys.argv[2], data_dir=sys.argv[1], examples_per_shard=1,
                processes=1)
"""


def test_sigkill_then_rerun_gives_identical_shards(inputs, tmp_path, capsys):
  straight = str(tmp_path / "straight")
  killed = str(tmp_path / "killed")
  prepare.prepare(straight, data_dir=inputs["folder"], examples_per_shard=1,
                  processes=1)
  victim = subprocess.Popen(
      [sys.executable, "-c", _STALLING_PREPARE, inputs["folder"], killed],
      stdout=subprocess.DEVNULL)
  markers = os.path.join(killed, record_shards.MARKERS)
  kill_when(victim, lambda: os.path.isdir(markers) and len(
      os.listdir(markers)) >= 3, "three shards", timeout_s=120, poll_s=0.002)
  assert not os.path.exists(os.path.join(killed, image_records.INFO_FILE))
  # Not finished: the dataset refuses it, saying how to finish.
  with pytest.raises(data.DataNotFoundError, match="rerun, to finish"):
    image_records.make_source(killed)
  # A half-written shard left behind is redone, not trusted.
  some = sorted(os.listdir(markers))[0][:-len(".json")]
  with open(os.path.join(killed, some), "r+b") as f:
    f.truncate(100)
  os.remove(os.path.join(markers, some + ".json"))
  capsys.readouterr()
  prepare.prepare(killed, data_dir=inputs["folder"], examples_per_shard=1,
                  processes=1)
  assert "already written" in capsys.readouterr().out
  assert _files(killed) == _files(straight)
  with open(os.path.join(killed, image_records.INFO_FILE)) as a, open(
      os.path.join(straight, image_records.INFO_FILE)) as b:
    assert json.load(a)["splits"] == json.load(b)["splits"]


_START_METHOD_WITH_A_THREAD = """
import threading
from ovsw_jax.data import prepare
threading.Thread(target=threading.Event().wait, daemon=True).start()
print(prepare.worker_context().get_start_method())
"""


def test_workers_spawn_where_other_threads_run():
  # A fork copies locks that the other threads may hold. (A fresh process
  # forking and one with JAX started spawning: the end-to-end test below.)
  out = subprocess.run([sys.executable, "-c", _START_METHOD_WITH_A_THREAD],
                       capture_output=True, text=True, check=True).stdout
  assert out.split() == ["spawn"]


def test_forked_and_spawned_workers_write_the_same_shards(inputs, prepared,
                                                         tmp_path):
  # From the command line's state (a fresh process: fork) and a notebook's
  # (JAX started: spawn), each in its own interpreter.
  outs = {}
  for method, start_jax in (("fork", ""),
                            ("spawn", "import jax; jax.devices()\n")):
    outs[method] = str(tmp_path / method)
    code = (f"{start_jax}from ovsw_jax.data import prepare\n"
            f"assert prepare.worker_context().get_start_method() == "
            f"{method!r}\n"
            f"prepare.prepare({outs[method]!r}, data_dir="
            f"{inputs['folder']!r}, examples_per_shard={PER_SHARD}, "
            f"processes=2)\n")
    subprocess.run([sys.executable, "-c", code], check=True,
                   stdout=subprocess.DEVNULL)
  assert _files(outs["fork"]) == _files(outs["spawn"]) == _files(prepared[0])
  assert len(_files(outs["fork"])) == 5


def test_gcs_output_is_the_same_bytes(inputs, prepared, gcs_bucket):  # pylint: disable=redefined-outer-name
  import fsspec  # pylint: disable=g-import-not-at-top
  out = f"{gcs_bucket}/records"
  prepare.prepare(out, data_dir=inputs["folder"],
                  examples_per_shard=PER_SHARD, processes=1)
  fs, path = fsspec.core.url_to_fs(out)
  for name, blob in _files(prepared[0]).items():
    assert fs.cat_file(f"{path}/{name}") == blob
  assert json.loads(fs.cat_file(f"{path}/dataset_info.json"))["splits"][
      "val"]["num_examples"] == 6
  # Rerun: every shard's marker is found on the bucket, nothing rewritten.
  before = fs.info(f"{path}/train-00000-of-00003.array_record")["generation"]
  prepare.prepare(out, data_dir=inputs["folder"],
                  examples_per_shard=PER_SHARD, processes=1)
  fs.invalidate_cache()
  assert fs.info(f"{path}/train-00000-of-00003.array_record")[
      "generation"] == before


def test_a_folder_on_a_bucket_reads_as_the_local_one(inputs, gcs_bucket,  # pylint: disable=redefined-outer-name
                                                    caplog):
  import fsspec  # pylint: disable=g-import-not-at-top
  remote = f"{gcs_bucket}/folder"
  fs, path = fsspec.core.url_to_fs(remote)
  for split in ("train", "val"):
    fs.put(os.path.join(inputs["folder"], split), f"{path}/{split}",
           recursive=True)
  local = imagefolder.make_source(inputs["folder"], image_size=SIZE)
  imagefolder.examples.cache_clear()
  source = imagefolder.make_source(remote, image_size=SIZE)
  assert source.info == local.info
  a, b = (s.encoded("train", np.arange(12)) for s in (source, local))
  assert a[0] == b[0] and list(a[2]) == list(b[2])
  assert fs.exists(f"{path}/.ovsw_jax/manifest-train.json.gz")
  # A later use checks the manifest against the bucket: a deleted image
  # is noticed (its size is among those checked) and the list rebuilt.
  fs.rm(f"{path}/train/dog/dog_0002.JPEG")
  imagefolder.examples.cache_clear()
  with caplog.at_level("WARNING"):
    assert imagefolder.make_source(remote).info.num_train == 11
  assert "is gone or changed" in caplog.text


def test_corrupt_image_stops_prepare_or_is_skipped(inputs, tmp_path, capsys):
  src = str(tmp_path / "src")
  shutil.copytree(inputs["folder"], src,
                  ignore=shutil.ignore_patterns(".ovsw_jax"))
  bad = os.path.join(src, "train", "fish", "fish_0002.JPEG")
  with open(bad, "r+b") as f:
    f.truncate(300)
  args = [f"--data_dir={src}", f"--out={tmp_path / 'out'}", "--processes=1"]
  assert prepare.main(args) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and bad in err[0] and "--skip_corrupt" in err[0]
  imagefolder.examples.cache_clear()
  assert prepare.main(args + ["--skip_corrupt"]) == 0
  info = json.load(open(tmp_path / "out" / image_records.INFO_FILE))  # pylint: disable=consider-using-with
  assert info["splits"]["train"]["class_counts"] == [4, 4, 3]
  skipped = info["splits"]["train"]["skipped_corrupt"]
  assert list(skipped) == ["fish/fish_0002.JPEG"], skipped
  assert "Truncated" in skipped["fish/fish_0002.JPEG"]
  # Rerun without --skip_corrupt: the shard that skipped it is not reused.
  assert prepare.main(args) == 1
  assert bad in capsys.readouterr().err


def test_a_file_replaced_in_place_is_written_again(inputs, tmp_path, capsys):
  src = str(tmp_path / "src")
  shutil.copytree(inputs["folder"], src,
                  ignore=shutil.ignore_patterns(".ovsw_jax"))
  out = str(tmp_path / "out")
  prepare.prepare(out, data_dir=src, examples_per_shard=PER_SHARD,
                  processes=1)
  before = _files(out)
  # Overwritten where it is (its folder's time does not change), with
  # another image of another size.
  changed = os.path.join(src, "train", "cat", "cat_0000.JPEG")
  new = folder_data.images("val")[2][2]
  assert len(new) != os.path.getsize(changed)
  with open(changed, "wb") as f:
    f.write(new)
  capsys.readouterr()
  prepare.prepare(out, data_dir=src, examples_per_shard=PER_SHARD,
                  processes=1)
  assert "4 of 5 shards already written; writing 1" in capsys.readouterr().out
  after = _files(out)
  assert [k for k in after if after[k] != before[k]] == [
      "train-00000-of-00003.array_record"]
  values, _, _ = data.get_source("image_records", out).encoded(
      "train", np.arange(1))
  assert values == [new]


def test_input_arguments_say_what_was_given(inputs, tmp_path):
  with pytest.raises(ValueError, match="neither was given"):
    prepare.prepare(str(tmp_path))
  with pytest.raises(ValueError, match=f"both --data_dir={inputs['folder']} "
                     f"and --train_tar={inputs['train_tar']} were given"):
    prepare.prepare(str(tmp_path), data_dir=inputs["folder"],
                    train_tar=inputs["train_tar"])


def test_a_damaged_record_is_named_with_its_shard(prepared):
  out, _ = prepared
  source = data.get_source("image_records", out, image_size=SIZE)
  where = source.record_where("train", 7)
  assert where == (f"{os.path.join(out, 'train-00001-of-00003.array_record')}"
                   " record 2")
  good = image_records.encode_record(1, "dog/x.JPEG", b"\xff\xd8\xff")
  assert image_records.decode_record(good, where) == (1, "dog/x.JPEG",
                                                      b"\xff\xd8\xff")
  head = good[:10]
  for bad in (good[:5], head[:8] + b"\x40\x00" + b"ab",
              head[:8] + b"\x02\x00" + b"\xc3(", b"JPEG" + good[4:]):
    with pytest.raises(ValueError) as e:
      image_records.decode_record(bad, where)
    msg = str(e.value)
    assert msg.startswith(where) and "\n" not in msg, msg
    assert "python -m ovsw_jax.data.prepare" in msg, msg


def test_a_name_too_long_for_a_record_is_cut_between_characters():
  name = "é" * 40000  # 80,000 bytes of UTF-8
  _, got, data_ = image_records.decode_record(
      image_records.encode_record(0, name, b"img"))
  assert got == "é" * 32767 and data_ == b"img"
