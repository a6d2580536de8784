"""Learning-rate schedules: pure ``step -> learning rate`` functions (``optax.Schedule``).

Horizon-free ("anytime") schedules need no total step count: ``constant``, ``inverse_sqrt`` and
``polynomial_decay``. Horizon-bound ones need it: ``cosine``, ``linear``, ``wsd``. A cooldown can
be started from any step of any main schedule with ``decay_branch``, which is how WSD decay
branches and WSD-S (``wsd_s``) are built.

Every schedule takes ``peak_value`` and an optional linear warmup from
``warmup_init_fraction * peak_value`` to ``peak_value`` over ``warmup_steps`` steps. All are
jit-able (``jax.jit(schedule)``, any number of times), picklable with the standard ``pickle``, and
print their arguments. A step is a Python int or an integer/float array: a concrete negative step
raises ``ValueError``; a traced one (inside ``jit``/``vmap``) cannot raise and is clamped to 0.
Only jax + optax are imported.

References::

  Meterez et al. 2026, "Anytime pretraining: horizon-free learning-rate schedules with weight
    averaging" (arXiv 2602.03702).
  Hu et al. 2024, "MiniCPM" (WSD schedule, exponential cooldown).
  Hägele et al. 2024, "Scaling laws and compute-optimal training beyond fixed training
    durations" (1-sqrt cooldown).
  Wen et al. 2024, "Understanding warmup-stable-decay learning rates: a river valley loss
    landscape perspective" (WSD-S).
  Loshchilov & Hutter 2017, "SGDR: stochastic gradient descent with warm restarts".
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "Schedule", "NamedSchedule", "COOLDOWN_SHAPES", "SCHEDULES", "constant", "polynomial_decay",
    "inverse_sqrt", "anytime_exponent", "cosine", "linear", "cooldown_multiplier",
    "cooldown_length", "decay_branch", "wsd", "wsd_s", "cyclic_cosine", "from_config",
]

Schedule = optax.Schedule

COOLDOWN_SHAPES = ("linear", "1-sqrt", "cosine", "exponential", "square")


# --------------------------------------------------------------------------- validation


def _check_nonnegative_int(name: str, value: Any) -> int:
  if isinstance(value, bool) or not float(value).is_integer() or value < 0:
    raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
  return int(value)


def _check_positive_int(name: str, value: Any) -> int:
  value = _check_nonnegative_int(name, value)
  if value == 0:
    raise ValueError(f"{name} must be a positive integer, got 0")
  return value


def _check_fraction(name: str, value: Any, *, open_right: bool = False) -> float:
  value = float(value)
  if not (0.0 <= value < 1.0 if open_right else 0.0 <= value <= 1.0):
    accepted = "[0, 1)" if open_right else "[0, 1]"
    raise ValueError(f"{name} must be in {accepted}, got {value!r}")
  return value


def _check_positive(name: str, value: Any) -> float:
  value = float(value)
  if not value > 0 or not math.isfinite(value):
    raise ValueError(f"{name} must be a positive finite number, got {value!r}")
  return value


def _check_shape(shape: str) -> str:
  if shape not in COOLDOWN_SHAPES:
    raise ValueError(f"shape must be one of {COOLDOWN_SHAPES}, got {shape!r}")
  return shape


# --------------------------------------------------------------------------- parts
#
# Every schedule is built from these module-level callables (no closures), so a schedule pickles
# with the standard ``pickle`` (multiprocessing, Ray, submitit) and prints what it holds.


@dataclasses.dataclass(frozen=True, eq=False)
class _Constant:
  value: float

  def __call__(self, step):
    return jnp.broadcast_to(jnp.asarray(self.value, jnp.float32), jnp.shape(step))


@dataclasses.dataclass(frozen=True, eq=False)
class _Linear:
  """optax.linear_schedule's formula: from ``init`` to ``end`` over ``steps`` steps."""
  init: float
  end: float
  steps: int

  def __call__(self, step):
    count = jnp.clip(step, 0, self.steps)
    return (self.init - self.end) * (1 - count / self.steps) + self.end


