"""Train-step speed: our step vs a plain Flax NNX + optax.adamw step on the same model, and MFU.

    python benchmarks/lm_step.py                      # CPU: a small model
    python benchmarks/lm_step.py --config=configs/lm_150m.py --batch=64   # GPU: the 150M model

Both steps run on the same random token batches, interleaved in rounds (ours, plain, ours, ...)
so that machine noise hits both alike; each figure is the median over rounds of the mean step
time in a round. "ours" is ``anytime.loop.build_run``'s jitted step (sharded over every local
device, NaN guard, metrics) with the config's optimizer: with ``--averages=0`` the averages
are removed, so the ratio measures the trainer's own overhead (target >= 0.98); with the
config's averages it shows what they cost. MFU = tokens/s x FLOPs/token (6N + 12·L·d·T) /
(peak bf16 FLOP/s of the devices).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from anytime import loop  # noqa: E402
from anytime.lm import model as model_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/lm_tiny.py", "Model/train config.")
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch (0 = the config's).")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds.")
_AVERAGES = flags.DEFINE_bool("averages", False, "Keep the config's averages in our step.")
_DTYPE = flags.DEFINE_string("dtype", "", "Override model.compute_dtype (e.g. bfloat16).")


def plain_step_fn(model_config, learning_rate):
  """The reference: nnx.Optimizer + optax.adamw, nnx.jit, no extras."""
  model = model_lib.Transformer(model_config, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adamw(learning_rate, b2=0.95, weight_decay=0.0),
                            wrt=nnx.Param)

  @nnx.jit(donate_argnums=(0, 1))
  def step(model, optimizer, inputs, targets):
    def loss_fn(model):
      logits = model(inputs)
      return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  return model, optimizer, step


def timed(fn, steps):
  start = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def main(argv):
  del argv
  config = _CONFIG.value
  config.unlock()
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  if _DTYPE.value:
    config.model.compute_dtype = _DTYPE.value
  if not _AVERAGES.value:
    config.optimizer.averages = {}
  config.optimizer.grad_clip_norm = 0.0  # the plain step has no clipping either
  config.optimizer.schedule = dict(name="constant", peak_value=1e-3)
  config.train.eval_batches = 1
  config.train.eval_batch_size = jax.device_count()
  config.lock()
  t = config.train
  with tempfile.TemporaryDirectory() as workdir:
    run = loop.build_run(config, workdir)
  model_config = run.model_config
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.integers(0, model_config.vocab_size, (t.batch_size, t.seq_len),
                                  dtype=np.int32),
           "targets": rng.integers(0, model_config.vocab_size, (t.batch_size, t.seq_len),
                                   dtype=np.int32)}
  state = run.init_state()
  model, optimizer, plain_step = plain_step_fn(model_config, 1e-3)
  inputs, targets = jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"])

  holder = {"state": state}

  def ours():
    holder["state"], metrics = run.train_step(holder["state"], batch, run.learning_rate(0))
    return metrics["loss"]

  def plain():
    return plain_step(model, optimizer, inputs, targets)

  timed(ours, 2)  # compile + warm up
  timed(plain, 2)
  ours_times, plain_times = [], []
  for _ in range(_ROUNDS.value):
    ours_times.append(timed(ours, _STEPS.value))
    plain_times.append(timed(plain, _STEPS.value))
  tokens = t.batch_size * t.seq_len
  ours_s, plain_s = statistics.median(ours_times), statistics.median(plain_times)
  flops = model_lib.flops_per_token(model_config, t.seq_len)
  peak = loop.peak_flops(config) * jax.device_count()
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; model: "
        f"{model_lib.param_count(model_config) / 1e6:.1f}M params "
        f"({model_lib.param_count(model_config, include_embedding=False) / 1e6:.1f}M without "
        f"the input embedding), {model_config.compute_dtype}, attention "
        f"{model_config.attention_impl}; batch {t.batch_size} x {t.seq_len}; averages in our "
        f"step: {list(config.optimizer.averages) or 'none'}")
  print(f"ours : {ours_s * 1e3:8.2f} ms/step  {tokens / ours_s:12,.0f} tokens/s")
  print(f"plain: {plain_s * 1e3:8.2f} ms/step  {tokens / plain_s:12,.0f} tokens/s")
  print(f"throughput ratio ours/plain: {plain_s / ours_s:.3f}")
  if peak:
    print(f"MFU ours: {tokens / ours_s * flops / peak:.1%}   plain: "
          f"{tokens / plain_s * flops / peak:.1%}   ({flops / 1e9:.3f} GFLOP/token, peak "
          f"{peak / 1e12:.0f} TFLOP/s)")
  else:
    print(f"MFU: unknown peak FLOP/s for {jax.devices()[0].device_kind} "
          f"({flops / 1e9:.4f} GFLOP/token; achieved {tokens / ours_s * flops / 1e9:.1f} "
          "GFLOP/s)")


if __name__ == "__main__":
  app.run(main)
