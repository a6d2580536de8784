"""The comparison suite's verdict: table assembly and rendering (Markdown, CSV, JSON, plots).

From the suite's long-form :class:`~anytime.experiments.tuning.Record` s and its
:class:`SuiteFacts`, :func:`build_report` assembles one row per horizon (steps, tokens,
tokens per non-embedding parameter and its Chinchilla multiple) with the envelope of the
baseline families (which family won) and, for every column (method x candidate), its loss over
seeds (mean ± standard error), its delta to the envelope (± standard error), the verdict
("win" / "loss" / "tie", see :mod:`anytime.experiments.stats`), the chosen LR and an edge mark
where the optimum stayed on its grid's edge. It also keeps the loss-vs-LR curves of the tuning
seed and writes a short paragraph on what the suite can and cannot conclude.

Only :func:`write_report` writes files; everything else returns values.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

from etils import epath

from anytime.experiments import stats, tuning
from anytime.experiments.stats import Delta, SamplingError, Summary, Verdict
from anytime.experiments.tuning import Choice, Column, Curve, Record

CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022: compute-optimal at ~20 tokens/param
EDGE_MARK = "†"


@dataclasses.dataclass(frozen=True)
class SuiteFacts:
  """Suite-level facts the table needs besides the records."""
  base_steps: int  # the 1x horizon, in steps
  tokens_per_step: int
  non_embedding_params: int
  total_params: int
  eval_tokens: int  # validation tokens per evaluation
  tuning_seed: int  # records with this seed come from the LR grid
  # horizon -> per-token loss std of one evaluation (gives a lower bound on the eval error)
  eval_loss_std: Mapping[int, float] = dataclasses.field(default_factory=dict)
  # horizon -> per-window mean losses of one evaluation (the preferred eval error estimate)
  window_losses: Mapping[int, Sequence[float]] = dataclasses.field(default_factory=dict)
  # horizon -> per-window mean losses of two different models on the same windows: the eval
  # set's error of a delta
  paired_window_losses: Mapping[int, tuple[Sequence[float], Sequence[float]]] = (
      dataclasses.field(default_factory=dict))

  def __post_init__(self):
    for name in ("base_steps", "tokens_per_step", "non_embedding_params", "total_params",
                 "eval_tokens"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class Cell(NamedTuple):
  """One column at one horizon."""
  column: Column
  horizon: int
  lr: float
  edge: bool  # the chosen LR is still on an edge of its grid
  loss: Summary
  delta: Delta  # to the envelope
  verdict: Verdict


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
  envelope: Summary
  cells: tuple[Cell, ...]


@dataclasses.dataclass(frozen=True)
class Report:
  """Everything the rendered report shows."""
  facts: SuiteFacts
  rows: tuple[Row, ...]
  columns: tuple[Column, ...]
  choices: Mapping[Column, Choice]
  curves: Mapping[Column, Mapping[int, Curve]]
  sampling_error: SamplingError | None
  delta_sampling_error: SamplingError | None  # the eval set's error of a delta (paired)
  include_tuning_seed: bool
  threshold: float  # a delta within this many standard errors is a tie


# ------------------------------------------------------------------------------ assembly


def build_report(records: Sequence[Record], facts: SuiteFacts, *,
                 families: Sequence[str] = tuning.BASELINE_FAMILIES,
                 per_horizon_methods: Collection[str] = tuning.BASELINE_FAMILIES,
                 include_tuning_seed: bool = True,
                 threshold: float = stats.TIE_THRESHOLD) -> Report:
  """Assembles the table from the suite's records (see the module docstring)."""
  records = list(records)
  if not records:
    raise ValueError("records: the suite produced no evaluated numbers")
  choices = tuning.choose_all(records, tuning_seed=facts.tuning_seed,
                              per_horizon_methods=per_horizon_methods)
  env = tuning.envelope(records, choices, families=families)
  columns = tuple(sorted(choices, key=lambda c: (c.method not in families, c.method,
                                                 c.candidate)))
  keep = lambda losses: _seeds(losses, facts.tuning_seed, include_tuning_seed)
  rows = []
  for h, point in sorted(env.items()):
    reference = keep(point.losses)
    cells = tuple(_cell(records, choices[c], h, reference, keep, threshold)
                  for c in columns if h in choices[c].optima)
    tokens = h * facts.tokens_per_step
    per_param = tokens / facts.non_embedding_params
    family_choice = choices[Column(point.family, "raw")]
    rows.append(Row(h, h / facts.base_steps, tokens, per_param,
                    per_param / CHINCHILLA_TOKENS_PER_PARAM, point.family, point.lr,
                    family_choice.optima[h].at_edge, stats.summarize(list(reference.values())),
                    cells))
  curves = tuning.tuning_curves(records, tuning_seed=facts.tuning_seed)
  return Report(facts, tuple(rows), columns, choices, curves, sampling_error(facts),
                delta_sampling_error(facts), include_tuning_seed, threshold)


