"""The bigram language of the river-valley lab: a Markov chain, its Bayes loss, a sampler.

A share of contexts has one dominant successor (low next-token uncertainty), the others a
Dirichlet successor distribution (high uncertainty). The conditional entropy (the Bayes loss) is
exact, so the lab reports every loss as the excess over it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from anytime.theory._checks import in_range, integer

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
  v = integer("vocab_size", vocab_size, 2)
  fraction = in_range("low_entropy_fraction", low_entropy_fraction, 0.0, 1.0)
  p_dom = in_range("dominant_prob", dominant_prob, 0.0, 1.0, closed="neither")
  alpha = in_range("high_entropy_concentration", high_entropy_concentration, 0.0, 1e6,
                    closed="right")
  seed = integer("seed", seed, 0)
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

  Jit-able in ``key`` (the chain is a constant). Use ``make_sampler`` inside loops.
  """
  batch_size = integer("batch_size", batch_size)
  seq_len = integer("seq_len", seq_len, 2)
  return jax.jit(make_sampler(chain, batch_size, seq_len))(key)


def make_sampler(chain: BigramChain, batch_size: int,
                 seq_len: int) -> Callable[[jax.Array], jax.Array]:
  """``key -> tokens_BxL`` (int32), jit-able: the sampler behind ``sample_tokens``."""
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

