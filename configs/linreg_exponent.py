"""Exponent/offset sweep: eta (alpha/(t + alpha))^gamma + uniform average vs gamma*.

For each panel (a in {1.1, 1.5, 1.9} x b in {a, 2a}) and noise sigma^2 in {1e-4, 1e-2, 1}, sweeps
gamma and the offset alpha (alpha = 1 is the plain t^-gamma), tunes the LR per (gamma, alpha) and
horizon, and reports the best (gamma, alpha) per horizon next to gamma* = max(1 - a/b, 0), and the
horizon at which t^-gamma* + average overtakes constant + average (b > a), both with the LR tuned
per horizon and with one LR for all horizons (the anytime protocol).

  python -m anytime.theory.linreg --config configs/linreg_exponent.py --workdir /tmp/linreg_exp

Defaults (dim 1e6, N = 1e6, fast mode at 16 bins per octave, 18 problems x 43 (gamma, alpha) x
10 LRs) need a GPU (tens of seconds per problem); on a 2-core CPU run one panel to N = 1e5
(a few minutes):
  ... --config.capacities='(1.5,)' --config.source_ratios='(2.0,)' --config.num_steps=100000 \
      --config.dim=100000
Expected: with the LR tuned per horizon the best gamma stays below gamma*; with one LR for all
horizons t^-gamma* overtakes constant + average at large N. Measured numbers: docs/linreg.md.
Outputs exponent_sweep.json (best per horizon, overtake horizons), exponent_sweep.csv (every
(gamma, alpha, horizon) with its tuned LR and risk) and exponent_sweep.png (best gamma vs N).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment = "exponent"
  config.capacities = (1.1, 1.5, 1.9)
  config.source_ratios = (1.0, 2.0)  # source b = ratio * capacity a.
  config.noises = (1e-4, 1e-2, 1.0)
  config.dim = 1_000_000
  config.num_steps = 1_000_000
  config.exponents = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75)  # gamma* is always added.
  config.offsets = (1.0, 10.0, 100.0, 1000.0, 3000.0, 10_000.0)
  config.lr_multipliers = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
  config.curve_points = 25  # log-spaced horizons at which everything is tuned and reported.
  config.single_lr_tune_from = 1000  # anytime protocol: one LR over all horizons >= this.
  config.fast = True
  config.bins_per_octave = 16
  config.estimate_error = False
  return config
