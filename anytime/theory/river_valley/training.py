"""Training in the river-valley lab: optax + ``anytime.averaging`` steps, chunked with scan.

Every run sees the same data stream: the minibatch of step t depends only on (seed, t), so a
decay branch sees the data its main run would have seen (common random numbers). The LR of each
step is fed to the step as a scalar, so one compiled chunk serves every schedule.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from anytime import averaging
from anytime.theory._checks import in_range, integer
from anytime.theory.river_valley.chain import BigramChain, make_sampler
from anytime.theory.river_valley.diagnostics import top_hessian_eigenpair
from anytime.theory.river_valley.models import METRIC_NAMES, LabModel

OPTIMIZER_NAMES = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """The base optimizer of the lab: ``adam`` (b1, b2, eps) or ``sgd`` (momentum)."""

  name: str = "adam"
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  momentum: float = 0.0

  def __post_init__(self):
    if self.name not in OPTIMIZER_NAMES:
      raise ValueError(f"optimizer.name must be 'adam' or 'sgd', got {self.name!r}")
    for field in ("b1", "b2", "momentum"):
      in_range(f"optimizer.{field}", getattr(self, field), 0.0, 1.0, closed="left")
    in_range("optimizer.eps", self.eps, 0.0, 1.0)

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> OptimizerSettings:
    return cls(**dict(config))

  def transform(self, learning_rate: Any) -> optax.GradientTransformation:
    """The base optax transform at ``learning_rate`` (a float or a traced scalar)."""
    if self.name == "adam":
      return optax.adam(learning_rate, b1=self.b1, b2=self.b2, eps=self.eps)
    return optax.sgd(learning_rate, momentum=self.momentum or None)


def make_averages(averages_config: Mapping[str, Any]) -> dict[str, averaging.Average]:
  """``{name: {kind, ...}}`` -> ``{name: averaging.Average}`` (at least one)."""
  averages = {n: averaging.from_config(spec) for n, spec in dict(averages_config).items()}
  if not averages:
    raise ValueError("averages must name at least one average")
  return averages


def lab_transform(settings: OptimizerSettings, averages: Mapping[str, averaging.Average],
                  learning_rate: Any) -> optax.GradientTransformation:
  """``with_averages(base(learning_rate), averages)``; the state does not depend on the LR."""
  return averaging.with_averages(settings.transform(learning_rate), dict(averages))


@dataclasses.dataclass
class RunRecord:
  """What one run leaves behind: metric rows, and canonical flat params at each eval."""

  name: str
  rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  # (step, weights name) -> canonical flat params, float32 numpy.
  flat: dict[tuple[int, str], np.ndarray] = dataclasses.field(default_factory=dict)
  final_state: Any = None

  def value(self, step: int, weights: str = "raw", metric: str = "excess") -> float:
    for row in self.rows:
      if row["step"] == step and row["weights"] == weights:
        return row[metric]
    raise KeyError(f"{self.name}: no {weights} row at step {step}")


class LabSteps(NamedTuple):
  """The jitted pieces a run is made of (``build_steps``)."""

  chunk: Callable  # (state, lrs_K, key) -> (state, mean train loss); donates state.
  evaluate: Callable  # state -> {weights: metrics, distance_to_raw, flat}.
  hessian: Callable  # params -> (top eigenvalue, eigenvector).
  preconditioned: Callable  # state -> top eigenvalue of D H D (Adam), NaN otherwise.
  init_state: Callable  # () -> (params, opt_state).


def _f32(tree):
  return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


def build_steps(model: LabModel, chain: BigramChain, settings: OptimizerSettings,
                averages: Mapping[str, averaging.Average], *, batch_size: int, seq_len: int,
                hessian_iterations: int) -> LabSteps:
  """Jitted chunk of training steps, evaluation and sharpness for one model and optimizer."""
  batch_size = integer("batch_size", batch_size)
  seq_len = integer("seq_len", seq_len, 2)
  hessian_iterations = integer("hessian_iterations", hessian_iterations)
  sample = make_sampler(chain, batch_size, seq_len)

  def chunk(state, lrs_K, key):
    def body(carry, lr_and_key):
      params, opt_state = carry
      lr, k = lr_and_key
      loss, grads = jax.value_and_grad(model.batch_loss)(params, sample(k))
      updates, opt_state = lab_transform(settings, averages, lr).update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    keys = jax.random.split(key, lrs_K.shape[0])
    state, losses_K = jax.lax.scan(body, state, (lrs_K, keys))
    return state, losses_K.mean()

  def evaluate(state):
    params, opt_state = state
    raw_flat = ravel_pytree(model.canonical(params))[0]
    out = {}
    for name, weights in averaging.eval_params(opt_state, params).items():
      weights = _f32(weights)
      flat = ravel_pytree(model.canonical(weights))[0]
      out[name] = dict(model.metrics(weights), distance_to_raw=jnp.linalg.norm(flat - raw_flat),
                       flat=flat)
    return out

  def hessian(params):
    return top_hessian_eigenpair(model.eval_loss, params, num_iterations=hessian_iterations)

  def preconditioned(state):
    params, opt_state = state
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
    adam = [x for x in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(x)]
    if not adam or settings.name != "adam":
      return jnp.float32(jnp.nan)
    b2, eps = settings.b2, settings.eps
    nu_hat = jax.tree.map(lambda n: n / (1.0 - b2 ** adam[0].count.astype(jnp.float32)),
                          adam[0].nu)
    scale = jax.tree.map(lambda n: (jnp.sqrt(n) + eps) ** -0.5, nu_hat)
    return top_hessian_eigenpair(model.eval_loss, params, num_iterations=hessian_iterations,
                                 scale=scale)[0]

  def init_state():
    params = model.init_params
    return params, lab_transform(settings, averages, 0.0).init(params)

  return LabSteps(jax.jit(chunk, donate_argnums=0), jax.jit(evaluate), jax.jit(hessian),
                  jax.jit(preconditioned), init_state)


def _rows(name, step, lr, train_loss, evaluated, eig) -> list[dict[str, Any]]:
  rows = []
  for weights, m in evaluated.items():
    row = {"run": name, "step": step, "lr": float(lr), "weights": weights,
           "train_loss": float(train_loss)}
    row.update({key: float(m[key]) for key in METRIC_NAMES})
    row["distance_to_raw"] = float(m["distance_to_raw"])
    row["top_hessian_eigenvalue"] = float(eig[weights]) if weights in eig else float("nan")
    pre = eig.get("preconditioned") if weights == "raw" else None
    row["top_preconditioned_eigenvalue"] = float(pre) if pre is not None else float("nan")
    rows.append(row)
  return rows


def train_run(steps: LabSteps, name: str, schedule: Callable[[Any], Any], state, start: int,
              end: int, *, chunk_steps: int, data_key: jax.Array, hessian_every: int = 0,
              snapshot_steps: Sequence[int] = (),
              log_every: int = 0) -> tuple[RunRecord, dict[int, Any]]:
  """Trains steps [start, end) at LR ``schedule(step)``, evaluating every ``chunk_steps``.

  Returns the record and copies of the state at ``snapshot_steps`` (for decay branches).
  Metrics are fetched one chunk late so that dispatch stays asynchronous.
  """
  k = integer("chunk_steps", chunk_steps)
  hessian_every = integer("hessian_every", hessian_every, 0)
  if start % k or end % k or end <= start:
    raise ValueError(f"{name}: start ({start}) and end ({end}) must be multiples of "
                     f"eval_every ({k}) with end > start")
  record = RunRecord(name)
  snapshots = {}
  state = jax.tree.map(jnp.copy, state)  # the caller's state survives donation.
  if start in snapshot_steps:
    snapshots[start] = jax.tree.map(jnp.copy, state)
  pending = []
  t0 = time.time()

  def flush(item):
    step, lr, train_loss, evaluated, eig = jax.device_get(item)
    record.rows.extend(_rows(name, step, lr, train_loss, evaluated, eig))
    for weights, m in evaluated.items():
      record.flat[(step, weights)] = np.asarray(m["flat"], np.float32)
    if log_every and (step % log_every == 0 or step == end):
      raw = evaluated["raw"]
      avg = "".join(f" {w} {float(m['excess']):.4f}" for w, m in evaluated.items() if w != "raw")
      print(f"[{name}] step {step}/{end} lr {float(lr):.4g} excess {float(raw['excess']):.4f} "
            f"(low {float(raw['excess_low']):.4f} high {float(raw['excess_high']):.4f})"
            f"{avg} ({time.time() - t0:.1f}s)", flush=True)

  for s in range(start, end, k):
    step_numbers = np.arange(s, s + k)
    # np.broadcast_to: some schedules (optax.constant_schedule) return a scalar for any step.
    lrs_K = jnp.asarray(np.broadcast_to(np.asarray(schedule(step_numbers), np.float32),
                                        step_numbers.shape))
    state, train_loss = steps.chunk(state, lrs_K, jax.random.fold_in(data_key, s))
    evaluated = steps.evaluate(state)
    eig = {}
    if hessian_every and (s + k) % hessian_every == 0:
      for weights, w in averaging.eval_params(state[1], state[0]).items():
        eig[weights] = steps.hessian(_f32(w))[0]
      eig["preconditioned"] = steps.preconditioned(state)
    if s + k in snapshot_steps:
      snapshots[s + k] = jax.tree.map(jnp.copy, state)
    if pending:  # fetch the previous chunk's metrics while this one runs.
      flush(pending.pop())
    pending.append((s + k, lrs_K[-1], train_loss, evaluated, eig))
  flush(pending.pop())
  record.final_state = state
  return record, snapshots
