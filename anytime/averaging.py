"""Weight averages kept in the optimizer state, as an optax wrapper.

``with_averages(inner, averages={...})`` wraps any ``optax.GradientTransformation``. After each
update it folds the *parameters after the update*, ``w_t = params + updates``, into one or more
averages that live in the optimizer state, with the params' tree structure (and, under jit, their
sharding). Everything happens inside the jitted step: no host sync, dtypes stable.

    tx = with_averages(optax.adamw(schedules.inverse_sqrt(1e-3, offset=4000)),
                       averages={"ema_25": anytime_ema(25.0), "polyak": polyak()})
    eval_weights = averaged_params(opt_state, "ema_25")

Kinds (t counts the updates since the average's ``start_step``: t = 1 for the first one):
  ``ema(decay)``            w̄ ← decay·w̄ + (1−decay)·w_t, optional bias correction.
  ``anytime_ema(f)``        decay_t = 2^(−f/(t+1)): half-life ≈ t/f grows with t
                            (Meterez et al. 2026; their EMA-25 is f = 25).
  ``power_ema(gamma)``      decay_t = (1 − 1/t)^(γ+1): w̄_t ∝ Σ_s s^γ w_s (Karras et al. 2024, EDM2);
                            ``sigma_rel`` ↔ γ via ``sigma_rel_to_gamma``/``gamma_to_sigma_rel``.
  ``polyak(start_step)``    uniform average of every iterate after ``start_step``.
  ``tail(fraction)``        uniform average over roughly the last ``fraction`` of the iterates,
                            with two buffers (see ``tail``'s docstring for what is exact).
  ``window(every, size)``   LAWA / SWA: uniform average of the last ``size`` snapshots taken every
                            ``every`` steps (Kaddour 2022; Sanyal et al. 2023; Izmailov et al. 2018).

Common options: ``dtype`` of the stored average (float32 default, bfloat16 halves memory but
drops increments below bf16 resolution), ``start_step`` (before it the average simply follows
the raw params, as it does until its first fold), ``every`` (fold in only every k-th iterate; the decay between two folds is
the product of the per-step decays, so the time profile matches the per-step average's).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

KINDS = ("ema", "anytime_ema", "power_ema", "polyak", "tail", "window")


@dataclasses.dataclass(frozen=True)
class Average:
  """What one average computes. Build it with ``ema``, ``anytime_ema``, ... not directly."""

  kind: str
  decay: float = 0.0  # ema
  debias: bool = False  # ema
  factor: float = 0.0  # anytime_ema
  gamma: float = 0.0  # power_ema
  fraction: float = 0.0  # tail
  size: int = 1  # window
  start_step: int = 0
  every: int = 1
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
    start = self.start_step
    if isinstance(start, bool) or int(start) != start or start < 0:
      raise ValueError(f"start_step must be a non-negative integer, got {start!r}")
    for name in ("every", "size"):
      value = getattr(self, name)
      if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if jnp.dtype(self.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16),
                                     jnp.dtype(jnp.float64), jnp.dtype(jnp.float16)):
      raise ValueError(f"dtype must be a floating dtype (float32, bfloat16), got {self.dtype!r}")


def ema(
    decay: float, *, debias: bool = True, start_step: int = 0, every: int = 1,
    dtype: Any = jnp.float32
) -> Average:
  """Exponential moving average with a fixed ``decay`` in [0, 1).

  With ``debias`` (Adam-style bias correction) the first iterates are not pulled towards the
  initial params: the average is Σ decay^(t−s) w_s / Σ decay^(t−s).
  """
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"decay must be in [0, 1), got {decay!r}")
  return Average("ema", decay=float(decay), debias=bool(debias), start_step=start_step,
                 every=every, dtype=dtype)


def anytime_ema(
    factor: float, *, start_step: int = 0, every: int = 1, dtype: Any = jnp.float32
) -> Average:
  """EMA with decay_t = 2^(−factor/(t+1)): a half-life of about t/factor steps.

  The horizon-free average of Meterez et al. 2026 (anytime pretraining); their EMA-25 is
  ``factor=25`` and they track factors {6.25, 12.5, 25, 50, 100}. For large t it is the power
  EMA with γ + 1 = factor·ln 2.
  """
  if not factor > 0 or not math.isfinite(factor):
    raise ValueError(f"factor must be a positive finite number, got {factor!r}")
  return Average("anytime_ema", factor=float(factor), start_step=start_step, every=every,
                 dtype=dtype)


def gamma_to_sigma_rel(gamma: float) -> float:
  """EDM2's relative standard deviation of a power EMA's profile: sqrt((γ+1)/((γ+2)²(γ+3)))."""
  if not gamma > 0:
    raise ValueError(f"gamma must be > 0, got {gamma!r}")
  return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
  """Inverse of ``gamma_to_sigma_rel`` (Karras et al. 2024, Algorithm 2): sigma_rel in (0, 0.28)."""
  if not 0 < sigma_rel < gamma_to_sigma_rel(1e-9):
    raise ValueError(f"sigma_rel must be in (0, {gamma_to_sigma_rel(1e-9):.4f}), got {sigma_rel!r}")
  t = sigma_rel ** -2
  return float(np.roots([1, 7, 16 - t, 12 - t]).real.max())


def power_ema(
    gamma: float | None = None,
    *,
    sigma_rel: float | None = None,
    start_step: int = 0,
    every: int = 1,
    dtype: Any = jnp.float32,
) -> Average:
  """Power-function EMA, decay_t = (1 − 1/t)^(γ+1) (Karras et al. 2024, EDM2).

  Give ``gamma`` > 0 or ``sigma_rel`` (the profile's width relative to t; EDM2 uses 0.05-0.10).
  """
  if (gamma is None) == (sigma_rel is None):
    raise ValueError("give exactly one of gamma or sigma_rel")
  if sigma_rel is not None:
    gamma = sigma_rel_to_gamma(sigma_rel)
  if not gamma > 0 or not math.isfinite(gamma):
    raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
  return Average("power_ema", gamma=float(gamma), start_step=start_step, every=every,
                 dtype=dtype)


def polyak(*, start_step: int = 0, every: int = 1, dtype: Any = jnp.float32) -> Average:
  """Uniform (Polyak-Ruppert) average of the iterates after ``start_step``."""
  return Average("polyak", start_step=start_step, every=every, dtype=dtype)


def tail(
    fraction: float, *, start_step: int = 0, every: int = 1, dtype: Any = jnp.float32
) -> Average:
  """Uniform average over roughly the last ``fraction`` of the iterates seen so far.

  Exact tail averages at every t would need every iterate. This keeps two buffers (two copies of
  the params): a reported uniform average A and a younger one B. Once B holds at least
  ``fraction`` of all n iterates, A ← B and B restarts. So A is always the exact uniform average
  of the iterates since its start, and covers between ``fraction`` and ``fraction·(2 − fraction)``
  of the n iterates (up to one iterate of rounding); e.g. 10%-19% for fraction 0.1.
  """
  if not 0 < fraction <= 1:
    raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
  return Average("tail", fraction=float(fraction), start_step=start_step, every=every,
                 dtype=dtype)


def window(
    every: int, size: int, *, start_step: int = 0, dtype: Any = jnp.float32
) -> Average:
  """LAWA / SWA: uniform average of the last ``size`` snapshots, one every ``every`` steps.

  Keeps ``size`` copies of the params (a ring buffer with a leading axis of length ``size``).
  """
  return Average("window", every=every, size=size, start_step=start_step, dtype=dtype)


def from_config(config: Mapping[str, Any]) -> Average:
  """Builds an average from ``{"kind": "anytime_ema", "factor": 25.0, ...}``."""
  config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  kind = config.pop("kind", None)
  builders = {"ema": ema, "anytime_ema": anytime_ema, "power_ema": power_ema,
              "polyak": polyak, "tail": tail, "window": window}
  if kind not in builders:
    raise ValueError(f"averages.<name>.kind must be one of {KINDS}, got {kind!r}")
  if "dtype" in config:
    config["dtype"] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(config["dtype"],
                                                                             config["dtype"])
  try:
    return builders[kind](**config)
  except TypeError as e:
    raise ValueError(f"averages.<name> of kind {kind!r}: {e}") from None


# --------------------------------------------------------------------------- state


class AverageState(NamedTuple):
  """State of an ema / anytime_ema / power_ema / polyak average."""

  params: Any  # the average: the params' tree, in the average's dtype.
  count: jax.Array  # int32 []: iterates folded in so far.
  weight: jax.Array  # float32 []: ema with bias correction: total weight; otherwise unused (0).


class TailState(NamedTuple):
  """State of a ``tail`` average: the reported buffer A and the younger buffer B."""

  params: Any  # A, the reported uniform average: the params' tree, in the average's dtype.
  count: jax.Array  # int32 []: iterates in A.
  younger: Any  # B: the params' tree, in the average's dtype.
  younger_count: jax.Array  # int32 []: iterates in B.
  total: jax.Array  # int32 []: iterates folded in since start_step.


class WindowState(NamedTuple):
  """State of a ``window`` (LAWA/SWA) average."""

  snapshots: Any  # the params' tree with a leading ring-buffer axis [size, *shape].
  count: jax.Array  # int32 []: snapshots taken so far.


class WithAveragesState(NamedTuple):
  """State of ``with_averages``."""

  inner_state: optax.OptState
  step: jax.Array  # int32 []: updates applied so far.
  averages: dict[str, AverageState | TailState | WindowState]


def _cast(tree, dtype):
  return jax.tree.map(lambda x: jnp.array(x, dtype=dtype, copy=True), tree)


def _zero_count():
  return jnp.zeros([], jnp.int32)


def _init_average(spec: Average, params):
  if spec.kind == "window":
    snapshots = jax.tree.map(
        lambda p: jnp.broadcast_to(jnp.asarray(p).astype(spec.dtype)[None], (spec.size, *p.shape)),
        params,
    )
    return WindowState(snapshots, _zero_count())
  if spec.kind == "tail":
    return TailState(_cast(params, spec.dtype), _zero_count(), _cast(params, spec.dtype),
                     _zero_count(), _zero_count())
  return AverageState(_cast(params, spec.dtype), _zero_count(), jnp.zeros([], jnp.float32))


def _mix(average, new, rate):
  """(1 − rate)·average + rate·new, computed in float32, stored in the average's dtype."""

  def mix(a, w):
    a32 = a.astype(jnp.float32)
    return (a32 + rate * (w.astype(jnp.float32) - a32)).astype(a.dtype)

  return jax.tree.map(mix, average, new)


def _select(pred, on_true, on_false):
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b.astype(a.dtype)), on_true, on_false)


