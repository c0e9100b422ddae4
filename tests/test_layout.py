"""The package's architecture, checked: one-way imports, no cycles, small rooms.

Data flows one way: ops, then layers, then models, then transforms, then
training, then deploy (docs/layout.md). These tests read the source with
`ast`, so a new module that breaks the order, a cycle, an outside document
cited in a docstring or an outgrown module fails here, naming the file.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "ovsw_jax"

# Where each top-level room sits in the order; a module may import only
# rooms at its own rank or below. A new room gets a rank here.
RANKS = {
    "ops": 0, "backend_state": 0,
    "layers": 1, "masks": 1,
    "recu": 2, "irnet": 2, "rbnn": 2, "adabin": 2, "react": 2,
    "models": 3,
    "transforms": 4, "transform_states": 4, "diagnostics": 4, "bop": 4,
    "convert": 5, "data": 5, "summary": 5,
    "training": 6,
    "deploy": 7,
}

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules():
  return sorted(p for p in PACKAGE.rglob("*.py"))


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _room(module: str) -> str:
  """'ovsw_jax.training.loop' -> 'training'; the package itself -> ''."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def _imports(path: pathlib.Path) -> set[str]:
  """The ovsw_jax modules ``path`` imports anywhere (lazy imports too)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("ovsw_jax"))
    elif isinstance(node, ast.ImportFrom) and node.module and (
        node.module.startswith("ovsw_jax")):
      for alias in node.names:
        candidate = f"{node.module}.{alias.name}"
        is_module = any(_module_name(p) == candidate for p in _modules())
        found.add(candidate if is_module else node.module)
  return found


def test_every_room_has_a_rank():
  rooms = {_room(_module_name(p)) for p in _modules()} - {""}
  unknown = sorted(rooms - set(RANKS))
  assert not unknown, (
      f"ovsw_jax rooms {unknown} have no place in the import order: add them "
      "to RANKS in tests/test_layout.py (and docs/layout.md)")


def test_imports_run_one_way():
  wrong = []
  for path in _modules():
    module = _module_name(path)
    room = _room(module)
    if not room:
      continue  # The package's __init__ re-exports from every room.
    for target in _imports(path):
      target_room = _room(target)
      if target_room and RANKS[target_room] > RANKS[room]:
        wrong.append(f"{module} imports {target} (a later room)")
  assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
  graph = {_module_name(p): {t for t in _imports(p)} for p in _modules()}
  # A package's __init__ re-exports its children; an edge into a package is
  # an edge into its __init__ only, which is what the graph holds.
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = "open"
    for target in sorted(graph.get(node, ())):
      if target == node or target not in graph:
        continue
      # Children importing their own package's __init__ (or the reverse)
      # is how a package re-exports; not an architectural cycle.
      if target.startswith(node + ".") or node.startswith(target + "."):
        continue
      if state.get(target) == "open":
        cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
      elif target not in state:
        visit(target, stack + [target])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_only_the_deploy_cli_imports_training():
  offenders = [
      _module_name(p) for p in (PACKAGE / "deploy").glob("*.py")
      if p.stem != "cli" and any(_room(t) == "training" for t in _imports(p))]
  assert not offenders, (
      f"{offenders} import ovsw_jax.training; only ovsw_jax/deploy/cli.py may")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(
    p.relative_to(REPO)))
def test_modules_and_functions_stay_small(path):
  source = path.read_text()
  lines = source.count("\n")
  assert lines <= MAX_MODULE_LINES, (
      f"{path.relative_to(REPO)} has {lines} lines (limit "
      f"{MAX_MODULE_LINES}): split it by concern")
  long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
          for node in ast.walk(ast.parse(source))
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
  assert not long, f"{path.relative_to(REPO)}: functions over " \
      f"{MAX_FUNCTION_LINES} lines: {long}"


def _project_files():
  for folder in ("ovsw_jax", "configs", "benchmarks", "tests", "docs",
                 "colabs"):
    for path in (REPO / folder).rglob("*"):
      if path.suffix in (".py", ".md", ".ipynb") and path.is_file():
        yield path
  yield REPO / "README.md"
  yield REPO / "train.py"


def test_no_file_cites_an_outside_document_or_patches_sys_path():
  this = pathlib.Path(__file__).resolve()
  cites, patches, test_imports = [], [], []
  for path in _project_files():
    if path.resolve() == this:
      continue
    text = path.read_text()
    if "SPEC" in text:
      cites.append(str(path.relative_to(REPO)))
    if path.suffix == ".py" and "sys.path" in text:
      patches.append(str(path.relative_to(REPO)))
    if path.parts[len(REPO.parts)] == "benchmarks" and path.suffix == ".py":
      for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
          names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                   else [node.module or ""])
          if any(n == "tests" or n.startswith("tests.") for n in names):
            test_imports.append(str(path.relative_to(REPO)))
  assert not cites, (f"{cites} cite SPEC, a note outside the project: cite "
                     "docs/semantics.md or the paper")
  assert not patches, (f"{patches} patch sys.path: pytest.ini puts the repo "
                       "root on it; run scripts as python -m benchmarks.<x>")
  assert not test_imports, f"benchmarks import from tests/: {test_imports}"