@dataclasses.dataclass(frozen=True, eq=False)
class _Cosine:
  """optax.cosine_decay_schedule's formula: ``init`` to ``alpha * init`` over ``steps``."""
  init: float
  steps: int
  alpha: float

  def __call__(self, step):
    count = jnp.minimum(step, self.steps)
    decay = 0.5 * (1 + jnp.cos(jnp.pi * count / self.steps))
    return self.init * ((1 - self.alpha) * decay + self.alpha)


@dataclasses.dataclass(frozen=True, eq=False)
class _Polynomial:
  peak: float
  exponent: float
  offset: float

  def __call__(self, step):
    s = jnp.maximum(jnp.asarray(step, jnp.float32), 0.0)
    return self.peak * (self.offset / (s + self.offset)) ** self.exponent


@dataclasses.dataclass(frozen=True, eq=False)
class _Cyclic:
  cycle: _Cosine
  cycle_steps: int

  def __call__(self, step):
    return self.cycle(jnp.mod(jnp.asarray(step), self.cycle_steps))


@dataclasses.dataclass(frozen=True, eq=False)
class _Warmup:
  """``warmup(step)`` before ``steps``, then ``body(step - steps)`` (optax.join_schedules)."""
  warmup: Callable
  body: Callable
  steps: int

  def __call__(self, step):
    return jnp.where(step < self.steps, self.warmup(step), self.body(step - self.steps))


@dataclasses.dataclass(frozen=True, eq=False)
class _Branch:
  """``main`` before ``branch_step``; then a cooldown from ``start_value``."""
  main: Callable
  branch_step: int
  cooldown_steps: int
  shape: str
  final_fraction: float
  start_value: float

  def __call__(self, step):
    step = jnp.asarray(step)
    progress = (step.astype(jnp.float32) - self.branch_step) / self.cooldown_steps
    cooled = self.start_value * cooldown_multiplier(progress, self.shape, self.final_fraction)
    return jnp.where(step < self.branch_step, self.main(step), cooled)


@dataclasses.dataclass(frozen=True, eq=False)
class _WsdS:
  warm: Callable
  peak_value: float
  ends: tuple
  cooldown_steps: int
  shape: str
  final_fraction: float
  rewarmup_steps: int

  def __call__(self, step):
    step = jnp.asarray(step)
    lr = self.warm(step)
    final_value = self.final_fraction * self.peak_value
    for end in self.ends:
      progress = (step.astype(jnp.float32) - (end - self.cooldown_steps)) / self.cooldown_steps
      in_decay = (step >= end - self.cooldown_steps) & (step < end)
      lr = jnp.where(in_decay, self.peak_value * cooldown_multiplier(
          progress, self.shape, self.final_fraction), lr)
      if self.rewarmup_steps:
        ramp = final_value + (self.peak_value - final_value) * (step - end) / self.rewarmup_steps
        lr = jnp.where((step >= end) & (step < end + self.rewarmup_steps), ramp, lr)
    return lr


def _is_traced(step) -> bool:
  return isinstance(step, jax.core.Tracer)


@dataclasses.dataclass(frozen=True, eq=False)
class _NonNegativeStep:
  """Refuses a concrete negative step (int, NumPy or jax array: ``ValueError``); a traced step
  (inside ``jit``/``vmap``) cannot raise, so it is clamped to 0 there."""
  body: Callable

  def __call__(self, step):
    if _is_traced(step):
      return self.body(jnp.maximum(jnp.asarray(step), 0))
    concrete = np.asarray(step)
    if concrete.size and concrete.min() < 0:
      raise ValueError(f"step must be >= 0, got {step!r}")
    return self.body(jnp.asarray(step))


