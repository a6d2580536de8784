"""Many runs as one program: runs that differ only in their schedule and seed are trained
together, their states stacked on a leading ``run`` axis and the train step vmapped over it.

    specs = [batched.RunSpec(name=f"lr{lr}", config=config_with(lr), directory=path / "main",
                             end_step=800) for lr in (1e-3, 2e-3, 4e-3)]
    batched.train_group(specs, workdir=path)

Each run keeps its own directory exactly as a single run writes it (Orbax checkpoints with its
data iterator, ``metrics.jsonl``, post-hoc snapshots), so resuming, decay branches, post-hoc
evaluation and reports read it like any other run; only the computation is shared. The learning
rate is an input of the compiled step (``loop.Run.step_fn``), so every schedule of a suite uses
the same program: one compilation per (model, optimizer structure, number of runs). A run
trained in a group equals the same run trained alone to float32 rounding (tests/test_batched.py).

A run whose loss or gradient turns non-finite (a too-large LR in a grid) is *diverged*: its
update is dropped as in ``loop``, its later evaluations are recorded as NaN, and the other runs
go on. Each run's model lives on one device; the run axis is what is parallel, and where
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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from anytime import averaging, checkpoint, loop, naming, parallel, posthoc, schedules
from anytime import config as config_lib
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
  """

  name: str
  config: ml_collections.ConfigDict
  directory: epath.Path
  end_step: int
  start: tuple[epath.Path, int] | None = None
  schedule: Mapping[str, Any] | None = None
  eval_steps: frozenset[int] = frozenset()
  keep_steps: frozenset[int] = frozenset()

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


@dataclasses.dataclass(frozen=True)
class _Program:
  """What groups of one program share: the built run and its jitted, vmapped functions."""

  template: loop.Run
  sharding: jax.sharding.NamedSharding
  eval_batches: Sequence[dict]
  init_fn: Callable
  step_fn: Callable
  eval_fn: Callable
  candidates_fn: Callable


_PROGRAMS: dict[tuple, _Program] = {}
_MAX_PROGRAMS = 8  # built programs kept in this process (least recently used dropped)


def _program(spec: RunSpec, runs: int, workdir: str | epath.Path) -> _Program:
  """The program of ``runs`` runs like ``spec``: built once per process, then reused, so a
  suite's many groups of one shape trace, lower and compile (or load) it once."""
  key = (_config_key(spec, PER_RUN_KEYS + HOST_KEYS), runs, str(workdir), jax.device_count())
  if key in _PROGRAMS:
    _PROGRAMS[key] = _PROGRAMS.pop(key)  # most recently used last
    return _PROGRAMS[key]
  template = loop.build_run(spec.config, workdir, constrain_activations=False)
  sharding = run_sharding(runs)
  replicated = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  eval_batches = jax.device_put(jax.device_get(template.eval_batches), replicated)
  placed = dict(in_shardings=sharding, out_shardings=sharding)
  # Each run's raw params and averages (and Schedule-Free's point), stacked like the states.
  # The post-hoc tracking EMAs are read from their snapshots, not evaluated along the way.
  tracking = set(config_lib.posthoc_tracking(spec.config))
  program = _Program(
      template=template, sharding=sharding, eval_batches=eval_batches,
      init_fn=parallel.jit_over_copies(template.init_fn),
      step_fn=parallel.jit_over_copies(template.step_fn, donate_argnums=0, **placed),
      eval_fn=parallel.jit_over_copies(template.eval_fn, in_axes=(0, None)),
      candidates_fn=parallel.jit_over_copies(
          lambda state: {name: params for name, params in
                         averaging.eval_params(state.opt_state, state.params).items()
                         if name not in tracking}, **placed))
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


class _Member:
  """The host side of one run in a group: schedule table, data, store, metrics, snapshots."""

  def __init__(self, spec: RunSpec, template: loop.Run):
    self.spec = spec
    t = spec.config.train
    schedule_config = spec.schedule or spec.config.optimizer.schedule.to_dict()
    self.learning_rates = loop.learning_rate_table(
        schedules.from_config(schedule_config), 0, spec.end_step + 1)
    self.iterator = data_lib.make_train_iterator(
        spec.config.data, template.tokenizer, seq_len=t.seq_len, global_batch_size=t.batch_size,
        seed=spec.config.seed, streams=template.streams)
    self.store = checkpoint.CheckpointStore(
        spec.directory, keep_latest=t.keep_checkpoints, keep_period=t.keep_period,
        keep_steps=sorted(spec.keep_steps), async_save=t.async_checkpoints)
    self.writer: loop.MetricsWriter | None = None
    self.snapshots = None
    if t.snapshot_every:
      self.snapshots = posthoc.SnapshotWriter(
          str(spec.directory / "snapshots"), config_lib.posthoc_tracking(spec.config),
          keep=t.snapshot_keep)
    self.diverged_at: int | None = None

  def close(self):
    self.store.close()
    if self.writer is not None:
      self.writer.close()
    if self.snapshots is not None:
      self.snapshots.close()


def _common_checkpoint(members: Sequence[_Member]) -> int | None:
  steps = set(members[0].store.all_steps())
  for m in members[1:]:
    steps &= set(m.store.all_steps())
  return max(steps) if steps else None


