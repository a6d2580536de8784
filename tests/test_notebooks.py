"""Executes every notebook in notebooks/ (as a user would, from that folder) and fails on errors.

Each notebook is sized to run in well under a minute on a laptop CPU. The notebooks are stored
without outputs; nothing is written back.
"""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # whole training runs, subprocesses or notebooks

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_found():
  assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
  # The kernel inherits this environment: `anytime` from this checkout, a plain single-device
  # CPU (not the 8 fake devices of tests/conftest.py), and, for explore_results.ipynb, an empty
  # suite workdir so that it runs its own small suite.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  monkeypatch.setenv("XLA_FLAGS", " ".join(flags))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("ANYTIME_SUITE_WORKDIR", str(tmp_path / "no_suite_here"))
  monkeypatch.setenv("TMPDIR", str(tmp_path))  # where that small suite goes
  monkeypatch.setenv("ANYTIME_COMPILATION_CACHE", str(tmp_path / "jax_cache"))
  notebook = nbformat.read(path, as_version=4)
  for cell in notebook.cells:
    assert not cell.get("outputs") and not cell.get("execution_count"), (
        f"{path.name} is stored with outputs; clear them before committing")
  client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": str(path.parent)}})
  client.execute()  # raises CellExecutionError on the first failing cell
