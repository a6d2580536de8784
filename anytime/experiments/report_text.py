"""Text of the verdict report: deltas.csv rows, Markdown tables, notes, JSON, terminal summary.

Every rendering is made from the same :class:`~anytime.experiments.verdict.Cell` s (one row of
``deltas.csv`` each), so the Markdown table, the CSV and the plots cannot disagree.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from typing import Any

from anytime.experiments import tuning
from anytime.experiments.stats import Summary
from anytime.experiments.tuning import Curve
# Annotations name verdict's Report/Cell/Row (never evaluated): verdict imports this module.

CHINCHILLA_TOKENS_PER_PARAM = 20.0  # Hoffmann et al. 2022: compute-optimal at ~20 tokens/param
EDGE_MARK = "†"

SHORT = {"win": "win", "loss": "loss", "equivalent": "equiv", "undecided": "undec",
         "oracle": "oracle", "reference": "ref"}
DELTA_FIELDS = ("method", "candidate", "column", "role", "horizon_steps", "multiplier",
                "tokens_per_param", "envelope_family", "lr", "edge", "look",
                "reporting_seeds", "seeds", "loss", "envelope_loss", "delta", "se_seed",
                "se_eval", "eval_status", "eval_documents", "se", "df", "level", "ci_low",
                "ci_high", "p_value", "p_adjusted", "p_equivalence", "margin", "verdict",
                "within_margin")


# ------------------------------------------------------------------------------ rows


def delta_rows(report: Report) -> list[dict[str, Any]]:
  """One dict per (column, horizon): the rows of ``deltas.csv``."""
  out = []
  for row in report.rows:
    for c in row.cells:
      out.append(dict(
          method=c.column.method, candidate=c.column.candidate, column=c.column.label,
          role=c.role, horizon_steps=row.horizon, multiplier=row.multiplier,
          tokens_per_param=row.tokens_per_param, envelope_family=row.envelope_family, lr=c.lr,
          edge=c.edge, look=c.look, reporting_seeds=len(c.seeds),
          seeds=" ".join(map(str, c.seeds)), loss=c.loss.mean, envelope_loss=c.reference.mean,
          delta=c.delta, se_seed=c.se_seed, se_eval=c.se_eval, eval_status=c.eval_status,
          eval_documents=c.eval_clusters, se=c.se, df=c.df, level=c.level, ci_low=c.ci_low,
          ci_high=c.ci_high, p_value=c.p_value, p_adjusted=c.p_adjusted,
          p_equivalence=c.p_equivalence, margin=report.margin, verdict=c.verdict,
          within_margin=c.within_margin if c.tested else ""))
  return out


def long_rows(report: Report) -> list[dict[str, Any]]:
  """``table.csv``: per horizon the envelope (first-stage seeds) and then its cells."""
  out = []
  cells = iter(delta_rows(report))
  for row in report.rows:
    out.append(dict({k: "" for k in DELTA_FIELDS}, method=row.envelope_family, candidate="raw",
                    column="envelope", role="envelope", horizon_steps=row.horizon,
                    multiplier=row.multiplier, tokens_per_param=row.tokens_per_param,
                    envelope_family=row.envelope_family, lr=row.envelope_lr,
                    edge=row.envelope_edge, reporting_seeds=row.envelope.num_seeds,
                    seeds=" ".join(map(str, report.stages.first)), loss=row.envelope.mean,
                    envelope_loss=row.envelope.mean))
    out += [next(cells) for _ in row.cells]
  return out


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else list(DELTA_FIELDS))
  writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


# ------------------------------------------------------------------------------ formatting


def _f(x: float, digits: int = 4, sign: bool = False) -> str:
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "–"
  return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _p(p: float) -> str:
  if not math.isfinite(p):
    return "–"
  return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _pm(summary: Summary) -> str:
  if summary.num_seeds == 0:
    return "–"
  return f"{summary.mean:.4f}" + ("" if math.isnan(summary.se) else f" ± {summary.se:.4f}")


def _lr(lr: float, edge: bool) -> str:
  return f"lr {lr:.3g}" + (EDGE_MARK if edge else "")


def _num(x: float) -> str:
  """3 significant digits without exponents for the table's ratios (20, 0.5, 1,280)."""
  return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _interval(c: Cell, digits: int = 4) -> str:
  return f"[{_f(c.ci_low, digits, True)}, {_f(c.ci_high, digits, True)}]"


def _label(report: Report, c: Cell) -> str:
  return c.column.label + (" (oracle)" if c.role == "oracle" else "")


# ------------------------------------------------------------------------------ markdown


def markdown_table(report: Report) -> str:
  """Rows = horizons; per column: delta to the envelope [interval] verdict, and the LR."""
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


