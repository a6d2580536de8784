"""The river-valley lab end to end: every schedule on one chain, diagnostics, outputs.

``run_lab`` trains constant, cosine (one run per budget), WSD (decay branches of the constant run
at every budget), WSD-S, cyclic cosine, constant + averages and 1/sqrt + averages on the same
data stream, then writes CSV/JSON + PNG. See docs/river_valley.md.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from anytime import schedules
from anytime.theory._checks import in_range, integer
from anytime.theory.river_valley import plots
from anytime.theory.river_valley.chain import make_chain
from anytime.theory.river_valley.diagnostics import lab_diagnostics
from anytime.theory.river_valley.models import METRIC_NAMES, make_model
from anytime.theory.river_valley.training import (OptimizerSettings, RunRecord, build_steps,
                                                  make_averages, train_run)

RUN_NAMES = ("constant", "inverse_sqrt", "cosine", "wsd", "wsd_s", "cyclic_cosine")


def _wsd_s_schedule(peak: float, budgets: Sequence[int], cooldowns: Sequence[int],
                    config) -> schedules.Schedule:
  """WSD-S with one cooldown length per budget: the pointwise minimum of single-decay WSD-S.

  The decay windows do not overlap, so the minimum equals ``schedules.wsd_s`` when all
  cooldowns are equal, and otherwise lets each budget keep the WSD cooldown fraction.
  """
  parts = [
      schedules.wsd_s(peak, decay_ends=[b], cooldown_steps=c, shape=config.cooldown_shape,
                      final_fraction=config.final_fraction, warmup_steps=config.warmup_steps)
      for b, c in zip(budgets, cooldowns)
  ]

  def schedule(step):
    return jnp.min(jnp.stack([jnp.asarray(part(step), jnp.float32) for part in parts]), axis=0)

  return schedule


def validate_config(config) -> None:
  """Checks a lab config before any work; raises ValueError naming the bad field."""
  k = integer("eval_every", config.eval_every)
  budgets = list(config.budgets)
  if not budgets or sorted(budgets) != budgets or len(set(budgets)) != len(budgets):
    raise ValueError(f"budgets must be a non-empty increasing list of steps, got {budgets}")
  for b in budgets:
    integer("budgets[i]", b)
    if b % k:
      raise ValueError(f"budgets must be multiples of eval_every ({k}), got {b}")
  in_range("peak_lr", config.peak_lr, 0.0, 1e6, closed="right")
  in_range("cooldown_fraction", config.cooldown_fraction, 0.0, 1.0, closed="right")
  in_range("final_fraction", config.final_fraction, 0.0, 1.0)
  integer("warmup_steps", config.warmup_steps, 0)
  if config.warmup_steps >= budgets[0]:
    raise ValueError(f"warmup_steps must be < budgets[0] ({budgets[0]}), "
                     f"got {config.warmup_steps}")
  if config.cooldown_shape not in schedules.COOLDOWN_SHAPES:
    raise ValueError(f"cooldown_shape must be one of {schedules.COOLDOWN_SHAPES}, "
                     f"got {config.cooldown_shape!r}")
  runs = set(config.runs)
  known = set(RUN_NAMES)
  if not runs or runs - known:
    raise ValueError(f"runs must be a non-empty subset of {sorted(known)}, got {sorted(runs)}")
  if "wsd" in runs and "constant" not in runs:
    raise ValueError("runs: 'wsd' branches from the 'constant' run; add 'constant'")
  cooldowns = _cooldowns(config)
  previous = config.warmup_steps
  for b, c in zip(budgets, cooldowns):
    if b - c < previous:
      raise ValueError(f"cooldown_fraction: the cooldown of budget {b} ({c} steps) starts before "
                       f"step {previous} (warmup or the previous budget)")
    previous = b
  integer("cyclic_cycle_steps", config.cyclic_cycle_steps)
  in_range("inverse_sqrt_offset", config.inverse_sqrt_offset, 0.0, 1e12, closed="right")
  in_range("cosine_final_fraction", config.cosine_final_fraction, 0.0, 1.0)
  integer("data.batch_size", config.data.batch_size)
  integer("data.seq_len", config.data.seq_len, 2)
  integer("diagnostics.hessian_every", config.diagnostics.hessian_every, 0)
  integer("diagnostics.power_iterations", config.diagnostics.power_iterations)
  integer("diagnostics.interpolation_points", config.diagnostics.interpolation_points, 2)
  if config.diagnostics.hessian_every and config.diagnostics.hessian_every % k:
    raise ValueError(f"diagnostics.hessian_every must be a multiple of eval_every ({k}), "
                     f"got {config.diagnostics.hessian_every}")
  if config.reference_average not in config.averages:
    raise ValueError(f"reference_average must be one of the averages {sorted(config.averages)}, "
                     f"got {config.reference_average!r}")
  if config.model.name not in ("bigram", "transformer"):
    raise ValueError(f"model.name must be 'bigram' or 'transformer', got {config.model.name!r}")
  OptimizerSettings.from_config(config.optimizer)
  make_averages(config.averages)


def _cooldowns(config) -> list[int]:
  k = config.eval_every
  # Rounded to whole chunks so every branch starts where the constant run is evaluated.
  return [max(k, k * round(config.cooldown_fraction * b / k)) for b in config.budgets]


def train_all(config, *, verbose: bool = True) -> dict[str, Any]:
  """Trains every configured run on one chain; returns records, snapshots and the setup."""
  chain = make_chain(**config.chain)
  model = make_model(chain, config.model, seq_len=config.data.seq_len, seed=config.seed)
  steps = build_steps(model, chain, OptimizerSettings.from_config(config.optimizer),
                      make_averages(config.averages), batch_size=config.data.batch_size,
                      seq_len=config.data.seq_len,
                      hessian_iterations=config.diagnostics.power_iterations)
  budgets = list(config.budgets)
  total = budgets[-1]
  cooldowns = _cooldowns(config)
  peak, warm = config.peak_lr, config.warmup_steps
  log = config.log_every if verbose else 0
  if verbose:
    print(f"chain: {json.dumps(chain.summary())}", flush=True)

  def run(name, schedule, state, start, end, snapshot_steps=()):
    return train_run(steps, name, schedule, state, start, end, chunk_steps=config.eval_every,
                     data_key=jax.random.key(config.seed),
                     hessian_every=config.diagnostics.hessian_every,
                     snapshot_steps=snapshot_steps, log_every=log)

  records: dict[str, RunRecord] = {}
  snapshots: dict[int, Any] = {}
  init = steps.init_state()
  constant = schedules.constant(peak, warmup_steps=warm)
  runs = set(config.runs)
  if "constant" in runs:
    branch_starts = [b - c for b, c in zip(budgets, cooldowns)]
    records["constant"], snapshots = run("constant", constant, init, 0, total,
                                         branch_starts + budgets)
    if "wsd" in runs:
      for b, c in zip(budgets, cooldowns):
        branch = schedules.decay_branch(constant, b - c, c, config.cooldown_shape,
                                        config.final_fraction)
        records[f"wsd_{b}"], _ = run(f"wsd_{b}", branch, snapshots[b - c], b - c, b)
  if "inverse_sqrt" in runs:
    schedule = schedules.inverse_sqrt(peak, offset=config.inverse_sqrt_offset, warmup_steps=warm)
    records["inverse_sqrt"], _ = run("inverse_sqrt", schedule, init, 0, total)
  if "cosine" in runs:
    for b in budgets:
      schedule = schedules.cosine(peak, total_steps=b, final_fraction=config.cosine_final_fraction,
                                  warmup_steps=warm)
      records[f"cosine_{b}"], _ = run(f"cosine_{b}", schedule, init, 0, b)
  if "wsd_s" in runs:
    records["wsd_s"], _ = run("wsd_s", _wsd_s_schedule(peak, budgets, cooldowns, config), init,
                              0, total)
  if "cyclic_cosine" in runs:
    cyclic = schedules.cyclic_cosine(peak, cycle_steps=config.cyclic_cycle_steps,
                                     final_fraction=config.cosine_final_fraction)

    def schedule(step):  # warmup inside the first cycle, so cycles end at multiples of it.
      return jnp.minimum(constant(step), cyclic(step))

    records["cyclic_cosine"], _ = run("cyclic_cosine", schedule, init, 0, total)
  return {"chain": chain, "model": model, "steps": steps, "records": records,
          "snapshots": snapshots}


def run_lab(config, workdir: str | None = None, *, verbose: bool = True) -> dict[str, Any]:
  """Runs every configured schedule on one chain and writes CSV/JSON/PNG to ``workdir``.

  Returns the summary (also ``summary.json``) with the measured excess losses at each budget.
  """
  validate_config(config)
  t_start = time.time()
  trained = train_all(config, verbose=verbose)
  model, records = trained["model"], trained["records"]
  budgets = list(config.budgets)
  cooldowns = _cooldowns(config)
  train_seconds = time.time() - t_start
  summary = {
      "chain": trained["chain"].summary(),
      "model": model.name,
      "num_params": int(ravel_pytree(model.init_params)[0].size),
      "budgets": budgets,
      "cooldown_steps": cooldowns,
      "optimizer": config.optimizer.to_dict(),
      "peak_lr": config.peak_lr,
      "results": _budget_table(records, budgets, list(config.averages)),
  }
  summary["findings"] = _findings(records, budgets, cooldowns, config.reference_average)
  diagnostics = {}
  if "constant" in records and "wsd" in set(config.runs):
    alphas = np.linspace(config.diagnostics.interpolation_min,
                         config.diagnostics.interpolation_max,
                         config.diagnostics.interpolation_points)
    diagnostics = lab_diagnostics(model, trained["steps"].hessian, records, budgets,
                                  trained["snapshots"], reference=config.reference_average,
                                  alphas=alphas)
    summary["diagnostics"] = diagnostics.pop("summary")
  summary["seconds_training"] = round(train_seconds, 1)
  summary["seconds_total"] = round(time.time() - t_start, 1)
  if workdir:
    _write_outputs(workdir, config, records, summary, diagnostics)
    summary["seconds_total"] = round(time.time() - t_start, 1)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2, default=_json_default)
  if verbose:
    print(f"done in {summary['seconds_total']:.1f}s", flush=True)
  return summary


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  raise TypeError(type(x).__name__)


def _budget_table(records, budgets, average_names) -> list[dict[str, Any]]:
  """Rows (budget, method, weights, excess...) at every budget for every method."""
  rows = []

  def add(b, method, record, step, weights="raw"):
    if record is None:
      return
    try:
      row = {"budget": b, "method": method, "weights": weights}
      row.update({m: record.value(step, weights, m) for m in METRIC_NAMES})
      rows.append(row)
    except KeyError:
      pass

  for b in budgets:
    for run in ("constant", "inverse_sqrt"):
      for weights in ["raw"] + average_names:
        method = run if weights == "raw" else f"{run}+{weights}"
        add(b, method, records.get(run), b, weights)
    add(b, "cosine", records.get(f"cosine_{b}"), b)
    add(b, "wsd", records.get(f"wsd_{b}"), b)
    add(b, "wsd_s", records.get("wsd_s"), b)
    add(b, "cyclic_cosine", records.get("cyclic_cosine"), b)
  return rows


def _findings(records, budgets, cooldowns, reference) -> dict[str, Any]:
  """The WSD drop and the share of it the average closes; each decayed method per budget."""
  out = {}
  if "constant" in records and all(f"wsd_{b}" in records for b in budgets):
    const = records["constant"]
    per_budget = []
    for b, c in zip(budgets, cooldowns):
      before = const.value(b - c)
      raw = const.value(b)
      wsd = records[f"wsd_{b}"].value(b)
      avg = const.value(b, reference)
      per_budget.append({
          "budget": b,
          "constant_excess_at_branch_start": before,
          "constant_excess_at_budget": raw,
          "wsd_excess_at_budget": wsd,
          "decay_drop_factor": raw / wsd,
          f"constant+{reference}_excess": avg,
          "ema_gap_closed": (raw - avg) / (raw - wsd) if raw != wsd else float("nan"),
      })
    out["wsd_vs_constant"] = per_budget
  methods = [m for m in ("wsd", "wsd_s", "cyclic_cosine", "cosine")
             if m in records or f"{m}_{budgets[0]}" in records]
  if methods:
    out["one_run_budgets"] = {
        str(b): {m: _method_value(records, m, b) for m in methods} for b in budgets
    }
  return out


def _method_value(records, method, b):
  record = records.get(f"{method}_{b}") or records.get(method)
  try:
    return record.value(b) if record else float("nan")
  except KeyError:
    return float("nan")



def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
  if not rows:
    return
  fields = list(rows[0])
  for row in rows:
    fields += [k for k in row if k not in fields]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def _write_outputs(workdir, config, records, summary, diagnostics) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=2, default=str)
  curves = [row for record in records.values() for row in record.rows]
  _write_csv(os.path.join(workdir, "curves.csv"), curves)
  _write_csv(os.path.join(workdir, "budgets.csv"), summary["results"])
  if diagnostics:
    _write_csv(os.path.join(workdir, "interpolation.csv"), diagnostics["interpolation"])
    _write_csv(os.path.join(workdir, "projection.csv"), diagnostics["projection"])
  plots.plot_all(workdir, records, summary, diagnostics, config.reference_average)