def _with_warmup(
    body: Schedule, peak_value: float, warmup_steps: int, warmup_init_fraction: float
) -> Schedule:
  """Linear warmup to ``peak_value``, then ``body(step - warmup_steps)``."""
  warmup_steps = _check_nonnegative_int("warmup_steps", warmup_steps)
  warmup_init_fraction = _check_fraction("warmup_init_fraction", warmup_init_fraction)
  if warmup_steps == 0:
    return _NonNegativeStep(body)
  warmup = _Linear(warmup_init_fraction * peak_value, peak_value, warmup_steps)
  return _NonNegativeStep(_Warmup(warmup, body, warmup_steps))


class NamedSchedule:
  """An ``optax.Schedule`` that says what it is: ``inverse_sqrt(peak_value=0.001, ...)``.

  Calling it is calling the schedule; ``jax.jit(schedule)`` works (any number of times), and
  it pickles with the standard ``pickle`` when what it wraps does (every schedule of this
  module does). Equality and hashing are by identity, like a function's.

  Steps: a Python/NumPy int or float, or an integer/float array. A concrete negative step
  (also inside a concrete array) raises ``ValueError``; a traced step (inside ``jit`` or
  ``vmap``) cannot raise, and a negative one is clamped to 0.
  """

  __slots__ = ("_fn", "name", "arguments", "__weakref__")

  def __init__(self, fn: Callable[[Any], jax.Array], name: str, arguments: Mapping[str, Any]):
    self._fn = fn
    self.name = name
    self.arguments = dict(arguments)

  def __call__(self, step) -> jax.Array:
    return self._fn(step)

  def __reduce__(self):
    return NamedSchedule, (self._fn, self.name, self.arguments)

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.arguments.items())
    return f"{self.name}({args})"


def _named(factory):
  """Makes ``factory``'s schedules ``NamedSchedule``s carrying its (bound) arguments."""
  signature = inspect.signature(factory)

  @functools.wraps(factory)
  def build(*args, **kwargs):
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return NamedSchedule(factory(*args, **kwargs), factory.__name__, bound.arguments)

  return build


# --------------------------------------------------------------------------- horizon-free


@_named
def constant(
    peak_value: float, *, warmup_steps: int = 0, warmup_init_fraction: float = 0.0
) -> Schedule:
  """Constant learning rate after an optional linear warmup.

  Args:
    peak_value: the learning rate after warmup (> 0).
    warmup_steps: length of the linear warmup (0: none).
    warmup_init_fraction: the warmup starts at this fraction of ``peak_value``.

  Returns:
    A ``NamedSchedule`` (an ``optax.Schedule``).

  Examples:
    >>> from anytime import schedules
    >>> lr = schedules.constant(1e-3, warmup_steps=10)
    >>> lr
    constant(peak_value=0.001, warmup_steps=10, warmup_init_fraction=0.0)
    >>> float(lr(5)), float(lr(100))
    (0.0005000000237487257, 0.0010000000474974513)
  """
  peak_value = _check_positive("peak_value", peak_value)
  return _with_warmup(_Constant(peak_value), peak_value, warmup_steps, warmup_init_fraction)


@_named
def polynomial_decay(
    peak_value: float,
    *,
    exponent: float,
    offset: float = 1.0,
    warmup_steps: int = 0,
    warmup_init_fraction: float = 0.0,
) -> Schedule:
  """Shifted polynomial decay ``peak * (offset / (s + offset)) ** exponent``, s = t - warmup.

  Horizon-free for any ``exponent`` in [0, 1). ``offset=1`` is the plain ``(s + 1)^-exponent``;
  the seed paper's LM runs use an offset of about 4x the warmup length. The right exponent for a
  problem of capacity a and source b is ``anytime_exponent(a, b)``.
  """
  peak_value = _check_positive("peak_value", peak_value)
  exponent = _check_fraction("exponent", exponent, open_right=True)
  offset = _check_positive("offset", offset)
  body = _Polynomial(peak_value, exponent, offset)
  return _with_warmup(body, peak_value, warmup_steps, warmup_init_fraction)


