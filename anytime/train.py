"""``train_and_evaluate(config, workdir)``: the training loop of one run (or one decay branch).

The loop steps, evaluates the raw params and every average held in the optimizer state (and
Schedule-Free's evaluation point), writes metrics (JSONL + TensorBoard, fetched one step late so
dispatch stays asynchronous), and checkpoints through Orbax. No model or schedule details live
here: the model comes from ``anytime.lm.model``, the optimizer from ``anytime.optimizers``.
"""

from __future__ import annotations

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

from anytime import averaging, checkpoint, optimizers, parallel, posthoc
from anytime.lm import data as data_lib
from anytime.lm import model as model_lib

# Keys whose change on resume is accepted: they do not change what the run computes up to the
# step it resumes from (for an anytime schedule, the total length is one of them).
SAFE_TO_CHANGE = (
    "train.total_steps", "train.eval_every", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.keep_period", "train.eval_batches",
    "train.snapshot_keep", "train.peak_flops_per_device", "data.worker_count",
    "data.cache_dir", "branches", "distributed",
)

# Peak dense bf16 FLOP/s per device, for MFU (vendor figures).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12}


def default_config() -> ml_collections.ConfigDict:
  """The one schema of a training run: every key with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  model = dataclasses.asdict(model_lib.ModelConfig())
  model["vocab_size"] = 0  # 0 = the tokenizer's vocabulary, padded to train.vocab_multiple.
  c.model = ml_collections.ConfigDict(model)
  c.data = data_lib.default_config()
  c.optimizer = optimizers.default_config()
  c.parallel = ml_collections.ConfigDict(dict(
      mesh=dict(data=-1, fsdp=1, tensor=1),  # one axis may be -1 (= the remaining devices)
      rules=[list(r) for r in parallel.DEFAULT_RULES],
      num_devices=0,  # 0 = all devices; N = the first N (tests, single-device references)
  ))
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address="", num_processes=0, process_id=-1))
  c.train = ml_collections.ConfigDict(dict(
      total_steps=1000,
      batch_size=32,  # global, in sequences
      seq_len=128,
      vocab_multiple=8,
      eval_every=100,
      eval_batches=8,  # 0 = the whole validation split
      eval_batch_size=0,  # 0 = batch_size
      eval_at=[],  # extra steps to evaluate at (e.g. every horizon of a suite)
      log_every=10,
      checkpoint_every=500,
      keep_checkpoints=3,
      keep_period=0,  # also keep every checkpoint whose step is a multiple of this
      nan_policy="stop",  # "stop": fail with a clear error; "skip": drop the update and count it
      max_skipped_updates=10,  # with "skip": give up after this many consecutive bad steps
      snapshot_every=0,  # post-hoc averaging snapshots of two power EMAs (0 = off)
      snapshot_keep=0,  # snapshots kept (0 = all)
      snapshot_sigma_rels=[0.05, 0.10],  # the tracked power EMAs (anytime.posthoc)
      peak_flops_per_device=0.0,  # 0 = from the device kind (MFU is omitted when unknown)
      async_checkpoints=True,
  ))
  c.branches = ml_collections.ConfigDict(dict(
      budgets=[],  # steps at which decayed checkpoints are wanted (the ends of the branches)
      cooldown_fraction=0.2,
      shape="linear",
      final_fraction=0.0,
  ))
  c.lock()
  return c


class TrainState(NamedTuple):
  step: jax.Array  # int32 []
  params: Any  # nested dict of float32 arrays
  opt_state: Any
  rng: jax.Array  # uint32 [2] raw key data (kept for stochastic extensions; saved and restored)


class TrainingError(RuntimeError):
  """A run cannot go on (non-finite loss, ...); the last good checkpoint is left intact."""


# ---------------------------------------------------------------------------- validation


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Refuses impossible configs with a message naming the key, before any compilation."""
  t = config.train
  for key in ("total_steps", "batch_size", "seq_len", "eval_every", "log_every",
              "checkpoint_every", "vocab_multiple", "keep_checkpoints"):
    value = t[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"train.{key} must be a positive integer, got {value!r}")
  for key in ("eval_batches", "eval_batch_size", "keep_period", "snapshot_every",
              "snapshot_keep", "max_skipped_updates"):
    if not isinstance(t[key], int) or t[key] < 0:
      raise ValueError(f"train.{key} must be a non-negative integer, got {t[key]!r}")
  if t.nan_policy not in ("stop", "skip"):
    raise ValueError(f"train.nan_policy must be 'stop' or 'skip', got {t.nan_policy!r}")
  if config.model.max_len < t.seq_len:
    raise ValueError(f"model.max_len ({config.model.max_len}) must be >= train.seq_len "
                     f"({t.seq_len})")
  schedule = config.optimizer.schedule
  warmup = schedule.get("warmup_steps", 0)
  if warmup and warmup >= t.total_steps:
    raise ValueError(f"optimizer.schedule.warmup_steps ({warmup}) must be smaller than "
                     f"train.total_steps ({t.total_steps})")
  b = config.branches
  if not 0 < b.cooldown_fraction <= 1:
    raise ValueError(f"branches.cooldown_fraction must be in (0, 1], got {b.cooldown_fraction!r}")
  for budget in b.budgets:
    if not isinstance(budget, int) or budget < 1 or budget > t.total_steps:
      raise ValueError(f"branches.budgets entries must be integers in [1, train.total_steps="
                       f"{t.total_steps}], got {budget!r}")
  num_devices = config.parallel.num_devices or jax.device_count()
  if num_devices > jax.device_count():
    raise ValueError(f"parallel.num_devices ({num_devices}) exceeds the {jax.device_count()} "
                     "devices present")
  shape = dict(zip(parallel.MESH_AXES,
                   parallel.mesh_shape(config.parallel.mesh, num_devices)))
  batch_axes = dict(map(tuple, config.parallel.rules)).get("batch")
  batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
  batch_shards = math.prod(shape[a] for a in batch_axes)
  for key in ("batch_size", "eval_batch_size"):
    if t[key] and t[key] % batch_shards:
      raise ValueError(f"train.{key} ({t[key]}) must be divisible by the data-parallel size "
                       f"{batch_shards} (mesh axes {batch_axes} of {shape})")
    if t[key] and t[key] % jax.process_count():
      raise ValueError(f"train.{key} must be divisible by the {jax.process_count()} processes")
  optimizers.build(config.optimizer, posthoc_tracking(config))  # validates optimizer + averages
  model_lib.ModelConfig(**{**config.model.to_dict(), "vocab_size": 1})
  data_lib.validate_config(config.data)


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
  graphdef: Any
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  abstract_state: TrainState  # ShapeDtypeStructs with shardings
  state_shardings: TrainState
  init_state: Callable[[], TrainState]
  train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]
  eval_step: Callable[[Any, dict], tuple[jax.Array, jax.Array]]
  eval_batches: list[dict]
  flops_per_token: float

  def make_train_iterator(self):
    t = self.config.train
    return data_lib.make_train_iterator(
        self.config.data, self.tokenizer, seq_len=t.seq_len, global_batch_size=t.batch_size,
        seed=self.config.seed, process_index=jax.process_index(),
        process_count=jax.process_count())

  def validation_loss(self, params) -> float:
    """Mean validation loss (nats/token) of one set of params."""
    totals = [self.eval_step(params, batch) for batch in self.eval_batches]  # all dispatched
    return sum(float(a) for a, _ in totals) / max(sum(float(b) for _, b in totals), 1.0)

  def evaluate(self, state: TrainState) -> dict[str, float]:
    """Validation loss of the raw params and of every average, keyed ``eval_loss/<name>``."""
    candidates = averaging.eval_params(state.opt_state, state.params)
    return {f"eval_loss/{name}": self.validation_loss(params)
            for name, params in candidates.items()}


