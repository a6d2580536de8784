"""Learning-rate tuning of the comparison suite: log grids, optima, edge extension, envelope.

Every tuned method gets a log-spaced grid around a centre. When the best value is at an edge
of its grid, :func:`extension` names one more grid point beyond that edge (up to
``max_extensions`` per side); the suite runs it and asks again, so an optimum ends up inside
its grid or is flagged as still on an edge.

- A horizon-bound method (cosine, linear decay to zero, WSD branches) is tuned per horizon:
  each horizon gets its own best LR.
- An anytime method gets ONE LR for all horizons (the anytime constraint): the LR with the
  lowest MEAN loss over the horizons, with the same edge logic.

Every choice (LR, the envelope's family) uses the TUNING seeds only (their mean loss per LR
when there are several); fresh reporting seeds re-run the chosen configurations and give every
reported number (``anytime.experiments.stats``). Choosing and reporting on the same seed is a
winner's curse: the minimum over a grid is biased low on the seed it was taken on. The envelope
is, per horizon, the baseline family whose chosen LR is best on the tuning seeds; its per-seed
losses are then used as they are (taking each seed's minimum over families would bias it low).

No method name is hard-coded: callers say which methods are tuned per horizon and which are the
baseline families. Pure functions over :class:`Record` s; no I/O.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import NamedTuple

SQRT2 = 2 ** 0.5
_REL_TOL = 1e-6  # LRs are floats from a grid: equal when this close


class Record(NamedTuple):
  """One evaluated number of a suite (long form)."""
  method: str  # column family: "cosine", "d2z", "constant", "wsd_1-sqrt_0", ...
  candidate: str  # what was evaluated: "raw", "ema_25", "lawa", "merge_uniform_4", ...
  horizon: int  # steps at which it was evaluated
  peak_value: float  # the run's peak LR
  seed: int
  loss: float


class Column(NamedTuple):
  """A column of the report: a method evaluated as one candidate."""
  method: str
  candidate: str

  @property
  def label(self) -> str:
    return self.method if self.candidate in ("raw", self.method) else (
        f"{self.method}+{self.candidate}")


class Curve(NamedTuple):
  """Loss vs peak LR on the tuning seed, sorted by LR (non-finite = diverged)."""
  lrs: tuple[float, ...]
  losses: tuple[float, ...]


class Optimum(NamedTuple):
  """The best LR of a curve; ``edges`` names the grid edges it sits on ("low", "high")."""
  lr: float
  loss: float
  edges: frozenset[str]

  @property
  def at_edge(self) -> bool:
    return bool(self.edges)


class Choice(NamedTuple):
  """A column's chosen LR per horizon (the same LR everywhere for an anytime method)."""
  column: Column
  per_horizon: bool  # False: one LR for all horizons, chosen by the mean loss over horizons
  optima: Mapping[int, Optimum]  # horizon -> optimum (an anytime method's loss is per horizon)


class EnvelopePoint(NamedTuple):
  """The envelope at one horizon: the winning family, its LR, its loss per seed."""
  horizon: int
  family: str
  lr: float
  losses: Mapping[int, float]  # seed -> loss


def same_lr(a: float, b: float) -> bool:
  return math.isclose(a, b, rel_tol=_REL_TOL)


def log_grid(centre: float, num: int, factor: float = SQRT2) -> tuple[float, ...]:
  """``num`` values ``factor`` apart (geometrically), centred on ``centre``, ascending."""
  if not centre > 0:
    raise ValueError(f"centre must be a positive learning rate, got {centre}")
  if not isinstance(num, int) or num < 1:
    raise ValueError(f"num must be an integer >= 1, got {num!r}")
  if not factor > 1:
    raise ValueError(f"factor must be > 1, got {factor}")
  return tuple(centre * factor ** (i - (num - 1) / 2) for i in range(num))


def _finite(loss: float) -> float:
  return loss if math.isfinite(loss) else math.inf  # a diverged run is worse than any other


