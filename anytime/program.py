"""The compiled program of one run: ``Run`` (mesh, tokenizer, model, optimizer, jitted train and
evaluation steps), built once from a validated config by ``build_run``. No training happens
here; ``anytime.loop`` drives it (and ``anytime.batched`` vmaps its pure functions over runs).

The learning rate is an input of the compiled step (an ``optax.inject_hyperparams`` entry set
from the schedule, evaluated on the host), so one compiled step serves every schedule. The
evaluation step returns per-window loss sums, so the evaluation set's own error can be
measured (``eval_windows.json``) and every mean loss is their total over the token count.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from anytime._requires import require_train_extra

require_train_extra(__name__, "flax", "orbax.checkpoint", "grain")

import jax  # noqa: E402
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from anytime import averaging, naming, optimizers, parallel
from anytime import config as config_lib
from anytime import workdir as workdir_lib
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


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                  weights_BxL: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(sum of token losses, sum of weights), in float32."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
  if weights_BxL is None:
    weights_BxL = jnp.ones_like(losses)
  return jnp.sum(losses * weights_BxL), jnp.sum(weights_BxL)


def window_cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                         weights_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per window (row): (sum of token losses [B], sum of weights [B]), in float32."""
  losses_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
  return jnp.sum(losses_BxL * weights_BxL, axis=-1), jnp.sum(weights_BxL, axis=-1)


EVAL_PIECE = 32  # windows per evaluation pass at most (see in_pieces)


def in_pieces(eval_fn: Callable) -> Callable:
  """``eval_fn`` over an evaluation batch as a ``lax.map`` over pieces of at most
  ``EVAL_PIECE`` windows (the largest divisor of the batch that fits): the same per-window
  sums (equal bitwise on this CPU), with activations small enough to stay in the CPU's caches
  (the quickstart's batches of 128 windows: 1.41x faster, ``benchmarks/group_host.py``)."""

  def fn(params, batch):
    size = batch["inputs"].shape[0]
    piece = max(d for d in range(1, min(size, EVAL_PIECE) + 1) if size % d == 0)
    if piece == size:
      return eval_fn(params, batch)
    pieces = jax.tree.map(lambda x: x.reshape(size // piece, piece, *x.shape[1:]), batch)
    sums, counts = jax.lax.map(lambda b: eval_fn(params, b), pieces)
    return sums.reshape(size), counts.reshape(size)

  return fn


class LearningRates:
  """A schedule's values by step, evaluated on the host in chunks (``learning_rate_table``)."""

  def __init__(self, schedule: optax.Schedule):
    self.schedule = schedule
    self._table = np.zeros([0], np.float32)

  def __getitem__(self, step: int) -> np.float32:
    if step >= len(self._table):
      end = max(step + 1, 2 * len(self._table), 1024)
      self._table = np.concatenate(
          [self._table, learning_rate_table(self.schedule, len(self._table), end)])
    return self._table[step]


def learning_rate_table(schedule: optax.Schedule, start: int, end: int) -> np.ndarray:
  """``schedule(step)`` for ``start <= step < end`` as float32, evaluated on the host.

  Not jitted: every schedule is a new closure, so a jit would compile once per run; op by op,
  the few primitives a schedule uses are compiled once per shape for all runs.
  """
  steps = jnp.arange(start, end, dtype=jnp.int32)
  return np.asarray(jax.vmap(schedule)(steps), np.float32)


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
  eval_step: Callable[[Any, dict], tuple[jax.Array, jax.Array]]  # -> per-window (sums, counts)
  eval_batches: list[dict]
  flops_per_token: float
  # The same computations, pure and unjitted (anytime.batched vmaps them over runs):
  init_fn: Callable[[jax.Array], TrainState]  # seed -> state
  step_fn: Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]  # (state, batch, lr)
  eval_fn: Callable[[Any, dict], tuple[jax.Array, jax.Array]]  # -> per-window (sums, counts)
  # Tokenized splits, kept for every iterator this run makes (resume, branches, batched runs).
  streams: data_lib.StreamCache = dataclasses.field(default_factory=data_lib.StreamCache)
  _learning_rates: LearningRates | None = None

  def learning_rate(self, step: int) -> np.float32:
    """The schedule's value at ``step`` (the jitted step takes it as an input)."""
    if self._learning_rates is None:
      self._learning_rates = LearningRates(self.schedule)
    return self._learning_rates[step]

  def make_train_iterator(self):
    t = self.config.train
    return data_lib.make_train_iterator(
        self.config.data, self.tokenizer, seq_len=t.seq_len, global_batch_size=t.batch_size,
        seed=self.config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), streams=self.streams)

  def window_losses(self, params) -> tuple[np.ndarray, np.ndarray]:
    """Per-window validation loss sums and token counts of one set of params (every row of
    every evaluation batch, in order; padding rows count 0 tokens)."""
    parts = [self.eval_step(params, batch) for batch in self.eval_batches]  # all dispatched
    sums = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a, _ in parts])
    counts = np.concatenate([np.asarray(b, np.float64).reshape(-1) for _, b in parts])
    return sums, counts

  def validation_loss(self, params) -> float:
    """Mean validation loss (nats/token) of one set of params."""
    sums, counts = self.window_losses(params)
    return float(sums.sum() / max(counts.sum(), 1.0))

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
  tokenizer = data_lib.build_tokenizer(config.data, str(workdir_lib.main_dir(workdir)))
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
    return window_cross_entropy(logits, batch["targets"], batch["weights"])

  # Per-window outputs replicated: every process reads all windows (multi-host included). On
  # one device the batch goes through in pieces (a sharded batch axis is left whole).
  eval_step_jit = jax.jit(in_pieces(eval_step) if mesh.size == 1 else eval_step,
                          out_shardings=replicated)
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


def peak_flops(config: ml_collections.ConfigDict) -> float:
  if config.train.peak_flops_per_device:
    return float(config.train.peak_flops_per_device)
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), 0.0)
