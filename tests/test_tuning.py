"""LR tuning: log grids, edge flags, iterated grid extension, the anytime constraint, envelope."""

import math

import numpy as np
import pytest

from anytime import config as config_lib
from anytime import schedules
from anytime.experiments import methods, tuning
from anytime.experiments.tuning import Column, Curve, Record

SQRT2 = 2 ** 0.5


def _loss(lr, best_lr, c=1.5):
  return (math.log(lr) - math.log(best_lr)) ** 2 + c


def _tune(best_lr, *, centre=3e-3, num=3, max_extensions=3):
  """Runs the suite's loop: evaluate the grid, extend while an edge asks for it."""
  initial = tuning.log_grid(centre, num)
  grid = list(initial)
  rounds = 0
  while True:
    new = tuning.extension(grid, [_loss(lr, best_lr) for lr in grid], initial_grid=initial,
                           max_extensions=max_extensions)
    if not new:
      break
    grid.extend(new)
    rounds += 1
  grid.sort()
  return tuning.best(Curve(tuple(grid), tuple(_loss(lr, best_lr) for lr in grid))), rounds


def test_log_grid_is_centred_and_geometric():
  grid = tuning.log_grid(1e-2, 3)
  assert grid == pytest.approx((1e-2 / SQRT2, 1e-2, 1e-2 * SQRT2))
  even = tuning.log_grid(1.0, 4, factor=2.0)
  assert even == pytest.approx((2 ** -1.5, 2 ** -0.5, 2 ** 0.5, 2 ** 1.5))
  with pytest.raises(ValueError, match="centre"):
    tuning.log_grid(0.0, 3)
  with pytest.raises(ValueError, match="factor"):
    tuning.log_grid(1.0, 3, factor=1.0)


def test_best_flags_edges():
  assert tuning.best(Curve((1.0, 2.0, 3.0), (3.0, 1.0, 2.0))).edges == frozenset()
  assert tuning.best(Curve((1.0, 2.0, 3.0), (1.0, 2.0, 3.0))).edges == {"low"}
  assert tuning.best(Curve((1.0, 2.0, 3.0), (3.0, 2.0, math.nan))).edges == frozenset()
  assert tuning.best(Curve((1.0,), (1.0,))).edges == {"low", "high"}


@pytest.mark.parametrize("best_lr", [3e-3 * SQRT2 ** 2.6, 3e-3 / SQRT2 ** 3.3])
def test_optimum_outside_initial_grid_is_found_by_extension(best_lr):
  optimum, rounds = _tune(best_lr)
  assert rounds >= 2
  assert not optimum.at_edge
  # The grid point nearest the true optimum (in log space) wins.
  assert abs(math.log(optimum.lr / best_lr)) <= math.log(SQRT2) / 2 + 1e-9


def test_optimum_still_on_edge_after_max_extensions_is_flagged():
  optimum, rounds = _tune(3e-3 * 100, max_extensions=2)
  assert rounds == 2
  assert optimum.edges == {"high"}
  assert optimum.lr == pytest.approx(3e-3 * SQRT2 ** 3)


def test_interior_optimum_needs_no_extension():
  initial = tuning.log_grid(3e-3, 3)
  losses = [_loss(lr, 3e-3) for lr in initial]
  assert tuning.extension(initial, losses, initial_grid=initial) == ()


def _records(method, candidate, best_lr_by_horizon, lrs, seed=0):
  return [Record(method, candidate, h, lr, seed, _loss(lr, b)) for h, b in
          best_lr_by_horizon.items() for lr in lrs]


def test_anytime_method_gets_one_lr_by_mean_over_horizons():
  lrs = tuning.log_grid(3e-3, 5)
  # Per horizon the optimum drifts down; the mean picks one LR for all horizons.
  records = _records("constant", "ema_25", {100: lrs[3], 200: lrs[2], 400: lrs[2]}, lrs)
  records += _records("cosine", "raw", {100: lrs[3], 200: lrs[2], 400: lrs[1]}, lrs)
  choices = tuning.choose_all(records, tuning_seeds=0, per_horizon_methods=("cosine",))
  anytime = choices[Column("constant", "ema_25")]
  assert not anytime.per_horizon
  assert {o.lr for o in anytime.optima.values()} == {lrs[2]}
  assert anytime.optima[100].loss == pytest.approx(_loss(lrs[2], lrs[3]))
  cosine = choices[Column("cosine", "raw")]
  assert [cosine.optima[h].lr for h in (100, 200, 400)] == [lrs[3], lrs[2], lrs[1]]


