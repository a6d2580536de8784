"""The comparison suite's coordinator: is one horizon-free run as good, at every horizon, as a
schedule tuned for that horizon — measured so that the answer survives a closer look.

The suite's methods are objects in a registry (``experiments.methods``); its runs are cut into
units (``experiments.plan``) that an engine executes (``experiments.executors``: this process,
Ray or SLURM). The coordinator only plans, submits, waits and moves to the next phase:

1. tuning rounds on ``suite.tuning_seeds``: every trained method on its LR grid (baselines per
   horizon, anytime methods once for all horizons), then the decay branches of those runs,
   then post-training columns (post-hoc EMAs, checkpoint merges); where a best LR sits on a grid
   edge the grid grows by one point on that side (``suite.max_extensions`` times at most);
2. the choices (LRs, the envelope's family) are made on the tuning seeds only; the chosen
   configurations are re-run with ``suite.seeds`` fresh reporting seeds, every reported
   evaluation keeping its per-window losses;
3. cells still undecided get more seeds, up to ``suite.max_seeds`` (a second look);
4. the report (``experiments.verdict``) is built from the workdir alone.

Every run keeps its own directory in ``workdir/runs/<name>``; finished runs are skipped, so an
interrupted suite is simply restarted (SIGTERM and Ctrl-C save the group in flight and exit 0).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from anytime import batched, checkpoint, loop, naming
from anytime import config as config_lib
from anytime import workdir as workdir_lib
from anytime.experiments import executors, merging, plan, posthoc_eval, tuning, verdict
from anytime.experiments import methods as methods_lib
from anytime.experiments.plan import PlannedRun
from anytime.lm import data as data_lib
from anytime.lm import model as model_lib

default_suite = config_lib.default_suite
horizons = methods_lib.horizons


def validate(config: ml_collections.ConfigDict) -> list[methods_lib.Method]:
  """Refuses a bad suite config with a one-line error naming the key; returns its methods."""
  s = config.suite
  if not s.baselines:
    raise ValueError("suite.baselines must name at least one baseline (the reference)")
  methods = methods_lib.active(s)
  if not isinstance(s.base_steps, int) or s.base_steps < 2:
    raise ValueError(f"suite.base_steps must be an integer >= 2, got {s.base_steps!r}")
  if not s.multipliers or any(not isinstance(m, int) or m < 1 for m in s.multipliers):
    raise ValueError(f"suite.multipliers must be positive integers, got {list(s.multipliers)}")
  if s.warmup_steps >= s.base_steps:
    raise ValueError(f"suite.warmup_steps ({s.warmup_steps}) must be smaller than "
                     f"suite.base_steps ({s.base_steps})")
  if s.headline_ema not in s.ema_factors:
    raise ValueError(f"suite.headline_ema ({s.headline_ema}) must be one of suite.ema_factors")
  for key in ("lr_points", "seeds", "max_batch_runs"):
    if not isinstance(s[key], int) or s[key] < 1:
      raise ValueError(f"suite.{key} must be a positive integer, got {s[key]!r}")
  if not isinstance(s.max_seeds, int) or s.max_seeds < s.seeds:
    raise ValueError(f"suite.max_seeds must be an integer >= suite.seeds ({s.seeds}), got "
                     f"{s.max_seeds!r}")
  if (not s.tuning_seeds or any(not isinstance(x, int) or x < 0 for x in s.tuning_seeds)):
    raise ValueError(f"suite.tuning_seeds must be a non-empty list of integers >= 0, got "
                     f"{list(s.tuning_seeds)}")
  if not isinstance(s.max_extensions, int) or s.max_extensions < 0:
    raise ValueError(f"suite.max_extensions must be a non-negative integer, got "
                     f"{s.max_extensions!r}")
  if not 0 < s.alpha < 0.5:
    raise ValueError(f"suite.alpha must be in (0, 0.5), got {s.alpha!r}")
  if not s.equivalence_margin > 0:
    raise ValueError(f"suite.equivalence_margin must be > 0 nats, got {s.equivalence_margin!r}")
  if s.multiplicity not in ("holm", "bonferroni", "none"):
    raise ValueError(f"suite.multiplicity must be 'holm', 'bonferroni' or 'none', got "
                     f"{s.multiplicity!r}")
  names = methods_lib.by_name(methods)
  if (len(s.primary) != 2 or s.primary[0] not in names or
      s.primary[1] not in _columns_of(names[s.primary[0]], methods, s)):
    raise ValueError(f"suite.primary must be [method, candidate] of a column of the suite, got "
                     f"{list(s.primary)}")
  for method, grid in s.lr_grids.items():
    if method not in names or names[method].parent is not None:
      raise ValueError(f"suite.lr_grids: {method!r} is not one of the suite's trained methods "
                       f"{[m.name for m in methods_lib.trained(methods)]}")
    if (not isinstance(grid, (list, tuple)) or not grid or
        any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 for v in grid)):
      raise ValueError(f"suite.lr_grids.{method} must be a non-empty list of positive learning "
                       f"rates, got {grid!r}")
  if not s.lr_centre > 0 or not s.lr_factor > 1:
    raise ValueError(f"suite.lr_centre must be > 0 and suite.lr_factor > 1, got "
                     f"{s.lr_centre!r}, {s.lr_factor!r}")
  for every in ("snapshots_per_base", "checkpoints_per_base", "evals_per_base"):
    if s[every] < 1 or s.base_steps % s[every]:
      raise ValueError(f"suite.{every} ({s[every]}) must divide suite.base_steps "
                       f"({s.base_steps}) into whole steps")
  methods_lib.validate_variants(s)
  executors.validate_executor_config(s.executor)
  config_lib.validate_config(config.base)
  return methods


def _columns_of(method: methods_lib.Method, methods, s) -> tuple[str, ...]:
  own = method.candidates(s)
  extra = [c for m in methods if m.parent == method.name
           and isinstance(m, methods_lib.PostTraining) for c in m.columns(s)]
  return tuple(own) + tuple(extra)


def initial_grid(suite: ml_collections.ConfigDict, method: str | None = None
                 ) -> tuple[float, ...]:
  """The LR grid a method starts from: ``suite.lr_grids[method]`` if given, else
  ``lr_points`` values ``lr_factor`` apart around ``lr_centre`` (the same for every method)."""
  if method is not None and method in suite.lr_grids:
    return tuple(sorted(float(v) for v in suite.lr_grids[method]))
  return tuning.log_grid(suite.lr_centre, suite.lr_points, suite.lr_factor)


def seed_plan(s: ml_collections.ConfigDict) -> tuple[list[int], list[int], list[int]]:
  """(tuning seeds, first-stage reporting seeds, second-stage seeds): never overlapping."""
  tuning_seeds = sorted(set(s.tuning_seeds))
  fresh = [x for x in range(max(tuning_seeds) + 1 + s.max_seeds) if x not in tuning_seeds]
  return tuning_seeds, fresh[:s.seeds], fresh[s.seeds:s.max_seeds]


# ---------------------------------------------------------------------------- phases


def _worker_env() -> dict[str, str]:
  """What a worker must see before it imports JAX (the CPU device count of this process)."""
  return {k: os.environ[k] for k in ("XLA_FLAGS", "ANYTIME_COMPILATION_CACHE") if k in os.environ}


def train_phase(planned: Sequence[PlannedRun], config: ml_collections.ConfigDict,
                root: epath.Path, phase: str) -> int:
  """Trains a phase's runs through the configured executor: main runs, then their branches.
  Returns how many units were submitted (0: everything was finished already)."""
  submitted = 0
  mains, branch_runs = plan.parents_first(planned)
  for label, runs in ((phase, mains), (f"{phase}-branches", branch_runs)):
    units = plan.units(runs, config, root, label)
    if not units:
      continue
    loop.exit_if_preempted(f"the suite before {label}")
    print(f"[suite] {label}: {len(units)} units, {sum(len(u.specs) for u in units)} runs",
          flush=True)
    executors.run_units(units, plan.execute, config=config.suite.executor, env=_worker_env(),
                        workdir=str(root))
    submitted += len(units)
  loop.exit_if_preempted("the suite")
  return submitted


def evaluate_post_training(planned: Sequence[PlannedRun], config: ml_collections.ConfigDict,
                           methods: Sequence[methods_lib.Method]) -> None:
  """Post-hoc EMAs and checkpoint merges of every finished run whose method derives them."""
  s = config.suite
  by_name = methods_lib.by_name(methods)
  for run in planned:
    if run.parent is not None or not batched.finished(run.spec):
      continue
    for child in by_name[run.method].derived(s):
      run_dir = run.spec.directory.parent
      if isinstance(child, methods_lib.PostHoc) and not workdir_lib.posthoc_table(run_dir).exists():
        posthoc_eval.run(str(run_dir), steps=horizons(s), sigma_rels=list(s.posthoc_sigma_rels),
                         quiet=True)
      if isinstance(child, methods_lib.Merges) and not workdir_lib.merges_file(run_dir).exists():
        _merge(run, config)


def _merge(run: PlannedRun, config: ml_collections.ConfigDict) -> None:
  """Losses (and, for reporting runs, per-window loss sums) of the merged checkpoints."""
  s = config.suite
  run_dir = run.spec.directory.parent
  trained = loop.build_run(run.spec.config, run_dir)
  store = checkpoint.CheckpointStore(run.spec.directory, read_only=True)
  saved = store.all_steps()
  store.close()
  losses: dict[str, dict[int, float]] = {}
  windows: dict[str, dict[int, list[float]]] = {}
  counts: list[float] = []
  for k in s.merge_last:
    for kind in ("uniform", "ema"):
      for h in horizons(s):
        steps = merging.last_steps(saved, h, k)
        if len(steps) < k:
          continue
        weights = (merging.uniform_weights(k) if kind == "uniform"
                   else merging.ema_weights(k, s.merge_ema_alpha))
        params = merging.merge_checkpoints(run.spec.directory, steps, weights,
                                           trained.abstract_state.params)
        sums, window_counts = trained.window_losses(params)
        name = f"merge_{kind}_{k}"
        losses.setdefault(name, {})[h] = float(sums.sum() / max(window_counts.sum(), 1.0))
        if h in run.spec.window_steps:
          windows.setdefault(name, {})[h] = [float(x) for x in sums]
          counts = [float(x) for x in window_counts]
  checkpoint.write_json(workdir_lib.merges_file(run_dir),
                        dict(losses=losses, windows=windows, counts=counts))


# ---------------------------------------------------------------------------- records


WindowKey = tuple[str, str, int, float, int]


def records_of(planned: Sequence[PlannedRun], config: ml_collections.ConfigDict,
               methods: Sequence[methods_lib.Method]
               ) -> tuple[list[tuning.Record], dict[WindowKey, list[float]], list[float]]:
  """The evaluated numbers of finished runs at the suite's horizons (report records), their
  per-window loss sums where kept, and the windows' token counts."""
  s = config.suite
  by_name = methods_lib.by_name(methods)
  out, windows, counts = [], {}, []
  for run in planned:
    if not batched.finished(run.spec):
      continue
    method = by_name[run.method]
    candidates = method.candidates(s)
    steps = [run.spec.end_step] if method.per_horizon else horizons(s)
    evals = {m["step"]: naming.eval_losses(m) for m in loop.read_metrics(run.spec.directory)
             if naming.is_eval_record(m)}
    for h in steps:
      for candidate, loss in evals.get(h, {}).items():
        if candidate in candidates:
          out.append(tuning.Record(run.method, candidate, h, run.peak_value, run.seed, loss))
    for step, stored in loop.read_eval_windows(run.spec.directory).items():
      if step in steps:
        counts = stored["counts"]
        for candidate, sums in stored["sums"].items():
          if candidate in candidates:
            windows[(run.method, candidate, step, run.peak_value, run.seed)] = sums
    if run.parent is None:
      out += _post_training_records(run, method, s)
      merged = checkpoint.read_json(workdir_lib.merges_file(run.spec.directory.parent)) or {}
      for name, by_h in merged.get("windows", {}).items():
        for h, sums in by_h.items():
          windows[(run.method, name, int(h), run.peak_value, run.seed)] = sums
          counts = merged["counts"]
  return out, windows, counts


