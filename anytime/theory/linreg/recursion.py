"""The exact expected-risk recursion of SGD + averaging on power-law linear regression.

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

``expected_risk`` runs it fused (one pass over all pseudo-coordinates per step) or in two passes
(q first, then cache-sized blocks of coordinates); ``straightforward_risk`` is the direct
reference. ``monte_carlo.monte_carlo_sgd`` runs real SGD on sampled data and is the test of all
of the above.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from anytime.theory._checks import at_least, integer
from anytime.theory.linreg.problem import Coordinates, PowerLawProblem, averaging_weights


def check_steps(name: str, steps: Sequence[int], num_steps: int | None = None) -> np.ndarray:
  """Strictly increasing integer steps >= 1 (and <= ``num_steps``) as int64, or ValueError."""
  steps = np.asarray(steps)
  if steps.ndim != 1 or steps.size == 0 or not np.all(steps == np.round(steps)):
    raise ValueError(f"{name} must be a non-empty 1-D list of integer steps, got {steps!r}")
  steps = steps.astype(np.int64)
  if steps[0] < 1 or np.any(np.diff(steps) <= 0):
    raise ValueError(f"{name} must be strictly increasing steps >= 1, got {steps.tolist()}")
  if num_steps is not None and steps[-1] > num_steps:
    raise ValueError(f"{name} must be <= the number of steps {num_steps}, got {steps[-1]}")
  return steps



class RiskCurves(NamedTuple):
  """Excess risk at checkpoints. Shapes: S schedules, L peak LRs, A averages, C checkpoints."""

  steps: np.ndarray  # (C,) int
  last: np.ndarray  # (S, L, C) risk of the last iterate; inf where diverged
  average: np.ndarray  # (A, S, L, C) risk of each average; inf where diverged
  diverged: np.ndarray  # (S, L) bool


def _validate_run(coords: Coordinates, noise: float, shapes: np.ndarray, peak_lrs: Sequence[float],
                  averages: np.ndarray | None, checkpoints: Sequence[int], batch_size: int):
  noise = at_least("noise", noise, 0.0, strict=False)
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
  checkpoints = check_steps("checkpoints", checkpoints, num_steps)
  batch_size = integer("batch_size", batch_size, 1)
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
  block = integer("block", block, 1)
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
  checkpoints = check_steps("checkpoints", checkpoints, len(shape))
  batch_size = integer("batch_size", batch_size, 1)
  with jax.enable_x64(True):
    s0 = jnp.broadcast_to(jnp.asarray(problem.initial_error), (len(peak_lrs), problem.dim))
    peaks = jnp.asarray(np.asarray(peak_lrs, np.float64))[:, None]
    last, avg = _straightforward_scan(
        s0, jnp.asarray(problem.eigenvalues), peaks, jnp.asarray(shape),
        jnp.arange(1, len(shape) + 1, dtype=jnp.float64), jnp.asarray(problem.noise),
        jnp.asarray(1.0 / batch_size))
    return np.asarray(last)[checkpoints - 1].T, np.asarray(avg)[checkpoints - 1].T

