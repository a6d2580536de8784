"""Tests for anytime.theory.linreg: closed forms, Monte Carlo agreement, fast mode, bad inputs."""

import json
import math
import os

import numpy as np
import pytest

from anytime import schedules
from anytime.theory import linreg


def _recursion_numpy(lam, s0, lrs, rhos, noise, batch_size, fourth_moment_factor=None):
  """Independent float64 loop over the (s, s_bar, c) recursion; returns per-step (s, s_bar)."""
  factor = 1 + 1 / batch_size if fourth_moment_factor is None else fourth_moment_factor
  s, s_bar, c = s0.copy(), s0.copy(), s0.copy()
  out_s, out_bar = [], []
  for eta, rho in zip(lrs, rhos):
    q = np.sum(lam * s)
    s_new = (1 - 2 * eta * lam + factor * eta**2 * lam**2) * s + eta**2 / batch_size * lam * (
        q + noise)
    s_bar = (1 - rho)**2 * s_bar + rho**2 * s_new + 2 * rho * (1 - rho) * (1 - eta * lam) * c
    c = (1 - rho) * (1 - eta * lam) * c + rho * s_new
    s = s_new
    out_s.append(s.copy())
    out_bar.append(s_bar.copy())
  return np.array(out_s), np.array(out_bar)


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("batch_size", [1, 3])
def test_one_dimension_constant_lr_closed_form(batch_size):
  problem = linreg.PowerLawProblem(1, 1.5, 2.0, 0.3)  # lambda = 1, s0 = 1.
  eta, steps = 0.2, np.array([1, 2, 5, 20, 60])
  curves = linreg.expected_risk(linreg.exact_coordinates(problem), problem.noise,
                                np.ones(60), [eta], steps, batch_size=batch_size)
  r = 1 - 2 * eta + (1 + 2 / batch_size) * eta**2
  fixed_point = eta**2 * problem.noise / batch_size / (1 - r)
  s = r**steps + fixed_point * (1 - r**steps)
  np.testing.assert_allclose(curves.last[0, 0], 0.5 * s, rtol=1e-12)


def test_one_dimension_average_matches_double_sum():
  """E[(w_bar_N - w*)^2] = N^-2 [sum_t s_t + 2 sum_{t<u} prod_{k=t+1}^{u} (1 - eta_k) s_t]."""
  problem = linreg.PowerLawProblem(1, 2.0, 3.0, 0.05)
  num_steps = 40
  lrs = 0.4 / np.sqrt(np.arange(1, num_steps + 1))
  curves = linreg.expected_risk(linreg.exact_coordinates(problem), problem.noise, lrs, [1.0],
                                [10, 40])
  s = [1.0]
  for eta in lrs:
    s.append((1 - 2 * eta + 2 * eta**2) * s[-1] + eta**2 * (s[-1] + problem.noise))
  for c, n in enumerate([10, 40]):
    total = sum(s[t] for t in range(1, n + 1))
    for t in range(1, n + 1):
      for u in range(t + 1, n + 1):
        total += 2 * np.prod(1 - lrs[t:u]) * s[t]
    np.testing.assert_allclose(curves.average[0, 0, 0, c], 0.5 * total / n**2, rtol=1e-12)


@pytest.mark.parametrize("kind", ["uniform", "ema", "anytime_ema", "power_ema", "tail"])
def test_fused_recursion_matches_direct_recursion(kind):
  problem = linreg.PowerLawProblem(30, 1.3, 2.1, 0.02)
  num_steps, batch_size = 80, 2
  rhos = linreg.averaging_weights(kind, num_steps, ema_decay=0.9, half_life_factor=3.0,
                                  start=20)
  shape = linreg.schedule_shape(schedules.cosine(1.0, total_steps=num_steps), num_steps)
  lr = 0.7 / problem.trace
  curves = linreg.expected_risk(linreg.exact_coordinates(problem), problem.noise, shape, [lr],
                                np.arange(1, num_steps + 1), averages=rhos,
                                batch_size=batch_size)
  s, s_bar = _recursion_numpy(problem.eigenvalues, problem.initial_error, lr * shape, rhos,
                              problem.noise, batch_size)
  np.testing.assert_allclose(curves.last[0, 0], 0.5 * s @ problem.eigenvalues, rtol=1e-11)
  np.testing.assert_allclose(curves.average[0, 0, 0], 0.5 * s_bar @ problem.eigenvalues,
                             rtol=1e-10)


