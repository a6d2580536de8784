"""Decoder-only transformer (Flax NNX) as in the seed paper's runs.

Pre-norm blocks, RoPE, QK-layernorm, GELU MLP, untied input/output embeddings, no biases.
Parameters are float32; ``compute_dtype`` (bfloat16 on accelerators) is used for the matmuls,
and logits come out in float32. Every parameter carries ``logical_axes`` metadata and the key
activations are constrained by logical names, which ``anytime.parallel`` maps to mesh axes.
Shapes live in names: ``x_BxLxD``, ``logits_BxLxV``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from anytime import parallel


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of the transformer."""

  vocab_size: int = 264
  d_model: int = 256
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 1024
  max_len: int = 256
  compute_dtype: str = "float32"  # "bfloat16" on accelerators.
  remat: bool = False  # rematerialise each block in the backward pass.
  rope_base: float = 10_000.0
  attention_impl: str = "xla"  # "xla" (any backend) or "cudnn" (fused flash attention, GPU).
  init_std: float = 0.02
  # How the projections' weight gradients are formed. A weight gradient contracts the batch x
  # length rows, so one of its two operands is transposed first; XLA's CPU backend fuses the
  # producer of that operand (GELU', LayerNorm', RoPE', softmax', the residual stream's
  # gradient) into the transpose and recomputes it with strided reads, which was 40-50% of the
  # quickstart step (benchmarks/README.md). "narrow" transposes the narrower operand (the one
  # of width d, or a matmul's own output), "autodiff" leaves it to JAX's rule (the gradient).
  weight_grads: str = "narrow"
  # The projections' operands are rounded to this dtype, products accumulated in
  # compute_dtype ("" = compute_dtype). "bfloat16" with float32 compute: the matmuls run at
  # the CPU's bf16 rate (AVX512-BF16/AMX: 2-3x float32 here) at a measured loss cost
  # (benchmarks/README.md); attention's own matmuls stay in compute_dtype.
  matmul_dtype: str = ""

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "mlp_dim", "max_len"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
    if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
      raise ValueError(
          f"model.d_model ({self.d_model}) must be divisible by model.num_heads "
          f"({self.num_heads}) into an even head dimension"
      )
    if self.compute_dtype not in ("float32", "bfloat16", "float16"):
      raise ValueError(
          f"model.compute_dtype must be float32, bfloat16 or float16, got {self.compute_dtype!r}")
    if self.matmul_dtype not in ("", "float32", "bfloat16", "float16"):
      raise ValueError(f"model.matmul_dtype must be '', float32, bfloat16 or float16, got "
                       f"{self.matmul_dtype!r}")
    if self.weight_grads not in ("narrow", "autodiff"):
      raise ValueError(f"model.weight_grads must be 'narrow' or 'autodiff', got "
                       f"{self.weight_grads!r}")
    if self.attention_impl not in ("xla", "cudnn"):
      raise ValueError(f"model.attention_impl must be 'xla' or 'cudnn', got "
                       f"{self.attention_impl!r}")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def dtype(self):
    return jnp.dtype(self.compute_dtype)


def _param(rngs: nnx.Rngs, shape, std: float, axes) -> nnx.Param:
  return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32),
                   logical_axes=tuple(axes))


def _ones(shape, axes) -> nnx.Param:
  return nnx.Param(jnp.ones(shape, jnp.float32), logical_axes=tuple(axes))


