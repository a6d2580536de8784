"""The comparison suite: is one horizon-free run as good, at every horizon, as a schedule tuned
for that horizon — measured so that the answer survives a closer look.

A suite config names a base horizon T (steps), horizons {1, 2, 4, 8}·T and methods:

- baselines, tuned per horizon: ``cosine`` (to 10% of peak, the seed paper's), ``d2z``
  (linear decay to zero, Bergsma et al. 2025), optionally ``cosine_zero``; the envelope is the
  best family at each horizon;
- anytime methods, one LR for all horizons: ``constant`` (evaluated with its anytime EMAs, a
  LAWA window, post-hoc power EMAs, merges of its last checkpoints, and WSD decay branches to
  zero and to 10%), ``inverse_sqrt``, ``wsd_s``, ``schedule_free``.

Tuning: every method starts from the same log-spaced LR grid; where a best LR lies on an edge
of its grid, the grid is extended on that side (``suite.max_extensions`` times at most) and the
missing runs are trained; an optimum still on an edge is marked in the report. Noise floor: the
chosen configurations are re-run with ``suite.seeds`` seeds (init and data order); the report
gives mean ± standard error, paired deltas to the envelope, and calls a delta within two
standard errors a tie (``anytime.experiments.verdict``).

Runs are trained by ``anytime.batched``: all runs that share a program (model, optimizer
structure) and a length train as one vmapped program. Every run keeps its own directory in
``workdir/runs/<name>``; finished runs are skipped, so an interrupted suite is simply restarted.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from etils import epath

from anytime import batched, branches, checkpoint, loop, naming, schedules
from anytime import config as config_lib
from anytime.experiments import merging, posthoc_eval, tuning, verdict
from anytime.lm import data as data_lib
from anytime.lm import model as model_lib

BASELINES = ("cosine", "d2z", "cosine_zero")
ANYTIME = ("constant", "inverse_sqrt", "wsd_s", "schedule_free")
TUNING_SEED = 0


def default_suite() -> ml_collections.ConfigDict:
  """Suite options (``config.suite``) with their defaults."""
  return ml_collections.ConfigDict(dict(
      base_steps=100,  # T, the 1x horizon, in steps
      multipliers=[1, 2, 4, 8],
      baselines=["cosine", "d2z"],  # tuned per horizon; "cosine_zero" is the third option
      methods=["constant", "inverse_sqrt", "wsd_s", "schedule_free"],  # one LR for all horizons
      warmup_steps=10,
      warmup_init_fraction=0.1,
      cosine_final_fraction=0.1,
      lr_centre=3e-3,  # the initial grid: lr_points values, lr_factor apart, around lr_centre
      lr_points=3,
      lr_factor=2 ** 0.5,
      lr_grids={},  # {method: [LR, ...]}: a fixed starting grid for that method instead
      max_extensions=3,  # per side: how far a grid may grow when its best LR is on an edge
      seeds=3,  # the chosen configurations run with seeds 0..seeds-1 (0 = the tuning seed)
      max_batch_runs=12,  # runs trained as one vmapped program at most
      inverse_sqrt_offset=40.0,
      ema_factors=[6.25, 25.0, 100.0],
      headline_ema=25.0,  # the seed paper's EMA-25
      lawa_every=0,  # 0 = base_steps // 10
      lawa_size=10,
      wsd_cooldown_fraction=0.2,
      wsd_variants=[["1-sqrt", 0.0], ["linear", 0.0], ["1-sqrt", 0.1], ["linear", 0.1]],
      wsd_s_cooldown_fraction=0.2,  # of the base horizon T
      evals_per_base=2,  # evaluations per T along the anytime runs (for the curves)
      posthoc_sigma_rels=[0.05, 0.1, 0.2],  # reconstructed after training ([] = off)
      snapshots_per_base=10,
      merge_last=[4],  # merge the last k checkpoints before each horizon ([] = off)
      merge_ema_alpha=0.5,  # the "ema" merge's decay per checkpoint
      checkpoints_per_base=10,  # main checkpoints per T of the constant runs (for merging)
  ))


class PlannedRun(NamedTuple):
  """One run of the suite: its identity in the report and what ``batched`` trains."""

  method: str
  peak_value: float
  seed: int
  spec: batched.RunSpec


def horizons(suite: ml_collections.ConfigDict) -> list[int]:
  return sorted(suite.base_steps * m for m in suite.multipliers)


def validate(config: ml_collections.ConfigDict) -> None:
  """Refuses a bad suite config with a one-line error naming the key."""
  s = config.suite
  for key, names, accepted in (("baselines", s.baselines, BASELINES),
                               ("methods", s.methods, ANYTIME)):
    unknown = sorted(set(names) - set(accepted))
    if unknown:
      raise ValueError(f"suite.{key}: unknown {unknown}; accepted: {list(accepted)}")
  if not s.baselines:
    raise ValueError("suite.baselines must name at least one baseline (the reference)")
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
  if not isinstance(s.max_extensions, int) or s.max_extensions < 0:
    raise ValueError(f"suite.max_extensions must be a non-negative integer, got "
                     f"{s.max_extensions!r}")
  for method, grid in s.lr_grids.items():
    if method not in list(s.baselines) + list(s.methods):
      raise ValueError(f"suite.lr_grids: {method!r} is not one of the suite's baselines or "
                       f"methods {list(s.baselines) + list(s.methods)}")
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
  for variant in s.wsd_variants:
    # The shape names a branch directory: only the known shapes reach the file system.
    if (len(variant) != 2 or variant[0] not in schedules.COOLDOWN_SHAPES or
        not 0 <= variant[1] <= 1):
      raise ValueError(f"suite.wsd_variants entries are [shape, final_fraction] with shape in "
                       f"{schedules.COOLDOWN_SHAPES} and final_fraction in [0, 1], got "
                       f"{list(variant)}")
  config_lib.validate_config(config.base)


def initial_grid(suite: ml_collections.ConfigDict, method: str | None = None
                 ) -> tuple[float, ...]:
  """The LR grid a method starts from: ``suite.lr_grids[method]`` if given, else
  ``lr_points`` values ``lr_factor`` apart around ``lr_centre`` (the same for every method)."""
  if method is not None and method in suite.lr_grids:
    return tuple(sorted(float(v) for v in suite.lr_grids[method]))
  return tuning.log_grid(suite.lr_centre, suite.lr_points, suite.lr_factor)


def _schedule(method: str, lr: float, horizon: int, s: ml_collections.ConfigDict) -> dict:
  warmup = dict(warmup_steps=s.warmup_steps, warmup_init_fraction=s.warmup_init_fraction)
  if method in BASELINES:
    name = "cosine" if method.startswith("cosine") else "linear"
    final = s.cosine_final_fraction if method == "cosine" else 0.0
    return dict(name=name, peak_value=lr, total_steps=horizon, final_fraction=final, **warmup)
  if method == "inverse_sqrt":
    return dict(name="inverse_sqrt", peak_value=lr, offset=s.inverse_sqrt_offset, **warmup)
  if method == "wsd_s":
    return dict(name="wsd_s", peak_value=lr, decay_ends=horizons(s),
                cooldown_steps=naming.cooldown_steps(s.wsd_s_cooldown_fraction, s.base_steps),
                shape="linear", final_fraction=0.0, **warmup)
  return dict(name="constant", peak_value=lr, **warmup)


def _averages(s: ml_collections.ConfigDict) -> dict[str, dict]:
  averages = {naming.ema_name(f): dict(kind="anytime_ema", factor=float(f))
              for f in s.ema_factors}
  averages["lawa"] = dict(kind="window", every=s.lawa_every or max(s.base_steps // 10, 1),
                          size=s.lawa_size)
  return averages


def run_config(config: ml_collections.ConfigDict, method: str, lr: float, seed: int,
               horizon: int) -> ml_collections.ConfigDict:
  """The training config of one run of the suite."""
  s, c = config.suite, copy.deepcopy(config.base)
  c.unlock()
  c.seed = seed
  c.train.total_steps = horizon
  c.optimizer.schedule = _schedule(method, lr, horizon, s)
  c.train.eval_every = horizon
  c.train.checkpoint_every = horizon
  c.train.keep_checkpoints = 1
  if method not in BASELINES:
    c.train.eval_every = s.base_steps // s.evals_per_base
    c.train.eval_at = horizons(s)
  if method in ("constant", "inverse_sqrt"):
    c.optimizer.averages = _averages(s)
  if method == "constant":
    c.train.checkpoint_every = s.base_steps // s.checkpoints_per_base
    c.train.keep_checkpoints = 10**6  # every one: branch points and merges read them
    if s.posthoc_sigma_rels:
      c.train.snapshot_every = s.base_steps // s.snapshots_per_base
  if method == "schedule_free":
    c.optimizer.name = "schedule_free_adamw"
  c.lock()
  return c


def run_name(method: str, lr: float, seed: int, horizon: int | None = None) -> str:
  where = f"_{horizon}" if horizon is not None else ""
  return f"{method}{where}_lr{naming.lr_tag(lr)}_s{seed}"


def plan_runs(config: ml_collections.ConfigDict, workdir: epath.Path,
              lrs: Mapping[tuple[str, int | None], Sequence[float]],
              seeds: Sequence[int]) -> list[PlannedRun]:
  """The main runs for ``lrs[(method, horizon or None)]`` and ``seeds``."""
  s, longest = config.suite, horizons(config.suite)[-1]
  planned = []
  for (method, horizon), values in sorted(lrs.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
    for lr in values:
      for seed in seeds:
        name = run_name(method, lr, seed, horizon)
        end = horizon or longest
        keep = frozenset()
        if method == "constant":
          keep = frozenset(h - naming.cooldown_steps(s.wsd_cooldown_fraction, h)
                           for h in horizons(s))
        spec = batched.RunSpec(
            name=name, config=run_config(config, method, lr, seed, end),
            directory=checkpoint.main_dir(workdir / "runs" / name), end_step=end,
            eval_steps=frozenset(horizons(s)) if horizon is None else frozenset(),
            keep_steps=keep)
        planned.append(PlannedRun(method, lr, seed, spec))
  return planned


def wsd_method(shape: str, final_fraction: float) -> str:
  return f"wsd_{shape}_{final_fraction:g}"


def plan_branches(config: ml_collections.ConfigDict, constant_runs: Sequence[PlannedRun]
                  ) -> list[PlannedRun]:
  """WSD decay branches of every constant run: each variant, one per horizon."""
  s = config.suite
  planned = []
  for run in constant_runs:
    run_dir = run.spec.directory.parent
    for shape, final in s.wsd_variants:
      for h in horizons(s):
        cooldown = naming.cooldown_steps(s.wsd_cooldown_fraction, h)
        name = naming.branch_name(f"{shape}_to{final:g}", h)
        schedule = dict(run.spec.config.optimizer.schedule.to_dict(),
                        decay=dict(branch_step=h - cooldown, cooldown_steps=cooldown,
                                   shape=shape, final_fraction=float(final)))
        spec = batched.RunSpec(
            name=f"{run.spec.name}/{name}", config=run.spec.config,
            directory=checkpoint.branch_dir(run_dir, name), end_step=h,
            start=(run.spec.directory, h - cooldown), schedule=schedule)
        planned.append(PlannedRun(wsd_method(shape, final), run.peak_value, run.seed, spec))
  return planned


# ---------------------------------------------------------------------------- training


class _Clock:
  """Suite-wide progress: runs done, tokens/s, ETA from the steps still to train."""

  def __init__(self, total_run_steps: int):
    self.total, self.done, self.runs_done = total_run_steps, 0, 0
    self.start = time.perf_counter()

  def line(self, label: str, p: batched.Progress, group_steps: int, runs_total: int) -> str:
    done = self.done + p.runs * (p.step - (p.end_step - group_steps))
    elapsed = time.perf_counter() - self.start
    eta = elapsed / max(done, 1) * (self.total - done)
    return (f"[suite] {label}: step {p.step}/{p.end_step} x {p.runs} runs | runs done "
            f"{self.runs_done}/{runs_total} | {p.tokens_per_sec:,.0f} tok/s | ETA "
            f"{loop._format_seconds(eta)}")  # pylint: disable=protected-access


def train_all(planned: Sequence[PlannedRun], config: ml_collections.ConfigDict,
              workdir: epath.Path, label: str) -> None:
  """Trains every planned run not finished yet; branches after their main runs.

  One-device runs (``base.parallel.num_devices == 1``) train as batched groups; larger ones one
  after the other, each sharded over its whole mesh (``branches.train`` / ``branches.branch``).
  """
  todo = [p for p in planned if not batched.finished(p.spec)]
  if not todo:
    return
  if config.base.parallel.num_devices != 1:
    for i, p in enumerate(sorted(todo, key=lambda p: p.spec.start is not None)):
      print(f"[suite] {label} {i + 1}/{len(todo)}: {p.spec.name}", flush=True)
      if p.spec.start is None:
        branches.train(p.spec.config, str(p.spec.directory.parent))
      else:
        decay = p.spec.schedule["decay"]
        branches.branch(str(p.spec.directory.parent.parent), from_step=decay["branch_step"],
                        cooldown_steps=decay["cooldown_steps"], shape=decay["shape"],
                        final_fraction=decay["final_fraction"], name=p.spec.directory.name)
    return
  groups = batched.group_runs([p.spec for p in todo], config.suite.max_batch_runs)
  groups.sort(key=lambda g: g[0].start is not None)  # main runs before the branches of them
  clock = _Clock(sum((g[0].end_step - g[0].start_step) * len(g) for g in groups))
  for i, group in enumerate(groups):
    steps = group[0].end_step - group[0].start_step
    tag = f"{label} {i + 1}/{len(groups)}"
    show = lambda p, tag=tag, steps=steps: print(
        clock.line(tag, p, steps, len(todo)), flush=True)
    every = max(steps // 4, 1)
    group_start = time.perf_counter()
    batched.train_group(group, workdir=workdir,
                        progress=lambda p, show=show, every=every: (
                            show(p) if p.step % every == 0 or p.step == p.end_step else None))
    print(f"[suite] {tag}: {len(group)} runs x {steps} steps in "
          f"{time.perf_counter() - group_start:.1f} s", flush=True)
    clock.done += steps * len(group)
    clock.runs_done += len(group)
    for spec in group:
      if spec.start is not None:
        _write_lineage(spec)


def _write_lineage(spec: batched.RunSpec) -> None:
  decay = spec.schedule["decay"]
  checkpoint.write_json(spec.directory / branches.LINEAGE, dict(
      parent="main", parent_step=decay["branch_step"], cooldown_steps=decay["cooldown_steps"],
      shape=decay["shape"], final_fraction=decay["final_fraction"], end_step=spec.end_step,
      schedule=dict(spec.schedule), finished=True))


# ---------------------------------------------------------------------------- records


def records_of(planned: Sequence[PlannedRun], config: ml_collections.ConfigDict
               ) -> list[tuning.Record]:
  """The evaluated numbers of finished runs, at the suite's horizons, as report records."""
  s = config.suite
  out = []
  for run in planned:
    if not batched.finished(run.spec):
      continue
    evals = {m["step"]: naming.eval_losses(m) for m in loop.read_metrics(run.spec.directory)
             if naming.is_eval_record(m)}
    steps = [run.spec.end_step] if run.spec.start or run.method in BASELINES else horizons(s)
    for h in steps:
      for candidate, loss in evals.get(h, {}).items():
        if candidate in _candidates(run, s):
          out.append(tuning.Record(run.method, candidate, h, run.peak_value, run.seed, loss))
    run_dir = run.spec.directory.parent
    rows = checkpoint.read_json(run_dir / "posthoc" / "table.json") or []  # posthoc_eval's rows
    best: dict[int, float] = {}
    for row in rows:
      if row["target"] == "sigma_rel" and row["step"] in horizons(s):
        best[row["step"]] = min(best.get(row["step"], math.inf), row["posthoc_loss"])
    out += [tuning.Record(run.method, "posthoc_best", h, run.peak_value, run.seed, v)
            for h, v in best.items()]
    merged = checkpoint.read_json(run_dir / "merges.json") or {}
    out += [tuning.Record(run.method, name, int(h), run.peak_value, run.seed, v)
            for name, by_h in merged.items() for h, v in by_h.items()]
  return out


