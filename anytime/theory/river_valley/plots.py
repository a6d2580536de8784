"""The river-valley lab's figures: one small function per PNG, ``plot_all`` writes them all."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def _series(records, name, weights="raw", metric="excess"):
  rows = [r for r in records[name].rows if r["weights"] == weights] if name in records else []
  return np.array([r["step"] for r in rows]), np.array([r[metric] for r in rows])


def _finite(x, y):
  keep = np.isfinite(y) if len(y) else np.zeros(0, bool)
  return x[keep], y[keep]


def _save(fig, workdir: str, filename: str) -> str:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, filename)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _budget_colors(budgets):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt.cm.viridis(np.linspace(0, 0.9, len(budgets)))


def plot_loss_curves(workdir: str, records, budgets, reference: str) -> str:
  """Excess loss vs step for every run (log scale) above the learning rates."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(9, 7), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
  for name, weights, style, label in [
      ("constant", "raw", dict(color="k", lw=1), "constant (raw)"),
      ("constant", reference, dict(color="tab:red", lw=1.5), f"constant + {reference}"),
      ("inverse_sqrt", reference, dict(color="tab:purple", lw=1.2), f"1/sqrt + {reference}"),
      ("wsd_s", "raw", dict(color="tab:orange", lw=1), "WSD-S"),
      ("cyclic_cosine", "raw", dict(color="tab:green", lw=1, alpha=0.7), "cyclic cosine"),
  ]:
    x, y = _series(records, name, weights)
    if len(x):
      ax.plot(x, y, label=label, **style)
      if weights == "raw":
        ax_lr.plot(x, _series(records, name, "raw", "lr")[1], **style)
  for b, color in zip(budgets, _budget_colors(budgets)):
    x, y = _series(records, f"wsd_{b}")
    if len(x):
      ax.plot(x, y, color=color, lw=2, label=f"WSD branch {b}")
      ax_lr.plot(x, _series(records, f"wsd_{b}", "raw", "lr")[1], color=color, lw=2)
    x, y = _series(records, f"cosine_{b}")
    if len(x):
      ax.plot(x, y, color=color, lw=1, ls="--", label=f"cosine {b}")
  ax.set_yscale("log")
  ax.set_ylabel("excess loss over Bayes (nats)")
  ax.legend(fontsize=7, ncol=2)
  ax.set_title("River valley: excess population loss")
  ax_lr.set_ylabel("LR")
  ax_lr.set_xlabel("step")
  return _save(fig, workdir, "loss_curves.png")


def plot_context_types(workdir: str, records, budgets, reference: str) -> str:
  """The excess loss split into low- and high-uncertainty contexts."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, metric, title in zip(axes, ("excess_low", "excess_high"),
                               ("low-uncertainty contexts", "high-uncertainty contexts")):
    for name, weights, style, label in [
        ("constant", "raw", dict(color="k", lw=1), "constant (raw)"),
        ("constant", reference, dict(color="tab:red", lw=1.5), f"constant + {reference}"),
    ]:
      x, y = _series(records, name, weights, metric)
      if len(x):
        ax.plot(x, y, label=label, **style)
    for b, color in zip(budgets, _budget_colors(budgets)):
      x, y = _series(records, f"wsd_{b}", "raw", metric)
      if len(x):
        ax.plot(x, y, color=color, lw=2, label=f"WSD {b}")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
  axes[0].set_ylabel("excess loss (nats)")
  axes[0].legend(fontsize=7)
  return _save(fig, workdir, "context_types.png")


def plot_budgets(workdir: str, results: list[dict[str, Any]]) -> str:
  """Excess loss at each budget for every method (log-log)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(8, 4.5))
  for method in sorted({r["method"] for r in results}):
    rows = [r for r in results if r["method"] == method]
    style = dict(ls="--", marker="x", ms=9) if method == "wsd_s" else dict(marker="o")
    ax.plot([r["budget"] for r in rows], [r["excess"] for r in rows], label=method, **style)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("budget (steps)")
  ax.set_ylabel("excess loss at budget (nats)")
  ax.legend(fontsize=7, ncol=2)
  return _save(fig, workdir, "budgets.png")


def _plot_sharpness(ax, records, budgets, reference):
  for name, weights, style, label in [
      ("constant", "raw", dict(color="k"), "constant (raw)"),
      ("constant", reference, dict(color="tab:red"), f"constant + {reference}"),
      ("wsd_s", "raw", dict(color="tab:orange"), "WSD-S"),
  ]:
    x, y = _finite(*_series(records, name, weights, "top_hessian_eigenvalue"))
    if len(x):
      ax.plot(x, y, marker=".", label=label, **style)
  for b, color in zip(budgets, _budget_colors(budgets)):
    x, y = _finite(*_series(records, f"wsd_{b}", "raw", "top_hessian_eigenvalue"))
    if len(x):
      ax.plot(x, y, color=color, marker=".", lw=2, label=f"WSD {b}")
  ax.set_xlabel("step")
  ax.set_ylabel("top Hessian eigenvalue")
  ax.set_title("sharpness (power iteration)")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)