@_named
def inverse_sqrt(
    peak_value: float,
    *,
    offset: float = 1.0,
    warmup_steps: int = 0,
    warmup_init_fraction: float = 0.0,
) -> Schedule:
  """Shifted inverse square root ``peak * sqrt(offset / (s + offset))``, s = t - warmup.

  Horizon-free: no total step count. The seed paper's LM runs use ``offset`` of about 4x the
  warmup length.

  Args:
    peak_value: the learning rate at the end of warmup (> 0).
    offset: the shift (> 0) of the decay.
    warmup_steps: length of the linear warmup (0: none).
    warmup_init_fraction: the warmup starts at this fraction of ``peak_value``.

  Returns:
    A ``NamedSchedule`` (an ``optax.Schedule``).

  References:
    Meterez et al. 2026, "Anytime pretraining: horizon-free learning-rate schedules with weight
    averaging" (arXiv 2602.03702).

  Examples:
    >>> from anytime import schedules
    >>> lr = schedules.inverse_sqrt(1e-3, offset=4000)
    >>> lr
    inverse_sqrt(peak_value=0.001, offset=4000, warmup_steps=0, warmup_init_fraction=0.0)
    >>> round(float(lr(12000)), 6)  # sqrt(4000 / 16000) = 1/2
    0.0005
  """
  return polynomial_decay(
      peak_value,
      exponent=0.5,
      offset=offset,
      warmup_steps=warmup_steps,
      warmup_init_fraction=warmup_init_fraction,
  )


def anytime_exponent(capacity: float, source: float) -> float:
  """The optimal decay exponent ``gamma* = max(1 - a/b, 0)`` of an anytime schedule.

  Theory (Meterez et al. 2026): linear regression with a power-law spectrum, eigenvalues
  ``lambda_i ~ i^-a`` (capacity ``a > 1``) and target ``lambda_i (w*_i)^2 ~ i^-b`` (source
  ``b > 1``). One-pass SGD with ``eta_t ~ t^-gamma`` and an average of the iterates reaches the
  minimax rate ``(sigma^2/N)^(1 - 1/b)`` at every N when ``gamma = gamma*``: a constant LR
  (``gamma* = 0``) when b <= a, ``1/sqrt(t)`` when b = 2a.
  """
  capacity = float(capacity)
  source = float(source)
  if not capacity > 1:
    raise ValueError(f"capacity must be > 1, got {capacity!r}")
  if not source > 1:
    raise ValueError(f"source must be > 1, got {source!r}")
  return max(1.0 - capacity / source, 0.0)


# --------------------------------------------------------------------------- horizon-bound


def _decay_to_horizon(make_body, peak_value, total_steps, final_fraction, warmup_steps,
                      warmup_init_fraction) -> Schedule:
  """Warmup, then ``make_body(peak, final_value, decay_steps)`` until ``total_steps``."""
  peak_value = _check_positive("peak_value", peak_value)
  total_steps = _check_positive_int("total_steps", total_steps)
  final_fraction = _check_fraction("final_fraction", final_fraction)
  if warmup_steps >= total_steps:
    raise ValueError(
        f"warmup_steps ({warmup_steps}) must be smaller than total_steps ({total_steps})"
    )
  body = make_body(peak_value, final_fraction, total_steps - warmup_steps)
  return _with_warmup(body, peak_value, warmup_steps, warmup_init_fraction)


@_named
def cosine(
    peak_value: float,
    *,
    total_steps: int,
    final_fraction: float = 0.1,
    warmup_steps: int = 0,
    warmup_init_fraction: float = 0.0,
) -> Schedule:
  """Cosine decay from peak (after warmup) to ``final_fraction * peak`` at ``total_steps``."""
  return _decay_to_horizon(
      lambda peak, fraction, steps: _Cosine(peak, steps, fraction),
      peak_value, total_steps, final_fraction, warmup_steps, warmup_init_fraction)