def _horizon_cells(row: Row) -> list[str]:
  return [f"{row.multiplier:g}x", str(row.horizon), f"{row.tokens:,}",
          f"{_num(row.tokens_per_param)} ({_num(row.chinchilla)}x)"]


def _cell_text(c: Cell) -> str:
  if c.role == "reference":
    return f"envelope {_lr(c.lr, c.edge)}"
  stage = " (look 2)" if c.look == 2 else ""
  return (f"{_f(c.delta, 4, True)} {_interval(c)} **{c.verdict}**{stage} "
          f"{_lr(c.lr, c.edge)}")


def cells_markdown(report: Report) -> str:
  """Every tested or oracle cell with both error sources and raw and adjusted p-values."""
  lines = ["| column | horizon | seeds | loss | delta | s.e. seed | s.e. eval (docs) | df | "
           "interval | p | p adj. | p equiv. | verdict |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"]
  for row in report.rows:
    for c in row.cells:
      if c.role == "reference":
        continue
      evaluation = (f"{_f(c.se_eval)} ({c.eval_clusters})" if c.eval_status == "clustered"
                    else "missing: seed error only")
      lines.append(
          f"| {_label(report, c)}{' (primary)' if c.role == 'primary' else ''} | "
          f"{row.multiplier:g}x | {len(c.seeds)} | {_pm(c.loss)} | {_f(c.delta, 4, True)} | "
          f"{_f(c.se_seed)} | {evaluation} | {_f(c.df, 1)} | {_interval(c)} | "
          f"{_p(c.p_value)} | {_p(c.p_adjusted)} | {_p(c.p_equivalence)} | {c.verdict}"
          + (f" (look {c.look})" if c.look == 2 else "") + " |")
  return "\n".join(lines)


def lr_curves_markdown(report: Report) -> str:
  """Per horizon: loss vs LR of each column on the tuning seeds; the chosen LR in bold."""
  parts = []
  seeds = ", ".join(map(str, report.tuning_seeds))
  for row in report.rows:
    grid = _grid(report, row.horizon)
    lines = [f"**{row.multiplier:g}x ({row.horizon} steps), tuning seed(s) {seeds}**", "",
             "| column | " + " | ".join(f"{lr:.3g}" for lr in grid) + " |",
             "|---|" + "---:|" * len(grid)]
    for column in report.columns:
      curve = report.curves.get(column, {}).get(row.horizon)
      if curve is None:
        continue
      chosen = report.choices[column].optima[row.horizon].lr
      lines.append(f"| {column.label} | " + " | ".join(
          _curve_cell(curve, lr, chosen) for lr in grid) + " |")
    parts.append("\n".join(lines))
  return "\n\n".join(parts)


def _grid(report: Report, horizon: int) -> list[float]:
  lrs: list[float] = []
  for by_h in report.curves.values():
    for lr in by_h.get(horizon, Curve((), ())).lrs:
      if not any(tuning.same_lr(lr, x) for x in lrs):
        lrs.append(lr)
  return sorted(lrs)


def _curve_cell(curve: Curve, lr: float, chosen: float) -> str:
  for x, loss in zip(curve.lrs, curve.losses):
    if tuning.same_lr(x, lr):
      text = f"{loss:.4f}"
      return f"**{text}**" if tuning.same_lr(x, chosen) else text
  return "–"


# ------------------------------------------------------------------------------ notes


def rule_text(report: Report) -> str:
  """The decision rule and the error levels, in one paragraph."""
  level = report.level_per_look
  looks = report.stages.looks
  primary = report.primary.label if report.primary else "none"
  return (
      f"Delta = column minus envelope (nats/token, negative = better), paired over reporting "
      f"seeds that took no part in any choice (tuning seeds: "
      f"{', '.join(map(str, report.tuning_seeds))}). Interval: delta ± t(df) x sqrt(s.e. seed² "
      f"+ s.e. eval²), df by Welch-Satterthwaite; s.e. eval is the evaluation set's error of "
      f"that delta (per-window paired differences, clustered by source document). Verdict: "
      f"win/loss when the {report.multiplicity}-adjusted two-sided p <= {level:g}; else "
      f"equivalent when the {1 - 2 * level:.0%} interval lies inside ±{report.margin:g} "
      f"(TOST at {level:g}, per cell); else undecided (no evidence either way). Multiplicity: "
      f"the primary comparison ({primary} vs the envelope, one hypothesis per horizon) is one "
      f"family, every other tested cell a second; {report.multiplicity} within each family, "
      f"family-wise error <= {report.alpha:g} per family (<= {2 * report.alpha:g} over both). "
      + (f"Two looks planned: {report.alpha:g} split as {level:g} per look (Bonferroni over "
         f"looks); a look-1 verdict is final, undecided cells get more seeds and are decided at "
         f"look 2 on all their seeds. " if looks == 2 else "One look. ")
      + f"Intervals shown are at the look's level ({1 - level:.1%}), unadjusted for "
      "multiplicity; oracle columns get an interval and no verdict.")


