"""The training loop of one run: ``Run`` (mesh, model, optimizer, jitted steps, built once from a
validated config), ``run_loop`` (steps, evaluations, metrics, checkpoints), resume, and
``train_and_evaluate``.

The loop evaluates the raw params and every average held in the optimizer state (and
Schedule-Free's evaluation point), writes metrics (JSONL + TensorBoard, fetched one step late so
dispatch stays asynchronous), and checkpoints through Orbax. It knows nothing about decay
branches or suites: callers pass host hooks (``anytime.branches`` takes its branches there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from anytime import averaging, checkpoint, naming, optimizers, parallel, posthoc
from anytime import config as config_lib
from anytime.guard import BadStepGuard, TrainingError  # TrainingError: part of loop's API
from anytime.lm import data as data_lib
from anytime.lm import model as model_lib

# Peak dense bf16 FLOP/s per device, for MFU (vendor figures).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12}



class TrainState(NamedTuple):
  step: jax.Array  # int32 []
  params: Any  # nested dict of float32 arrays
  opt_state: Any
  rng: jax.Array  # uint32 [2] raw key data (kept for stochastic extensions; saved and restored)


# ---------------------------------------------------------------------------- the run


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                  weights_BxL: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(sum of token losses, sum of weights), in float32."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
  if weights_BxL is None:
    weights_BxL = jnp.ones_like(losses)
  return jnp.sum(losses * weights_BxL), jnp.sum(weights_BxL)


@dataclasses.dataclass
class Run:
  """Everything a loop needs, built once from a config."""

  config: ml_collections.ConfigDict
  mesh: Any
  rules: tuple
  tokenizer: Any
  model_config: model_lib.ModelConfig
  schedule: optax.Schedule
  abstract_state: TrainState  # ShapeDtypeStructs with shardings
  state_shardings: TrainState
  init_state: Callable[[], TrainState]
  train_step: Callable[[TrainState, dict, np.float32], tuple[TrainState, dict]]
  eval_step: Callable[[Any, dict], tuple[jax.Array, jax.Array]]
  eval_batches: list[dict]
  flops_per_token: float
  # The same computations, pure and unjitted (anytime.batched vmaps them over runs):
  init_fn: Callable[[jax.Array], TrainState]  # seed -> state
  step_fn: Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]  # (state, batch, lr)
  eval_fn: Callable[[Any, dict], tuple[jax.Array, jax.Array]]  # -> (loss sum, token count)
  # Tokenized splits, kept for every iterator this run makes (resume, branches, batched runs).
  streams: data_lib.StreamCache = dataclasses.field(default_factory=data_lib.StreamCache)
  _learning_rates: np.ndarray = dataclasses.field(
      default_factory=lambda: np.zeros([0], np.float32))

  def learning_rate(self, step: int) -> np.float32:
    """The schedule's value at ``step``, from a table evaluated on the host in chunks.

    The jitted step takes the learning rate as an input, so one compiled step serves every
    schedule (runs that differ only in their schedule share one program).
    """
    table = self._learning_rates
    if step >= len(table):
      end = max(step + 1, 2 * len(table), 1024)
      table = learning_rate_table(self.schedule, len(table), end)
      self._learning_rates = np.concatenate([self._learning_rates, table])
    return self._learning_rates[step]

  def make_train_iterator(self):
    t = self.config.train
    return data_lib.make_train_iterator(
        self.config.data, self.tokenizer, seq_len=t.seq_len, global_batch_size=t.batch_size,
        seed=self.config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), streams=self.streams)

  def validation_loss(self, params) -> float:
    """Mean validation loss (nats/token) of one set of params."""
    totals = [self.eval_step(params, batch) for batch in self.eval_batches]  # all dispatched
    return sum(float(a) for a, _ in totals) / max(sum(float(b) for _, b in totals), 1.0)

  def evaluate(self, state: TrainState) -> dict[str, float]:
    """Validation loss of the raw params and of every average, keyed ``eval_loss/<name>``."""
    candidates = averaging.eval_params(state.opt_state, state.params)
    return {naming.eval_key(name): self.validation_loss(params)
            for name, params in candidates.items()}


def build_run(config: ml_collections.ConfigDict, workdir: str | epath.Path,
              schedule_override: Mapping[str, Any] | None = None, *,
              constrain_activations: bool = True) -> Run:
  """Builds mesh, tokenizer, model, optimizer and jitted steps. No training happens here.

  ``config`` must have passed ``start`` (the entry points validate once, at the boundary).
  ``schedule_override`` replaces ``optimizer.schedule`` (decay branches use it).
  ``constrain_activations=False`` leaves the activations' sharding to the compiler (runs
  vmapped and sharded over devices by ``anytime.batched``, each on one device).
  """
  devices = jax.devices()[:config.parallel.num_devices or None]
  mesh = parallel.make_mesh(config.parallel.mesh, devices)
  rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                for name, axes in config.parallel.rules)
  t = config.train
  tokenizer = data_lib.build_tokenizer(config.data, str(checkpoint.main_dir(workdir)))
  model_dict = config.model.to_dict()
  if not model_dict["vocab_size"]:
    model_dict["vocab_size"] = tokenizer.padded_vocab_size(t.vocab_multiple)
  elif model_dict["vocab_size"] < tokenizer.vocab_size:
    raise ValueError(f"model.vocab_size ({model_dict['vocab_size']}) is smaller than the "
                     f"tokenizer's vocabulary ({tokenizer.vocab_size})")
  model_config = model_lib.ModelConfig(**model_dict)
  opt_config = config.optimizer
  if schedule_override is not None:
    opt_config = ml_collections.ConfigDict(config.optimizer.to_dict())
    opt_config.schedule = ml_collections.ConfigDict(dict(schedule_override))
  tx, schedule = optimizers.build(opt_config, config_lib.posthoc_tracking(config),
                                  learning_rate_in_state=True)

  graphdef = model_lib.graphdef(model_config)
  axes = model_lib.logical_axes(model_config)
  activation_rules = ((lambda: parallel.activation_rules(mesh, rules)) if constrain_activations
                      else contextlib.nullcontext)

  def init_params(seed):
    return model_lib.init(model_config, jax.random.key(seed))[1]

  seed = np.uint32(config.seed)
  abstract_params = jax.eval_shape(init_params, seed)
  param_shardings = parallel.tree_shardings(abstract_params, axes, mesh, rules)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = parallel.opt_state_shardings(tx, abstract_opt, param_shardings, mesh)
  replicated = parallel.replicated(mesh)
  state_shardings = TrainState(replicated, param_shardings, opt_shardings, replicated)

  def init_fn(seed):
    params = init_params(seed)
    return TrainState(jnp.zeros([], jnp.int32), params, tx.init(params),
                      jax.random.key_data(jax.random.key(seed + 1)))

  init_jit = jax.jit(init_fn, out_shardings=state_shardings)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      jax.eval_shape(init_fn, seed), state_shardings)

  def loss_fn(params, batch):
    logits = model_lib.apply(graphdef, params, batch["inputs"])
    total, count = cross_entropy(logits, batch["targets"], batch.get("weights"))
    return total / jnp.maximum(count, 1.0)

  def train_step(state: TrainState, batch: dict, lr: jax.Array) -> tuple[TrainState, dict]:
    with activation_rules():
      loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    opt_state = optimizers.set_learning_rate(state.opt_state, lr)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = TrainState(state.step + 1, keep(params, state.params),
                           keep(opt_state, state.opt_state), state.rng)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr, "finite": finite}
    return new_state, metrics

  train_step_jit = jax.jit(train_step, in_shardings=(state_shardings, None, replicated),
                           out_shardings=(state_shardings, replicated), donate_argnums=0)

  def eval_step(params, batch):
    with activation_rules():
      logits = model_lib.apply(graphdef, params, batch["inputs"])
    return cross_entropy(logits, batch["targets"], batch["weights"])

  eval_step_jit = jax.jit(eval_step)
  eval_batch_size = t.eval_batch_size or t.batch_size
  streams = data_lib.StreamCache()
  local_eval = data_lib.make_eval_batches(
      config.data, tokenizer, seq_len=t.seq_len, batch_size=eval_batch_size,
      num_batches=t.eval_batches, process_index=jax.process_index(),
      process_count=jax.process_count(), streams=streams)
  eval_batches = [parallel.global_batch(b, mesh, rules) for b in local_eval]

  def sharded_train_step(state, local_batch, lr):
    return train_step_jit(state, parallel.global_batch(local_batch, mesh, rules), lr)

  return Run(config=config, mesh=mesh, rules=rules, tokenizer=tokenizer,
             model_config=model_config, schedule=schedule,
             abstract_state=abstract_state, state_shardings=state_shardings,
             init_state=lambda: init_jit(seed), train_step=sharded_train_step, streams=streams,
             eval_step=eval_step_jit, eval_batches=eval_batches,
             flops_per_token=model_lib.flops_per_token(model_config, t.seq_len),
             init_fn=init_fn, step_fn=train_step, eval_fn=eval_step)


def learning_rate_table(schedule: optax.Schedule, start: int, end: int) -> np.ndarray:
  """``schedule(step)`` for ``start <= step < end`` as float32, evaluated on the host.

  Not jitted: every schedule is a new closure, so a jit would compile once per run; op by op,
  the few primitives a schedule uses are compiled once per shape for all runs.
  """
  steps = jnp.arange(start, end, dtype=jnp.int32)
  return np.asarray(jax.vmap(schedule)(steps), np.float32)


# ---------------------------------------------------------------------------- metrics


class MetricsWriter:
  """JSONL + TensorBoard metrics, written by process 0 only."""

  def __init__(self, directory: epath.Path, *, truncate_after: int | None = None):
    self.enabled = jax.process_index() == 0
    self.path = directory / "metrics.jsonl"
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
      while (directory / f"metrics.jsonl.previous-{k}").exists():
        k += 1
      self.path.rename(directory / f"metrics.jsonl.previous-{k}")
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    self.tb = SummaryWriter(str(directory / "tensorboard"))

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
  path = epath.Path(directory) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def peak_flops(config: ml_collections.ConfigDict) -> float:
  if config.train.peak_flops_per_device:
    return float(config.train.peak_flops_per_device)
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), 0.0)


# ---------------------------------------------------------------------------- the loop


class _Preemption:
  """Turns SIGTERM (what a preempted VM gets) into a flag the loop checks every step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def run_loop(run: Run, state: TrainState, train_iter, store: checkpoint.CheckpointStore,
             writer: MetricsWriter, *, end_step: int, label: str = "main",
             eval_steps: frozenset[int] = frozenset(), save_steps: frozenset[int] = frozenset(),
             on_step: Callable[[int, TrainState, Any], TrainState] | None = None,
             hook_due: Callable[[int], bool] = lambda step: True) -> TrainState:
  """Trains from ``state.step`` to ``end_step``: logs, evaluates, checkpoints.

  ``on_step(step, state, train_iter)`` runs on the host after each step where ``hook_due(step)``
  (decay branches are taken there, snapshots saved); it may return a new state. It does not
  wait for the step's metrics, so dispatch stays asynchronous.
  """
  t = run.config.train
  tokens_per_step = t.batch_size * t.seq_len
  flops_peak = peak_flops(run.config) * run.mesh.size
  step = int(state.step)
  start_step, start_time = step, time.perf_counter()
  pending = None  # (step, device metrics): fetched one step late
  guard = BadStepGuard(t, label, store)
  last_log_time, last_log_step = start_time, step

  def flush(pending):
    nonlocal last_log_time, last_log_step
    done_step, device_metrics = pending
    metrics = jax.device_get(device_metrics)
    guard.observe(done_step, bool(metrics["finite"]), float(metrics["loss"]))
    skipped_total = guard.skipped_total
    if done_step % t.log_every == 0 or done_step == end_step:
      now = time.perf_counter()
      rate = (done_step - last_log_step) / max(now - last_log_time, 1e-9)
      last_log_time, last_log_step = now, done_step
      record = {"loss": float(metrics["loss"]), "grad_norm": float(metrics["grad_norm"]),
                "lr": float(metrics["lr"]), "tokens": done_step * tokens_per_step,
                "steps_per_sec": rate, "tokens_per_sec": rate * tokens_per_step,
                "skipped_updates": skipped_total}
      if flops_peak:
        record["mfu"] = rate * tokens_per_step * run.flops_per_token / flops_peak
      writer.write(done_step, record)
      if jax.process_index() == 0:
        elapsed = now - start_time
        eta = elapsed / max(done_step - start_step, 1) * (end_step - done_step)
        mfu = f" | mfu {record['mfu']:.1%}" if "mfu" in record else ""
        print(f"[{label}] step {done_step}/{end_step} | loss {record['loss']:.4f} | lr "
              f"{record['lr']:.2e} | {record['tokens_per_sec']:,.0f} tok/s{mfu} | ETA "
              f"{_format_seconds(eta)}", flush=True)

  with _Preemption() as preemption:
    while step < end_step:
      batch = next(train_iter)
      state, device_metrics = run.train_step(state, batch, run.learning_rate(step))
      if pending is not None:
        flush(pending)
      pending = (step + 1, device_metrics)
      step += 1
      boundary = (step % t.eval_every == 0 or step in eval_steps or step == end_step or
                  step % t.checkpoint_every == 0 or step in save_steps or
                  preemption.requested or guard.save_deferred)
      if not boundary:
        if on_step is not None and hook_due(step):
          state = on_step(step, state, train_iter)
        continue
      flush(pending)
      pending = None
      if step % t.eval_every == 0 or step in eval_steps or step == end_step:
        metrics = run.evaluate(state)
        metrics["tokens"] = step * tokens_per_step
        if guard.unclean:  # reached through skipped updates, not yet clean enough to save
          metrics["after_skipped_updates"] = guard.skipped_since_save
        writer.write(step, metrics)
        if jax.process_index() == 0:
          print(f"[{label}] eval step {step}: " + ", ".join(
              f"{k} {v:.4f}" for k, v in naming.eval_losses(metrics).items()),
                flush=True)
      saved = False
      if (step % t.checkpoint_every == 0 or step in save_steps or step == end_step or
          preemption.requested or guard.save_deferred):
        saved = guard.may_save(step, final=step == end_step or preemption.requested)
        if saved:
          store.save(step, state, train_iter)
      if preemption.requested:
        store.wait()
        print(f"[{label}] SIGTERM: " + (f"saved a checkpoint at step {step}" if saved else
              f"step {step} was reached through skipped updates and is not saved (the last "
              f"good checkpoint is step {store.latest_step()})") + "; exiting.", flush=True)
        raise SystemExit(0)
      if on_step is not None and hook_due(step):
        state = on_step(step, state, train_iter)
    if pending is not None:
      flush(pending)
  store.wait()
  return state


