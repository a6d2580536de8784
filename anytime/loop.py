"""The one host loop: N >= 1 members trained by one compiled program.

N = 1 is a single run sharded over its mesh (``SingleProgram``); N > 1 is a batched group whose
states are stacked on a run axis (``anytime.batched.StackedProgram``). Per member the loop keeps
its schedule, data iterator, checkpoint store, metrics writer, bad-step guard and post-hoc
snapshots; the cadence of evaluations and checkpoints, resume, SIGTERM / Ctrl-C and bad steps
behave the same for a single run and for every member of a group:

- metrics are fetched from the device one step late, so dispatch stays asynchronous;
- every evaluation scores the raw params and every average held in the optimizer state (and
  Schedule-Free's point); at a member's ``window_steps`` its per-window loss sums are kept in
  ``eval_windows.json`` (the evaluation set's own error of a delta);
- a non-finite update is never applied; the member's ``BadStepGuard`` stops or skips it. A
  member that must stop is *set aside* when the caller asks (a suite: its later evaluations are
  NaN, the other members go on), else the error ends the run;
- SIGTERM or Ctrl-C: every member saves its current step, one line says how to resume, and the
  process exits with status 0. Re-running the same command resumes exactly.

``train_and_evaluate`` is the single-run entry (``anytime.main train``); ``run_loop`` trains one
in-memory state (decay branches, tests).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from anytime._requires import require_train_extra

require_train_extra(__name__, "flax", "orbax.checkpoint", "grain")

import jax  # noqa: E402
import ml_collections
import numpy as np
import optax
from etils import epath

from anytime import averaging, checkpoint, naming, parallel, posthoc
from anytime import config as config_lib
from anytime import workdir as workdir_lib
from anytime.guard import BadStepGuard, TrainingError  # TrainingError: part of loop's API
from anytime.lm import data as data_lib
from anytime.program import (PEAK_FLOPS, LearningRates, Run, TrainState, build_run,  # noqa: F401
                             cross_entropy, learning_rate_table, peak_flops)

Hook = Callable[[int, TrainState, Any], TrainState]


# ---------------------------------------------------------------------------- metrics


class MetricsWriter:
  """JSONL + TensorBoard metrics, written by process 0 only."""

  def __init__(self, directory: epath.Path, *, truncate_after: int | None = None):
    self.enabled = jax.process_index() == 0
    self.path = workdir_lib.metrics_file(directory)
    self.tb = None
    if not self.enabled:
      return
    directory.mkdir(parents=True, exist_ok=True)
    if truncate_after is not None and self.path.exists():
      # Resumed: drop records past the restored step, so the log equals an uninterrupted one.
      kept = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line)["step"] <= truncate_after]
      self.path.write_text("".join(line + "\n" for line in kept))
    elif truncate_after is None and self.path.exists():
      # A fresh start over an earlier attempt's log: set it aside, never delete it.
      k = 0
      while (directory / f"{self.path.name}.previous-{k}").exists():
        k += 1
      self.path.rename(directory / f"{self.path.name}.previous-{k}")
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    self.tb = SummaryWriter(str(workdir_lib.tensorboard_dir(directory)))

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
        self.tb.add_scalar(key, value, step)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def _plain(value):
  value = np.asarray(value).item() if hasattr(value, "shape") else value
  return float(value) if isinstance(value, (np.floating, float)) else value


def read_metrics(directory: str | epath.Path) -> list[dict[str, Any]]:
  path = workdir_lib.metrics_file(directory)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_evaluation(directory: str | epath.Path) -> dict[str, Any]:
  """The last evaluation record of a run or branch directory ({} if none)."""
  evals = [m for m in read_metrics(directory) if naming.is_eval_record(m)]
  return evals[-1] if evals else {}


def read_eval_windows(directory: str | epath.Path) -> dict[int, dict[str, Any]]:
  """``{step: {"counts": [...], "sums": {candidate: [...]}}}`` of a run directory."""
  stored = checkpoint.read_json(workdir_lib.eval_windows_file(directory)) or {}
  return {int(step): value for step, value in stored.items()}


def _write_eval_windows(directory: epath.Path, step: int, counts: np.ndarray,
                        sums: Mapping[str, np.ndarray]) -> None:
  stored = {str(k): v for k, v in read_eval_windows(directory).items() if k < step}
  stored[str(step)] = dict(counts=[float(c) for c in counts],
                           sums={name: [float(x) for x in v] for name, v in sums.items()})
  checkpoint.write_json(workdir_lib.eval_windows_file(directory), stored)


# ---------------------------------------------------------------------------- preemption


class _Preemption:
  """SIGTERM (what a preempted VM gets) and SIGINT (Ctrl-C) become a flag that the loop checks
  every step (and a suite between its units). Installed once however deeply nested; a second
  Ctrl-C interrupts at once."""

  def __init__(self):
    self.requested: str | None = None  # "SIGTERM" / "SIGINT" once asked
    self._depth = 0
    self._previous: dict[int, Any] = {}

  def __enter__(self):
    if self._depth == 0:
      self.requested = None
      for sig in (signal.SIGTERM, signal.SIGINT):
        try:
          self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handler
          pass
    self._depth += 1
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.requested == "SIGINT":
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name

  def __exit__(self, *exc):
    self._depth -= 1
    if self._depth == 0:
      for sig, previous in self._previous.items():
        signal.signal(sig, previous)
      self._previous.clear()


PREEMPTION = _Preemption()


def preemption() -> _Preemption:
  """The process's preemption flag as a context manager (``with loop.preemption() as p``)."""
  return PREEMPTION


