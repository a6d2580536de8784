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

References:
  Meterez et al. 2026, "Anytime pretraining: horizon-free learning-rate schedules with weight
    averaging" (arXiv 2602.03702).
  Caponnetto & De Vito 2007, "Optimal rates for the regularized least-squares algorithm".
  Zou et al. 2021, "Benign overfitting of constant-stepsize SGD for linear regression".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from anytime import schedules as schedules_lib

AVERAGING_KINDS = ("uniform", "ema", "anytime_ema", "power_ema", "tail", "none")


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not float(value).is_integer() or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _check_float(name: str, value: Any, minimum: float, *, strict: bool) -> float:
  value = float(value)
  ok = value > minimum if strict else value >= minimum
  if not ok or not math.isfinite(value):
    raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}, "
                     f"got {value!r}")
  return value


def _check_steps(name: str, steps: Sequence[int], num_steps: int | None = None) -> np.ndarray:
  steps = np.asarray(steps)
  if steps.ndim != 1 or steps.size == 0 or not np.all(steps == np.round(steps)):
    raise ValueError(f"{name} must be a non-empty 1-D list of integer steps, got {steps!r}")
  steps = steps.astype(np.int64)
  if steps[0] < 1 or np.any(np.diff(steps) <= 0):
    raise ValueError(f"{name} must be strictly increasing steps >= 1, got {steps.tolist()}")
  if num_steps is not None and steps[-1] > num_steps:
    raise ValueError(f"{name} must be <= the number of steps {num_steps}, got {steps[-1]}")
  return steps


# --------------------------------------------------------------------------- the problem


@dataclasses.dataclass(frozen=True)
class PowerLawProblem:
  """Linear regression with lambda_i = i^-capacity and lambda_i (w*_i)^2 = i^-source."""

  dim: int
  capacity: float
  source: float
  noise: float  # sigma^2, the label-noise variance.

  def __post_init__(self):
    _check_int("dim", self.dim, 1)
    if not float(self.capacity) > 1 or not math.isfinite(self.capacity):
      raise ValueError(f"capacity must be a finite number > 1, got {self.capacity!r}")
    if not float(self.source) > 1 or not math.isfinite(self.source):
      raise ValueError(f"source must be a finite number > 1, got {self.source!r}")
    _check_float("noise", self.noise, 0.0, strict=False)

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
  bins_per_octave = _check_int("bins_per_octave", bins_per_octave, 1)
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
  num_steps = _check_int("num_steps", num_steps, 1)
  values = np.broadcast_to(np.asarray(schedule(jnp.arange(num_steps)), np.float64), (num_steps,))
  if values.shape != (num_steps,) or not np.all(np.isfinite(values)) or np.any(values < 0):
    raise ValueError("schedule must give finite non-negative values for steps 0..num_steps-1")
  return values


def averaging_weights(kind: str, num_steps: int, *, ema_decay: float = 0.999,
                      half_life_factor: float = 25.0, gamma: float = 7.0,
                      start: int = 1) -> np.ndarray:
  """Average weights rho_t of w_bar_t = (1-rho_t) w_bar_{t-1} + rho_t w_t, t = 1..num_steps.

  The kinds of ``anytime.averaging`` (rho_1 = 1 for all: the average starts at w_1):
  ``uniform`` 1/t (Polyak-Ruppert); ``ema`` 1 - ema_decay; ``anytime_ema`` 1 - 2^(-f/(t+1)),
  half-life ~ t/f (Meterez et al. 2026, EMA-25 is f = 25); ``power_ema`` 1 - (1 - 1/t)^(gamma+1),
  w_bar_t ~ sum_s s^gamma w_s (Karras et al. 2024); ``tail`` the uniform average of steps >=
  ``start`` (Polyak from s; before it the last iterate); ``none`` the last iterate (rho = 1).
  """
  num_steps = _check_int("num_steps", num_steps, 1)
  t = np.arange(1, num_steps + 1, dtype=np.float64)
  if kind == "uniform":
    rho = 1.0 / t
  elif kind == "ema":
    if not 0.0 <= ema_decay < 1.0:
      raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
    rho = np.full(num_steps, 1.0 - ema_decay)
  elif kind == "anytime_ema":
    half_life_factor = _check_float("half_life_factor", half_life_factor, 0.0, strict=True)
    rho = -np.expm1(-math.log(2.0) * half_life_factor / (t + 1.0))
  elif kind == "power_ema":
    gamma = _check_float("gamma", gamma, 0.0, strict=False)
    rho = -np.expm1((gamma + 1.0) * np.log1p(-1.0 / np.maximum(t, 2.0)))
  elif kind == "tail":
    start = _check_int("start", start, 1)
    rho = np.where(t < start, 1.0, 1.0 / np.maximum(t - start + 1, 1.0))
  elif kind == "none":
    rho = np.ones(num_steps)
  else:
    raise ValueError(f"averaging kind must be one of {AVERAGING_KINDS}, got {kind!r}")
  rho[0] = 1.0
  return rho