def restore_or_init(run: Run, store: checkpoint.CheckpointStore) -> tuple[TrainState, Any, int | None]:
  """The newest intact checkpoint of ``store`` (with its data iterator), or a fresh state."""
  steps = store.all_steps()
  found = store.restore_latest_intact(run.abstract_state, run.make_train_iterator)
  damaged = sorted(p.name for p in store.directory.glob("*.damaged*"))
  if found is None and (steps or damaged):
    raise TrainingError(
        f"{store.directory} holds checkpoints ({', '.join(map(str, steps)) or 'none intact'}; "
        f"set aside: {', '.join(damaged) or 'none'}) but none could be restored (see the "
        "warnings above). Refusing to start over on top of them: move them away, or fix the "
        "cause.")
  if found is None:
    return run.init_state(), run.make_train_iterator(), None
  step, state, iterator = found
  return state, iterator, step


def check_resumable(config: ml_collections.ConfigDict, directory: epath.Path) -> None:
  """Refuses to resume a run whose config changed, naming the differing keys."""
  stored = checkpoint.read_json(directory / "config.json")
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


Hook = Callable[[int, TrainState, Any], TrainState]


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
  found = [name for name in ("config.json", "metrics.jsonl") if (directory / name).exists()]
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
    while (directory / f"previous-{k}").exists():
      k += 1
    aside = directory / f"previous-{k}"
    aside.mkdir()
    for name in ("config.json", "metrics.jsonl", "tensorboard", "snapshots"):
      if (directory / name).exists():
        (directory / name).rename(aside / name)
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
  directory = checkpoint.main_dir(workdir)
  checkpoint.check_writable(directory, field="--workdir")
  lock = checkpoint.DirectoryLock(directory).acquire()
  try:
    return _train_locked(config, workdir, directory, hook, hook_steps, on_restore, start_over)
  finally:
    lock.release()