def test_planned_extensions_per_horizon_and_per_anytime_method():
  lrs = tuning.log_grid(3e-3, 3)
  records = _records("cosine", "raw", {100: lrs[1], 200: lrs[0] / 4}, lrs)
  records += _records("constant", "ema_25", {100: lrs[2] * 4, 200: lrs[2] * 4}, lrs)
  records += _records("constant", "raw", {100: lrs[1], 200: lrs[1]}, lrs, seed=1)  # not tuning
  plan = tuning.planned_extensions(records, tuning_seeds=0,
                                   initial_grids={"cosine": lrs, "constant": lrs},
                                   per_horizon_methods=("cosine",))
  assert plan == {("cosine", 200): pytest.approx((lrs[0] / SQRT2,)),
                  ("constant", None): pytest.approx((lrs[2] * SQRT2,))}


def test_envelope_picks_family_on_tuning_seed_and_keeps_its_seed_losses():
  records = [
      # cosine best on the tuning seed (0), d2z better on seed 1: the envelope stays cosine.
      Record("cosine", "raw", 100, 1e-3, 0, 1.50), Record("cosine", "raw", 100, 2e-3, 0, 1.40),
      Record("cosine", "raw", 100, 4e-3, 0, 1.45), Record("cosine", "raw", 100, 2e-3, 1, 1.44),
      Record("d2z", "raw", 100, 1e-3, 0, 1.49), Record("d2z", "raw", 100, 2e-3, 0, 1.41),
      Record("d2z", "raw", 100, 4e-3, 0, 1.46), Record("d2z", "raw", 100, 2e-3, 1, 1.30),
      Record("d2z", "raw", 200, 2e-3, 0, 1.20), Record("d2z", "raw", 200, 1e-3, 0, 1.30),
      Record("cosine", "raw", 200, 2e-3, 0, 1.25),
  ]
  choices = tuning.choose_all(records, tuning_seeds=0, per_horizon_methods=("cosine", "d2z"))
  env = tuning.envelope(records, choices, families=("cosine", "d2z"))
  assert env[100].family == "cosine" and env[100].lr == 2e-3
  assert env[100].losses == {0: 1.40, 1: 1.44}
  assert env[200].family == "d2z"
  with pytest.raises(ValueError, match="families"):
    tuning.envelope(records, choices, families=("cosine_zero",))


def test_several_tuning_seeds_choose_by_their_mean_and_other_seeds_never_choose():
  records = [Record("cosine", "raw", 100, 1e-3, 0, 1.0), Record("cosine", "raw", 100, 2e-3, 0, 1.2),
             Record("cosine", "raw", 100, 1e-3, 5, 1.6), Record("cosine", "raw", 100, 2e-3, 5, 1.2),
             Record("cosine", "raw", 100, 1e-3, 1, 0.0), Record("cosine", "raw", 100, 2e-3, 1, 9.0)]
  curves = tuning.tuning_curves(records, tuning_seeds=(0, 5))
  assert curves[Column("cosine", "raw")][100] == Curve((1e-3, 2e-3), (1.3, 1.2))
  choice = tuning.choose_all(records, tuning_seeds=[0, 5], per_horizon_methods=("cosine",))
  assert choice[Column("cosine", "raw")].optima[100].lr == 2e-3  # seed 1 (reporting) ignored
  assert tuning.choose_all(records, tuning_seeds=0, per_horizon_methods=("cosine",))[
      Column("cosine", "raw")].optima[100].lr == 1e-3
  with pytest.raises(ValueError, match="tuning_seeds"):
    tuning.choose_all(records, tuning_seeds=(), per_horizon_methods=("cosine",))
  with pytest.raises(ValueError, match="tuning_seeds"):
    tuning.choose_all(records, tuning_seeds=7, per_horizon_methods=("cosine",))


@pytest.mark.parametrize("method, final, body", [
    ("cosine", 0.1, lambda p: 0.5 * (1 + np.cos(np.pi * p))),
    ("d2z", 0.0, lambda p: 1 - p),
    ("cosine_zero", 0.0, lambda p: 0.5 * (1 + np.cos(np.pi * p)))])
def test_suite_baselines_are_the_schedules_they_name(method, final, body):
  """cosine to 10% of peak, linear decay to zero, cosine to zero: values against closed forms."""
  s = config_lib.default_suite()
  peak, horizon, warmup, init = 4e-3, 200, s.warmup_steps, s.warmup_init_fraction
  steps = np.arange(0, 240)
  got = np.asarray(schedules.from_config(
      methods.REGISTRY[method].schedule(peak, horizon, s))(steps))
  p = np.clip((steps - warmup) / (horizon - warmup), 0.0, 1.0)
  expected = peak * np.where(steps < warmup, init + (1 - init) * steps / warmup,
                             final + (1 - final) * body(p))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * peak)
