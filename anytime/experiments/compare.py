"""The comparison suite: is one horizon-free run as good, at every horizon, as a cosine
schedule tuned for that horizon — and at what cost?

A suite config names a base horizon T (steps), horizons {1, 2, 4, 8}·T and methods:

- ``cosine``: one run per (horizon, peak LR) from a grid; per horizon the best LR's last
  iterate forms the *cosine envelope* (the horizon-bound reference);
- ``constant``: one constant-LR run to the longest horizon, evaluated at every horizon with
  each of its anytime EMAs (f = 6.25 … 100) and a LAWA window average; its WSD decay branches
  (one per horizon, the cooldown ending at the horizon) give the ``wsd`` column;
- ``inverse_sqrt`` / ``polynomial``: one run each, evaluated with their EMAs;
- ``wsd_s``: one run whose schedule decays before each horizon and continues at peak;
- ``schedule_free_adamw``: one run (optax.contrib), evaluated at its Schedule-Free point.

Runs execute one after the other in ``workdir/runs/<name>``; finished runs are skipped and an
interrupted one resumes from its checkpoint, so an interrupted suite can simply be restarted.
The report (``workdir/report/``) is rebuilt from stored metrics alone: a table like the seed
paper's Figure 2 (CSV, JSON, Markdown) with deltas to the cosine envelope in nats and the tokens
each method spent, a plot of validation loss vs tokens, and a plot of the schedules.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from anytime import branches, checkpoint, loop, naming, schedules
from anytime import config as config_lib

METHODS = ("cosine", "constant", "inverse_sqrt", "polynomial", "wsd_s", "schedule_free_adamw")
ANYTIME_RUNS = ("constant", "inverse_sqrt", "polynomial")


def default_suite() -> ml_collections.ConfigDict:
  """Suite options (``config.suite``) with their defaults."""
  return ml_collections.ConfigDict(dict(
      base_steps=100,  # T, the 1x horizon, in steps
      multipliers=[1, 2, 4, 8],
      methods=list(METHODS[:2]) + ["inverse_sqrt", "wsd_s", "schedule_free_adamw"],
      warmup_steps=10,
      warmup_init_fraction=0.1,
      cosine_peak_values=[1e-3, 3e-3],  # the LR grid tuned per horizon
      cosine_final_fraction=0.1,
      peak_values=[3e-3],  # LR grid of the anytime methods (one LR chosen for all horizons)
      schedule_free_peak_values=[3e-3],
      inverse_sqrt_offset=40.0,
      polynomial_exponent=0.3,
      polynomial_offset=40.0,
      ema_factors=[6.25, 12.5, 25.0, 50.0, 100.0],
      headline_ema=25.0,  # the seed paper's EMA-25
      lawa_every=0,  # 0 = base_steps // 10
      lawa_size=10,
      wsd_cooldown_fraction=0.2,
      wsd_shape="linear",
      wsd_final_fraction=0.1,
      wsd_s_cooldown_fraction=0.2,  # of the base horizon T
      evals_per_base=2,  # evaluations per T along the anytime runs (for the curves)
      # Post-hoc averaging (anytime.posthoc): snapshots of two power EMAs along the anytime
      # runs; at each horizon the best of these reconstructed sigma_rels is reported ([] = off).
      posthoc_sigma_rels=[0.02, 0.035, 0.05, 0.07, 0.1, 0.15, 0.2],
      snapshots_per_base=10,
  ))


def _method_config(base: ml_collections.ConfigDict, *, total_steps: int,
                   schedule: Mapping[str, Any], averages: Mapping[str, Any] | None = None,
                   eval_at: Sequence[int] = (), eval_every: int | None = None,
                   branches: Mapping[str, Any] | None = None,
                   optimizer_name: str | None = None,
                   snapshot_every: int = 0) -> ml_collections.ConfigDict:
  config = copy.deepcopy(base)
  config.unlock()
  config.train.snapshot_every = snapshot_every
  config.train.total_steps = total_steps
  config.train.eval_every = eval_every or total_steps
  config.train.eval_at = sorted(set(int(s) for s in eval_at))
  config.train.checkpoint_every = max(total_steps // 4, 1)
  config.optimizer.schedule = dict(schedule)
  config.optimizer.averages = dict(averages or {})
  if optimizer_name:
    config.optimizer.name = optimizer_name
  if branches:
    config.branches.update(branches)
  config.lock()
  return config


def plan(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """The runs of a suite: ``[{name, method, peak_value, config}, ...]``."""
  s = config.suite
  unknown = sorted(set(s.methods) - set(METHODS))
  if unknown:
    raise ValueError(f"suite.methods: unknown {unknown}; accepted: {list(METHODS)}")
  if "cosine" not in s.methods:
    raise ValueError("suite.methods must include 'cosine' (the reference the report compares to)")
  if not isinstance(s.base_steps, int) or s.base_steps < 2:
    raise ValueError(f"suite.base_steps must be an integer >= 2, got {s.base_steps!r}")
  if not s.multipliers or any(not isinstance(m, int) or m < 1 for m in s.multipliers):
    raise ValueError(f"suite.multipliers must be positive integers, got {list(s.multipliers)}")
  if s.warmup_steps >= s.base_steps:
    raise ValueError(f"suite.warmup_steps ({s.warmup_steps}) must be smaller than "
                     f"suite.base_steps ({s.base_steps})")
  if s.headline_ema not in s.ema_factors:
    raise ValueError(f"suite.headline_ema ({s.headline_ema}) must be one of suite.ema_factors")
  horizons = sorted(s.base_steps * m for m in s.multipliers)
  longest = horizons[-1]
  warmup = dict(warmup_steps=s.warmup_steps, warmup_init_fraction=s.warmup_init_fraction)
  base = config.base
  eval_every = max(s.base_steps // s.evals_per_base, 1)
  lawa_every = s.lawa_every or max(s.base_steps // 10, 1)
  averages = {naming.ema_name(f): dict(kind="anytime_ema", factor=float(f)) for f in s.ema_factors}
  snapshot_every = 0
  if s.posthoc_sigma_rels:
    snapshot_every = max(s.base_steps // s.snapshots_per_base, 1)
    if s.base_steps % snapshot_every:
      raise ValueError(f"suite.snapshots_per_base ({s.snapshots_per_base}) must divide "
                       f"suite.base_steps ({s.base_steps}) into whole steps")
  runs = []
  for horizon in horizons:
    for lr in s.cosine_peak_values:
      schedule = dict(name="cosine", peak_value=lr, total_steps=horizon,
                      final_fraction=s.cosine_final_fraction, **warmup)
      runs.append(dict(name=f"cosine_{horizon}_lr{naming.lr_tag(lr)}", method="cosine", peak_value=lr,
                       horizon=horizon, config=_method_config(base, total_steps=horizon,
                                                              schedule=schedule)))
  anytime_schedules = {
      "constant": lambda lr: dict(name="constant", peak_value=lr, **warmup),
      "inverse_sqrt": lambda lr: dict(name="inverse_sqrt", peak_value=lr,
                                      offset=s.inverse_sqrt_offset, **warmup),
      "polynomial": lambda lr: dict(name="polynomial_decay", peak_value=lr,
                                    exponent=s.polynomial_exponent, offset=s.polynomial_offset,
                                    **warmup),
  }
  for method in ANYTIME_RUNS:
    if method not in s.methods:
      continue
    for lr in s.peak_values:
      run_averages = dict(averages)
      branches = None
      if method == "constant":
        run_averages["lawa"] = dict(kind="window", every=lawa_every, size=s.lawa_size)
        branches = dict(budgets=horizons, cooldown_fraction=s.wsd_cooldown_fraction,
                        shape=s.wsd_shape, final_fraction=s.wsd_final_fraction)
      runs.append(dict(name=f"{method}_lr{naming.lr_tag(lr)}", method=method, peak_value=lr,
                       horizon=longest, config=_method_config(
                           base, total_steps=longest, schedule=anytime_schedules[method](lr),
                           averages=run_averages, eval_at=horizons, eval_every=eval_every,
                           branches=branches, snapshot_every=snapshot_every)))
  if "wsd_s" in s.methods:
    cooldown = naming.cooldown_steps(s.wsd_s_cooldown_fraction, s.base_steps)
    for lr in s.peak_values:
      schedule = dict(name="wsd_s", peak_value=lr, decay_ends=horizons, cooldown_steps=cooldown,
                      shape=s.wsd_shape, final_fraction=s.wsd_final_fraction, **warmup)
      runs.append(dict(name=f"wsd_s_lr{naming.lr_tag(lr)}", method="wsd_s", peak_value=lr,
                       horizon=longest, config=_method_config(
                           base, total_steps=longest, schedule=schedule, eval_at=horizons,
                           eval_every=eval_every)))
  if "schedule_free_adamw" in s.methods:
    for lr in s.schedule_free_peak_values:
      runs.append(dict(name=f"schedule_free_lr{naming.lr_tag(lr)}", method="schedule_free_adamw",
                       peak_value=lr, horizon=longest, config=_method_config(
                           base, total_steps=longest,
                           schedule=dict(name="constant", peak_value=lr, **warmup),
                           eval_at=horizons, eval_every=eval_every,
                           optimizer_name="schedule_free_adamw")))
  for run in runs:
    config_lib.validate_config(run["config"])
  return runs


def run_finished(run_dir: epath.Path, total_steps: int) -> bool:
  last = loop.last_evaluation(checkpoint.main_dir(run_dir))
  return bool(last) and last["step"] >= total_steps


def run_suite(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs every run of the suite not yet finished, then writes and prints the report."""
  runs = plan(config)  # validates everything before any training starts
  workdir = epath.Path(workdir)
  manifest = dict(suite=config.suite.to_dict(), base_steps=config.suite.base_steps,
                  tokens_per_step=config.base.train.batch_size * config.base.train.seq_len,
                  runs=[dict(name=r["name"], method=r["method"], peak_value=r["peak_value"],
                             horizon=r["horizon"],
                             schedule=r["config"].optimizer.schedule.to_dict())
                        for r in runs])
  stored = checkpoint.read_json(workdir / "suite.json")
  if stored is not None and stored["runs"] != json.loads(json.dumps(manifest["runs"])):
    raise ValueError(f"{workdir} holds a different suite (suite.json differs); use a new workdir")
  checkpoint.write_json(workdir / "suite.json", manifest)
  started = time.perf_counter()
  for i, run in enumerate(runs):
    run_dir = workdir / "runs" / run["name"]
    if run_finished(run_dir, run["config"].train.total_steps):
      print(f"[suite] {i + 1}/{len(runs)} {run['name']}: finished earlier, skipped", flush=True)
      continue
    print(f"[suite] {i + 1}/{len(runs)} {run['name']} ({run['config'].train.total_steps} steps)",
          flush=True)
    branches.train(run["config"], str(run_dir))
  for run in runs:
    run_dir = workdir / "runs" / run["name"]
    if (run["config"].train.snapshot_every and (checkpoint.main_dir(run_dir) / "snapshots").exists()
        and not (run_dir / "posthoc" / "table.json").exists()):
      from anytime.experiments import posthoc_eval  # pylint: disable=g-import-not-at-top

      print(f"[suite] post-hoc averages of {run['name']} at every horizon", flush=True)
      horizons = sorted(config.suite.base_steps * m for m in config.suite.multipliers)
      posthoc_eval.run(str(run_dir), steps=horizons,
                       sigma_rels=list(config.suite.posthoc_sigma_rels))
  elapsed = time.perf_counter() - started
  timing = checkpoint.read_json(workdir / "timing.json") or {"seconds": 0.0}
  timing["seconds"] += elapsed
  checkpoint.write_json(workdir / "timing.json", timing)
  return write_report(str(workdir))