def _plot_preconditioned(ax, records, budgets, optimizer):
  for name, style, label in [("constant", dict(color="k"), "constant"),
                             ("wsd_s", dict(color="tab:orange"), "WSD-S")]:
    x, y = _finite(*_series(records, name, "raw", "top_preconditioned_eigenvalue"))
    if len(x):
      ax.plot(x, y, marker=".", label=f"{label}: top eig of D H D", **style)
  for b, color in zip(budgets, _budget_colors(budgets)):
    x, y = _finite(*_series(records, f"wsd_{b}", "raw", "top_preconditioned_eigenvalue"))
    if len(x):
      ax.plot(x, y, color=color, marker=".", lw=2, label=f"WSD {b}")
  if optimizer.get("name") == "adam" and "constant" in records:
    x, lr = _series(records, "constant", "raw", "lr")
    b1 = optimizer["b1"]
    ax.plot(x, (2 + 2 * b1) / ((1 - b1) * lr), color="gray", ls=":",
            label="Adam stability threshold at the constant LR")
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_title("Adam-preconditioned sharpness")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)


def _plot_distances(ax, records, per_budget, reference):
  x, y = _series(records, "constant", reference, "distance_to_raw")
  if len(x):
    ax.plot(x, y, color="tab:red", label=f"|raw - {reference}| (constant run)")
  for i, row in enumerate(per_budget):
    ax.scatter([row["budget"]], [row["distance_raw_to_wsd"]], color="tab:blue", zorder=3,
               label="|raw - WSD branch| at budget" if i == 0 else None)
  ax.set_xlabel("step")
  ax.set_ylabel("distance (centered params)")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)


def plot_sharpness_distance(workdir: str, records, summary, reference: str) -> str:
  """Sharpness, Adam-preconditioned sharpness and raw-to-average/branch distances over time."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax, ax_pre, ax_d) = plt.subplots(1, 3, figsize=(15, 4))
  budgets = summary["budgets"]
  _plot_sharpness(ax, records, budgets, reference)
  _plot_preconditioned(ax_pre, records, budgets, summary.get("optimizer", {}))
  _plot_distances(ax_d, records, summary.get("diagnostics", {}).get("per_budget", []), reference)
  return _save(fig, workdir, "sharpness_distance.png")


def plot_interpolation(workdir: str, interpolation, budgets, reference: str) -> str:
  """Loss on the straight line from the raw iterate to its decayed branch and its average."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, target in zip(axes, ("wsd", reference)):
    for b, color in zip(budgets, _budget_colors(budgets)):
      rows = [r for r in interpolation if r["budget"] == b and r["target"] == target]
      ax.plot([r["alpha"] for r in rows], [r["excess"] for r in rows], color=color,
              label=f"budget {b}")
    ax.axvline(0, color="gray", lw=0.5)
    ax.axvline(1, color="gray", lw=0.5)
    ax.set_yscale("log")
    ax.set_xlabel(f"alpha: raw (0) -> {target} (1)")
    ax.set_title(f"loss on the line raw -> {target}")
  axes[0].set_ylabel("excess loss (nats)")
  axes[0].legend(fontsize=7)
  return _save(fig, workdir, "interpolation.png")


def plot_river_projection(workdir: str, projection, budgets, reference: str) -> str:
  """Iterates projected on the river x mountain plane."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 5))
  for name, weights, style, label in [
      ("constant", "raw", dict(color="k", lw=0.6, marker=".", ms=3), "constant (raw)"),
      ("constant", reference, dict(color="tab:red", lw=1.2), f"constant + {reference}"),
  ]:
    pts = [(r["river"], r["mountain"]) for r in projection
           if r["run"] == name and r["weights"] == weights]
    if pts:
      ax.plot(*np.array(pts).T, label=label, **style)
  for b, color in zip(budgets, _budget_colors(budgets)):
    pts = [(r["river"], r["mountain"]) for r in projection if r["run"] == f"wsd_{b}"]
    if pts:
      ax.plot(*np.array(pts).T, color=color, lw=2, marker="o", ms=3, label=f"WSD {b}")
  ax.set_xlabel("river coordinate (difference of the last two decayed checkpoints)")
  ax.set_ylabel("mountain coordinate (top Hessian direction)")
  ax.legend(fontsize=7)
  ax.set_title("iterates projected on river x mountain")
  return _save(fig, workdir, "river_projection.png")


def plot_all(workdir: str, records, summary, diagnostics, reference: str) -> list[str]:
  """Writes the lab's PNG figures; returns their paths."""
  budgets = summary["budgets"]
  paths = [
      plot_loss_curves(workdir, records, budgets, reference),
      plot_context_types(workdir, records, budgets, reference),
      plot_budgets(workdir, summary["results"]),
      plot_sharpness_distance(workdir, records, summary, reference),
  ]
  if diagnostics:
    paths.append(plot_interpolation(workdir, diagnostics["interpolation"], budgets, reference))
    if diagnostics["projection"]:
      paths.append(plot_river_projection(workdir, diagnostics["projection"], budgets, reference))
  return paths
