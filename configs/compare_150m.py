"""The seed paper's comparison at 150M parameters (accelerators; C4 + T5 tokenizer).

    python -m anytime.main compare --config configs/compare_150m.py --workdir gs://BUCKET/cmp150m \
        --config.base.data.source=array_record \
        --config.base.data.train_patterns='("gs://BUCKET/c4_t5/train",)' \
        --config.base.data.validation_patterns='("gs://BUCKET/c4_t5/validation",)' \
        --config.base.data.tokenizer.kind=file --config.base.data.tokenizer.path=gs://BUCKET/t5.model

configs/lm_150m.py as the base model; 1x Chinchilla = 12,500 steps of 256 x 1024 tokens, horizons
1x-8x (add 16, 32 to `suite.multipliers` for the paper's full range); 5,000 warmup steps; cosine
to 10% of peak and linear decay to zero tuned per horizon, the anytime methods (constant LR
with anytime EMAs, LAWA and WSD branches — linear cooldown to 10% over the last 10% of each
horizon, as the paper's Figure 2, and to zero —; shifted 1/sqrt(t), offset 51,200 as the
paper's; WSD-S; Schedule-Free AdamW) with one LR, all on a √2 grid around 1e-3 extended at its
edges. Runs are trained one after the other, each sharded over the whole mesh (the batched
engine is for one-device runs). One seed by default: raise `suite.seeds` for a noise floor
(with one seed every delta is reported as a tie). The paper's published losses for this setting are in
../shared/data/reference/anytime_pretraining_figure2.csv (cosine 3.0185 ... 2.8224 at 1x ... 8x).
Cost: each baseline 15 x 12,500 steps per LR; each anytime run 100,000 steps.
"""

import importlib.util
import pathlib

import ml_collections

from anytime import config as config_lib


def _lm_150m():
  """configs/lm_150m.py next to this file, loaded by path (works from any directory)."""
  path = pathlib.Path(__file__).with_name("lm_150m.py")
  spec = importlib.util.spec_from_file_location("anytime_configs_lm_150m", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  base = _lm_150m().get_config()
  base.train.eval_batches = 40
  suite = config_lib.default_suite()
  suite.base_steps = 12_500
  suite.multipliers = [1, 2, 4, 8]
  suite.warmup_steps = 5_000
  suite.warmup_init_fraction = 0.1
  suite.lr_centre = 1e-3
  suite.lr_points = 3
  suite.seeds = 1
  suite.cosine_final_fraction = 0.1
  suite.inverse_sqrt_offset = 51_200.0
  suite.wsd_cooldown_fraction = 0.1
  suite.wsd_variants = [["linear", 0.1], ["linear", 0.0]]
  suite.wsd_s_cooldown_fraction = 0.1
  suite.lawa_every = 1_000
  suite.lawa_size = 10
  suite.evals_per_base = 5
  suite.posthoc_sigma_rels = []
  suite.merge_last = []
  return ml_collections.ConfigDict(dict(base=base, suite=suite))
