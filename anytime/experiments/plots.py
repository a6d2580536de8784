"""Figures of the verdict report (matplotlib ``Figure`` objects; no pyplot state).

- :func:`plot_lr_curves`: loss vs peak LR on the tuning seeds, one panel per horizon.
- :func:`plot_deltas`: each column's delta to the envelope with its interval per horizon, the
  zero line and the ±margin band (the same cells as ``deltas.csv``).
- :func:`plot_anytime`: the seed paper's picture, the evaluation curve of the one constant run
  (raw and averaged) over all its steps, with the envelope's tuned points on it.
"""

from __future__ import annotations

import math

# Annotations name verdict's Report/Cell/Row (never evaluated): verdict imports this module.

_MARKERS = {"win": "v", "loss": "^", "equivalent": "s", "undecided": "o", "oracle": "x"}


def _figure(**kwargs):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(**kwargs)


def plot_lr_curves(report: Report):
  """Loss vs peak LR (tuning seeds), one panel per horizon, a line per tuned column."""
  tuned = [c for c in report.columns
           if any(len(curve.lrs) > 1 for curve in report.curves.get(c, {}).values())]
  fig = _figure(figsize=(4.0 * max(len(report.rows), 1), 3.8))
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
    ax.set_title(f"{row.multiplier:g}x: {row.tokens_per_param:.3g} tokens/param", fontsize=9)
    ax.set_xlabel("peak LR")
    ax.grid(alpha=0.3, which="both")
  seeds = ", ".join(map(str, report.tuning_seeds))
  axes[0].set_ylabel(f"validation loss, tuning seed(s) {seeds}")
  axes[0].legend(fontsize=6)
  fig.suptitle("Loss vs LR per horizon (★ = chosen)", fontsize=10)
  fig.tight_layout()
  return fig


def plot_deltas(report: Report):
  """Delta to the envelope ± interval per horizon, one line per column; marker = verdict."""
  fig = _figure(figsize=(8.0, 4.8))
  ax = fig.subplots()
  columns = [c for c in report.columns
             if any(cell.column == c and cell.role != "reference" for cell in report.cells)]
  n = max(len(columns), 1)
  horizons = [row.tokens_per_param for row in report.rows]
  ax.axhspan(-report.margin, report.margin, color="0.85", alpha=0.6,
             label=f"±margin ({report.margin:g})")
  ax.axhline(0.0, color="k", lw=1)
  for i, column in enumerate(columns):
    shift = 1.06 ** (i - (n - 1) / 2)  # spread the columns around each horizon (log axis)
    cells = [(row.tokens_per_param * shift, cell) for row in report.rows for cell in row.cells
             if cell.column == column and cell.role != "reference"
             and math.isfinite(cell.delta)]
    if not cells:
      continue
    xs = [x for x, _ in cells]
    ys = [c.delta for _, c in cells]
    low = [c.delta - c.ci_low if math.isfinite(c.ci_low) else 0.0 for _, c in cells]
    high = [c.ci_high - c.delta if math.isfinite(c.ci_high) else 0.0 for _, c in cells]
    label = column.label + (" (primary)" if column == report.primary else "") + (
        " (oracle)" if cells[0][1].role == "oracle" else "")
    bars = ax.errorbar(xs, ys, yerr=[low, high], fmt="-", lw=1, capsize=3, alpha=0.9,
                       label=label)
    color = bars.lines[0].get_color()
    for x, c in cells:
      ax.plot([x], [c.delta], _MARKERS.get(c.verdict, "o"), color=color, ms=6,
              mfc=color if c.verdict in ("win", "loss") else "white")
  ax.set_xscale("log")
  ax.set_xticks(horizons, [f"{r.multiplier:g}x\n{r.tokens_per_param:.3g}" for r in report.rows])
  ax.minorticks_off()
  ax.set_xlabel("horizon (multiple of 1x; tokens per non-embedding parameter)")
  ax.set_ylabel("delta to the envelope (nats, - = better)")
  ax.set_title(f"Deltas with {1 - report.level_per_look:.1%} intervals (reporting seeds); "
               "▼ win ▲ loss ■ equivalent ○ undecided", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  return fig


def plot_anytime(report: Report):
  """The constant run's evaluation curves (raw and averaged) over all its steps, with the
  envelope's tuned points (tuning seeds: the same seed as the curve)."""
  fig = _figure(figsize=(7.5, 4.8))
  ax = fig.subplots()
  for candidate, points in sorted(report.anytime_curve.items(),
                                  key=lambda kv: (kv[0] != "raw", kv[0])):
    points = sorted(points)
    if not points:
      continue
    ax.plot([s for s, _ in points], [v for _, v in points],
            lw=1.0 if candidate == "raw" else 1.6, alpha=0.6 if candidate == "raw" else 0.95,
            label=f"constant run: {candidate}")
  ax.plot([row.horizon for row in report.rows],
          [row.envelope_tuning_loss for row in report.rows], "k*", ms=12,
          label="envelope: tuned per horizon (tuning seed)")
  for row in report.rows:
    ax.annotate(row.envelope_family, (row.horizon, row.envelope_tuning_loss),
                textcoords="offset points", xytext=(4, 6), fontsize=7)
  ax.set_xscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("validation loss (nats/token)")
  finite = [row.envelope_tuning_loss for row in report.rows
            if math.isfinite(row.envelope_tuning_loss)]
  if finite:
    span = max(finite) - min(finite)
    ax.set_ylim(min(finite) - 0.3 * span - 0.02, max(finite) + 1.0 * span + 0.05)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)
  ax.set_title("One horizon-free run vs baselines tuned for each horizon", fontsize=9)
  fig.tight_layout()
  return fig