def _norm(x, scale, eps=1e-6):
  """LayerNorm without bias, statistics in float32."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps) * scale).astype(x.dtype)


def _dot(a, b, dimension_numbers, out_dtype):
  return jax.lax.dot_general(a, b, dimension_numbers,
                             preferred_element_type=out_dtype).astype(out_dtype)


_ROWS = (((0,), (0,)), ((), ()))  # contract the rows: a weight gradient
_PLAIN = (((1,), (0,)), ((), ()))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul(x_NxK, w_KxM, transpose_input: bool, matmul_dtype):
  return _dot(x_NxK.astype(matmul_dtype), w_KxM.astype(matmul_dtype), _PLAIN, x_NxK.dtype)


def _matmul_fwd(x_NxK, w_KxM, transpose_input, matmul_dtype):
  x, w = x_NxK.astype(matmul_dtype), w_KxM.astype(matmul_dtype)
  return _dot(x, w, _PLAIN, x_NxK.dtype), (x, w)


def _matmul_bwd(transpose_input, matmul_dtype, residuals, g_NxM):
  x_NxK, w_KxM = residuals  # in matmul_dtype; x, w and g come in one dtype (project's)
  g, dtype = g_NxM.astype(matmul_dtype), g_NxM.dtype
  dx = _dot(g, w_KxM.T, _PLAIN, dtype)
  if transpose_input:  # XLA transposes the first operand of a row contraction
    dw = _dot(x_NxK, g, _ROWS, dtype)
  else:
    dw = _dot(g, x_NxK, _ROWS, dtype).T
  return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def project(x: jax.Array, w: jax.Array, in_dims: int, config: ModelConfig) -> jax.Array:
  """Contracts the last ``in_dims`` axes of ``x`` with the first ``in_dims`` axes of ``w``
  (an einsum such as ``bld,dnh->blnh``), in ``config.dtype``, the products in
  ``config.matmul_dtype`` (accumulated in ``config.dtype``). With ``weight_grads="narrow"``
  the weight gradient transposes ``x`` or the output's gradient, whichever is narrower (``x``
  on a tie: the q, k, v projections then share one transpose of their input)."""
  w = w.astype(config.dtype)
  lead, k_shape, m_shape = x.shape[:-in_dims], w.shape[:in_dims], w.shape[in_dims:]
  matmul_dtype = jnp.dtype(config.matmul_dtype or config.compute_dtype)
  if config.weight_grads == "autodiff":
    numbers = ((tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims))), ((), ()))
    return _dot(x.astype(matmul_dtype), w.astype(matmul_dtype), numbers, x.dtype)
  k, m = math.prod(k_shape), math.prod(m_shape)
  y = _matmul(x.reshape(-1, k), w.reshape(k, m), k <= m, matmul_dtype)
  return y.reshape(*lead, *m_shape)


def rope(x_BxLxNxH: jax.Array, positions_L: jax.Array, base: float) -> jax.Array:
  """Rotary position embedding (rotate-half form), computed in float32."""
  half = x_BxLxNxH.shape[-1] // 2
  freq_H = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_LxH = positions_L.astype(jnp.float32)[:, None] * freq_H[None, :]
  sin, cos = jnp.sin(angle_LxH)[None, :, None, :], jnp.cos(angle_LxH)[None, :, None, :]
  x = x_BxLxNxH.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x_BxLxNxH.dtype)


class Block(nnx.Module):
  """Pre-norm attention + GELU MLP block."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    d, n, h, f = config.d_model, config.num_heads, config.head_dim, config.mlp_dim
    std, out_std = config.init_std, config.init_std / math.sqrt(2 * config.num_layers)
    self.config = config
    self.attn_norm = _ones((d,), ("embed",))
    self.wq = _param(rngs, (d, n, h), std, ("embed", "heads", "kv"))
    self.wk = _param(rngs, (d, n, h), std, ("embed", "heads", "kv"))
    self.wv = _param(rngs, (d, n, h), std, ("embed", "heads", "kv"))
    self.q_norm = _ones((h,), ("kv",))
    self.k_norm = _ones((h,), ("kv",))
    self.wo = _param(rngs, (n, h, d), out_std, ("heads", "kv", "embed"))
    self.mlp_norm = _ones((d,), ("embed",))
    self.w_in = _param(rngs, (d, f), std, ("embed", "mlp"))
    self.w_out = _param(rngs, (f, d), out_std, ("mlp", "embed"))

  def __call__(self, x_BxLxD: jax.Array, positions_L: jax.Array) -> jax.Array:
    cfg = self.config
    h_BxLxD = _norm(x_BxLxD, self.attn_norm[...])
    q_BxLxNxH = project(h_BxLxD, self.wq[...], 1, cfg)
    k_BxLxNxH = project(h_BxLxD, self.wk[...], 1, cfg)
    v_BxLxNxH = project(h_BxLxD, self.wv[...], 1, cfg)
    q_BxLxNxH = rope(_norm(q_BxLxNxH, self.q_norm[...]), positions_L, cfg.rope_base)
    k_BxLxNxH = rope(_norm(k_BxLxNxH, self.k_norm[...]), positions_L, cfg.rope_base)
    q_BxLxNxH = parallel.constrain(q_BxLxNxH, ("batch", "length", "heads", "kv"))
    o_BxLxNxH = jax.nn.dot_product_attention(
        q_BxLxNxH, k_BxLxNxH, v_BxLxNxH, is_causal=True, implementation=cfg.attention_impl)
    x_BxLxD = x_BxLxD + project(o_BxLxNxH, self.wo[...], 2, cfg)
    x_BxLxD = parallel.constrain(x_BxLxD, ("batch", "length", "embed"))
    h_BxLxD = _norm(x_BxLxD, self.mlp_norm[...])
    h_BxLxF = jax.nn.gelu(project(h_BxLxD, self.w_in[...], 1, cfg))
    h_BxLxF = parallel.constrain(h_BxLxF, ("batch", "length", "mlp"))
    x_BxLxD = x_BxLxD + project(h_BxLxF, self.w_out[...], 1, cfg)
    return parallel.constrain(x_BxLxD, ("batch", "length", "embed"))