def _candidates(run: PlannedRun, s: ml_collections.ConfigDict) -> tuple[str, ...]:
  """What the report shows of a run: the last iterate of baselines and decay branches, the
  headline EMA (and LAWA, raw) of the anytime runs, Schedule-Free's evaluation point."""
  if run.method == "schedule_free":
    return ("schedule_free",)
  if run.method in BASELINES or run.spec.start is not None or run.method == "wsd_s":
    return ("raw",)
  if run.method == "constant":
    return ("raw", naming.ema_name(s.headline_ema), "lawa")
  return (naming.ema_name(s.headline_ema),)


# ---------------------------------------------------------------------------- evaluation


def posthoc_and_merges(planned: Sequence[PlannedRun], config: ml_collections.ConfigDict
                       ) -> None:
  """Post-hoc power EMAs and checkpoint merges of the constant runs, at every horizon."""
  s = config.suite
  for run in planned:
    if run.method != "constant" or not batched.finished(run.spec):
      continue
    run_dir = run.spec.directory.parent
    if s.posthoc_sigma_rels and not (run_dir / "posthoc" / "table.json").exists():
      posthoc_eval.run(str(run_dir), steps=horizons(s), sigma_rels=list(s.posthoc_sigma_rels),
                       quiet=True)
    if s.merge_last and not (run_dir / "merges.json").exists():
      _merge(run, config)


