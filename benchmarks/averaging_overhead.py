"""Cost of keeping weight averages in the optimizer state: step time and state memory.

    python benchmarks/averaging_overhead.py            # the figures below
    python benchmarks/averaging_overhead.py --small    # a ~1M-parameter model, fewer rounds

On the params of a ~5M-parameter transformer (anytime.lm.model, d=256, 6 layers, vocab 2048),
AdamW with 0, 1 (anytime EMA-25) and 5 anytime EMAs (f = 6.25 ... 100), in one interleaved run:
  - the full train step (forward + backward on a 8 x 128 batch + update), the case that matters
    (targets: <= 1.02 with one average, <= 1.05 with five);
  - the optimizer update alone (a memory-bound elementwise pass, where each average adds a
    read and a write of the params);
and the optimizer state's size from the compiled step's memory analysis: each float32 average
must add exactly one params-sized buffer (4 bytes/param), bfloat16 half of it. The five EMAs are
also measured in bfloat16 storage (``dtype=jnp.bfloat16``) and in host memory
(``memory_kind="pinned_host"``, where the backend offers it): the averages' state bytes per
memory kind come from the state's arrays (``nbytes`` and their sharding's memory kind).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from anytime import averaging  # noqa: E402
from anytime.lm import model as model_lib  # noqa: E402

FACTORS = (6.25, 12.5, 25.0, 50.0, 100.0)


def make_tx(num_averages: int, dtype=jnp.float32, memory_kind=None):
  base = optax.adamw(1e-3, b2=0.95)
  if not num_averages:
    return base
  factors = (25.0,) if num_averages == 1 else FACTORS[:num_averages]
  return averaging.with_averages(
      base, {f"ema_{f:g}": averaging.anytime_ema(f) for f in factors}, dtype=dtype,
      memory_kind=memory_kind)


def averages_bytes(state) -> dict[str, int]:
  """Bytes of the averages' state arrays, per memory kind."""
  out = {}
  holders = [x for x in jax.tree.leaves(
      state, is_leaf=lambda y: isinstance(y, averaging.WithAveragesState))
             if isinstance(x, averaging.WithAveragesState)]
  for holder in holders:
    for x in jax.tree.leaves(holder.averages):
      kind = getattr(x.sharding, "memory_kind", None) or "device"
      out[kind] = out.get(kind, 0) + x.nbytes
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true",
                      help="d_model 128, 2 layers, 3 rounds: about a minute on a 2-core CPU")
  args = parser.parse_args()
  width, layers, rounds = (128, 2, 3) if args.small else (256, 6, 7)
  cfg = model_lib.ModelConfig(vocab_size=2048, d_model=width, num_layers=layers, num_heads=4,
                              mlp_dim=4 * width, max_len=128)
  graphdef, params = model_lib.init(cfg, jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (8, 129), dtype=np.int32))
  inputs, targets = tokens[:, :-1], tokens[:, 1:]

  def loss_fn(p):
    logits = model_lib.apply(graphdef, p, inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  variants = {"0 averages": make_tx(0), "1 average": make_tx(1), "5 averages": make_tx(5),
              "5 averages bf16": make_tx(5, jnp.bfloat16)}
  if "pinned_host" in {m.kind for m in jax.devices()[0].addressable_memories()}:
    variants["5 averages host"] = make_tx(5, memory_kind="pinned_host")
  full, update_only, states, memory, placed = {}, {}, {}, {}, {}
  for name, tx in variants.items():
    def train_step(p, s, tx=tx):
      grads = jax.grad(loss_fn)(p)
      updates, s = tx.update(grads, s, p)
      return optax.apply_updates(p, updates), s

    def opt_step(p, s, g, tx=tx):
      updates, s = tx.update(g, s, p)
      return optax.apply_updates(p, updates), s

    p = jax.tree.map(jnp.copy, params)
    s = tx.init(p)
    full[name] = jax.jit(train_step, donate_argnums=(0, 1))
    update_only[name] = jax.jit(opt_step, donate_argnums=(0, 1))
    compiled = full[name].lower(p, s).compile()
    memory[name] = compiled.memory_analysis()
    placed[name] = averages_bytes(s)
    states[name] = [p, s, jax.tree.map(jnp.ones_like, params)]

  def time_variant(fns, name, steps, with_grads):
    p, s, g = states[name]
    start = time.perf_counter()
    for _ in range(steps):
      p, s = fns[name](p, s, g) if with_grads else fns[name](p, s)
    jax.block_until_ready(p)
    states[name][:2] = [p, s]
    return (time.perf_counter() - start) / steps

  for fns, with_grads in ((full, False), (update_only, True)):
    for name in variants:
      time_variant(fns, name, 2, with_grads)  # compile + warm up
  results = {"train step": {n: [] for n in variants}, "update only": {n: [] for n in variants}}
  for _ in range(rounds):
    for name in variants:  # interleaved: machine noise hits every variant alike
      results["train step"][name].append(time_variant(full, name, 5, False))
      results["update only"][name].append(time_variant(update_only, name, 20, True))
  print(f"params: {n_params / 1e6:.2f}M ({n_params * 4 / 2**20:.1f} MiB in float32); "
        f"device: {jax.devices()[0].device_kind}")
  for kind, table in results.items():
    base = statistics.median(table["0 averages"])
    print(f"\n{kind}: median of {rounds} interleaved rounds")
    for name, times in table.items():
      median = statistics.median(times)
      print(f"  {name:16s} {median * 1e3:8.2f} ms   ratio to 0 averages: {median / base:.3f}")
  # The averages only touch the update, so their cost is best seen there (less noisy than the
  # ~1 s train step on a shared CPU): added update time as a fraction of the train step.
  step0 = statistics.median(results["train step"]["0 averages"])
  update0 = statistics.median(results["update only"]["0 averages"])
  print("\nadded update time as a fraction of the 0-average train step:")
  for name, times in results["update only"].items():
    print(f"  {name:16s} {(statistics.median(times) - update0) / step0:+.2%}")
  print("\noptimizer-state memory (compiled train step's argument bytes minus params and "
        "0-average state):")
  base_args = memory["0 averages"].argument_size_in_bytes
  for name, mem in memory.items():
    extra = mem.argument_size_in_bytes - base_args
    print(f"  {name:16s} +{extra / 2**20:7.2f} MiB = {extra / (n_params * 4):.3f} float32 "
          "params-sized buffers")

  print("\naverages' state bytes per memory kind (the state's arrays):")
  for name, by_kind in placed.items():
    total = sum(by_kind.values())
    kinds = ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sorted(by_kind.items())) or "none"
    print(f"  {name:16s} {kinds} = {total / (n_params * 4):.3f} float32 params-sized buffers")


if __name__ == "__main__":
  main()
