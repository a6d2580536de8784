"""Weight averages kept in the optimizer state: an optax wrapper and a pure-function form.

``with_averages(inner, averages={...})`` wraps any ``optax.GradientTransformation`` and keeps
one or more named averages of the iterates w_t (the params after update t) in the optimizer
state, each a params-shaped tree (so the params' shardings and partitioning metadata apply leaf
by leaf). Everything happens inside the jitted step: no host sync, dtypes stable.

Kinds (t counts the updates since the average's ``start_step``: t = 1 for the first one). Each
kind is one frozen dataclass that owns its state (``init``/``update``/``read``), its weight
profile over the iterates (``weights``) and its config (``to_config``/``from_config``)::

  ``ema(decay)``            w̄ ← decay·w̄ + (1−decay)·w_t, optional bias correction.
  ``anytime_ema(f)``        decay_t = 2^(−f/(t+1)): half-life ≈ t/f grows with t; the first fold
                            copies w_1 (Meterez et al. 2026; their EMA-25 is f = 25).
  ``power_ema(gamma)``      decay_t = (1 − 1/t)^(γ+1): w̄_t ∝ Σ_s s^γ w_s (Karras et al. 2024, EDM2).
  ``polyak(start_step)``    uniform average of every iterate after ``start_step``.
  ``tail(fraction)``        uniform average over roughly the last ``fraction`` of the iterates.
  ``window(every, size)``   LAWA / SWA: uniform average of the last ``size`` snapshots taken every
                            ``every`` steps (Kaddour 2022; Sanyal et al. 2023; Izmailov et al. 2018).

Common options: ``dtype`` of the stored average (float32 default; bfloat16 halves memory but
drops increments below bf16 resolution), ``start_step`` (before it the average follows the raw
params, as it does until its first fold), ``every`` (fold in only every k-th iterate; the decays
of the skipped steps are multiplied exactly). Integer and boolean leaves are not averaged: the
average holds their value at the last fold. ``with_averages`` also takes ``mask=`` (which leaves
are averaged, as optax's masks), ``dtype=`` (the storage dtype of every average; folds are
computed in float32) and ``memory_kind=`` (``"device"`` or ``"pinned_host"``).

Position in a chain: with ``fold="applied"`` (the default) each ``update(updates, state,
params)`` folds the ``params`` it receives, the iterate actually applied after the previous
update, so ``with_averages`` is right anywhere in an ``optax.chain`` (before ``scale``,
clipping, weight decay, muP scalings...). The last iterate is folded in by the readers, which
therefore need the current params: ``averaged_params(opt_state, name, like=params)`` and
``eval_params(opt_state, params)``. ``fold="predicted"`` folds ``params + updates`` of ``inner``
within the same update (readers need no params) and is right only where nothing after
``with_averages`` changes the updates (as in ``anytime.optimizers.build``). Updates dropped by
``optax.apply_if_finite`` (inside or around it) are never iterates. Gradient accumulation wraps
it: ``optax.MultiSteps(with_averages(tx, ...), k)``; ``with_averages(MultiSteps(...))`` is
refused at ``init``.

The package: ``kinds`` (the ``Average`` classes, their states and weight profiles),
``builders`` (``ema(...)``, ..., ``from_config``) and ``transform`` (``with_averages``, the
pure functions and the readers); import everything from ``anytime.averaging``.

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

from anytime.averaging.builders import (anytime_ema, ema, from_config, gamma_to_sigma_rel, polyak,
                                        power_ema, sigma_rel_to_gamma, tail, window)
from anytime.averaging.kinds import (KINDS, REGISTRY, AnytimeEma, Average, AverageState, Ema,
                                     Polyak, PowerEma, Tail, TailState, Window, WindowState)
from anytime.averaging.transform import (AveragesState, WithAveragesState, average_names,
                                         averaged_params, eval_params, init_averages, start_average,
                                         update_averages, with_averages)

__all__ = [
    "Average", "Ema", "AnytimeEma", "PowerEma", "Polyak", "Tail", "Window", "KINDS", "REGISTRY",
    "ema", "anytime_ema", "power_ema", "polyak", "tail", "window", "from_config",
    "gamma_to_sigma_rel", "sigma_rel_to_gamma",
    "AverageState", "TailState", "WindowState", "AveragesState", "WithAveragesState",
    "init_averages", "update_averages", "with_averages", "start_average",
    "average_names", "averaged_params", "eval_params",
]
