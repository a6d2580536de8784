"""How much the batched engine saves: compilations and wall time of a suite's runs.

    python benchmarks/suite_speed.py [--runs 6] [--steps 200] [--sweep 1,3,6,12]

``--runs`` cosine runs of the quickstart model (configs/compare_tiny.py) that differ in peak LR
and seed, trained for ``--steps`` steps (a) one after the other, each with its own build and
jitted step, as the suite trained them before (``branches.train``), and (b) as one vmapped
group (``anytime.batched``), with one CPU device per core as ``anytime.main compare`` sets up.
Prints wall time, run-steps/s and the ratio, measured side by side in this invocation, and the
number of XLA compilations of each (no persistent compilation cache in either).

``--sweep`` then times the compiled, vmapped train step alone (no data loading, evaluation or
checkpoints) for each number of runs R, sharded over the CPU devices as in a group: the
milliseconds per run-step tell how much of the gain is arithmetic (a step that got cheaper per
run as R grows) and how much is the builds, compilations and host work that batching removes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anytime import workdir as workdir_lib
from anytime import parallel  # noqa: E402  (before JAX starts its backends)

parallel.use_cpu_devices()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from anytime import batched, branches, loop  # noqa: E402
from anytime.experiments import methods, plan  # noqa: E402
from configs import compare_tiny  # noqa: E402


def _runs(config, workdir: Path, count: int, steps: int) -> list[plan.PlannedRun]:
  lrs = [2e-3, 3e-3, 4.24e-3]
  planned = []
  for i in range(count):
    lr, seed = lrs[i % len(lrs)], i // len(lrs)
    run_config = plan.run_config(config, methods.REGISTRY["cosine"], lr, seed, steps)
    name = f"r{i}"
    spec = batched.RunSpec(name=name, config=run_config,
                           directory=workdir_lib.main_dir(workdir / name), end_step=steps)
    planned.append(plan.PlannedRun("cosine", lr, seed, spec))
  return planned


def throughput(count: int, steps: int) -> None:
  config = compare_tiny.get_config()
  train_steps = lambda names: sum("train_step" in name for name in names)
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    runs = _runs(config, tmp / "sequential", count, steps)
    start = time.perf_counter()
    with parallel.compile_log() as compiled:
      for run in runs:
        branches.train(run.spec.config, str(run.spec.directory.parent))
    sequential = time.perf_counter() - start
    seq_compiles = (len(compiled), train_steps(compiled))
    runs = _runs(config, tmp / "batched", count, steps)
    start = time.perf_counter()
    with parallel.compile_log() as compiled:
      batched.train_group([r.spec for r in runs], workdir=tmp / "batched")
    together = time.perf_counter() - start
    batch_compiles = (len(compiled), train_steps(compiled))
  work = count * steps
  print(f"{count} runs x {steps} steps of the quickstart model "
        f"({os.cpu_count()} CPU cores, jax {jax.__version__}):")
  print(f"  one after the other: {sequential:7.1f} s  {work / sequential:7.1f} run-steps/s  "
        f"{seq_compiles[0]} XLA compilations, {seq_compiles[1]} of a train step")
  print(f"  one batched group:   {together:7.1f} s  {work / together:7.1f} run-steps/s  "
        f"{batch_compiles[0]} XLA compilations, {batch_compiles[1]} of a train step")
  print(f"  speed-up: {sequential / together:.2f}x")


def step_sweep(counts: list[int], repeats: int = 20) -> None:
  """Milliseconds per vmapped train step and per run-step for each number of runs."""
  config = compare_tiny.get_config()
  run_config = plan.run_config(config, methods.REGISTRY["cosine"], 3e-3, 0, 200)
  with tempfile.TemporaryDirectory() as tmp:
    template = loop.build_run(run_config, tmp, constrain_activations=False)
    one = next(template.make_train_iterator())
    print(f"\nThe vmapped train step alone ({jax.device_count()} CPU devices):")
    for count in counts:
      sharding = batched.run_sharding(count)
      step = parallel.jit_over_copies(template.step_fn, donate_argnums=0,
                                      in_shardings=sharding, out_shardings=sharding)
      states = jax.device_put(
          parallel.jit_over_copies(template.init_fn)(np.arange(count, dtype=np.uint32)),
          sharding)
      batch = {k: np.stack([v] * count) for k, v in one.items()}
      lrs = np.full((count,), 1e-3, np.float32)
      for _ in range(4):  # compile and warm up
        states, metrics = step(states, batch, lrs)
      jax.block_until_ready(metrics)
      start = time.perf_counter()
      for _ in range(repeats):
        states, metrics = step(states, batch, lrs)
      jax.block_until_ready(metrics)
      ms = (time.perf_counter() - start) / repeats * 1e3
      print(f"  R = {count:2d}: {ms:7.1f} ms per step, {ms / count:5.1f} ms per run-step")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=6)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--sweep", default="1,3,6,12",
                      help="numbers of runs to time the vmapped step alone for ('' = skip)")
  args = parser.parse_args()
  throughput(args.runs, args.steps)
  if args.sweep:
    step_sweep([int(n) for n in args.sweep.split(",")])


if __name__ == "__main__":
  main()
