"""Averages in a training loop: ``with_averages`` (optax), ``init_averages`` /
``update_averages`` (pure functions), and the readers (``averaged_params``, ``eval_params``)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from anytime.averaging.kinds import Average, AverageState, Tail, TailState, Window, WindowState

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


def _is_masked(x) -> bool:
  return isinstance(x, optax.MaskedNode)


def _apply_mask(mask, params):
  """``params`` with ``optax.MaskedNode()`` where ``mask`` (a prefix tree of bools, or a
  callable of the params returning one) is False: those leaves are not averaged."""
  if mask is None:
    return params
  mask_tree = mask(params) if callable(mask) else mask
  try:
    return jax.tree.map(
        lambda m, p: p if m else jax.tree.map(lambda _: optax.MaskedNode(), p), mask_tree, params)
  except ValueError as e:
    raise ValueError(f"mask must be a tree of bools with the params' structure (or a prefix of "
                     f"it), or a callable returning one: {str(e).splitlines()[0]}") from None


def _zip_leaves(fn, average_tree, params):
  """``fn(a, p)`` over the leaves of ``average_tree`` (MaskedNodes are leaves) and ``params``,
  paired in order, in ``average_tree``'s structure: the params may be boxed differently (e.g.
  ``nnx.Param`` leaves against an ``nnx.Optimizer``'s ``OptVariable`` state)."""
  leaves, treedef = jax.tree.flatten(average_tree, is_leaf=_is_masked)
  param_leaves = jax.tree.leaves(params)
  if len(leaves) != len(param_leaves):
    raise ValueError(f"params/like must have the averaged params' leaves ({len(leaves)}), "
                     f"got {len(param_leaves)}")
  return jax.tree.unflatten(treedef, [fn(a, p) for a, p in zip(leaves, param_leaves)])


def _mask_like(average_tree, params):
  """``params`` masked where ``average_tree`` (an average's params tree) holds MaskedNodes."""
  return _zip_leaves(lambda a, p: a if _is_masked(a) else p, average_tree, params)


def _unmask(average_tree, params):
  """The average's tree with the unmasked leaves taken from ``params`` (the current params)."""
  return _zip_leaves(lambda a, p: p if _is_masked(a) else a, average_tree, params)


def _reference_tree(state):
  return state.snapshots[0] if isinstance(state, WindowState) else state.params


def init_averages(averages: Mapping[str, Average], params, *, mask: Any = None,
                  start: int | jax.Array = 0) -> AveragesState:
  """The state of the named ``averages`` of ``params``, for loops without an optax wrapper.

  ``mask``: which leaves are averaged (a tree of bools with the params' structure or a prefix of
  it, or a callable of the params returning one, as optax's masks); the other leaves are not
  stored, and the readers return the current params for them (so ``params=``/``like=`` must
  hold the params). ``start``: the step these averages start at (see ``Average.init``).

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
  masked = _apply_mask(mask, params)
  return AveragesState(jnp.asarray(start, jnp.int32),
                       {name: spec.init(masked, start) for name, spec in averages.items()})


def update_averages(averages: Mapping[str, Average], state: AveragesState, params,
                    active: Any = True) -> AveragesState:
  """Folds ``params``, the params *after* an update, into every average of ``state``
  (nothing when ``active`` is False: a skipped update). A mask given to ``init_averages``
  applies (read from the state)."""
  step = state.step + jnp.asarray(active, jnp.int32)
  out = {}
  for name, spec in averages.items():
    average = state.averages[name]
    out[name] = spec.update(average, _mask_like(_reference_tree(average), params), step, active)
  return AveragesState(step, out)


# --------------------------------------------------------------------------- optax wrapper


class WithAveragesState(NamedTuple):
  """State of ``with_averages``."""

  inner_state: optax.OptState
  averages: AveragesState
  # bool [] (fold="applied"): the params the next update receives are an iterate not folded in
  # yet (after an applied update); None with fold="predicted".
  pending: jax.Array | None = None

  @property
  def step(self) -> jax.Array:
    """int32 []: updates applied so far."""
    if self.pending is None:
      return self.averages.step
    return self.averages.step + self.pending.astype(jnp.int32)

  @property
  def hyperparams(self):
    """The inner ``inject_hyperparams`` state's hyperparams (found through chains)."""
    found = _find(self.inner_state, optax.InjectHyperparamsState) or _find(
        self.inner_state, optax.InjectStatefulHyperparamsState)
    if not found:
      raise AttributeError("the inner state has no hyperparams (wrap the inner optimizer in "
                           "optax.inject_hyperparams)")
    return found[0].hyperparams


FOLDS = ("applied", "predicted")
MEMORY_KINDS = ("device", "pinned_host")


