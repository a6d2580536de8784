"""The README's main job: one anytime run vs schedules tuned for each horizon, embedded corpus.

    python -m anytime.main compare --config configs/compare_tiny.py --workdir /tmp/anytime_compare

A 2-layer d=64 byte-level transformer on Python's own stdlib sources (no download), base
horizon T = 100 steps of 16 x 64 tokens, horizons 1x/2x/4x (100-400 steps; 0.04-0.18x
Chinchilla for its 116k non-embedding parameters). Baselines (cosine to 10% and linear decay to
zero) are tuned per horizon; the anytime methods (constant LR with EMA-25 and LAWA, and its WSD
branches 1-sqrt to 0 and linear to 10%; 1/sqrt(t) with EMA-25) get
one LR for all horizons, all on the same sqrt(2)-spaced LR grid, extended where an optimum sits
on an edge. Every choice is made on tuning seed 0; the chosen configurations are re-run on 3
fresh reporting seeds, whose deltas get intervals (seed noise and the evaluation set's
clustered error) and verdicts (win / loss / equivalent within ±0.01 nats / undecided). WSD-S,
Schedule-Free, post-hoc EMAs and checkpoint merges are left to the real-text suite
(compare_shared_corpus.py) to keep this one short. Prints a compact summary and writes report/; the
README gives the measured time and table.
"""

import ml_collections

from anytime import config as config_lib


def get_config():
  base = config_lib.default_config()
  base.model.d_model = 64
  base.model.num_layers = 2
  base.model.num_heads = 2
  base.model.mlp_dim = 256
  base.model.max_len = 64
  base.train.batch_size = 16
  base.train.seq_len = 64
  base.train.eval_batches = 8  # 1,024 windows, 65k tokens: eval sampling error well below seed noise
  base.train.eval_batch_size = 128
  base.train.log_every = 100
  base.parallel.mesh = dict(data=1, fsdp=1, tensor=1)
  base.parallel.num_devices = 1
  suite = config_lib.default_suite()
  suite.base_steps = 100
  suite.multipliers = [1, 2, 4]
  suite.warmup_steps = 10
  suite.lr_centre = 4.24e-3
  suite.lr_points = 3
  suite.methods = ["constant", "inverse_sqrt"]  # WSD-S and Schedule-Free: the real-text suite
  suite.tuning_seeds = [0]
  suite.seeds = 3  # fresh reporting seeds 1-3
  suite.max_seeds = 3
  suite.inverse_sqrt_offset = 40.0
  suite.ema_factors = [25.0]
  suite.wsd_variants = [["1-sqrt", 0.0], ["linear", 0.1]]  # the default has all four
  suite.evals_per_base = 1
  # Post-hoc EMAs and checkpoint merges are columns of the real-text suite; here they would
  # double the checkpoints and snapshots of every constant run.
  suite.posthoc_sigma_rels = []
  suite.merge_last = []
  suite.checkpoints_per_base = 1  # the branch points are saved besides (no merges here)
  return ml_collections.ConfigDict(dict(base=base, suite=suite))
