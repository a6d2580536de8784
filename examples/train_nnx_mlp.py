"""Trains a small Flax NNX regression model with an anytime schedule and averages.

    python3 examples/train_nnx_mlp.py

Prints the final loss of the raw weights and of each average. It is the code of
docs/use_in_your_trainer.md ("nnx.Optimizer"), unchanged.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from anytime import averaging, schedules


class Mlp(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(4, 32, rngs=rngs)
    self.out = nnx.Linear(32, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def main(steps: int = 300) -> dict[str, float]:
  key_x, key_noise = jax.random.split(jax.random.key(0))
  x = jax.random.normal(key_x, (256, 4))
  y = jnp.sin(x.sum(axis=1, keepdims=True)) + 0.3 * jax.random.normal(key_noise, (256, 1))

  model = Mlp(nnx.Rngs(0))
  tx = optax.chain(
      optax.clip_by_global_norm(1.0),
      averaging.with_averages(
          optax.adamw(schedules.inverse_sqrt(3e-2, offset=40, warmup_steps=10)),
          averages={"ema_25": averaging.anytime_ema(25.0), "lawa": averaging.window(10, 5)}),
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  def loss_fn(model, x, y):
    return jnp.mean((model(x) - y) ** 2)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss

  for step in range(steps):
    batch = slice((step * 32) % 256, (step * 32) % 256 + 32)
    train_step(model, optimizer, x[batch], y[batch])

  # Evaluate every set of weights: the raw params and each average, in the params' dtypes.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  losses = {}
  for name, weights in averaging.eval_params(optimizer.opt_state, params).items():
    losses[name] = float(loss_fn(nnx.merge(graphdef, weights, rest), x, y))
  return losses


if __name__ == "__main__":
  for name, value in main().items():
    print(f"{name:8s} loss {value:.4f}")
