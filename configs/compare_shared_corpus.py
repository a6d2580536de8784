"""Anytime vs cosine on real English text (../shared/data/text), sized for a 2-core CPU.

    python -m anytime.main compare --config configs/compare_shared_corpus.py \
        --workdir /tmp/anytime_shared

Byte-level 2-layer d=64 transformer (0.1M params) on Shakespeare, the King James Bible and
Milton (train: 9.0M bytes; validation: 4 held-back plays and 6 held-back books, 0.73M bytes).
Base horizon T = 200 steps of 16 x 64 tokens; horizons 1x-8x (0.2M-1.6M tokens, under one
epoch). Cosine is tuned per horizon over 3 peak LRs (12 runs); the anytime methods use one LR
for all horizons. Evaluation: 16 x 32 windows of 64 tokens (33k validation tokens).
The README's results section reports what this produced and how long it took.
"""

from configs import compare_tiny


def get_config():
  config = compare_tiny.get_config()  # the same model; real text, longer horizons, an LR grid
  base, suite = config.base, config.suite
  base.data.source = "text"
  base.data.train_patterns = ("../shared/data/text/train/*.txt.gz",)
  base.data.validation_patterns = ("../shared/data/text/validation/*.txt.gz",)
  base.train.eval_batches = 16
  base.train.log_every = 200
  suite.base_steps = 200
  suite.warmup_steps = 20
  suite.cosine_peak_values = [2e-3, 4e-3, 8e-3]
  suite.peak_values = [4e-3]
  suite.schedule_free_peak_values = [4e-3]
  suite.inverse_sqrt_offset = 80.0  # 4x the warmup, as in the seed paper
  suite.evals_per_base = 2
  return config
