"""150M-parameter LM of the seed paper (1x Chinchilla = 12,500 steps), for accelerators.

    python -m anytime.main --config configs/lm_150m.py --workdir gs://BUCKET/anytime/150m \
        --config.data.train_patterns='("gs://BUCKET/c4/train",)' ...

12 layers, d_model 1024, 16 heads, MLP 4096, sequence 1024, global batch 256 (262,144 tokens
per step), AdamW (b2 0.95, no weight decay), bfloat16 compute with float32 params, fused
attention on GPU. The seed paper uses C4 with the T5 tokenizer (vocab 32,100): point
data.source="array_record" at shards written by `python -m anytime.lm.prepare` and
data.tokenizer at the T5 sentencepiece model. Without such data it falls back to the embedded
corpus with byte tokens, which is only useful as a smoke test.
Measured on one H100 (benchmarks/lm_step.py, batch 64 x 1024): see the README's MFU figure.
"""

from anytime import config as config_lib


def get_config():
  config = config_lib.default_config()
  config.model.d_model = 1024
  config.model.num_layers = 12
  config.model.num_heads = 16
  config.model.mlp_dim = 4096
  config.model.max_len = 1024
  config.model.compute_dtype = "bfloat16"
  config.model.attention_impl = "cudnn"
  config.train.vocab_multiple = 128
  config.train.total_steps = 12_500
  config.train.batch_size = 256
  config.train.seq_len = 1024
  config.train.eval_every = 1000
  config.train.eval_batches = 20
  config.train.log_every = 50
  config.train.checkpoint_every = 1000
  config.train.keep_period = 2500
  config.parallel.mesh = dict(data=1, fsdp=-1, tensor=1)
  config.optimizer.schedule = dict(name="constant", peak_value=1e-3, warmup_steps=5000,
                                   warmup_init_fraction=0.1)
  config.optimizer.averages = {
      "ema_6p25": dict(kind="anytime_ema", factor=6.25),
      "ema_12p5": dict(kind="anytime_ema", factor=12.5),
      "ema_25": dict(kind="anytime_ema", factor=25.0),
      "ema_50": dict(kind="anytime_ema", factor=50.0),
      "ema_100": dict(kind="anytime_ema", factor=100.0),
  }
  return config
