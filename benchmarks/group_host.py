"""The host-side costs of a suite's group besides the step, old vs new side by side.

    python benchmarks/group_host.py [--batches 2000] [--rounds 3]

On the quickstart's config (configs/compare_tiny.py), one invocation prints:

* the training data: ms of wall and CPU time per batch of one run's grain iterator, read the
  previous way (one prefetch thread, a 256-record buffer that grain scans on every record it
  hands out) and the way ``data.make_train_iterator`` now reads an in-memory stream (in the
  calling thread, no buffer); the batches are checked to be the same;
* the evaluation: a group of 3 runs on the config's 8 batches of 128 windows, one pass per
  batch (previous) vs ``program.in_pieces`` (a ``lax.map`` over pieces of at most 32 windows);
  the per-window sums are checked to be equal.

The machine may be shared: only the side-by-side ratios of one invocation mean anything.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anytime import parallel  # noqa: E402  (before JAX starts its backends)

parallel.use_cpu_devices()

import grain  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from anytime import batched, loop  # noqa: E402
from anytime import program as program_lib  # noqa: E402
from anytime.lm import data as data_lib  # noqa: E402
from configs import compare_tiny  # noqa: E402


def _iterator(config, tokenizer, previous: bool):
  if not previous:
    return data_lib.make_train_iterator(config.data, tokenizer, seq_len=config.train.seq_len,
                                        global_batch_size=config.train.batch_size, seed=0)
  real = grain.ReadOptions  # the previous setting: 1 prefetch thread, a 256-record buffer
  grain.ReadOptions = lambda **_: real(num_threads=1, prefetch_buffer_size=256)
  try:
    return data_lib.make_train_iterator(config.data, tokenizer, seq_len=config.train.seq_len,
                                        global_batch_size=config.train.batch_size, seed=0)
  finally:
    grain.ReadOptions = real


def data_costs(config, tokenizer, batches: int, rounds: int) -> None:
  iterators = {"previous: 1 prefetch thread, 256-record buffer": _iterator(config, tokenizer, True),
               "now: read in the calling thread": _iterator(config, tokenizer, False)}
  firsts = [next(it) for it in iterators.values()]
  assert all(np.array_equal(firsts[0][k], f[k]) for f in firsts for k in f), "different batches"
  times = {name: [] for name in iterators}
  for _ in range(rounds):
    for name, it in iterators.items():
      wall, cpu = time.perf_counter(), time.process_time()
      for _ in range(batches):
        next(it)
      times[name].append(((time.perf_counter() - wall) / batches * 1e3,
                          (time.process_time() - cpu) / batches * 1e3))
  print(f"\ntraining data, one run's batch of {config.train.batch_size} x {config.train.seq_len} "
        f"(medians of {rounds} interleaved rounds of {batches} batches):")
  base = None
  for name, values in times.items():
    wall, cpu = np.median([v[0] for v in values]), np.median([v[1] for v in values])
    base = base or cpu
    print(f"  {name:48s} {wall:6.3f} ms wall  {cpu:6.3f} ms CPU per batch  "
          f"({base / cpu:4.2f}x less CPU)")


def eval_costs(config, rounds: int) -> None:
  run = loop.build_run(config, tempfile.mkdtemp(), constrain_activations=False)
  members = []
  for seed in range(3):
    member = copy.deepcopy(config)
    member.seed = seed
    members.append(type("M", (), {"config": member})())
  program = batched.StackedProgram(run, 3)
  params = program._candidates(program.init(members))["raw"]  # pylint: disable=protected-access
  variants = {"previous: one pass per batch of 128": parallel.jit_over_copies(
                  run.eval_fn, in_axes=(0, None)),
              f"now: pieces of <= {program_lib.EVAL_PIECE} windows": program._eval}  # pylint: disable=protected-access
  outputs = {name: [fn(params, b) for b in program.eval_batches]
             for name, fn in variants.items()}
  first, second = outputs.values()
  difference = max(float(np.max(np.abs(np.asarray(a[0]) - np.asarray(b[0]))))
                   for a, b in zip(first, second))
  times = {name: [] for name in variants}
  for _ in range(rounds):
    for name, fn in variants.items():
      start = time.perf_counter()
      jax.block_until_ready([fn(params, b) for b in program.eval_batches])
      times[name].append(time.perf_counter() - start)
  print(f"\nevaluation of a group of 3 runs on {len(program.eval_batches)} batches of "
        f"{config.train.eval_batch_size} windows (medians of {rounds} interleaved rounds; "
        f"largest |difference| of a window's loss sum: {difference:g}):")
  base = None
  for name, values in times.items():
    seconds = float(np.median(values))
    base = base or seconds
    print(f"  {name:48s} {seconds * 1e3:7.0f} ms  ({base / seconds:4.2f}x)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=2000)
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args()
  config = compare_tiny.get_config().base
  print(f"quickstart config (configs/compare_tiny.py), {jax.device_count()} CPU devices, "
        f"jax {jax.__version__}, grain {grain.__version__ if hasattr(grain, '__version__') else ''}")
  tokenizer = loop.build_run(config, tempfile.mkdtemp()).tokenizer
  data_costs(config, tokenizer, args.batches, args.rounds)
  eval_costs(config, args.rounds)


if __name__ == "__main__":
  main()