def run_sharding(count: int) -> jax.sharding.NamedSharding:
  """The sharding of a leading run axis of ``count`` over the most devices that divide it
  (one device included: states from an init and from a restore then enter the compiled step
  placed alike, so it is not compiled again for the second kind)."""
  devices = jax.devices()
  used = max(d for d in range(1, len(devices) + 1) if count % d == 0)
  mesh = jax.sharding.Mesh(np.array(devices[:used]), ("runs",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("runs"))


def _initial_state(members: Sequence[_Member], program: _Program):
  """Stacked state, start step, and whether it was resumed from a common checkpoint of every
  run (else each run's start: its seed's init, or the checkpoint it branches from)."""
  resume = _common_checkpoint(members)
  if resume is not None:
    states = [m.store.restore(resume, program.template.abstract_state, m.iterator)
              for m in members]
    return _stack(states), resume, True
  if members[0].spec.start is not None:
    states = []
    for m in members:
      source, step = m.spec.start
      store = checkpoint.CheckpointStore(source, read_only=True)
      states.append(store.restore(step, program.template.abstract_state, m.iterator))
      store.close()
    return _stack(states), members[0].spec.start_step, False
  seeds = np.array([m.spec.config.seed for m in members], np.uint32)
  return program.init_fn(seeds), 0, False


def train_group(specs: Sequence[RunSpec], *, workdir: str | epath.Path,
                progress: Callable[[Progress], None] | None = None) -> None:
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
  members = [_Member(spec, program.template) for spec in specs]
  try:
    _train(members, program, progress)
  finally:
    for m in members:
      m.close()


def _train(members: list[_Member], program: _Program,
           progress: Callable[[Progress], None] | None) -> None:
  t = members[0].spec.config.train
  end = members[0].spec.end_step
  states, step, resumed = _initial_state(members, program)
  for m in members:
    if m.spec.start is None and step == 0:
      checkpoint.write_json(m.spec.directory / "config.json",
                            json.loads(m.spec.config.to_json_best_effort()))
    # Resumed: cut the log back to the restored step; fresh: an earlier log is set aside.
    m.writer = loop.MetricsWriter(m.spec.directory, truncate_after=step if resumed else None)
    if m.snapshots is not None:
      m.snapshots.discard_after(step)
  states = jax.device_put(states, program.sharding)
  step_fn, eval_fn, candidates_fn = program.step_fn, program.eval_fn, program.candidates_fn
  eval_batches = program.eval_batches
  tokens_per_step = t.batch_size * t.seq_len
  eval_steps = frozenset().union(*(m.spec.eval_steps for m in members))
  save_steps = frozenset().union(*(m.spec.keep_steps for m in members))
  start_time = last_time = time.perf_counter()
  last_step = step
  pending = None
  while step < end:
    batch = {key: np.stack([b[key] for b in batches])
             for batches in [[next(m.iterator) for m in members]] for key in batches[0]}
    lrs = np.array([m.learning_rates[step] for m in members], np.float32)
    states, metrics = step_fn(states, batch, lrs)
    step += 1
    if pending is not None:
      _log(members, *pending, tokens_per_step)
    pending = (step, metrics)
    if step % t.log_every == 0 or step == end:
      _log(members, *pending, tokens_per_step)
      pending = None
      now = time.perf_counter()
      rate = (step - last_step) / max(now - last_time, 1e-9) * tokens_per_step * len(members)
      last_time, last_step = now, step
      if progress is not None:
        progress(Progress(step, end, len(members), rate, now - start_time))
    if step % t.eval_every == 0 or step in eval_steps or step == end:
      if pending is not None:
        _log(members, *pending, tokens_per_step)
        pending = None
      _evaluate(members, eval_batches, eval_fn, candidates_fn(states), step, tokens_per_step)
    if step % t.checkpoint_every == 0 or step in save_steps or step == end:
      for i, m in enumerate(members):
        if step not in m.store.all_steps():
          m.store.save(step, _take(states, i), m.iterator)
    if t.snapshot_every and step % t.snapshot_every == 0:
      for i, m in enumerate(members):
        m.snapshots.save(step, posthoc.tracked_averages(_take(states.opt_state, i),
                                                        m.snapshots.tracking))
  for m in members:
    m.store.wait()


def _log(members: Sequence[_Member], step: int, device_metrics: Mapping[str, Any],
         tokens_per_step: int) -> None:
  """Marks diverged runs; writes the training-loss record of each run at log steps."""
  metrics = jax.device_get(device_metrics)
  t = members[0].spec.config.train
  for i, m in enumerate(members):
    if not bool(metrics["finite"][i]) and m.diverged_at is None:
      m.diverged_at = step
      m.writer.write(step, {"diverged": True, "loss": float(metrics["loss"][i])})
      print(f"[{m.spec.name}] non-finite loss or gradient at step {step}: diverged; its later "
            "evaluations are recorded as NaN", flush=True)
    if step % t.log_every == 0 or step == m.spec.end_step:
      m.writer.write(step, {"loss": float(metrics["loss"][i]),
                            "grad_norm": float(metrics["grad_norm"][i]),
                            "lr": float(metrics["lr"][i]), "tokens": step * tokens_per_step})


def _evaluate(members: Sequence[_Member], eval_batches: Sequence[dict], eval_fn,
              candidates: Mapping[str, Any], step: int, tokens_per_step: int) -> None:
  """Validation loss of every run's raw params and averages, all runs in one call per batch."""
  totals = {name: [eval_fn(params, batch) for batch in eval_batches]
            for name, params in candidates.items()}  # all dispatched before any is read
  losses = {}
  for name, parts in totals.items():
    sums = sum(np.asarray(a, np.float64) for a, _ in parts)
    counts = sum(np.asarray(b, np.float64) for _, b in parts)
    losses[name] = sums / np.maximum(counts, 1.0)
  for i, m in enumerate(members):
    record = {naming.eval_key(name): (float("nan") if m.diverged_at is not None
                                      else float(values[i]))
              for name, values in losses.items()}
    record["tokens"] = step * tokens_per_step
    m.writer.write(step, record)