def _survival(spec: Average, t: jax.Array) -> jax.Array:
  """Weight kept by the old average when folding in iterate t (t >= 1, since start_step)."""
  tf = t.astype(jnp.float32)
  e = float(spec.every)
  if spec.kind == "ema":
    return jnp.asarray(spec.decay ** spec.every, jnp.float32)
  if spec.kind == "anytime_ema":
    # Π_{j=t−e+1..t} 2^(−f/(j+1)); for e > 1 the harmonic sum is taken at its midpoint,
    # accurate to O((e/t)^3) relative to the exact product.
    harmonic = 1.0 / (tf + 1.0) if spec.every == 1 else e / (tf + 1.0 - (e - 1.0) / 2.0)
    return jnp.exp2(-spec.factor * harmonic)
  if spec.kind == "power_ema":
    # Π_{j=t−e+1..t} (1 − 1/j)^(γ+1) = ((t − e)/t)^(γ+1), exactly.
    return (jnp.maximum(tf - e, 0.0) / tf) ** (spec.gamma + 1.0)
  raise AssertionError(spec.kind)


def _update_average(spec: Average, state, new_params, step):
  """Folds ``new_params`` (the iterate after update number ``step``) into one average."""
  t = step - spec.start_step
  active = t >= 1
  fold = active & (jnp.mod(t, spec.every) == 0)

  if spec.kind == "window":
    count = state.count + fold.astype(jnp.int32)
    slot = jnp.mod(jnp.maximum(count - 1, 0), spec.size)

    def write(buffer, w):
      current = jax.lax.dynamic_index_in_dim(buffer, slot, keepdims=False)
      # Before the first snapshot, slot 0 follows the raw params.
      value = jnp.where(fold | (count == 0), w.astype(buffer.dtype), current)
      return jax.lax.dynamic_update_index_in_dim(buffer, value, slot, 0)

    return WindowState(jax.tree.map(write, state.snapshots, new_params), count)

  if spec.kind == "tail":
    total = state.total + fold.astype(jnp.int32)
    count_a = state.count + fold.astype(jnp.int32)
    count_b = state.younger_count + fold.astype(jnp.int32)
    mixed_a = _mix(state.params, new_params, 1.0 / jnp.maximum(count_a, 1).astype(jnp.float32))
    mixed_b = _mix(state.younger, new_params, 1.0 / jnp.maximum(count_b, 1).astype(jnp.float32))
    switch = fold & (count_b.astype(jnp.float32) >= spec.fraction * total.astype(jnp.float32))
    params = _select(fold, _select(switch, mixed_b, mixed_a), state.params)
    params = _select(total > 0, params, _cast(new_params, spec.dtype))
    younger = _select(fold, mixed_b, state.younger)
    return TailState(
        params,
        jnp.where(switch, count_b, count_a),
        younger,
        jnp.where(switch, 0, count_b),
        total,
    )

  count = state.count + fold.astype(jnp.int32)
  weight = state.weight
  if spec.kind == "ema":
    kept = _survival(spec, t)
    if spec.debias:
      weight = jnp.where(fold, kept * state.weight + (1.0 - kept), state.weight)
      rate = (1.0 - kept) / jnp.maximum(weight, 1e-30)
    else:
      rate = 1.0 - kept
  elif spec.kind in ("anytime_ema", "power_ema"):
    rate = jnp.where(count == 1, 1.0, 1.0 - _survival(spec, jnp.maximum(t, 1)))
  else:  # polyak
    rate = 1.0 / jnp.maximum(count, 1).astype(jnp.float32)
  mixed = _mix(state.params, new_params, rate)
  params = _select(fold, mixed, state.params)
  params = _select(count > 0, params, _cast(new_params, spec.dtype))
  return AverageState(params, count, weight)