def build_run(config: ml_collections.ConfigDict, workdir: str | epath.Path,
              schedule_override: Mapping[str, Any] | None = None) -> Run:
  """Builds mesh, tokenizer, model, optimizer and jitted steps. No training happens here.

  ``schedule_override`` replaces ``optimizer.schedule`` (decay branches use it).
  """
  # Before validate_config: it counts devices, and jax.distributed must come first.
  parallel.maybe_initialize_distributed(**config.distributed.to_dict())
  validate_config(config)
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
  tx, schedule = optimizers.build(opt_config, posthoc_tracking(config))

  key = jax.random.key(config.seed)
  graphdef = model_lib.graphdef(model_config)
  axes = model_lib.logical_axes(model_config)

  def init_params():
    return model_lib.init(model_config, key)[1]

  abstract_params = jax.eval_shape(init_params)
  param_shardings = parallel.tree_shardings(abstract_params, axes, mesh, rules)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = parallel.opt_state_shardings(tx, abstract_opt, param_shardings, mesh)
  replicated = parallel.replicated(mesh)
  state_shardings = TrainState(replicated, param_shardings, opt_shardings, replicated)

  def init_fn():
    params = init_params()
    return TrainState(jnp.zeros([], jnp.int32), params, tx.init(params),
                      jax.random.key_data(jax.random.key(config.seed + 1)))

  init_state = jax.jit(init_fn, out_shardings=state_shardings)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      jax.eval_shape(init_fn), state_shardings)

  def loss_fn(params, batch):
    logits = model_lib.apply(graphdef, params, batch["inputs"])
    total, count = cross_entropy(logits, batch["targets"], batch.get("weights"))
    return total / jnp.maximum(count, 1.0)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    with parallel.activation_rules(mesh, rules):
      loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = TrainState(state.step + 1, keep(params, state.params),
                           keep(opt_state, state.opt_state), state.rng)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
               "finite": finite}
    return new_state, metrics

  train_step_jit = jax.jit(train_step, in_shardings=(state_shardings, None),
                           out_shardings=(state_shardings, replicated), donate_argnums=0)

  def eval_step(params, batch):
    with parallel.activation_rules(mesh, rules):
      logits = model_lib.apply(graphdef, params, batch["inputs"])
    return cross_entropy(logits, batch["targets"], batch["weights"])

  eval_step_jit = jax.jit(eval_step)
  eval_batch_size = t.eval_batch_size or t.batch_size
  local_eval = data_lib.make_eval_batches(
      config.data, tokenizer, seq_len=t.seq_len, batch_size=eval_batch_size,
      num_batches=t.eval_batches, process_index=jax.process_index(),
      process_count=jax.process_count())
  eval_batches = [parallel.global_batch(b, mesh, rules) for b in local_eval]

  def sharded_train_step(state, local_batch):
    return train_step_jit(state, parallel.global_batch(local_batch, mesh, rules))

  return Run(config=config, mesh=mesh, rules=rules, tokenizer=tokenizer,
             model_config=model_config, graphdef=graphdef, tx=tx, schedule=schedule,
             abstract_state=abstract_state, state_shardings=state_shardings,
             init_state=init_state, train_step=sharded_train_step, eval_step=eval_step_jit,
             eval_batches=eval_batches,
             flops_per_token=model_lib.flops_per_token(model_config, t.seq_len))


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
      self.path.unlink()
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
  skipped_in_a_row = skipped_total = 0
  last_log_time, last_log_step = start_time, step

  def flush(pending):
    nonlocal skipped_in_a_row, skipped_total, last_log_time, last_log_step
    done_step, device_metrics = pending
    metrics = jax.device_get(device_metrics)
    if not bool(metrics["finite"]):
      skipped_in_a_row += 1
      skipped_total += 1
      if t.nan_policy == "stop" or skipped_in_a_row > t.max_skipped_updates:
        raise TrainingError(
            f"[{label}] non-finite loss or gradient at step {done_step} (loss="
            f"{float(metrics['loss'])}); the update was not applied and no checkpoint was "
            f"written after step {store.latest_step()}. Lower the learning rate, or set "
            f"train.nan_policy='skip' to drop such updates.")
    else:
      skipped_in_a_row = 0
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
      state, device_metrics = run.train_step(state, batch)
      if pending is not None:
        flush(pending)
      pending = (step + 1, device_metrics)
      step += 1
      boundary = (step % t.eval_every == 0 or step in eval_steps or step == end_step or
                  step % t.checkpoint_every == 0 or step in save_steps or
                  preemption.requested)
      if not boundary:
        if on_step is not None and hook_due(step):
          state = on_step(step, state, train_iter)
        continue
      flush(pending)
      pending = None
      if step % t.eval_every == 0 or step in eval_steps or step == end_step:
        metrics = run.evaluate(state)
        metrics["tokens"] = step * tokens_per_step
        writer.write(step, metrics)
        if jax.process_index() == 0:
          print(f"[{label}] eval step {step}: " + ", ".join(
              f"{k.split('/', 1)[1]} {v:.4f}" for k, v in metrics.items() if "/" in k),
                flush=True)
      if (step % t.checkpoint_every == 0 or step in save_steps or step == end_step or
          preemption.requested):
        store.save(step, state, train_iter)
      if preemption.requested:
        store.wait()
        print(f"[{label}] SIGTERM: saved a checkpoint at step {step}; exiting.", flush=True)
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
                                        SAFE_TO_CHANGE)
  if diffs:
    raise ValueError(
        f"the workdir {directory} holds a run with a different config; differing keys: "
        f"{', '.join(diffs)}. Use a new workdir, or change only keys that are safe on "
        f"resume ({', '.join(SAFE_TO_CHANGE)}).")


