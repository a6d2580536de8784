"""The package's imports point one way: down the layers of ARCHITECTURE.md, with no cycle.

Every ``import`` of an ``anytime`` module is parsed, function-level ones included. A module may
import modules of a lower layer, or of its own layer inside its own package (e.g.
``experiments.compare`` -> ``experiments.posthoc_eval``), never a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "anytime"

# Lowest first. A prefix names a package: every module below it shares the layer.
LAYERS = [
    ("schedules",),
    ("averaging",),
    ("posthoc", "optimizers", "naming", "guard", "parallel", "checkpoint"),
    ("lm",),
    ("config", "theory"),
    ("loop",),
    ("branches", "batched"),
    ("experiments",),
    ("main",),
]


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
  raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add it there")


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