def test_two_pass_matches_fused():
  problem = linreg.PowerLawProblem(700, 1.5, 3.0, 0.01)
  shapes = np.stack([1 / np.sqrt(np.arange(1, 301)), np.ones(300)])
  averages = np.stack([linreg.averaging_weights(k, 300) for k in ("uniform", "anytime_ema")])
  lrs = np.array([0.1, 1.0, 3.0]) / problem.trace
  runs = [linreg.expected_risk(linreg.exact_coordinates(problem), problem.noise, shapes, lrs,
                               [1, 7, 300], averages=averages, batch_size=2, method=method,
                               block=128) for method in ("fused", "two_pass")]
  assert runs[0].diverged.tolist() == runs[1].diverged.tolist()
  ok = ~runs[0].diverged
  np.testing.assert_allclose(runs[1].last[ok], runs[0].last[ok], rtol=1e-12)
  np.testing.assert_allclose(runs[1].average[:, ok], runs[0].average[:, ok], rtol=1e-12)


def test_straightforward_reference_agrees():
  problem = linreg.PowerLawProblem(50, 1.5, 3.0, 0.01)
  shape = 1 / np.sqrt(np.arange(1, 101))
  lrs = np.array([0.1, 1.0]) / problem.trace
  curves = linreg.expected_risk(linreg.exact_coordinates(problem), problem.noise, shape, lrs,
                                [5, 100])
  last, avg = linreg.straightforward_risk(problem, shape, lrs, [5, 100])
  np.testing.assert_allclose(curves.last[0], last, rtol=1e-12)
  np.testing.assert_allclose(curves.average[0, 0], avg, rtol=1e-12)


def _formula_rates(kind, num_steps, ema_decay, half_life_factor, gamma, start):
  """The lab's closed forms of rho_t (what averaging_weights computed before it used the kinds)."""
  t = np.arange(1, num_steps + 1, dtype=np.float64)
  rho = {
      "uniform": lambda: 1.0 / t,
      "ema": lambda: np.full(num_steps, 1.0 - ema_decay),
      "anytime_ema": lambda: -np.expm1(-math.log(2.0) * half_life_factor / (t + 1.0)),
      "power_ema": lambda: -np.expm1((gamma + 1.0) * np.log1p(-1.0 / np.maximum(t, 2.0))),
      "tail": lambda: np.where(t < start, 1.0, 1.0 / np.maximum(t - start + 1, 1.0)),
      "none": lambda: np.ones(num_steps),
  }[kind]()
  rho[0] = 1.0
  return rho


@pytest.mark.parametrize("kind", linreg.AVERAGING_KINDS)
@pytest.mark.parametrize("params", [dict(ema_decay=0.999, half_life_factor=25.0, gamma=7.0,
                                         start=1),
                                    dict(ema_decay=0.9, half_life_factor=2.0, gamma=0.0,
                                         start=20),
                                    dict(ema_decay=0.0, half_life_factor=0.5, gamma=16.97,
                                         start=3000)])
def test_averaging_weights_are_the_library_kinds_rates(kind, params):
  num_steps = 2000
  got = linreg.averaging_weights(kind, num_steps, **params)
  np.testing.assert_allclose(got, _formula_rates(kind, num_steps, **params), rtol=1e-9,
                             atol=0)
  assert got[0] == 1.0 and got.shape == (num_steps,)


