"""Risk curves of a problem (exact or binned), fitted rates and LR tuning."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anytime.theory.linreg.problem import PowerLawProblem, binned_coordinates, exact_coordinates
from anytime.theory.linreg.recursion import RiskCurves, expected_risk


def problem_risk(problem: PowerLawProblem, shapes: np.ndarray, peak_lrs: Sequence[float],
                 checkpoints: Sequence[int], *, fast: bool = True, bins_per_octave: int = 32,
                 estimate_error: bool = False, **kwargs) -> tuple[RiskCurves, float | None]:
  """``expected_risk`` of a problem, exact (``fast=False``) or binned (``binned_coordinates``).

  With ``fast`` and ``estimate_error`` it also runs bins twice as coarse and returns the largest
  relative difference between the two over the non-diverged rows: an a-posteriori bound on the
  error of the fine result (the error falls >= 4x per halving of the bin width, so this
  over-estimates it >= 3x; checked against the exact mode in the tests).
  """
  if not fast:
    return expected_risk(exact_coordinates(problem), problem.noise, shapes, peak_lrs,
                         checkpoints, **kwargs), None
  curves = expected_risk(binned_coordinates(problem, bins_per_octave), problem.noise, shapes,
                         peak_lrs, checkpoints, **kwargs)
  if not estimate_error or bins_per_octave < 2:
    return curves, None
  coarse = expected_risk(binned_coordinates(problem, bins_per_octave // 2), problem.noise, shapes,
                         peak_lrs, checkpoints, **{k: v for k, v in kwargs.items()
                                                   if k != "progress"})
  ok = ~(curves.diverged | coarse.diverged)
  if not ok.any():
    return curves, None
  rel = [np.abs(coarse.last[ok] / curves.last[ok] - 1).max(),
         np.abs(coarse.average[:, ok] / curves.average[:, ok] - 1).max()]
  return curves, float(max(rel))


def fit_rate(steps: Sequence[int], risk: Sequence[float], t_min: float = 0,
             t_max: float = np.inf) -> float:
  """Least-squares slope of log(risk) against log(step) over t_min <= step <= t_max."""
  steps, risk = np.asarray(steps, np.float64), np.asarray(risk, np.float64)
  if steps.shape != risk.shape or steps.ndim != 1:
    raise ValueError(f"steps and risk must be 1-D of equal length, got {steps.shape}, "
                     f"{risk.shape}")
  keep = (steps >= t_min) & (steps <= t_max) & np.isfinite(risk) & (risk > 0)
  if keep.sum() < 2:
    raise ValueError(f"need >= 2 finite points with t_min <= step <= t_max, got {keep.sum()}")
  return float(np.polyfit(np.log(steps[keep]), np.log(risk[keep]), 1)[0])


def tune_lr(risk_LxC: np.ndarray, tune_columns: Sequence[int]) -> int:
  """Index of the LR with the smallest mean risk over ``tune_columns`` (diverged = inf)."""
  score = np.mean(np.asarray(risk_LxC)[:, list(tune_columns)], axis=1)
  if not np.any(np.isfinite(score)):
    return -1
  return int(np.nanargmin(np.where(np.isfinite(score), score, np.inf)))