def exit_if_preempted(what: str) -> None:
  """Outside the loop (e.g. between a suite's units): exit 0 with one line if asked to stop."""
  if PREEMPTION.requested:
    print(f"{PREEMPTION.requested}: stopped {what}; re-run the same command to resume.",
          flush=True)
    raise SystemExit(0)


def _format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


# ---------------------------------------------------------------------------- members


@dataclasses.dataclass
class Member:
  """The host side of one member: what it trains to, where it writes, what it watches.

  ``make_iterator`` makes a fresh data iterator at step 0 (restores set its state);
  ``start`` is ``(directory, step)`` of a checkpoint to start from (a decay branch), else None.
  ``set_aside``: a member whose guard stops it is set aside (evaluations NaN, the others go
  on) instead of ending the run. ``write_config``: a fresh start writes ``config.json``.
  """

  name: str
  config: ml_collections.ConfigDict
  directory: epath.Path
  end_step: int
  schedule: optax.Schedule
  make_iterator: Callable[[], Iterator]
  store: Any  # checkpoint.CheckpointStore (or a stand-in with save/wait)
  start: tuple[epath.Path, int] | None = None
  eval_steps: frozenset[int] = frozenset()
  save_steps: frozenset[int] = frozenset()
  window_steps: frozenset[int] = frozenset()
  snapshots: posthoc.SnapshotWriter | None = None
  hook: Hook | None = None
  hook_steps: frozenset[int] = frozenset()
  set_aside: bool = False
  write_config: bool = True
  # Set by the loop:
  iterator: Any = None
  writer: MetricsWriter | None = None
  guard: BadStepGuard | None = None
  diverged_at: int | None = None
  saved_steps: set[int] = dataclasses.field(default_factory=set)
  learning_rates: LearningRates | None = None

  def __post_init__(self):
    self.learning_rates = LearningRates(self.schedule)
    self.guard = BadStepGuard(self.config.train, self.name, self.store)

  def close(self) -> None:
    self.store.close()
    if self.writer is not None:
      self.writer.close()
    if self.snapshots is not None:
      self.snapshots.close()


def snapshot_writer(config: ml_collections.ConfigDict, directory: epath.Path
                    ) -> posthoc.SnapshotWriter | None:
  """Post-hoc snapshots of a run directory when ``train.snapshot_every`` asks for them."""
  if not config.train.snapshot_every:
    return None
  return posthoc.SnapshotWriter(str(workdir_lib.snapshots_dir(directory)),
                                config_lib.posthoc_tracking(config),
                                keep=config.train.snapshot_keep)