def _check_memory_kind(memory_kind):
  if memory_kind is None:
    return None
  offered = {m.kind for m in jax.devices()[0].addressable_memories()}
  if memory_kind not in MEMORY_KINDS or memory_kind not in offered:
    raise ValueError(f"memory_kind must be one of {sorted(offered & set(MEMORY_KINDS))} on this "
                     f"backend ({jax.default_backend()}), got {memory_kind!r}")
  return memory_kind


def _place(tree, memory_kind):
  """``tree``'s arrays in ``memory_kind`` (inside or outside ``jit``)."""
  if memory_kind is None:
    return tree
  space = jax.memory.Space.Host if memory_kind == "pinned_host" else jax.memory.Space.Device
  return jax.tree.map(lambda x: jax.device_put(x, space), tree)


def _skipped(inner_state) -> jax.Array:
  """bool []: an ``optax.apply_if_finite`` inside ``inner`` dropped this update."""
  flags = [~s.last_finite for s in _find(inner_state, optax.ApplyIfFiniteState)]
  return functools.reduce(jnp.logical_or, flags, jnp.zeros([], bool))


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return functools.reduce(jnp.logical_and, leaves, jnp.ones([], bool))


def with_averages(inner: optax.GradientTransformation, averages: Mapping[str, Average], *,
                  fold: str = "applied", mask: Any = None, dtype: Any = None,
                  memory_kind: str | None = None) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so its state also holds the named ``averages`` of the params.

  Right in any position of an optax chain: with ``fold="applied"`` (the default) each
  ``update(updates, state, params)`` folds in the ``params`` it receives, i.e. the iterate that
  was actually applied after the previous update, whatever came after ``with_averages`` in the
  chain (``scale``, clipping, weight decay, muP scalings...). The last iterate is folded in
  at the next update; the readers fold it in when given the current params:
  ``averaged_params(opt_state, name, like=params)`` and ``eval_params(opt_state, params)``
  (without params they raise rather than return an average one step old).

  Skipped updates are never iterates: an ``optax.apply_if_finite`` inside ``inner`` that drops
  an update, or updates leaving ``with_averages`` non-finite (an ``apply_if_finite`` after it
  then drops them); ``apply_if_finite(with_averages(...))`` discards the whole state update.

  Args:
    inner: the optimizer.
    averages: ``{name: Average}``, e.g. ``{"ema_25": anytime_ema(25.0)}``.
    fold: ``"applied"`` (above) or ``"predicted"``: fold ``params + updates of inner`` within
      the same update, so the state holds the last iterate and readers need no params; right
      only where nothing after ``with_averages`` changes the updates (it is the last
      transformation that does, as in ``anytime.optimizers.build``).
    mask: which leaves are averaged: a tree of bools (the params' structure or a prefix of it)
      or a callable of the params returning one, as optax's masks. Unmasked leaves are not
      stored; for them the average *is* the current params (readers take them from ``like=`` /
      ``params``).
    dtype: if given, the storage dtype of every average (replaces each one's ``dtype``), e.g.
      ``jnp.bfloat16``: half the memory; every fold is computed in float32 and rounded once.
    memory_kind: where the averages' state lives: ``"device"`` or ``"pinned_host"`` (host
      memory, where the backend offers it; each update moves it to the device and back).

  Returns:
    A transformation whose ``update`` needs ``params``. For gradient accumulation nest it as
    ``optax.MultiSteps(with_averages(tx, ...), k)`` so only real updates are averaged; the other
    order is refused.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> from anytime import averaging
    >>> tx = optax.chain(averaging.with_averages(optax.sgd(1.0), {"polyak": averaging.polyak()}),
    ...                  optax.scale(0.5))  # anywhere in a chain
    >>> params = {"w": jnp.array([2.0])}
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update({"w": jnp.array([1.0])}, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params["w"], averaging.averaged_params(state, "polyak", like=params)["w"]  # 1.5, 1.0
    (Array([1.], dtype=float32), Array([1.25], dtype=float32))
  """
  averages = _check_averages(averages)
  if fold not in FOLDS:
    raise ValueError(f"fold must be one of {FOLDS}, got {fold!r}")
  if dtype is not None:
    averages = {name: dataclasses.replace(spec, dtype=dtype) for name, spec in averages.items()}
  memory_kind = _check_memory_kind(memory_kind)
  if isinstance(inner, optax.MultiSteps):
    raise ValueError(_MULTISTEPS_ORDER)
  inner = optax.with_extra_args_support(inner)
  applied = fold == "applied"

  def init_fn(params):
    inner_state = inner.init(params)
    if _find(inner_state, optax.MultiStepsState):
      raise ValueError(_MULTISTEPS_ORDER)
    state = _place(init_averages(averages, params, mask=mask), memory_kind)
    return WithAveragesState(inner_state, state, jnp.zeros([], bool) if applied else None)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("with_averages needs params in update(updates, state, params)")
    held = _place(state.averages, "device" if memory_kind else None)
    if applied:  # the params received are the iterate applied after the previous update
      held = update_averages(averages, held, params, state.pending)
    updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
    skipped = _skipped(inner_state)
    if applied:
      return updates, WithAveragesState(
          inner_state, _place(held, memory_kind), ~skipped & _all_finite(updates))
    new_params = optax.apply_updates(params, updates)
    held = update_averages(averages, held, new_params, ~skipped)
    return updates, WithAveragesState(inner_state, _place(held, memory_kind), None)

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


def _is_abstract(tree) -> bool:
  return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


def _read(state):
  if isinstance(state, WindowState):
    if _is_abstract(state.count):
      return state.snapshots[0]
    return Window(size=len(state.snapshots)).read(state)
  return state.params


def averaged_params(opt_state: optax.OptState, name: str, *, like: Any = None):
  """The average ``name`` found anywhere inside ``opt_state``, as a params tree.

  Args:
    opt_state: a state holding ``with_averages`` (through ``optax.chain``,
      ``inject_hyperparams``, ``MultiSteps``, ...) or an ``init_averages`` state. Abstract
      states (``jax.eval_shape``) give abstract results.
    name: the average's name.
    like: the current params (or their abstract tree): the result takes their dtypes and tree
      structure (e.g. ``nnx.Param`` wrappers), the last iterate is folded in where the state
      has not yet (``with_averages(fold="applied")``, the default) and unmasked leaves are
      taken from them. Required for those two cases; without it the leaves have the
      average's dtype.

  Returns:
    The averaged params, with the params' tree structure (and metadata boxes).
  """
  for holder in _holders(opt_state):
    found = _all_averages(holder)
    if name not in found:
      continue
    state = found[name]
    pending = holder.pending if isinstance(holder, WithAveragesState) else None
    masked = any(_is_masked(x) for x in jax.tree.leaves(
        _reference_tree(state), is_leaf=_is_masked))
    if like is None and (pending is not None or masked):
      raise ValueError(
          f"averaged_params(opt_state, {name!r}) needs like=params (the current params): "
          + ("the average has a mask; its other leaves are the params"
             if pending is None else "with_averages folds each iterate at the next update, "
             "so the last one is folded in from them"))
    abstract = like is not None and (_is_abstract(like) or _is_abstract(state))
    if not abstract and any(getattr(getattr(x, "sharding", None), "memory_kind", None)
                            not in (None, "device") for x in jax.tree.leaves(state)):
      state = jax.device_put(state, jax.memory.Space.Device)
    out = _read(state)
    if pending is not None and not abstract:
      params = _mask_like(_reference_tree(state), like)
      out = jax.tree.map(lambda a, b: jnp.where(pending, a, b.astype(a.dtype)),
                         _read_pending(state, params), out)
    if like is not None:
      out = _unmask(out, like)
    return out if like is None else _like(out, like)
  raise KeyError(f"no average named {name!r}; the state holds {average_names(opt_state)}")


def _read_pending(state, params):
  if isinstance(state, WindowState):
    return Window.read_pending(state, params)
  if isinstance(state, TailState):
    return Tail.read_pending(state, params)
  return Average.read_pending(state, params)


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


def start_average(like_state, params, start) -> Any:
  """A new average's state equal to ``params``, started at step ``start``: shaped, typed and
  placed like ``like_state`` (an abstract or concrete state of that kind). A resume that adds
  an average uses it (``anytime.checkpoint.CheckpointStore.restore``)."""
  ref = _reference_tree(like_state)

  def put(x, a):
    return jax.device_put(jnp.asarray(x, a.dtype), getattr(a, "sharding", None))

  tree = lambda: jax.tree.map(lambda p, a: put(p, a), _mask_like(ref, params), ref)
  scalar = lambda a, v: put(jnp.full(a.shape, v), a)
  begin = scalar(like_state.start, start)
  if isinstance(like_state, WindowState):
    return WindowState(tuple(tree() for _ in like_state.snapshots),
                       scalar(like_state.count, 0), begin, scalar(like_state.next_fold, False))
  if isinstance(like_state, TailState):
    return TailState(tree(), scalar(like_state.count, 0), tree(),
                     scalar(like_state.younger_count, 0), scalar(like_state.total, 0), begin,
                     scalar(like_state.next_fold, False), scalar(like_state.next_switch, False))
  # The average equals params, so any rate reads the same until the next update sets it.
  return AverageState(tree(), scalar(like_state.count, 0), begin,
                      scalar(like_state.next_rate, 1.0))
