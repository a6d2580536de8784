"""Averages in a training loop: ``with_averages`` (optax), ``init_averages`` /
``update_averages`` (pure functions), and the readers (``averaged_params``, ``eval_params``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from anytime.averaging.kinds import Average, AverageState, TailState, Window, WindowState

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