def open_store(config: ml_collections.ConfigDict, directory: epath.Path,
               keep_steps: Sequence[int] = ()) -> checkpoint.CheckpointStore:
  t = config.train
  return checkpoint.CheckpointStore(directory, keep_latest=t.keep_checkpoints,
                                    keep_period=t.keep_period, keep_steps=sorted(keep_steps),
                                    async_save=t.async_checkpoints)


# ---------------------------------------------------------------------------- programs


class SingleProgram:
  """One member, sharded over its run's mesh (``Run.train_step`` / ``Run.eval_step``)."""

  size = 1

  def __init__(self, run: Run):
    self.run = run

  @property
  def abstract_member_state(self) -> TrainState:
    return self.run.abstract_state

  def init(self, members: Sequence[Member]) -> TrainState:
    del members
    return self.run.init_state()

  def assemble(self, states: Sequence[TrainState]) -> TrainState:
    return states[0]

  def step(self, state, batches: Sequence[dict], lrs: np.ndarray):
    return self.run.train_step(state, batches[0], lrs[0])

  def member_state(self, state, i: int) -> TrainState:
    del i
    return state

  def evaluate(self, state) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(window token counts [W], {candidate: window loss sums [1, W]})."""
    counts, sums = None, {}
    for name, params in averaging.eval_params(state.opt_state, state.params).items():
      window_sums, counts = self.run.window_losses(params)
      sums[name] = window_sums[None]
    return counts, sums

  def flops_per_second_peak(self) -> float:
    return peak_flops(self.run.config) * self.run.mesh.size

  def flops_per_token(self) -> float:
    return self.run.flops_per_token


def restore_members(program, members: Sequence[Member]) -> tuple[Any, int, bool]:
  """The program's state, its step, and whether it was resumed from the members' checkpoints.

  One member: its newest intact checkpoint (a damaged one is set aside; refused if some exist
  but none restores). A group: the newest checkpoint every member has. Otherwise each member's
  start: the checkpoint it branches from, or a fresh init from its seed.
  """
  abstract = program.abstract_member_state
  if len(members) == 1 and hasattr(members[0].store, "restore_latest_intact"):
    m = members[0]
    steps = m.store.all_steps()
    found = m.store.restore_latest_intact(abstract, m.make_iterator)
    damaged = sorted(p.name for p in m.store.directory.glob("*.damaged*"))
    if found is None and (steps or damaged):
      raise TrainingError(
          f"{m.store.directory} holds checkpoints ({', '.join(map(str, steps)) or 'none intact'}"
          f"; set aside: {', '.join(damaged) or 'none'}) but none could be restored (see the "
          "warnings above). Refusing to start over on top of them: move them away, or fix the "
          "cause.")
    if found is not None:
      step, state, m.iterator = found
      return program.assemble([state]), step, True
  else:
    common = set.intersection(*(set(m.store.all_steps()) for m in members))
    if common:
      step = max(common)
      states = []
      for m in members:
        m.iterator = m.make_iterator()
        states.append(m.store.restore(step, abstract, m.iterator))
      return program.assemble(states), step, True
  for m in members:
    m.iterator = m.make_iterator()
  if members[0].start is None:
    return program.init(members), 0, False
  states = []
  for m in members:
    source, step = m.start
    store = checkpoint.CheckpointStore(source, read_only=True)
    states.append(store.restore(step, abstract, m.iterator))
    store.close()
  return program.assemble(states), members[0].start[1], False


def _open(m: Member, step: int, resumed: bool) -> None:
  """A member's files at the start of training: config, metrics, snapshots, divergence."""
  if m.write_config and not resumed and m.start is None and jax.process_index() == 0:
    checkpoint.write_json(workdir_lib.config_file(m.directory),
                          json.loads(m.config.to_json_best_effort()))
  # Resumed: cut the log back to the restored step; fresh: an earlier log is set aside.
  m.writer = MetricsWriter(m.directory, truncate_after=step if resumed else None)
  if resumed:
    diverged = [r["step"] for r in read_metrics(m.directory) if r.get("diverged")]
    m.diverged_at = min(diverged) if diverged else None
  if m.snapshots is not None:
    m.snapshots.discard_after(step)
  if hasattr(m.store, "all_steps"):
    m.saved_steps = set(m.store.all_steps())