# ---------------------------------------------------------------------------- report


def _evals(run_dir: epath.Path) -> dict[int, dict[str, float]]:
  return {m["step"]: m for m in loop.read_metrics(run_dir) if naming.is_eval_record(m)}


def collect(workdir: str | epath.Path) -> dict[str, Any]:
  """Reads the stored metrics of a suite into per-horizon results for each column."""
  workdir = epath.Path(workdir)
  manifest = checkpoint.read_json(workdir / "suite.json")
  if manifest is None:
    raise FileNotFoundError(f"--workdir {workdir} holds no suite (no suite.json); run "
                            "`python -m anytime.main compare --config ... --workdir` first")
  s = manifest["suite"]
  horizons = sorted(s["base_steps"] * m for m in s["multipliers"])
  tokens_per_step = manifest["tokens_per_step"]
  headline = naming.ema_name(s["headline_ema"])
  emas = [naming.ema_name(f) for f in s["ema_factors"]]
  columns: dict[str, dict[int, float]] = {}
  spent: dict[str, int] = {}
  chosen_lr: dict[str, float] = {}
  curves: dict[str, list[tuple[int, float]]] = {}
  posthoc_choice: dict[str, dict[int, float]] = {}

  # Cosine envelope: best LR per horizon (last iterate).
  cosine = {}
  for run in manifest["runs"]:
    if run["method"] != "cosine":
      continue
    evals = _evals(checkpoint.main_dir(workdir / "runs" / run["name"]))
    if run["horizon"] in evals:
      loss = evals[run["horizon"]]["eval_loss/raw"]
      best = cosine.get(run["horizon"])
      if best is None or loss < best[0]:
        cosine[run["horizon"]] = (loss, run["peak_value"])
  columns["cosine"] = {h: v[0] for h, v in cosine.items()}
  cosine_lrs = {h: v[1] for h, v in cosine.items()}
  num_cosine_lrs = len(s["cosine_peak_values"])
  spent["cosine"] = sum(horizons) * tokens_per_step
  spent["cosine (whole LR grid)"] = sum(horizons) * tokens_per_step * num_cosine_lrs

  def at_horizons(evals, key):
    return {h: evals[h][key] for h in horizons if h in evals and key in evals[h]}

  def pick_lr(method, key):
    """The anytime method's one LR for all horizons: lowest mean loss over horizons."""
    best = None
    for run in manifest["runs"]:
      if run["method"] != method:
        continue
      evals = _evals(checkpoint.main_dir(workdir / "runs" / run["name"]))
      values = at_horizons(evals, key)
      if len(values) == len(horizons):
        score = float(np.mean(list(values.values())))
        if best is None or score < best[0]:
          best = (score, run, evals)
    return best

  longest = horizons[-1]
  for method in ANYTIME_RUNS:
    best = pick_lr(method, f"eval_loss/{headline}")
    if best is None:
      continue
    _, run, evals = best
    label = method
    chosen_lr[label] = run["peak_value"]
    columns[f"{label}+{headline}"] = at_horizons(evals, f"eval_loss/{headline}")
    columns[f"{label}+ema_best"] = {
        h: min(evals[h][f"eval_loss/{e}"] for e in emas if f"eval_loss/{e}" in evals[h])
        for h in horizons if h in evals}
    spent[f"{label}+{headline}"] = longest * tokens_per_step
    curves[f"{label}+{headline}"] = sorted(
        (step, m[f"eval_loss/{headline}"]) for step, m in evals.items()
        if f"eval_loss/{headline}" in m)
    curves[f"{label} (raw)"] = sorted((step, m["eval_loss/raw"]) for step, m in evals.items())
    posthoc_rows = checkpoint.read_json(workdir / "runs" / run["name"] / "posthoc" / "table.json")
    if posthoc_rows:
      best_posthoc = {}
      for row in posthoc_rows:
        if row["target"] == "sigma_rel" and row["step"] in horizons:
          current = best_posthoc.get(row["step"])
          if current is None or row["posthoc_loss"] < current[0]:
            best_posthoc[row["step"]] = (row["posthoc_loss"], row["value"])
      columns[f"{label}+posthoc_best"] = {h: v[0] for h, v in best_posthoc.items()}
      posthoc_choice[label] = {h: v[1] for h, v in best_posthoc.items()}
    if method == "constant":
      columns["constant (raw)"] = at_horizons(evals, "eval_loss/raw")
      if any("eval_loss/lawa" in m for m in evals.values()):
        columns["lawa"] = at_horizons(evals, "eval_loss/lawa")
      wsd = {}
      cooldown_total = 0
      for h in horizons:
        branch = checkpoint.branch_dir(workdir / "runs" / run["name"],
                                       naming.branch_name(s["wsd_shape"], h))
        branch_evals = _evals(branch)
        if h in branch_evals:
          wsd[h] = branch_evals[h]["eval_loss/raw"]
          lineage = checkpoint.read_json(branch / "lineage.json") or {}
          cooldown_total += lineage.get("cooldown_steps", 0)
      if wsd:
        columns["wsd"] = wsd
        spent["wsd"] = (longest + cooldown_total) * tokens_per_step
  for method, key, label in (("wsd_s", "eval_loss/raw", "wsd_s"),
                             ("schedule_free_adamw", "eval_loss/schedule_free", "schedule_free")):
    best = pick_lr(method, key)
    if best is None:
      continue
    _, run, evals = best
    chosen_lr[label] = run["peak_value"]
    columns[label] = at_horizons(evals, key)
    spent[label] = longest * tokens_per_step
    curves[label] = sorted((step, m[key]) for step, m in evals.items() if key in m)
  return dict(horizons=horizons, base_steps=s["base_steps"], tokens_per_step=tokens_per_step,
              columns=columns, spent=spent, chosen_lr=chosen_lr, cosine_lrs=cosine_lrs,
              curves=curves, posthoc_choice=posthoc_choice, manifest=manifest)