def _merge(run: PlannedRun, config: ml_collections.ConfigDict) -> None:
  s = config.suite
  trained = loop.build_run(run.spec.config, run.spec.directory.parent)
  store = checkpoint.CheckpointStore(run.spec.directory, read_only=True)
  saved = store.all_steps()
  store.close()
  results: dict[str, dict[int, float]] = {}
  for k in s.merge_last:
    for kind in ("uniform", "ema"):
      name = f"merge_{kind}_{k}"
      for h in horizons(s):
        steps = merging.last_steps(saved, h, k)
        if len(steps) < k:
          continue
        weights = (merging.uniform_weights(k) if kind == "uniform"
                   else merging.ema_weights(k, s.merge_ema_alpha))
        params = merging.merge_checkpoints(run.spec.directory, steps, weights,
                                           trained.abstract_state.params)
        results.setdefault(name, {})[h] = trained.validation_loss(params)
  checkpoint.write_json(run.spec.directory.parent / "merges.json", results)


# ---------------------------------------------------------------------------- the suite


def _manifest(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return dict(suite=config.suite.to_dict(), base=json.loads(config.base.to_json_best_effort()))


def _facts(config: ml_collections.ConfigDict, workdir: epath.Path) -> verdict.SuiteFacts:
  base, s = config.base, config.suite
  tokenizer = data_lib.build_tokenizer(base.data, str(workdir))
  model = base.model.to_dict()
  model["vocab_size"] = model["vocab_size"] or tokenizer.padded_vocab_size(
      base.train.vocab_multiple)
  model_config = model_lib.ModelConfig(**model)
  eval_batches = data_lib.make_eval_batches(
      base.data, tokenizer, seq_len=base.train.seq_len,
      batch_size=base.train.eval_batch_size or base.train.batch_size,
      num_batches=base.train.eval_batches)
  return verdict.SuiteFacts(
      base_steps=s.base_steps, tokens_per_step=base.train.batch_size * base.train.seq_len,
      non_embedding_params=model_lib.param_count(model_config, include_embedding=False),
      total_params=model_lib.param_count(model_config),
      eval_tokens=int(sum(float(np.sum(b["weights"])) for b in eval_batches)),
      tuning_seed=TUNING_SEED)


def run_suite(config: ml_collections.ConfigDict, workdir: str) -> verdict.Report:
  """Tunes, re-runs with seeds, evaluates and reports; skips whatever is done already."""
  validate(config)  # everything is checked before any training starts
  workdir = epath.Path(workdir)
  stored = checkpoint.read_json(workdir / "suite.json")
  if stored is not None:
    # A key added since the workdir was written meant its default then.
    defaults = {**{f"suite.{k}": v for k, v in checkpoint.flatten(default_suite().to_dict()).items()},
                **{f"base.{k}": v for k, v in config_lib.key_defaults().items()}}
    diffs = checkpoint.config_differences(stored, _manifest(config), defaults=defaults)
    if diffs:
      raise ValueError(f"--workdir {workdir} holds a different suite (differing keys: "
                       f"{', '.join(diffs)}); use a new workdir")
  checkpoint.check_writable(workdir, field="--workdir")
  with checkpoint.DirectoryLock(workdir):
    checkpoint.write_json(workdir / "suite.json", _manifest(config))
    _tune_and_rerun(config, workdir)
  return write_report(str(workdir))


def _tune_and_rerun(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
  s = config.suite
  logging.getLogger("absl").setLevel(logging.WARNING)
  started = time.perf_counter()
  lrs: dict[tuple[str, int | None], set[float]] = {}
  for method in s.baselines:
    for h in horizons(s):
      lrs[(method, h)] = set(initial_grid(s, method))
  for method in s.methods:
    lrs[(method, None)] = set(initial_grid(s, method))
  seeds_tuning = [TUNING_SEED]
  for round_ in range(s.max_extensions + 1):
    planned = plan_runs(config, workdir, {k: sorted(v) for k, v in lrs.items()}, seeds_tuning)
    constant = [p for p in planned if p.method == "constant"]
    planned += plan_branches(config, constant)
    train_all(planned, config, workdir, f"tuning round {round_ + 1}")
    posthoc_and_merges(planned, config)
    records = records_of(planned, config)
    extensions = tuning.planned_extensions(
        records, tuning_seed=TUNING_SEED, initial_grids=_initial_grids(s),
        per_horizon_methods=BASELINES, factor=s.lr_factor, max_extensions=s.max_extensions)
    extensions = _by_run(extensions)
    if not any(set(v) - lrs.get(k, set()) for k, v in extensions.items()):
      break
    for key, values in extensions.items():
      lrs.setdefault(key, set()).update(values)
  choices = tuning.choose_all(records, tuning_seed=TUNING_SEED, per_horizon_methods=BASELINES)
  chosen: dict[tuple[str, int | None], set[float]] = {}
  for column, choice in choices.items():
    method = _run_method(column.method)
    for h, optimum in choice.optima.items():
      chosen.setdefault((method, h if method in BASELINES else None), set()).add(optimum.lr)
  seeds = [seed for seed in range(s.seeds) if seed != TUNING_SEED]
  if seeds:
    reruns = plan_runs(config, workdir, {k: sorted(v) for k, v in chosen.items()}, seeds)
    reruns += plan_branches(config, [p for p in reruns if p.method == "constant"])
    train_all(reruns, config, workdir, "seeds")
    posthoc_and_merges(reruns, config)
    planned += reruns
  timing = checkpoint.read_json(workdir / "timing.json") or {"seconds": 0.0}
  timing["seconds"] += time.perf_counter() - started
  checkpoint.write_json(workdir / "timing.json", timing)
  checkpoint.write_json(workdir / "records.json", dict(
      records=[r._asdict() for r in records_of(planned, config)],
      window_losses=_window_losses(planned),
      paired_window_losses=_paired_window_losses(planned)))


def _window_losses(planned: Sequence[PlannedRun]) -> dict[str, list[float]]:
  """Per-window mean validation losses of one finished run's last checkpoint: the evaluation
  set's own sampling error (their standard error) next to the seed noise in the report."""
  run = next((p for p in planned if p.spec.start is None and batched.finished(p.spec)), None)
  return {} if run is None else {str(run.spec.end_step): _per_window_losses(run)}


def _paired_window_losses(planned: Sequence[PlannedRun]) -> dict[str, list[list[float]]]:
  """Per-window losses of a baseline's and an anytime method's run that end at the same
  (the longest) step, on the same windows: the evaluation set's error of a delta."""
  mains = [p for p in planned if p.spec.start is None and p.seed == TUNING_SEED
           and batched.finished(p.spec)]
  for anytime in (p for p in mains if p.method not in BASELINES):
    baseline = next((p for p in mains if p.method in BASELINES
                     and p.spec.end_step == anytime.spec.end_step), None)
    if baseline is not None:
      return {str(anytime.spec.end_step): [_per_window_losses(baseline),
                                           _per_window_losses(anytime)]}
  return {}


def _per_window_losses(run: PlannedRun) -> list[float]:
  trained = loop.build_run(run.spec.config, run.spec.directory.parent)
  store = checkpoint.CheckpointStore(run.spec.directory, read_only=True)
  state = store.restore(store.latest_step(), trained.abstract_state)
  store.close()
  losses = []
  for batch in trained.eval_batches:
    for i in range(batch["inputs"].shape[0]):
      total, count = trained.eval_step(state.params, {k: v[i:i + 1] for k, v in batch.items()})
      if float(count):
        losses.append(float(total) / float(count))
  return losses


def _initial_grids(s: ml_collections.ConfigDict) -> dict[str, tuple[float, ...]]:
  grids = {m: initial_grid(s, m) for m in list(s.baselines) + list(s.methods)}
  # WSD branches come from the constant runs: they start from the constant method's grid.
  grids.update({wsd_method(shape, final): initial_grid(s, "constant")
                for shape, final in s.wsd_variants})
  return grids


def _run_method(method: str) -> str:
  """The run a column's method is trained by (WSD branches come from the constant runs)."""
  return "constant" if method.startswith("wsd_") and method != "wsd_s" else method


def _by_run(extensions: Mapping[tuple[str, int | None], Sequence[float]]
            ) -> dict[tuple[str, int | None], set[float]]:
  out: dict[tuple[str, int | None], set[float]] = {}
  for (method, h), values in extensions.items():
    out.setdefault((_run_method(method), h), set()).update(values)
  return out


def write_report(workdir: str) -> verdict.Report:
  """Writes ``report/`` from the stored records and prints the table."""
  workdir = epath.Path(workdir)
  manifest = checkpoint.read_json(workdir / "suite.json")
  stored = checkpoint.read_json(workdir / "records.json")
  if manifest is None or stored is None:
    raise FileNotFoundError(f"--workdir {workdir} holds no finished suite (no suite.json or "
                            "records.json); run `python -m anytime.main compare --config ... "
                            "--workdir` first")
  config = ml_collections.ConfigDict(dict(
      base=config_lib.default_config(), suite=default_suite()))
  config.base.unlock()
  config.base.update(ml_collections.ConfigDict(manifest["base"]))
  config.suite.update(manifest["suite"])
  records = [tuning.Record(**r) for r in stored["records"]]
  facts = dataclasses.replace(
      _facts(config, workdir),
      window_losses={int(h): v for h, v in stored.get("window_losses", {}).items()
                     if len(v) > 1},
      paired_window_losses={int(h): (a, b) for h, (a, b)
                            in stored.get("paired_window_losses", {}).items() if len(a) > 1})
  report = verdict.build_report(records, facts,
                                families=tuple(config.suite.baselines),
                                per_horizon_methods=BASELINES)
  if jax.process_index() == 0:
    paths = verdict.write_report(workdir / "report", report)
    text = verdict.report_markdown(report)
    timing = checkpoint.read_json(workdir / "timing.json")
    if timing:
      text += f"\nWall time of the suite: {timing['seconds'] / 60:.1f} min.\n"
      paths["table.md"].write_text(text)
    print(text)
    print(f"Report: {workdir / 'report'}/ ({', '.join(sorted(paths))})")
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