def stored_config(workdir: str | epath.Path) -> ml_collections.ConfigDict:
  """The resolved config a workdir's main branch was trained with."""
  directory = checkpoint.main_dir(workdir)
  stored = checkpoint.read_json(directory / "config.json")
  if stored is None:
    raise FileNotFoundError(f"--workdir {workdir} holds no main branch (no {directory}/"
                            "config.json); train it first")
  def merge(defaults, values):
    out = dict(defaults)
    for key, value in values.items():
      # Free-form sections (a schedule's options, the named averages) are taken whole.
      nested = isinstance(value, dict) and isinstance(out.get(key), dict)
      out[key] = merge(out[key], value) if nested and key not in ("schedule", "averages") \
          else value
    return out

  config = ml_collections.ConfigDict(merge(default_config().to_dict(), stored))
  config.lock()
  return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the main branch in ``workdir/main`` (resuming if it holds a checkpoint).

  Returns the last evaluation metrics. Planned decay branches (``config.branches.budgets``)
  are taken when the main run passes ``(1 - cooldown_fraction) * budget``.
  """
  parallel.maybe_initialize_distributed(**config.distributed.to_dict())
  validate_config(config)
  directory = checkpoint.main_dir(workdir)
  check_resumable(config, directory)
  run = build_run(config, workdir)
  plan = planned_branches(config)
  store = checkpoint.CheckpointStore(
      directory, keep_latest=config.train.keep_checkpoints,
      keep_period=config.train.keep_period, keep_steps=[p["branch_step"] for p in plan],
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
  from anytime.experiments import branch as branch_lib  # pylint: disable=g-import-not-at-top

  def on_step(step, state, train_iter):
    if snapshots is not None and step % config.train.snapshot_every == 0:
      snapshots.save(step, posthoc.tracked_averages(state.opt_state, snapshots.tracking))
    for p in plan:
      if p["branch_step"] == step and not branch_lib.branch_finished(workdir, p["name"]):
        branch_lib.run_branch_from_state(config, workdir, state, train_iter, **p)
    return state

  needs_hook = bool(plan) or snapshots is not None
  branch_steps = frozenset(p["branch_step"] for p in plan)

  def hook_due(step):
    return step in branch_steps or (snapshots is not None and
                                    step % config.train.snapshot_every == 0)

  try:
    # Resumed at a branch point whose branch did not finish: run_loop only calls on_step after
    # a step, so take that branch here.
    for p in plan:
      if p["branch_step"] == restored and not branch_lib.branch_finished(workdir, p["name"]):
        branch_lib.run_branch_from_state(config, workdir, state, train_iter, **p)
    state = run_loop(run, state, train_iter, store, writer, end_step=config.train.total_steps,
                     eval_steps=frozenset(config.train.eval_at),
                     save_steps=branch_steps, on_step=on_step if needs_hook else None,
                     hook_due=hook_due)
  finally:
    store.close()
    writer.close()
    if snapshots is not None:
      snapshots.close()
  last = [m for m in read_metrics(directory) if any(k.startswith("eval_loss/") for k in m)]
  return last[-1] if last else {}


def planned_branches(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """The decay branches a run takes by itself: one per budget, cooldown at the end."""
  b = config.branches
  plan = []
  for budget in sorted(set(b.budgets)):
    cooldown = max(1, round(b.cooldown_fraction * budget))
    plan.append(dict(name=f"{b.shape}_{budget}", branch_step=budget - cooldown,
                     cooldown_steps=cooldown, shape=b.shape, final_fraction=b.final_fraction))
  return plan


def posthoc_tracking(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The power EMAs tracked for post-hoc averaging (none when snapshots are off)."""
  if not config.train.snapshot_every:
    return {}
  return posthoc.default_tracking(tuple(config.train.snapshot_sigma_rels))


def _snapshot_writer(config, directory):
  if not config.train.snapshot_every:
    return None
  return posthoc.SnapshotWriter(str(directory / "snapshots"), posthoc_tracking(config),
                                keep=config.train.snapshot_keep)
