"""Statistics of the comparison suite: deltas, their two error sources, intervals, verdicts.

A reported delta is ``method - envelope`` (negative = the method is better), paired over the
reporting seeds (seed ``s`` minus envelope seed ``s``). Two independent sources make it differ
from the delta one would see with infinitely many seeds on an infinite evaluation set:

- **seeds** (init, data order): the standard error of the per-seed differences,
  ``s_d / sqrt(n)`` with ``n - 1`` degrees of freedom;
- **the evaluation set**: every seed is scored on the SAME windows, so this error is common to
  all seeds and more seeds never shrink it. It is the standard error of the delta as a ratio
  estimator over windows (per-window differences of the two sides' seed-mean loss sums),
  clustered by source document (windows cut from one document are correlated; counting them as
  independent understates the error): :func:`cluster_se`, ``G - 1`` degrees of freedom for
  ``G`` documents.

**Reference distribution.** The interval is ``delta ± t(df) * sqrt(se_seed² + se_eval²)`` with
the Welch-Satterthwaite ``df`` (:func:`satterthwaite_df`). Both variance estimates are
(approximately) scaled chi-squares with ``n - 1`` and ``G - 1`` degrees of freedom and are
independent (seed noise vs which documents were drawn), which is exactly the case the
Satterthwaite approximation is built for: with seed noise dominating it falls back to the exact
paired t with ``n - 1`` df (t(2) for 3 seeds: no z-rule on 2 df); with the evaluation set
dominating it approaches t with ``G - 1`` df. A paired bootstrap was rejected: with 3-5 seeds a
bootstrap over seeds has only a handful of distinct resamples and under-covers badly (the
percentile bootstrap of a 3-sample mean behaves like a z-interval with the biased variance),
while the t/Satterthwaite interval is exact in the seed-only limit. The evaluation-set term is
slightly conservative: per-window seed noise enters both estimates (it is a small part of the
per-window differences, and only makes the interval wider). ``tests/test_calibration.py``
checks the resulting error rates on synthetic suites.

**Verdicts** (:func:`decide`): ``"win"`` / ``"loss"`` when the two-sided p-value, adjusted for
multiplicity (:func:`holm`), is at most ``alpha`` (the interval at the adjusted level excludes
0); ``"equivalent"`` when the two one-sided tests against ``±margin`` (TOST,
:func:`p_equivalence`) both reject at ``alpha`` (the ``1 - 2 alpha`` interval lies inside
``±margin``); ``"undecided"`` otherwise. "Undecided" is no evidence either way; only
"equivalent" is evidence of no (practically relevant) difference.

Pure functions over floats and numpy arrays (vectorised over leading axes, for the calibration
tests); no I/O, no JAX.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np
from scipy import stats as scipy_stats

Verdict = Literal["win", "loss", "equivalent", "undecided"]
VERDICTS: tuple[str, ...] = ("win", "loss", "equivalent", "undecided")
MULTIPLICITY = ("holm", "bonferroni", "none")


class Summary(NamedTuple):
  """Mean and standard error (ddof=1) of one configuration's losses over seeds."""
  mean: float
  se: float  # nan with one seed: no noise estimate
  num_seeds: int


class Delta(NamedTuple):
  """A method's loss minus the reference's over paired seeds (negative = method better)."""
  mean: float
  se: float  # seed standard error; nan with one pair (no noise estimate)
  num_seeds: int  # pairs
  seeds: tuple[int, ...]


class EvalError(NamedTuple):
  """The evaluation set's error of a delta: windows' paired differences, document-clustered."""
  delta: float  # the delta the windows give (= the records' delta when losses are token means)
  se: float  # cluster-robust standard error
  clusters: int  # documents
  windows: int


class Interval(NamedTuple):
  """A delta with both error sources, its interval and tests (arrays or floats)."""
  delta: float
  se_seed: float
  se_eval: float  # nan: the evaluation set's error is unknown (seed error only)
  se: float  # sqrt(se_seed² + se_eval²)
  df: float  # Welch-Satterthwaite degrees of freedom
  low: float  # two-sided (1 - alpha) interval
  high: float
  p_value: float  # two-sided, H0: delta = 0
  p_equivalence: float  # TOST, H0: |delta| >= margin


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