# --------------------------------------------------------------------------- exact dynamics


class RiskCurves(NamedTuple):
  """Excess risk at checkpoints. Shapes: S schedules, L peak LRs, A averages, C checkpoints."""

  steps: np.ndarray  # (C,) int
  last: np.ndarray  # (S, L, C) risk of the last iterate; inf where diverged
  average: np.ndarray  # (A, S, L, C) risk of each average; inf where diverged
  diverged: np.ndarray  # (S, L) bool


def _validate_run(coords: Coordinates, noise: float, shapes: np.ndarray, peak_lrs: Sequence[float],
                  averages: np.ndarray | None, checkpoints: Sequence[int], batch_size: int):
  noise = _check_float("noise", noise, 0.0, strict=False)
  shapes = np.asarray(shapes, np.float64)
  if shapes.ndim == 1:
    shapes = shapes[None]
  if shapes.ndim != 2 or not np.all(np.isfinite(shapes)) or np.any(shapes < 0):
    raise ValueError("shapes must be a (schedules, steps) array of finite LR multipliers >= 0")
  num_steps = shapes.shape[1]
  peak_lrs = np.atleast_1d(np.asarray(peak_lrs, np.float64))
  if peak_lrs.ndim != 1 or not np.all(np.isfinite(peak_lrs)) or np.any(peak_lrs <= 0):
    raise ValueError(f"peak_lrs must be positive finite numbers, got {peak_lrs.tolist()}")
  if averages is None:
    averages = averaging_weights("uniform", num_steps)
  averages = np.asarray(averages, np.float64)
  if averages.ndim == 1:
    averages = averages[None]
  if averages.shape[1:] != (num_steps,) or np.any(averages <= 0) or np.any(averages > 1):
    raise ValueError(f"averages must be (A, {num_steps}) weights rho_t in (0, 1]")
  checkpoints = _check_steps("checkpoints", checkpoints, num_steps)
  batch_size = _check_int("batch_size", batch_size, 1)
  coords = Coordinates(*(np.asarray(a, np.float64) for a in coords))
  return coords, noise, shapes, peak_lrs, averages, checkpoints, batch_size


def _kappa(rho: np.ndarray) -> np.ndarray:
  """kappa_t = (1 - rho_t) rho_{t-1} / rho_t with rho_0 = 1 (w_bar_0 = w_0); shape (A, N)."""
  previous = np.concatenate([np.ones_like(rho[:, :1]), rho[:, :-1]], axis=1)
  return (1.0 - rho) * previous / rho


@functools.partial(jax.jit, static_argnames=("inv_batch",))
def _advance(state, t0, t1, eig, mult, inw, shapes_NxS, peaks_L, kappa_NxA, noise, inv_batch):
  """Steps t0..t1-1 of the fused recursion; state = (s SxLxK, M AxSxLxK, D AxSxLxK)."""
  eig_w = mult * eig

  def body(t, state):
    s, m, d = state
    eta = shapes_NxS[t][:, None, None] * peaks_L[None, :, None]  # (S, L, 1)
    q = jnp.sum(eig_w * s, axis=-1, keepdims=True)
    el = eta * eig
    gain = el * (eta * inv_batch * (q + noise))
    s = (1.0 + el * ((1.0 + inv_batch) * el - 2.0)) * s + gain * inw
    kappa = kappa_NxA[t][:, None, None, None]
    x = (kappa - kappa * el) * d
    d = x + s
    m = kappa * kappa * m + 2.0 * x + s
    return s, m, d

  return jax.lax.fori_loop(t0, t1, body, state)


