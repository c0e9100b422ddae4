"""The docs stay honest: CI's commands are README's, every code block of
README and the API tour runs, the site builds strictly, README's links land.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"

# [text](target), not images' alt text's brackets inside code spans.
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _blocks(text: str, lang: str) -> list[str]:
  return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _run_blocks(blocks: list[str], source: str) -> dict:
  namespace = {"__name__": "__docs__"}
  for i, block in enumerate(blocks):
    try:
      exec(compile(block, f"{source} python block {i}", "exec"), namespace)
    except Exception as e:  # pragma: no cover - the message is the point
      raise AssertionError(f"{source} python block {i} failed:\n{block}") from e
  return namespace


def test_ci_installs_and_tests_exactly_as_readme_says():
  ci = (ROOT / ".ci" / "run").read_text()
  install = "pip install -e \".[test,torch]\""
  test = "python -m pytest -q tests"
  for line in (install, test):
    assert line in ci, f"{line!r} missing from .ci/run"
    assert line in README, f"{line!r} missing from README"


def test_readme_is_a_front_page():
  lines = README.count("\n")
  assert lines <= 300, (f"README has {lines} lines: keep it a front page "
                        "(at most ~300) and move detail to docs/")
  for section in ("Install and run", "Results", "GPUs and TPUs",
                  "Documentation"):
    assert f"\n## {section}\n" in README, f"README lost '## {section}'"


def test_readme_code_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  ns = _run_blocks(_blocks(README, "python"), "README.md")
  # The step's loss is the cross-entropy of the initial variables' logits,
  # and the step moved the binary kernels.
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  logits, _ = ns["model"].apply(ns["variables"], ns["images"], train=True,
                                mutable=["batch_stats"])
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64))
  expected = -np.mean(np.take_along_axis(
      np.asarray(logp), np.asarray(ns["labels"])[:, None], axis=1))
  np.testing.assert_allclose(float(ns["loss"]), expected, rtol=1e-5)
  before = ns["variables"]["params"]["layer1_0"]["conv1"]["latent_kernel"]
  after = ns["params"]["layer1_0"]["conv1"]["latent_kernel"]
  assert not np.array_equal(before, after)
  # The printed value, as its comment says.
  assert float(ns["ovsw_jax"].sad_diagnostics(ns["opt_state"])[
      "silent_fraction"]) == 1.0


def test_api_tour_runs_as_written(tmp_path, monkeypatch):
  """docs/api.md's blocks, in order, in one namespace, in an empty folder:
  the tour makes the reference checkpoint it converts."""
  pytest.importorskip("torch", reason="the tour converts a torch checkpoint: "
                      "pip install -e '.[torch]'")
  tour = (DOCS / "api.md").read_text()
  blocks = _blocks(tour, "python")
  assert len(blocks) >= 6, "docs/api.md lost its code blocks"
  monkeypatch.chdir(tmp_path)
  namespace = _run_blocks(blocks, "docs/api.md")
  assert (tmp_path / "cresnet20_1w1a_reference.pth").exists()
  assert namespace["logits"].shape == (8, 10)


def _build(source: Path, out: Path) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
       "html", str(source), str(out)],
      capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def sphinx_available():
  pytest.importorskip("sphinx", reason="pip install -e '.[docs]'")
  pytest.importorskip("myst_parser", reason="pip install -e '.[docs]'")


def test_site_builds_strictly(sphinx_available, tmp_path):
  result = _build(DOCS, tmp_path / "html")
  assert result.returncode == 0, (
      "the docs site does not build under -W:\n" + result.stderr[-3000:])
  pages = {p.stem for p in DOCS.glob("*.md")}
  built = {p.stem for p in (tmp_path / "html").glob("*.html")}
  assert pages <= built, f"pages not built: {sorted(pages - built)}"


@pytest.mark.parametrize("defect", ["broken_link", "orphan_page"])
def test_site_build_fails_on_a_defect(sphinx_available, tmp_path, defect):
  """Strictness is what CI relies on: a broken link or a page left out of
  the table of contents fails the build."""
  docs = tmp_path / "docs"
  shutil.copytree(DOCS, docs, ignore=shutil.ignore_patterns("_build"))
  # The pages link files outside docs/ (../benchmarks/...): keep them there.
  for folder in ("benchmarks", "configs", "colabs", "ovsw_jax"):
    os.symlink(ROOT / folder, tmp_path / folder)
  if defect == "broken_link":
    with open(docs / "training.md", "a") as f:
      f.write("\nSee [the missing page](no_such_page.md#nowhere).\n")
  else:
    (docs / "orphan.md").write_text("# Orphan\n\nIn no table of contents.\n")
  result = _build(docs, tmp_path / "html")
  assert result.returncode != 0
  expected = "no_such_page" if defect == "broken_link" else "orphan"
  assert expected in result.stderr


def _anchors(markdown: str) -> set[str]:
  from mdit_py_plugins.anchors.index import slugify  # pylint: disable=g-import-not-at-top
  text = re.sub(r"```.*?```", "", markdown, flags=re.S)
  return {slugify(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_readme_links_land(sphinx_available):
  """README is not part of the site, so its links are checked here: each
  relative link names a file of the repo, and each #anchor a heading."""
  bad = []
  for target in LINK.findall(README):
    if re.match(r"[a-z]+:", target):
      continue  # http(s), mailto
    path, _, anchor = target.partition("#")
    file = ROOT / path if path else ROOT / "README.md"
    if not file.exists():
      bad.append(f"{target}: no file {path}")
    elif anchor and anchor not in _anchors(file.read_text()):
      bad.append(f"{target}: no heading with anchor #{anchor} in {file.name}")
  assert not bad, "README's broken links:\n" + "\n".join(bad)


def _option_tables() -> dict[str, set[str]]:
  """dataset -> option names, from the options tables of docs/data.md and
  docs/imagefolder.md (first column: datasets, blank for the row above's)."""
  tables = {}
  for page, dataset_col, option_col in (("data.md", 0, 1),):
    datasets = []
    for line in (DOCS / page).read_text().splitlines():
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      if not line.startswith("| ") or len(cells) < 3 or cells[1] == "option":
        continue
      if cells[dataset_col]:
        datasets = re.findall(r"`([^`]+)`", cells[dataset_col])
      for name in datasets:
        tables.setdefault(name, set()).update(
            re.findall(r"`(\w+)`", cells[option_col]))
  folder = (DOCS / "imagefolder.md").read_text().split("## Options", 1)[1]
  for line in folder.split("\n## ", 1)[0].splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) >= 4 and cells[0].startswith("`"):
      for col, name in ((1, "imagefolder"), (2, "image_records")):
        if cells[col]:
          tables.setdefault(name, set()).update(
              re.findall(r"`(\w+)`", cells[0]))
  return tables


def test_docs_list_each_datasets_options():
  from ovsw_jax import data  # pylint: disable=g-import-not-at-top
  tables = _option_tables()
  for name in ("cifar10", "cifar100", "digits", "synthetic", "imagenet2012",
               "imagefolder", "image_records"):
    assert tables.get(name) == set(data.dataset_options(name)), (
        f"docs list {sorted(tables.get(name, ()))} for dataset {name!r}; "
        f"the code takes {data.dataset_options(name)}: update docs/data.md "
        "(or docs/imagefolder.md's Options)")
