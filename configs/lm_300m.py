"""300M-parameter LM of the seed paper: the 150M config with 24 layers and batch 512.

    python -m anytime.main --config configs/lm_300m.py --workdir gs://BUCKET/anytime/300m

24 layers, d_model 1024, 16 heads, MLP 4096, sequence 1024, global batch 512 (524,288 tokens
per step), 12,500 steps = 1x Chinchilla; activations rematerialised per block.
"""

from configs import lm_150m


def get_config():
  config = lm_150m.get_config()
  config.model.num_layers = 24
  config.model.remat = True
  config.train.batch_size = 512
  return config