def run_members(program, members: Sequence[Member], *, label: str,
                on_restore: Callable[[int | None, Any, Any], None] | None = None,
                progress: Callable[[int, int, float], None] | None = None) -> Any:
  """Restores (or starts) every member, trains them to their end step, closes their files."""
  try:
    state, step, resumed = restore_members(program, members)
    for m in members:
      _open(m, step, resumed)
    if resumed and len(members) == 1 and jax.process_index() == 0:
      print(f"[{label}] resumed from step {step}", flush=True)
    if on_restore is not None:
      on_restore(step if resumed else None, state, members[0].iterator)
    return train_members(program, members, state, step, label=label, progress=progress)
  finally:
    for m in members:
      m.close()


# ---------------------------------------------------------------------------- the loop


def train_members(program, members: Sequence[Member], state, step: int, *, label: str,
                  progress: Callable[[int, int, float], None] | None = None) -> Any:
  """Trains ``members`` from ``step`` to their (common) end step; returns the final state.

  ``progress(step, end_step, tokens_per_sec)`` is called at log steps (else a line is printed).
  """
  t = members[0].config.train
  end = members[0].end_step
  if any(m.end_step != end for m in members):
    raise ValueError(f"members of one loop train to one end step, got "
                     f"{sorted({m.end_step for m in members})}")
  tokens_per_step = t.batch_size * t.seq_len
  eval_steps = frozenset().union(*(m.eval_steps for m in members))
  save_steps = frozenset().union(*(m.save_steps for m in members))
  hook_steps = frozenset().union(*(m.hook_steps for m in members))
  if hook_steps and len(members) > 1:
    raise ValueError("host hooks (planned branches) need a single-member loop")
  for m in members:
    if m.writer is None:
      m.writer = MetricsWriter(m.directory, truncate_after=step)
  start_step = step
  clock = dict(start=time.perf_counter(), last=time.perf_counter(), last_step=step)
  flops_peak = program.flops_per_second_peak() if program.size == 1 else 0.0

  def flush_all(pending):
    done_steps, device_metrics, stacked = pending
    host = jax.device_get(device_metrics)
    if not stacked:
      flush(done_steps[0], host)
      return
    for j, done_step in enumerate(done_steps):
      flush(done_step, {k: v[j] for k, v in host.items()})

  def flush(done_step, host_metrics):
    metrics = {k: np.reshape(np.asarray(v), (-1,)) for k, v in host_metrics.items()}
    logged = done_step % t.log_every == 0 or done_step == end
    rate = 0.0
    if logged:
      now = time.perf_counter()
      rate = (done_step - clock["last_step"]) / max(now - clock["last"], 1e-9)
      clock["last"], clock["last_step"] = now, done_step
    for i, m in enumerate(members):
      _observe(m, done_step, metrics, i)
      if logged:
        record = {"loss": float(metrics["loss"][i]), "grad_norm": float(metrics["grad_norm"][i]),
                  "lr": float(metrics["lr"][i]), "tokens": done_step * tokens_per_step,
                  "steps_per_sec": rate, "tokens_per_sec": rate * tokens_per_step,
                  "skipped_updates": m.guard.skipped_total}
        if flops_peak:
          record["mfu"] = rate * tokens_per_step * program.flops_per_token() / flops_peak
        m.writer.write(done_step, record)
    if logged and jax.process_index() == 0:
      if progress is not None:
        progress(done_step, end, rate * tokens_per_step * len(members))
        return
      elapsed = time.perf_counter() - clock["start"]
      eta = elapsed / max(done_step - start_step, 1) * (end - done_step)
      mfu = (f" | mfu {rate * tokens_per_step * program.flops_per_token() / flops_peak:.1%}"
             if flops_peak else "")
      loss = float(np.mean(metrics["loss"]))
      print(f"[{label}] step {done_step}/{end} | loss {loss:.4f} | lr {metrics['lr'][0]:.2e} | "
            f"{rate * tokens_per_step * len(members):,.0f} tok/s{mfu} | ETA "
            f"{_format_seconds(eta)}", flush=True)

  chunk = _chunk_size(program, members)
  pending = None  # (steps, device metrics): fetched one dispatch late
  with preemption() as stop:
    while step < end:
      k = chunk if chunk > 1 and step % chunk == 0 and _free_stretch(
          step, end, eval_steps | save_steps | hook_steps) >= chunk else 1
      batches = [[next(m.iterator) for m in members] for _ in range(k)]
      lrs = np.array([[m.learning_rates[step + j] for m in members] for j in range(k)],
                     np.float32)
      if k == 1:
        state, device_metrics = program.step(state, batches[0], lrs[0])
      else:
        state, device_metrics = program.steps(state, batches, lrs)
      if pending is not None:
        flush_all(pending)
      pending = (list(range(step + 1, step + k + 1)), device_metrics, k > 1)
      step += k
      eval_due = step % t.eval_every == 0 or step in eval_steps or step == end
      save_due = step % t.checkpoint_every == 0 or step in save_steps or step == end
      deferred = any(m.guard.save_deferred and m.diverged_at is None for m in members)
      if eval_due or save_due or stop.requested or deferred:
        flush_all(pending)
        pending = None
        if eval_due:
          _evaluate(program, members, state, step, tokens_per_step, label)
        final = step == end or bool(stop.requested)
        saved = [_save(program, m, i, state, step, save_due or bool(stop.requested), final)
                 for i, m in enumerate(members)]
        if stop.requested:
          for m in members:
            m.store.wait()
          _announce_stop(stop.requested, label, members, saved, step)
          raise SystemExit(0)
      state = _host_work(program, members, state, step, hook_steps)
    if pending is not None:
      flush_all(pending)
  for m in members:
    m.store.wait()
  return state


