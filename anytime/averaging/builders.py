"""Builders of the averages (``ema``, ``anytime_ema``, ``power_ema``, ``polyak``, ``tail``,
``window``), ``from_config`` and EDM2's sigma_rel <-> gamma conversions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from anytime.averaging.kinds import (KINDS, REGISTRY, AnytimeEma, Average, Ema, Polyak, PowerEma,
                                     Tail, Window)

def ema(decay: float, *, debias: bool = True, start_step: int = 0, every: int = 1,
        dtype: Any = jnp.float32) -> Ema:
  """Exponential moving average with a fixed ``decay`` in [0, 1).

  Args:
    decay: the weight kept by the old average at each fold.
    debias: Adam-style bias correction, so the first iterates are not pulled towards the
      initial params: the average is Σ decay^(t−s) w_s / Σ decay^(t−s).
    start_step: updates before this one are not folded in (the average follows the params).
    every: fold in every ``every``-th iterate; the decay per fold is ``decay ** every``.
    dtype: the dtype of the stored average.

  Returns:
    An ``Ema`` for ``with_averages`` or ``init_averages``.

  Examples:
    >>> from anytime import averaging
    >>> averaging.ema(0.5, debias=False).weights(2)
    array([0.25, 0.25, 0.5 ])
  """
  return Ema(decay=decay, debias=debias, start_step=start_step, every=every, dtype=dtype)


def anytime_ema(factor: float, *, start_step: int = 0, every: int = 1,
                dtype: Any = jnp.float32) -> AnytimeEma:
  """EMA with decay_t = 2^(−factor/(t+1)): a half-life of about t/factor steps.

  With w_t the params after update t (t counted from the average's start) and d_t = 2^(−f/(t+1)):

    w̄_1 = w_1                                  (the first fold copies w_1: w_0 gets no weight)
    w̄_t = d_t·w̄_(t−1) + (1 − d_t)·w_t,  t >= 2

  so w_1 weighs Π_(j=2..t) d_j and w_s, s >= 2, weighs (1 − d_s)·Π_(j=s+1..t) d_j (d_1 is never
  used). With ``every=k`` only t = k, 2k, ... are folded and a fold at t uses the exact product
  of the decays since the last fold, Π_(j=t−k+1..t) d_j = 2^(−f·Σ_(j=t−k+1..t) 1/(j+1))
  (the first fold still copies).

  Args:
    factor: the horizon-free factor f > 0; EMA-25 is ``factor=25`` and the paper tracks
      {6.25, 12.5, 25, 50, 100}. For large t it is the power EMA with γ + 1 = f·ln 2.
    start_step: updates before this one are not folded in (the average follows the params).
    every: fold in every ``every``-th iterate (the decays of the skipped steps are multiplied).
    dtype: the dtype of the stored average.

  Returns:
    An ``AnytimeEma``.

  References:
    Meterez et al. 2026, "Anytime pretraining: horizon-free learning-rate schedules with weight
    averaging" (arXiv 2602.03702).

  Examples:
    >>> import jax.numpy as jnp, numpy as np
    >>> from anytime import averaging
    >>> avg = averaging.anytime_ema(25.0)
    >>> avg
    AnytimeEma(start_step=0, every=1, dtype=dtype('float32'), factor=25.0)
    >>> round(float(avg.weights(1000)[-1]), 4)  # the newest iterate's weight
    0.0172

    Three updates with f = 2 from w_0 = 10 (which gets no weight): w_1, w_2, w_3 = 1, 2, 4.

    >>> averages = {"ema_2": averaging.anytime_ema(2.0)}
    >>> state = averaging.init_averages(averages, jnp.array(10.0))
    >>> for w in (1.0, 2.0, 4.0):
    ...   state = averaging.update_averages(averages, state, jnp.array(w))
    >>> d2, d3 = 2 ** (-2 / 3), 2 ** (-2 / 4)
    >>> want = d3 * (d2 * 1.0 + (1 - d2) * 2.0) + (1 - d3) * 4.0
    >>> round(want, 6), abs(float(averaging.averaged_params(state, "ema_2")) - want) < 1e-6
    (2.140337, True)
    >>> np.allclose(averages["ema_2"].weights(3), [0, d2 * d3, (1 - d2) * d3, 1 - d3],
    ...             rtol=1e-12, atol=0)
    True

    ``every=2`` over 4 updates: the fold at t = 2 copies w_2, the one at t = 4 keeps
    d_3·d_4 = 2^(−2·(1/4 + 1/5)) of it (exactly, not a midpoint approximation).

    >>> kept = 2 ** (-2 * (1 / 4 + 1 / 5))
    >>> np.allclose(averaging.anytime_ema(2.0, every=2).weights(4), [0, 0, kept, 0, 1 - kept],
    ...             rtol=1e-12, atol=0)
    True
    >>> averages = {"ema_2": averaging.anytime_ema(2.0, every=2)}
    >>> state = averaging.init_averages(averages, jnp.array(10.0))
    >>> for w in (1.0, 2.0, 3.0, 4.0):
    ...   state = averaging.update_averages(averages, state, jnp.array(w))
    >>> abs(float(averaging.averaged_params(state, "ema_2")) - (kept * 2 + (1 - kept) * 4)) < 1e-6
    True
  """
  return AnytimeEma(factor=factor, start_step=start_step, every=every, dtype=dtype)


def gamma_to_sigma_rel(gamma: float) -> float:
  """EDM2's relative standard deviation of a power EMA's profile: sqrt((γ+1)/((γ+2)²(γ+3))).

  Examples:
    >>> from anytime import averaging
    >>> round(averaging.gamma_to_sigma_rel(6.94), 3)
    0.1
  """
  if not gamma > 0:
    raise ValueError(f"gamma must be > 0, got {gamma!r}")
  return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
  """Inverse of ``gamma_to_sigma_rel`` (Karras et al. 2024, Algorithm 2): sigma_rel in (0, 0.28).

  Examples:
    >>> from anytime import averaging
    >>> round(averaging.sigma_rel_to_gamma(0.05), 2)
    16.97
  """
  if not 0 < sigma_rel < gamma_to_sigma_rel(1e-9):
    raise ValueError(f"sigma_rel must be in (0, {gamma_to_sigma_rel(1e-9):.4f}), got {sigma_rel!r}")
  t = sigma_rel ** -2
  return float(np.roots([1, 7, 16 - t, 12 - t]).real.max())


def power_ema(gamma: float | None = None, *, sigma_rel: float | None = None, start_step: int = 0,
              every: int = 1, dtype: Any = jnp.float32) -> PowerEma:
  """Power-function EMA, decay_t = (1 − 1/t)^(γ+1): w̄_t ∝ Σ_s s^γ w_s.

  Args:
    gamma: the exponent γ > 0 (γ in (−1, 0] is also accepted; γ = 0 is ``polyak``).
    sigma_rel: instead of ``gamma``: the profile's width relative to t (EDM2 uses 0.05-0.10).
    start_step: updates before this one are not folded in (the average follows the params).
    every: fold in every ``every``-th iterate; the decay per fold is exact.
    dtype: the dtype of the stored average.

  Returns:
    A ``PowerEma``.

  References:
    Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models"
    (EDM2), Sec. 3.

  Examples:
    >>> from anytime import averaging
    >>> averaging.power_ema(1.0).weights(3)  # (s^2 − (s−1)^2) / 3^2: 1/9, 3/9, 5/9
    array([0.        , 0.11111111, 0.33333333, 0.55555556])
  """
  if (gamma is None) == (sigma_rel is None):
    raise ValueError("give exactly one of gamma or sigma_rel")
  if sigma_rel is not None:
    gamma = sigma_rel_to_gamma(sigma_rel)
  return PowerEma(gamma=gamma, start_step=start_step, every=every, dtype=dtype)


def polyak(*, start_step: int = 0, every: int = 1, dtype: Any = jnp.float32) -> Polyak:
  """Uniform (Polyak-Ruppert) average of the iterates after ``start_step``.

  Examples:
    >>> from anytime import averaging
    >>> averaging.polyak(start_step=1).weights(3)
    array([0. , 0. , 0.5, 0.5])
  """
  return Polyak(start_step=start_step, every=every, dtype=dtype)


def tail(fraction: float, *, start_step: int = 0, every: int = 1,
         dtype: Any = jnp.float32) -> Tail:
  """Uniform average over roughly the last ``fraction`` of the iterates seen so far.

  Exact tail averages at every t would need every iterate. This keeps two buffers (two copies of
  the params): a reported uniform average A and a younger one B. Once B holds at least
  ``fraction`` of all n iterates, A ← B and B restarts. So A is always the exact uniform average
  of the iterates since its start, and covers between ``fraction`` and ``fraction·(2 − fraction)``
  of the n iterates (up to one iterate of rounding); e.g. 10%-19% for fraction 0.1.

  Examples:
    >>> from anytime import averaging
    >>> int((averaging.tail(0.25).weights(100) > 0).sum())  # iterates in the average
    36
  """
  return Tail(fraction=fraction, start_step=start_step, every=every, dtype=dtype)


def window(every: int, size: int, *, start_step: int = 0, dtype: Any = jnp.float32) -> Window:
  """LAWA / SWA: uniform average of the last ``size`` snapshots, one every ``every`` steps.

  Keeps ``size`` params-shaped copies of the params (a ring buffer), each sharded like the
  params.

  References:
    Izmailov et al. 2018 (SWA); Kaddour 2022 (LAWA); Sanyal et al. 2023.

  Examples:
    >>> from anytime import averaging
    >>> averaging.window(2, 2).weights(6)
    array([0. , 0. , 0. , 0. , 0.5, 0. , 0.5])
  """
  return Window(every=every, size=size, start_step=start_step, dtype=dtype)


def from_config(config: Mapping[str, Any]) -> Average:
  """Builds an average from ``{"kind": "anytime_ema", "factor": 25.0, ...}`` (or a ConfigDict).

  The inverse of ``Average.to_config``. ``power_ema`` also accepts ``sigma_rel``.

  Examples:
    >>> from anytime import averaging
    >>> averaging.from_config({"kind": "window", "every": 2, "size": 3})
    Window(start_step=0, every=2, dtype=dtype('float32'), size=3)
  """
  config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  kind = config.pop("kind", None)
  if kind not in REGISTRY:
    raise ValueError(f"averages.<name>.kind must be one of {KINDS}, got {kind!r}")
  if kind == "power_ema" and "sigma_rel" in config:
    config["gamma"] = sigma_rel_to_gamma(config.pop("sigma_rel"))
  try:
    return REGISTRY[kind](**config)
  except TypeError as e:
    raise ValueError(f"averages.<name> of kind {kind!r}: {e}") from None
