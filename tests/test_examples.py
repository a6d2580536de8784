"""The example scripts run, and the doc shows their code unchanged."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_nnx_example_trains_every_set_of_weights():
  result = subprocess.run([sys.executable, "examples/train_nnx_mlp.py"], cwd=REPO, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO})
  assert result.returncode == 0, result.stderr[-2000:]
  losses = dict((line.split()[0], float(line.split()[2])) for line in result.stdout.splitlines())
  assert set(losses) == {"raw", "ema_25", "lawa"}
  assert all(value < 0.5 for value in losses.values()), losses


def test_doc_shows_the_example_code():
  with open(os.path.join(REPO, "docs", "use_in_your_trainer.md"), encoding="utf-8") as f:
    doc = f.read()
  with open(os.path.join(REPO, "examples", "train_nnx_mlp.py"), encoding="utf-8") as f:
    example = f.read()
  start = example.index("  model = Mlp(")
  end = example.index("  return losses")
  assert example[start:end] in doc
