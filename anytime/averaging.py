"""Weight averages kept in the optimizer state: an optax wrapper and a pure-function form.

``with_averages(inner, averages={...})`` wraps any ``optax.GradientTransformation``. After each
update it folds the *parameters after the update*, ``w_t = params + updates``, into one or more
named averages that live in the optimizer state, each a params-shaped tree (so the params'
shardings and partitioning metadata apply leaf by leaf). Everything happens inside the jitted
step: no host sync, dtypes stable.

Kinds (t counts the updates since the average's ``start_step``: t = 1 for the first one). Each
kind is one frozen dataclass that owns its state (``init``/``update``/``read``), its weight
profile over the iterates (``weights``) and its config (``to_config``/``from_config``)::

  ``ema(decay)``            w̄ ← decay·w̄ + (1−decay)·w_t, optional bias correction.
  ``anytime_ema(f)``        decay_t = 2^(−f/(t+1)): half-life ≈ t/f grows with t
                            (Meterez et al. 2026; their EMA-25 is f = 25).
  ``power_ema(gamma)``      decay_t = (1 − 1/t)^(γ+1): w̄_t ∝ Σ_s s^γ w_s (Karras et al. 2024, EDM2).
  ``polyak(start_step)``    uniform average of every iterate after ``start_step``.
  ``tail(fraction)``        uniform average over roughly the last ``fraction`` of the iterates.
  ``window(every, size)``   LAWA / SWA: uniform average of the last ``size`` snapshots taken every
                            ``every`` steps (Kaddour 2022; Sanyal et al. 2023; Izmailov et al. 2018).

Common options: ``dtype`` of the stored average (float32 default; bfloat16 halves memory but
drops increments below bf16 resolution), ``start_step`` (before it the average follows the raw
params, as it does until its first fold), ``every`` (fold in only every k-th iterate). Integer
and boolean leaves are not averaged: the average holds their value at the last fold.

Composition contract: ``with_averages`` must see the updates that are actually applied, so it is
the outermost transformation that changes updates (clipping *before* it is fine:
``optax.chain(clip, with_averages(adamw, ...))``), and gradient accumulation wraps it:
``optax.MultiSteps(with_averages(tx, ...), k)``. ``with_averages(MultiSteps(...))`` is refused
at ``init``. Nothing after it may change the updates: ``optax.chain(with_averages(tx),
optax.scale(0.5))`` would average params that were never applied (write
``with_averages(optax.chain(tx, optax.scale(0.5)), ...)``). A runtime check is not possible
without a second copy of the params: XLA may fuse ``params + updates`` differently inside and
outside the step, so even an exact fingerprint of the applied params differs in the last bit.

Example:

  >>> import jax.numpy as jnp, optax
  >>> from anytime import averaging, schedules
  >>> tx = averaging.with_averages(
  ...     optax.adamw(schedules.inverse_sqrt(1e-3, offset=10)),
  ...     averages={"ema_25": averaging.anytime_ema(25.0), "polyak": averaging.polyak()})
  >>> params = {"w": jnp.ones(3)}
  >>> opt_state = tx.init(params)
  >>> updates, opt_state = tx.update({"w": jnp.ones(3)}, opt_state, params)
  >>> params = optax.apply_updates(params, updates)
  >>> sorted(averaging.eval_params(opt_state, params))
  ['ema_25', 'polyak', 'raw']
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "Average", "Ema", "AnytimeEma", "PowerEma", "Polyak", "Tail", "Window", "KINDS", "REGISTRY",
    "ema", "anytime_ema", "power_ema", "polyak", "tail", "window", "from_config",
    "gamma_to_sigma_rel", "sigma_rel_to_gamma",
    "AverageState", "TailState", "WindowState", "AveragesState", "WithAveragesState",
    "init_averages", "update_averages", "with_averages",
    "average_names", "averaged_params", "eval_params",
]

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


# --------------------------------------------------------------------------- states


class AverageState(NamedTuple):
  """State of an ema / anytime_ema / power_ema / polyak average."""

  params: Any  # the average: the params' tree, in the average's dtype (ints: latest value).
  count: jax.Array  # int32 []: iterates folded in so far.


class TailState(NamedTuple):
  """State of a ``tail`` average: the reported buffer A and the younger buffer B."""

  params: Any  # A, the reported uniform average: the params' tree, in the average's dtype.
  count: jax.Array  # int32 []: iterates in A.
  younger: Any  # B: the params' tree, in the average's dtype.
  younger_count: jax.Array  # int32 []: iterates in B.
  total: jax.Array  # int32 []: iterates folded in since start_step.


class WindowState(NamedTuple):
  """State of a ``window`` (LAWA/SWA) average."""

  snapshots: tuple  # ``size`` params-shaped trees (a ring buffer), in the average's dtype.
  count: jax.Array  # int32 []: snapshots taken so far.


# --------------------------------------------------------------------------- helpers


def _is_float(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.floating)


def _cast(tree, dtype):
  """A copy of ``tree`` with float leaves in ``dtype``; other leaves keep theirs."""
  return jax.tree.map(
      lambda x: jnp.array(x, dtype=dtype if _is_float(x) else x.dtype, copy=True), tree)


def _zero_count():
  return jnp.zeros([], jnp.int32)


def _mix(average, new, rate):
  """(1 − rate)·average + rate·new in float32, stored in the average's dtype; ints take new."""

  def mix(a, w):
    if not _is_float(a):
      return w.astype(a.dtype)
    a32 = a.astype(jnp.float32)
    return (a32 + rate * (w.astype(jnp.float32) - a32)).astype(a.dtype)

  return jax.tree.map(mix, average, new)