def table_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """One row per horizon: each column's loss and its delta to the cosine envelope."""
  rows = []
  for h in results["horizons"]:
    row = dict(horizon=f"{h // results['base_steps']}x", steps=h,
               tokens=h * results["tokens_per_step"])
    reference = results["columns"]["cosine"].get(h)
    for name, values in results["columns"].items():
      if h in values:
        row[name] = round(values[h], 4)
        if name != "cosine" and reference is not None:
          row[f"{name} - cosine"] = round(values[h] - reference, 4)
    rows.append(row)
  return rows


def markdown_table(results: Mapping[str, Any]) -> str:
  """The Figure-2-style table: loss (delta to cosine) per horizon and method."""
  names = list(results["columns"])
  lines = ["| horizon | steps | tokens | " + " | ".join(names) + " |",
           "|---|---:|---:|" + "---:|" * len(names)]
  for row in table_rows(results):
    cells = []
    for name in names:
      if name not in row:
        cells.append("–")
      elif name == "cosine":
        cells.append(f"{row[name]:.4f}")
      else:
        cells.append(f"{row[name]:.4f} ({row[name + ' - cosine']:+.4f})")
    lines.append(f"| {row['horizon']} | {row['steps']} | {row['tokens']:,} | " +
                 " | ".join(cells) + " |")
  spent = results["spent"]
  lines.append("")
  lines.append("Tokens spent for all horizons: " + "; ".join(
      f"{name} {value:,}" for name, value in spent.items()) + ".")
  if results["chosen_lr"]:
    lines.append("Peak LR of each anytime method (one for all horizons): " + ", ".join(
        f"{k} {v:g}" for k, v in results["chosen_lr"].items()) + "; cosine, tuned per horizon: " +
        ", ".join(f"{h}: {v:g}" for h, v in results["cosine_lrs"].items()) + ".")
  for label, choice in results.get("posthoc_choice", {}).items():
    lines.append(f"Best post-hoc sigma_rel of {label} per horizon (reconstructed after training "
                 "from two tracked power EMAs): " +
                 ", ".join(f"{h}: {v:g}" for h, v in sorted(choice.items())) + ".")
  return "\n".join(lines)


