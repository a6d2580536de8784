"""Models of the chain for the river-valley lab: a bigram logits table and the LM transformer.

Each is a ``LabModel``: params as a plain pytree and jit-able losses. The transformer is
``anytime.lm.model`` through its functional view (``init``/``apply`` on pure-dict params).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from anytime.lm import model as lm_model
from anytime.theory._checks import in_range, integer
from anytime.theory.river_valley.chain import BigramChain, sample_tokens

Params = Any
METRIC_NAMES = ("excess", "excess_low", "excess_high")


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


def next_token_ce(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy in nats (float32)."""
  log_q = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_q, targets_BxL[..., None], axis=-1))


def bigram_model(chain: BigramChain, *, init_scale: float = 0.0, seed: int = 0) -> LabModel:
  """A softmax bigram model: a V x V logits table, exact population loss."""
  init_scale = in_range("init_scale", init_scale, 0.0, 1e3)
  v = chain.vocab_size
  logits = init_scale * jax.random.normal(jax.random.key(seed), (v, v), jnp.float32)
  entropy = jnp.float32(chain.entropy)

  def batch_loss(params, tokens_BxL):
    return next_token_ce(params["logits"][tokens_BxL[:, :-1]], tokens_BxL[:, 1:])

  def metrics(params):
    return bigram_population_metrics(params["logits"], chain)

  def eval_loss(params):
    return metrics(params)["excess"] + entropy

  def canonical(params):  # softmax is invariant to adding a constant to a row.
    return {"logits": params["logits"] - params["logits"].mean(axis=-1, keepdims=True)}

  return LabModel("bigram", {"logits": logits}, batch_loss, metrics, eval_loss, canonical)


def transformer_model(
    chain: BigramChain,
    model_kwargs: Mapping[str, Any],
    *,
    seq_len: int,
    eval_batch_size: int = 64,
    seed: int = 0,
) -> LabModel:
  """The transformer of ``anytime.lm.model`` on the chain (pure-dict params).

  Its excess loss is estimated on a fixed held-out batch of sequences as the mean over positions
  of KL(P(.|x_t) || q(.|x_<=t)): exact given the contexts, so only the contexts are sampled.
  """
  seq_len = integer("seq_len", seq_len, 2)
  eval_batch_size = integer("eval_batch_size", eval_batch_size)
  kwargs = dict(model_kwargs)
  kwargs.setdefault("max_len", seq_len)
  config = lm_model.ModelConfig(vocab_size=chain.vocab_size, **kwargs)
  graphdef, params = lm_model.init(config, jax.random.key(seed))

  def apply(params, tokens_BxL):
    return lm_model.apply(graphdef, params, tokens_BxL)

  eval_tokens_BxL = sample_tokens(chain, jax.random.key(seed + 1), eval_batch_size, seq_len)
  ctx_BxL1 = eval_tokens_BxL[:, :-1]
  p = jnp.asarray(chain.transition_VxV, jnp.float32)
  low_BxL1 = jnp.asarray(chain.low_entropy_V)[ctx_BxL1]
  p_BxL1xV = p[ctx_BxL1]
  neg_entropy_BxL1 = jnp.sum(jax.scipy.special.xlogy(p_BxL1xV, p_BxL1xV), axis=-1)

  def batch_loss(params, tokens_BxL):
    return next_token_ce(apply(params, tokens_BxL[:, :-1]), tokens_BxL[:, 1:])

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

