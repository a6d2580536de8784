"""The linear-regression experiments: the seed paper's Figure 3 and the exponent sweep.

Each writes CSV, JSON and PNG to a workdir; ``EXPERIMENTS`` maps ``config.experiment`` to one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from anytime import schedules as schedules_lib
from anytime.theory._checks import at_least, integer
from anytime.theory.linreg import plots
from anytime.theory.linreg.problem import (PowerLawProblem, minimax_rate_exponent, panels,
                                           schedule_shape)
from anytime.theory.linreg.rates import fit_rate, problem_risk, tune_lr


def _checkpoints(num_steps: int, required: Sequence[int], curve_points: int) -> np.ndarray:
  grid = np.unique(np.round(np.geomspace(1, num_steps, max(curve_points, 2))).astype(np.int64))
  return np.unique(np.concatenate([grid, [s for s in required if s <= num_steps], [num_steps]]))


def _write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]):
  with open(path, "w") as f:
    f.write(",".join(header) + "\n")
    for row in rows:
      f.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row) + "\n")


def _validate_common(config):
  if not config.capacities or not config.source_ratios:
    raise ValueError("config.capacities and config.source_ratios must be non-empty")
  for a in config.capacities:
    if not float(a) > 1:
      raise ValueError(f"config.capacities must all be > 1, got {a!r}")
  for r in config.source_ratios:
    if not float(r) * min(config.capacities) > 1:
      raise ValueError(f"config.source_ratios must give sources > 1, got ratio {r!r}")
  integer("config.dim", config.dim, 1)
  integer("config.num_steps", config.num_steps, 1)
  if not config.lr_multipliers or min(config.lr_multipliers) <= 0:
    raise ValueError("config.lr_multipliers must be a non-empty list of positive numbers")


def run_figure3(config, workdir: str, progress: Callable[[str], None] = print) -> dict[str, Any]:
  """The seed paper's Figure 3: tuned constant / 1/sqrt(t) / t^-gamma* + uniform average, and
  cosine tuned per horizon, on each (capacity, source) panel. Writes CSV, JSON and PNG."""
  _validate_common(config)
  at_least("config.noise", config.noise, 0.0, strict=False)
  num_steps = int(config.num_steps)
  tune_steps = [int(s) for s in config.tune_steps if s <= num_steps]
  if not tune_steps:
    raise ValueError(f"config.tune_steps must contain steps <= num_steps ({num_steps})")
  horizons = tune_steps
  checkpoints = _checkpoints(num_steps, tune_steps, config.curve_points)
  tune_cols = [int(np.searchsorted(checkpoints, s)) for s in tune_steps]
  multipliers = np.asarray(config.lr_multipliers, np.float64)
  os.makedirs(workdir, exist_ok=True)
  summary: dict[str, Any] = {"config": config.to_dict(), "panels": []}
  curve_rows, all_rows = [], []
  start_all = time.time()
  for a, b in panels(config):
    problem = PowerLawProblem(int(config.dim), a, b, float(config.noise))
    gamma = problem.optimal_exponent
    methods = {"constant+avg": schedules_lib.constant(1.0),
               "1/sqrt(t)+avg": schedules_lib.inverse_sqrt(1.0),
               f"t^-{gamma:.3g}+avg": schedules_lib.polynomial_decay(1.0, exponent=gamma)}
    shapes = [schedule_shape(fn, num_steps) for fn in methods.values()]
    shapes += [schedule_shape(schedules_lib.cosine(1.0, total_steps=h,
                                                   final_fraction=config.cosine_final_fraction),
                              num_steps) for h in horizons]
    t0 = time.time()
    curves, error = problem_risk(
        problem, np.stack(shapes), multipliers / problem.trace, checkpoints, fast=config.fast,
        bins_per_octave=config.bins_per_octave, estimate_error=config.estimate_error,
        batch_size=config.batch_size,
        progress=lambda m: progress(f"[a={a:g} b={b:g}] {m}"))
    seconds = time.time() - t0
    panel = {"capacity": a, "source": b, "gamma_star": gamma, "trace": problem.trace,
             "seconds": seconds, "fast_mode_relative_error_estimate": error, "methods": {}}
    for index, name in enumerate(methods):
      risk = curves.average[0, index]
      best = tune_lr(risk, tune_cols)
      chosen = risk[best]
      panel["methods"][name] = {
          "lr_multiplier": float(multipliers[best]),
          "risk_at_tune_steps": dict(zip(map(str, tune_steps), chosen[tune_cols].tolist())),
          "fitted_slope": fit_rate(checkpoints, chosen, *config.fit_range),
      }
      curve_rows += [(a, b, name, multipliers[best], int(t), float(r))
                     for t, r in zip(checkpoints, chosen)]
      all_rows += [(a, b, name, multipliers[l], int(checkpoints[c]), float(risk[l, c]))
                   for l in range(len(multipliers)) for c in tune_cols]
    cosine = {}
    for h_index, h in enumerate(horizons):
      col = int(np.searchsorted(checkpoints, h))
      risk = curves.last[len(methods) + h_index, :, col]
      best = tune_lr(risk[:, None], [0])
      cosine[str(h)] = {"lr_multiplier": float(multipliers[best]), "risk": float(risk[best])}
      curve_rows.append((a, b, "cosine (tuned per horizon)", multipliers[best], h,
                         float(risk[best])))
    panel["methods"]["cosine (tuned per horizon, last iterate)"] = cosine
    panel["theory"] = {"minimax_slope": -minimax_rate_exponent(b), "gamma_star": gamma}
    summary["panels"].append(panel)
    progress(f"[a={a:g} b={b:g}] done in {seconds:.1f}s; chosen LR multipliers: " + ", ".join(
        f"{k}: {v['lr_multiplier']:g}" for k, v in panel["methods"].items() if "cosine" not in k))
  summary["seconds"] = time.time() - start_all
  header = ("capacity", "source", "method", "lr_multiplier", "step", "excess_risk")
  _write_csv(os.path.join(workdir, "figure3_curves.csv"), header, curve_rows)
  _write_csv(os.path.join(workdir, "figure3_all_lrs.csv"), header, all_rows)
  with open(os.path.join(workdir, "figure3.json"), "w") as f:
    json.dump(summary, f, indent=1)
  plots.plot_figure3(curve_rows, config, os.path.join(workdir, "figure3.png"))
  progress(f"wrote {workdir}/figure3.{{json,png}}, figure3_curves.csv ({summary['seconds']:.1f}s)")
  return summary



def _exponent_grid(a: float, b: float, config, num_steps: int):
  """gamma*, the (gamma, alpha) grid (constant first) and its LR shapes (G, N)."""
  gamma_star = schedules_lib.anytime_exponent(a, b)
  exponents = sorted(set(float(g) for g in config.exponents) | {round(gamma_star, 6)})
  grid = [(0.0, 1.0)] + [(g, float(o)) for g in exponents if g > 0 for o in config.offsets]
  shapes = np.stack([schedule_shape(schedules_lib.polynomial_decay(1.0, exponent=g, offset=o),
                                    num_steps) for g, o in grid])
  return gamma_star, grid, shapes


def _overtake_step(candidate: np.ndarray, constant: np.ndarray,
                   checkpoints: np.ndarray) -> int | None:
  """First checkpoint from which ``candidate`` stays below ``constant`` (None if not at the end)."""
  ahead = candidate < constant
  if not ahead[-1]:
    return None
  behind = np.nonzero(~ahead)[0]
  return int(checkpoints[behind[-1] + 1]) if behind.size else int(checkpoints[0])


def _single_lr(risk_GxLxC: np.ndarray, checkpoints: np.ndarray, tune_from: int):
  """Anytime protocol: one LR per (gamma, alpha) for all horizons >= ``tune_from``, chosen by
  the mean log risk over them. Returns the LR index (G,) and the risk with it (G, C)."""
  tune_cols = np.nonzero(checkpoints >= tune_from)[0]
  log_risk = np.log(np.where(np.isfinite(risk_GxLxC), risk_GxLxC, np.inf))[..., tune_cols]
  single_lr = np.argmin(log_risk.mean(-1), axis=1)
  return single_lr, risk_GxLxC[np.arange(len(risk_GxLxC)), single_lr]


def _exponent_result(risk, grid, gamma_star, checkpoints, multipliers, tune_from):
  """Best (gamma, alpha) per horizon, t^-gamma* against constant, and the single-LR protocol."""
  best_lr = np.argmin(np.where(np.isfinite(risk), risk, np.inf), axis=1)  # (G, C)
  tuned = np.take_along_axis(risk, best_lr[:, None], axis=1)[:, 0]  # (G, C)
  single_lr, single = _single_lr(risk, checkpoints, tune_from)
  single_best = int(np.argmin(single[:, -1]))
  star_rows = [g for g, (gamma, _) in enumerate(grid) if abs(gamma - gamma_star) < 1e-6]
  star_single = single[star_rows].min(axis=0)
  best = np.argmin(tuned, axis=0)
  constant = tuned[0]
  # t^-gamma*: plain (alpha = 1) and with the best alpha; gamma* = 0 is the constant row.
  star_plain = tuned[grid.index((round(gamma_star, 6), 1.0)) if gamma_star > 0 else 0]
  star_best = tuned[star_rows].min(axis=0) if gamma_star > 0 else constant
  overtake = lambda c, ref=constant: (_overtake_step(c, ref, checkpoints)
                                      if gamma_star > 0 else None)
  result = {
      "best_per_horizon": [
          {"step": int(t), "gamma": grid[best[c]][0], "offset": grid[best[c]][1],
           "risk": float(tuned[best[c], c]), "constant_avg_risk": float(constant[c]),
           "gamma_star_plain_risk": float(star_plain[c]),
           "gamma_star_best_offset_risk": float(star_best[c])}
          for c, t in enumerate(checkpoints)],
      "overtake_step_plain": overtake(star_plain),
      "overtake_step_best_offset": overtake(star_best),
      "single_lr": {
          "best_at_last_step": {"gamma": grid[single_best][0], "offset": grid[single_best][1],
                                "lr_multiplier": float(multipliers[single_lr[single_best]]),
                                "risk": float(single[single_best, -1])},
          "constant_avg_risk_at_last_step": float(single[0, -1]),
          "constant_lr_multiplier": float(multipliers[single_lr[0]]),
          "gamma_star_best_offset_risk_at_last_step": float(star_single[-1]),
          "overtake_step_best_offset": overtake(star_single, single[0]),
      },
  }
  return result, best_lr, tuned


def _exponent_log_line(result: dict[str, Any]) -> str:
  last, single = result["best_per_horizon"][-1], result["single_lr"]
  return (f"[a={result['capacity']:g} b={result['source']:g} noise={result['noise']:g}] "
          f"{result['seconds']:.1f}s; at N={last['step']} best gamma={last['gamma']:g} "
          f"offset={last['offset']:g} (gamma*={result['gamma_star']:.3g}); t^-gamma* overtakes "
          f"constant at N={result['overtake_step_plain']} (best offset: "
          f"{result['overtake_step_best_offset']}); single LR: best gamma="
          f"{single['best_at_last_step']['gamma']:g} offset="
          f"{single['best_at_last_step']['offset']:g}, gamma* overtakes at N="
          f"{single['overtake_step_best_offset']}")


def run_exponent(config, workdir: str, progress: Callable[[str], None] = print) -> dict[str, Any]:
  """Sweeps the exponent gamma and offset alpha of eta (alpha/(t+alpha))^gamma + uniform average
  (LR tuned per (gamma, alpha) and horizon) and reports the best per horizon next to gamma*."""
  _validate_common(config)
  num_steps = int(config.num_steps)
  checkpoints = _checkpoints(num_steps, [], config.curve_points)
  multipliers = np.asarray(config.lr_multipliers, np.float64)
  for noise in config.noises:
    at_least("config.noises", noise, 0.0, strict=False)
  os.makedirs(workdir, exist_ok=True)
  summary: dict[str, Any] = {"config": config.to_dict(), "results": []}
  rows, start_all = [], time.time()
  for a, b in panels(config):
    gamma_star, grid, shapes = _exponent_grid(a, b, config, num_steps)
    for noise in config.noises:
      problem = PowerLawProblem(int(config.dim), a, b, float(noise))
      t0 = time.time()
      curves, error = problem_risk(
          problem, shapes, multipliers / problem.trace, checkpoints, fast=config.fast,
          bins_per_octave=config.bins_per_octave, estimate_error=config.estimate_error,
          progress=lambda m: progress(f"[a={a:g} b={b:g} noise={noise:g}] {m}"))
      found, best_lr, tuned = _exponent_result(curves.average[0], grid, gamma_star, checkpoints,
                                               multipliers, config.single_lr_tune_from)
      for g, (gamma, offset) in enumerate(grid):
        rows += [(a, b, noise, gamma, offset, int(t), float(multipliers[best_lr[g, c]]),
                  float(tuned[g, c])) for c, t in enumerate(checkpoints)]
      result = {"capacity": a, "source": b, "noise": noise, "gamma_star": gamma_star,
                "seconds": time.time() - t0, "fast_mode_relative_error_estimate": error,
                **found}
      summary["results"].append(result)
      progress(_exponent_log_line(result))
  summary["seconds"] = time.time() - start_all
  _write_csv(os.path.join(workdir, "exponent_sweep.csv"),
             ("capacity", "source", "noise", "gamma", "offset", "step", "lr_multiplier",
              "excess_risk"), rows)
  with open(os.path.join(workdir, "exponent_sweep.json"), "w") as f:
    json.dump(summary, f, indent=1)
  plots.plot_exponent(summary, config, os.path.join(workdir, "exponent_sweep.png"))
  progress(f"wrote {workdir}/exponent_sweep.{{json,csv,png}} ({summary['seconds']:.1f}s)")
  return summary


EXPERIMENTS = {"figure3": run_figure3, "exponent": run_exponent}
