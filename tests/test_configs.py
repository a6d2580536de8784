"""Config files load the way the command line loads them, from any working directory."""

import os
import sys
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from anytime import config as config_lib

REPO = Path(__file__).resolve().parents[1]


def _load(path: Path):
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values)
  values(["prog", f"--config={path}"])
  return values.config


@pytest.fixture
def outside_the_repo(tmp_path, monkeypatch):
  """A working directory and sys.path without the repository root (``configs`` not importable)."""
  monkeypatch.chdir(tmp_path)
  here = {str(REPO), "", "."}
  monkeypatch.setattr(sys, "path", [p for p in sys.path
                                    if p not in here and os.path.abspath(p) != str(REPO)])
  for name in [n for n in sys.modules if n == "configs" or n.startswith("configs.")]:
    monkeypatch.delitem(sys.modules, name)


def test_lm_300m_is_lm_150m_with_more_layers_and_batch(outside_the_repo):
  big, base = _load(REPO / "configs" / "lm_300m.py"), _load(REPO / "configs" / "lm_150m.py")
  assert (big.model.num_layers, big.model.remat, big.train.batch_size) == (24, True, 512)
  big.model.num_layers, big.model.remat, big.train.batch_size = (
      base.model.num_layers, base.model.remat, base.train.batch_size)
  assert big.to_dict() == base.to_dict()
  assert set(big.keys()) == set(config_lib.default_config().keys())