def test_averaging_weights_take_an_average_object():
  from anytime import averaging  # pylint: disable=g-import-not-at-top
  np.testing.assert_array_equal(linreg.averaging_weights(averaging.anytime_ema(3.0), 50),
                                linreg.averaging_weights("anytime_ema", 50, half_life_factor=3.0))
  with pytest.raises(ValueError, match="not one recursion"):
    linreg.averaging_weights(averaging.tail(0.2), 50)


# --------------------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize("batch_size,kind", [(1, "uniform"), (4, "uniform"), (1, "anytime_ema"),
                                             (2, "tail")])
def test_exact_dynamics_match_monte_carlo(batch_size, kind):
  problem = linreg.PowerLawProblem(5, 1.5, 2.5, 0.1)
  num_steps, steps = 40, [1, 5, 20, 40]
  lrs = 0.6 / np.sqrt(np.arange(1, num_steps + 1))
  rhos = linreg.averaging_weights(kind, num_steps, half_life_factor=2.0, start=20)
  mc = linreg.monte_carlo_sgd(problem, lrs, steps, averages=rhos, batch_size=batch_size,
                              num_runs=20_000, seed=3)
  exact = linreg.expected_risk(linreg.exact_coordinates(problem), problem.noise, lrs, [1.0],
                               steps, averages=rhos, batch_size=batch_size)
  z_last = (mc.risk - exact.last[0, 0]) / mc.risk_stderr
  z_avg = (mc.average_risk - exact.average[0, 0, 0]) / mc.average_risk_stderr
  assert np.all(np.abs(z_last) < 4.5), z_last
  assert np.all(np.abs(z_avg) < 4.5), z_avg
  # Per-coordinate moments, 10% (a few standard errors at 20k runs for these heavy tails).
  s, s_bar = _recursion_numpy(problem.eigenvalues, problem.initial_error, lrs, rhos,
                              problem.noise, batch_size)
  np.testing.assert_allclose(mc.second_moment, s[np.array(steps) - 1], rtol=0.1)
  np.testing.assert_allclose(mc.average_second_moment, s_bar[np.array(steps) - 1], rtol=0.1)


def test_monte_carlo_rejects_a_wrong_fourth_moment():
  """The Monte Carlo check can fail: dropping the Gaussian kurtosis (factor 2 -> 1) is caught."""
  problem = linreg.PowerLawProblem(5, 1.5, 2.5, 0.1)
  lrs = np.full(30, 0.4)
  mc = linreg.monte_carlo_sgd(problem, lrs, [30], num_runs=20_000, seed=3)
  s, _ = _recursion_numpy(problem.eigenvalues, problem.initial_error, lrs, 1 / np.arange(1, 31),
                          problem.noise, 1, fourth_moment_factor=1.0)
  wrong = 0.5 * s[-1] @ problem.eigenvalues
  assert abs(mc.risk[0] - wrong) / mc.risk_stderr[0] > 8


def test_monte_carlo_float32_runs():
  problem = linreg.PowerLawProblem(4, 1.5, 2.5, 0.1)
  mc = linreg.monte_carlo_sgd(problem, np.full(20, 0.3), [20], num_runs=4000, seed=0,
                              dtype=np.float32)
  exact = linreg.expected_risk(linreg.exact_coordinates(problem), problem.noise, np.ones(20),
                               [0.3], [20])
  assert abs(mc.average_risk[0] - exact.average[0, 0, 0, 0]) < 5 * mc.average_risk_stderr[0]


# --------------------------------------------------------------------------- theory


def test_gamma_star_and_minimax_rate():
  assert linreg.PowerLawProblem(10, 1.5, 1.5, 0.0).optimal_exponent == 0.0
  assert linreg.PowerLawProblem(10, 1.5, 1.2, 0.0).optimal_exponent == 0.0
  assert linreg.PowerLawProblem(10, 1.5, 3.0, 0.0).optimal_exponent == pytest.approx(0.5)
  assert linreg.PowerLawProblem(10, 1.1, 4.4, 0.0).optimal_exponent == pytest.approx(0.75)
  assert linreg.minimax_rate_exponent(4.0) == pytest.approx(0.75)