@jax.jit
def _risks(state, eig, mult, rho_A):
  s, m, _ = state
  eig_w = 0.5 * mult * eig
  return jnp.sum(eig_w * s, -1), rho_A[:, None, None] ** 2 * jnp.sum(eig_w * m, -1)


@functools.partial(jax.jit, static_argnames=("inv_batch", "block", "num_checkpoints"))
def _two_pass(eig, mult, inw, s0, shapes_NxS, peaks_L, kappa_NxA, checkpoint_index_N, noise,
              inv_batch, block, num_checkpoints):
  """Exact mode for large K. Pass 1 runs s alone (it needs all coordinates each step, for q) and
  stores q_t; given q_t the coordinates decouple, so pass 2 runs (s, M, D) over blocks of
  ``block`` coordinates that stay in cache for all N steps. Returns sum_k mult eig s and
  sum_k mult eig M at the checkpoints: (C, S, L), (C, A, S, L)."""
  num_s, num_l, num_a = shapes_NxS.shape[1], peaks_L.shape[0], kappa_NxA.shape[1]
  eig_w = mult * eig

  def s_update(s, el, eta, q, inw):
    gain = el * (eta * inv_batch * (q + noise))
    return (1.0 + el * ((1.0 + inv_batch) * el - 2.0)) * s + gain * inw

  def step1(s, shape_t):
    eta = shape_t[:, None, None] * peaks_L[None, :, None]
    q = jnp.sum(eig_w * s, axis=-1, keepdims=True)
    return s_update(s, eta * eig, eta, q, inw), q[..., 0]

  s_init = jnp.broadcast_to(s0, (num_s, num_l) + s0.shape)
  _, q_NxSxL = jax.lax.scan(step1, s_init, shapes_NxS)
  num_blocks = -(-eig.shape[0] // block)
  pad = num_blocks * block - eig.shape[0]
  blocked = [jnp.pad(a, (0, pad)).reshape(num_blocks, block) for a in (eig, eig_w, inw, s0)]

  def run_block(b, acc):
    eig_b, w_b, inw_b, s0_b = (a[b] for a in blocked)
    s = jnp.broadcast_to(s0_b, (num_s, num_l, block))
    m = jnp.broadcast_to(s, (num_a,) + s.shape)

    def step2(state, xs):
      s, m, d, acc = state
      shape_t, kappa_t, q_t, index = xs
      eta = shape_t[:, None, None] * peaks_L[None, :, None]
      el = eta * eig_b
      s = s_update(s, el, eta, q_t[..., None], inw_b)
      kappa = kappa_t[:, None, None, None]
      x = (kappa - kappa * el) * d
      d = x + s
      m = kappa * kappa * m + 2.0 * x + s
      acc = jax.lax.cond(index >= 0, lambda a: (a[0].at[index].add(jnp.sum(w_b * s, -1)),
                                                a[1].at[index].add(jnp.sum(w_b * m, -1))),
                         lambda a: a, acc)
      return (s, m, d, acc), None

    xs = (shapes_NxS, kappa_NxA, q_NxSxL, checkpoint_index_N)
    return jax.lax.scan(step2, (s, m, m, acc), xs)[0][3]

  acc = (jnp.zeros((num_checkpoints, num_s, num_l)),
         jnp.zeros((num_checkpoints, num_a, num_s, num_l)))
  return jax.lax.fori_loop(0, num_blocks, run_block, acc)


def expected_risk(coords: Coordinates, noise: float, shapes: np.ndarray,
                  peak_lrs: Sequence[float], checkpoints: Sequence[int], *,
                  averages: np.ndarray | None = None, batch_size: int = 1,
                  divergence_factor: float = 1e8, progress: Callable[[str], None] | None = None,
                  method: str = "auto", block: int = 2048) -> RiskCurves:
  """Exact expected excess risk of SGD for every (schedule shape, peak LR), float64.

  ``shapes`` (S, N): LR multipliers of steps 1..N (``schedule_shape``); the LR of row (s, l)
  is ``shapes[s] * peak_lrs[l]``. ``averages`` (A, N): average weights rho_t
  (``averaging_weights``; default uniform). A row whose risk exceeds ``divergence_factor``
  times (initial risk + noise) or is not finite is reported diverged, with risk inf.
  ``method``: ``fused`` (one pass over all pseudo-coordinates per step), ``two_pass`` (s first,
  then (s, M, D) in cache-sized blocks of ``block`` coordinates; faster for large K, stores
  N x S x L values of q) or ``auto`` (two_pass when K >= 4 * block).
  """
  coords, noise, shapes, peak_lrs, averages, checkpoints, batch_size = _validate_run(
      coords, noise, shapes, peak_lrs, averages, checkpoints, batch_size)
  num_s, num_l, num_a, num_k = len(shapes), len(peak_lrs), len(averages), len(coords.eigenvalue)
  initial = 0.5 * float(np.sum(coords.multiplicity * coords.eigenvalue * coords.initial_error))
  limit = divergence_factor * (initial + noise)
  kappa = _kappa(averages)
  last = np.zeros((num_s, num_l, len(checkpoints)))
  average = np.zeros((num_a, num_s, num_l, len(checkpoints)))
  if method not in ("auto", "fused", "two_pass"):
    raise ValueError(f"method must be 'auto', 'fused' or 'two_pass', got {method!r}")
  block = _check_int("block", block, 1)
  if method == "auto":
    method = "two_pass" if num_k >= 4 * block else "fused"
  with jax.enable_x64(True):
    eig, mult, inw, s0 = (jnp.asarray(a) for a in coords)
    if method == "two_pass":
      index = np.full(shapes.shape[1], -1, np.int32)
      index[checkpoints - 1] = np.arange(len(checkpoints))
      t_begin = time.time()
      sum_s, sum_m = _two_pass(eig, mult, inw, s0, jnp.asarray(shapes.T), jnp.asarray(peak_lrs),
                               jnp.asarray(kappa.T), jnp.asarray(index), jnp.asarray(noise),
                               inv_batch=1.0 / batch_size, block=min(block, num_k),
                               num_checkpoints=len(checkpoints))
      last[:] = 0.5 * np.moveaxis(np.asarray(sum_s), 0, -1)
      rho = averages[:, checkpoints - 1]  # (A, C)
      average[:] = 0.5 * np.moveaxis(np.asarray(sum_m), 0, -1) * (rho**2)[:, None, None, :]
      if progress is not None:
        progress(f"step {checkpoints[-1]}/{checkpoints[-1]} ({time.time() - t_begin:.1f}s)")
    else:
      s = jnp.broadcast_to(s0, (num_s, num_l, num_k))
      state = (s, jnp.broadcast_to(s, (num_a,) + s.shape),
               jnp.broadcast_to(s, (num_a,) + s.shape))
      args = (eig, mult, inw, jnp.asarray(shapes.T), jnp.asarray(peak_lrs),
              jnp.asarray(kappa.T), jnp.asarray(noise))
      start, t_begin = 0, time.time()
      for c, step in enumerate(checkpoints):
        state = _advance(state, start, int(step), *args, inv_batch=1.0 / batch_size)
        r_last, r_avg = _risks(state, eig, mult, jnp.asarray(averages[:, step - 1]))
        last[..., c], average[..., c] = np.asarray(r_last), np.asarray(r_avg)
        start = int(step)
        if progress is not None:
          progress(f"step {step}/{checkpoints[-1]} ({time.time() - t_begin:.1f}s)")
  bad = ~np.isfinite(last) | (last > limit) | np.any(~np.isfinite(average) | (average > limit), 0)
  diverged = np.any(bad, axis=-1)
  last[np.broadcast_to(diverged[..., None], last.shape)] = np.inf
  average[np.broadcast_to(diverged[None, ..., None], average.shape)] = np.inf
  return RiskCurves(checkpoints, last, average, diverged)


@jax.jit
def _straightforward_scan(s0, lam, peaks, shape, t, noise, inv_b):
  def step(carry, inputs):
    s, s_bar, c = carry
    lr, t = inputs
    eta = lr * peaks
    q = jnp.sum(lam * s, axis=-1, keepdims=True)
    s_new = (1 - 2 * eta * lam + (1 + inv_b) * eta**2 * lam**2) * s + (
        eta**2 * inv_b * lam * (q + noise))
    rho = 1.0 / t
    s_bar = (1 - rho)**2 * s_bar + rho**2 * s_new + 2 * rho * (1 - rho) * (1 - eta * lam) * c
    c = (1 - rho) * (1 - eta * lam) * c + rho * s_new
    return (s_new, s_bar, c), (0.5 * jnp.sum(lam * s_new, -1), 0.5 * jnp.sum(lam * s_bar, -1))

  return jax.lax.scan(step, (s0, s0, s0), (shape, t))[1]


def straightforward_risk(problem: PowerLawProblem, shape: np.ndarray, peak_lrs: Sequence[float],
                         checkpoints: Sequence[int], batch_size: int = 1) -> tuple[np.ndarray,
                                                                                np.ndarray]:
  """Reference: the (s, s_bar, c) recursion with the uniform average, one ``lax.scan``.

  Written as directly as possible from the update rules (module docstring), as the independent
  reference for ``expected_risk`` and the speed baseline of the benchmark. Returns the last and
  averaged risks, each (L, C).
  """
  shape = np.asarray(shape, np.float64)
  checkpoints = _check_steps("checkpoints", checkpoints, len(shape))
  batch_size = _check_int("batch_size", batch_size, 1)
  with jax.enable_x64(True):
    s0 = jnp.broadcast_to(jnp.asarray(problem.initial_error), (len(peak_lrs), problem.dim))
    peaks = jnp.asarray(np.asarray(peak_lrs, np.float64))[:, None]
    last, avg = _straightforward_scan(
        s0, jnp.asarray(problem.eigenvalues), peaks, jnp.asarray(shape),
        jnp.arange(1, len(shape) + 1, dtype=jnp.float64), jnp.asarray(problem.noise),
        jnp.asarray(1.0 / batch_size))
    return np.asarray(last)[checkpoints - 1].T, np.asarray(avg)[checkpoints - 1].T


# --------------------------------------------------------------------------- Monte Carlo


class MonteCarloMoments(NamedTuple):
  """Sample moments over independent SGD runs at checkpoints (C checkpoints, d coordinates)."""

  steps: np.ndarray  # (C,)
  second_moment: np.ndarray  # (C, d) mean of (w - w*)_i^2
  average_second_moment: np.ndarray  # (C, d) mean of (w_bar - w*)_i^2
  risk: np.ndarray  # (C,) mean excess risk of w
  risk_stderr: np.ndarray  # (C,)
  average_risk: np.ndarray  # (C,) mean excess risk of w_bar
  average_risk_stderr: np.ndarray  # (C,)


def monte_carlo_sgd(problem: PowerLawProblem, learning_rates: np.ndarray,
                    checkpoints: Sequence[int], *, averages: np.ndarray | None = None,
                    batch_size: int = 1, num_runs: int = 1000, seed: int = 0,
                    dtype: Any = np.float64) -> MonteCarloMoments:
  """Real one-pass SGD on sampled Gaussian data, ``num_runs`` independent runs in parallel.

  ``learning_rates`` (N,): the LR of steps 1..N; ``averages`` (N,): rho_t (default uniform).
  Cost ~ num_runs * N * batch_size * dim; meant for small problems.
  """
  learning_rates = np.asarray(learning_rates, np.float64)
  if learning_rates.ndim != 1 or not np.all(np.isfinite(learning_rates)):
    raise ValueError("learning_rates must be a 1-D array of finite LRs")
  num_steps = len(learning_rates)
  checkpoints = _check_steps("checkpoints", checkpoints, num_steps)
  averages = averaging_weights("uniform", num_steps) if averages is None else np.asarray(averages)
  if averages.shape != (num_steps,):
    raise ValueError(f"averages must have shape ({num_steps},), got {averages.shape}")
  batch_size = _check_int("batch_size", batch_size, 1)
  num_runs = _check_int("num_runs", num_runs, 2)
  if np.dtype(dtype) not in (np.float32, np.float64):
    raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
  with jax.enable_x64(np.dtype(dtype) == np.float64):
    dt = jnp.dtype(dtype)
    sqrt_lam = jnp.sqrt(jnp.asarray(problem.eigenvalues, dt))
    lam = sqrt_lam**2
    sigma = jnp.asarray(math.sqrt(problem.noise), dt)
    w_star = jnp.sqrt(jnp.asarray(problem.initial_error, dt))
    e0 = jnp.broadcast_to(-w_star, (num_runs, problem.dim))

    @jax.jit
    def run(key, lrs, rhos):
      def step(carry, inputs):
        e, e_bar = carry
        lr, rho, key = inputs
        kx, kn = jax.random.split(key)
        x = jax.random.normal(kx, (num_runs, batch_size, problem.dim), dt) * sqrt_lam
        residual = jnp.einsum("rbd,rd->rb", x, e) - sigma * jax.random.normal(
            kn, (num_runs, batch_size), dt)
        e = e - lr / batch_size * jnp.einsum("rbd,rb->rd", x, residual)
        e_bar = (1 - rho) * e_bar + rho * e
        risk = 0.5 * jnp.sum(lam * e * e, -1)
        avg_risk = 0.5 * jnp.sum(lam * e_bar * e_bar, -1)
        return (e, e_bar), (jnp.mean(e * e, 0), jnp.mean(e_bar * e_bar, 0), risk, avg_risk)

      keys = jax.random.split(key, num_steps)
      return jax.lax.scan(step, (e0, e0), (lrs, rhos, keys))[1]

    out = run(jax.random.key(seed), jnp.asarray(learning_rates, dt), jnp.asarray(averages, dt))
    sq, avg_sq, risk, avg_risk = (np.asarray(o, np.float64)[checkpoints - 1] for o in out)
  se = lambda r: r.std(axis=1, ddof=1) / math.sqrt(num_runs)
  return MonteCarloMoments(checkpoints, sq, avg_sq, risk.mean(1), se(risk), avg_risk.mean(1),
                           se(avg_risk))


# --------------------------------------------------------------------------- fast mode, rates


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


# --------------------------------------------------------------------------- experiments


def _panels(config) -> list[tuple[float, float]]:
  return [(float(a), float(a) * float(r)) for a in config.capacities for r in config.source_ratios]


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
  _check_int("config.dim", config.dim, 1)
  _check_int("config.num_steps", config.num_steps, 1)
  if not config.lr_multipliers or min(config.lr_multipliers) <= 0:
    raise ValueError("config.lr_multipliers must be a non-empty list of positive numbers")


def run_figure3(config, workdir: str, progress: Callable[[str], None] = print) -> dict[str, Any]:
  """The seed paper's Figure 3: tuned constant / 1/sqrt(t) / t^-gamma* + uniform average, and
  cosine tuned per horizon, on each (capacity, source) panel. Writes CSV, JSON and PNG."""
  _validate_common(config)
  _check_float("config.noise", config.noise, 0.0, strict=False)
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
  for a, b in _panels(config):
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
  _plot_figure3(curve_rows, config, os.path.join(workdir, "figure3.png"))
  progress(f"wrote {workdir}/figure3.{{json,png}}, figure3_curves.csv ({summary['seconds']:.1f}s)")
  return summary


def _plot_figure3(rows, config, path: str):
  import matplotlib.pyplot as plt

  panels = _panels(config)
  ncols = len(config.capacities)
  nrows = len(config.source_ratios)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
  for p, (a, b) in enumerate(panels):
    ax = axes[p % nrows, p // nrows]
    methods = dict.fromkeys(r[2] for r in rows if r[0] == a and r[1] == b)
    for method in methods:
      pts = [(r[4], r[5]) for r in rows if r[0] == a and r[1] == b and r[2] == method]
      lr = [r[3] for r in rows if r[0] == a and r[1] == b and r[2] == method][0]
      style = dict(marker="o", ls="--") if "cosine" in method else {}
      label = method if "cosine" in method else f"{method} (m={lr:g})"
      ax.loglog(*zip(*pts), label=label, **style)
    ax.set_title(f"a={a:g}, b={b:g}, $\\sigma^2$={config.noise:g}")
    ax.set_xlabel("step t")
    ax.set_ylabel("excess risk")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run_exponent(config, workdir: str, progress: Callable[[str], None] = print) -> dict[str, Any]:
  """Sweeps the exponent gamma and offset alpha of eta (alpha/(t+alpha))^gamma + uniform average
  (LR tuned per (gamma, alpha) and horizon) and reports the best per horizon next to gamma*."""
  _validate_common(config)
  num_steps = int(config.num_steps)
  checkpoints = _checkpoints(num_steps, [], config.curve_points)
  multipliers = np.asarray(config.lr_multipliers, np.float64)
  for noise in config.noises:
    _check_float("config.noises", noise, 0.0, strict=False)
  os.makedirs(workdir, exist_ok=True)
  summary: dict[str, Any] = {"config": config.to_dict(), "results": []}
  rows, start_all = [], time.time()
  for a, b in _panels(config):
    gamma_star = schedules_lib.anytime_exponent(a, b)
    exponents = sorted(set(float(g) for g in config.exponents) | {round(gamma_star, 6)})
    grid = [(0.0, 1.0)] + [(g, float(o)) for g in exponents if g > 0 for o in config.offsets]
    shapes = np.stack([schedule_shape(schedules_lib.polynomial_decay(1.0, exponent=g, offset=o),
                                      num_steps) for g, o in grid])
    for noise in config.noises:
      problem = PowerLawProblem(int(config.dim), a, b, float(noise))
      t0 = time.time()
      curves, error = problem_risk(
          problem, shapes, multipliers / problem.trace, checkpoints, fast=config.fast,
          bins_per_octave=config.bins_per_octave, estimate_error=config.estimate_error,
          progress=lambda m: progress(f"[a={a:g} b={b:g} noise={noise:g}] {m}"))
      risk = curves.average[0]  # (G, L, C)
      best_lr = np.argmin(np.where(np.isfinite(risk), risk, np.inf), axis=1)  # (G, C)
      tuned = np.take_along_axis(risk, best_lr[:, None], axis=1)[:, 0]  # (G, C)
      for g, (gamma, offset) in enumerate(grid):
        rows += [(a, b, noise, gamma, offset, int(t), float(multipliers[best_lr[g, c]]),
                  float(tuned[g, c])) for c, t in enumerate(checkpoints)]
      # Anytime protocol: one LR per (gamma, alpha) for all horizons >= single_lr_tune_from,
      # chosen by the mean log risk over them.
      tune_cols = np.nonzero(checkpoints >= config.single_lr_tune_from)[0]
      log_risk = np.log(np.where(np.isfinite(risk), risk, np.inf))[..., tune_cols].mean(-1)
      single_lr = np.argmin(log_risk, axis=1)  # (G,)
      single = risk[np.arange(len(grid)), single_lr]  # (G, C)
      single_best = int(np.argmin(single[:, -1]))
      star_single = single[[g for g, (gamma, _) in enumerate(grid)
                            if abs(gamma - gamma_star) < 1e-6]].min(axis=0)
      best = np.argmin(tuned, axis=0)
      constant = tuned[0]
      # t^-gamma*: plain (alpha = 1) and with the best alpha; gamma* = 0 is the constant row.
      star_plain = tuned[grid.index((round(gamma_star, 6), 1.0)) if gamma_star > 0 else 0]
      star_rows = [g for g, (gamma, _) in enumerate(grid) if abs(gamma - gamma_star) < 1e-6]
      star_best = tuned[star_rows].min(axis=0) if gamma_star > 0 else constant

      def overtake(candidate, constant=constant):
        ahead = candidate < constant
        if not ahead[-1]:
          return None
        behind = np.nonzero(~ahead)[0]
        return int(checkpoints[behind[-1] + 1]) if behind.size else int(checkpoints[0])

      result = {
          "capacity": a, "source": b, "noise": noise, "gamma_star": gamma_star,
          "seconds": time.time() - t0, "fast_mode_relative_error_estimate": error,
          "best_per_horizon": [
              {"step": int(t), "gamma": grid[best[c]][0], "offset": grid[best[c]][1],
               "risk": float(tuned[best[c], c]), "constant_avg_risk": float(constant[c]),
               "gamma_star_plain_risk": float(star_plain[c]),
               "gamma_star_best_offset_risk": float(star_best[c])}
              for c, t in enumerate(checkpoints)],
          "overtake_step_plain": overtake(star_plain) if gamma_star > 0 else None,
          "overtake_step_best_offset": overtake(star_best) if gamma_star > 0 else None,
          "single_lr": {
              "best_at_last_step": {"gamma": grid[single_best][0], "offset": grid[single_best][1],
                                    "lr_multiplier": float(multipliers[single_lr[single_best]]),
                                    "risk": float(single[single_best, -1])},
              "constant_avg_risk_at_last_step": float(single[0, -1]),
              "constant_lr_multiplier": float(multipliers[single_lr[0]]),
              "gamma_star_best_offset_risk_at_last_step": float(star_single[-1]),
              "overtake_step_best_offset": (overtake(star_single, single[0])
                                            if gamma_star > 0 else None),
          },
      }
      summary["results"].append(result)
      last = result["best_per_horizon"][-1]
      progress(f"[a={a:g} b={b:g} noise={noise:g}] {result['seconds']:.1f}s; at N={last['step']}"
               f" best gamma={last['gamma']:g} offset={last['offset']:g} (gamma*={gamma_star:.3g})"
               f"; t^-gamma* overtakes constant at N={result['overtake_step_plain']}"
               f" (best offset: {result['overtake_step_best_offset']}); single LR: best gamma="
               f"{grid[single_best][0]:g} offset={grid[single_best][1]:g}, gamma* overtakes at N="
               f"{result['single_lr']['overtake_step_best_offset']}")
  summary["seconds"] = time.time() - start_all
  _write_csv(os.path.join(workdir, "exponent_sweep.csv"),
             ("capacity", "source", "noise", "gamma", "offset", "step", "lr_multiplier",
              "excess_risk"), rows)
  with open(os.path.join(workdir, "exponent_sweep.json"), "w") as f:
    json.dump(summary, f, indent=1)
  _plot_exponent(summary, config, os.path.join(workdir, "exponent_sweep.png"))
  progress(f"wrote {workdir}/exponent_sweep.{{json,csv,png}} ({summary['seconds']:.1f}s)")
  return summary


def _plot_exponent(summary, config, path: str):
  import matplotlib.pyplot as plt

  panels = _panels(config)
  ncols, nrows = len(config.capacities), len(config.source_ratios)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
  for p, (a, b) in enumerate(panels):
    ax = axes[p % nrows, p // nrows]
    for result in summary["results"]:
      if result["capacity"] == a and result["source"] == b:
        pts = result["best_per_horizon"]
        ax.semilogx([r["step"] for r in pts], [r["gamma"] for r in pts], marker=".",
                    label=f"$\\sigma^2$={result['noise']:g}")
    ax.axhline(schedules_lib.anytime_exponent(a, b), color="k", ls="--", label="$\\gamma^*$")
    ax.set_title(f"a={a:g}, b={b:g}")
    ax.set_xlabel("horizon N")
    ax.set_ylabel("best exponent $\\gamma$")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


EXPERIMENTS = {"figure3": run_figure3, "exponent": run_exponent}


def main(argv):
  """CLI: python -m anytime.theory.linreg --config configs/linreg_figure3.py --workdir DIR."""
  from absl import flags

  del argv
  config = flags.FLAGS.config
  if config.experiment not in EXPERIMENTS:
    raise ValueError(f"config.experiment must be one of {sorted(EXPERIMENTS)}, "
                     f"got {config.experiment!r}")
  EXPERIMENTS[config.experiment](config, flags.FLAGS.workdir,
                                 progress=lambda m: print(m, flush=True))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory (CSV, JSON, PNG).")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