@_named
def linear(
    peak_value: float,
    *,
    total_steps: int,
    final_fraction: float = 0.0,
    warmup_steps: int = 0,
    warmup_init_fraction: float = 0.0,
) -> Schedule:
  """Linear decay from peak (after warmup) to ``final_fraction * peak`` at ``total_steps``."""
  return _decay_to_horizon(
      lambda peak, fraction, steps: _Linear(peak, fraction * peak, steps),
      peak_value, total_steps, final_fraction, warmup_steps, warmup_init_fraction)


# --------------------------------------------------------------------------- cooldowns


def cooldown_multiplier(progress: jax.Array, shape: str, final_fraction: float) -> jax.Array:
  """Multiplier in [final_fraction, 1] of a cooldown at ``progress`` in [0, 1].

  Examples:
    >>> from anytime import schedules
    >>> round(float(schedules.cooldown_multiplier(0.25, "1-sqrt", 0.0)), 3)
    0.5

  Shapes: ``linear`` 1 - p; ``1-sqrt`` 1 - sqrt(p) (Hägele et al. 2024); ``cosine``
  (1 + cos(pi p)) / 2; ``square`` 1 - p^2; each rescaled to end at ``final_fraction``.
  ``exponential`` is MiniCPM's half-life form ``0.5 ** (p * K / half_life)`` with the half-life
  chosen so the cooldown of K steps ends at ``final_fraction`` (> 0), i.e. ``final_fraction ** p``.
  """
  _check_shape(shape)
  final_fraction = _check_fraction("final_fraction", final_fraction)
  p = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
  if shape == "exponential":
    if final_fraction <= 0:
      raise ValueError("final_fraction must be > 0 for the exponential cooldown shape, got 0")
    return jnp.asarray(final_fraction, jnp.float32) ** p
  decay = {
      "linear": lambda: 1.0 - p,
      "1-sqrt": lambda: 1.0 - jnp.sqrt(p),
      "cosine": lambda: 0.5 * (1.0 + jnp.cos(jnp.pi * p)),
      "square": lambda: 1.0 - p**2,
  }[shape]()
  return final_fraction + (1.0 - final_fraction) * decay


@_named
def decay_branch(
    main_schedule: Schedule,
    branch_step: int,
    cooldown_steps: int,
    shape: str = "linear",
    final_fraction: float = 0.0,
) -> Schedule:
  """The schedule of a decay branch taken from ``main_schedule`` at ``branch_step``.

  Before ``branch_step`` it is the main schedule. From there the LR starts at the main
  schedule's value ``v = main_schedule(branch_step)`` and cools down over ``cooldown_steps``
  steps to ``final_fraction * v`` (for a constant main schedule: a fraction of the peak), then
  stays there. Works from any step of any main schedule, so WSD branches can be started from
  any checkpoint of an anytime run.

  Examples:
    >>> from anytime import schedules
    >>> main = schedules.constant(1.0)
    >>> branch = schedules.decay_branch(main, branch_step=100, cooldown_steps=10)
    >>> [round(float(branch(s)), 2) for s in (99, 100, 105, 110, 200)]
    [1.0, 1.0, 0.5, 0.0, 0.0]
  """
  branch_step = _check_nonnegative_int("branch_step", branch_step)
  cooldown_steps = _check_positive_int("cooldown_steps", cooldown_steps)
  _check_shape(shape)
  final_fraction = _check_fraction("final_fraction", final_fraction)
  cooldown_multiplier(0.0, shape, final_fraction)  # validates shape x final_fraction eagerly.
  start_value = float(main_schedule(branch_step))
  return _NonNegativeStep(_Branch(main_schedule, branch_step, cooldown_steps, shape,
                                  final_fraction, start_value))