def test_problem_spectrum_and_trace():
  problem = linreg.PowerLawProblem(1000, 1.5, 3.0, 0.01)
  i = np.arange(1, 1001)
  np.testing.assert_allclose(problem.eigenvalues * problem.initial_error, i**-3.0, rtol=1e-13)
  assert problem.trace == pytest.approx(np.sum(i**-1.5), rel=1e-13)
  assert problem.initial_risk == pytest.approx(0.5 * np.sum(i**-3.0), rel=1e-13)


def test_fit_rate_recovers_power_law():
  steps = np.geomspace(10, 1e5, 20)
  assert linreg.fit_rate(steps, 3.0 * steps**-0.6, 100, 1e5) == pytest.approx(-0.6)


def test_noise_dominated_rate_of_constant_lr_average():
  """With b <= a and noise dominating, constant LR + average decays ~ sigma^2 d_eff / t."""
  problem = linreg.PowerLawProblem(10, 2.0, 1.5, 1.0)
  curves = linreg.expected_risk(linreg.exact_coordinates(problem), problem.noise,
                                np.ones(20_000), [0.3], [5000, 10_000, 20_000])
  slope = linreg.fit_rate(curves.steps, curves.average[0, 0, 0])
  assert -1.1 < slope < -0.95


# --------------------------------------------------------------------------- fast mode


def test_fast_mode_matches_exact_within_its_estimate():
  problem = linreg.PowerLawProblem(20_000, 1.5, 3.0, 0.01)
  shapes = np.stack([np.ones(3000), 1 / np.sqrt(np.arange(1, 3001))])
  lrs = np.array([0.01, 0.3, 2.0]) / problem.trace
  steps = [10, 300, 3000]
  exact, _ = linreg.problem_risk(problem, shapes, lrs, steps, fast=False)
  fast, estimate = linreg.problem_risk(problem, shapes, lrs, steps, bins_per_octave=16,
                                       estimate_error=True)
  assert len(linreg.binned_coordinates(problem, 16).eigenvalue) < 400
  assert exact.diverged.tolist() == fast.diverged.tolist()
  assert exact.diverged[0].tolist() == [False, False, True]  # constant eta = 0.77 > 2/3.
  ok = ~exact.diverged
  error = max(np.abs(fast.last[ok] / exact.last[ok] - 1).max(),
              np.abs(fast.average[:, ok] / exact.average[:, ok] - 1).max())
  assert error <= estimate, (error, estimate)
  assert error < 1e-3


def test_binned_coordinates_preserve_moments():
  problem = linreg.PowerLawProblem(10_000, 1.3, 2.0, 0.0)
  coords = linreg.binned_coordinates(problem, 8)
  weight = coords.multiplicity * coords.eigenvalue
  assert np.sum(weight * coords.initial_error) == pytest.approx(2 * problem.initial_risk,
                                                                rel=1e-12)
  noise_input = coords.input_weight * coords.multiplicity * coords.eigenvalue**2
  assert np.sum(noise_input) == pytest.approx(np.sum(problem.eigenvalues**2), rel=1e-12)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("kwargs,field", [
    (dict(dim=10, capacity=1.0, source=2.0, noise=0.1), "capacity"),
    (dict(dim=10, capacity=0.5, source=2.0, noise=0.1), "capacity"),
    (dict(dim=10, capacity=1.5, source=1.0, noise=0.1), "source"),
    (dict(dim=10, capacity=1.5, source=2.0, noise=-0.1), "noise"),
    (dict(dim=0, capacity=1.5, source=2.0, noise=0.1), "dim"),
])
def test_bad_problem_raises(kwargs, field):
  with pytest.raises(ValueError, match=field):
    linreg.PowerLawProblem(**kwargs)