class Transformer(nnx.Module):
  """Decoder-only LM: ``model(tokens_BxL) -> logits_BxLxV`` (float32)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    d, v = config.d_model, config.vocab_size
    self.embed = _param(rngs, (v, d), config.init_std, ("vocab", "embed"))
    for i in range(config.num_layers):  # named attributes: checkpoint keys stay strings.
      setattr(self, f"block_{i}", Block(config, rngs=rngs))
    self.final_norm = _ones((d,), ("embed",))
    self.unembed = _param(rngs, (d, v), 1.0 / math.sqrt(d), ("embed", "vocab"))

  def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
    cfg = self.config
    positions_L = jnp.arange(tokens_BxL.shape[1])
    x_BxLxD = jnp.take(self.embed[...], tokens_BxL, axis=0).astype(cfg.dtype)
    x_BxLxD = parallel.constrain(x_BxLxD, ("batch", "length", "embed"))
    for i in range(cfg.num_layers):
      block = getattr(self, f"block_{i}")
      if cfg.remat:
        x_BxLxD = nnx.remat(lambda b, x, p: b(x, p))(block, x_BxLxD, positions_L)
      else:
        x_BxLxD = block(x_BxLxD, positions_L)
    x_BxLxD = _norm(x_BxLxD, self.final_norm[...])
    logits_BxLxV = project(x_BxLxD, self.unembed[...], 1, cfg)
    return parallel.constrain(logits_BxLxV.astype(jnp.float32), ("batch", "length", "vocab"))


# ---------------------------------------------------------------- functional view


def init(config: ModelConfig, rng: jax.Array) -> tuple[nnx.GraphDef, dict[str, Any]]:
  """Builds the model; returns its graph definition and params as a plain nested dict."""
  graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(params=rng)), nnx.Param)
  return graphdef, nnx.to_pure_dict(state)


def graphdef(config: ModelConfig) -> nnx.GraphDef:
  """The model's graph definition, without allocating parameters."""
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  return nnx.split(abstract, nnx.Param)[0]


def logical_axes(config: ModelConfig) -> dict[str, Any]:
  """The params' logical axis names, as a nested dict matching ``init``'s params."""
  state = jax.eval_shape(
      lambda: nnx.split(Transformer(config, rngs=nnx.Rngs(0)), nnx.Param)[1])
  axes = jax.tree.map(lambda v: v.get_metadata()["logical_axes"], state,
                      is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(axes)


def apply(graphdef: nnx.GraphDef, params: dict[str, Any], tokens_BxL: jax.Array) -> jax.Array:
  """Logits of ``tokens_BxL`` under ``params`` (any float dtype)."""
  return nnx.merge(graphdef, params)(tokens_BxL)


def param_count(config: ModelConfig, *, include_embedding: bool = True) -> int:
  """Number of parameters (optionally without the input embedding table)."""
  shapes = jax.eval_shape(lambda: init(config, jax.random.key(0))[1])
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
  return total if include_embedding else total - config.vocab_size * config.d_model


def flops_per_token(config: ModelConfig, seq_len: int | None = None) -> float:
  """Training FLOPs per token: 6·N + 12·L·d·T (PaLM, Chowdhery et al. 2022, appendix B).

  N excludes the input embedding (a lookup, no matmul) and includes the output projection;
  the attention term counts the full T x T score and value matmuls (no causal discount).
  """
  seq_len = seq_len or config.max_len
  n = param_count(config, include_embedding=False)
  return 6.0 * n + 12.0 * config.num_layers * config.d_model * seq_len