def table_notes(report: Report) -> str:
  """The legend under the table."""
  f = report.facts
  anytime = [c.label for c in report.columns if not report.choices[c].per_horizon]
  return "\n".join([
      rule_text(report),
      "Envelope: per horizon the best baseline family on the tuning seeds at its own tuned LR; "
      "its loss is the mean ± s.e. over the first-stage reporting seeds.",
      f"Tokens/param: per non-embedding parameter ({f.non_embedding_params:,}; "
      f"{f.total_params:,} with embeddings); Chinchilla = {CHINCHILLA_TOKENS_PER_PARAM:g} "
      "tokens/param.",
      "LR: the chosen peak LR; baselines are tuned per horizon, "
      + (f"these columns have ONE LR for all horizons, chosen by the mean loss over horizons: "
         f"{', '.join(anytime)}." if anytime else "no column has a horizon-free LR.")
      + f" {EDGE_MARK} = the optimum is still on an edge of its grid (maybe under-tuned)."])


def conclusions(report: Report) -> str:
  """The paragraph "What this suite can and cannot conclude", from the numbers."""
  cells = [c for c in report.cells if c.tested]
  stages = report.stages
  text = [f"Reporting seeds: {_seeds(stages.first)} at look 1"
          + (f", {_seeds(stages.second)} added at look 2" if stages.second else "")
          + f"; choices on tuning seed(s) {_seeds(report.tuning_seeds)} only."]
  counts = {v: sum(c.verdict == v for c in cells) for v in ("win", "loss", "equivalent",
                                                           "undecided")}
  text.append(f"Of {len(cells)} tested deltas to the envelope: {counts['win']} wins, "
              f"{counts['loss']} losses, {counts['equivalent']} equivalent within "
              f"±{report.margin:g}, {counts['undecided']} undecided.")
  primary = [c for c in cells if c.role == "primary"]
  if primary:
    text.append(f"Primary ({report.primary.label}): " + "; ".join(
        f"{_horizon_of(report, c)} {c.verdict} ({_f(c.delta, 4, True)}, p adj. "
        f"{_p(c.p_adjusted)})" for c in primary) + ".")
  second = [c for c in cells if c.look == 2]
  if stages.looks == 2:
    runs = report.facts.second_stage_runs
    text.append(
        (f"Look 2 re-decided {len(second)} cells undecided at look 1"
         if stages.second else "Look 2 not run yet")
        + (f"; the second stage cost {runs} runs" if runs is not None else "")
        + (f" of {report.facts.runs} in all" if report.facts.runs is not None else "") + ".")
  clustered = [c for c in cells if c.eval_status == "clustered" and c.se_seed > 0]
  missing = sum(c.eval_status == "missing" for c in cells)
  if clustered:
    ratios = [c.se_eval / c.se_seed for c in clustered]
    over = sum(r > 0.5 for r in ratios)
    text.append(
        f"Evaluation set: {report.window_count:,} windows from {report.window_documents:,} "
        f"documents; its clustered error of a delta is {statistics.median(ratios):.2f}x the "
        f"seed s.e. (median; target <= 0.5): "
        + ("small enough in every cell." if not over else
           f"above half the seed s.e. in {over} of {len(clustered)} cells; enlarge the "
           "evaluation set (more documents) to shrink it, since more seeds do not."))
  if missing:
    text.append(f"{missing} cells have no window data: their interval holds the seed error "
                "only (flagged 'missing'), which understates it.")
  if any(len(c.seeds) < 2 for c in cells):
    text.append("Cells with fewer than 2 reporting seeds have no noise estimate and stay "
                "undecided.")
  edges = sum(c.edge for c in cells) + sum(r.envelope_edge for r in report.rows)
  text.append(f"{edges} chosen LRs stayed on a grid edge ({EDGE_MARK}): those columns may be "
              "under-tuned." if edges else "Every chosen LR is inside its grid.")
  if report.facts.wall_seconds is not None:
    text.append(f"Wall time of the suite: {report.facts.wall_seconds / 60:.1f} min.")
  text.append("Undecided means the suite cannot tell the two apart at this scale and seed "
              "count, not that they are equal; only 'equivalent' supports 'within the margin'.")
  return " ".join(text)


def _seeds(seeds: Sequence[int]) -> str:
  return ", ".join(map(str, seeds)) if seeds else "none"


def _horizon_of(report: Report, c: Cell) -> str:
  row = next(r for r in report.rows if r.horizon == c.horizon)
  return f"{row.multiplier:g}x"