def _select(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b.astype(a.dtype)), on_true, on_false)


def _check_int(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not float(value).is_integer() or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _profile_from_rates(rates: np.ndarray) -> np.ndarray:
  """Weights of iterates 0..t of w̄_k = (1 − ρ_k) w̄_{k−1} + ρ_k w_k, w̄_0 = w_0."""
  kept = np.concatenate([np.cumprod((1.0 - rates)[::-1])[::-1][1:], [1.0]])
  return np.concatenate([[np.prod(1.0 - rates)], rates * kept])


# --------------------------------------------------------------------------- kinds


@dataclasses.dataclass(frozen=True, kw_only=True)
class Average:
  """What one average computes: its state, its update, its weight profile and its config.

  Build one with ``ema``, ``anytime_ema``, ``power_ema``, ``polyak``, ``tail``, ``window`` or
  ``from_config``. A new kind subclasses this, sets ``kind``, implements ``_fold_rate`` (or
  ``init``/``update``/``read``/``weights`` for a state of its own) and adds itself to
  ``REGISTRY``.
  """

  kind: ClassVar[str] = ""
  start_step: int = 0
  every: int = 1
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_int("start_step", self.start_step, 0)
    _check_int("every", self.every, 1)
    try:
      dtype = jnp.dtype(self.dtype)
    except TypeError:
      dtype = None
    if dtype is None or dtype.name not in _FLOAT_DTYPES:
      raise ValueError(f"dtype must be a floating dtype {_FLOAT_DTYPES}, got {self.dtype!r}")
    object.__setattr__(self, "dtype", dtype)
    object.__setattr__(self, "start_step", int(self.start_step))
    object.__setattr__(self, "every", int(self.every))

  # ------------------------------------------------------------------ state (jax)

  def init(self, params) -> Any:
    """The state before any update: the average equals ``params``."""
    return AverageState(_cast(params, self.dtype), _zero_count())

  def _fold(self, step):
    t = step - self.start_step
    return t, (t >= 1) & (jnp.mod(t, self.every) == 0)

  def update(self, state, params, step: jax.Array) -> Any:
    """Folds ``params`` (the iterate after update number ``step``, int32 []) into ``state``."""
    t, fold = self._fold(step)
    count = state.count + fold.astype(jnp.int32)
    rate = self._fold_rate(jnp.maximum(t, 1), jnp.maximum(count, 1), jnp)
    mixed = _mix(state.params, params, rate)
    averaged = _select(fold, mixed, state.params)
    # Until the first fold the average follows the raw params.
    return AverageState(_select(count > 0, averaged, _cast(params, self.dtype)), count)

  def read(self, state) -> Any:
    """The averaged params held by ``state`` (in the average's dtype)."""
    return state.params

  # ------------------------------------------------------------------ profile (numpy)

  def _fold_rate(self, t, count, xp):
    """ρ of w̄ ← (1 − ρ) w̄ + ρ w at a fold, t >= 1 steps since start, count >= 1 folds."""
    raise NotImplementedError(f"{type(self).__name__} is not a one-rate recursion")

  def rates(self, num_steps: int) -> np.ndarray:
    """ρ_k of w̄_k = (1 − ρ_k) w̄_{k−1} + ρ_k w_k for updates k = 1..num_steps, float64.

    ρ_k = 1 where the average follows the raw params (before its first fold) and 0 on the steps
    it skips (``every`` > 1). Raises ``NotImplementedError`` for kinds that are not one
    recursion (``tail``, ``window``): use ``weights``.
    """
    num_steps = _check_int("num_steps", num_steps, 1)
    step = np.arange(1, num_steps + 1)
    t = step - self.start_step
    fold = (t >= 1) & (np.mod(t, self.every) == 0)
    count = np.cumsum(fold)
    rate = np.asarray(self._fold_rate(np.maximum(t, 1).astype(np.float64),
                                      np.maximum(count, 1).astype(np.float64), np),
                      np.float64) * np.ones(num_steps)
    return np.where(count == 0, 1.0, np.where(fold, rate, 0.0))

  def weights(self, t: int) -> np.ndarray:
    """The weights of iterates w_0..w_t in the average after ``t`` updates, float64 [t + 1].

    They sum to one; w_0 is the initial params.
    """
    t = _check_int("t", t, 0)
    if t == 0:
      return np.ones(1)
    return _profile_from_rates(self.rates(t))

  def log_profile_terms(self, n: int) -> np.ndarray:
    """log q(s), s = 1..n, for kinds whose profile after t updates is q(s) / Σ_{s'<=t} q(s').

    Post-hoc reconstruction (``anytime.posthoc``) needs this form; kinds without it raise.
    """
    raise ValueError(f"kind must be one of ('power_ema', 'anytime_ema') with every=1 for a "
                     f"post-hoc profile, got {self.kind!r}")

  # ------------------------------------------------------------------ config

  def to_config(self) -> dict[str, Any]:
    """A JSON-able dict that ``from_config`` turns back into this average."""
    out = {"kind": self.kind}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      out[field.name] = value.name if field.name == "dtype" else value
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ema(Average):
  """EMA with a fixed ``decay``; see ``ema``."""

  kind: ClassVar[str] = "ema"
  decay: float
  debias: bool = True

  def __post_init__(self):
    super().__post_init__()
    if not 0.0 <= self.decay < 1.0:
      raise ValueError(f"decay must be in [0, 1), got {self.decay!r}")
    object.__setattr__(self, "decay", float(self.decay))
    object.__setattr__(self, "debias", bool(self.debias))

  def _fold_rate(self, t, count, xp):
    kept = self.decay ** self.every
    if self.debias:  # Adam-style: divide by the total weight 1 − kept^count.
      return (1.0 - kept) / xp.maximum(1.0 - kept ** count, 1e-30)
    return xp.asarray(1.0 - kept, xp.float32) if xp is jnp else 1.0 - kept


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnytimeEma(Average):
  """EMA with decay_t = 2^(−factor/(t+1)); see ``anytime_ema``."""

  kind: ClassVar[str] = "anytime_ema"
  factor: float

  def __post_init__(self):
    super().__post_init__()
    if not self.factor > 0 or not math.isfinite(self.factor):
      raise ValueError(f"factor must be a positive finite number, got {self.factor!r}")
    object.__setattr__(self, "factor", float(self.factor))

  def _fold_rate(self, t, count, xp):
    e = float(self.every)
    # Π_{j=t−e+1..t} 2^(−f/(j+1)); for e > 1 the harmonic sum is taken at its midpoint,
    # accurate to O((e/t)^3) relative to the exact product.
    harmonic = 1.0 / (t + 1.0) if self.every == 1 else e / (t + 1.0 - (e - 1.0) / 2.0)
    return xp.where(count == 1, 1.0, 1.0 - xp.exp2(-self.factor * harmonic))

  def log_profile_terms(self, n: int) -> np.ndarray:
    if self.every != 1:
      return super().log_profile_terms(n)
    t = np.arange(1, n + 1, dtype=np.float64)
    rate = self.factor * math.log(2.0)  # survival at count t is exp(−rate / (t + 1))
    partial = np.cumsum(1.0 / (t + 1.0))  # Σ_{j=1..t} 1/(j+1)
    with np.errstate(divide="ignore"):
      log_w = np.log(-np.expm1(-rate / (t + 1.0))) + rate * partial
    log_w[0] = rate * partial[0]  # the first fold copies the iterate (rate 1)
    return log_w


@dataclasses.dataclass(frozen=True, kw_only=True)
class PowerEma(Average):
  """Power-function EMA, decay_t = (1 − 1/t)^(γ+1); see ``power_ema``."""

  kind: ClassVar[str] = "power_ema"
  gamma: float

  def __post_init__(self):
    super().__post_init__()
    if not self.gamma > -1 or not math.isfinite(self.gamma):
      raise ValueError(f"gamma must be a finite number > -1, got {self.gamma!r}")
    object.__setattr__(self, "gamma", float(self.gamma))

  def _fold_rate(self, t, count, xp):
    # Π_{j=t−e+1..t} (1 − 1/j)^(γ+1) = ((t − e)/t)^(γ+1), exactly.
    survival = (xp.maximum(t - float(self.every), 0.0) / t) ** (self.gamma + 1.0)
    return xp.where(count == 1, 1.0, 1.0 - survival)

  def log_profile_terms(self, n: int) -> np.ndarray:
    if self.every != 1:
      return super().log_profile_terms(n)
    t = np.arange(1, n + 1, dtype=np.float64)
    a = self.gamma + 1.0
    with np.errstate(divide="ignore"):
      # s^a − (s−1)^a = s^a · (1 − (1 − 1/s)^a), accurate for all s and a.
      log_w = a * np.log(t) + np.log(-np.expm1(a * np.log1p(-1.0 / t)))
    log_w[0] = 0.0
    return log_w


@dataclasses.dataclass(frozen=True, kw_only=True)
class Polyak(Average):
  """Uniform average of the iterates after ``start_step``; see ``polyak``."""

  kind: ClassVar[str] = "polyak"

  def _fold_rate(self, t, count, xp):
    return 1.0 / count


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tail(Average):
  """Uniform average over about the last ``fraction`` of the iterates; see ``tail``."""

  kind: ClassVar[str] = "tail"
  fraction: float

  def __post_init__(self):
    super().__post_init__()
    if not 0 < self.fraction <= 1:
      raise ValueError(f"fraction must be in (0, 1], got {self.fraction!r}")
    object.__setattr__(self, "fraction", float(self.fraction))

  def init(self, params) -> TailState:
    return TailState(_cast(params, self.dtype), _zero_count(), _cast(params, self.dtype),
                     _zero_count(), _zero_count())

  def update(self, state, params, step):
    _, fold = self._fold(step)
    one = fold.astype(jnp.int32)
    total, count_a, count_b = state.total + one, state.count + one, state.younger_count + one
    mixed_a = _mix(state.params, params, 1.0 / jnp.maximum(count_a, 1).astype(jnp.float32))
    mixed_b = _mix(state.younger, params, 1.0 / jnp.maximum(count_b, 1).astype(jnp.float32))
    switch = fold & (count_b.astype(jnp.float32) >= self.fraction * total.astype(jnp.float32))
    averaged = _select(fold, _select(switch, mixed_b, mixed_a), state.params)
    averaged = _select(total > 0, averaged, _cast(params, self.dtype))
    return TailState(averaged, jnp.where(switch, count_b, count_a),
                     _select(fold, mixed_b, state.younger), jnp.where(switch, 0, count_b), total)

  def weights(self, t: int) -> np.ndarray:
    t = _check_int("t", t, 0)
    out = np.zeros(t + 1)
    a_start = b_start = None  # first iterate of A and of B
    total = count_b = 0
    for step in range(1, t + 1):
      s = step - self.start_step
      if s >= 1 and s % self.every == 0:
        total += 1
        count_b += 1
        a_start = step if a_start is None else a_start
        b_start = step if b_start is None else b_start
        if count_b >= self.fraction * total:
          a_start, b_start, count_b = b_start, None, 0
    if a_start is None:
      out[t] = 1.0
      return out
    folded = [k for k in range(a_start, t + 1)
              if (k - self.start_step) >= 1 and (k - self.start_step) % self.every == 0]
    out[folded] = 1.0 / len(folded)
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Window(Average):
  """LAWA / SWA: the mean of the last ``size`` snapshots; see ``window``."""

  kind: ClassVar[str] = "window"
  size: int

  def __post_init__(self):
    super().__post_init__()
    _check_int("size", self.size, 1)
    object.__setattr__(self, "size", int(self.size))

  def init(self, params) -> WindowState:
    return WindowState(tuple(_cast(params, self.dtype) for _ in range(self.size)), _zero_count())

  def update(self, state, params, step):
    _, fold = self._fold(step)
    count = state.count + fold.astype(jnp.int32)
    slot = jnp.mod(jnp.maximum(count - 1, 0), self.size)
    snapshots = tuple(
        # Slot i takes the new snapshot; before the first one, slot 0 follows the raw params.
        _select((fold & (slot == i)) | ((count == 0) & (i == 0)), _cast(params, self.dtype),
                buffer)
        for i, buffer in enumerate(state.snapshots))
    return WindowState(snapshots, count)

  def read(self, state):
    n = jnp.clip(state.count, 1, self.size)

    latest = jnp.mod(jnp.maximum(state.count - 1, 0), self.size)

    def mean(*buffers):
      if not _is_float(buffers[0]):  # not averaged: the latest snapshot's value
        return sum(jnp.where(i == latest, b, 0).astype(b.dtype) for i, b in enumerate(buffers))
      total = sum(jnp.where(i < n, b.astype(jnp.float32), 0.0) for i, b in enumerate(buffers))
      return (total / n.astype(jnp.float32)).astype(buffers[0].dtype)

    return jax.tree.map(mean, *state.snapshots)

  def weights(self, t: int) -> np.ndarray:
    t = _check_int("t", t, 0)
    out = np.zeros(t + 1)
    taken = [k for k in range(1, t + 1)
             if (k - self.start_step) >= 1 and (k - self.start_step) % self.every == 0]
    if not taken:
      out[t] = 1.0
      return out
    # The ring buffer keeps the latest ``size`` snapshots.
    out[taken[-self.size:]] = 1.0 / len(taken[-self.size:])
    return out


REGISTRY: dict[str, type[Average]] = {
    cls.kind: cls for cls in (Ema, AnytimeEma, PowerEma, Polyak, Tail, Window)
}
KINDS = tuple(REGISTRY)


# --------------------------------------------------------------------------- builders


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
    >>> from anytime import averaging
    >>> avg = averaging.anytime_ema(25.0)
    >>> avg
    AnytimeEma(start_step=0, every=1, dtype=dtype('float32'), factor=25.0)
    >>> round(float(avg.weights(1000)[-1]), 4)  # the newest iterate's weight
    0.0172
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


# --------------------------------------------------------------------------- pure functions


class AveragesState(NamedTuple):
  """State of ``init_averages`` / ``update_averages``."""

  step: jax.Array  # int32 []: updates folded in so far.
  averages: dict[str, AverageState | TailState | WindowState]


def _check_averages(averages: Mapping[str, Average]) -> dict[str, Average]:
  if not isinstance(averages, Mapping) or not averages:
    raise ValueError("averages must be a non-empty mapping of name -> Average")
  for name, spec in averages.items():
    if not isinstance(name, str) or not name:
      raise ValueError(f"averages: names must be non-empty strings, got {name!r}")
    if not isinstance(spec, Average):
      raise ValueError(f"averages[{name!r}] must be an Average (use averaging.ema(...) etc.), "
                       f"got {type(spec).__name__}")
  return dict(averages)


def init_averages(averages: Mapping[str, Average], params) -> AveragesState:
  """The state of the named ``averages`` of ``params``, for loops without an optax wrapper.

  Examples:
    >>> import jax.numpy as jnp
    >>> from anytime import averaging
    >>> averages = {"polyak": averaging.polyak()}
    >>> state = averaging.init_averages(averages, {"w": jnp.zeros(2)})
    >>> for w in (1.0, 3.0):  # the params after each update
    ...   state = averaging.update_averages(averages, state, {"w": jnp.full(2, w)})
    >>> averaging.averaged_params(state, "polyak")["w"]
    Array([2., 2.], dtype=float32)
  """
  averages = _check_averages(averages)
  return AveragesState(jnp.zeros([], jnp.int32),
                       {name: spec.init(params) for name, spec in averages.items()})


def update_averages(averages: Mapping[str, Average], state: AveragesState,
                    params) -> AveragesState:
  """Folds ``params``, the params *after* an update, into every average of ``state``."""
  step = state.step + 1
  return AveragesState(step, {name: spec.update(state.averages[name], params, step)
                              for name, spec in averages.items()})


# --------------------------------------------------------------------------- optax wrapper


class WithAveragesState(NamedTuple):
  """State of ``with_averages``."""

  inner_state: optax.OptState
  averages: AveragesState

  @property
  def step(self) -> jax.Array:
    """int32 []: updates applied so far."""
    return self.averages.step

  @property
  def hyperparams(self):
    """The inner ``inject_hyperparams`` state's hyperparams (found through chains)."""
    found = _find(self.inner_state, optax.InjectHyperparamsState) or _find(
        self.inner_state, optax.InjectStatefulHyperparamsState)
    if not found:
      raise AttributeError("the inner state has no hyperparams (wrap the inner optimizer in "
                           "optax.inject_hyperparams)")
    return found[0].hyperparams


def with_averages(inner: optax.GradientTransformation,
                  averages: Mapping[str, Average]) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so its state also holds the named ``averages`` of the params.

  Args:
    inner: the optimizer whose updates are applied as they are (nothing after it may change
      them; clipping before it is fine).
    averages: ``{name: Average}``, e.g. ``{"ema_25": anytime_ema(25.0)}``.

  Returns:
    A transformation whose ``update`` needs ``params``. For gradient accumulation nest it as
    ``optax.MultiSteps(with_averages(tx, ...), k)`` so only real updates are averaged; the other
    order is refused.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from anytime import averaging
    >>> tx = averaging.with_averages(optax.sgd(0.5), {"polyak": averaging.polyak()})
    >>> params = {"w": jnp.array([2.0])}
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params["w"], averaging.averaged_params(state, "polyak")["w"]  # iterates 1.5, 1.0
    (Array([1.], dtype=float32), Array([1.25], dtype=float32))
  """
  averages = _check_averages(averages)
  if isinstance(inner, optax.MultiSteps):
    raise ValueError(_MULTISTEPS_ORDER)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    inner_state = inner.init(params)
    if _find(inner_state, optax.MultiStepsState):
      raise ValueError(_MULTISTEPS_ORDER)
    return WithAveragesState(inner_state, init_averages(averages, params))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("with_averages needs params in update(updates, state, params)")
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    new_params = optax.apply_updates(params, updates)
    return updates, WithAveragesState(
        inner_state, update_averages(averages, state.averages, new_params))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_MULTISTEPS_ORDER = (
    "with_averages(MultiSteps(tx)) would average every micro-step; nest it the other way: "
    "optax.MultiSteps(with_averages(tx, averages), every_k_schedule=k)")


# --------------------------------------------------------------------------- reading


def _find(opt_state, cls) -> list:
  return [
      x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, cls))
      if isinstance(x, cls)
  ]


def _holders(opt_state) -> list:
  """Every ``WithAveragesState`` or bare ``AveragesState`` in ``opt_state``."""
  if isinstance(opt_state, (WithAveragesState, AveragesState)):
    return [opt_state]
  return _find(opt_state, (WithAveragesState, AveragesState))


def _all_averages(holder) -> dict:
  return (holder.averages.averages if isinstance(holder, WithAveragesState)
          else holder.averages)


def average_names(opt_state: optax.OptState) -> list[str]:
  """Names of the averages held anywhere in ``opt_state`` (chain, inject_hyperparams, ...)."""
  return [name for holder in _holders(opt_state) for name in _all_averages(holder)]


def averaged_params(opt_state: optax.OptState, name: str, *, like: Any = None):
  """The average ``name`` found anywhere inside ``opt_state``, as a params tree.

  Args:
    opt_state: a state holding ``with_averages`` (through ``optax.chain``,
      ``inject_hyperparams``, ``MultiSteps``, ...) or an ``init_averages`` state. Abstract
      states (``jax.eval_shape``) give abstract results.
    name: the average's name.
    like: a params tree (or its abstract tree): the result takes its dtypes and its tree
      structure (e.g. ``nnx.Param`` wrappers). Without it the leaves have the average's dtype.

  Returns:
    The averaged params, with the params' tree structure (and metadata boxes).
  """
  for holder in _holders(opt_state):
    found = _all_averages(holder)
    if name in found:
      state = found[name]
      if isinstance(state, WindowState):
        if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state.count)):
          out = state.snapshots[0]
        else:
          out = Window(size=len(state.snapshots)).read(state)
      else:
        out = state.params
      return out if like is None else _like(out, like)
  raise KeyError(f"no average named {name!r}; the state holds {average_names(opt_state)}")


def _like(tree, like):
  """``tree``'s leaves in ``like``'s dtypes and tree structure (e.g. NNX Param wrappers)."""
  leaves, like_leaves = jax.tree.leaves(tree), jax.tree.leaves(like)
  if len(leaves) != len(like_leaves):
    raise ValueError(f"like must have the params' leaves ({len(leaves)}), got {len(like_leaves)}")

  def cast(x, ref):
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, ref.dtype, sharding=x.sharding)
    return x.astype(ref.dtype)

  return jax.tree.unflatten(jax.tree.structure(like),
                            [cast(x, ref) for x, ref in zip(leaves, like_leaves)])


def eval_params(opt_state: optax.OptState, params) -> dict[str, Any]:
  """Every set of weights worth evaluating: ``{"raw": params, <average>: ..., ...}``.

  The averages take the params' dtypes. Includes Schedule-Free's evaluation point
  (``optax.contrib.schedule_free_eval_params``) as ``"schedule_free"`` when the state holds a
  Schedule-Free optimizer, so a trainer can treat every method alike.
  """
  out = {"raw": params}
  from optax import contrib  # pylint: disable=g-import-not-at-top

  free = _find(opt_state, contrib.ScheduleFreeState)
  if free:
    out["schedule_free"] = contrib.schedule_free_eval_params(free[0], params)
  for holder in _holders(opt_state):
    for name in _all_averages(holder):
      out[name] = averaged_params(holder, name, like=params)
  return out
