"""Many runs as one program: runs that differ only in their schedule and seed are trained
together, their states stacked on a leading ``run`` axis and the train step vmapped over it.

    specs = [batched.RunSpec(name=f"lr{lr}", config=config_with(lr), directory=path / "main",
                             end_step=800) for lr in (1e-3, 2e-3, 4e-3)]
    batched.train_group(specs, workdir=path)

Each run keeps its own directory exactly as a single run writes it (Orbax checkpoints with its
data iterator, ``metrics.jsonl``, post-hoc snapshots), so resuming, decay branches, post-hoc
evaluation and reports read it like any other run; only the computation is shared. The learning
rate is an input of the compiled step (``program.Run.step_fn``), so every schedule of a suite uses
the same program: one compilation per (model, optimizer structure, number of runs). A run
trained in a group equals the same run trained alone to float32 rounding (tests/test_batched.py).

The host loop is ``anytime.loop``'s, the one every single run uses: per run its store, metrics,
bad-step guard and snapshots; SIGTERM / Ctrl-C save every run of the group and exit 0. A run
whose guard stops it (a too-large LR of a grid turning non-finite) is set aside: its update is
never applied, its later evaluations are recorded as NaN, and the other runs go on. Each run's model lives on one device; the run axis is what is parallel, and where
several devices are present (e.g. ``--xla_force_host_platform_device_count`` CPU devices, one
per core, which ``anytime.main compare`` sets up) it is sharded over as many of them as divide
the number of runs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from anytime._requires import require_train_extra

require_train_extra(__name__, "flax", "orbax.checkpoint", "grain")

import jax  # noqa: E402
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from anytime import averaging, checkpoint, loop, parallel, schedules
from anytime import config as config_lib
from anytime import program as program_lib
from anytime.lm import data as data_lib

# Keys that may differ between the runs of one group (everything else is the shared program).
PER_RUN_KEYS = ("seed", "optimizer.schedule", "train.total_steps", "train.eval_at", "branches")
# Keys that only steer the host loop of a group: groups that differ in them (and in
# PER_RUN_KEYS) still run the same compiled programs, which are built once per process.
HOST_KEYS = ("train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
             "train.keep_period", "train.log_every", "train.async_checkpoints",
             "train.snapshot_keep")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run of a group.

  Attributes:
    name: a label for progress lines and errors.
    config: the run's validated training config (its schedule and seed are its own).
    directory: where its checkpoints, metrics and snapshots go (``<run>/main`` or a branch dir).
    end_step: the step it trains to.
    start: ``(directory, step)`` of a checkpoint to start from (decay branches), else None.
    schedule: replaces ``config.optimizer.schedule`` (decay branches), else None.
    eval_steps: steps to evaluate at, besides ``train.eval_every`` multiples and the end.
    keep_steps: checkpoints kept by retention (branch points of later groups).
    window_steps: evaluations whose per-window losses are kept (``eval_windows.json``).
  """

  name: str
  config: ml_collections.ConfigDict
  directory: epath.Path
  end_step: int
  start: tuple[epath.Path, int] | None = None
  schedule: Mapping[str, Any] | None = None
  eval_steps: frozenset[int] = frozenset()
  keep_steps: frozenset[int] = frozenset()
  window_steps: frozenset[int] = frozenset()

  @property
  def start_step(self) -> int:
    return self.start[1] if self.start else 0


@dataclasses.dataclass(frozen=True)
class Progress:
  """What a group reports at each log step."""

  step: int
  end_step: int
  runs: int
  tokens_per_sec: float
  seconds: float


def _config_key(spec: RunSpec, ignored: Sequence[str]) -> str:
  flat = checkpoint.flatten(json.loads(spec.config.to_json_best_effort()))
  kept = {k: v for k, v in flat.items()
          if not any(k == p or k.startswith(p + ".") for p in ignored)}
  return json.dumps(kept, sort_keys=True, default=str)


def shared_key(spec: RunSpec) -> str:
  """Runs with the same key (and the same start and end step) can be trained as one group."""
  return _config_key(spec, PER_RUN_KEYS)


