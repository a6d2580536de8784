"""The seed paper's Figure 3: SGD + uniform average on power-law linear regression.

Panels a in {1.1, 1.5, 1.9} x b in {a, 2a}, sigma^2 = 0.01, dim 500,000, N = 50,000 one-pass
samples, LR = m / tr(H) over 22 multipliers m, each method's LR chosen by the mean excess risk over
steps {1k, 2k, 3k, 5k, 8k, 10k, 20k, 50k}. Methods: constant, 1/sqrt(t) and t^-gamma* (gamma* =
max(1 - a/b, 0)), each with the uniform average, and cosine tuned per horizon (last iterate).

  python -m anytime.theory.linreg --config configs/linreg_figure3.py --workdir /tmp/linreg_fig3

Fast mode (32 bins per octave, error estimate against 16): about 5 min on a 2-core CPU.
Expected: for b = a constant + average is close to per-horizon cosine; for b = 2a 1/sqrt(t) +
average stays behind constant + average. Measured numbers: docs/linreg.md. Produces
figure3.json (chosen LRs, risks at the tuning steps, fitted slopes vs -(1 - 1/b)),
figure3_curves.csv, figure3_all_lrs.csv and figure3.png (2x3 panels).
Quick check (~10 s): add --config.dim=20000 --config.num_steps=5000.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.experiment = "figure3"
  config.capacities = (1.1, 1.5, 1.9)
  config.source_ratios = (1.0, 2.0)  # source b = ratio * capacity a.
  config.noise = 0.01
  config.dim = 500_000
  config.num_steps = 50_000
  config.batch_size = 1
  config.lr_multipliers = (1e-4, 2e-4, 5e-4, 7e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 3e-2, 5e-2,
                           7.5e-2, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 2.0, 3.0, 5.0, 10.0)
  config.tune_steps = (1000, 2000, 3000, 5000, 8000, 10_000, 20_000, 50_000)
  config.curve_points = 40  # extra log-spaced checkpoints for the curves.
  config.cosine_final_fraction = 0.0
  config.fit_range = (1000, 50_000)  # steps over which the log-log slope is fitted.
  config.fast = True
  config.bins_per_octave = 32
  config.estimate_error = True
  return config