def test_bad_run_inputs_raise():
  coords = linreg.exact_coordinates(linreg.PowerLawProblem(5, 1.5, 2.0, 0.1))
  with pytest.raises(ValueError, match="checkpoints"):
    linreg.expected_risk(coords, 0.1, np.ones(10), [0.1], [5, 3])
  with pytest.raises(ValueError, match="checkpoints"):
    linreg.expected_risk(coords, 0.1, np.ones(10), [0.1], [11])
  with pytest.raises(ValueError, match="peak_lrs"):
    linreg.expected_risk(coords, 0.1, np.ones(10), [-0.1], [5])
  with pytest.raises(ValueError, match="batch_size"):
    linreg.expected_risk(coords, 0.1, np.ones(10), [0.1], [5], batch_size=0)
  with pytest.raises(ValueError, match="averaging kind"):
    linreg.averaging_weights("median", 10)
  with pytest.raises(ValueError, match="bins_per_octave"):
    linreg.binned_coordinates(linreg.PowerLawProblem(5, 1.5, 2.0, 0.1), 0)


def test_divergent_lr_is_reported_not_nan():
  problem = linreg.PowerLawProblem(50, 1.5, 2.0, 0.1)
  # Coordinate 1 (lambda = 1) diverges for eta > 2/3 at B = 1.
  curves = linreg.expected_risk(linreg.exact_coordinates(problem), problem.noise,
                                np.ones(3000), [0.3, 0.9, 50.0], [10, 3000])
  assert curves.diverged.tolist() == [[False, True, True]]
  assert np.all(np.isfinite(curves.last[0, 0])) and np.all(np.isinf(curves.last[0, 1:]))
  assert np.all(np.isinf(curves.average[0, 0, 1:]))
  assert linreg.tune_lr(curves.average[0, 0], [0, 1]) == 0


# --------------------------------------------------------------------------- experiments


def _tiny(config):
  config.capacities = (1.5,)
  config.dim = 300
  config.num_steps = 400
  config.curve_points = 8
  return config


def test_figure3_experiment_writes_outputs(tmp_path):
  from configs import linreg_figure3

  config = _tiny(linreg_figure3.get_config())
  config.tune_steps = (100, 400)
  config.fit_range = (100, 400)
  summary = linreg.run_figure3(config, str(tmp_path), progress=lambda m: None)
  for name in ("figure3.json", "figure3.png", "figure3_curves.csv", "figure3_all_lrs.csv"):
    assert os.path.getsize(tmp_path / name) > 0
  saved = json.load(open(tmp_path / "figure3.json"))
  assert [p["source"] for p in saved["panels"]] == [1.5, 3.0]
  assert summary["panels"][1]["gamma_star"] == pytest.approx(0.5)
  assert set(summary["panels"][0]["methods"]["constant+avg"]["risk_at_tune_steps"]) == {
      "100", "400"}


def test_exponent_experiment_writes_outputs(tmp_path):
  from configs import linreg_exponent

  config = _tiny(linreg_exponent.get_config())
  config.source_ratios = (2.0,)
  config.noises = (0.01,)
  config.exponents = (0.0, 0.5)
  config.offsets = (1.0, 100.0)
  config.lr_multipliers = (0.1, 1.0)
  config.single_lr_tune_from = 10
  summary = linreg.run_exponent(config, str(tmp_path), progress=lambda m: None)
  result = summary["results"][0]
  assert result["gamma_star"] == pytest.approx(0.5)
  best = result["best_per_horizon"][-1]
  assert best["risk"] <= min(best["constant_avg_risk"], best["gamma_star_plain_risk"])
  assert os.path.getsize(tmp_path / "exponent_sweep.png") > 0
  single = result["single_lr"]["best_at_last_step"]
  assert single["risk"] >= best["risk"] * (1 - 1e-12)  # per-horizon tuning can only do better.
  assert math.isfinite(best["risk"])
