"""Config -> ``optax.GradientTransformation``: base optimizer x schedule x clipping x averages.

    optimizer = ConfigDict(dict(
        name="adamw", b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0,
        schedule=dict(name="inverse_sqrt", peak_value=1e-3, offset=4000, warmup_steps=1000),
        averages={"ema_25": dict(kind="anytime_ema", factor=25.0)},
    ))
    tx, schedule = build(optimizer)

Schedule-Free AdamW/SGD (Defazio et al. 2024) come from ``optax.contrib``; their evaluation
point is exposed by ``averaging.eval_params`` next to the averages, so a trainer treats every
method alike.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import optax

from anytime import averaging, schedules

OPTIMIZERS = ("adamw", "sgd", "lion", "schedule_free_adamw", "schedule_free_sgd")


def default_config() -> ml_collections.ConfigDict:
  """Every optimizer option with its default."""
  return ml_collections.ConfigDict(dict(
      name="adamw",
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      weight_decay=0.0,  # decoupled; applied to matrices only (not norms).
      momentum=0.9,  # sgd
      nesterov=False,  # sgd
      grad_clip_norm=1.0,  # 0 disables clipping.
      schedule=ml_collections.ConfigDict(dict(name="constant", peak_value=1e-3)),
      averages=ml_collections.ConfigDict(),  # name -> {kind, ...}; see anytime.averaging.
  ))


def _matrices_only(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def build(
    config: Mapping[str, Any], extra_averages: Mapping[str, averaging.Average] | None = None,
    *, learning_rate_in_state: bool = False,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns ``(tx, schedule)`` for an optimizer config (see ``default_config``).

  ``extra_averages`` are kept next to the configured ones (the trainer adds the post-hoc
  tracking EMAs there). With ``learning_rate_in_state`` the learning rate is not computed
  inside the transformation: it is a hyperparameter in the optimizer state
  (``optax.inject_hyperparams``) that the caller sets before every update with
  ``set_learning_rate`` (from ``schedule``, evaluated on the host). Then the compiled step does
  not depend on the schedule, so runs that differ only in their schedule share one program.
  """
  name = config["name"]
  if name not in OPTIMIZERS:
    raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {name!r}")
  for field in ("eps", "weight_decay", "grad_clip_norm"):
    if config[field] < 0:
      raise ValueError(f"optimizer.{field} must be >= 0, got {config[field]!r}")
  for field in ("b1", "b2", "momentum"):
    if not 0 <= config[field] < 1:
      raise ValueError(f"optimizer.{field} must be in [0, 1), got {config[field]!r}")
  schedule = schedules.from_config(config["schedule"])
  wd, mask = config["weight_decay"], _matrices_only
  if name == "adamw":
    factory = functools.partial(optax.adamw, b1=config["b1"], b2=config["b2"],
                                eps=config["eps"], weight_decay=wd, mask=mask)
  elif name == "sgd":
    factory = functools.partial(optax.sgd, momentum=config["momentum"] or None,
                                nesterov=config["nesterov"])
  elif name == "lion":
    factory = functools.partial(optax.lion, b1=config["b1"], b2=config["b2"], weight_decay=wd,
                                mask=mask)
  elif name == "schedule_free_adamw":
    factory = functools.partial(optax.contrib.schedule_free_adamw, b1=config["b1"],
                                b2=config["b2"], eps=config["eps"], weight_decay=wd)
  else:
    factory = functools.partial(optax.contrib.schedule_free_sgd, b1=config["b1"],
                                weight_decay=wd)
  if learning_rate_in_state:
    # Only the learning rate becomes a state entry; every other argument stays a constant.
    base = optax.inject_hyperparams(lambda learning_rate: factory(learning_rate=learning_rate))(
        learning_rate=0.0)
  else:
    base = factory(learning_rate=schedule)
  if name == "sgd":
    base = optax.chain(optax.add_decayed_weights(wd, mask), base)
  averages = {
      avg_name: averaging.from_config(spec) for avg_name, spec in dict(config["averages"]).items()
  }
  for avg_name, spec in (extra_averages or {}).items():
    if avg_name in averages:
      raise ValueError(f"optimizer.averages.{avg_name} clashes with a post-hoc tracking average")
    averages[avg_name] = spec
  if averages:
    # Last among the transformations that change updates (only clipping comes before it), so
    # the predicted fold is exact: no lag, and readers need no params (posthoc snapshots).
    base = averaging.with_averages(base, averages, fold="predicted")
  if config["grad_clip_norm"]:
    base = optax.chain(optax.clip_by_global_norm(config["grad_clip_norm"]), base)
  return base, schedule


def set_learning_rate(opt_state: Any, learning_rate: jax.Array) -> Any:
  """The state of a ``build(..., learning_rate_in_state=True)`` transformation with its
  learning rate set for the next update."""
  return optax.tree_utils.tree_set(opt_state, learning_rate=learning_rate)
