"""Metric chunk files: flush, resume rewind, legacy metrics.jsonl, order."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import ovsw_jax
from ovsw_jax.training import metrics_io

REPO = pathlib.Path(__file__).resolve().parents[1]


def _files(workdir):
  return sorted(p.name for p in (workdir / metrics_io.METRICS_DIR).iterdir())


def test_records_are_flushed_as_whole_chunks_and_read_in_step_order(tmp_path):
  writer = metrics_io.MetricsWriter(str(tmp_path), flush_every_s=1e9)
  writer.write(5, {"train_loss": 2.5})
  # Nothing yet: buffered until a flush, an eval record or close.
  assert _files(tmp_path) == []
  writer.write(10, {"train_loss": 2.0, "eval_top1": 0.25, "eval_count": 20})
  assert _files(tmp_path) == ["chunk-000000.jsonl"]
  writer.write(15, {"train_loss": 1.5})
  writer.close()
  assert _files(tmp_path) == ["chunk-000000.jsonl", "chunk-000001.jsonl"]
  records = ovsw_jax.read_metrics(str(tmp_path))
  assert [(r["step"], r["train_loss"]) for r in records] == [
      (5, 2.5), (10, 2.0), (15, 1.5)]
  assert records[1]["eval_count"] == 20


def test_resume_drops_later_records_and_reads_the_legacy_file(tmp_path):
  # A run from before the chunks: one metrics.jsonl, last line cut by a kill.
  legacy = tmp_path / metrics_io.LEGACY_METRICS_FILE
  legacy.write_text(json.dumps({"step": 5, "train_loss": 3.0}) + "\n"
                    + json.dumps({"step": 10, "train_loss": 2.0}) + "\n"
                    + '{"step": 15, "tra')
  assert [r["step"] for r in metrics_io.read_metrics(str(tmp_path))] == [5, 10]
  writer = metrics_io.MetricsWriter(str(tmp_path), keep_until_step=5)
  assert not legacy.exists()
  writer.write(10, {"train_loss": 1.0})
  writer.close()
  assert [(r["step"], r["train_loss"])
          for r in metrics_io.read_metrics(str(tmp_path))] == [
              (5, 3.0), (10, 1.0)]


def test_missing_metrics_name_the_workdir(tmp_path):
  try:
    metrics_io.read_metrics(str(tmp_path / "nothing"))
  except FileNotFoundError as e:
    assert "nothing" in str(e) and "--workdir" in str(e)
  else:
    raise AssertionError("no error")


def test_tensorboard_scalars_read_back_with_event_accumulator(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  writer = metrics_io.MetricsWriter(str(tmp_path))
  writer.write(5, {"train_loss": 2.5, "lr": 0.1, "flip_rate/conv1": 0.125,
                   "method": "ovsw"})
  writer.write(10, {"train_loss": 2.0, "lr": 0.05, "eval_top1": 0.25,
                    "eval_count": 20})
  writer.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  acc.Reload()
  scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
             for tag in acc.Tags()["scalars"]}
  assert scalars["train_loss"] == [(5, 2.5), (10, 2.0)]
  assert scalars["lr"] == [(5, 0.10000000149011612), (10, 0.05000000074505806)]
  assert scalars["flip_rate/conv1"] == [(5, 0.125)]
  assert scalars["eval_top1"] == [(10, 0.25)]
  assert "method" not in scalars


def test_a_resumed_run_hides_the_killed_runs_later_tensorboard_events(
    tmp_path):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  killed = metrics_io.MetricsWriter(str(tmp_path))
  for step, loss in ((5, 3.0), (10, 2.0), (15, 1.0)):
    killed.write(step, {"train_loss": loss})
  killed.close()
  # Resumed from a checkpoint at step 10 (within the same second, too).
  resumed = metrics_io.MetricsWriter(str(tmp_path), keep_until_step=10)
  resumed.write(15, {"train_loss": 0.5})
  resumed.close()
  assert len(list((tmp_path / "tensorboard").iterdir())) == 2
  acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars("train_loss")] == [
      (5, 3.0), (10, 2.0), (15, 0.5)]


def test_the_tensorboard_writer_does_not_import_torch(tmp_path):
  # tensorboardX imports torch when it can, 1.5 s of every run's start; the
  # writer hides it (in a fresh interpreter: pytest's may hold either).
  pytest.importorskip("torch")
  code = f"""
import sys
from ovsw_jax.training import metrics_io
writer = metrics_io.MetricsWriter({str(tmp_path)!r})
writer.write(5, {{"loss": 0.25}})
writer.close()
print("torch" in sys.modules)
import torch.nn  # torch itself still imports afterwards
print(torch.nn.Linear(2, 3).weight.shape[0])
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True, cwd=REPO).stdout.split()
  assert out == ["False", "3"]
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(5, 0.25)]


def test_a_tensorboardx_that_needs_torch_is_imported_with_it(tmp_path):
  # A future tensorboardX importing torch unguarded must not turn the
  # summaries off: the import is retried with torch. A stand-in package
  # that needs torch, first on the path of a fresh interpreter:
  pytest.importorskip("torch")
  package = tmp_path / "tensorboardX"
  package.mkdir()
  (package / "__init__.py").write_text("import torch\nNEEDS = torch.__name__\n")
  code = f"""
import sys
from ovsw_jax.training import tensorboard
module = tensorboard._import_tensorboardx()
print(module.NEEDS, module.__file__.startswith({str(tmp_path)!r}),
      sys.modules["torch"] is not None)
"""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(tmp_path), os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True, cwd=REPO, env=env
                       ).stdout.split()
  assert out == ["torch", "True", "True"]
