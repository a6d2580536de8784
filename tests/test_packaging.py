"""The core distribution needs jax + optax + numpy only; the rest is behind extras."""

import ast
import os
import re
import subprocess
import sys

import pytest

import anytime
from anytime import averaging, schedules

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = {"jax", "optax", "numpy"}


def test_version_types_and_public_names():
  assert re.fullmatch(r"\d+\.\d+\.\d+", anytime.__version__)
  assert os.path.exists(os.path.join(REPO, "anytime", "py.typed"))
  for module in (anytime, averaging, schedules):
    assert module.__all__ and all(hasattr(module, name) for name in module.__all__)


def test_library_modules_import_only_the_core():
  averaging_dir = os.path.join(REPO, "anytime", "averaging")
  package = [os.path.join("averaging", n) for n in os.listdir(averaging_dir) if n.endswith(".py")]
  assert len(package) > 1
  for name in ("schedules.py", "__init__.py", *package):
    with open(os.path.join(REPO, "anytime", name), encoding="utf-8") as f:
      tree = ast.parse(f.read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert imported - stdlib <= CORE | {"anytime"}, (name, imported - stdlib)


@pytest.mark.slow
def test_wheel_metadata_requires_only_the_core(tmp_path):
  subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)],
                 cwd=REPO, check=True, capture_output=True)
  (info,) = [p for p in os.listdir(tmp_path) if p.endswith(".egg-info")]
  with open(tmp_path / info / "PKG-INFO", encoding="utf-8") as f:
    pkg_info = f.read()
  assert "Name: jax-anytime" in pkg_info
  with open(tmp_path / info / "requires.txt", encoding="utf-8") as f:
    sections = f.read().split("\n\n")
  core = {re.split(r"[<>=\[ ]", line)[0] for line in sections[0].split() if line}
  assert core == CORE
  extras = "\n".join(sections[1:])
  for heavy in ("flax", "orbax-checkpoint", "grain", "tokenizers", "matplotlib", "scipy"):
    assert heavy not in sections[0] and heavy in extras
  assert "[train]" in extras and "[labs]" in extras and "[dev]" in extras
  with open(tmp_path / info / "SOURCES.txt", encoding="utf-8") as f:
    assert "anytime/py.typed" in f.read()


@pytest.mark.slow
def test_api_reference_builds_without_warnings(tmp_path):
  pytest.importorskip("sphinx")
  result = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
       os.path.join(REPO, "docs", "api"), str(tmp_path / "html")],
      cwd=REPO, capture_output=True, text=True,
      env={**os.environ, "PYTHONPATH": REPO})
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / "html" / "averaging.html").exists()