MAX_STEPS_PER_DISPATCH = 32  # k = 25 for the quickstart's cadences of 100 (1.04x over k = 8)


def _chunk_size(program, members: Sequence[Member]) -> int:
  """Steps per dispatch: the largest k <= ``MAX_STEPS_PER_DISPATCH`` that divides every cadence
  the host acts on (so chunks line up with evaluations, checkpoints, logs and snapshots); 1 for
  a program without a k-step form. Chunks are bitwise equal to single steps, so resume does
  not depend on k."""
  if not hasattr(program, "steps"):
    return 1
  t = members[0].config.train
  cadence = 0
  # A decay branch's start and the end count as cadences: a branch from step 80 with cadences
  # of 100 runs k = 20 from its first step instead of single steps (a second program) to 100.
  for every in (t.eval_every, t.checkpoint_every, t.log_every, members[0].end_step,
                *(m.config.train.snapshot_every for m in members),
                *(m.start[1] for m in members if m.start is not None)):
    cadence = math.gcd(cadence, int(every or 0))
  return max(k for k in range(1, MAX_STEPS_PER_DISPATCH + 1) if cadence % k == 0)


def _free_stretch(step: int, end: int, event_steps) -> int:
  """Steps from ``step`` before the host must act (an explicit evaluation, save or hook step,
  or the end; cadences are multiples of the chunk size)."""
  upcoming = [s for s in event_steps if s > step] + [end]
  return min(upcoming) - step


def _observe(m: Member, step: int, metrics: Mapping[str, np.ndarray], i: int) -> None:
  """Feeds a member's guard; sets the member aside where it must stop and may be set aside."""
  if m.diverged_at is not None:
    return
  try:
    m.guard.observe(step, bool(metrics["finite"][i]), float(metrics["loss"][i]))
  except TrainingError as e:
    if not m.set_aside:
      raise
    m.diverged_at = step
    m.writer.write(step, {"diverged": True, "loss": float(metrics["loss"][i])})
    if jax.process_index() == 0:
      print(f"[{m.name}] set aside at step {step} (its later evaluations are recorded as NaN; "
            f"the other runs go on): {' '.join(str(e).split())}", flush=True)


