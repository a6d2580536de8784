"""River-valley lab (Wen et al. 2024) on a synthetic bigram language.

Command:
  python -m anytime.theory.river_valley --config configs/river_valley.py --workdir /tmp/rv

Produces in --workdir: summary.json (chain entropy, excess loss at every budget for every
method, the findings and diagnostics), curves.csv, budgets.csv, interpolation.csv,
projection.csv, config.json and loss_curves.png, context_types.png, budgets.png,
sharpness_distance.png, interpolation.png, river_projection.png.

Default: V=64 tokens (half the contexts with a 0.98-dominant successor, half Dirichlet(1)),
softmax bigram model (V x V logits table), Adam (b2 0.999), peak LR 0.1, minibatches of 8
sequences x 64 tokens, budgets 500/1000/2000/4000 steps (WSD cooldown 20% of each budget,
linear to 0). About a minute on a 2-core CPU.

Expected: the constant-LR iterate plateaus while its WSD branches drop below it, and the anytime
EMA-25 of the same run closes most of that gap. Measured numbers: docs/river_valley.md.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.chain = ml_collections.ConfigDict()
  config.chain.vocab_size = 64
  config.chain.low_entropy_fraction = 0.5  # share of contexts with one dominant successor.
  config.chain.dominant_prob = 0.98
  config.chain.high_entropy_concentration = 1.0  # Dirichlet concentration of the others.
  config.chain.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.batch_size = 8  # sequences per step.
  config.data.seq_len = 64  # tokens per sequence (seq_len - 1 next-token targets).

  config.model = ml_collections.ConfigDict()
  config.model.name = "bigram"  # or "transformer" (anytime.lm.model).
  config.model.init_scale = 0.0  # bigram: std of the initial logits.
  config.model.eval_batch_size = 64  # transformer: held-out sequences for the excess loss.
  config.model.transformer = ml_collections.ConfigDict(
      dict(d_model=32, num_layers=1, num_heads=2, mlp_dim=64))

  config.optimizer = ml_collections.ConfigDict(
      dict(name="adam", b1=0.9, b2=0.999, eps=1e-8, momentum=0.0))
  config.averages = ml_collections.ConfigDict({
      "ema_25": {"kind": "anytime_ema", "factor": 25.0},
      "polyak": {"kind": "polyak", "start_step": 0},
  })
  config.reference_average = "ema_25"  # the average used in the diagnostics.

  config.peak_lr = 0.1
  config.warmup_steps = 50
  config.budgets = (500, 1000, 2000, 4000)
  config.cooldown_fraction = 0.2  # WSD / WSD-S cooldown length as a fraction of the budget.
  config.cooldown_shape = "linear"
  config.final_fraction = 0.0
  config.cosine_final_fraction = 0.0
  config.cyclic_cycle_steps = 500
  config.inverse_sqrt_offset = 200.0
  config.runs = ("constant", "inverse_sqrt", "cosine", "wsd", "wsd_s", "cyclic_cosine")

  config.eval_every = 50
  config.log_every = 500
  config.diagnostics = ml_collections.ConfigDict()
  config.diagnostics.hessian_every = 250  # steps; 0 turns the sharpness curve off.
  config.diagnostics.power_iterations = 50
  config.diagnostics.interpolation_points = 41
  config.diagnostics.interpolation_min = -0.5
  config.diagnostics.interpolation_max = 1.5
  return config