def _train_locked(config, workdir, directory, hook, hook_steps, on_restore, start_over):
  if not start_over:
    check_resumable(config, directory)
  check_not_orphaned(config, directory, start_over)
  run = build_run(config, workdir)
  store = checkpoint.CheckpointStore(
      directory, keep_latest=config.train.keep_checkpoints,
      keep_period=config.train.keep_period, keep_steps=sorted(hook_steps),
      async_save=config.train.async_checkpoints)
  state, train_iter, restored = restore_or_init(run, store)
  if restored is None:
    checkpoint.write_json(directory / "config.json", json.loads(config.to_json_best_effort()))
  elif jax.process_index() == 0:
    print(f"[main] resumed from step {restored}", flush=True)
  writer = MetricsWriter(directory, truncate_after=restored)
  snapshots = _snapshot_writer(config, directory)
  if snapshots is not None:
    snapshots.discard_after(restored or 0)  # snapshots newer than the resumed state are redone
  snapshot_every = config.train.snapshot_every

  def on_step(step, state, train_iter):
    if snapshots is not None and step % snapshot_every == 0:
      snapshots.save(step, posthoc.tracked_averages(state.opt_state, snapshots.tracking))
    if hook is not None and step in hook_steps:
      state = hook(step, state, train_iter)
    return state

  def hook_due(step):
    return step in hook_steps or (snapshots is not None and step % snapshot_every == 0)

  try:
    if on_restore is not None:
      on_restore(restored, state, train_iter)
    run_loop(run, state, train_iter, store, writer, end_step=config.train.total_steps,
             eval_steps=frozenset(config.train.eval_at), save_steps=hook_steps,
             on_step=on_step if (hook is not None or snapshots is not None) else None,
             hook_due=hook_due)
  finally:
    store.close()
    writer.close()
    if snapshots is not None:
      snapshots.close()
  return last_evaluation(directory)


def last_evaluation(directory: str | epath.Path) -> dict[str, Any]:
  """The last evaluation record of a run or branch directory ({} if none)."""
  evals = [m for m in read_metrics(directory) if naming.is_eval_record(m)]
  return evals[-1] if evals else {}


def _snapshot_writer(config, directory):
  if not config.train.snapshot_every:
    return None
  return posthoc.SnapshotWriter(str(directory / "snapshots"), config_lib.posthoc_tracking(config),
                                keep=config.train.snapshot_keep)
