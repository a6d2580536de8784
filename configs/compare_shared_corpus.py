"""Anytime vs tuned schedules on real English text at 1-4x Chinchilla, sized for a 2-core CPU.

    python -m anytime.main compare --config configs/compare_shared_corpus.py \
        --workdir /tmp/anytime_shared

Byte-level 2-layer d=36 transformer (40.9k non-embedding parameters, output projection
included) on Shakespeare, the King James Bible and Milton (../shared/data/text: 9.0M training
bytes; validation = 4 held-back plays and 6 held-back books). Base horizon T = 800 steps of
16 x 64 tokens = 819k tokens = 20.0 tokens per non-embedding parameter (1x Chinchilla); horizons
1x, 2x, 4x (under one epoch).
The quickstart's tuning protocol (√2-spaced LR grid extended at its edges; baselines tuned per
horizon, anytime methods with one LR for all horizons; every choice made on tuning seed 0,
reported on fresh seeds 1-3). Evaluation: 48 batches of 128 windows (393k validation tokens,
about half of the held-back text, from 2,048 blank-line documents), so that the evaluation
set's document-clustered error of a delta stays at about half its seed standard error or
below (the report prints both). The README gives the measured time; the command resumes where
it stopped. ``compare_shared_corpus_68k.py`` is the same suite at 1.7x the parameters.
"""

import ml_collections

from anytime import config as config_lib


def get_config():
  base = config_lib.default_config()
  base.model.d_model = 36
  base.model.num_layers = 2
  base.model.num_heads = 2
  base.model.mlp_dim = 144
  base.model.max_len = 64
  base.data.source = "text"
  base.data.train_patterns = ("../shared/data/text/train/*.txt.gz",)
  base.data.validation_patterns = ("../shared/data/text/validation/*.txt.gz",)
  base.train.batch_size = 16
  base.train.seq_len = 64
  base.train.eval_batches = 48  # the eval error of a delta <= ~half its seed s.e.
  base.train.eval_batch_size = 128
  base.train.log_every = 400
  base.parallel.mesh = dict(data=1, fsdp=1, tensor=1)
  base.parallel.num_devices = 1
  suite = config_lib.default_suite()
  suite.base_steps = 800
  suite.multipliers = [1, 2, 4]
  suite.warmup_steps = 40
  suite.lr_centre = 8.49e-3
  suite.lr_points = 3
  suite.seeds = 3
  suite.inverse_sqrt_offset = 160.0  # 4x the warmup, as in the seed paper
  suite.lawa_every = 80
  suite.ema_factors = [25.0]
  suite.evals_per_base = 1
  return ml_collections.ConfigDict(dict(base=base, suite=suite))
