"""Real one-pass SGD on sampled Gaussian data: the Monte Carlo check of the exact recursion."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from anytime.theory._checks import integer
from anytime.theory.linreg.problem import PowerLawProblem, averaging_weights
from anytime.theory.linreg.recursion import check_steps


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
  checkpoints = check_steps("checkpoints", checkpoints, num_steps)
  averages = averaging_weights("uniform", num_steps) if averages is None else np.asarray(averages)
  if averages.shape != (num_steps,):
    raise ValueError(f"averages must have shape ({num_steps},), got {averages.shape}")
  batch_size = integer("batch_size", batch_size, 1)
  num_runs = integer("num_runs", num_runs, 2)
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