def report_markdown(report: Report) -> str:
  return "\n\n".join([markdown_table(report), table_notes(report),
                      "### Every delta: both error sources, raw and adjusted p-values",
                      cells_markdown(report),
                      "### What this suite can and cannot conclude", conclusions(report),
                      "### Loss vs LR (tuning seeds)", lr_curves_markdown(report)]) + "\n"


# ------------------------------------------------------------------------------ JSON


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
  return dict(
      facts=dict(base_steps=f.base_steps, tokens_per_step=f.tokens_per_step,
                 non_embedding_params=f.non_embedding_params, total_params=f.total_params,
                 eval_tokens=f.eval_tokens, runs=f.runs, second_stage_runs=f.second_stage_runs,
                 wall_seconds=f.wall_seconds),
      rule=dict(alpha=report.alpha, level_per_look=report.level_per_look,
                looks=report.stages.looks, margin=report.margin,
                multiplicity=report.multiplicity,
                primary=report.primary.label if report.primary else None,
                tuning_seeds=list(report.tuning_seeds), first_stage=list(report.stages.first),
                second_stage=list(report.stages.second), text=rule_text(report)),
      evaluation_set=dict(windows=report.window_count, documents=report.window_documents),
      rows=[{k: _json_safe(v) for k, v in r.items()} for r in long_rows(report)],
      lr_curves=curves,
      conclusions=conclusions(report))


# ------------------------------------------------------------------------------ terminal


def terminal_summary(report: Report, width: int = 100) -> str:
  """Methods as rows, horizons as columns: delta and verdict, then the interval; horizons are
  split into blocks so that no line is longer than ``width``."""
  level = report.level_per_look
  head = [f"Deltas to the envelope (nats, - = better), {1 - level:.1%} interval; "
          f"{report.multiplicity}, FWER {report.alpha:g}/family"
          + (f", {level:g} per look" if report.stages.looks == 2 else ""),
          f"win/loss: adj. p <= {level:g}; equiv: TOST within ±{report.margin:g}; "
          "undec: neither. * primary"]
  labels = {}
  for c in report.columns:
    labels[c] = (c.label + (" *" if c == report.primary else ""))[:22]
  label_w = max([len(v) for v in labels.values()] + [6])
  cell_w = 19
  per_block = max(1, (width - label_w) // (cell_w + 3))
  lines = list(head)
  rows = list(report.rows)
  for start in range(0, len(rows), per_block):
    block = rows[start:start + per_block]
    lines.append("")
    lines.append(f"{'method':<{label_w}}" + "".join(
        f" | {f'{r.multiplier:g}x ({r.horizon})':<{cell_w}}" for r in block))
    lines.append("-" * label_w + "".join("-+-" + "-" * cell_w for _ in block))
    for column in report.columns:
      cells = [next((c for c in r.cells if c.column == column), None) for r in block]
      if all(c is None for c in cells):
        continue
      top = [_term_top(c) for c in cells]
      bottom = [_term_bottom(c) for c in cells]
      lines.append(f"{labels[column]:<{label_w}}" + "".join(f" | {t:<{cell_w}}" for t in top))
      if any(bottom):
        lines.append(" " * label_w + "".join(f" | {b:<{cell_w}}" for b in bottom))
  tested = [c for c in report.cells if c.tested]
  counts = ", ".join(f"{sum(c.verdict == v for c in tested)} {v}"
                     for v in ("win", "loss", "equivalent", "undecided"))
  lines += ["", f"{len(tested)} tested cells: {counts}."]
  clustered = [c for c in tested if c.eval_status == "clustered" and c.se_seed > 0]
  if clustered:
    ratio = statistics.median(c.se_eval / c.se_seed for c in clustered)
    lines.append(f"Eval-set error / seed s.e.: median {ratio:.2f} (target <= 0.5)")
  missing = sum(c.eval_status == "missing" for c in tested)
  if missing:
    lines.append(f"{missing} cells without window data: seed error only.")
  if report.stages.looks == 2:
    runs = report.facts.second_stage_runs
    lines.append(f"Look {report.looks_done} of 2" + (
        f"; second stage: {runs} runs" if runs is not None else ""))
  lines.append("Full tables: report/table.md, report/deltas.csv; plots: report/*.png")
  return "\n".join(line[:width] for line in lines)


def _term_top(c: Cell | None) -> str:
  if c is None:
    return "–"
  if c.role == "reference":
    return "envelope"
  return f"{_f(c.delta, 4, True)} {SHORT[c.verdict]}" + ("²" if c.look == 2 else "")


def _term_bottom(c: Cell | None) -> str:
  if c is None or c.role == "reference" or not math.isfinite(c.ci_low):
    return ""
  return f"[{_f(c.ci_low, 4, True)},{_f(c.ci_high, 4, True)}]"