def delta(method: Mapping[int, float], reference: Mapping[int, float],
          seeds: Sequence[int] | None = None) -> Delta:
  """``method - reference`` over the seeds both sides have (or ``seeds``, all required).

  Paired: mean and standard error of the per-seed differences. Unpaired comparisons are not
  offered: every reported comparison re-runs both sides with the same reporting seeds.
  """
  common = sorted(set(method) & set(reference)) if seeds is None else sorted(seeds)
  missing = [s for s in common if s not in method or s not in reference]
  if missing:
    raise ValueError(f"seeds: {missing} missing on one side of the delta")
  if not common:
    raise ValueError(f"delta: no common seed (method {sorted(method)}, reference "
                     f"{sorted(reference)}); a delta pairs the same seeds")
  diffs = [method[s] - reference[s] for s in common]
  return Delta(mean(diffs), standard_error(diffs), len(diffs), tuple(common))


# ------------------------------------------------------------------ the evaluation set's error


def cluster_se(diff_sums, tokens, clusters) -> tuple[np.ndarray, np.ndarray, int]:
  """Delta and cluster-robust standard error of a ratio over windows.

  ``diff_sums[..., w]``: per-window difference of loss SUMS (method minus reference, each the
  mean over seeds), ``tokens[w]`` the window's token count, ``clusters[w]`` its document. The
  delta is ``d = sum_w D_w / sum_w T_w``; its linearised residuals ``D_w - d T_w`` are summed
  within each document and ``var(d) = G/(G-1) * sum_g e_g² / (sum_w T_w)²`` (the CR1 sandwich
  estimator with G clusters). Returns ``(d, se, G)``; vectorised over leading axes.
  """
  diff_sums = np.asarray(diff_sums, dtype=np.float64)
  tokens = np.asarray(tokens, dtype=np.float64)
  clusters = np.asarray(clusters)
  if tokens.ndim != 1 or clusters.shape != tokens.shape or diff_sums.shape[-1:] != tokens.shape:
    raise ValueError(f"diff_sums, tokens, clusters: need matching windows, got shapes "
                     f"{diff_sums.shape}, {tokens.shape}, {clusters.shape}")
  if np.any(tokens < 0) or not tokens.sum() > 0:
    raise ValueError("tokens: need non-negative counts with a positive total")
  _, index = np.unique(clusters, return_inverse=True)
  groups = int(index.max()) + 1
  if groups < 2:
    raise ValueError(f"clusters: need at least 2 documents for a clustered error, got {groups}")
  total = tokens.sum()
  d = diff_sums.sum(axis=-1) / total
  residual = diff_sums - d[..., None] * tokens
  onehot = np.zeros((tokens.size, groups))
  onehot[np.arange(tokens.size), index] = 1.0
  per_cluster = residual @ onehot
  var = groups / (groups - 1) * np.sum(per_cluster ** 2, axis=-1) / total ** 2
  return d, np.sqrt(var), groups


def clustered_delta_error(method_windows: Sequence[np.ndarray],
                          reference_windows: Sequence[np.ndarray], tokens, documents
                          ) -> EvalError:
  """The evaluation set's error of a delta from per-window loss sums of every seed.

  ``method_windows`` / ``reference_windows``: one array of per-window loss sums per seed (same
  seeds, same windows). Each side is averaged over its seeds, differenced per window and
  clustered by ``documents`` (:func:`cluster_se`).
  """
  a = np.asarray(method_windows, dtype=np.float64)
  b = np.asarray(reference_windows, dtype=np.float64)
  if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
    raise ValueError(f"method_windows and reference_windows: need one array per seed over the "
                     f"same windows, got shapes {a.shape} and {b.shape}")
  d, se, groups = cluster_se(a.mean(axis=0) - b.mean(axis=0), tokens, documents)
  return EvalError(float(d), float(se), groups, a.shape[1])


# ------------------------------------------------------------------ intervals and tests


