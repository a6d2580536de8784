"""The seed paper's comparison at 150M parameters (accelerators; C4 + T5 tokenizer).

    python -m anytime.main compare --config configs/compare_150m.py --workdir gs://BUCKET/cmp150m \
        --config.base.data.source=array_record \
        --config.base.data.train_patterns='("gs://BUCKET/c4_t5/train",)' \
        --config.base.data.validation_patterns='("gs://BUCKET/c4_t5/validation",)' \
        --config.base.data.tokenizer.kind=file --config.base.data.tokenizer.path=gs://BUCKET/t5.model

configs/lm_150m.py as the base model; 1x Chinchilla = 12,500 steps of 256 x 1024 tokens, horizons
1x-8x (add 16, 32 to `suite.multipliers` for the paper's full range); 5,000 warmup steps; cosine
to 10% of peak tuned per horizon over 3 peak LRs; one constant-LR run with anytime EMAs
(f = 6.25 ... 100), its WSD branches (linear cooldown to 10% over the last 10% of each horizon,
as the paper's Figure 2) and a LAWA window; one shifted 1/sqrt(t) run (offset 51,200, the
paper's); WSD-S; Schedule-Free AdamW. The paper's published losses for this setting are in
../shared/data/reference/anytime_pretraining_figure2.csv (cosine 3.0185 ... 2.8224 at 1x ... 8x).
Cost: cosine 15 x 12,500 steps per LR; each anytime run 100,000 steps.
"""

import ml_collections

from anytime.experiments import compare
from configs import lm_150m


def get_config():
  base = lm_150m.get_config()
  base.train.eval_batches = 40
  suite = compare.default_suite()
  suite.base_steps = 12_500
  suite.multipliers = [1, 2, 4, 8]
  suite.warmup_steps = 5_000
  suite.warmup_init_fraction = 0.1
  suite.cosine_peak_values = [5e-4, 1e-3, 2e-3]
  suite.cosine_final_fraction = 0.1
  suite.peak_values = [1e-3]
  suite.schedule_free_peak_values = [1e-3]
  suite.inverse_sqrt_offset = 51_200.0
  suite.wsd_cooldown_fraction = 0.1
  suite.wsd_shape = "linear"
  suite.wsd_final_fraction = 0.1
  suite.wsd_s_cooldown_fraction = 0.1
  suite.lawa_every = 1_000
  suite.lawa_size = 10
  suite.evals_per_base = 5
  return ml_collections.ConfigDict(dict(base=base, suite=suite))