def _seeds(losses: Mapping[int, float], tuning_seed: int, include: bool) -> dict[int, float]:
  """Drops the tuning seed when asked, unless it is the only one."""
  if include or set(losses) == {tuning_seed}:
    return dict(losses)
  return {s: v for s, v in losses.items() if s != tuning_seed}


def _cell(records: Sequence[Record], choice: Choice, horizon: int,
          reference: Mapping[int, float], keep, threshold: float) -> Cell:
  optimum = choice.optima[horizon]
  losses = keep(tuning.seed_losses(records, choice.column, horizon, optimum.lr))
  d = stats.delta(losses, reference)
  return Cell(choice.column, horizon, optimum.lr, optimum.at_edge,
              stats.summarize(list(losses.values())), d,
              stats.verdict(d.mean, d.se, threshold))


def sampling_error(facts: SuiteFacts) -> SamplingError | None:
  """The largest eval-set sampling error over horizons: per-window if given, else per-token."""
  if facts.window_losses:
    return max((stats.window_sampling_error(w) for w in facts.window_losses.values()),
               key=lambda e: e.value)
  if facts.eval_loss_std:
    return stats.token_sampling_error(max(facts.eval_loss_std.values()), facts.eval_tokens)
  return None


def delta_sampling_error(facts: SuiteFacts) -> SamplingError | None:
  """The largest eval-set error of a delta (two models, same windows) over horizons."""
  if not facts.paired_window_losses:
    return None
  return max((stats.paired_window_sampling_error(a, b)
              for a, b in facts.paired_window_losses.values()), key=lambda e: e.value)


# ------------------------------------------------------------------------------ text


def _pm(summary: Summary) -> str:
  if math.isnan(summary.se):
    return f"{summary.mean:.4f}"
  return f"{summary.mean:.4f} ± {summary.se:.4f}"


def _delta_text(d: Delta) -> str:
  if math.isnan(d.se):
    return f"{d.mean:+.4f}"
  return f"{d.mean:+.4f} ± {d.se:.4f}"


def _lr(lr: float, edge: bool) -> str:
  return f"lr {lr:.3g}" + (EDGE_MARK if edge else "")


def _num(x: float) -> str:
  """3 significant digits without exponents for the table's ratios (20, 0.5, 1,280)."""
  return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _horizon_cells(row: Row) -> list[str]:
  return [f"{row.multiplier:g}x", str(row.horizon), f"{row.tokens:,}",
          f"{_num(row.tokens_per_param)} ({_num(row.chinchilla)}x)"]


def markdown_table(report: Report) -> str:
  """Rows = horizons; per column: mean ± s.e. (delta ± s.e., verdict) and the chosen LR."""
  labels = [c.label for c in report.columns]
  lines = ["| horizon | steps | tokens | tokens/param (Chinchilla) | envelope | "
           + " | ".join(labels) + " |",
           "|---|---:|---:|---:|---|" + "---|" * len(labels)]
  for row in report.rows:
    by_column = {cell.column: cell for cell in row.cells}
    envelope = (f"{_pm(row.envelope)} {row.envelope_family} "
                f"{_lr(row.envelope_lr, row.envelope_edge)}")
    cells = [_cell_text(by_column[c]) if c in by_column else "–" for c in report.columns]
    lines.append("| " + " | ".join(_horizon_cells(row) + [envelope] + cells) + " |")
  return "\n".join(lines)


def _cell_text(cell: Cell) -> str:
  return (f"{_pm(cell.loss)} ({_delta_text(cell.delta)} {cell.verdict}) "
          f"{_lr(cell.lr, cell.edge)}")


