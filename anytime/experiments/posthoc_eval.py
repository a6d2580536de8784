"""Evaluates post-hoc reconstructed averages of a trained run (``main posthoc``).

For each target step and sigma_rel, the power EMA is reconstructed from the run's snapshots
(``anytime.posthoc``) and evaluated on the validation batches; the anytime EMA-25 is
reconstructed as well, and where a main checkpoint exists at that step, the averages it tracked
directly are evaluated beside them. Writes ``workdir/posthoc/table.{csv,json,md}`` and
``loss_vs_sigma_rel.png``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

import jax
from etils import epath

from anytime import averaging, checkpoint, loop, naming, posthoc
from anytime import workdir as workdir_lib
from anytime import config as config_lib


def run(workdir: str, *, steps: Sequence[int], sigma_rels: Sequence[float],
        anytime_factor: float = 25.0, quiet: bool = False) -> list[dict[str, Any]]:
  """Reconstructs, evaluates and reports; returns the table rows.

  ``quiet``: the table goes to the report files only, not to the console (the suite).
  """
  config = config_lib.stored_config(workdir)
  config_lib.validate_config(config)
  snapshot_dir = str(workdir_lib.snapshots_dir(workdir_lib.main_dir(workdir)))
  available = posthoc.list_snapshots(snapshot_dir) if epath.Path(snapshot_dir).exists() else []
  if not available:
    raise FileNotFoundError(f"{snapshot_dir} holds no snapshots; train with "
                            "--config.train.snapshot_every=N first")
  for step in steps:
    if not available[0] <= step <= available[-1]:
      raise ValueError(f"--step {step} is outside the snapshots' range "
                       f"[{available[0]}, {available[-1]}]")
  for sigma_rel in sigma_rels:
    averaging.sigma_rel_to_gamma(sigma_rel)  # validates the range
  run_ = loop.build_run(config, workdir)
  like = run_.abstract_state.params
  store = checkpoint.CheckpointStore(workdir_lib.main_dir(workdir), read_only=True)
  rows = []
  for step in steps:
    direct = {}
    if step in store.all_steps():
      state = store.restore(step, run_.abstract_state)
      direct = {name: run_.validation_loss(params) for name, params in
                averaging.eval_params(state.opt_state, state.params).items()}
    targets = [("sigma_rel", s, dict(sigma_rel=s)) for s in sigma_rels]
    targets.append(("anytime_factor", anytime_factor, dict(anytime_factor=anytime_factor)))
    for kind, value, kwargs in targets:
      params, fit_error = posthoc.reconstruct(snapshot_dir, target_step=step, like=like, **kwargs)
      row = dict(step=step, target=kind, value=value, fit_error=fit_error,
                 posthoc_loss=run_.validation_loss(params))
      tracked_name = (naming.ema_name(value) if kind == "anytime_factor"
                      else posthoc.default_tracking((value,)).popitem()[0])
      if tracked_name in direct:
        row["tracked_loss"] = direct[tracked_name]
        row["posthoc_minus_tracked"] = row["posthoc_loss"] - direct[tracked_name]
      rows.append(row)
      if not quiet:
        print(f"[posthoc] step {step} {kind}={value:g}: loss {row['posthoc_loss']:.4f} "
              f"(fit error {fit_error:.1e})" + (f", tracked {row['tracked_loss']:.4f}"
                                                if "tracked_loss" in row else ""), flush=True)
    if "raw" in direct:
      rows.append(dict(step=step, target="raw", value=0.0, fit_error=0.0,
                       posthoc_loss=direct["raw"]))
  store.close()
  _write(workdir_lib.posthoc_dir(workdir), rows, sigma_rels, quiet)
  return rows


def _write(out: epath.Path, rows, sigma_rels, quiet: bool) -> None:
  if jax.process_index() != 0:
    return
  out.mkdir(parents=True, exist_ok=True)
  fields = ["step", "target", "value", "fit_error", "posthoc_loss", "tracked_loss",
            "posthoc_minus_tracked"]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=fields)
  writer.writeheader()
  writer.writerows(rows)
  (out / "table.csv").write_text(buffer.getvalue())
  workdir_lib.posthoc_table(out.parent).write_text(json.dumps(rows, indent=2))
  lines = ["| step | target | loss | fit error | tracked directly | difference |",
           "|---:|---|---:|---:|---:|---:|"]
  for r in rows:
    tracked = f"{r['tracked_loss']:.4f}" if "tracked_loss" in r else "–"
    diff = f"{r['posthoc_minus_tracked']:+.4f}" if "posthoc_minus_tracked" in r else "–"
    lines.append(f"| {r['step']} | {r['target']} {r['value']:g} | {r['posthoc_loss']:.4f} | "
                 f"{r['fit_error']:.1e} | {tracked} | {diff} |")
  (out / "table.md").write_text("\n".join(lines) + "\n")
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(6, 4))
  ax = fig.subplots()
  for step in sorted({r["step"] for r in rows}):
    pts = sorted((r["value"], r["posthoc_loss"]) for r in rows
                 if r["step"] == step and r["target"] == "sigma_rel")
    ax.plot(*zip(*pts), "o-", label=f"step {step}")
  ax.set_xscale("log")
  ax.set_xlabel("sigma_rel of the reconstructed power EMA")
  ax.set_ylabel("validation loss (nats/token)")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  fig.tight_layout()
  with (out / "loss_vs_sigma_rel.png").open("wb") as f:
    fig.savefig(f, dpi=130)
  if not quiet:
    print("\n".join(lines))
