"""Tiny LM on the embedded default corpus (Python's own stdlib sources), CPU-sized.

    python -m anytime.main --config configs/lm_tiny.py --workdir /tmp/anytime_tiny

Byte-level tokens, a 4-layer d=128 transformer (~0.9M params), constant LR after warmup with
anytime EMAs (f = 6.25, 25, 100), 600 steps of 16 x 128 tokens. On a 2-core
CPU: about 1.5 minutes; validation loss of the raw params about 1.9 nats/byte and of EMA-25
a little lower (the unigram entropy of the bytes is about 3.2 nats).
"""

from anytime import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.model.d_model = 128
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.mlp_dim = 512
  config.model.max_len = 128
  config.train.total_steps = 600
  config.train.batch_size = 16
  config.train.seq_len = 128
  config.train.eval_every = 200
  config.train.eval_batches = 4
  config.train.log_every = 50
  config.train.checkpoint_every = 200
  config.optimizer.schedule = dict(name="constant", peak_value=3e-3, warmup_steps=50,
                                   warmup_init_fraction=0.1)
  config.optimizer.averages = {
      "ema_6p25": dict(kind="anytime_ema", factor=6.25),
      "ema_25": dict(kind="anytime_ema", factor=25.0),
      "ema_100": dict(kind="anytime_ema", factor=100.0),
  }
  return config
