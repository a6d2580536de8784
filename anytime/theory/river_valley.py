"""River-valley lab: a synthetic bigram language behind WSD, WSD-S and weight averaging.

Wen et al. 2024 ("Understanding warmup-stable-decay learning rates: a river valley loss
landscape perspective") argue that the LM pretraining loss is a river valley: at a high constant
LR the iterate oscillates across the valley ("mountain" directions) while it moves along the
river; a learning-rate decay removes the oscillation and reveals the progress made. They trace
the landscape to data whose next-token uncertainty varies across contexts. This module builds
such data and measures the picture:

* ``make_chain``: a Markov chain over V tokens where a share of contexts has one dominant
  successor (low uncertainty) and the others a Dirichlet successor distribution (high
  uncertainty). Its conditional entropy (the Bayes loss) is exact, so every loss is reported as
  the excess over it, in nats, split by context type.
* ``sample_tokens``: token sequences drawn from the chain (stationary start), in JAX.
* ``bigram_model`` (a V x V logits table, whose population loss is exact) and, when
  ``anytime.lm.model`` exists, ``transformer_model``.
* ``run_lab``: one command that trains constant, cosine (one run per budget), WSD (decay branches
  of the constant run at every budget), WSD-S, cyclic cosine, constant + averages and
  1/sqrt + averages on the same data stream, with diagnostics: distances between the raw
  iterate, its averages and its decayed branch; the loss along the straight line between them;
  the top Hessian eigenvalue over time (``top_hessian_eigenpair``, power iteration on
  Hessian-vector products); the trajectory projected on the river direction (difference of
  successive decayed checkpoints) and the top Hessian direction. Writes CSV/JSON + PNG.

Run: ``python -m anytime.theory.river_valley --config configs/river_valley.py --workdir DIR``.

References:
  Wen et al. 2024, arXiv 2410.05192 (river valley, WSD-S).
  Meterez et al. 2026, arXiv 2602.03702 (anytime schedules with weight averaging).
  Hägele et al. 2024 (WSD decay branches); Loshchilov & Hutter 2017 (cyclic cosine).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from anytime import averaging, schedules

Params = Any
METRIC_NAMES = ("excess", "excess_low", "excess_high")


# --------------------------------------------------------------------------- validation


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
  if isinstance(value, bool) or not float(value).is_integer() or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _in_range(name: str, value: Any, low: float, high: float, *, closed: str = "both") -> float:
  value = float(value)
  ok_low = value >= low if closed in ("both", "left") else value > low
  ok_high = value <= high if closed in ("both", "right") else value < high
  if not (ok_low and ok_high and math.isfinite(value)):
    left = "[" if closed in ("both", "left") else "("
    right = "]" if closed in ("both", "right") else ")"
    raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value!r}")
  return value


# --------------------------------------------------------------------------- the chain


@dataclasses.dataclass(frozen=True)
class BigramChain:
  """A Markov chain over ``vocab_size`` tokens with contexts of two uncertainty types."""

  transition_VxV: np.ndarray  # float64 [V, V]: P(next = n | context = c), rows sum to 1.
  low_entropy_V: np.ndarray  # bool [V]: context type (True: one dominant successor).
  stationary_V: np.ndarray  # float64 [V]: the stationary distribution pi.

  @property
  def vocab_size(self) -> int:
    return self.transition_VxV.shape[0]

  @property
  def context_entropy_V(self) -> np.ndarray:
    """H(P(.|c)) in nats for every context c."""
    return context_entropies(self.transition_VxV)

  @property
  def entropy(self) -> float:
    """The conditional entropy rate sum_c pi(c) H(P(.|c)): the Bayes-optimal loss, in nats."""
    return conditional_entropy(self.transition_VxV, self.stationary_V)

  def summary(self) -> dict[str, float]:
    """Entropy overall and per context type, and the stationary mass of each type."""
    h, pi, low = self.context_entropy_V, self.stationary_V, self.low_entropy_V
    mass_low = float(pi[low].sum())

    def type_entropy(mask):
      return float((pi[mask] * h[mask]).sum() / pi[mask].sum()) if mask.any() else float("nan")

    return {
        "vocab_size": self.vocab_size,
        "entropy": self.entropy,
        "log_vocab_size": math.log(self.vocab_size),
        "entropy_low": type_entropy(low),
        "entropy_high": type_entropy(~low),
        "stationary_mass_low": mass_low,
        "num_low_contexts": int(low.sum()),
    }


def context_entropies(transition_VxV: np.ndarray) -> np.ndarray:
  """Entropy in nats of every row of a transition matrix (0 log 0 = 0)."""
  p = np.asarray(transition_VxV, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)


def stationary_distribution(transition_VxV: np.ndarray) -> np.ndarray:
  """The stationary distribution pi = pi P of an irreducible chain (a linear solve)."""
  p = _check_transition(transition_VxV)
  v = p.shape[0]
  # pi (P - I) = 0 with sum(pi) = 1: replace one equation by the normalisation.
  a = (p - np.eye(v)).T
  a[-1, :] = 1.0
  b = np.zeros(v)
  b[-1] = 1.0
  try:
    pi = np.linalg.solve(a, b)
  except np.linalg.LinAlgError:
    pi = np.full(v, np.nan)
  if not np.all(pi > -1e-12) or not np.allclose(pi @ p, pi, atol=1e-10):
    raise ValueError("transition_VxV must describe an irreducible chain (no unique stationary "
                     "distribution found)")
  return np.clip(pi, 0.0, None) / np.clip(pi, 0.0, None).sum()


def conditional_entropy(transition_VxV: np.ndarray, stationary_V: np.ndarray) -> float:
  """H(X_{t+1} | X_t) = sum_c pi(c) H(P(.|c)) in nats: the entropy rate of the chain."""
  p = _check_transition(transition_VxV)
  pi = np.asarray(stationary_V, np.float64)
  if pi.shape != (p.shape[0],) or np.any(pi < 0) or not np.isclose(pi.sum(), 1.0):
    raise ValueError(f"stationary_V must be a probability vector of length {p.shape[0]}")
  return float(pi @ context_entropies(p))


def _check_transition(transition_VxV) -> np.ndarray:
  p = np.asarray(transition_VxV, np.float64)
  if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] < 2:
    raise ValueError(f"transition_VxV must be a square [V, V] matrix with V >= 2, got {p.shape}")
  if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-9):
    raise ValueError("transition_VxV must have non-negative rows that sum to 1")
  return p


def chain_from_transition(transition_VxV: np.ndarray, low_entropy_V: np.ndarray) -> BigramChain:
  """A ``BigramChain`` from an explicit transition matrix and context types."""
  p = _check_transition(transition_VxV)
  low = np.asarray(low_entropy_V, bool)
  if low.shape != (p.shape[0],):
    raise ValueError(f"low_entropy_V must be a bool vector of length {p.shape[0]}")
  return BigramChain(p, low, stationary_distribution(p))


def make_chain(
    vocab_size: int = 64,
    *,
    low_entropy_fraction: float = 0.5,
    dominant_prob: float = 0.98,
    high_entropy_concentration: float = 1.0,
    seed: int = 0,
) -> BigramChain:
  """A bigram chain whose next-token uncertainty varies across contexts.

  ``round(low_entropy_fraction * V)`` contexts (chosen at random) are low-uncertainty: their
  successor is one random token with probability ``dominant_prob``, every other token shares
  the rest uniformly, so H = -p log p - (1-p) log((1-p)/(V-1)). The other contexts are
  high-uncertainty: successors ~ Dirichlet(``high_entropy_concentration``), near log V for a
  large concentration. Every transition has positive probability, so the chain is irreducible.
  """
  v = _positive_int("vocab_size", vocab_size, 2)
  fraction = _in_range("low_entropy_fraction", low_entropy_fraction, 0.0, 1.0)
  p_dom = _in_range("dominant_prob", dominant_prob, 0.0, 1.0, closed="neither")
  alpha = _in_range("high_entropy_concentration", high_entropy_concentration, 0.0, 1e6,
                    closed="right")
  seed = _positive_int("seed", seed, 0)
  rng = np.random.default_rng(seed)
  low = np.zeros(v, bool)
  low[rng.permutation(v)[: round(fraction * v)]] = True
  p = np.empty((v, v))
  for c in range(v):
    if low[c]:
      p[c] = (1.0 - p_dom) / (v - 1)
      p[c, rng.integers(v)] = p_dom
    else:
      row = rng.dirichlet(np.full(v, alpha))
      row = np.maximum(row, 1e-12)  # keeps every transition possible (irreducible chain).
      p[c] = row / row.sum()
  return chain_from_transition(p, low)


def sample_tokens(chain: BigramChain, key: jax.Array, batch_size: int, seq_len: int) -> jax.Array:
  """``batch_size`` sequences of ``seq_len`` tokens, int32 [B, L], starting from pi.

  Jit-able in ``key`` (the chain is a constant). Use ``_sampler`` inside loops.
  """
  batch_size = _positive_int("batch_size", batch_size)
  seq_len = _positive_int("seq_len", seq_len, 2)
  return jax.jit(_sampler(chain, batch_size, seq_len))(key)


def _sampler(chain: BigramChain, batch_size: int, seq_len: int) -> Callable[[jax.Array], jax.Array]:
  log_p_VxV = jnp.log(jnp.asarray(np.maximum(chain.transition_VxV, 1e-30), jnp.float32))
  log_pi_V = jnp.log(jnp.asarray(np.maximum(chain.stationary_V, 1e-30), jnp.float32))

  def sample(key):
    key_first, key_rest = jax.random.split(key)
    first_B = jax.random.categorical(key_first, log_pi_V, shape=(batch_size,))

    def step(prev_B, k):
      nxt = jax.random.categorical(k, log_p_VxV[prev_B])
      return nxt, nxt

    _, rest_LxB = jax.lax.scan(step, first_B, jax.random.split(key_rest, seq_len - 1))
    return jnp.concatenate([first_B[:, None], rest_LxB.T], axis=1).astype(jnp.int32)

  return sample


# --------------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class LabModel:
  """A model of the chain: its params and the losses the lab needs (all jit-able)."""

  name: str
  init_params: Params
  batch_loss: Callable[[Params, jax.Array], jax.Array]  # mean next-token CE on tokens_BxL.
  metrics: Callable[[Params], dict[str, jax.Array]]  # excess / excess_low / excess_high, nats.
  eval_loss: Callable[[Params], jax.Array]  # deterministic loss: Hessian, interpolation.
  canonical: Callable[[Params], Params]  # removes loss-invariant directions before distances.


def bigram_population_metrics(logits_VxV: jax.Array, chain: BigramChain) -> dict[str, jax.Array]:
  """Exact excess loss of a bigram logits table under the chain's stationary distribution.

  excess = sum_c pi(c) KL(P(.|c) || softmax(logits_c)), and the same average restricted to the
  low- and high-uncertainty contexts (normalised by their stationary mass; NaN if empty). The
  population cross-entropy is ``excess + chain.entropy``.
  """
  p = jnp.asarray(chain.transition_VxV, jnp.float32)
  pi = jnp.asarray(chain.stationary_V, jnp.float32)
  low = jnp.asarray(chain.low_entropy_V)
  log_q = jax.nn.log_softmax(logits_VxV.astype(jnp.float32), axis=-1)
  kl_V = jnp.sum(jax.scipy.special.xlogy(p, p) - p * log_q, axis=-1)

  def typed(mask):
    mass = jnp.sum(jnp.where(mask, pi, 0.0))
    return jnp.where(mass > 0, jnp.sum(jnp.where(mask, pi * kl_V, 0.0)) / mass, jnp.nan)

  return {"excess": pi @ kl_V, "excess_low": typed(low), "excess_high": typed(~low)}


def _next_token_ce(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  log_q = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_q, targets_BxL[..., None], axis=-1))


def bigram_model(chain: BigramChain, *, init_scale: float = 0.0, seed: int = 0) -> LabModel:
  """A softmax bigram model: a V x V logits table, exact population loss."""
  init_scale = _in_range("init_scale", init_scale, 0.0, 1e3)
  v = chain.vocab_size
  logits = init_scale * jax.random.normal(jax.random.key(seed), (v, v), jnp.float32)
  entropy = jnp.float32(chain.entropy)

  def batch_loss(params, tokens_BxL):
    return _next_token_ce(params["logits"][tokens_BxL[:, :-1]], tokens_BxL[:, 1:])

  def metrics(params):
    return bigram_population_metrics(params["logits"], chain)

  def eval_loss(params):
    return metrics(params)["excess"] + entropy

  def canonical(params):  # softmax is invariant to adding a constant to a row.
    return {"logits": params["logits"] - params["logits"].mean(axis=-1, keepdims=True)}

  return LabModel("bigram", {"logits": logits}, batch_loss, metrics, eval_loss, canonical)


def transformer_available() -> bool:
  """Whether ``anytime.lm.model`` (the tiny Flax NNX transformer) is importable."""
  return importlib.util.find_spec("anytime.lm.model") is not None


def transformer_model(
    chain: BigramChain,
    model_kwargs: Mapping[str, Any],
    *,
    seq_len: int,
    eval_batch_size: int = 64,
    seed: int = 0,
) -> LabModel:
  """The tiny transformer of ``anytime.lm.model`` on the chain.

  Its excess loss is estimated on a fixed held-out batch of sequences as the mean over positions
  of KL(P(.|x_t) || q(.|x_<=t)): exact given the contexts, so only the contexts are sampled.
  """
  if not transformer_available():
    raise ValueError("model.name='transformer' needs anytime.lm.model, which is not installed")
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from anytime.lm import model as lm_model  # pylint: disable=g-import-not-at-top

  seq_len = _positive_int("seq_len", seq_len, 2)
  eval_batch_size = _positive_int("eval_batch_size", eval_batch_size)
  kwargs = dict(model_kwargs)
  kwargs.setdefault("max_len", seq_len)
  config = lm_model.ModelConfig(vocab_size=chain.vocab_size, **kwargs)
  module = lm_model.Transformer(config, rngs=nnx.Rngs(seed))
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  def apply(params, tokens_BxL):
    return nnx.merge(graphdef, params, rest)(tokens_BxL)

  eval_tokens_BxL = sample_tokens(chain, jax.random.key(seed + 1), eval_batch_size, seq_len)
  ctx_BxL1 = eval_tokens_BxL[:, :-1]
  p = jnp.asarray(chain.transition_VxV, jnp.float32)
  low_BxL1 = jnp.asarray(chain.low_entropy_V)[ctx_BxL1]
  p_BxL1xV = p[ctx_BxL1]
  neg_entropy_BxL1 = jnp.sum(jax.scipy.special.xlogy(p_BxL1xV, p_BxL1xV), axis=-1)

  def batch_loss(params, tokens_BxL):
    return _next_token_ce(apply(params, tokens_BxL[:, :-1]), tokens_BxL[:, 1:])

  def metrics(params):
    log_q = jax.nn.log_softmax(apply(params, ctx_BxL1).astype(jnp.float32), axis=-1)
    kl = neg_entropy_BxL1 - jnp.sum(p_BxL1xV * log_q, axis=-1)

    def typed(mask):
      n = jnp.sum(mask)
      return jnp.where(n > 0, jnp.sum(jnp.where(mask, kl, 0.0)) / n, jnp.nan)

    return {"excess": kl.mean(), "excess_low": typed(low_BxL1), "excess_high": typed(~low_BxL1)}

  def eval_loss(params):
    return metrics(params)["excess"]

  return LabModel("transformer", params, batch_loss, metrics, eval_loss, lambda p: p)


def make_model(chain: BigramChain, model_config: Mapping[str, Any], *, seq_len: int,
               seed: int = 0) -> LabModel:
  """``{"name": "bigram" | "transformer", ...}`` -> ``LabModel``."""
  name = model_config["name"]
  if name == "bigram":
    return bigram_model(chain, init_scale=model_config["init_scale"], seed=seed)
  if name == "transformer":
    return transformer_model(chain, dict(model_config["transformer"]), seq_len=seq_len,
                             eval_batch_size=model_config["eval_batch_size"], seed=seed)
  raise ValueError(f"model.name must be 'bigram' or 'transformer', got {name!r}")


# --------------------------------------------------------------------------- Hessian


def top_hessian_eigenpair(
    loss_fn: Callable[[Params], jax.Array],
    params: Params,
    *,
    num_iterations: int = 50,
    seed: int = 0,
    scale: Params | None = None,
) -> tuple[jax.Array, Params]:
  """Top Hessian eigenvalue of ``loss_fn`` at ``params`` and its unit eigenvector (a tree).

  Power iteration on Hessian-vector products (forward-over-reverse, never forming H); the value
  is the Rayleigh quotient of the last iterate. It finds the eigenvalue of largest magnitude:
  the top one for a convex loss (the bigram model's), possibly a negative one otherwise.
  With ``scale`` (a params-shaped tree d > 0) it is the top eigenpair of diag(d) H diag(d): with
  d = (sqrt(nu_hat) + eps)^(-1/2) Adam's preconditioned sharpness, whose stability threshold at
  learning rate lr is (2 + 2 b1) / ((1 - b1) lr) (Cohen et al. 2022, "Adaptive gradient methods
  at the edge of stability"). Jit-able; ``loss_fn`` is static.
  """
  num_iterations = _positive_int("num_iterations", num_iterations)
  flat, unravel = ravel_pytree(params)
  flat = flat.astype(jnp.float32)
  d = 1.0 if scale is None else ravel_pytree(scale)[0].astype(jnp.float32)

  def hvp(v):
    tangent = unravel(d * v)
    return d * ravel_pytree(jax.jvp(jax.grad(loss_fn), (unravel(flat),), (tangent,))[1])[0]

  v0 = jax.random.normal(jax.random.key(seed), flat.shape, jnp.float32)
  v0 = v0 / jnp.linalg.norm(v0)

  def body(_, carry):
    v, _ = carry
    hv = hvp(v)
    value = v @ hv
    return hv / jnp.maximum(jnp.linalg.norm(hv), 1e-30), value

  v, _ = jax.lax.fori_loop(0, num_iterations, body, (v0, jnp.float32(0)))
  value = v @ hvp(v)
  return value, unravel(v)


# --------------------------------------------------------------------------- optimizer


def make_optimizer_factory(
    optimizer_config: Mapping[str, Any], averages_config: Mapping[str, Any]
) -> Callable[[Any], optax.GradientTransformation]:
  """``lr -> with_averages(base(lr), averages)``: the lab feeds each step's LR as a scalar.

  Building the transform per step keeps one compiled training loop for every schedule; the
  optimizer state does not depend on the LR value. ``optimizer.name``: adam | sgd.
  """
  name = optimizer_config["name"]
  if name not in ("adam", "sgd"):
    raise ValueError(f"optimizer.name must be 'adam' or 'sgd', got {name!r}")
  averages = {n: averaging.from_config(spec) for n, spec in dict(averages_config).items()}
  if not averages:
    raise ValueError("averages must name at least one average")

  def factory(learning_rate):
    if name == "adam":
      base = optax.adam(learning_rate, b1=optimizer_config["b1"], b2=optimizer_config["b2"],
                        eps=optimizer_config["eps"])
    else:
      base = optax.sgd(learning_rate, momentum=optimizer_config["momentum"] or None)
    return averaging.with_averages(base, averages)

  factory.adam_b2 = optimizer_config["b2"] if name == "adam" else None
  factory.adam_eps = optimizer_config["eps"] if name == "adam" else None
  return factory


# --------------------------------------------------------------------------- training


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


class Trainer:
  """Trains a ``LabModel`` on fresh chain samples with ``lax.scan`` over chunks of steps.

  Every run sees the same data stream: the minibatch of step t depends only on (seed, t), so a
  decay branch sees the data its main run would have seen (common random numbers).
  """

  def __init__(self, model: LabModel, chain: BigramChain,
               tx_factory: Callable[[Any], optax.GradientTransformation], *, batch_size: int,
               seq_len: int, chunk_steps: int, hessian_iterations: int, seed: int):
    batch_size = _positive_int("batch_size", batch_size)
    seq_len = _positive_int("seq_len", seq_len, 2)
    chunk_steps = _positive_int("chunk_steps", chunk_steps)
    hessian_iterations = _positive_int("hessian_iterations", hessian_iterations)
    self.model = model
    self.tx_factory = tx_factory
    self.chunk_steps = chunk_steps
    self.data_key = jax.random.key(seed)
    sample = _sampler(chain, batch_size, seq_len)

    def chunk(state, lrs_K, key):
      def body(carry, lr_and_key):
        params, opt_state = carry
        lr, k = lr_and_key
        loss, grads = jax.value_and_grad(model.batch_loss)(params, sample(k))
        updates, opt_state = tx_factory(lr).update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

      keys = jax.random.split(key, lrs_K.shape[0])
      state, losses_K = jax.lax.scan(body, state, (lrs_K, keys))
      return state, losses_K.mean()

    def evaluate(state):
      params, opt_state = state
      weights = averaging.eval_params(opt_state, params)
      out = {}
      raw_flat = ravel_pytree(model.canonical(params))[0]
      for name, w in weights.items():
        w = jax.tree.map(lambda x: x.astype(jnp.float32), w)
        flat = ravel_pytree(model.canonical(w))[0]
        out[name] = dict(model.metrics(w), distance_to_raw=jnp.linalg.norm(flat - raw_flat),
                         flat=flat)
      return out

    def hessian(params):
      return top_hessian_eigenpair(model.eval_loss, params, num_iterations=hessian_iterations)

    def preconditioned(state):  # Adam only: the top eigenvalue of D H D at the raw iterate.
      params, opt_state = state
      adam = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
          x, optax.ScaleByAdamState)) if isinstance(x, optax.ScaleByAdamState)]
      if not adam:
        return jnp.float32(jnp.nan)
      b2, eps = getattr(tx_factory, "adam_b2", 0.999), getattr(tx_factory, "adam_eps", 1e-8)
      nu_hat = jax.tree.map(lambda n: n / (1.0 - b2 ** adam[0].count.astype(jnp.float32)),
                            adam[0].nu)
      scale = jax.tree.map(lambda n: (jnp.sqrt(n) + eps) ** -0.5, nu_hat)
      return top_hessian_eigenpair(model.eval_loss, params, num_iterations=hessian_iterations,
                                   scale=scale)[0]

    self._chunk = jax.jit(chunk, donate_argnums=0)
    self._evaluate = jax.jit(evaluate)
    self.hessian = jax.jit(hessian)
    self.preconditioned = jax.jit(preconditioned)

  def init_state(self):
    params = self.model.init_params
    return params, self.tx_factory(0.0).init(params)

  def run(self, name: str, schedule: Callable[[Any], Any], state, start: int, end: int, *,
          hessian_every: int = 0, snapshot_steps: Sequence[int] = (),
          log_every: int = 0) -> tuple[RunRecord, dict[int, Any]]:
    """Trains steps [start, end) with LR ``schedule(step)``; evaluates every chunk.

    Returns the record and copies of the state at ``snapshot_steps`` (for decay branches).
    """
    k = self.chunk_steps
    hessian_every = _positive_int("hessian_every", hessian_every, 0)
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
      for weights, m in evaluated.items():
        row = {"run": name, "step": step, "lr": float(lr), "weights": weights,
               "train_loss": float(train_loss)}
        row.update({key: float(m[key]) for key in METRIC_NAMES})
        row["distance_to_raw"] = float(m["distance_to_raw"])
        row["top_hessian_eigenvalue"] = float(eig[weights]) if weights in eig else float("nan")
        pre = eig.get("preconditioned") if weights == "raw" else None
        row["top_preconditioned_eigenvalue"] = float(pre) if pre is not None else float("nan")
        record.rows.append(row)
        record.flat[(step, weights)] = np.asarray(m["flat"], np.float32)
      if log_every and (step % log_every == 0 or step == end):
        raw = evaluated["raw"]
        avg = "".join(f" {w} {float(m['excess']):.4f}" for w, m in evaluated.items() if w != "raw")
        print(f"[{name}] step {step}/{end} lr {float(lr):.4g} excess {float(raw['excess']):.4f} "
              f"(low {float(raw['excess_low']):.4f} high {float(raw['excess_high']):.4f})"
              f"{avg} ({time.time() - t0:.1f}s)", flush=True)

    for s in range(start, end, k):
      steps = np.arange(s, s + k)
      # np.broadcast_to: some schedules (optax.constant_schedule) return a scalar for any step.
      lrs_K = jnp.asarray(np.broadcast_to(np.asarray(schedule(steps), np.float32), steps.shape))
      state, train_loss = self._chunk(state, lrs_K, jax.random.fold_in(self.data_key, s))
      evaluated = self._evaluate(state)
      eig = {}
      if hessian_every and (s + k) % hessian_every == 0:
        for weights, w in averaging.eval_params(state[1], state[0]).items():
          eig[weights] = self.hessian(jax.tree.map(lambda x: x.astype(jnp.float32), w))[0]
        eig["preconditioned"] = self.preconditioned(state)
      if s + k in snapshot_steps:
        snapshots[s + k] = jax.tree.map(jnp.copy, state)
      if pending:  # fetch the previous chunk's metrics while this one runs.
        flush(pending.pop())
      pending.append((s + k, lrs_K[-1], train_loss, evaluated, eig))
    flush(pending.pop())
    record.final_state = state
    return record, snapshots


# --------------------------------------------------------------------------- the lab


def _wsd_s_schedule(peak: float, budgets: Sequence[int], cooldowns: Sequence[int],
                    config) -> schedules.Schedule:
  """WSD-S with one cooldown length per budget: the pointwise minimum of single-decay WSD-S.

  The decay windows do not overlap, so the minimum equals ``schedules.wsd_s`` when all
  cooldowns are equal, and otherwise lets each budget keep the WSD cooldown fraction.
  """
  parts = [
      schedules.wsd_s(peak, decay_ends=[b], cooldown_steps=c, shape=config.cooldown_shape,
                      final_fraction=config.final_fraction, warmup_steps=config.warmup_steps)
      for b, c in zip(budgets, cooldowns)
  ]

  def schedule(step):
    return jnp.min(jnp.stack([jnp.asarray(part(step), jnp.float32) for part in parts]), axis=0)

  return schedule


def validate_config(config) -> None:
  """Checks a lab config before any work; raises ValueError naming the bad field."""
  k = _positive_int("eval_every", config.eval_every)
  budgets = list(config.budgets)
  if not budgets or sorted(budgets) != budgets or len(set(budgets)) != len(budgets):
    raise ValueError(f"budgets must be a non-empty increasing list of steps, got {budgets}")
  for b in budgets:
    _positive_int("budgets[i]", b)
    if b % k:
      raise ValueError(f"budgets must be multiples of eval_every ({k}), got {b}")
  _in_range("peak_lr", config.peak_lr, 0.0, 1e6, closed="right")
  _in_range("cooldown_fraction", config.cooldown_fraction, 0.0, 1.0, closed="right")
  _in_range("final_fraction", config.final_fraction, 0.0, 1.0)
  _positive_int("warmup_steps", config.warmup_steps, 0)
  if config.warmup_steps >= budgets[0]:
    raise ValueError(f"warmup_steps must be < budgets[0] ({budgets[0]}), "
                     f"got {config.warmup_steps}")
  if config.cooldown_shape not in schedules.COOLDOWN_SHAPES:
    raise ValueError(f"cooldown_shape must be one of {schedules.COOLDOWN_SHAPES}, "
                     f"got {config.cooldown_shape!r}")
  runs = set(config.runs)
  known = {"constant", "inverse_sqrt", "cosine", "wsd", "wsd_s", "cyclic_cosine"}
  if not runs or runs - known:
    raise ValueError(f"runs must be a non-empty subset of {sorted(known)}, got {sorted(runs)}")
  if "wsd" in runs and "constant" not in runs:
    raise ValueError("runs: 'wsd' branches from the 'constant' run; add 'constant'")
  cooldowns = _cooldowns(config)
  previous = config.warmup_steps
  for b, c in zip(budgets, cooldowns):
    if b - c < previous:
      raise ValueError(f"cooldown_fraction: the cooldown of budget {b} ({c} steps) starts before "
                       f"step {previous} (warmup or the previous budget)")
    previous = b
  _positive_int("cyclic_cycle_steps", config.cyclic_cycle_steps)
  _in_range("inverse_sqrt_offset", config.inverse_sqrt_offset, 0.0, 1e12, closed="right")
  _in_range("cosine_final_fraction", config.cosine_final_fraction, 0.0, 1.0)
  _positive_int("data.batch_size", config.data.batch_size)
  _positive_int("data.seq_len", config.data.seq_len, 2)
  _positive_int("diagnostics.hessian_every", config.diagnostics.hessian_every, 0)
  _positive_int("diagnostics.power_iterations", config.diagnostics.power_iterations)
  _positive_int("diagnostics.interpolation_points", config.diagnostics.interpolation_points, 2)
  if config.diagnostics.hessian_every and config.diagnostics.hessian_every % k:
    raise ValueError(f"diagnostics.hessian_every must be a multiple of eval_every ({k}), "
                     f"got {config.diagnostics.hessian_every}")
  if config.reference_average not in config.averages:
    raise ValueError(f"reference_average must be one of the averages {sorted(config.averages)}, "
                     f"got {config.reference_average!r}")
  if config.model.name not in ("bigram", "transformer"):
    raise ValueError(f"model.name must be 'bigram' or 'transformer', got {config.model.name!r}")


def _cooldowns(config) -> list[int]:
  k = config.eval_every
  # Rounded to whole chunks so every branch starts where the constant run is evaluated.
  return [max(k, k * round(config.cooldown_fraction * b / k)) for b in config.budgets]


def run_lab(config, workdir: str | None = None, *, verbose: bool = True) -> dict[str, Any]:
  """Runs every configured schedule on one chain and writes CSV/JSON/PNG to ``workdir``.

  Returns the summary (also ``summary.json``) with the measured excess losses at each budget.
  """
  validate_config(config)
  t_start = time.time()
  chain = make_chain(**config.chain)
  model = make_model(chain, config.model, seq_len=config.data.seq_len, seed=config.seed)
  tx_factory = make_optimizer_factory(config.optimizer, config.averages)
  trainer = Trainer(model, chain, tx_factory, batch_size=config.data.batch_size,
                    seq_len=config.data.seq_len, chunk_steps=config.eval_every,
                    hessian_iterations=config.diagnostics.power_iterations, seed=config.seed)
  budgets = list(config.budgets)
  total = budgets[-1]
  cooldowns = _cooldowns(config)
  peak, warm = config.peak_lr, config.warmup_steps
  hess = config.diagnostics.hessian_every
  log = config.log_every if verbose else 0
  if verbose:
    print(f"chain: {json.dumps(chain.summary())}", flush=True)
  records: dict[str, RunRecord] = {}
  init = trainer.init_state()
  constant = schedules.constant(peak, warmup_steps=warm)
  runs = set(config.runs)

  if "constant" in runs:
    branch_starts = [b - c for b, c in zip(budgets, cooldowns)]
    records["constant"], snapshots = trainer.run(
        "constant", constant, init, 0, total, hessian_every=hess,
        snapshot_steps=branch_starts + budgets, log_every=log)
    if "wsd" in runs:
      for b, c in zip(budgets, cooldowns):
        branch = schedules.decay_branch(constant, b - c, c, config.cooldown_shape,
                                        config.final_fraction)
        records[f"wsd_{b}"], _ = trainer.run(f"wsd_{b}", branch, snapshots[b - c], b - c, b,
                                             hessian_every=hess, log_every=log)
  if "inverse_sqrt" in runs:
    schedule = schedules.inverse_sqrt(peak, offset=config.inverse_sqrt_offset, warmup_steps=warm)
    records["inverse_sqrt"], _ = trainer.run("inverse_sqrt", schedule, init, 0, total,
                                             hessian_every=hess, log_every=log)
  if "cosine" in runs:
    for b in budgets:
      schedule = schedules.cosine(peak, total_steps=b, final_fraction=config.cosine_final_fraction,
                                  warmup_steps=warm)
      records[f"cosine_{b}"], _ = trainer.run(f"cosine_{b}", schedule, init, 0, b,
                                              hessian_every=hess, log_every=log)
  if "wsd_s" in runs:
    records["wsd_s"], _ = trainer.run("wsd_s", _wsd_s_schedule(peak, budgets, cooldowns, config),
                                      init, 0, total, hessian_every=hess, log_every=log)
  if "cyclic_cosine" in runs:
    cyclic = schedules.cyclic_cosine(peak, cycle_steps=config.cyclic_cycle_steps,
                                     final_fraction=config.cosine_final_fraction)

    def schedule(step):  # warmup inside the first cycle, so cycles end at multiples of it.
      return jnp.minimum(constant(step), cyclic(step))

    records["cyclic_cosine"], _ = trainer.run("cyclic_cosine", schedule, init, 0, total,
                                              hessian_every=hess, log_every=log)
  train_seconds = time.time() - t_start

  summary = {
      "chain": chain.summary(),
      "model": model.name,
      "num_params": int(ravel_pytree(model.init_params)[0].size),
      "budgets": budgets,
      "cooldown_steps": cooldowns,
      "optimizer": config.optimizer.to_dict(),
      "peak_lr": peak,
      "results": _budget_table(records, budgets, list(config.averages)),
  }
  summary["findings"] = _findings(records, budgets, cooldowns, config.reference_average)
  diagnostics = {}
  if "constant" in records and "wsd" in runs:
    diagnostics = _diagnostics(trainer, model, records, budgets, config, snapshots)
    summary["diagnostics"] = diagnostics.pop("summary")
  summary["seconds_training"] = round(train_seconds, 1)
  summary["seconds_total"] = round(time.time() - t_start, 1)
  if workdir:
    _write_outputs(workdir, config, records, summary, diagnostics)
    summary["seconds_total"] = round(time.time() - t_start, 1)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2, default=_json_default)
  if verbose:
    print(f"done in {summary['seconds_total']:.1f}s", flush=True)
  return summary


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  raise TypeError(type(x).__name__)


def _budget_table(records, budgets, average_names) -> list[dict[str, Any]]:
  """Rows (budget, method, weights, excess...) at every budget for every method."""
  rows = []

  def add(b, method, record, step, weights="raw"):
    if record is None:
      return
    try:
      row = {"budget": b, "method": method, "weights": weights}
      row.update({m: record.value(step, weights, m) for m in METRIC_NAMES})
      rows.append(row)
    except KeyError:
      pass

  for b in budgets:
    for run in ("constant", "inverse_sqrt"):
      for weights in ["raw"] + average_names:
        method = run if weights == "raw" else f"{run}+{weights}"
        add(b, method, records.get(run), b, weights)
    add(b, "cosine", records.get(f"cosine_{b}"), b)
    add(b, "wsd", records.get(f"wsd_{b}"), b)
    add(b, "wsd_s", records.get("wsd_s"), b)
    add(b, "cyclic_cosine", records.get("cyclic_cosine"), b)
  return rows


def _findings(records, budgets, cooldowns, reference) -> dict[str, Any]:
  """The issue's questions, answered with the measured numbers."""
  out = {}
  if "constant" in records and all(f"wsd_{b}" in records for b in budgets):
    const = records["constant"]
    per_budget = []
    for b, c in zip(budgets, cooldowns):
      before = const.value(b - c)
      raw = const.value(b)
      wsd = records[f"wsd_{b}"].value(b)
      avg = const.value(b, reference)
      per_budget.append({
          "budget": b,
          "constant_excess_at_branch_start": before,
          "constant_excess_at_budget": raw,
          "wsd_excess_at_budget": wsd,
          "decay_drop_factor": raw / wsd,
          f"constant+{reference}_excess": avg,
          "ema_gap_closed": (raw - avg) / (raw - wsd) if raw != wsd else float("nan"),
      })
    out["wsd_vs_constant"] = per_budget
  methods = [m for m in ("wsd", "wsd_s", "cyclic_cosine", "cosine")
             if m in records or f"{m}_{budgets[0]}" in records]
  if methods:
    out["one_run_budgets"] = {
        str(b): {m: _method_value(records, m, b) for m in methods} for b in budgets
    }
  return out


def _method_value(records, method, b):
  record = records.get(f"{method}_{b}") or records.get(method)
  try:
    return record.value(b) if record else float("nan")
  except KeyError:
    return float("nan")


def _diagnostics(trainer, model, records, budgets, config, snapshots) -> dict[str, Any]:
  """Distances, straight-line interpolation and the river/mountain projection."""
  ref = config.reference_average
  alphas = np.linspace(config.diagnostics.interpolation_min, config.diagnostics.interpolation_max,
                       config.diagnostics.interpolation_points)
  _, unravel = ravel_pytree(jax.tree.map(lambda x: x.astype(jnp.float32), model.init_params))
  # lax.map, not vmap: vmapping the NNX transformer over many parameter copies gave wrong
  # losses on CPU (jax 0.10.2), while a sequential map matches the unbatched metrics.
  metrics_along = jax.jit(lambda line: jax.lax.map(lambda flat: model.metrics(unravel(flat)),
                                                   line))
  budget_rows, interp_rows = [], []
  for b in budgets:
    params, opt_state = snapshots[b]
    raw = jax.tree.map(lambda x: x.astype(jnp.float32), params)
    avg = jax.tree.map(lambda x: x.astype(jnp.float32), averaging.averaged_params(opt_state, ref))
    wsd = records[f"wsd_{b}"].final_state[0]
    flat = {n: ravel_pytree(w)[0] for n, w in (("raw", raw), (ref, avg), ("wsd", wsd))}
    canon = {n: ravel_pytree(model.canonical(unravel(v)))[0] for n, v in flat.items()}
    eigs = {n: float(trainer.hessian(unravel(v))[0]) for n, v in flat.items()}
    budget_rows.append({
        "budget": b,
        "distance_raw_to_wsd": float(jnp.linalg.norm(canon["raw"] - canon["wsd"])),
        f"distance_raw_to_{ref}": float(jnp.linalg.norm(canon["raw"] - canon[ref])),
        f"distance_{ref}_to_wsd": float(jnp.linalg.norm(canon[ref] - canon["wsd"])),
        "top_hessian_raw": eigs["raw"],
        f"top_hessian_{ref}": eigs[ref],
        "top_hessian_wsd": eigs["wsd"],
    })
    for target in ("wsd", ref):
      line = flat["raw"][None] + jnp.asarray(alphas, jnp.float32)[:, None] * (
          flat[target] - flat["raw"])[None]
      values = jax.device_get(metrics_along(line))
      best = int(np.argmin(values["excess"]))
      budget_rows[-1][f"line_to_{target}_argmin_alpha"] = float(alphas[best])
      budget_rows[-1][f"line_to_{target}_min_excess"] = float(values["excess"][best])
      for i, a in enumerate(alphas):
        interp_rows.append({"budget": b, "target": target, "alpha": float(a),
                            **{m: float(values[m][i]) for m in METRIC_NAMES}})

  projection_rows, directions = [], {}
  if len(budgets) >= 2:
    b1, b2 = budgets[-2], budgets[-1]
    w1 = records[f"wsd_{b1}"].flat[(b1, "raw")]
    w2 = records[f"wsd_{b2}"].flat[(b2, "raw")]
    river = w2 - w1
    river = river / max(np.linalg.norm(river), 1e-30)
    raw_last = jax.tree.map(lambda x: x.astype(jnp.float32), snapshots[b2][0])
    eig, vec = trainer.hessian(raw_last)
    mountain = np.asarray(ravel_pytree(model.canonical(vec))[0], np.float64)
    mountain = mountain / max(np.linalg.norm(mountain), 1e-30)
    cosine = float(mountain @ river)
    mountain = mountain - cosine * river
    mountain = mountain / max(np.linalg.norm(mountain), 1e-30)
    directions = {"river_from_budgets": [b1, b2], "mountain_eigenvalue": float(eig),
                  "mountain_river_cosine": cosine}
    for name, record in records.items():
      if not (name == "constant" or name.startswith("wsd")):
        continue
      for (step, weights), vec_flat in sorted(record.flat.items()):
        if weights not in ("raw", ref) or (weights != "raw" and name != "constant"):
          continue
        d = vec_flat.astype(np.float64) - w1
        projection_rows.append({"run": name, "weights": weights, "step": step,
                                "river": float(d @ river), "mountain": float(d @ mountain),
                                "residual_norm": float(np.linalg.norm(
                                    d - (d @ river) * river - (d @ mountain) * mountain))})
  return {"summary": {"per_budget": budget_rows, "projection": directions},
          "interpolation": interp_rows, "projection": projection_rows}


# --------------------------------------------------------------------------- outputs


def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
  import csv  # pylint: disable=g-import-not-at-top

  if not rows:
    return
  fields = list(rows[0])
  for row in rows:
    fields += [k for k in row if k not in fields]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def _write_outputs(workdir, config, records, summary, diagnostics) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=2, default=str)
  curves = [row for record in records.values() for row in record.rows]
  _write_csv(os.path.join(workdir, "curves.csv"), curves)
  _write_csv(os.path.join(workdir, "budgets.csv"), summary["results"])
  if diagnostics:
    _write_csv(os.path.join(workdir, "interpolation.csv"), diagnostics["interpolation"])
    _write_csv(os.path.join(workdir, "projection.csv"), diagnostics["projection"])
  plot_all(workdir, records, summary, diagnostics, config.reference_average)


def plot_all(workdir: str, records, summary, diagnostics, reference: str) -> list[str]:
  """Writes the lab's PNG figures; returns their paths."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  paths = []

  def series(name, weights="raw", metric="excess"):
    rows = [r for r in records[name].rows if r["weights"] == weights] if name in records else []
    return np.array([r["step"] for r in rows]), np.array([r[metric] for r in rows])

  def save(fig, filename):
    path = os.path.join(workdir, filename)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

  budgets = summary["budgets"]
  colors = plt.cm.viridis(np.linspace(0, 0.9, len(budgets)))

  # 1. Loss curves and learning rates.
  fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(9, 7), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
  for name, weights, style, label in [
      ("constant", "raw", dict(color="k", lw=1), "constant (raw)"),
      ("constant", reference, dict(color="tab:red", lw=1.5), f"constant + {reference}"),
      ("inverse_sqrt", reference, dict(color="tab:purple", lw=1.2), f"1/sqrt + {reference}"),
      ("wsd_s", "raw", dict(color="tab:orange", lw=1), "WSD-S"),
      ("cyclic_cosine", "raw", dict(color="tab:green", lw=1, alpha=0.7), "cyclic cosine"),
  ]:
    x, y = series(name, weights)
    if len(x):
      ax.plot(x, y, label=label, **style)
      if weights == "raw":
        ax_lr.plot(x, series(name, "raw", "lr")[1], **style)
  for b, color in zip(budgets, colors):
    x, y = series(f"wsd_{b}")
    if len(x):
      ax.plot(x, y, color=color, lw=2, label=f"WSD branch {b}")
      ax_lr.plot(x, series(f"wsd_{b}", "raw", "lr")[1], color=color, lw=2)
    x, y = series(f"cosine_{b}")
    if len(x):
      ax.plot(x, y, color=color, lw=1, ls="--", label=f"cosine {b}")
  ax.set_yscale("log")
  ax.set_ylabel("excess loss over Bayes (nats)")
  ax.legend(fontsize=7, ncol=2)
  ax.set_title("River valley: excess population loss")
  ax_lr.set_ylabel("LR")
  ax_lr.set_xlabel("step")
  save(fig, "loss_curves.png")

  # 2. Excess split by context type.
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, metric, title in zip(axes, ("excess_low", "excess_high"),
                               ("low-uncertainty contexts", "high-uncertainty contexts")):
    for name, weights, style, label in [
        ("constant", "raw", dict(color="k", lw=1), "constant (raw)"),
        ("constant", reference, dict(color="tab:red", lw=1.5), f"constant + {reference}"),
    ]:
      x, y = series(name, weights, metric)
      if len(x):
        ax.plot(x, y, label=label, **style)
    for b, color in zip(budgets, colors):
      x, y = series(f"wsd_{b}", "raw", metric)
      if len(x):
        ax.plot(x, y, color=color, lw=2, label=f"WSD {b}")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
  axes[0].set_ylabel("excess loss (nats)")
  axes[0].legend(fontsize=7)
  save(fig, "context_types.png")

  # 3. Excess at each budget per method.
  fig, ax = plt.subplots(figsize=(8, 4.5))
  methods = sorted({r["method"] for r in summary["results"]})
  for method in methods:
    rows = [r for r in summary["results"] if r["method"] == method]
    style = dict(ls="--", marker="x", ms=9) if method == "wsd_s" else dict(marker="o")
    ax.plot([r["budget"] for r in rows], [r["excess"] for r in rows], label=method, **style)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("budget (steps)")
  ax.set_ylabel("excess loss at budget (nats)")
  ax.legend(fontsize=7, ncol=2)
  save(fig, "budgets.png")

  # 4. Sharpness and distances over time.
  fig, (ax, ax_pre, ax_d) = plt.subplots(1, 3, figsize=(15, 4))
  for name, weights, style, label in [
      ("constant", "raw", dict(color="k"), "constant (raw)"),
      ("constant", reference, dict(color="tab:red"), f"constant + {reference}"),
      ("wsd_s", "raw", dict(color="tab:orange"), "WSD-S"),
  ]:
    x, y = series(name, weights, "top_hessian_eigenvalue")
    keep = np.isfinite(y) if len(y) else []
    if len(x) and np.any(keep):
      ax.plot(x[keep], y[keep], marker=".", label=label, **style)
  for b, color in zip(budgets, colors):
    x, y = series(f"wsd_{b}", "raw", "top_hessian_eigenvalue")
    keep = np.isfinite(y) if len(y) else []
    if len(x) and np.any(keep):
      ax.plot(x[keep], y[keep], color=color, marker=".", lw=2, label=f"WSD {b}")
  ax.set_xlabel("step")
  ax.set_ylabel("top Hessian eigenvalue")
  ax.set_title("sharpness (power iteration)")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  optimizer = summary.get("optimizer", {})
  for name, style, label in [("constant", dict(color="k"), "constant"),
                             ("wsd_s", dict(color="tab:orange"), "WSD-S")]:
    x, y = series(name, "raw", "top_preconditioned_eigenvalue")
    keep = np.isfinite(y) if len(y) else []
    if len(x) and np.any(keep):
      ax_pre.plot(x[keep], y[keep], marker=".", label=f"{label}: top eig of D H D", **style)
  for b, color in zip(budgets, colors):
    x, y = series(f"wsd_{b}", "raw", "top_preconditioned_eigenvalue")
    keep = np.isfinite(y) if len(y) else []
    if len(x) and np.any(keep):
      ax_pre.plot(x[keep], y[keep], color=color, marker=".", lw=2, label=f"WSD {b}")
  if optimizer.get("name") == "adam" and "constant" in records:
    x, lr = series("constant", "raw", "lr")
    b1 = optimizer["b1"]
    ax_pre.plot(x, (2 + 2 * b1) / ((1 - b1) * lr), color="gray", ls=":",
                label="Adam stability threshold at the constant LR")
  ax_pre.set_yscale("log")
  ax_pre.set_xlabel("step")
  ax_pre.set_title("Adam-preconditioned sharpness")
  if ax_pre.get_legend_handles_labels()[0]:
    ax_pre.legend(fontsize=7)
  x, y = series("constant", reference, "distance_to_raw")
  if len(x):
    ax_d.plot(x, y, color="tab:red", label=f"|raw - {reference}| (constant run)")
  for row in summary.get("diagnostics", {}).get("per_budget", []):
    ax_d.scatter([row["budget"]], [row["distance_raw_to_wsd"]], color="tab:blue", zorder=3,
                 label="|raw - WSD branch| at budget" if row is
                 summary["diagnostics"]["per_budget"][0] else None)
  ax_d.set_xlabel("step")
  ax_d.set_ylabel("distance (centered params)")
  if ax_d.get_legend_handles_labels()[0]:
    ax_d.legend(fontsize=7)
  save(fig, "sharpness_distance.png")

  if diagnostics:
    # 5. Loss on the straight line from the raw iterate to the decayed / averaged one.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, target in zip(axes, ("wsd", reference)):
      for b, color in zip(budgets, colors):
        rows = [r for r in diagnostics["interpolation"]
                if r["budget"] == b and r["target"] == target]
        ax.plot([r["alpha"] for r in rows], [r["excess"] for r in rows], color=color,
                label=f"budget {b}")
      ax.axvline(0, color="gray", lw=0.5)
      ax.axvline(1, color="gray", lw=0.5)
      ax.set_yscale("log")
      ax.set_xlabel(f"alpha: raw (0) -> {target} (1)")
      ax.set_title(f"loss on the line raw -> {target}")
    axes[0].set_ylabel("excess loss (nats)")
    axes[0].legend(fontsize=7)
    save(fig, "interpolation.png")

    # 6. River / mountain projection.
    if diagnostics["projection"]:
      fig, ax = plt.subplots(figsize=(7, 5))
      rows = diagnostics["projection"]
      for name, weights, style, label in [
          ("constant", "raw", dict(color="k", lw=0.6, marker=".", ms=3), "constant (raw)"),
          ("constant", reference, dict(color="tab:red", lw=1.2), f"constant + {reference}"),
      ]:
        pts = [(r["river"], r["mountain"]) for r in rows
               if r["run"] == name and r["weights"] == weights]
        if pts:
          ax.plot(*np.array(pts).T, label=label, **style)
      for b, color in zip(budgets, colors):
        pts = [(r["river"], r["mountain"]) for r in rows if r["run"] == f"wsd_{b}"]
        if pts:
          ax.plot(*np.array(pts).T, color=color, lw=2, marker="o", ms=3, label=f"WSD {b}")
      ax.set_xlabel("river coordinate (difference of the last two decayed checkpoints)")
      ax.set_ylabel("mountain coordinate (top Hessian direction)")
      ax.legend(fontsize=7)
      ax.set_title("iterates projected on river x mountain")
      save(fig, "river_projection.png")
  return paths


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top

  del argv
  config = flags.FLAGS.config
  run_lab(config, flags.FLAGS.workdir)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file("config", None, "Path to the lab config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for CSV/JSON/PNG outputs.")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
