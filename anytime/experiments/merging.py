"""Checkpoint merging: the weighted average of the last k saved checkpoints, computed offline.

Li et al. 2025, "Model Merging in Pre-training of LLMs" (arXiv 2505.12082) and Tian et al.
2025, "WSM: Decay-Free Learning Rate Schedule via Checkpoint Merging" (arXiv 2507.17634)
average the last k checkpoints of a constant-LR run and match a decayed schedule. Here:

- :func:`last_steps` picks the last k saved steps at or before a horizon;
- :func:`uniform_weights` / :func:`ema_weights` weigh them (oldest first; EMA weights decay by
  ``alpha`` per checkpoint going back and are normalized);
- :func:`merge` averages trees in memory; :func:`merge_checkpoints` restores only the params
  of each step from a :class:`anytime.checkpoint.CheckpointStore` directory and keeps a
  running sum, so at most one checkpoint's params and the sum are in memory.

Floating leaves are accumulated in at least float32 and cast back to their dtype; integer
leaves (step counters) are not averaged: the newest checkpoint's value is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from anytime import checkpoint

STATE_ITEM = "state"  # CheckpointStore's item holding the TrainState(step, params, opt_state, rng)
_TOL = 1e-6


def uniform_weights(k: int) -> tuple[float, ...]:
  """``k`` equal weights summing to 1."""
  _check_count(k)
  return (1.0 / k,) * k


def ema_weights(k: int, alpha: float) -> tuple[float, ...]:
  """Oldest first: weight of the checkpoint ``j`` saves before the newest is ∝ ``alpha**j``."""
  _check_count(k)
  if not 0 < alpha <= 1:
    raise ValueError(f"alpha must be in (0, 1] (decay per checkpoint), got {alpha}")
  raw = [alpha ** (k - 1 - i) for i in range(k)]
  return tuple(w / sum(raw) for w in raw)


def last_steps(saved_steps: Sequence[int], before: int, k: int) -> tuple[int, ...]:
  """The last ``k`` saved steps at or before step ``before``, ascending."""
  _check_count(k)
  eligible = sorted(s for s in set(saved_steps) if s <= before)
  if len(eligible) < k:
    raise ValueError(f"k: {k} checkpoints requested at or before step {before}, but only "
                     f"{len(eligible)} are saved there ({eligible})")
  return tuple(eligible[-k:])


def merge(trees: Sequence[Any], weights: Sequence[float]) -> Any:
  """``sum_i weights[i] * trees[i]`` leaf by leaf; dtypes kept, integer leaves from the last."""
  _check_weights(len(trees), weights)
  total = None
  for tree, weight in zip(trees, weights):
    total = _accumulate(total, tree, weight)
  return _finish(total, trees[-1])


def merge_checkpoints(directory: str | epath.Path, steps: Sequence[int],
                      weights: Sequence[float], abstract_params: Any) -> Any:
  """The merged params of ``steps`` (ascending, oldest first) of a CheckpointStore directory.

  A running sum: one checkpoint's params and the sum are in memory at a time.

  ``abstract_params`` gives the params' structure, shapes and dtypes (``jax.ShapeDtypeStruct``
  leaves, optionally with shardings; without one a leaf goes to the first device). Only the
  params of each step are read, never the optimizer state.
  """
  _check_steps(steps)
  _check_weights(len(steps), weights)
  directory = epath.Path(directory)
  with checkpoint.quiet_read_only_notices():
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_handlers={STATE_ITEM: ocp.PyTreeCheckpointHandler()})
  try:
    missing = sorted(set(steps) - set(manager.all_steps()))
    if missing:
      raise ValueError(f"steps: {missing} not saved in {directory}; saved: "
                       f"{sorted(manager.all_steps())}")
    total, params = None, None
    for step, weight in zip(steps, weights):
      params = _restore_params(manager, step, abstract_params)
      total = _accumulate(total, params, weight)
    return _finish(total, params)
  finally:
    manager.close()


def _restore_params(manager: ocp.CheckpointManager, step: int, abstract_params: Any) -> Any:
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  restore_args = jax.tree.map(
      lambda x: ocp.ArrayRestoreArgs(sharding=getattr(x, "sharding", None) or default,
                                     global_shape=x.shape, dtype=x.dtype), abstract_params)
  restored = manager.restore(step, args=ocp.args.Composite(**{
      STATE_ITEM: ocp.args.PyTreeRestore(item={"params": abstract_params},
                                         restore_args={"params": restore_args},
                                         partial_restore=True)}))
  return restored[STATE_ITEM]["params"]


def _is_float(x: Any) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _accumulate(total: Any, tree: Any, weight: float) -> Any:
  """``total + weight * tree`` for floating leaves (wide accumulator); others: the new leaf."""
  def add(acc, x):
    if not _is_float(x):
      return x
    term = jnp.asarray(x, jnp.promote_types(jnp.result_type(x), jnp.float32)) * weight
    return term if acc is None else acc + term
  if total is None:
    return jax.tree.map(lambda x: add(None, x), tree)
  return jax.tree.map(add, total, tree)


def _finish(total: Any, newest: Any) -> Any:
  return jax.tree.map(lambda acc, x: jnp.asarray(acc).astype(jnp.result_type(x)), total, newest)


def _check_count(k: int) -> None:
  if not isinstance(k, int) or k < 1:
    raise ValueError(f"k must be an integer >= 1 (checkpoints to merge), got {k!r}")


def _check_steps(steps: Sequence[int]) -> None:
  if list(steps) != sorted(set(steps)):
    raise ValueError(f"steps must be strictly ascending (oldest first, like the weights), "
                     f"got {list(steps)}")


def _check_weights(count: int, weights: Sequence[float]) -> None:
  if count < 1 or len(weights) != count:
    raise ValueError(f"weights: need one weight per checkpoint ({count}), got {len(weights)}")
  if any(w < 0 for w in weights) or not math.isclose(sum(weights), 1.0, abs_tol=_TOL):
    raise ValueError(f"weights must be >= 0 and sum to 1, got {list(weights)}")
