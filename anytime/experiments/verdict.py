"""The comparison suite's verdict: choices on tuning seeds, cells on reporting seeds, two looks.

:func:`build_report` turns the suite's long-form :class:`~anytime.experiments.tuning.Record` s
(tuning-seed AND reporting-seed runs) and per-window evaluation losses into a :class:`Report`:

1. **Choices on the tuning seeds only** (:mod:`anytime.experiments.tuning`): every column's LR
   (per horizon for horizon-bound methods, one LR for anytime methods) and, per horizon, the
   envelope's family. The tuning seeds' runs stay in the loss-vs-LR tables and nowhere else.
2. **Cells on the reporting seeds only**: per (column, horizon) the paired delta to the envelope
   over the reporting seeds, its seed standard error, the evaluation set's error of THAT delta
   (per-window differences of the two sides' seed-mean losses, clustered by source document),
   the combined t interval with Welch-Satterthwaite df, the two-sided and TOST p-values
   (:mod:`anytime.experiments.stats`). Without window data a cell falls back to its seed error
   and is flagged (``eval_status == "missing"``).
3. **Multiplicity.** One primary column (default constant + EMA-25) is its own family: its
   cells at every horizon are Holm-adjusted among themselves at ``alpha`` (the anytime claim is
   "at every horizon", so each horizon is a hypothesis of the primary family). All other tested
   cells form the secondary family, Holm-adjusted together at ``alpha``. The family-wise error
   rate is at most ``alpha`` within each family (at most ``2 alpha`` over both). Equivalence
   ("equivalent") is a per-cell TOST at the look's level. Oracle columns get an interval and
   no test; the envelope's own family at a horizon is the reference (delta 0, no test).
4. **Two looks.** With ``Stages(first, second, looks=2)`` the level is split equally between
   the looks (``alpha / 2`` each; Bonferroni over looks, valid whatever the dependence between
   them, since look 2 reuses look 1's seeds). Look 1 decides every cell on the first-stage
   seeds; cells "undecided" there (:func:`undecided_cells`) get the second-stage seeds and are
   decided at look 2 on all their reporting seeds, with Holm over the family in which decided
   cells keep their look-1 p-values. A verdict made at look 1 is final. The family-wise error
   over both looks is at most ``alpha`` per family (union bound).

Rendering lives in :mod:`anytime.experiments.report_text` (Markdown, CSV, JSON, the terminal
summary) and :mod:`anytime.experiments.plots`; :func:`write_report` writes ``report/``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from etils import epath

from anytime.experiments import stats, tuning
from anytime.experiments.stats import Summary
from anytime.experiments.tuning import Choice, Column, Curve, Record

from anytime.experiments.report_text import CHINCHILLA_TOKENS_PER_PARAM  # noqa: E402
WindowKey = tuple[str, str, int, float, int]  # (method, candidate, horizon, peak_value, seed)


@dataclasses.dataclass(frozen=True)
class SuiteFacts:
  """Suite-level facts the report states besides the records."""
  base_steps: int  # the 1x horizon, in steps
  tokens_per_step: int
  non_embedding_params: int
  total_params: int
  eval_tokens: int  # validation tokens per evaluation
  runs: int | None = None  # runs trained in all (tuning, reporting, second stage)
  second_stage_runs: int | None = None  # of which the second stage's (undecided cells)
  wall_seconds: float | None = None  # the suite's wall time

  def __post_init__(self):
    for name in ("base_steps", "tokens_per_step", "non_embedding_params", "total_params",
                 "eval_tokens"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    for name in ("runs", "second_stage_runs", "wall_seconds"):
      value = getattr(self, name)
      if value is not None and value < 0:
        raise ValueError(f"{name} must be >= 0 or None, got {value}")


@dataclasses.dataclass(frozen=True)
class Stages:
  """Which reporting seeds belong to which look.

  ``first``: the reporting seeds every cell gets; ``second``: seeds the suite added for cells
  undecided at look 1 (empty before it trains them); ``looks``: the looks PLANNED before any
  data were seen (the level is split between them; 2 whenever ``max_seeds > seeds``, even if
  no cell turns out undecided).
  """
  first: tuple[int, ...]
  second: tuple[int, ...] = ()
  looks: int = 2

  def __post_init__(self):
    object.__setattr__(self, "first", tuple(sorted(self.first)))
    object.__setattr__(self, "second", tuple(sorted(self.second)))
    if set(self.first) & set(self.second):
      raise ValueError(f"stages: seeds {sorted(set(self.first) & set(self.second))} are in both "
                       "stages")
    if self.looks not in (1, 2):
      raise ValueError(f"stages.looks must be 1 or 2, got {self.looks}")
    if self.second and self.looks < 2:
      raise ValueError("stages: second-stage seeds need looks=2 (planned before the data)")


class Cell(NamedTuple):
  """One column at one horizon, against the envelope (every number on reporting seeds)."""
  column: Column
  horizon: int
  lr: float
  edge: bool  # the chosen LR is still on an edge of its grid
  role: str  # "primary" | "secondary" | "oracle" (no test) | "reference" (is the envelope)
  seeds: tuple[int, ...]  # reporting seeds of the delta
  look: int  # the look that made the verdict (1 or 2)
  loss: Summary  # the column on ``seeds``
  reference: Summary  # the envelope on ``seeds``
  delta: float
  se_seed: float
  se_eval: float  # nan when the window data are missing
  eval_status: str  # "clustered" | "missing" (seed error only) | "n/a" (reference)
  eval_clusters: int  # documents behind se_eval
  se: float  # sqrt(se_seed² + se_eval²)
  df: float  # Welch-Satterthwaite
  ci_low: float  # (1 - level) interval, level = the look's alpha
  ci_high: float
  p_value: float  # two-sided, raw
  p_adjusted: float  # within its family (nan: not tested)
  p_equivalence: float  # TOST against ±margin
  level: float  # the look's alpha
  verdict: str  # win | loss | equivalent | undecided | oracle | reference

  @property
  def tested(self) -> bool:
    return self.role in ("primary", "secondary")

  @property
  def within_margin(self) -> bool:
    return bool(self.p_equivalence <= self.level)


class Row(NamedTuple):
  """One horizon of the table."""
  horizon: int  # steps
  multiplier: float  # horizon / base_steps
  tokens: int
  tokens_per_param: float  # per non-embedding parameter
  chinchilla: float  # tokens_per_param / 20
  envelope_family: str
  envelope_lr: float
  envelope_edge: bool
  envelope: Summary  # on the first-stage reporting seeds
  envelope_tuning_loss: float  # on the tuning seeds (the choice)
  cells: tuple[Cell, ...]


@dataclasses.dataclass(frozen=True)
class Report:
  """Everything the rendered report shows."""
  facts: SuiteFacts
  rows: tuple[Row, ...]
  columns: tuple[Column, ...]
  choices: Mapping[Column, Choice]
  curves: Mapping[Column, Mapping[int, Curve]]  # loss vs LR on the tuning seeds
  tuning_seeds: tuple[int, ...]
  stages: Stages
  primary: Column | None
  alpha: float  # family-wise level per family, over all looks
  margin: float  # equivalence margin, nats
  multiplicity: str
  window_documents: int  # documents behind the evaluation windows (0: no window data)
  window_count: int
  anytime_curve: Mapping[str, Sequence[tuple[int, float]]]

  @property
  def level_per_look(self) -> float:
    return self.alpha / self.stages.looks

  @property
  def cells(self) -> tuple[Cell, ...]:
    return tuple(c for row in self.rows for c in row.cells)

  @property
  def looks_done(self) -> int:
    return 2 if self.stages.second else 1


class Undecided(NamedTuple):
  """A cell for the second stage: the runs it needs are the column's and the envelope's."""
  column: Column
  horizon: int
  lr: float
  envelope_family: str
  envelope_lr: float
  seeds: tuple[int, ...]  # its reporting seeds so far


# ------------------------------------------------------------------------------ windows


class _Windows:
  """Per-window loss sums of every evaluation, looked up by (column, horizon, lr, seed)."""

  def __init__(self, windows: Mapping[WindowKey, np.ndarray] | None, tokens, documents):
    self.by_key: dict[tuple[str, str, int, int], list[tuple[float, np.ndarray]]] = (
        defaultdict(list))
    self.tokens = self.documents = None
    if not windows:
      return
    if tokens is None or documents is None:
      raise ValueError("window_tokens and window_documents: needed with windows")
    self.tokens = np.asarray(tokens, dtype=np.float64)
    self.documents = np.asarray(documents)
    if self.tokens.ndim != 1 or self.documents.shape != self.tokens.shape:
      raise ValueError(f"window_tokens and window_documents: need one entry per window, got "
                       f"shapes {self.tokens.shape} and {self.documents.shape}")
    for (method, candidate, horizon, lr, seed), sums in windows.items():
      sums = np.asarray(sums, dtype=np.float64)
      if sums.shape != self.tokens.shape:
        raise ValueError(f"windows[{(method, candidate, horizon, lr, seed)}]: need "
                         f"{self.tokens.size} windows, got shape {sums.shape}")
      self.by_key[(method, candidate, int(horizon), int(seed))].append((float(lr), sums))

  def get(self, column: Column, horizon: int, lr: float, seed: int) -> np.ndarray | None:
    for x, sums in self.by_key.get((column.method, column.candidate, horizon, seed), ()):
      if tuning.same_lr(x, lr):
        return sums
    return None

  @property
  def num_documents(self) -> int:
    return 0 if self.documents is None else int(np.unique(self.documents).size)


# ------------------------------------------------------------------------------ assembly


def build_report(records: Sequence[Record], facts: SuiteFacts, *,
                 tuning_seeds: int | Collection[int],
                 families: Sequence[str],
                 per_horizon_methods: Collection[str],
                 windows: Mapping[WindowKey, np.ndarray] | None = None,
                 window_tokens: np.ndarray | None = None,
                 window_documents: np.ndarray | None = None,
                 margin: float = 0.01, alpha: float = 0.05,
                 primary: Column | None = None,
                 multiplicity: str = "holm",
                 stages: Stages | None = None,
                 oracle_columns: Collection[Column] = (),
                 anytime_curve: Mapping[str, Sequence[tuple[int, float]]] | None = None,
                 envelope_candidate: str = "raw") -> Report:
  """Assembles the report (see the module docstring).

  ``windows``: per-window validation loss SUMS of an evaluation, keyed by
  ``(method, candidate, horizon, peak_value, seed)``; ``window_tokens`` the token count and
  ``window_documents`` the source document of each window (the same windows for every
  evaluation). ``stages`` None: every non-tuning seed is a first-stage seed and one look is
  planned. ``anytime_curve``: ``{candidate: [(step, loss), ...]}`` of the one constant run.
  """
  records = list(records)
  if not records:
    raise ValueError("records: the suite produced no evaluated numbers")
  if not margin > 0:
    raise ValueError(f"margin must be > 0 nats, got {margin}")
  if not 0 < alpha < 0.5:
    raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
  stats.adjust([], multiplicity)  # validates the name
  tuning_set = tuning.seed_set(tuning_seeds)
  if stages is None:
    stages = Stages(tuple(sorted({r.seed for r in records} - tuning_set)), (), 1)
  overlap = tuning_set & (set(stages.first) | set(stages.second))
  if overlap:
    raise ValueError(f"stages: seeds {sorted(overlap)} are tuning seeds; reporting seeds must "
                     "take no part in a choice")
  choices = tuning.choose_all(records, tuning_seeds=tuning_set,
                              per_horizon_methods=per_horizon_methods)
  env = tuning.envelope(records, choices, families=families, candidate=envelope_candidate)
  columns = tuple(sorted(choices, key=lambda c: (c.method not in families, c.method,
                                                 c.candidate)))
  oracles = set(oracle_columns)
  win = _Windows(windows, window_tokens, window_documents)
  level = alpha / stages.looks

  # Look 1: every cell on the first-stage seeds; look 2: the cells undecided at look 1 on
  # all their reporting seeds (oracle cells: every reporting seed, no verdict).
  first: dict[tuple[Column, int], dict[str, Any]] = {}
  for h, point in sorted(env.items()):
    reference_column = Column(point.family, envelope_candidate)
    for c in columns:
      if h not in choices[c].optima:
        continue
      role = ("reference" if c == reference_column else "oracle" if c in oracles
              else "primary" if c == primary else "secondary")
      seeds = stages.first + (stages.second if role == "oracle" else ())
      first[(c, h)] = _draft(records, choices[c], h, point, reference_column, seeds, role,
                             win, level, margin)
  drafts = dict(first)
  for role in ("primary", "secondary"):
    keys = [k for k, d in first.items() if d["role"] == role]
    if not keys:
      continue
    arrays = lambda ds: tuple(np.array([d[f] for d in ds], dtype=np.float64)
                              for f in ("delta", "p_value", "p_equivalence"))
    look1 = stats.sequential_decisions(arrays([first[k] for k in keys]), None, alpha=alpha,
                                       looks=stages.looks, multiplicity=multiplicity)
    second = None
    if stages.second:
      for k, v in zip(keys, look1.verdict):
        if v == "undecided":
          c, h = k
          point = env[h]
          drafts[k] = dict(_draft(records, choices[c], h, point,
                                  Column(point.family, envelope_candidate),
                                  stages.first + stages.second, role, win, level, margin))
      second = arrays([drafts[k] for k in keys])
    decisions = stats.sequential_decisions(arrays([first[k] for k in keys]), second,
                                           alpha=alpha, looks=stages.looks,
                                           multiplicity=multiplicity)
    for k, v, p, look in zip(keys, *decisions):
      drafts[k] = dict(drafts[k], verdict=str(v), p_adjusted=float(p), look=int(look))

  rows = []
  for h, point in sorted(env.items()):
    tokens = h * facts.tokens_per_step
    per_param = tokens / facts.non_embedding_params
    family_choice = choices[Column(point.family, envelope_candidate)]
    first = [point.losses[s] for s in stages.first if s in point.losses]
    cells = tuple(Cell(**drafts[(c, h)]) for c in columns if (c, h) in drafts)
    rows.append(Row(h, h / facts.base_steps, tokens, per_param,
                    per_param / CHINCHILLA_TOKENS_PER_PARAM, point.family, point.lr,
                    family_choice.optima[h].at_edge,
                    stats.summarize(first) if first else Summary(math.nan, math.nan, 0),
                    family_choice.optima[h].loss, cells))
  curves = tuning.tuning_curves(records, tuning_seeds=tuning_set)
  return Report(facts, tuple(rows), columns, choices, curves, tuple(sorted(tuning_set)), stages,
                primary if primary in choices else None, alpha, margin, multiplicity,
                win.num_documents, 0 if win.tokens is None else int(win.tokens.size),
                dict(anytime_curve or {}))


def _draft(records, choice: Choice, horizon: int, point: tuning.EnvelopePoint,
           reference_column: Column, seeds: Sequence[int], role: str, win: _Windows,
           level: float, margin: float) -> dict[str, Any]:
  """A cell's numbers on the given seeds (those both sides have); verdict filled later."""
  optimum = choice.optima[horizon]
  losses = tuning.seed_losses(records, choice.column, horizon, optimum.lr)
  both = tuple(s for s in seeds if s in losses and s in point.losses)
  nan = math.nan
  out = dict(column=choice.column, horizon=horizon, lr=optimum.lr, edge=optimum.at_edge,
             role=role, seeds=both, look=1, level=level, se_eval=nan, eval_status="missing",
             eval_clusters=0, p_adjusted=nan, verdict=role if role in ("oracle", "reference")
             else "undecided")
  if not both:
    empty = Summary(nan, nan, 0)
    return dict(out, loss=empty, reference=empty, delta=nan, se_seed=nan, se=nan, df=nan,
                ci_low=nan, ci_high=nan, p_value=nan, p_equivalence=nan)
  d = stats.delta(losses, point.losses, both)
  out.update(loss=stats.summarize([losses[s] for s in both]),
             reference=stats.summarize([point.losses[s] for s in both]))
  if role == "reference":
    return dict(out, delta=0.0, se_seed=0.0, se=0.0, df=nan, ci_low=0.0, ci_high=0.0,
                p_value=nan, p_equivalence=nan, eval_status="n/a")
  se_eval, clusters = nan, 0
  a = [win.get(choice.column, horizon, optimum.lr, s) for s in both]
  b = [win.get(reference_column, horizon, point.lr, s) for s in both]
  if win.tokens is not None and all(x is not None for x in a + b):
    error = stats.clustered_delta_error(a, b, win.tokens, win.documents)
    se_eval, clusters = error.se, error.clusters
    out.update(eval_status="clustered", eval_clusters=clusters)
  iv = stats.interval(d.mean, d.se, d.num_seeds, se_eval, clusters, alpha=level, margin=margin)
  return dict(out, delta=iv.delta, se_seed=iv.se_seed, se_eval=iv.se_eval, se=iv.se, df=iv.df,
              ci_low=iv.low, ci_high=iv.high, p_value=iv.p_value,
              p_equivalence=iv.p_equivalence)