def table_notes(report: Report) -> str:
  """The legend under the table."""
  f = report.facts
  anytime = [c.label for c in report.columns if not report.choices[c].per_horizon]
  return "\n".join([
      f"Loss: validation nats/token, mean ± standard error over seeds; in brackets the delta to "
      f"the envelope (negative = better) ± its standard error and the verdict (tie when "
      f"|delta| < {report.threshold:g} s.e.; always a tie with one seed).",
      "Envelope: per horizon the best baseline family on the tuning seed at its own tuned LR "
      "(its per-seed losses are then used as they are).",
      f"Tokens/param: per non-embedding parameter ({f.non_embedding_params:,}; "
      f"{f.total_params:,} with embeddings); Chinchilla = {CHINCHILLA_TOKENS_PER_PARAM:g} "
      "tokens/param.",
      "LR: the chosen peak LR; baselines are tuned per horizon, "
      + (f"these columns have ONE LR for all horizons, chosen by the mean loss over horizons: "
         f"{', '.join(anytime)}." if anytime else "no column has a horizon-free LR.")
      + f" {EDGE_MARK} = the optimum is still on an edge of its grid (maybe under-tuned)."])


def _grid(report: Report, horizon: int) -> list[float]:
  lrs: list[float] = []
  for by_h in report.curves.values():
    for lr in by_h.get(horizon, Curve((), ())).lrs:
      if not any(tuning.same_lr(lr, x) for x in lrs):
        lrs.append(lr)
  return sorted(lrs)


