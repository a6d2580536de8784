"""The projections' weight gradients (model.weight_grads): "narrow" = JAX's autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anytime.lm import model as model_lib


def _loss(config, params, tokens):
  logits = model_lib.apply(model_lib.graphdef(config), params, tokens[:, :-1])
  labels = jax.nn.one_hot(tokens[:, 1:], config.vocab_size)
  return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * labels, -1))


@pytest.mark.parametrize("mlp_dim,vocab_size", [(64, 40), (24, 20)])  # wide and narrow MLP/vocab
def test_narrow_weight_grads_equal_autodiff(mlp_dim, vocab_size):
  kwargs = dict(vocab_size=vocab_size, d_model=32, num_layers=2, num_heads=2, mlp_dim=mlp_dim,
                max_len=16)
  narrow = model_lib.ModelConfig(**kwargs)
  autodiff = model_lib.ModelConfig(**kwargs, weight_grads="autodiff")
  _, params = model_lib.init(narrow, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (3, 17), 0, vocab_size)
  copies = jax.tree.map(lambda p: jnp.stack([p, p * 1.5]), params)  # a vmapped group of 2

  def grads(config):
    fn = jax.value_and_grad(lambda p: _loss(config, p, tokens))
    return jax.jit(fn)(params), jax.jit(jax.vmap(fn))(copies)

  for got, want in zip(jax.tree.leaves(grads(narrow)), jax.tree.leaves(grads(autodiff))):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)  # float32 rounding of sums


def test_weight_grads_is_validated():
  with pytest.raises(ValueError, match="model.weight_grads"):
    model_lib.ModelConfig(weight_grads="fast")


def test_bf16_matmul_operands_stay_close_to_float32():
  """model.matmul_dtype="bfloat16": bf16 operands, float32 accumulation and activations; the
  loss and every gradient within bf16 rounding (relative, per leaf) of float32."""
  kwargs = dict(vocab_size=40, d_model=32, num_layers=2, num_heads=2, mlp_dim=64, max_len=16)
  f32 = model_lib.ModelConfig(**kwargs)
  bf16 = model_lib.ModelConfig(**kwargs, matmul_dtype="bfloat16")
  _, params = model_lib.init(f32, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (3, 17), 0, 40)
  (loss_32, grads_32), (loss_16, grads_16) = [
      jax.jit(jax.value_and_grad(lambda p, c=c: _loss(c, p, tokens)))(params) for c in (f32, bf16)]
  assert loss_16.dtype == jnp.float32
  assert abs(float(loss_16) - float(loss_32)) < 1e-2 * float(loss_32)
  for got, want in zip(jax.tree.leaves(grads_16), jax.tree.leaves(grads_32)):
    assert got.dtype == jnp.float32
    assert float(jnp.linalg.norm(got - want)) < 3e-2 * float(jnp.linalg.norm(want))
