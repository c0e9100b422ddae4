"""Runs the Colab notebooks in colabs/ top to bottom with small settings.

Small settings go in a cell inserted right after each notebook's `parameters`
cell (as papermill does). Each notebook gathers its numbers in a `RESULTS`
dict; a cell the test appends prints it as JSON (a reader of the notebook sees
no such dump), and the tests check it against what the settings imply.
The kernel runs on this interpreter (`sys.executable`), with this checkout on
its PYTHONPATH and matplotlib's Agg backend.
"""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
COLABS = ROOT / "colabs"
NOTEBOOKS = ("quickstart.ipynb", "silent_weights.ipynb")
KERNEL_NAME = "ovsw-jax-test"


def cifar10_dir():
  """Where the real CIFAR-10 files are, or None."""
  for d in (os.environ.get("OVSW_DATA_DIR"), ROOT.parent / "shared" / "data"):
    if d and (Path(d) / "cifar-10-batches-bin" / "test_batch.bin").exists():
      return str(d)
    if d and (Path(d) / "cifar-10-batches-py" / "test_batch").exists():
      return str(d)
  return None


@pytest.fixture
def kernel(tmp_path, monkeypatch):
  """A kernel spec that runs ipykernel on sys.executable; returns its name."""
  spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
               "{connection_file}"],
      "display_name": "ovsw_jax tests",
      "language": "python",
  }))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
  return KERNEL_NAME


def parameters_index(nb):
  tagged = [i for i, cell in enumerate(nb.cells)
            if "parameters" in cell.metadata.get("tags", [])]
  assert len(tagged) == 1, f"want one cell tagged 'parameters', got {tagged}"
  return tagged[0]


def run_notebook(name, overrides, kernel_name, cwd):
  """Executes colabs/`name` with `overrides`; returns its RESULTS dict."""
  nb = nbformat.read(COLABS / name, as_version=4)
  cell = nbformat.v4.new_code_cell(
      "\n".join(f"{k} = {v!r}" for k, v in overrides.items()))
  cell.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(parameters_index(nb) + 1, cell)
  nb.cells.append(nbformat.v4.new_code_cell(
      "import json as _json\nprint(_json.dumps(RESULTS))"))
  nbclient.NotebookClient(
      nb, kernel_name=kernel_name, timeout=600,
      resources={"metadata": {"path": str(cwd)}}).execute()
  text = "".join(o.get("text", "") for o in nb.cells[-1].outputs
                 if o.output_type == "stream" and o.name == "stdout")
  return json.loads(text)


