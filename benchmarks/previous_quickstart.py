"""The previous release's quickstart runs (commit 4eb20e8), as a suite config of this release.

    python -m anytime.main compare --config benchmarks/previous_quickstart.py --workdir DIR

Same model, data, horizons (1x-8x of T = 100 steps), runs and evaluations as that release's
``configs/compare_tiny.py``: cosine at every horizon with peak LRs {3e-3, 1e-2}; one run each of
constant (5 anytime EMAs, LAWA, post-hoc power EMAs at 7 sigma_rels, WSD branches linear to 10%),
1/sqrt(t) (EMAs), WSD-S and Schedule-Free at 3e-3; one seed, no grid extension, no checkpoint
merges, 4 x 32 evaluation windows. ``benchmarks/quickstart_old_vs_new.py`` times it against the
previous release's own command in one invocation. Not a fair comparison (one seed, a 2-point
grid): that is what ``configs/compare_tiny.py`` is for.
"""

import ml_collections

from configs import compare_tiny


def get_config():
  config = compare_tiny.get_config()
  base, suite = config.base, config.suite
  base.train.eval_batches = 4
  base.train.eval_batch_size = 32
  suite.multipliers = [1, 2, 4, 8]
  suite.baselines = ["cosine"]
  suite.methods = ["constant", "inverse_sqrt", "wsd_s", "schedule_free"]
  suite.lr_grids = dict(cosine=[3e-3, 1e-2], constant=[3e-3], inverse_sqrt=[3e-3],
                        wsd_s=[3e-3], schedule_free=[3e-3])
  suite.max_extensions = 0
  suite.seeds = 1
  suite.ema_factors = [6.25, 12.5, 25.0, 50.0, 100.0]
  suite.wsd_variants = [["linear", 0.1]]
  suite.evals_per_base = 2
  suite.posthoc_sigma_rels = [0.02, 0.035, 0.05, 0.07, 0.1, 0.15, 0.2]
  suite.snapshots_per_base = 10
  suite.merge_last = []
  suite.checkpoints_per_base = 1  # the previous release saved every 1/4 of a run's length
  return ml_collections.ConfigDict(dict(base=base, suite=suite))
