"""The kinds of average: one frozen dataclass per kind with its state, update, weight profile
and config, and their ``REGISTRY``. Build them with ``anytime.averaging.ema(...)`` etc."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


# --------------------------------------------------------------------------- states


class AverageState(NamedTuple):
  """State of an ema / anytime_ema / power_ema / polyak average."""

  params: Any  # the average: the params' tree, in the average's dtype (ints: latest value).
  count: jax.Array  # int32 []: iterates folded in so far.
  start: jax.Array  # int32 []: the step it started at (0; on a resume that added it, that step).
  next_rate: jax.Array  # float32 []: the rate that folding the next iterate would use (0: skipped).


class TailState(NamedTuple):
  """State of a ``tail`` average: the reported buffer A and the younger buffer B."""

  params: Any  # A, the reported uniform average: the params' tree, in the average's dtype.
  count: jax.Array  # int32 []: iterates in A.
  younger: Any  # B: the params' tree, in the average's dtype.
  younger_count: jax.Array  # int32 []: iterates in B.
  total: jax.Array  # int32 []: iterates folded in since start_step.
  start: jax.Array  # int32 []: the step it started at (0; on a resume that added it, that step).
  next_fold: jax.Array  # bool []: the next iterate is folded in.
  next_switch: jax.Array  # bool []: ... and then A takes B's place.


class WindowState(NamedTuple):
  """State of a ``window`` (LAWA/SWA) average."""

  snapshots: tuple  # ``size`` params-shaped trees (a ring buffer), in the average's dtype.
  count: jax.Array  # int32 []: snapshots taken so far.
  start: jax.Array  # int32 []: the step it started at (0; on a resume that added it, that step).
  next_fold: jax.Array  # bool []: the next iterate is a snapshot.


# --------------------------------------------------------------------------- helpers


def _is_float(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.floating)


def _cast(tree, dtype):
  """A copy of ``tree`` with float leaves in ``dtype``; other leaves keep theirs."""
  return jax.tree.map(
      lambda x: jnp.array(x, dtype=dtype if _is_float(x) else x.dtype, copy=True), tree)


def _cast_like(tree, like):
  """``tree``'s leaves in the dtypes of ``like``'s leaves."""
  return jax.tree.map(lambda x, ref: x.astype(ref.dtype), tree, like)


def _zero_count():
  return jnp.zeros([], jnp.int32)


def _start(start) -> jax.Array:
  return jnp.asarray(start, jnp.int32)


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

  def init(self, params, start: int | jax.Array = 0) -> Any:
    """The state before any update: the average equals ``params``.

    ``start``: the step this average starts at (a resume that adds an average starts it at the
    restored step); it folds the iterates after ``max(start, start_step)``.
    """
    state = AverageState(_cast(params, self.dtype), _zero_count(), _start(start),
                         jnp.zeros([], jnp.float32))
    return state._replace(next_rate=self._next_rate(state, state.start + 1))

  def _next_rate(self, state, step):
    t, fold = self._fold(step, state)
    rate = self._fold_rate(jnp.maximum(t, 1), jnp.maximum(state.count + 1, 1), jnp)
    follow = (state.count == 0).astype(jnp.float32)  # before its first fold: the raw params
    return jnp.where(fold, rate, follow).astype(jnp.float32)

  def _fold(self, step, state):
    t = step - jnp.maximum(self.start_step, state.start)
    return t, (t >= 1) & (jnp.mod(t, self.every) == 0)

  def update(self, state, params, step: jax.Array, active: Any = True) -> Any:
    """Folds ``params`` (the iterate after update number ``step``, int32 []) into ``state``;
    with ``active`` False (bool []) nothing is folded (a skipped update)."""
    t, fold = self._fold(step, state)
    fold = fold & active
    count = state.count + fold.astype(jnp.int32)
    rate = self._fold_rate(jnp.maximum(t, 1), jnp.maximum(count, 1), jnp)
    mixed = _mix(state.params, params, rate)
    averaged = _select(fold, mixed, state.params)
    # Until the first fold the average follows the raw params.
    new = AverageState(_select(count > 0, averaged, _cast(params, self.dtype)), count,
                       state.start, state.next_rate)
    return new._replace(next_rate=self._next_rate(new, step + 1))

  @staticmethod
  def read_pending(state, params) -> Any:
    """The average with ``params`` (the next iterate, not folded yet) folded in."""
    return _mix(state.params, params, state.next_rate)

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
    # The decays of the skipped steps multiplied exactly: Π_{j=t−e+1..t} 2^(−f/(j+1)).
    harmonic = sum(1.0 / xp.maximum(t + 1.0 - i, 1.0) for i in range(self.every))
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

  def init(self, params, start: int | jax.Array = 0) -> TailState:
    state = TailState(_cast(params, self.dtype), _zero_count(), _cast(params, self.dtype),
                      _zero_count(), _zero_count(), _start(start), jnp.zeros([], bool),
                      jnp.zeros([], bool))
    return self._peek(state, state.start + 1)

  def _peek(self, state, step):
    _, fold = self._fold(step, state)
    switch = fold & ((state.younger_count + 1).astype(jnp.float32)
                     >= self.fraction * (state.total + 1).astype(jnp.float32))
    return state._replace(next_fold=fold, next_switch=switch)

  def update(self, state, params, step, active: Any = True):
    _, fold = self._fold(step, state)
    fold = fold & active
    one = fold.astype(jnp.int32)
    total, count_a, count_b = state.total + one, state.count + one, state.younger_count + one
    mixed_a = _mix(state.params, params, 1.0 / jnp.maximum(count_a, 1).astype(jnp.float32))
    mixed_b = _mix(state.younger, params, 1.0 / jnp.maximum(count_b, 1).astype(jnp.float32))
    switch = fold & (count_b.astype(jnp.float32) >= self.fraction * total.astype(jnp.float32))
    averaged = _select(fold, _select(switch, mixed_b, mixed_a), state.params)
    averaged = _select(total > 0, averaged, _cast(params, self.dtype))
    new = TailState(averaged, jnp.where(switch, count_b, count_a),
                     _select(fold, mixed_b, state.younger), jnp.where(switch, 0, count_b), total,
                     state.start, state.next_fold, state.next_switch)
    return self._peek(new, step + 1)

  @staticmethod
  def read_pending(state, params):
    fold = state.next_fold
    mixed_a = _mix(state.params, params, 1.0 / (state.count + 1).astype(jnp.float32))
    mixed_b = _mix(state.younger, params, 1.0 / (state.younger_count + 1).astype(jnp.float32))
    out = _select(fold, _select(state.next_switch, mixed_b, mixed_a), state.params)
    return _select(fold | (state.total > 0), out, _cast_like(params, state.params))

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

  def init(self, params, start: int | jax.Array = 0) -> WindowState:
    state = WindowState(tuple(_cast(params, self.dtype) for _ in range(self.size)),
                        _zero_count(), _start(start), jnp.zeros([], bool))
    return state._replace(next_fold=self._fold(state.start + 1, state)[1])

  def update(self, state, params, step, active: Any = True):
    _, fold = self._fold(step, state)
    fold = fold & active
    count = state.count + fold.astype(jnp.int32)
    slot = jnp.mod(jnp.maximum(count - 1, 0), self.size)
    snapshots = tuple(
        # Slot i takes the new snapshot; before the first one, slot 0 follows the raw params.
        _select((fold & (slot == i)) | ((count == 0) & (i == 0)), _cast(params, self.dtype),
                buffer)
        for i, buffer in enumerate(state.snapshots))
    new = WindowState(snapshots, count, state.start, state.next_fold)
    return new._replace(next_fold=self._fold(step + 1, new)[1])

  @classmethod
  def read_pending(cls, state, params):
    size = len(state.snapshots)
    window = cls(size=size)
    # The same buffers with the next snapshot written (or, before the first, slot 0 = params).
    count = state.count + state.next_fold.astype(jnp.int32)
    slot = jnp.mod(jnp.maximum(count - 1, 0), size)
    snapshots = tuple(
        _select((state.next_fold & (slot == i)) | ((count == 0) & (i == 0)),
                _cast_like(params, buffer), buffer)
        for i, buffer in enumerate(state.snapshots))
    return window.read(WindowState(snapshots, count, state.start, state.next_fold))

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