class StackedProgram:
  """The program of a group: each member's state on a leading run axis, the step, the
  evaluation and the candidates' params vmapped over it (``parallel.jit_over_copies``)."""

  def __init__(self, template: loop.Run, runs: int):
    self.template, self.size = template, runs
    self.sharding = run_sharding(runs)
    replicated = jax.sharding.NamedSharding(self.sharding.mesh, jax.sharding.PartitionSpec())
    self.eval_batches = jax.device_put(jax.device_get(template.eval_batches), replicated)
    placed = dict(in_shardings=self.sharding, out_shardings=self.sharding)
    # Each run's raw params and averages (and Schedule-Free's point), stacked like the states.
    # The post-hoc tracking EMAs are read from their snapshots, not evaluated along the way.
    tracking = set(config_lib.posthoc_tracking(template.config))
    # One member's init, stacked: one program for every group size (compiled once per model,
    # then loaded), and each member starts exactly as a single run with its seed does.
    self._init = parallel.jit_cpu_safe(template.init_fn)
    self._step = parallel.jit_over_copies(template.step_fn, donate_argnums=0, **placed)
    stepwise = jax.sharding.NamedSharding(self.sharding.mesh,
                                          jax.sharding.PartitionSpec(None, "runs"))
    # k steps per dispatch (lax.scan; bitwise equal to k single steps): the host loop sends
    # the stretches between its evaluations, checkpoints and logs as chunks of this size.
    self._steps = parallel.jit_steps_over_copies(
        template.step_fn, donate_argnums=0, in_shardings=(self.sharding, stepwise, stepwise),
        out_shardings=(self.sharding, stepwise))
    self._eval = parallel.jit_over_copies(program_lib.in_pieces(template.eval_fn),
                                         in_axes=(0, None))
    self._candidates = parallel.jit_over_copies(
        lambda state: {name: params for name, params in
                       averaging.eval_params(state.opt_state, state.params).items()
                       if name not in tracking}, **placed)

  @property
  def abstract_member_state(self):
    return self.template.abstract_state

  def init(self, members: Sequence[loop.Member]):
    return self.assemble([self._init(np.uint32(m.config.seed)) for m in members])

  def assemble(self, states):
    return jax.device_put(_stack(states), self.sharding)

  def step(self, state, batches: Sequence[dict], lrs: np.ndarray):
    batch = {key: np.stack([b[key] for b in batches]) for key in batches[0]}
    return self._step(state, batch, lrs)

  def steps(self, state, batches: Sequence[Sequence[dict]], lrs: np.ndarray):
    """``len(batches)`` steps in one dispatch: ``batches[j][i]`` is member i's batch of step j,
    ``lrs`` ``[k, members]``; metrics come back ``[k, members]``."""
    stacked = {key: np.stack([np.stack([b[key] for b in step]) for step in batches])
               for key in batches[0][0]}
    return self._steps(state, stacked, lrs)

  def member_state(self, state, i: int):
    return _take(state, i)

  def evaluate(self, state) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(window token counts [W], {candidate: window loss sums [runs, W]})."""
    candidates = self._candidates(state)
    parts = {name: [self._eval(params, batch) for batch in self.eval_batches]
             for name, params in candidates.items()}  # all dispatched before any is read
    counts, sums = None, {}
    for name, pieces in parts.items():
      sums[name] = np.concatenate([np.asarray(a, np.float64) for a, _ in pieces], axis=-1)
      counts = np.concatenate([np.asarray(b, np.float64)[0] for _, b in pieces])
    return counts, sums

  def flops_per_second_peak(self) -> float:
    return 0.0

  def flops_per_token(self) -> float:
    return self.template.flops_per_token


_PROGRAMS: dict[tuple, StackedProgram] = {}
_MAX_PROGRAMS = 8  # built programs kept in this process (least recently used dropped)


def _program(spec: RunSpec, runs: int, workdir: str | epath.Path) -> StackedProgram:
  """The program of ``runs`` runs like ``spec``: built once per process, then reused, so a
  suite's many groups of one shape trace, lower and compile (or load) it once."""
  key = (_config_key(spec, PER_RUN_KEYS + HOST_KEYS), runs, str(workdir), jax.device_count())
  if key in _PROGRAMS:
    _PROGRAMS[key] = _PROGRAMS.pop(key)  # most recently used last
    return _PROGRAMS[key]
  program = StackedProgram(loop.build_run(spec.config, workdir, constrain_activations=False),
                           runs)
  while len(_PROGRAMS) >= _MAX_PROGRAMS:
    _PROGRAMS.pop(next(iter(_PROGRAMS)))
  _PROGRAMS[key] = program
  return program