def best(curve: Curve) -> Optimum:
  """The lowest-loss LR of a curve and the grid edges it sits on."""
  if not curve.lrs or len(curve.lrs) != len(curve.losses):
    raise ValueError(f"curve: need matching, non-empty lrs and losses, got {curve!r}")
  i = min(range(len(curve.lrs)), key=lambda j: _finite(curve.losses[j]))
  edges = set()
  if i == 0:
    edges.add("low")
  if i == len(curve.lrs) - 1:
    edges.add("high")
  return Optimum(curve.lrs[i], curve.losses[i], frozenset(edges))


def extension(grid: Sequence[float], losses: Sequence[float], *,
              initial_grid: Sequence[float], factor: float = SQRT2,
              max_extensions: int = 3) -> tuple[float, ...]:
  """New LRs to run: one factor step beyond each edge the best LR sits on.

  ``grid`` is every LR run so far (``losses`` their losses), ``initial_grid`` the grid the
  suite started from; a side already extended ``max_extensions`` times gets nothing more, and
  an interior optimum gets nothing.
  """
  if not initial_grid:
    raise ValueError("initial_grid: need the suite's starting grid (non-empty)")
  if max_extensions < 0:
    raise ValueError(f"max_extensions must be >= 0, got {max_extensions}")
  order = sorted(range(len(grid)), key=lambda j: grid[j])
  optimum = best(Curve(tuple(grid[j] for j in order), tuple(losses[j] for j in order)))
  low, high = min(initial_grid), max(initial_grid)
  new = []
  if "low" in optimum.edges:
    done = sum(lr < low and not same_lr(lr, low) for lr in grid)
    if done < max_extensions:
      new.append(min(grid) / factor)
  if "high" in optimum.edges:
    done = sum(lr > high and not same_lr(lr, high) for lr in grid)
    if done < max_extensions:
      new.append(max(grid) * factor)
  return tuple(new)


def mean_curve(curves: Mapping[int, Curve]) -> Curve:
  """Mean loss over horizons per LR, for the LRs evaluated at every horizon."""
  if not curves:
    raise ValueError("curves: need at least one horizon")
  per_lr: dict[float, list[float]] = defaultdict(list)
  for curve in curves.values():
    for lr, loss in zip(curve.lrs, curve.losses):
      key = next((k for k in per_lr if same_lr(k, lr)), lr)
      per_lr[key].append(_finite(loss))
  full = sorted(lr for lr, values in per_lr.items() if len(values) == len(curves))
  return Curve(tuple(full), tuple(sum(per_lr[lr]) / len(curves) for lr in full))


def _loss_at(curve: Curve, lr: float) -> float:
  return next(loss for x, loss in zip(curve.lrs, curve.losses) if same_lr(x, lr))


def choose(column: Column, curves: Mapping[int, Curve], *, per_horizon: bool) -> Choice:
  """Per horizon the best LR, or (``per_horizon=False``) one LR by the mean over horizons."""
  if per_horizon:
    return Choice(column, True, {h: best(c) for h, c in sorted(curves.items())})
  overall = best(mean_curve(curves))
  return Choice(column, False, {
      h: Optimum(overall.lr, _loss_at(c, overall.lr), overall.edges)
      for h, c in sorted(curves.items())})


def seed_set(tuning_seeds: int | Collection[int]) -> frozenset[int]:
  """``tuning_seeds`` as a non-empty set (an int is one seed)."""
  seeds = frozenset([tuning_seeds] if isinstance(tuning_seeds, int) else tuning_seeds)
  if not seeds or not all(isinstance(s, int) for s in seeds):
    raise ValueError(f"tuning_seeds: need an int or a non-empty collection of ints, got "
                     f"{tuning_seeds!r}")
  return seeds


