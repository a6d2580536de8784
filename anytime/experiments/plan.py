"""The suite as a plan of units: what each phase trains, as units any process can execute alone.

A :class:`PlannedRun` is one run of the suite (its method, peak LR, seed, and the
``batched.RunSpec`` that trains it). A phase's runs are cut into :class:`Unit` s: a batched group
of one-device runs (one compiled program, ``anytime.batched``), or one run sharded over its mesh.
A unit is a pure, picklable description: :func:`execute` trains it in any process, idempotently
(finished runs are skipped, interrupted ones resume from their own checkpoints), writing only
inside its runs' directories while holding their locks. ``experiments.executors`` hands units
to an engine (this process, Ray, SLURM); ``experiments.compare`` is the coordinator that plans
the phases, submits them and reads the results.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Collection, Mapping, Sequence

import ml_collections
from etils import epath

from anytime import batched, checkpoint, naming
from anytime import workdir as workdir_lib
from anytime.experiments import methods as methods_lib
from anytime.experiments import tuning
from anytime.lm import model as model_lib


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  """One run of the suite: its identity in the report and what trains it."""

  method: str  # a trained method, or a decay-branch method (trained from its parent's run)
  peak_value: float
  seed: int
  spec: batched.RunSpec
  parent: "PlannedRun | None" = None  # a decay branch's main run


@dataclasses.dataclass(frozen=True)
class Unit:
  """Runs that one process trains together (``executors.Unit``)."""

  key: str
  workdir: str  # the suite's workdir (holds the tokenizer)
  specs: tuple[batched.RunSpec, ...]
  sharded: bool  # one run sharded over its mesh (else one batched group)
  resources: Mapping[str, float]


def run_config(config: ml_collections.ConfigDict, method: methods_lib.Method, lr: float,
               seed: int, horizon: int) -> ml_collections.ConfigDict:
  """The training config of one run of the suite."""
  s, c = config.suite, copy.deepcopy(config.base)
  c.unlock()
  c.seed = seed
  c.train.total_steps = horizon
  c.optimizer.schedule = method.schedule(lr, horizon, s)
  c.train.eval_every = horizon
  c.train.checkpoint_every = horizon
  c.train.keep_checkpoints = 1
  method.configure(c, s)
  c.lock()
  return c


def run_name(method: str, lr: float, seed: int, horizon: int | None = None) -> str:
  where = f"_{horizon}" if horizon is not None else ""
  return f"{method}{where}_lr{naming.lr_tag(lr)}_s{seed}"


def plan_runs(config: ml_collections.ConfigDict, root: epath.Path,
              methods: Sequence[methods_lib.Method],
              lrs: Mapping[tuple[str, int | None], Sequence[float]],
              seeds: Sequence[int], *, windows: bool = False,
              branches: Collection[tuple[str, int, float]] | None = None) -> list[PlannedRun]:
  """The main runs for ``lrs[(method, horizon or None)]`` x ``seeds`` and, for every parent
  method among them, the decay branches of each run (only the ``(branch method, horizon, LR)``
  in ``branches`` when given: the reporting seeds need the chosen ones only). ``windows``: keep
  the per-window losses of every reported evaluation (reporting seeds)."""
  s = config.suite
  hs = methods_lib.horizons(s)
  by_name = methods_lib.by_name(methods)
  paths = workdir_lib.SuitePaths(root)
  planned = []
  for (name, horizon), values in sorted(lrs.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
    method = by_name[name]
    for lr in sorted(values):
      for seed in seeds:
        run = run_name(name, lr, seed, horizon)
        end = horizon or hs[-1]
        evaluated = frozenset([end]) if horizon else frozenset(hs)
        spec = batched.RunSpec(
            name=run, config=run_config(config, method, lr, seed, end),
            directory=workdir_lib.main_dir(paths.run(run)), end_step=end,
            eval_steps=frozenset() if horizon else frozenset(hs),
            keep_steps=method.keep_steps(s), window_steps=evaluated if windows else frozenset())
        main = PlannedRun(name, lr, seed, spec)
        planned.append(main)
        for child in method.derived(s):
          if isinstance(child, methods_lib.DecayBranch):
            planned += [_branch(main, child, s, h, windows) for h in hs
                        if branches is None or any(
                            (b, bh) == (child.name, h) and tuning.same_lr(blr, lr)
                            for b, bh, blr in branches)]
  return planned


def _branch(main: PlannedRun, method: methods_lib.DecayBranch, s: ml_collections.ConfigDict,
            horizon: int, windows: bool) -> PlannedRun:
  branch = method.branch(s, horizon)
  schedule = dict(main.spec.config.optimizer.schedule.to_dict(), decay=branch["decay"])
  spec = batched.RunSpec(
      name=f"{main.spec.name}/{branch['name']}", config=main.spec.config,
      directory=workdir_lib.branch_dir(main.spec.directory.parent, branch["name"]),
      end_step=horizon, start=(main.spec.directory, branch["branch_step"]), schedule=schedule,
      window_steps=frozenset([horizon]) if windows else frozenset())
  return PlannedRun(method.name, main.peak_value, main.seed, spec, parent=main)


def units(planned: Sequence[PlannedRun], config: ml_collections.ConfigDict, root: epath.Path,
          phase: str) -> list[Unit]:
  """The runs still to train, as units: batched groups of one-device runs, else one unit per
  run sharded over its mesh. Branches are planned in their own phase (they read their
  parents' checkpoints), so ``planned`` holds either main runs or branches."""
  todo = [p.spec for p in planned if not batched.finished(p.spec)]
  resources = dict(config.suite.unit_resources.to_dict())
  if config.base.parallel.num_devices != 1:
    return [Unit(f"{phase}-{i:03d}", str(root), (spec,), True, resources)
            for i, spec in enumerate(todo)]
  groups = batched.group_runs(todo, config.suite.max_batch_runs)
  return [Unit(f"{phase}-{i:03d}", str(root), tuple(group), False, resources)
          for i, group in enumerate(groups)]


def execute(unit: Unit) -> None:
  """Trains a unit's unfinished runs (idempotent; resumes from their checkpoints), holding each
  run directory's lock; a branch records its lineage when done."""
  todo = [spec for spec in unit.specs if not batched.finished(spec)]
  if not todo:
    return
  with contextlib.ExitStack() as locks:
    for spec in todo:
      checkpoint.check_writable(spec.directory, field=f"run {spec.name}")
      locks.enter_context(checkpoint.DirectoryLock(spec.directory))
    if unit.sharded:
      for spec in todo:
        _train_sharded(spec)
    else:
      batched.train_group(todo, workdir=unit.workdir, label=unit.key)
  for spec in todo:
    if spec.start is not None:
      decay = spec.schedule["decay"]
      workdir_lib.write_lineage(spec.directory, workdir_lib.branch_lineage(
          parent_step=decay["branch_step"], cooldown_steps=decay["cooldown_steps"],
          shape=decay["shape"], final_fraction=decay["final_fraction"],
          schedule=spec.schedule, finished=True))


def _train_sharded(spec: batched.RunSpec) -> None:
  """One run over its whole mesh, through the single-run entry points (lock held by caller)."""
  from anytime import loop  # pylint: disable=g-import-not-at-top

  run_workdir = spec.directory.parent if spec.start is None else spec.directory.parent.parent
  loop.start(spec.config)
  if spec.start is None:
    run = loop.build_run(spec.config, run_workdir)
    member = loop.single_member(
        run, spec.directory, loop.open_store(spec.config, spec.directory, spec.keep_steps),
        eval_steps=spec.eval_steps, save_steps=spec.keep_steps, window_steps=spec.window_steps,
        snapshots=loop.snapshot_writer(spec.config, spec.directory), set_aside=True)
  else:
    run = loop.build_run(spec.config, run_workdir, schedule_override=spec.schedule)
    member = loop.single_member(
        run, spec.directory, loop.open_store(spec.config, spec.directory), start=spec.start,
        end_step=spec.end_step, window_steps=spec.window_steps, set_aside=True,
        write_config=False)
  loop.run_members(loop.SingleProgram(run), [member], label=spec.name)


# ---------------------------------------------------------------------------- cost


@dataclasses.dataclass(frozen=True)
class Cost:
  """What a set of runs costs: steps, tokens, 6·N·tokens FLOPs, accelerator-hours."""

  runs: int
  steps: int
  tokens: int
  flops: float
  accelerator_hours: float

  def __add__(self, other: "Cost") -> "Cost":
    return Cost(self.runs + other.runs, self.steps + other.steps, self.tokens + other.tokens,
                self.flops + other.flops, self.accelerator_hours + other.accelerator_hours)

  def text(self) -> str:
    return (f"{self.runs} runs, {self.steps:,} steps, {self.tokens:.3g} tokens, "
            f"{self.flops:.3g} FLOPs, {self.accelerator_hours:,.1f} accelerator-hours")


def non_embedding_params(config: ml_collections.ConfigDict, vocab_size: int) -> int:
  model = dict(config.base.model.to_dict())
  model["vocab_size"] = model["vocab_size"] or vocab_size
  return model_lib.param_count(model_lib.ModelConfig(**model), include_embedding=False)


def cost(specs: Sequence[batched.RunSpec], config: ml_collections.ConfigDict,
         params: int) -> Cost:
  """6·N·tokens FLOPs (N = non-embedding parameters) and accelerator-hours at
  ``suite.cost_mfu`` of ``suite.cost_peak_flops`` per accelerator."""
  t, s = config.base.train, config.suite
  steps = sum(spec.end_step - spec.start_step for spec in specs)
  tokens = steps * t.batch_size * t.seq_len
  flops = 6.0 * params * tokens
  hours = flops / (s.cost_mfu * s.cost_peak_flops) / 3600.0
  return Cost(len(specs), steps, tokens, flops, hours)


def describe_units(units_: Sequence[Unit], config: ml_collections.ConfigDict, params: int,
                   limit: int = 12) -> list[str]:
  lines = []
  for unit in units_[:limit]:
    c = cost(unit.specs, config, params)
    kind = "sharded run" if unit.sharded else f"batched group of {len(unit.specs)}"
    lines.append(f"  {unit.key}: {kind} ({', '.join(s.name for s in unit.specs[:3])}"
                 f"{', ...' if len(unit.specs) > 3 else ''}): {c.text()}")
  if len(units_) > limit:
    lines.append(f"  ... and {len(units_) - limit} more units")
  return lines


def parents_first(planned: Sequence[PlannedRun]) -> tuple[list[PlannedRun], list[PlannedRun]]:
  """(main runs, decay branches): branches train in a later phase than their parents."""
  return ([p for p in planned if p.parent is None], [p for p in planned if p.parent is not None])