def satterthwaite_df(variances, dfs):
  """Welch-Satterthwaite degrees of freedom of a sum of variance estimates.

  ``df = (sum v_i)² / sum(v_i² / df_i)`` over the last axis; a component with infinite df
  (or zero variance) adds nothing to the denominator. All variances zero gives ``inf``.
  """
  v = np.asarray(variances, dtype=np.float64)
  nu = np.asarray(dfs, dtype=np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(v > 0, v ** 2 / nu, 0.0)
    den = np.sum(terms, axis=-1)
    out = np.where(den > 0, np.sum(v, axis=-1) ** 2 / den, np.inf)
  return out


def p_two_sided(delta_, se, df):
  """Two-sided p-value of H0: delta = 0 under t(df); se = 0 gives 0 (or 1 for delta = 0)."""
  d, s = np.asarray(delta_, float), np.asarray(se, float)
  with np.errstate(divide="ignore", invalid="ignore"):
    t = np.abs(d) / s
  t = np.where(s > 0, t, np.where(d == 0, 0.0, np.inf))
  return 2.0 * scipy_stats.t.sf(t, df)


def p_equivalence(delta_, se, df, margin: float):
  """TOST p-value of H0: |delta| >= margin: the larger of the two one-sided p-values.

  It is <= alpha exactly when the ``1 - 2 alpha`` interval lies inside ``(-margin, margin)``.
  """
  if not margin > 0:
    raise ValueError(f"margin must be > 0 nats, got {margin}")
  d, s = np.asarray(delta_, float), np.asarray(se, float)
  with np.errstate(divide="ignore", invalid="ignore"):
    lower = scipy_stats.t.sf((d + margin) / s, df)  # H0: delta <= -margin
    upper = scipy_stats.t.cdf((d - margin) / s, df)  # H0: delta >= +margin
  exact = np.where(np.abs(d) < margin, 0.0, 1.0)
  return np.where(s > 0, np.maximum(lower, upper), exact)


def interval(delta_, se_seed, num_seeds, se_eval=math.nan, eval_clusters=0, *,
             alpha: float, margin: float) -> Interval:
  """Combines the seed and evaluation-set errors of a delta (see the module docstring).

  ``se_eval`` nan (unknown) or ``eval_clusters < 2`` gives the seed error alone with
  ``num_seeds - 1`` df. Vectorised: every argument may be an array of the same shape.
  """
  _check_level(alpha)
  n = np.asarray(num_seeds, float)
  se_seed = np.asarray(se_seed, float)
  se_eval = np.asarray(se_eval, float)
  known = np.isfinite(se_eval) & (np.asarray(eval_clusters) >= 2)
  var_eval = np.where(known, se_eval ** 2, 0.0)
  var = se_seed ** 2 + var_eval
  df = satterthwaite_df(np.stack(np.broadcast_arrays(se_seed ** 2, var_eval), axis=-1),
                        np.stack(np.broadcast_arrays(
                            n - 1, np.where(known, np.asarray(eval_clusters, float) - 1,
                                            np.inf)), axis=-1))
  df = np.where(n >= 2, df, np.nan)  # no seed noise estimate: no interval
  se = np.sqrt(var)
  with np.errstate(invalid="ignore"):
    q = scipy_stats.t.ppf(1 - alpha / 2, df)
  d = np.asarray(delta_, float)
  out = Interval(d, se_seed, np.where(known, se_eval, np.nan), se, df, d - q * se, d + q * se,
                 p_two_sided(d, se, df), p_equivalence(d, se, df, margin))
  if np.ndim(d) == 0:
    return Interval(*(float(x) for x in out))
  return out


# ------------------------------------------------------------------ multiplicity and verdicts


def holm(p_values):
  """Holm's step-down adjusted p-values over the last axis (nan entries are left out).

  ``p_adj(i) = max_{j <= i} min(1, (m - j + 1) p(j))`` over the sorted p-values; rejecting
  ``p_adj <= alpha`` controls the family-wise error rate at ``alpha`` under any dependence.
  """
  p = np.asarray(p_values, dtype=np.float64)
  valid = np.isfinite(p)
  m = valid.sum(axis=-1, keepdims=True)
  order = np.argsort(np.where(valid, p, np.inf), axis=-1)
  sorted_p = np.take_along_axis(np.where(valid, p, np.inf), order, axis=-1)
  rank = np.arange(p.shape[-1])
  finite = np.isfinite(sorted_p)
  scaled = np.where(finite, np.minimum(1.0, (m - rank) * np.where(finite, sorted_p, 0.0)), 0.0)
  adjusted_sorted = np.maximum.accumulate(scaled, axis=-1)
  out = np.empty_like(p)
  np.put_along_axis(out, order, adjusted_sorted, axis=-1)
  return np.where(valid, out, np.nan)


def bonferroni(p_values):
  """``min(1, m p)`` over the last axis (nan entries left out)."""
  p = np.asarray(p_values, dtype=np.float64)
  m = np.isfinite(p).sum(axis=-1, keepdims=True)
  return np.where(np.isfinite(p), np.minimum(1.0, m * p), np.nan)


def adjust(p_values, method: str):
  """Adjusted p-values: ``"holm"``, ``"bonferroni"`` or ``"none"`` (raw)."""
  if method == "holm":
    return holm(p_values)
  if method == "bonferroni":
    return bonferroni(p_values)
  if method == "none":
    return np.asarray(p_values, dtype=np.float64).copy()
  raise ValueError(f"multiplicity must be one of {MULTIPLICITY}, got {method!r}")


def decide(delta_, p_adjusted, p_equivalence_, alpha: float):
  """"win"/"loss" when ``p_adjusted <= alpha``, else "equivalent" when the TOST p-value is
  ``<= alpha``, else "undecided" (nan p-values: "undecided"). Vectorised (object array)."""
  _check_level(alpha)
  d = np.asarray(delta_, float)
  significant = np.asarray(p_adjusted, float) <= alpha
  equivalent = np.asarray(p_equivalence_, float) <= alpha
  out = np.where(significant, np.where(d < 0, "win", "loss"),
                 np.where(equivalent, "equivalent", "undecided"))
  return str(out) if out.ndim == 0 else out


class Decisions(NamedTuple):
  """Verdicts of one family over (up to) two looks; arrays over the family's cells."""
  verdict: np.ndarray  # win | loss | equivalent | undecided
  p_adjusted: np.ndarray  # at the look that decided the cell
  look: np.ndarray  # 1 or 2


def sequential_decisions(first: tuple, second: tuple | None = None, *, alpha: float,
                         looks: int, multiplicity: str = "holm") -> Decisions:
  """One family's verdicts with the level split equally over ``looks`` planned looks.

  ``first`` / ``second``: ``(delta, p_value, p_equivalence)`` arrays over the family's cells
  (last axis) at look 1 and look 2 (look 2's entries are used only for cells undecided at
  look 1). Look 1 adjusts the family's p-values and decides at ``alpha / looks``; look 2
  re-adjusts the family with the look-2 p-values of the undecided cells and the look-1
  p-values of the others (Holm stays valid for any set of valid p-values) and decides the
  undecided cells at ``alpha / looks``. A false claim at either look has probability at most
  ``alpha / looks`` per family, so at most ``alpha`` over both (union bound; no independence
  between the looks is needed, which matters since look 2 reuses look 1's seeds).
  """
  if looks not in (1, 2):
    raise ValueError(f"looks must be 1 or 2, got {looks}")
  level = alpha / looks
  d1, p1, e1 = (np.asarray(x, dtype=np.float64) for x in first)
  adjusted1 = adjust(p1, multiplicity)
  verdict1 = np.asarray(decide(d1, adjusted1, e1, level), dtype=object)
  one = np.ones(d1.shape, dtype=int)
  if second is None:
    return Decisions(verdict1, adjusted1, one)
  if looks < 2:
    raise ValueError("second: a second look needs looks=2 (planned before the data)")
  d2, p2, e2 = (np.asarray(x, dtype=np.float64) for x in second)
  again = verdict1 == "undecided"
  adjusted2 = adjust(np.where(again, p2, p1), multiplicity)
  verdict2 = np.asarray(decide(d2, adjusted2, e2, level), dtype=object)
  return Decisions(np.where(again, verdict2, verdict1), np.where(again, adjusted2, adjusted1),
                   np.where(again, 2, one))


def _check_level(alpha: float) -> None:
  if not 0 < alpha < 0.5:
    raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