def write_report(workdir: str) -> dict[str, Any]:
  """Writes ``report/`` (table as CSV, JSON, Markdown; two PNGs) and prints the table."""
  results = collect(workdir)
  out = epath.Path(workdir) / "report"
  if jax.process_index() != 0:
    return results
  out.mkdir(parents=True, exist_ok=True)
  rows = table_rows(results)
  fields = sorted({k for row in rows for k in row}, key=lambda k: list(rows[0]).index(k)
                  if k in rows[0] else 999)
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=fields)
  writer.writeheader()
  writer.writerows(rows)
  (out / "table.csv").write_text(buffer.getvalue())
  (out / "table.json").write_text(json.dumps(
      dict(rows=rows, tokens_spent=results["spent"], chosen_lr=results["chosen_lr"],
           cosine_lrs={str(k): v for k, v in results["cosine_lrs"].items()}), indent=2))
  table = markdown_table(results)
  timing = checkpoint.read_json(epath.Path(workdir) / "timing.json")
  if timing:
    table += f"\nWall time of the suite's runs: {timing['seconds'] / 60:.1f} min."
  (out / "table.md").write_text(table + "\n")
  _plot_losses(results, out / "loss_vs_tokens.png")
  _plot_schedules(results, out / "schedules.png")
  print(table)
  print(f"\nReport: {out}/table.md, table.csv, table.json, loss_vs_tokens.png, schedules.png")
  return results


