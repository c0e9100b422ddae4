"""README stays honest: its commands are CI's, and its API tour runs as written."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang):
  return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_ci_installs_and_tests_exactly_as_readme_says():
  ci = (ROOT / ".ci" / "run").read_text()
  install = "pip install -e \".[test,torch]\""
  test = "python -m pytest -q tests"
  for line in (install, test):
    assert line in ci, f"{line!r} missing from .ci/run"
    assert line in README, f"{line!r} missing from README"


def test_api_tour_runs_as_written(tmp_path, monkeypatch):
  """Executes every ```python block of README, in order, in one namespace."""
  blocks = _blocks("python")
  assert len(blocks) >= 4, "README's API tour lost its code blocks"
  torch = pytest.importorskip("torch", reason="the tour loads a torch file")
  from benchmarks.lib import torch_reference
  # The tour loads a reference checkpoint by file name: make one.
  model = torch_reference.build("cresnet20_1w1a", num_classes=10)
  torch.save({"state_dict": model.state_dict()},
             tmp_path / "cresnet20_1w1a_reference.pth")
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__readme__"}
  for i, block in enumerate(blocks):
    try:
      exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    except Exception as e:  # pragma: no cover - the message is the point
      raise AssertionError(f"README python block {i} failed:\n{block}") from e
