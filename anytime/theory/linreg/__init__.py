"""SGD with anytime schedules and weight averaging on power-law linear regression.

The problem (Meterez et al. 2026, Sec. 3): power-law linear regression with capacity a and
source b, one-pass SGD with a schedule and an average of the iterates. ``recursion`` derives and
solves its exact expected-risk dynamics; ``monte_carlo_sgd`` runs real SGD on sampled data and
is the test of that derivation.

Modules: ``problem`` (the problem, pseudo-coordinates, schedule shapes, average weights),
``recursion`` (the exact recursion, fused and two-pass, and a straightforward reference),
``monte_carlo`` (real SGD on sampled data), ``rates`` (risk curves of a problem, fitted rates,
LR tuning), ``experiments`` (Figure 3, the exponent sweep), ``plots``.
Run: ``python -m anytime.theory.linreg --config configs/linreg_figure3.py --workdir DIR``.

References:
  Meterez et al. 2026, "Anytime pretraining: horizon-free learning-rate schedules with weight
    averaging" (arXiv 2602.03702).
  Caponnetto & De Vito 2007, "Optimal rates for the regularized least-squares algorithm".
  Zou et al. 2021, "Benign overfitting of constant-stepsize SGD for linear regression".
"""

from anytime.theory.linreg.experiments import EXPERIMENTS, run_exponent, run_figure3
from anytime.theory.linreg.monte_carlo import MonteCarloMoments, monte_carlo_sgd
from anytime.theory.linreg.problem import (AVERAGING_KINDS, Coordinates, PowerLawProblem,
                                           averaging_weights, binned_coordinates,
                                           exact_coordinates, minimax_rate_exponent, panels,
                                           schedule_shape)
from anytime.theory.linreg.rates import fit_rate, problem_risk, tune_lr
from anytime.theory.linreg.recursion import (RiskCurves, check_steps, expected_risk,
                                             straightforward_risk)
