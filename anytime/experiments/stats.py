"""Seed statistics of the comparison suite: means, standard errors, deltas, verdicts.

A suite re-runs each reported configuration with several seeds (init, data order, evaluation
windows). A method's delta to the envelope is paired over seeds when both sides have the same
seeds (seed ``s`` minus envelope seed ``s``: shared data order cancels), unpaired (Welch) when
they do not. A delta is a win or a loss only when it is at least ``threshold`` (2) standard
errors away from zero; with one seed there is no noise floor, so it is always a tie.

Pure functions over floats; no I/O, no JAX.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np

Verdict = Literal["win", "loss", "tie"]
TIE_THRESHOLD = 2.0  # |delta| < 2 standard errors is a tie


class Summary(NamedTuple):
  """Mean and standard error (ddof=1) of one configuration's losses over seeds."""
  mean: float
  se: float  # nan with one seed: no noise estimate
  num_seeds: int


class Delta(NamedTuple):
  """A method's loss minus the reference's (negative = the method is better)."""
  mean: float
  se: float  # nan when a side has a single seed (no noise estimate)
  num_seeds: int  # pairs when paired, else the smaller side
  paired: bool  # True: per-seed differences; False: Welch's unpaired standard error


class SamplingError(NamedTuple):
  """Standard error of a mean evaluation loss due to the finite evaluation set (nats)."""
  value: float
  kind: Literal["windows", "tokens", "paired windows"]
  note: str


def _values(values: Sequence[float], field: str) -> np.ndarray:
  array = np.asarray(list(values), dtype=np.float64)
  if array.ndim != 1 or array.size == 0:
    raise ValueError(f"{field}: need a non-empty sequence of numbers, got {values!r}")
  return array


def mean(values: Sequence[float]) -> float:
  """Arithmetic mean."""
  return float(np.mean(_values(values, "values")))


def standard_error(values: Sequence[float]) -> float:
  """Standard error of the mean, std(ddof=1) / sqrt(n); nan for a single value."""
  array = _values(values, "values")
  if array.size < 2:
    return math.nan
  return float(np.std(array, ddof=1) / math.sqrt(array.size))


def summarize(values: Sequence[float]) -> Summary:
  """Mean, standard error and count of a configuration's losses over seeds."""
  array = _values(values, "values")
  return Summary(float(np.mean(array)), standard_error(array), int(array.size))


def delta(method: Mapping[int, float], reference: Mapping[int, float]) -> Delta:
  """``method - reference`` over seeds (dicts seed -> loss).

  Paired (mean and standard error of the per-seed differences) when both sides hold the same
  seeds, at least two; otherwise unpaired, with Welch's standard error
  ``sqrt(s_m^2 / n_m + s_r^2 / n_r)``.
  """
  if not method or not reference:
    raise ValueError("delta: both sides need at least one seed, got "
                     f"{len(method)} (method) and {len(reference)} (reference)")
  if set(method) == set(reference) and len(method) >= 2:
    seeds = sorted(method)
    diffs = [method[s] - reference[s] for s in seeds]
    return Delta(mean(diffs), standard_error(diffs), len(diffs), True)
  m, r = list(method.values()), list(reference.values())
  se = math.nan
  if len(m) >= 2 and len(r) >= 2:
    se = math.sqrt(standard_error(m) ** 2 + standard_error(r) ** 2)
  if set(method) == set(reference):  # one shared seed: a difference without a noise estimate
    return Delta(mean(m) - mean(r), se, 1, True)
  return Delta(mean(m) - mean(r), se, min(len(m), len(r)), False)


def verdict(delta_mean: float, delta_se: float, threshold: float = TIE_THRESHOLD) -> Verdict:
  """"win" (lower loss) / "loss" when |delta| >= threshold * se, else "tie".

  Without a finite standard error (one seed) there is no noise floor: always "tie".
  """
  if threshold <= 0:
    raise ValueError(f"threshold must be > 0 standard errors, got {threshold}")
  if not (math.isfinite(delta_mean) and math.isfinite(delta_se)):
    return "tie"
  if abs(delta_mean) < threshold * delta_se or delta_mean == 0.0:
    return "tie"
  return "win" if delta_mean < 0 else "loss"


def token_sampling_error(per_token_std: float, eval_tokens: int) -> SamplingError:
  """``per_token_std / sqrt(eval_tokens)``: a LOWER BOUND on the evaluation set's error.

  Adjacent tokens of a text are correlated, so the effective number of independent samples is
  smaller than the token count; prefer :func:`window_sampling_error` when per-window losses
  exist.
  """
  if not per_token_std >= 0:
    raise ValueError(f"per_token_std must be a number >= 0, got {per_token_std}")
  if eval_tokens < 1:
    raise ValueError(f"eval_tokens must be >= 1, got {eval_tokens}")
  return SamplingError(per_token_std / math.sqrt(eval_tokens), "tokens",
                       "per-token std / sqrt(tokens); a lower bound, since adjacent tokens are "
                       "correlated")


def window_sampling_error(window_losses: Sequence[float]) -> SamplingError:
  """std(ddof=1) of per-window mean losses / sqrt(windows): windows are near-independent."""
  array = _values(window_losses, "window_losses")
  if array.size < 2:
    raise ValueError(f"window_losses: need at least 2 windows, got {array.size}")
  return SamplingError(standard_error(array), "windows",
                       "std of per-window mean losses / sqrt(windows)")


def paired_window_sampling_error(window_losses_a: Sequence[float],
                                 window_losses_b: Sequence[float]) -> SamplingError:
  """The evaluation set's error of a DELTA between two models scored on the same windows:
  std(ddof=1) of the per-window loss differences / sqrt(windows).

  The windows are the same for every run and seed, so this error is common to all seeds of a
  delta and not inside its seed standard error; it is what the verdict must be well above.
  """
  a = _values(window_losses_a, "window_losses_a")
  b = _values(window_losses_b, "window_losses_b")
  if a.size != b.size:
    raise ValueError(f"window_losses_a and window_losses_b: need the same windows, got "
                     f"{a.size} and {b.size}")
  if a.size < 2:
    raise ValueError(f"window_losses_a: need at least 2 windows, got {a.size}")
  return SamplingError(standard_error(a - b), "paired windows",
                       "std of per-window loss differences between two models / "
                       "sqrt(windows)")
