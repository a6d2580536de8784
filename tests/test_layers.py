"""The package's layers: imports point one way, down, with no cycle; the README's "Layout"
section draws the same layers.

``LAYERS`` below is the one list. Every ``import`` of an ``anytime`` module is parsed,
function-level ones included. A module may import modules of a lower layer, or of its own
layer inside its own package (e.g. ``experiments.compare`` -> ``experiments.posthoc_eval``),
never a higher one. The README's layout block names every module and package of ``anytime/``
(and every member of a package) in the layer this list gives it, and nothing that does not
exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "anytime"
README = ROOT.parent / "README.md"

# Lowest first. A name is a top-level module or package: every module below it shares the layer.
LAYERS = [
    ("schedules", "_requires"),
    ("averaging",),
    ("posthoc", "optimizers", "naming", "guard", "parallel", "checkpoint"),
    ("workdir",),  # paths of runs, branches, suites and the lineage record (asks checkpoint)
    ("lm",),
    ("config", "theory"),
    ("program",),  # the compiled program of a run (Run, build_run)
    ("loop",),
    ("branches", "batched"),
    ("experiments",),
    ("cli",),
    ("main",),
]
# Announced in issue 21 and placed above, not yet in this tree: the README may name them before
# they land (once on disk they are checked like any other; then drop them from here).
PLANNED = {"workdir", "program", "experiments.methods", "experiments.plan",
           "experiments.executors"}


def module_name(path: Path) -> str:
  parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def layer_of(module: str) -> int:
  rest = module.split(".")[1:]
  if not rest:
    return -1  # the package's __init__: the library's front door
  for rank, names in enumerate(LAYERS):
    if rest[0] in names:
      return rank
  raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it to LAYERS "
                       "and to the README's Layout section")


def imports_of(path: Path) -> set[str]:
  """Every anytime module a file imports, at any depth of the file."""
  found = set()
  package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.split(".")[0] == "anytime"}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] +
                        ([base] if base else []))
      if base.split(".")[0] != "anytime":
        continue
      for alias in node.names:
        candidate = f"{base}.{alias.name}"
        is_module = (ROOT.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or \
            (ROOT.parent / Path(*candidate.split("."))).is_dir()
        found.add(candidate if is_module else base)
  return found


def graph() -> dict[str, set[str]]:
  return {module_name(p): imports_of(p) for p in sorted(ROOT.rglob("*.py"))}


def test_every_import_points_down_the_layers():
  upward = []
  for module, targets in graph().items():
    source_rank = layer_of(module)
    for target in targets:
      if target == "anytime" or source_rank < 0:
        continue
      target_rank = layer_of(target)
      same_package = module.split(".")[1] == target.split(".")[1]
      if target_rank > source_rank or (target_rank == source_rank and not same_package):
        upward.append(f"{module} -> {target}")
  assert not upward, "imports against the layering: " + ", ".join(sorted(upward))


def test_no_import_cycle():
  edges = graph()
  state: dict[str, int] = {}  # 1 = on the stack, 2 = done

  def visit(node, stack):
    state[node] = 1
    for nxt in sorted(edges.get(node, ())):
      if nxt not in edges:
        continue
      if state.get(nxt) == 1:
        pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
      if nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = 2

  for node in sorted(edges):
    if node not in state:
      visit(node, [node])


def test_the_checker_sees_a_function_level_upward_import(tmp_path, monkeypatch):
  fake = tmp_path / "anytime"
  (fake / "lm").mkdir(parents=True)
  (fake / "loop.py").write_text("")
  (fake / "lm" / "model.py").write_text("def f():\n  from anytime import loop\n")
  monkeypatch.setattr(__import__(__name__), "ROOT", fake)
  assert imports_of(fake / "lm" / "model.py") == {"anytime.loop"}
  assert layer_of("anytime.loop") > layer_of("anytime.lm.model")


# ------------------------------------------------------------------------------ the README


def layout_block(readme: str) -> str:
  """The code block of the README's "## Layout" section."""
  start = readme.index("\n## Layout")
  end = readme.find("\n## ", start + 1)
  section = readme[start:end if end != -1 else None]
  block = re.search(r"```\n(.*?)```", section, re.S)
  assert block, "the README's Layout section has no ``` block"
  return block.group(1)