def binary_kernel_sizes(model_name, image_shape):
  """{path: size} of the model's latent kernels, without running it."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ovsw_jax import models  # pylint: disable=g-import-not-at-top
  from ovsw_jax import transforms  # pylint: disable=g-import-not-at-top
  model = models.get_model(model_name, num_classes=10)
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape))))
  return {
      transforms.path_name(path): math.prod(x.shape)
      for path, x in jax.tree_util.tree_flatten_with_path(params["params"])[0]
      if path[-1].key == "latent_kernel"
  }


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean_and_installs_from_its_checkout(name):
  nb = nbformat.read(COLABS / name, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, (
          f"{name}: clear the outputs before committing (cell {cell.id}).")
  text = "\n".join(c.source for c in nb.cells)
  # The project has no public home yet: no URL of one, no Colab badge.
  assert "github.com/ovsw-jax" not in text and "colab-badge" not in text
  code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
  # Results are printed for a reader, not dumped as JSON (the tests print
  # RESULTS themselves).
  assert "json.dumps" not in code and "RESULTS = " in code
  # The install (from the checkout) must not run where ovsw_jax is
  # importable (CI).
  assert "except ImportError:" in code and "install -q -e {checkout}" in code
  for cell in nb.cells:
    if "plt.subplots" in cell.source:  # every axis of every figure labelled
      assert cell.source.count("ylabel=") >= cell.source.count("xlabel="), (
          f"{name}: a figure without a y-axis label (cell {cell.id})")
  params = nb.cells[parameters_index(nb)].source
  for size in ("NUM_STEPS", "BATCH_SIZE", "SEED", "MODEL"):
    assert f"{size} = " in params, f"{name}: {size} not in the parameters cell"


def test_quickstart(kernel, tmp_path):
  steps = 100
  results = run_notebook(
      "quickstart.ipynb",
      {"NUM_STEPS": steps, "BATCH_SIZE": 32, "LOG_EVERY": 25,
       "EVAL_BATCH_SIZE": 100},
      kernel, tmp_path)
  flip = np.array(results["flip_rate"])
  silent = np.array(results["silent_fraction"])
  loss = np.array(results["loss"])
  assert results["num_steps"] == steps
  assert flip.shape == silent.shape == loss.shape == (steps,)
  # 297 test digits: accuracy is k / 297, here well above chance (0.1).
  acc = results["test_accuracy"]
  assert 0.2 < acc <= 1.0
  assert abs(acc * 297 - round(acc * 297)) < 1e-9
  assert loss[-10:].mean() < loss[0]
  assert np.all((flip >= 0) & (flip <= 1)) and flip.sum() > 0
  # SAD's state after update k holds the flips of the transitions before it
  # (params_0 -> ... -> params_k); one flip keeps a weight non-silent for
  # ~2,300 steps, far beyond this run, so non-silent = flipped at least once,
  # which flip_rate bounds from both sides.
  assert silent[0] == 1.0
  assert np.all(np.diff(silent) <= 0)
  ever = 1.0 - silent
  for k in range(1, steps):
    assert ever[k] <= flip[:k].sum() + 1e-6
    assert ever[k] >= flip[:k].max() - 1e-6


def test_silent_weights(kernel, tmp_path):
  data_dir = cifar10_dir()
  if data_dir is None:
    pytest.skip("CIFAR-10 not found: set OVSW_DATA_DIR to a folder holding "
                "cifar-10-batches-bin/ (or -py/).")
  steps, num_bins, eval_examples = 20, 10, 200
  results = run_notebook(
      "silent_weights.ipynb",
      {"DATA_DIR": data_dir, "NUM_STEPS": steps, "BATCH_SIZE": 32,
       "EVAL_BATCH_SIZE": 100, "EVAL_BATCHES": eval_examples // 100,
       "NUM_BINS": num_bins, "LOG_EVERY": 10},
      kernel, tmp_path)
  sizes = binary_kernel_sizes(results["model"], (32, 32, 3))
  num_binary = sum(sizes.values())
  edges = np.array(results["bin_edges"])
  assert edges.shape == (num_bins + 1,) and edges[0] == 0
  assert np.all(np.diff(edges) > 0)
  for arm in ("vanilla", "ovsw"):
    r = results[arm]
    # Evaluated on exactly EVAL_BATCHES * EVAL_BATCH_SIZE examples.
    assert 0.0 <= r["accuracy"] <= 1.0
    assert abs(r["accuracy"] * eval_examples
               - round(r["accuracy"] * eval_examples)) < 1e-9
    flip = np.array(r["flip_rate"])
    assert flip.shape == (steps,)
    # The FlipRecord and the per-step flip rates count the same flips.
    assert abs(flip.sum() * num_binary - r["total_flips"]) < (
        0.5 + 1e-5 * r["total_flips"])
    # The bins hold every binary weight, and their flip counts add up.
    count = np.array(r["bin_count"])
    mean = np.array([np.nan if v is None else v for v in r["mean_flip_count"]])
    never = np.array([np.nan if v is None else v
                      for v in r["never_flipped_by_bin"]])
    assert count.shape == mean.shape == never.shape == (num_bins,)
    assert count.sum() == num_binary
    assert np.array_equal(np.isnan(mean), count == 0)
    assert np.nansum(count * mean) == pytest.approx(r["total_flips"])
    assert np.all((never[count > 0] >= 0) & (never[count > 0] <= 1))
    # One fraction per binary layer; 'overall' is their size-weighted mean.
    per_layer = r["never_flipped_per_layer"]
    assert sorted(per_layer) == sorted(sizes)
    assert all(0.0 <= f <= 1.0 for f in per_layer.values())
    assert r["never_flipped_overall"] == pytest.approx(
        sum(per_layer[k] * sizes[k] for k in sizes) / num_binary, abs=1e-6)
    # A weight that flipped did so at least once.
    assert 1 - r["never_flipped_overall"] <= (
        r["total_flips"] / num_binary + 1e-6)
  # The paper's point: AGS and SAD make more weights flip.
  assert results["ovsw"]["total_flips"] > results["vanilla"]["total_flips"]
  assert (results["ovsw"]["never_flipped_overall"]
          < results["vanilla"]["never_flipped_overall"])