def lr_curves_markdown(report: Report) -> str:
  """Per horizon: loss vs LR of each column on the tuning seed; the chosen LR in bold."""
  parts = []
  for row in report.rows:
    grid = _grid(report, row.horizon)
    lines = [f"**{row.multiplier:g}x ({row.horizon} steps), tuning seed "
             f"{report.facts.tuning_seed}**", "",
             "| column | " + " | ".join(f"{lr:.3g}" for lr in grid) + " |",
             "|---|" + "---:|" * len(grid)]
    for column in report.columns:
      curve = report.curves[column].get(row.horizon)
      if curve is None:
        continue
      chosen = report.choices[column].optima[row.horizon].lr
      lines.append(f"| {column.label} | " + " | ".join(
          _curve_cell(curve, lr, chosen) for lr in grid) + " |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def _curve_cell(curve: Curve, lr: float, chosen: float) -> str:
  for x, loss in zip(curve.lrs, curve.losses):
    if tuning.same_lr(x, lr):
      text = f"{loss:.4f}"
      return f"**{text}**" if tuning.same_lr(x, chosen) else text
  return "–"


def conclusions(report: Report) -> str:
  """The paragraph "What this suite can and cannot conclude", from the numbers."""
  cells = [cell for row in report.rows for cell in row.cells
           if cell.column.method != row.envelope_family or cell.column.candidate != "raw"]
  seeds = sorted({cell.loss.num_seeds for cell in cells} | {r.envelope.num_seeds
                                                            for r in report.rows})
  counts = {v: sum(cell.verdict == v for cell in cells) for v in ("win", "loss", "tie")}
  edges = sum(cell.edge for cell in cells) + sum(r.envelope_edge for r in report.rows)
  floors = [report.threshold * cell.delta.se for cell in cells if math.isfinite(cell.delta.se)]
  noise = [r.envelope.se * math.sqrt(r.envelope.num_seeds) for r in report.rows
           if math.isfinite(r.envelope.se)]
  text = [f"Seeds per configuration: {_span(seeds)}"
          + ("" if report.include_tuning_seed else " (the tuning seed left out)")
          + (", the tuning seed included (it also chose the LRs, which favours the "
             "envelope slightly)" if report.include_tuning_seed else "") + "."]
  if not floors:
    text.append("With one seed there is no noise floor: no delta can be called a win or a "
                "loss, and every one is reported as a tie.")
  else:
    text.append(f"Noise floor: a delta must exceed {report.threshold:g} standard errors, here "
                f"{statistics.median(floors):.4f} nats (median; {min(floors):.4f}-"
                f"{max(floors):.4f}), to count.")
  if noise:
    text.append(f"The same configuration's loss varies by {statistics.median(noise):.4f} "
                "nats between seeds (std of the envelope, median over horizons).")
  text.append(_sampling_sentence(report.sampling_error, noise))
  delta_noise = [cell.delta.se * math.sqrt(cell.delta.num_seeds) for cell in cells
                 if math.isfinite(cell.delta.se) and cell.delta.se > 0]
  text.append(_delta_sampling_sentence(report.delta_sampling_error, delta_noise))
  paired = sum(cell.delta.paired for cell in cells)
  text.append(f"Of {len(cells)} deltas to the envelope, {counts['tie']} are ties, "
              f"{counts['win']} wins and {counts['loss']} losses; {paired} are paired over "
              "seeds (same seeds on both sides)"
              + (f", {len(cells) - paired} unpaired (Welch)." if paired < len(cells) else "."))
  text.append(f"{edges} chosen LRs stayed on a grid edge ({EDGE_MARK}): those columns may be "
              "under-tuned." if edges else "Every chosen LR is inside its grid.")
  text.append("A tie means the suite cannot tell the two apart at this scale and seed count, "
              "not that they are equal.")
  return " ".join(text)


def _span(values: Sequence[int]) -> str:
  return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def _sampling_sentence(error: SamplingError | None, noise: Sequence[float]) -> str:
  if error is None:
    return "The evaluation set's own sampling error was not measured."
  text = f"Evaluation-set sampling error: {error.value:.4f} nats ({error.note})"
  if not noise:
    return text + "."
  ratio = error.value / statistics.median(noise)
  verdict = ("well below the seed noise" if ratio < 0.3 else
             "NOT well below the seed noise: the absolute losses carry it (enlarge the "
             "evaluation set to shrink it)")
  return (text + f", {ratio:.2f}x the seed noise: {verdict}. Every column is evaluated on the "
          "same windows, so this error largely cancels in the deltas to the envelope.")


def _delta_sampling_sentence(error: SamplingError | None, noise: Sequence[float]) -> str:
  if error is None:
    return ("The evaluation set's error of a delta (two models on the same windows) was not "
            "measured.")
  text = (f"Evaluation-set error of a delta: {error.value:.4f} nats ({error.note}; the windows "
          "are the same for every seed, so the seed standard errors do not contain it)")
  if not noise:
    return text + "."
  ratio = error.value / statistics.median(noise)
  return text + (f", {ratio:.2f}x the seed noise of a delta (std over seeds, median "
                 f"{statistics.median(noise):.4f}): "
                 + ("well below it." if ratio < 0.3 else
                    "NOT well below it: enlarge the evaluation set before trusting a verdict."))


# ------------------------------------------------------------------------------ CSV / JSON


def long_rows(report: Report) -> list[dict[str, Any]]:
  """One flat dict per (horizon, column), the envelope first: the CSV/JSON rows."""
  out = []
  for row in report.rows:
    base = dict(horizon=row.horizon, multiplier=row.multiplier, tokens=row.tokens,
                tokens_per_param=row.tokens_per_param, chinchilla_multiple=row.chinchilla)
    out.append(dict(base, column="envelope", method=row.envelope_family, candidate="raw",
                    lr=row.envelope_lr, edge=row.envelope_edge, mean=row.envelope.mean,
                    se=row.envelope.se, num_seeds=row.envelope.num_seeds, delta=0.0,
                    delta_se=math.nan, paired=True, verdict=""))
    for cell in row.cells:
      out.append(dict(base, column=cell.column.label, method=cell.column.method,
                      candidate=cell.column.candidate, lr=cell.lr, edge=cell.edge,
                      mean=cell.loss.mean, se=cell.loss.se, num_seeds=cell.loss.num_seeds,
                      delta=cell.delta.mean, delta_se=cell.delta.se, paired=cell.delta.paired,
                      verdict=cell.verdict))
  return out


def csv_text(report: Report) -> str:
  rows = long_rows(report)
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


def _json_safe(value: Any) -> Any:
  return None if isinstance(value, float) and not math.isfinite(value) else value


def json_dict(report: Report) -> dict[str, Any]:
  """The report as JSON-ready data (non-finite numbers as null)."""
  f = report.facts
  curves = [dict(column=c.label, method=c.method, candidate=c.candidate, horizon=h,
                 lrs=list(curve.lrs), losses=[_json_safe(x) for x in curve.losses],
                 chosen_lr=report.choices[c].optima[h].lr,
                 one_lr_for_all_horizons=not report.choices[c].per_horizon)
            for c, by_h in report.curves.items() for h, curve in by_h.items()]
  error = report.sampling_error
  return dict(
      facts=dict(base_steps=f.base_steps, tokens_per_step=f.tokens_per_step,
                 non_embedding_params=f.non_embedding_params, total_params=f.total_params,
                 eval_tokens=f.eval_tokens, tuning_seed=f.tuning_seed),
      rows=[{k: _json_safe(v) for k, v in r.items()} for r in long_rows(report)],
      lr_curves=curves,
      eval_sampling_error=None if error is None else error._asdict(),
      delta_eval_sampling_error=(None if report.delta_sampling_error is None
                                 else report.delta_sampling_error._asdict()),
      conclusions=conclusions(report))


# ------------------------------------------------------------------------------ plots


def plot_lr_curves(report: Report):
  """Loss vs peak LR (tuning seed), one panel per horizon, a line per tuned column."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  tuned = [c for c in report.columns
           if any(len(curve.lrs) > 1 for curve in report.curves[c].values())]
  fig = Figure(figsize=(4.0 * max(len(report.rows), 1), 3.8))
  axes = fig.subplots(1, max(len(report.rows), 1), squeeze=False)[0]
  for ax, row in zip(axes, report.rows):
    for column in tuned:
      curve = report.curves[column].get(row.horizon)
      if curve is None:
        continue
      (line,) = ax.plot(curve.lrs, curve.losses, "o-", ms=3, label=column.label)
      chosen = report.choices[column].optima[row.horizon]
      ax.plot([chosen.lr], [chosen.loss], "*", ms=11, color=line.get_color())
    ax.set_xscale("log")
    ax.set_title(f"{row.multiplier:g}x: {_num(row.tokens_per_param)} tokens/param", fontsize=9)
    ax.set_xlabel("peak LR")
    ax.grid(alpha=0.3, which="both")
  axes[0].set_ylabel(f"validation loss, seed {report.facts.tuning_seed}")
  axes[0].legend(fontsize=6)
  fig.suptitle("Loss vs LR per horizon (★ = chosen)", fontsize=10)
  fig.tight_layout()
  return fig


def plot_loss_vs_tokens(report: Report):
  """Envelope (mean ± s.e.) and each horizon-free column vs tokens (top axis: tokens/param)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(7.5, 4.8))
  ax = fig.subplots()
  tokens = [r.tokens for r in report.rows]
  ax.errorbar(tokens, [r.envelope.mean for r in report.rows],
              yerr=[_zero_if_nan(r.envelope.se) for r in report.rows], fmt="k-o", lw=2,
              capsize=3, label="envelope (baselines tuned per horizon)", zorder=5)
  for column in report.columns:
    if report.choices[column].per_horizon:
      continue
    cells = [(r.tokens, c) for r in report.rows for c in r.cells if c.column == column]
    ax.errorbar([t for t, _ in cells], [c.loss.mean for _, c in cells],
                yerr=[_zero_if_nan(c.loss.se) for _, c in cells], fmt="-s", ms=4, capsize=3,
                alpha=0.85, label=f"{column.label} (one LR)")
  ax.set_xscale("log")
  ax.set_xlabel("tokens")
  ax.set_ylabel("validation loss (nats/token)")
  per_param = report.facts.non_embedding_params
  top = ax.secondary_xaxis("top", functions=(lambda t: t / per_param, lambda p: p * per_param))
  top.set_xlabel("tokens per non-embedding parameter (Chinchilla = 20)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def _zero_if_nan(value: float) -> float:
  return 0.0 if math.isnan(value) else value


# ------------------------------------------------------------------------------ files


def report_markdown(report: Report) -> str:
  return "\n\n".join([markdown_table(report), table_notes(report),
                      "### What this suite can and cannot conclude", conclusions(report),
                      "### Loss vs LR (tuning seed)", lr_curves_markdown(report)]) + "\n"


def write_report(out_dir: str | epath.Path, report: Report) -> dict[str, epath.Path]:
  """Writes table.md, table.csv, table.json, loss_vs_lr.png, loss_vs_tokens.png to out_dir.

  Call it from one process only (e.g. ``jax.process_index() == 0``).
  """
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {name: out / name for name in ("table.md", "table.csv", "table.json",
                                         "loss_vs_lr.png", "loss_vs_tokens.png")}
  paths["table.md"].write_text(report_markdown(report))
  paths["table.csv"].write_text(csv_text(report))
  paths["table.json"].write_text(json.dumps(json_dict(report), indent=2, allow_nan=False))
  for name, figure in (("loss_vs_lr.png", plot_lr_curves(report)),
                       ("loss_vs_tokens.png", plot_loss_vs_tokens(report))):
    with paths[name].open("wb") as f:
      figure.savefig(f, dpi=130)
  return paths