def layout_entries(block: str) -> list[tuple[int | None, str, str]]:
  """(layer, path, description) of each ``anytime/...`` line of the block, top to bottom. A line
  ``NN  anytime/x.py  text`` starts layer NN; lines below without a number stay in it; indented
  lines without a path continue the description above."""
  entries, layer = [], None
  for line in block.splitlines():
    entry = re.match(r"^(?:\s*(\d+)\s+|\s*)(anytime/\S+)\s*(.*)$", line)
    if entry:
      layer = int(entry.group(1)) if entry.group(1) else layer
      entries.append((layer, entry.group(2), entry.group(3)))
    elif entries and line.startswith(" " * 8) and line.strip():
      layer_, path, text = entries[-1]
      entries[-1] = (layer_, path, f"{text} {line.strip()}")
    else:
      layer = None  # configs/, benchmarks/ ...: outside the package
  return entries


def _members(package: Path) -> set[str]:
  """A package's modules and sub-packages, as the README names them (``x.py``, ``x/``)."""
  return ({p.name for p in package.glob("*.py") if not p.name.startswith("_")} |
          {f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").exists()})


def layout_problems(readme: str, root: Path = ROOT) -> list[str]:
  """What the README's layout block gets wrong about ``root`` and ``LAYERS``."""
  problems, seen, last = [], set(), None
  on_disk = ({p.stem: f"{p.name}" for p in root.glob("*.py") if p.stem != "__init__"} |
             {p.name: f"{p.name}/" for p in root.iterdir() if (p / "__init__.py").exists()})
  for layer, path, text in layout_entries(layout_block(readme)):
    name = path.removeprefix("anytime/").removesuffix("/").removesuffix(".py")
    is_package = path.endswith("/")
    seen.add(name)
    exists = (root / name / "__init__.py").exists() if is_package else \
        (root / f"{name}.py").exists()
    if not exists and name not in PLANNED:
      problems.append(f"{path} does not exist")
    rank = next((r for r, names in enumerate(LAYERS) if name in names), None)
    if layer is None:
      problems.append(f"{path} has no layer number (on its line or a line above)")
    elif rank is None:
      problems.append(f"{path} is in no layer of tests/test_layers.py")
    elif layer != rank:
      problems.append(f"{path} is drawn in layer {layer}; it is in layer {rank}")
    if None not in (last, layer) and layer > last:
      problems.append(f"{path}: layer {layer} drawn below layer {last} (draw them top down)")
    last = layer
    if is_package and exists:
      named = set(re.findall(r"\b([a-z_][a-z0-9_]*\.py)\b", text)) | \
          {f"{m}/" for m in re.findall(r"\b([a-z_][a-z0-9_]*)/(?=[\s,.;:)]|$)", text)}
      members = _members(root / name)
      problems += [f"{path}: {m} is not named" for m in sorted(members - named)]
      problems += [f"{path}: {m} does not exist" for m in sorted(named - members)
                   if f"{name}.{m.removesuffix('.py').removesuffix('/')}" not in PLANNED]
  problems += [f"anytime/{on_disk[m]} is missing from the README"
               for m in sorted(set(on_disk) - seen)]
  return problems


def test_the_readme_draws_these_layers():
  problems = layout_problems(README.read_text())
  assert not problems, "README.md, section Layout: " + "; ".join(problems)


def test_every_layer_name_exists_or_is_planned():
  names = {n for layer in LAYERS for n in layer}
  stale = sorted(n for n in names if n not in PLANNED and not (ROOT / f"{n}.py").exists()
                 and not (ROOT / n / "__init__.py").exists())
  assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_the_readme_check_sees_what_used_to_be_wrong():
  """A module missing, a package drawn as a module, a layer out of place, a member omitted."""
  readme = README.read_text()
  block = layout_block(readme)
  rank = {name: r for r, names in enumerate(LAYERS) for name in names}
  theory_line = next(l for l in block.splitlines() if "anytime/theory/" in l)
  lm_layer = f"{rank['lm']:2d}"
  wrong = block.replace(next(l for l in block.splitlines() if "anytime/guard.py" in l) + "\n", "")
  wrong = wrong.replace("anytime/averaging/", "anytime/averaging.py")
  wrong = wrong.replace("documents.py", "")
  wrong = wrong.replace(theory_line, lm_layer + theory_line[2:])
  problems = layout_problems(readme.replace(block, wrong))
  assert "anytime/guard.py is missing from the README" in problems, problems
  assert "anytime/averaging.py does not exist" in problems, problems
  assert "anytime/lm/: documents.py is not named" in problems, problems
  assert any(p.startswith("anytime/theory/ is drawn in layer") for p in problems), problems