def cooldown_length(fraction: float, horizon: int) -> int:
  """The cooldown of a decay that takes ``fraction`` of a run ending at ``horizon``: at least
  one step. (The one place this rule lives: WSD here, decay branches in the trainer.)

  Example:
    >>> from anytime import schedules
    >>> schedules.cooldown_length(0.2, 800), schedules.cooldown_length(0.01, 10)
    (160, 1)
  """
  return max(1, round(fraction * horizon))


@_named
def wsd(
    peak_value: float,
    *,
    total_steps: int,
    cooldown_steps: int | None = None,
    cooldown_fraction: float | None = None,
    shape: str = "linear",
    final_fraction: float = 0.0,
    warmup_steps: int = 0,
    warmup_init_fraction: float = 0.0,
) -> Schedule:
  """Warmup-stable-decay: warmup, constant at peak, cooldown over the last steps.

  Give exactly one of ``cooldown_steps`` (>= 1) or ``cooldown_fraction`` (of ``total_steps``,
  in (0, 1]; 0.1-0.2 is typical; 0 is refused: a WSD without cooldown is ``constant``). The cooldown ends at ``total_steps`` at ``final_fraction * peak``.

  References:
    Hu et al. 2024, "MiniCPM"; Hägele et al. 2024 (1-sqrt cooldown).

  Examples:
    >>> from anytime import schedules
    >>> lr = schedules.wsd(1.0, total_steps=100, cooldown_fraction=0.2)
    >>> [round(float(lr(s)), 2) for s in (0, 79, 80, 90, 100)]
    [1.0, 1.0, 1.0, 0.5, 0.0]
  """
  total_steps = _check_positive_int("total_steps", total_steps)
  if (cooldown_steps is None) == (cooldown_fraction is None):
    raise ValueError("give exactly one of cooldown_steps or cooldown_fraction")
  if cooldown_fraction is not None:
    cooldown_fraction = _check_fraction("cooldown_fraction", cooldown_fraction)
    if cooldown_fraction == 0:
      raise ValueError("cooldown_fraction must be in (0, 1], got 0.0 (no cooldown: use "
                       "schedules.constant)")
    cooldown_steps = cooldown_length(cooldown_fraction, total_steps)
  cooldown_steps = _check_positive_int("cooldown_steps", cooldown_steps)
  if warmup_steps + cooldown_steps > total_steps:
    raise ValueError(
        f"warmup_steps + cooldown_steps ({warmup_steps} + {cooldown_steps}) must not exceed "
        f"total_steps ({total_steps})"
    )
  main = constant(peak_value, warmup_steps=warmup_steps, warmup_init_fraction=warmup_init_fraction)
  return decay_branch(main, total_steps - cooldown_steps, cooldown_steps, shape, final_fraction)


@_named
def wsd_s(
    peak_value: float,
    *,
    decay_ends: Sequence[int],
    cooldown_steps: int,
    shape: str = "linear",
    final_fraction: float = 0.0,
    rewarmup_steps: int = 0,
    warmup_steps: int = 0,
    warmup_init_fraction: float = 0.0,
) -> Schedule:
  """The main-branch schedule of WSD-S (Wen et al. 2024).

  Stable at peak, with a cooldown of ``cooldown_steps`` ending at each step in ``decay_ends``
  (the budgets). After each decay the run continues from the decayed point at peak again:
  immediately (default) or with a linear rewarmup from the decayed LR over ``rewarmup_steps``.
  The LR is constant at peak after the last budget, so the run can go on forever.
  """
  peak_value = _check_positive("peak_value", peak_value)
  cooldown_steps = _check_positive_int("cooldown_steps", cooldown_steps)
  rewarmup_steps = _check_nonnegative_int("rewarmup_steps", rewarmup_steps)
  _check_shape(shape)
  final_fraction = _check_fraction("final_fraction", final_fraction)
  ends = [_check_positive_int("decay_ends[i]", e) for e in decay_ends]
  if not ends or sorted(ends) != ends or len(set(ends)) != len(ends):
    raise ValueError(f"decay_ends must be a non-empty increasing list of steps, got {ends!r}")
  previous_end = warmup_steps
  for end in ends:
    if end - cooldown_steps < previous_end:
      raise ValueError(
          f"decay_ends: the cooldown ending at {end} starts before step {previous_end} "
          f"(the end of warmup or of the previous decay plus rewarmup)"
      )
    previous_end = end + rewarmup_steps
  warm = constant(peak_value, warmup_steps=warmup_steps, warmup_init_fraction=warmup_init_fraction)
  return _NonNegativeStep(_WsdS(warm, peak_value, tuple(ends), cooldown_steps, shape,
                                final_fraction, rewarmup_steps))