def group_runs(specs: Sequence[RunSpec], max_runs: int) -> list[list[RunSpec]]:
  """Splits specs into groups that share a program, a start and an end step; at most
  ``max_runs`` runs per group (large groups are cut into near-equal parts)."""
  if max_runs < 1:
    raise ValueError(f"max_runs must be a positive integer, got {max_runs!r}")
  buckets: dict[tuple, list[RunSpec]] = {}
  for spec in specs:
    buckets.setdefault((shared_key(spec), spec.start_step, spec.end_step), []).append(spec)
  groups = []
  for bucket in buckets.values():
    parts = -(-len(bucket) // max_runs)
    size = -(-len(bucket) // parts)
    groups += [bucket[i:i + size] for i in range(0, len(bucket), size)]
  return groups


def finished(spec: RunSpec) -> bool:
  """Whether a run's directory already holds its evaluation at ``end_step``."""
  last = loop.last_evaluation(spec.directory)
  return bool(last) and last["step"] >= spec.end_step


def _stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


@jax.jit
def _take(tree, i):
  """Run ``i`` of a stacked tree (one compiled program per tree structure, any ``i``)."""
  return jax.tree.map(lambda x: x[i], tree)


def run_sharding(count: int) -> jax.sharding.NamedSharding:
  """The sharding of a leading run axis of ``count`` over the most devices that divide it
  (one device included: states from an init and from a restore then enter the compiled step
  placed alike, so it is not compiled again for the second kind)."""
  devices = jax.devices()
  used = max(d for d in range(1, len(devices) + 1) if count % d == 0)
  mesh = jax.sharding.Mesh(np.array(devices[:used]), ("runs",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("runs"))


def train_group(specs: Sequence[RunSpec], *, workdir: str | epath.Path,
                progress: Callable[[Progress], None] | None = None, label: str = "") -> None:
  """Trains every run of one group to its ``end_step`` (resuming from a common checkpoint).

  ``specs`` share ``shared_key``, start and end step (``group_runs`` makes such groups) and
  have passed ``config.validate_config``; ``workdir`` holds the tokenizer (``loop.build_run``).
  """
  if not specs:
    return
  first = specs[0]
  for spec in specs[1:]:
    if (shared_key(spec), spec.start_step, spec.end_step) != (
        shared_key(first), first.start_step, first.end_step):
      raise ValueError(f"run {spec.name!r} cannot be trained in one group with {first.name!r}: "
                       "they differ in more than schedule and seed, or in start/end step")
  if (first.config.parallel.num_devices or jax.device_count()) != 1:
    raise ValueError("parallel.num_devices must be 1 for batched runs (the run axis is the "
                     f"parallel one), got {first.config.parallel.num_devices}")
  program = _program(first, len(specs), workdir)
  members = [_member(spec, program.template) for spec in specs]
  started = time.perf_counter()
  report = None
  if progress is not None:
    report = lambda step, end, rate: progress(Progress(step, end, len(specs), rate,
                                                       time.perf_counter() - started))
  loop.run_members(program, members, label=label or first.name, progress=report)


def _member(spec: RunSpec, template: loop.Run) -> loop.Member:
  t = spec.config.train
  schedule_config = spec.schedule or spec.config.optimizer.schedule.to_dict()
  return loop.Member(
      name=spec.name, config=spec.config, directory=spec.directory, end_step=spec.end_step,
      schedule=schedules.from_config(schedule_config),
      make_iterator=lambda: data_lib.make_train_iterator(
          spec.config.data, template.tokenizer, seq_len=t.seq_len,
          global_batch_size=t.batch_size, seed=spec.config.seed, streams=template.streams),
      store=loop.open_store(spec.config, spec.directory, spec.keep_steps),
      start=spec.start, eval_steps=spec.eval_steps, save_steps=spec.keep_steps,
      window_steps=spec.window_steps, snapshots=loop.snapshot_writer(spec.config, spec.directory),
      set_aside=True)