def _evaluate(program, members: Sequence[Member], state, step: int, tokens_per_step: int,
              label: str) -> None:
  """Validation loss of every member's raw params and averages (all members at once)."""
  counts, sums = program.evaluate(state)
  total = max(float(np.sum(counts)), 1.0)
  for i, m in enumerate(members):
    losses = {name: float(np.sum(values[i]) / total) for name, values in sums.items()}
    record = {naming.eval_key(name): (math.nan if m.diverged_at is not None else loss)
              for name, loss in losses.items()}
    record["tokens"] = step * tokens_per_step
    if m.guard.unclean and m.diverged_at is None:  # reached through skipped updates
      record["after_skipped_updates"] = m.guard.skipped_since_save
    m.writer.write(step, record)
    if step in m.window_steps and m.diverged_at is None and jax.process_index() == 0:
      _write_eval_windows(m.directory, step, counts,
                          {name: values[i] for name, values in sums.items()})
  if len(members) == 1 and jax.process_index() == 0:
    print(f"[{label}] eval step {step}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in naming.eval_losses(record).items()), flush=True)


def _save(program, m: Member, i: int, state, step: int, due: bool, final: bool) -> bool:
  """Checkpoints a member's state when due and its guard allows (never a state reached through
  skipped updates); a set-aside member keeps its last finite state."""
  if not (due or (m.guard.save_deferred and m.diverged_at is None)):
    return False
  if m.diverged_at is None and not m.guard.may_save(step, final=final):
    return False
  if step not in m.saved_steps:
    m.store.save(step, program.member_state(state, i), m.iterator)
    m.saved_steps.add(step)
  return True


def _announce_stop(signal_name: str, label: str, members: Sequence[Member], saved: list[bool],
                   step: int) -> None:
  if jax.process_index() != 0:
    return
  if all(saved):
    what = (f"saved a checkpoint at step {step}" if len(members) == 1 else
            f"saved a checkpoint at step {step} for each of its {len(members)} runs")
  else:
    unsaved = [m for m, s in zip(members, saved) if not s]
    what = (f"step {step} of {', '.join(m.name for m in unsaved)} was reached through skipped "
            "updates and is not saved (it resumes from its last good checkpoint)")
  print(f"[{label}] {signal_name}: {what}; exiting. Re-run the same command to resume.",
        flush=True)


def _host_work(program, members: Sequence[Member], state, step: int, hook_steps) -> Any:
  """Post-hoc snapshots and host hooks (planned decay branches) after a step."""
  for i, m in enumerate(members):
    if m.snapshots is not None and step % m.config.train.snapshot_every == 0:
      member = program.member_state(state, i)
      m.snapshots.save(step, posthoc.tracked_averages(member.opt_state, m.snapshots.tracking))
  if step in hook_steps:
    m = members[0]
    if m.hook is not None and step in m.hook_steps:
      state = m.hook(step, state, m.iterator)
  return state


# ---------------------------------------------------------------------------- single runs


def single_member(run: Run, directory: epath.Path, store, *, name: str = "main",
                  end_step: int | None = None, **fields) -> Member:
  """The member of a single run (``run``'s schedule, its process-aware data iterator)."""
  return Member(name=name, config=run.config, directory=epath.Path(directory),
                end_step=end_step or run.config.train.total_steps, schedule=run.schedule,
                make_iterator=run.make_train_iterator, store=store, **fields)


def run_loop(run: Run, state: TrainState, train_iter, store, writer: MetricsWriter, *,
             end_step: int, label: str = "main", eval_steps: frozenset[int] = frozenset(),
             save_steps: frozenset[int] = frozenset(), hook: Hook | None = None,
             hook_steps: frozenset[int] = frozenset()) -> TrainState:
  """Trains one in-memory ``state`` from ``state.step`` to ``end_step`` with ``train_iter``
  (the one loop with a single member; decay branches and tests use it)."""
  member = single_member(run, writer.path.parent, store, name=label, end_step=end_step,
                         eval_steps=eval_steps, save_steps=save_steps, hook=hook,
                         hook_steps=hook_steps, iterator=train_iter, writer=writer)
  return train_members(SingleProgram(run), [member], state, int(state.step), label=label)


def check_resumable(config: ml_collections.ConfigDict, directory: epath.Path) -> None:
  """Refuses to resume a run whose config changed, naming the differing keys."""
  stored = checkpoint.read_json(workdir_lib.config_file(directory))
  if stored is None:
    return
  diffs = checkpoint.config_differences(stored, json.loads(config.to_json_best_effort()),
                                        config_lib.SAFE_TO_CHANGE, config_lib.key_defaults())
  if diffs:
    raise ValueError(
        f"the workdir {directory} holds a run with a different config; differing keys: "
        f"{', '.join(diffs)}. Use a new workdir, or change only keys that are safe on "
        f"resume ({', '.join(config_lib.SAFE_TO_CHANGE)}).")


def start(config: ml_collections.ConfigDict) -> None:
  """The boundary of every command that trains: jax.distributed first (validation counts
  devices), then the one validation of the config."""
  parallel.maybe_initialize_distributed(**config.distributed.to_dict())
  config_lib.validate_config(config)
  data_lib.check_files(config.data)  # a bad data file is named before anything is compiled


def check_not_orphaned(config: ml_collections.ConfigDict, directory: epath.Path,
                       start_over: bool = False) -> None:
  """Refuses to start from step 0 in a run directory whose checkpoints are gone but whose
  config.json / metrics.jsonl show it got past its first checkpoint (that would silently
  restart the run). ``start_over`` sets those files aside (never deleted) instead."""
  directory = epath.Path(directory)
  if not directory.exists():
    return
  if any(p.name.split(".")[0].isdigit() for p in directory.iterdir()):  # steps, set-aside ones
    if start_over:
      raise ValueError(f"--start-over: {directory} holds checkpoints; it resumes from them. To "
                       "train from scratch, use a new --workdir")
    return
  steps = [m["step"] for m in read_metrics(directory)]
  first_save = min([config.train.checkpoint_every, config.train.total_steps])
  files = [workdir_lib.config_file(directory), workdir_lib.metrics_file(directory)]
  found = [f.name for f in files if f.exists()]
  if not found or (not start_over and (not steps or max(steps) <= first_save)):
    return  # nothing, or a run stopped before its first checkpoint: starting again resumes it
  if not start_over:
    raise ValueError(
        f"{directory} holds {' and '.join(found)} (metrics up to step {max(steps)}) but no "
        "checkpoint: its checkpoints were deleted or moved. Refusing to train it again from "
        "step 0 over them; restore the checkpoints, use a new --workdir, or pass --start-over "
        "to start from scratch here (the old files are kept under previous-<n>/)")
  if jax.process_index() == 0:
    k = 0
    while workdir_lib.previous_dir(directory, k).exists():
      k += 1
    aside = workdir_lib.previous_dir(directory, k)
    aside.mkdir()
    for path in files + [workdir_lib.tensorboard_dir(directory),
                         workdir_lib.snapshots_dir(directory)]:
      if path.exists():
        path.rename(aside / path.name)
    print(f"[main] --start-over: the earlier run's files are in {aside}", flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       hook: Hook | None = None, hook_steps: frozenset[int] = frozenset(),
                       on_restore: Callable[[int | None, TrainState, Any], None] | None = None,
                       start_over: bool = False) -> dict[str, Any]:
  """Trains the main branch in ``workdir/main`` (resuming if it holds a checkpoint).

  ``config`` has passed ``start``. ``hook(step, state, train_iter)`` runs on the host after
  each step in ``hook_steps`` (those steps are also checkpointed and kept by retention);
  ``on_restore(step, state, train_iter)`` runs once before the loop (``step`` is None for a
  fresh run). Post-hoc snapshots (``train.snapshot_every``) are taken here. Returns the last
  evaluation metrics. ``start_over``: see ``check_not_orphaned``.

  Only one process at a time trains a run directory: process 0 holds its lock
  (``checkpoint.DirectoryLock``); a second trainer stops at once, naming the holder.
  """
  directory = workdir_lib.main_dir(workdir)
  checkpoint.check_writable(directory, field="--workdir")
  with checkpoint.DirectoryLock(directory):
    if not start_over:
      check_resumable(config, directory)
    check_not_orphaned(config, directory, start_over)
    run = build_run(config, workdir)
    member = single_member(
        run, directory, open_store(config, directory, hook_steps),
        eval_steps=frozenset(config.train.eval_at), save_steps=hook_steps,
        snapshots=snapshot_writer(config, directory), hook=hook, hook_steps=hook_steps)
    run_members(SingleProgram(run), [member], label="main", on_restore=on_restore)
  return last_evaluation(directory)