@_named
def cyclic_cosine(
    peak_value: float,
    *,
    cycle_steps: int,
    final_fraction: float = 0.1,
    warmup_steps: int = 0,
    warmup_init_fraction: float = 0.0,
) -> Schedule:
  """SGDR-style cosine with warm restarts: cycles of ``cycle_steps`` from peak to a fraction."""
  peak_value = _check_positive("peak_value", peak_value)
  cycle_steps = _check_positive_int("cycle_steps", cycle_steps)
  final_fraction = _check_fraction("final_fraction", final_fraction)
  body = _Cyclic(_Cosine(peak_value, cycle_steps, final_fraction), cycle_steps)
  return _with_warmup(body, peak_value, warmup_steps, warmup_init_fraction)


# --------------------------------------------------------------------------- config

SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": constant,
    "inverse_sqrt": inverse_sqrt,
    "polynomial_decay": polynomial_decay,
    "cosine": cosine,
    "linear": linear,
    "wsd": wsd,
    "wsd_s": wsd_s,
    "cyclic_cosine": cyclic_cosine,
}


def from_config(config: Mapping[str, Any]) -> Schedule:
  """Builds a schedule from a ConfigDict/dict: ``{"name": "cosine", "peak_value": ..., ...}``.

  Every other key is passed to the schedule function of that name; unknown keys are refused.
  A ``decay`` sub-dict ``{"branch_step", "cooldown_steps", "shape", "final_fraction"}`` turns
  the schedule into a ``decay_branch`` of itself.

  Examples:
    >>> from anytime import schedules
    >>> schedules.from_config({"name": "inverse_sqrt", "peak_value": 1e-3, "offset": 4000})
    inverse_sqrt(peak_value=0.001, offset=4000, warmup_steps=0, warmup_init_fraction=0.0)
  """
  config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  name = config.pop("name", None)
  if name not in SCHEDULES:
    raise ValueError(f"schedule.name must be one of {sorted(SCHEDULES)}, got {name!r}")
  decay = config.pop("decay", None)
  fn = SCHEDULES[name]
  accepted = set(inspect.signature(fn).parameters)
  unknown = sorted(set(config) - accepted)
  if unknown:
    raise ValueError(
        f"schedule.{unknown[0]} is not an option of schedule {name!r}; accepted: {sorted(accepted)}"
    )
  missing = [
      p.name
      for p in inspect.signature(fn).parameters.values()
      if p.default is inspect.Parameter.empty and p.name not in config
  ]
  if missing:
    raise ValueError(f"schedule.{missing[0]} is required by schedule {name!r}")
  schedule = fn(**config)
  if decay:
    decay = dict(decay)
    unknown = sorted(set(decay) - {"branch_step", "cooldown_steps", "shape", "final_fraction"})
    if unknown:
      raise ValueError(f"schedule.decay.{unknown[0]} is not a decay-branch option")
    schedule = decay_branch(schedule, **decay)
  return schedule
