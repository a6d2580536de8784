"""``compare_shared_corpus.py`` at 1.7x the parameters: 68k non-embedding, 1x = 1360 steps.

    python -m anytime.main compare --config configs/compare_shared_corpus_68k.py \
        --workdir /tmp/anytime_shared_68k

Byte-level 2-layer d=48 transformer (68.3k non-embedding parameters) on the same text, the same
protocol and 3 seeds. Base horizon T = 1360 steps of 16 x 64 tokens = 1.39M tokens = 20.4
tokens per non-embedding parameter; horizons 1x, 2x, 4x. About 3x the compute of
compare_shared_corpus.py (1.7x the parameters for 1.7x the steps); not re-run under the current
protocol, so the README has no table for it. The command resumes where it stopped.
"""

from configs import compare_shared_corpus


def get_config():
  config = compare_shared_corpus.get_config()
  base, suite = config.base, config.suite
  base.model.d_model = 48
  base.model.mlp_dim = 192
  base.train.log_every = 680
  suite.base_steps = 1360
  suite.warmup_steps = 68
  suite.lr_centre = 6e-3
  suite.inverse_sqrt_offset = 272.0  # 4x the warmup, as in the seed paper
  suite.lawa_every = 136
  return config
