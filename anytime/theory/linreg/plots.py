"""Figures of the linear-regression experiments."""

from __future__ import annotations

from anytime import schedules as schedules_lib
from anytime.theory.linreg.problem import panels


def plot_figure3(rows, config, path: str) -> None:
  """Risk curves of every method with its chosen LR, one panel per (capacity, source)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  pairs = panels(config)
  ncols = len(config.capacities)
  nrows = len(config.source_ratios)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
  for p, (a, b) in enumerate(pairs):
    ax = axes[p % nrows, p // nrows]
    methods = dict.fromkeys(r[2] for r in rows if r[0] == a and r[1] == b)
    for method in methods:
      pts = [(r[4], r[5]) for r in rows if r[0] == a and r[1] == b and r[2] == method]
      lr = [r[3] for r in rows if r[0] == a and r[1] == b and r[2] == method][0]
      style = dict(marker="o", ls="--") if "cosine" in method else {}
      label = method if "cosine" in method else f"{method} (m={lr:g})"
      ax.loglog(*zip(*pts), label=label, **style)
    ax.set_title(f"a={a:g}, b={b:g}, $\\sigma^2$={config.noise:g}")
    ax.set_xlabel("step t")
    ax.set_ylabel("excess risk")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)



def plot_exponent(summary, config, path: str) -> None:
  """Best exponent gamma per horizon next to gamma*, one panel per (capacity, source)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  pairs = panels(config)
  ncols, nrows = len(config.capacities), len(config.source_ratios)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
  for p, (a, b) in enumerate(pairs):
    ax = axes[p % nrows, p // nrows]
    for result in summary["results"]:
      if result["capacity"] == a and result["source"] == b:
        pts = result["best_per_horizon"]
        ax.semilogx([r["step"] for r in pts], [r["gamma"] for r in pts], marker=".",
                    label=f"$\\sigma^2$={result['noise']:g}")
    ax.axhline(schedules_lib.anytime_exponent(a, b), color="k", ls="--", label="$\\gamma^*$")
    ax.set_title(f"a={a:g}, b={b:g}")
    ax.set_xlabel("horizon N")
    ax.set_ylabel("best exponent $\\gamma$")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)