def _plot_losses(results, path):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  tps = results["tokens_per_step"]
  fig = Figure(figsize=(7.5, 4.8))
  ax = fig.subplots()
  envelope = sorted(results["columns"]["cosine"].items())
  ax.plot([h * tps for h, _ in envelope], [v for _, v in envelope], "k-o", lw=2,
          label="cosine envelope (tuned per horizon)", zorder=5)
  for name, curve in results["curves"].items():
    if not curve:
      continue
    steps, losses = zip(*[(s, l) for s, l in curve if s >= results["base_steps"] // 2])
    ax.plot(np.array(steps) * tps, losses, "--" if "raw" in name else "-", label=name,
            alpha=0.5 if "raw" in name else 0.9)
  for name in ("wsd", "lawa"):
    if name in results["columns"]:
      pts = sorted(results["columns"][name].items())
      ax.plot([h * tps for h, _ in pts], [v for _, v in pts], "s" if name == "wsd" else "^",
              label=f"{name} (at each horizon)", ms=7)
  ax.set_xscale("log")
  ax.set_xlabel("tokens")
  ax.set_ylabel("validation loss (nats/token)")
  ax.set_title("One anytime run vs cosine tuned per horizon")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, dpi=130)


def _plot_schedules(results, path):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(7.5, 4.2))
  ax = fig.subplots()
  longest = results["horizons"][-1]
  steps = np.arange(0, longest + 1)
  shown = set()
  for run in results["manifest"]["runs"]:
    method = run["method"]
    if method == "cosine" and results["cosine_lrs"].get(run["horizon"]) != run["peak_value"]:
      continue
    if method != "cosine" and results["chosen_lr"].get(
        {"schedule_free_adamw": "schedule_free"}.get(method, method)) != run["peak_value"]:
      continue
    schedule = schedules.from_config(run["schedule"])
    values = np.asarray(jax.vmap(schedule)(steps[:run["horizon"] + 1]))
    label = method if method not in shown else None
    shown.add(method)
    ax.plot(steps[:run["horizon"] + 1], values, label=label,
            color="k" if method == "cosine" else None, alpha=0.6 if method == "cosine" else 0.9)
    if method == "constant":
      s = results["manifest"]["suite"]
      for h in results["horizons"]:
        cooldown = naming.cooldown_steps(s["wsd_cooldown_fraction"], h)
        branch = schedules.decay_branch(schedule, h - cooldown, cooldown, s["wsd_shape"],
                                        s["wsd_final_fraction"])
        xs = np.arange(h - cooldown, h + 1)
        ax.plot(xs, np.asarray(jax.vmap(branch)(xs)), ":", color="tab:red",
                label="wsd branches" if h == results["horizons"][0] else None)
  ax.set_xlabel("step")
  ax.set_ylabel("learning rate")
  ax.set_title("Schedules used (chosen peak LRs)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  with epath.Path(path).open("wb") as f:
    fig.savefig(f, dpi=130)


def reference_table(csv_path: str, model: str = "150M") -> str:
  """The seed paper's published Figure 2 losses as a Markdown table with deltas to cosine."""
  path = epath.Path(csv_path)
  if not path.exists():
    raise FileNotFoundError(f"reference table {csv_path} does not exist")
  rows = [r for r in csv.DictReader(io.StringIO(path.read_text())) if r["model"] == model]
  methods = ["constant_ema25", "inverse_sqrt_ema25", "wsd_last_iterate"]
  lines = ["| horizon | cosine (tuned) | " + " | ".join(methods) + " |",
           "|---|---:|" + "---:|" * len(methods)]
  for r in rows:
    cos = float(r["cosine_tuned"])
    cells = [f"{float(r[m]):.4f} ({float(r[m]) - cos:+.4f})" for m in methods]
    lines.append(f"| {r['horizon']} | {cos:.4f} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
