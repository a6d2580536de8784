"""SGD with anytime schedules and weight averaging on power-law linear regression.

The problem (Meterez et al. 2026, Sec. 3): x ~ N(0, H), H = diag(lambda_i), lambda_i = i^-a
(capacity a > 1), target lambda_i (w*_i)^2 = i^-b (source b > 1), y = <x, w*> + N(0, sigma^2),
w_0 = 0. One-pass SGD with batch size B: w <- w - eta_t/B sum_k x_k (<x_k, w> - y_k), and an
average w_bar_t = (1 - rho_t) w_bar_{t-1} + rho_t w_t of the iterates.

Exact expected-risk dynamics. With e = w - w*, s_i = E[e_i^2] and q = sum_j lambda_j s_j, the
Gaussian fourth moment E[x x^T A x x^T] = 2 H A H + tr(HA) H gives for the batch mean
E[X_B A X_B] = (1 + 1/B) H A H + tr(HA)/B H, hence (only the diagonal closes, H being diagonal)

  s_i <- (1 - 2 eta lambda_i + (1 + 1/B) eta^2 lambda_i^2) s_i + eta^2/B lambda_i (q + sigma^2).

For the average, s_bar_i = E[e_bar_i^2] and c_i = E[e_bar_i e_i] (fresh data is independent of
the past, so E[e_bar_i e'_i] = (1 - eta lambda_i) c_i with the pre-step c):

  s_bar <- (1-rho)^2 s_bar + rho^2 s' + 2 rho (1-rho) (1 - eta lambda) c,
  c     <- (1-rho) (1 - eta lambda) c + rho s',          with s' the post-step s.

The solver runs the equivalent, cheaper form P_t = e_bar_t / rho_t = kappa_t P_{t-1} + e_t,
kappa_t = (1 - rho_t) rho_{t-1} / rho_t: M = E[P_i^2], D = E[P_i e_i] obey
X = kappa (1 - eta lambda) D, D <- X + s', M <- kappa^2 M + 2 X + s', s_bar = rho^2 M.
``monte_carlo_sgd`` runs real SGD on sampled data and is the test of all of the above.

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