def undecided_cells(report: Report) -> list[Undecided]:
  """The tested cells still "undecided": the second stage's work (empty after look 2)."""
  if report.looks_done >= report.stages.looks:
    return []
  out = []
  for row in report.rows:
    for cell in row.cells:
      if cell.tested and cell.verdict == "undecided":
        out.append(Undecided(cell.column, row.horizon, cell.lr, row.envelope_family,
                             row.envelope_lr, cell.seeds))
  return out


# ------------------------------------------------------------------------------ files


def terminal_summary(report: Report, width: int = 100) -> str:
  """Compact console summary (methods x horizons); see :mod:`report_text`."""
  from anytime.experiments import report_text  # pylint: disable=g-import-not-at-top
  return report_text.terminal_summary(report, width)


def report_markdown(report: Report) -> str:
  """The full Markdown report (``table.md``)."""
  from anytime.experiments import report_text  # pylint: disable=g-import-not-at-top
  return report_text.report_markdown(report)


def write_report(out_dir: str | epath.Path, report: Report) -> dict[str, epath.Path]:
  """Writes table.md, table.csv, table.json, deltas.csv, loss_vs_lr.png, deltas.png and (with
  an anytime curve) anytime.png to ``out_dir``. Call it from one process only."""
  from anytime.experiments import plots, report_text  # pylint: disable=g-import-not-at-top
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {name: out / name for name in ("table.md", "table.csv", "table.json", "deltas.csv")}
  paths["table.md"].write_text(report_text.report_markdown(report))
  paths["table.csv"].write_text(report_text.csv_text(report_text.long_rows(report)))
  paths["deltas.csv"].write_text(report_text.csv_text(report_text.delta_rows(report)))
  paths["table.json"].write_text(json.dumps(report_text.json_dict(report), indent=2,
                                            allow_nan=False))
  figures = {"loss_vs_lr.png": plots.plot_lr_curves(report),
             "deltas.png": plots.plot_deltas(report)}
  if report.anytime_curve:
    figures["anytime.png"] = plots.plot_anytime(report)
  for name, figure in figures.items():
    paths[name] = out / name
    with paths[name].open("wb") as f:
      figure.savefig(f, dpi=130)
  return paths