def with_averages(
    inner: optax.GradientTransformation, averages: Mapping[str, Average]
) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so its state also holds the named ``averages`` of the params.

  ``update`` needs ``params``. To accumulate gradients, put this wrapper inside
  ``optax.MultiSteps`` (``MultiSteps(with_averages(adamw, ...), k)``), so that only real
  updates are averaged.
  """
  if not isinstance(averages, Mapping) or not averages:
    raise ValueError("averages must be a non-empty mapping of name -> Average")
  for name, spec in averages.items():
    if not isinstance(name, str) or not name:
      raise ValueError(f"averages: names must be non-empty strings, got {name!r}")
    if not isinstance(spec, Average):
      raise ValueError(f"averages[{name!r}] must be an Average (use averaging.ema(...) etc.), "
                       f"got {type(spec).__name__}")
  averages = dict(averages)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return WithAveragesState(
        inner_state=inner.init(params),
        step=jnp.zeros([], jnp.int32),
        averages={name: _init_average(spec, params) for name, spec in averages.items()},
    )

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("with_averages needs params in update(updates, state, params)")
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    new_params = optax.apply_updates(params, updates)
    step = state.step + 1
    new_averages = {
        name: _update_average(spec, state.averages[name], new_params, step)
        for name, spec in averages.items()
    }
    return updates, WithAveragesState(inner_state, step, new_averages)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------- reading


def _find(opt_state, cls) -> list:
  return [
      x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, cls))
      if isinstance(x, cls)
  ]


def average_names(opt_state: optax.OptState) -> list[str]:
  """Names of the averages held anywhere in ``opt_state`` (chain, inject_hyperparams, ...)."""
  return [name for found in _find(opt_state, WithAveragesState) for name in found.averages]


def averaged_params(opt_state: optax.OptState, name: str):
  """The average ``name`` found anywhere inside ``opt_state``, as a params tree.

  Works through ``optax.chain``, ``inject_hyperparams`` and ``MultiSteps`` states. The leaves
  have the average's dtype. A window average is the mean of its snapshots.
  """
  for found in _find(opt_state, WithAveragesState):
    if name in found.averages:
      state = found.averages[name]
      if isinstance(state, WindowState):
        return _window_mean(state)
      return state.params
  raise KeyError(f"no average named {name!r}; the state holds {average_names(opt_state)}")


def _window_mean(state: WindowState):
  def mean(buffer):
    size = buffer.shape[0]
    n = jnp.clip(state.count, 1, size)
    mask = (jnp.arange(size) < n).astype(jnp.float32).reshape((size,) + (1,) * (buffer.ndim - 1))
    return (jnp.sum(buffer.astype(jnp.float32) * mask, axis=0) / n).astype(buffer.dtype)

  return jax.tree.map(mean, state.snapshots)


def eval_params(opt_state: optax.OptState, params) -> dict[str, Any]:
  """Every set of weights worth evaluating: ``{"raw": params, <average>: ..., ...}``.

  Includes Schedule-Free's evaluation point (``optax.contrib.schedule_free_eval_params``) as
  ``"schedule_free"`` when the state holds a Schedule-Free optimizer, so a trainer can treat
  every method alike.
  """
  out = {"raw": params}
  from optax import contrib  # pylint: disable=g-import-not-at-top

  free = _find(opt_state, contrib.ScheduleFreeState)
  if free:
    out["schedule_free"] = contrib.schedule_free_eval_params(free[0], params)
  for found in _find(opt_state, WithAveragesState):
    for name in found.averages:
      out[name] = averaged_params(found, name)
  return out