def tuning_curves(records: Iterable[Record], *, tuning_seeds: int | Collection[int]
                  ) -> dict[Column, dict[int, Curve]]:
  """Loss-vs-LR curve per column and horizon on the tuning seeds (mean over those present;
  a diverged seed makes the point diverged)."""
  seeds = seed_set(tuning_seeds)
  points: dict[Column, dict[int, dict[float, list[float]]]] = defaultdict(
      lambda: defaultdict(dict))
  for r in records:
    if r.seed in seeds:
      by_lr = points[Column(r.method, r.candidate)][r.horizon]
      key = next((k for k in by_lr if same_lr(k, r.peak_value)), float(r.peak_value))
      by_lr.setdefault(key, []).append(float(r.loss))
  return {column: {h: Curve(tuple(sorted(p)), tuple(sum(p[lr]) / len(p[lr]) for lr in sorted(p)))
                   for h, p in sorted(by_h.items())}
          for column, by_h in points.items()}


def choose_all(records: Iterable[Record], *, tuning_seeds: int | Collection[int],
               per_horizon_methods: Collection[str]) -> dict[Column, Choice]:
  """Every column's choice on the tuning seeds: per horizon for ``per_horizon_methods``,
  else one LR for all horizons."""
  curves = tuning_curves(records, tuning_seeds=tuning_seeds)
  if not curves:
    raise ValueError(f"tuning_seeds: no record has a seed in {sorted(seed_set(tuning_seeds))}")
  return {column: choose(column, by_h, per_horizon=column.method in per_horizon_methods)
          for column, by_h in curves.items()}


def planned_extensions(records: Iterable[Record], *, tuning_seeds: int | Collection[int],
                       initial_grids: Mapping[str, Sequence[float]],
                       per_horizon_methods: Collection[str],
                       factor: float = SQRT2, max_extensions: int = 3
                       ) -> dict[tuple[str, int | None], tuple[float, ...]]:
  """LRs still to run: ``(method, horizon)`` for per-horizon methods, ``(method, None)`` else.

  Every candidate of a method is considered (union), so a method's run gets the points any of
  its columns needs. Methods missing from ``initial_grids`` are not extended.
  """
  curves = tuning_curves(records, tuning_seeds=tuning_seeds)
  out: dict[tuple[str, int | None], set[float]] = defaultdict(set)
  for column, by_h in curves.items():
    if column.method not in initial_grids:
      continue
    per_horizon = column.method in per_horizon_methods
    targets = by_h.items() if per_horizon else [(None, mean_curve(by_h))]
    for horizon, curve in targets:
      new = extension(curve.lrs, curve.losses, initial_grid=initial_grids[column.method],
                      factor=factor, max_extensions=max_extensions)
      out[(column.method, horizon)].update(new)
  return {key: tuple(sorted(v)) for key, v in out.items() if v}


def seed_losses(records: Iterable[Record], column: Column, horizon: int,
                lr: float) -> dict[int, float]:
  """seed -> loss of a column at one horizon and peak LR."""
  return {r.seed: r.loss for r in records
          if Column(r.method, r.candidate) == column and r.horizon == horizon
          and same_lr(r.peak_value, lr)}


def envelope(records: Sequence[Record], choices: Mapping[Column, Choice], *,
             families: Sequence[str], candidate: str = "raw") -> dict[int, EnvelopePoint]:
  """Per horizon, the family best on the tuning seeds at its chosen LR, with its losses on
  every seed (the caller keeps the reporting seeds)."""
  present = [Column(f, candidate) for f in families if Column(f, candidate) in choices]
  if not present:
    raise ValueError(f"families: none of {list(families)} has records with candidate "
                     f"{candidate!r}; the envelope needs at least one baseline")
  horizons = sorted({h for c in present for h in choices[c].optima})
  out = {}
  for h in horizons:
    ranked = [(_finite(choices[c].optima[h].loss), c) for c in present if h in choices[c].optima]
    _, winner = min(ranked, key=lambda t: t[0])
    lr = choices[winner].optima[h].lr
    out[h] = EnvelopePoint(h, winner.method, lr, seed_losses(records, winner, h, lr))
  return out