def _post_training_records(run: PlannedRun, method: methods_lib.Method,
                           s: ml_collections.ConfigDict) -> list[tuning.Record]:
  out = []
  run_dir = run.spec.directory.parent
  for child in method.derived(s):
    if isinstance(child, methods_lib.PostHoc):
      best: dict[int, float] = {}
      for row in checkpoint.read_json(workdir_lib.posthoc_table(run_dir)) or []:
        if row["target"] == "sigma_rel" and row["step"] in horizons(s):
          best[row["step"]] = min(best.get(row["step"], math.inf), row["posthoc_loss"])
      out += [tuning.Record(run.method, child.columns(s)[0], h, run.peak_value, run.seed, v)
              for h, v in best.items()]
    elif isinstance(child, methods_lib.Merges):
      merged = checkpoint.read_json(workdir_lib.merges_file(run_dir)) or {}
      out += [tuning.Record(run.method, name, int(h), run.peak_value, run.seed, v)
              for name, by_h in merged.get("losses", {}).items() for h, v in by_h.items()]
  return out


# ---------------------------------------------------------------------------- the suite


def _manifest(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return dict(suite=config.suite.to_dict(), base=json.loads(config.base.to_json_best_effort()))


def _choice_keys(methods: Sequence[methods_lib.Method]) -> dict[str, tuple[str, ...]]:
  return dict(families=tuple(m.name for m in methods if m.family),
              per_horizon=tuple(m.name for m in methods if m.per_horizon))


def run_suite(config: ml_collections.ConfigDict, workdir: str, *,
              dry_run: bool = False) -> verdict.Report | None:
  """Tunes, re-runs with fresh seeds, evaluates and reports; skips whatever is done already.
  ``dry_run``: prints the phases, the first phase's units and the cost, and trains nothing."""
  methods = validate(config)  # everything is checked before any training starts
  root = epath.Path(workdir)
  paths = workdir_lib.SuitePaths(root)
  stored = checkpoint.read_json(paths.manifest)
  if stored is not None:
    # A key added since the workdir was written meant its default then.
    defaults = {**config_lib.suite_defaults(),
                **{f"base.{k}": v for k, v in config_lib.key_defaults().items()}}
    diffs = checkpoint.config_differences(stored, _manifest(config), defaults=defaults)
    diffs = [d for d in diffs if not d.startswith("suite.executor.")]  # where, not what
    if diffs:
      raise ValueError(f"--workdir {workdir} holds a different suite (differing keys: "
                       f"{', '.join(diffs)}); use a new workdir")
  if dry_run:
    print(dry_run_text(config, root, methods))
    return None
  checkpoint.check_writable(root, field="--workdir")
  with checkpoint.DirectoryLock(root), loop.preemption():
    checkpoint.write_json(paths.manifest, _manifest(config))
    _run(config, root, methods)
  return write_report(str(root))


def _tuning_rounds(config, root, methods, tuning_seeds, *, train: bool = True):
  """Tuning rounds until no best LR sits on an extendable edge; returns (planned, records,
  units submitted)."""
  s = config.suite
  keys = _choice_keys(methods)
  lrs: dict[tuple[str, int | None], set[float]] = {}
  for method in methods_lib.trained(methods):
    for h in (horizons(s) if method.per_horizon else [None]):
      lrs[(method.name, h)] = set(initial_grid(s, method.name))
  by_name = methods_lib.by_name(methods)
  grids = {m.name: initial_grid(s, methods_lib.run_method(by_name, m.name).name)
           for m in methods if not isinstance(m, methods_lib.PostTraining)}
  submitted = 0
  for round_ in range(s.max_extensions + 1):
    planned = plan.plan_runs(config, root, methods, {k: sorted(v) for k, v in lrs.items()},
                             tuning_seeds)
    if not train:
      return planned, [], 0
    submitted += train_phase(planned, config, root, f"tuning-{round_ + 1}")
    evaluate_post_training(planned, config, methods)
    records, _, _ = records_of(planned, config, methods)
    extensions = tuning.planned_extensions(
        records, tuning_seeds=tuning_seeds, initial_grids=grids,
        per_horizon_methods=keys["per_horizon"], factor=s.lr_factor,
        max_extensions=s.max_extensions)
    new = _by_run(extensions, by_name)
    if not any(set(v) - lrs.get(k, set()) for k, v in new.items()):
      break
    for key, values in new.items():
      lrs.setdefault(key, set()).update(values)
  return planned, records, submitted


def _by_run(extensions: Mapping[tuple[str, int | None], Sequence[float]],
            by_name: Mapping[str, methods_lib.Method]) -> dict[tuple[str, int | None], set[float]]:
  """LRs per trained run (a derived column's LRs are its parent's runs, for all horizons)."""
  out: dict[tuple[str, int | None], set[float]] = {}
  for (name, h), values in extensions.items():
    method = methods_lib.run_method(by_name, name)
    horizon = h if method.per_horizon else None
    out.setdefault((method.name, horizon), set()).update(values)
  return out


def _chosen(records, methods, tuning_seeds, s
            ) -> tuple[dict[tuple[str, int | None], set[float]], set[tuple[str, int, float]]]:
  """The chosen runs ``{(run method, horizon or None): LRs}`` and decay branches
  ``{(branch method, horizon, LR)}`` of every column."""
  keys = _choice_keys(methods)
  by_name = methods_lib.by_name(methods)
  choices = tuning.choose_all(records, tuning_seeds=tuning_seeds,
                              per_horizon_methods=keys["per_horizon"])
  chosen: dict[tuple[str, int | None], set[float]] = {}
  branches: set[tuple[str, int, float]] = set()
  for column, choice in choices.items():
    if column.method in by_name:
      for h, optimum in choice.optima.items():
        _want(by_name, column.method, h, optimum.lr, chosen, branches)
  return chosen, branches


def _want(by_name: Mapping[str, methods_lib.Method], column_method: str, horizon: int,
          lr: float, runs: dict[tuple[str, int | None], set[float]],
          branches: set[tuple[str, int, float]]) -> None:
  """Adds what a column's number at (horizon, LR) needs: the run it is read from (its parent's
  for a decay branch; horizon None for a method with one LR for all horizons) and the branch."""
  method = methods_lib.run_method(by_name, column_method)
  runs.setdefault((method.name, horizon if method.per_horizon else None), set()).add(lr)
  if isinstance(by_name[column_method], methods_lib.DecayBranch):
    branches.add((column_method, horizon, lr))


def _run(config: ml_collections.ConfigDict, root: epath.Path,
         methods: Sequence[methods_lib.Method]) -> None:
  s = config.suite
  logging.getLogger("absl").setLevel(logging.WARNING)
  paths = workdir_lib.SuitePaths(root)
  started = time.perf_counter()
  tuning_seeds, first, second = seed_plan(s)
  planned, records, submitted = _tuning_rounds(config, root, methods, tuning_seeds)
  chosen, chosen_branches = _chosen(records, methods, tuning_seeds, s)
  reporting = plan.plan_runs(config, root, methods, {k: sorted(v) for k, v in chosen.items()},
                             first, windows=True, branches=chosen_branches)
  submitted += train_phase(reporting, config, root, "seeds")
  evaluate_post_training(reporting, config, methods)
  planned = list(planned) + reporting
  stages = verdict.Stages(tuple(first), (), 2 if second else 1)
  second_runs: list[PlannedRun] = []
  if second:
    _store_records(paths, planned, config, methods, stages, 0)
    report = build_report(root)
    wanted: dict[tuple[str, int | None], set[float]] = {}
    wanted_branches: set[tuple[str, int, float]] = set()
    by_name = methods_lib.by_name(methods)
    for cell in verdict.undecided_cells(report):
      _want(by_name, cell.column.method, cell.horizon, cell.lr, wanted, wanted_branches)
      _want(by_name, cell.envelope_family, cell.horizon, cell.envelope_lr, wanted,
            wanted_branches)
    if wanted:
      second_runs = plan.plan_runs(config, root, methods,
                                   {k: sorted(v) for k, v in wanted.items()}, second,
                                   windows=True, branches=wanted_branches)
      submitted += train_phase(second_runs, config, root, "second-stage")
      evaluate_post_training(second_runs, config, methods)
    stages = verdict.Stages(tuple(first), tuple(second) if second_runs else (), 2)
  timing = checkpoint.read_json(paths.timing)
  if timing is None or submitted:  # the wall time of the invocations that trained something
    timing = timing or {"seconds": 0.0}
    timing["seconds"] += time.perf_counter() - started
    checkpoint.write_json(paths.timing, timing)
  _store_records(paths, planned + second_runs, config, methods, stages, len(second_runs))


def _store_records(paths, planned, config, methods, stages, second_stage_runs):
  records, windows, counts = records_of(planned, config, methods)
  primary = tuning.Column(*config.suite.primary)
  checkpoint.write_json(paths.records, dict(
      records=[r._asdict() for r in records],
      windows=[dict(key=list(k), sums=v) for k, v in windows.items()],
      window_tokens=counts,
      stages=dict(first=list(stages.first), second=list(stages.second), looks=stages.looks),
      runs=len(planned), second_stage_runs=second_stage_runs,
      anytime_curve=_anytime_curve(planned, records, config, methods, primary)))


def _anytime_curve(planned, records, config, methods, primary) -> dict[str, list]:
  """The primary method's run on the (first) tuning seed at its chosen LR: every evaluation."""
  s = config.suite
  tuning_seeds = sorted(set(s.tuning_seeds))
  keys = _choice_keys(methods)
  choices = tuning.choose_all(records, tuning_seeds=tuning_seeds,
                              per_horizon_methods=keys["per_horizon"])
  if primary not in choices:
    return {}
  lr = next(iter(choices[primary].optima.values())).lr
  run = next((p for p in planned if p.method == primary.method and p.parent is None
              and p.seed == tuning_seeds[0] and tuning.same_lr(p.peak_value, lr)), None)
  if run is None:
    return {}
  curve: dict[str, list] = {}
  for m in loop.read_metrics(run.spec.directory):
    for candidate, loss in naming.eval_losses(m).items():
      if candidate in ("raw", primary.candidate):
        curve.setdefault(candidate, []).append([m["step"], loss])
  return curve


# ---------------------------------------------------------------------------- dry run


def dry_run_text(config: ml_collections.ConfigDict, root: epath.Path,
                 methods: Sequence[methods_lib.Method]) -> str:
  """The phases, the first phase's units and the cost (nothing trained, nothing written)."""
  s = config.suite
  tuning_seeds, first, second = seed_plan(s)
  params = plan.non_embedding_params(config, _vocab_size(config, root))
  round1, _, _ = _tuning_rounds(config, root, methods, tuning_seeds, train=False)
  mains, branch_runs = plan.parents_first(round1)
  units = plan.units(mains, config, root, "tuning-1")
  round_cost = plan.cost([p.spec for p in round1], config, params)
  # The reporting seeds re-run one configuration per (trained method, horizon if tuned per
  # horizon); the second stage at most the same again per extra seed.
  one = {}
  for m in methods_lib.trained(methods):
    for h in (horizons(s) if m.per_horizon else [None]):
      one[(m.name, h)] = [initial_grid(s, m.name)[0]]
  per_seed = plan.plan_runs(config, root, methods, one, [first[0] if first else 0])
  seed_cost = plan.cost([p.spec for p in per_seed], config, params)
  lines = [
      f"Dry run of the suite in {root}: nothing is trained or written.",
      f"Model: {params:,} non-embedding parameters; {config.base.train.batch_size} x "
      f"{config.base.train.seq_len} tokens per step; horizons {horizons(s)} steps.",
      f"Methods: {', '.join(m.name for m in methods)}.",
      f"Seeds: tuning {tuning_seeds}, reporting {first}, second stage up to {second or 'none'}.",
      f"Executor: {s.executor.name}; cost at {s.cost_mfu:.0%} MFU of "
      f"{s.cost_peak_flops:.3g} FLOP/s per accelerator; FLOPs = 6 x N x tokens.",
      "Phases:",
      f"  1. tuning round 1: {len(mains)} main runs, then {len(branch_runs)} decay branches: "
      f"{round_cost.text()}",
      "  2. post-training columns (post-hoc EMAs, checkpoint merges): evaluation only",
      f"  3. tuning rounds 2..{s.max_extensions + 1}: one LR past each grid edge that holds an "
      "optimum (only where needed)",
      f"  4. reporting seeds: {len(per_seed) * len(first)} runs: "
      f"{(seed_cost.flops * len(first)):.3g} FLOPs, "
      f"{seed_cost.accelerator_hours * len(first):,.1f} accelerator-hours",
      f"  5. second stage (undecided cells only): at most {len(per_seed) * len(second)} runs, "
      f"{seed_cost.accelerator_hours * len(second):,.1f} accelerator-hours",
      "  6. the report, from the workdir alone",
      f"Total without grid extensions or a second stage: "
      f"{round_cost.flops + seed_cost.flops * len(first):.3g} FLOPs, "
      f"{round_cost.accelerator_hours + seed_cost.accelerator_hours * len(first):,.1f} "
      "accelerator-hours.",
      f"Units of phase 1 ({len(units)}):"]
  lines += plan.describe_units(units, config, params)
  lines.append(executors.describe(units, s.executor, str(root)))
  return "\n".join(lines)


def _vocab_size(config: ml_collections.ConfigDict, root: epath.Path) -> int:
  if config.base.model.vocab_size:
    return config.base.model.vocab_size
  tokenizer = data_lib.build_tokenizer(config.base.data, str(root))
  return tokenizer.padded_vocab_size(config.base.train.vocab_multiple)


# ---------------------------------------------------------------------------- the report


def _stored_config(root: epath.Path) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  paths = workdir_lib.SuitePaths(root)
  manifest = checkpoint.read_json(paths.manifest)
  stored = checkpoint.read_json(paths.records)
  if manifest is None or stored is None:
    raise FileNotFoundError(f"--workdir {root} holds no finished suite (no suite.json or "
                            "records.json); run `python -m anytime.main compare --config ... "
                            "--workdir` first")
  config = ml_collections.ConfigDict(dict(base=config_lib.default_config(),
                                          suite=default_suite()))
  config.base.unlock()
  config.base.update(ml_collections.ConfigDict(manifest["base"]))
  config.suite.update(manifest["suite"])
  return config, stored


def build_report(root: str | epath.Path) -> verdict.Report:
  """The report of a suite's workdir (its records, windows and stages)."""
  root = epath.Path(root)
  config, stored = _stored_config(root)
  base, s = config.base, config.suite
  methods = methods_lib.active(s)
  keys = _choice_keys(methods)
  tokenizer = data_lib.build_tokenizer(base.data, str(root))
  model = base.model.to_dict()
  model["vocab_size"] = model["vocab_size"] or tokenizer.padded_vocab_size(
      base.train.vocab_multiple)
  model_config = model_lib.ModelConfig(**model)
  eval_args = dict(seq_len=base.train.seq_len,
                   batch_size=base.train.eval_batch_size or base.train.batch_size,
                   num_batches=base.train.eval_batches)
  documents = data_lib.eval_window_documents(base.data, tokenizer, **eval_args)
  tokens = np.asarray(stored.get("window_tokens") or [], np.float64)
  windows = {tuple(w["key"]): np.asarray(w["sums"], np.float64)
             for w in stored.get("windows", [])}
  timing = checkpoint.read_json(workdir_lib.SuitePaths(root).timing)
  facts = verdict.SuiteFacts(
      base_steps=s.base_steps, tokens_per_step=base.train.batch_size * base.train.seq_len,
      non_embedding_params=model_lib.param_count(model_config, include_embedding=False),
      total_params=model_lib.param_count(model_config),
      eval_tokens=max(int(tokens.sum()), 1), runs=stored.get("runs"),
      second_stage_runs=stored.get("second_stage_runs"),
      wall_seconds=timing["seconds"] if timing else None)
  st = stored["stages"]
  oracle = tuple(tuning.Column(m.parent, c) for m in methods if m.oracle
                 for c in m.columns(s))
  return verdict.build_report(
      [tuning.Record(**r) for r in stored["records"]], facts,
      tuning_seeds=sorted(set(s.tuning_seeds)), families=keys["families"],
      per_horizon_methods=keys["per_horizon"],
      windows=windows or None, window_tokens=tokens if windows else None,
      window_documents=documents if windows else None,
      margin=s.equivalence_margin, alpha=s.alpha, primary=tuning.Column(*s.primary),
      multiplicity=s.multiplicity,
      stages=verdict.Stages(tuple(st["first"]), tuple(st["second"]), st["looks"]),
      oracle_columns=oracle,
      anytime_curve={k: [tuple(x) for x in v]
                     for k, v in (stored.get("anytime_curve") or {}).items()} or None)


def write_report(workdir: str) -> verdict.Report:
  """Writes ``report/`` from the stored records and prints the compact summary."""
  root = epath.Path(workdir)
  report = build_report(root)
  if jax.process_index() == 0:
    out = workdir_lib.SuitePaths(root).report
    written = verdict.write_report(out, report)
    print(verdict.terminal_summary(report))
    print(f"Full tables and plots: {out}/ ({', '.join(sorted(written))})")
  return report


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

