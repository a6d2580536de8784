"""300M-parameter LM of the seed paper: the 150M config with 24 layers and batch 512.

    python -m anytime.main --config configs/lm_300m.py --workdir gs://BUCKET/anytime/300m

24 layers, d_model 1024, 16 heads, MLP 4096, sequence 1024, global batch 512 (524,288 tokens
per step), 12,500 steps = 1x Chinchilla; activations rematerialised per block.
"""

import importlib.util
import pathlib


def _lm_150m():
  """configs/lm_150m.py next to this file, loaded by path: it works from any directory (the
  configs are files given on the command line, not a package on sys.path)."""
  path = pathlib.Path(__file__).with_name("lm_150m.py")
  spec = importlib.util.spec_from_file_location("anytime_configs_lm_150m", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  config = _lm_150m().get_config()
  config.model.num_layers = 24
  config.model.remat = True
  config.train.batch_size = 512
  return config
