"""Post-hoc averaging on the tiny LM: reconstructed vs directly tracked averages, and memory.

    python benchmarks/posthoc_quality.py [--steps=600] [--workdir=/tmp/posthoc_quality]

Trains configs/lm_tiny.py with snapshots of the two tracked power EMAs (sigma_rel 0.05, 0.10)
every 20 steps, and also tracks directly, as a reference, power EMAs at sigma_rel 0.07 and 0.15
and the anytime EMA-25. At the last step each of these is reconstructed post hoc from the
snapshots and evaluated on the same validation batches: the table gives both losses and their
difference in nats. Memory: the optimizer state with the 2 tracked averages vs the 5 of the
seed paper's recipe (bytes, from the state's shapes), and the snapshots' size on disk.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from etils import epath  # noqa: E402

from anytime import averaging, branches, loop, optimizers  # noqa: E402
from anytime.experiments import posthoc_eval  # noqa: E402
from configs import lm_tiny  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 600, "Training steps.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/anytime_posthoc_quality", "Run directory.")


def state_bytes(tx, params) -> int:
  state = jax.eval_shape(tx.init, params)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def main(argv):
  del argv
  config = lm_tiny.get_config()
  config.unlock()
  config.train.total_steps = _STEPS.value
  config.train.snapshot_every = 20
  config.train.checkpoint_every = _STEPS.value
  config.train.eval_every = _STEPS.value
  config.train.eval_batches = 8
  config.optimizer.averages = {
      "pema_070": dict(kind="power_ema", sigma_rel=0.07),
      "pema_150": dict(kind="power_ema", sigma_rel=0.15),
      "ema_25": dict(kind="anytime_ema", factor=25.0),
  }
  config.lock()
  branches.train(config, _WORKDIR.value)
  rows = posthoc_eval.run(_WORKDIR.value, steps=[_STEPS.value],
                          sigma_rels=[0.05, 0.07, 0.10, 0.15])
  print("\nreconstructed vs tracked directly (nats):")
  for row in rows:
    if "tracked_loss" in row:
      print(f"  {row['target']} {row['value']:g}: post-hoc {row['posthoc_loss']:.4f}, tracked "
            f"{row['tracked_loss']:.4f}, difference {row['posthoc_minus_tracked']:+.1e} "
            f"(profile fit error {row['fit_error']:.1e})")
  run = loop.build_run(config, _WORKDIR.value)
  params = run.abstract_state.params
  n = sum(x.size for x in jax.tree.leaves(params))
  base = optimizers.default_config()
  base.schedule = dict(name="constant", peak_value=1e-3)
  tx0, _ = optimizers.build(base)
  two = {f"p{i}": averaging.power_ema(sigma_rel=s) for i, s in enumerate((0.05, 0.10))}
  five = {f"e{i}": averaging.anytime_ema(f) for i, f in enumerate((6.25, 12.5, 25, 50, 100))}
  b0 = state_bytes(tx0, params)
  b2 = state_bytes(averaging.with_averages(tx0, two), params)
  b5 = state_bytes(averaging.with_averages(tx0, five), params)
  snapshots = epath.Path(_WORKDIR.value) / "main" / "snapshots"
  disk = sum(os.path.getsize(os.path.join(root, f))
             for root, _, files in os.walk(snapshots) for f in files)
  print(f"\nmemory ({n / 1e6:.2f}M params, float32): optimizer state without averages "
        f"{b0 / 2**20:.2f} MiB; +2 tracked power EMAs {(b2 - b0) / 2**20:.2f} MiB; +5 anytime "
        f"EMAs {(b5 - b0) / 2**20:.2f} MiB; snapshots on disk after {_STEPS.value} steps: "
        f"{disk / 2**20:.1f} MiB")


if __name__ == "__main__":
  app.run(main)
