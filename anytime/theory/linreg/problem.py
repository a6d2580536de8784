"""Power-law linear regression: the problem, its spectrum, coordinates, schedules, averages."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from anytime import averaging
from anytime import schedules as schedules_lib
from anytime.theory._checks import at_least, integer

AVERAGING_KINDS = ("uniform", "ema", "anytime_ema", "power_ema", "tail", "none")

@dataclasses.dataclass(frozen=True)
class PowerLawProblem:
  """Linear regression with lambda_i = i^-capacity and lambda_i (w*_i)^2 = i^-source."""

  dim: int
  capacity: float
  source: float
  noise: float  # sigma^2, the label-noise variance.

  def __post_init__(self):
    integer("dim", self.dim, 1)
    if not float(self.capacity) > 1 or not math.isfinite(self.capacity):
      raise ValueError(f"capacity must be a finite number > 1, got {self.capacity!r}")
    if not float(self.source) > 1 or not math.isfinite(self.source):
      raise ValueError(f"source must be a finite number > 1, got {self.source!r}")
    at_least("noise", self.noise, 0.0, strict=False)

  def _index(self) -> np.ndarray:
    return np.arange(1, self.dim + 1, dtype=np.float64)

  @property
  def eigenvalues(self) -> np.ndarray:
    """lambda_i = i^-a, float64, shape (dim,)."""
    return self._index() ** -float(self.capacity)

  @property
  def initial_error(self) -> np.ndarray:
    """s_i(0) = (w*_i)^2 = i^(a-b) (w_0 = 0), float64, shape (dim,)."""
    return self._index() ** (float(self.capacity) - float(self.source))

  @property
  def trace(self) -> float:
    """tr(H) = sum_i i^-a."""
    return float(np.sum(self.eigenvalues))

  @property
  def initial_risk(self) -> float:
    """Excess risk of w_0 = 0: 1/2 sum_i i^-b."""
    return 0.5 * float(np.sum(self._index() ** -float(self.source)))

  @property
  def optimal_exponent(self) -> float:
    """gamma* = max(1 - a/b, 0)."""
    return schedules_lib.anytime_exponent(self.capacity, self.source)


def panels(config) -> list[tuple[float, float]]:
  """The (capacity, source) pairs of an experiment config: capacities x source ratios."""
  return [(float(a), float(a) * float(r)) for a in config.capacities for r in config.source_ratios]


def minimax_rate_exponent(source: float) -> float:
  """Exponent r of the minimax rate (sigma^2/N)^r, r = 1 - 1/b (Caponnetto & De Vito 2007)."""
  source = float(source)
  if not source > 1:
    raise ValueError(f"source must be > 1, got {source!r}")
  return 1.0 - 1.0 / source


# --------------------------------------------------------------------------- coordinates


class Coordinates(NamedTuple):
  """Pseudo-coordinates the solver evolves; all float64 arrays of shape (K,).

  q = sum_k multiplicity_k eigenvalue_k s_k; the noise input of coordinate k is scaled by
  input_weight_k. The exact mode is one pseudo-coordinate per coordinate (1, 1).
  """

  eigenvalue: np.ndarray
  multiplicity: np.ndarray
  input_weight: np.ndarray
  initial_error: np.ndarray


def exact_coordinates(problem: PowerLawProblem) -> Coordinates:
  """One pseudo-coordinate per coordinate: the exact dynamics."""
  ones = np.ones(problem.dim)
  return Coordinates(problem.eigenvalues, ones, ones, problem.initial_error)


def _bin_edges(dim: int, bins_per_octave: int) -> np.ndarray:
  """Integer edges 1 = e_0 < e_1 < ... = dim + 1 with e_{j+1} ~ e_j 2^(1/bins_per_octave)."""
  ratio = 2.0 ** (1.0 / bins_per_octave)
  edges = [1]
  while edges[-1] <= dim:
    edges.append(max(edges[-1] + 1, int(math.floor(edges[-1] * ratio))))
  edges[-1] = dim + 1
  return np.asarray(edges, np.int64)


def binned_coordinates(problem: PowerLawProblem, bins_per_octave: int = 16) -> Coordinates:
  """The fast mode: coordinates grouped into bins of width 2^(1/bins_per_octave) in i.

  Bins of one coordinate stay exact. Each wider bin I becomes two pseudo-coordinates, by
  linearity of the dynamics in (s(0), noise input): one carries the initial error (no noise
  input) at the mean eigenvalue under the risk weights lambda_i s_i(0); one carries the noise
  input with zero initial error at the mean eigenvalue under lambda_i^2, with multiplicity
  sum lambda_i^2 / node^2. Both are midpoint-type quadratures of smooth functions of lambda,
  exact for integrands linear in lambda, so the error is second order in the bin's log-width
  delta = ln(2)/bins_per_octave: a bin whose terms decay like exp(-x lambda) errs by at most
  delta^2 x^2 / 24 of its contribution, i.e. <~ 0.02 delta^2 of its initial risk, which is
  ~3e-5 of it at 16 bins per octave (``fast_error_estimate`` measures it against 2x coarser
  bins; tests compare against the exact mode).
  """
  bins_per_octave = integer("bins_per_octave", bins_per_octave, 1)
  edges = _bin_edges(problem.dim, bins_per_octave)
  lam, s0 = problem.eigenvalues, problem.initial_error
  starts = edges[:-1] - 1
  width = np.diff(edges)
  sum_w = np.add.reduceat(lam * s0, starts)
  sum_wl = np.add.reduceat(lam * lam * s0, starts)
  sum_l2 = np.add.reduceat(lam**2, starts)
  sum_l3 = np.add.reduceat(lam**3, starts)
  single = width == 1
  init_node = sum_wl / sum_w
  noise_node = sum_l3 / sum_l2
  eig = np.concatenate([init_node, noise_node[~single]])
  mult = np.concatenate([np.ones_like(init_node), (sum_l2 / noise_node**2)[~single]])
  inw = np.concatenate([single.astype(np.float64), np.ones(int((~single).sum()))])
  s_init = np.concatenate([sum_w / init_node, np.zeros(int((~single).sum()))])
  return Coordinates(eig, mult, inw, s_init)


# --------------------------------------------------------------------------- schedules, averages


def schedule_shape(schedule: Callable[[Any], Any], num_steps: int) -> np.ndarray:
  """LR of SGD steps 1..num_steps (schedule evaluated at 0..num_steps-1), float64 (N,)."""
  num_steps = integer("num_steps", num_steps, 1)
  values = np.broadcast_to(np.asarray(schedule(jnp.arange(num_steps)), np.float64), (num_steps,))
  if values.shape != (num_steps,) or not np.all(np.isfinite(values)) or np.any(values < 0):
    raise ValueError("schedule must give finite non-negative values for steps 0..num_steps-1")
  return values


def averaging_weights(kind: str | averaging.Average, num_steps: int, *,
                      ema_decay: float = 0.999, half_life_factor: float = 25.0,
                      gamma: float = 7.0, start: int = 1) -> np.ndarray:
  """Average weights rho_t of w_bar_t = (1-rho_t) w_bar_{t-1} + rho_t w_t, t = 1..num_steps.

  The rates of an ``anytime.averaging`` kind (``Average.rates``), with rho_1 = 1: the average
  starts at w_1. ``kind`` is an ``averaging.Average`` with a one-rate recursion, or a name:
  ``uniform`` = ``polyak()`` (1/t); ``ema`` = ``ema(ema_decay, debias=False)``;
  ``anytime_ema`` = ``anytime_ema(half_life_factor)`` (half-life ~ t/f, Meterez et al. 2026);
  ``power_ema`` = ``power_ema(gamma)`` (w_bar_t ~ sum_s s^gamma w_s, Karras et al. 2024);
  ``tail`` = ``polyak(start_step=start - 1)``, the uniform average of steps >= ``start`` (before
  it the last iterate); ``none`` the last iterate (rho = 1).
  """
  num_steps = integer("num_steps", num_steps, 1)
  if isinstance(kind, averaging.Average):
    average = kind
  elif kind == "none":
    return np.ones(num_steps)
  elif kind == "uniform":
    average = averaging.polyak()
  elif kind == "ema":
    if not 0.0 <= ema_decay < 1.0:
      raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
    average = averaging.ema(ema_decay, debias=False)
  elif kind == "anytime_ema":
    average = averaging.anytime_ema(at_least("half_life_factor", half_life_factor, 0.0,
                                             strict=True))
  elif kind == "power_ema":
    average = averaging.power_ema(at_least("gamma", gamma, 0.0, strict=False))
  elif kind == "tail":
    average = averaging.polyak(start_step=integer("start", start, 1) - 1)
  else:
    raise ValueError(f"averaging kind must be one of {AVERAGING_KINDS} or an "
                     f"anytime.averaging.Average, got {kind!r}")
  try:
    rho = average.rates(num_steps)
  except NotImplementedError as e:
    raise ValueError(f"averaging kind {average.kind!r} is not one recursion with rates rho_t; "
                     "use ema, anytime_ema, power_ema or polyak") from e
  rho[0] = 1.0
  return rho
