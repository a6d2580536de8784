"""How much the batched engine saves: compilations and wall time of a suite's runs.

    python benchmarks/suite_speed.py [--runs 6] [--steps 200] [--quickstart]

1. Throughput: ``--runs`` runs of the quickstart model (configs/compare_tiny.py) that differ in
   peak LR and seed, trained for ``--steps`` steps (a) one after the other, each with its own
   build and jitted step as the suite did before (``branches.train``), and (b) as one vmapped
   group (``anytime.batched``). Prints wall time, run-steps/s and the ratio, measured side by
   side in this invocation, plus the number of XLA compilations of each.
2. ``--quickstart``: the quickstart suite's runs of the previous release (cosine at 4 horizons x
   2 LRs; one constant run with EMAs, LAWA and WSD branches; 1/sqrt; WSD-S; Schedule-Free;
   post-hoc columns) trained by the batched engine, next to the same runs trained one by one.
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

import jax  # noqa: E402
import ml_collections  # noqa: E402
from etils import epath  # noqa: E402

from anytime import batched, branches, checkpoint  # noqa: E402
from anytime.experiments import compare  # noqa: E402
from configs import compare_tiny  # noqa: E402


class CompileCounter:
  """Counts XLA backend compilations (jax's monitoring events)."""

  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **kwargs):
    del duration, kwargs
    if event == "/jax/compilation_cache/compile_requests_use_cache" or \
        event.endswith("backend_compile_duration"):
      if event.endswith("backend_compile_duration"):
        self.count += 1


def _runs(config, workdir: Path, count: int, steps: int) -> list[compare.PlannedRun]:
  lrs = [2e-3, 3e-3, 4.24e-3]
  planned = []
  for i in range(count):
    lr, seed = lrs[i % len(lrs)], i // len(lrs)
    run_config = compare.run_config(config, "cosine", lr, seed, steps)
    name = f"r{i}"
    spec = batched.RunSpec(name=name, config=run_config,
                           directory=checkpoint.main_dir(workdir / name), end_step=steps)
    planned.append(compare.PlannedRun("cosine", lr, seed, spec))
  return planned


def throughput(count: int, steps: int, counter: CompileCounter) -> None:
  config = compare_tiny.get_config()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    runs = _runs(config, tmp / "sequential", count, steps)
    before, start = counter.count, time.perf_counter()
    for run in runs:
      branches.train(run.spec.config, str(run.spec.directory.parent))
    sequential, seq_compiles = time.perf_counter() - start, counter.count - before
    runs = _runs(config, tmp / "batched", count, steps)
    before, start = counter.count, time.perf_counter()
    batched.train_group([r.spec for r in runs], workdir=tmp / "batched")
    together, batch_compiles = time.perf_counter() - start, counter.count - before
  work = count * steps
  print(f"{count} runs x {steps} steps of the quickstart model "
        f"({os.cpu_count()} CPU cores, jax {jax.__version__}):")
  print(f"  one after the other: {sequential:7.1f} s  {work / sequential:7.1f} run-steps/s  "
        f"{seq_compiles} XLA compilations")
  print(f"  one batched group:   {together:7.1f} s  {work / together:7.1f} run-steps/s  "
        f"{batch_compiles} XLA compilations")
  print(f"  speed-up: {sequential / together:.2f}x")


def previous_quickstart(config) -> dict:
  """The previous release's quickstart runs: {(method, horizon|None): LRs} and WSD variants."""
  s = config.suite
  lrs = {("cosine", h): [3e-3, 1e-2] for h in compare.horizons(s)}
  lrs.update({(m, None): [3e-3] for m in ("constant", "inverse_sqrt", "wsd_s",
                                          "schedule_free")})
  return lrs


def quickstart(counter: CompileCounter) -> None:
  config = compare_tiny.get_config()
  config.unlock()
  config.suite.wsd_variants = [["linear", 0.1]]
  config.suite.posthoc_sigma_rels = [0.02, 0.035, 0.05, 0.07, 0.1, 0.15, 0.2]
  config.suite.merge_last = []
  config.lock()
  compare.validate(config)
  lrs = previous_quickstart(config)
  results = {}
  for mode in ("one by one", "batched"):
    with tempfile.TemporaryDirectory() as tmp:
      workdir = epath.Path(tmp)
      planned = compare.plan_runs(config, workdir, lrs, [0])
      planned += compare.plan_branches(config, [p for p in planned if p.method == "constant"])
      before, start = counter.count, time.perf_counter()
      if mode == "batched":
        compare.train_all(planned, config, workdir, "previous quickstart")
      else:
        config.unlock()
        config.suite.max_batch_runs = 1
        config.lock()
        compare.train_all(planned, config, workdir, "previous quickstart, one by one")
        config.unlock()
        config.suite.max_batch_runs = compare.default_suite().max_batch_runs
        config.lock()
      compare.posthoc_and_merges(planned, config)
      results[mode] = (time.perf_counter() - start, counter.count - before)
  print("The previous release's quickstart runs (17 runs + 4 branches + post-hoc columns):")
  for mode, (seconds, compiles) in results.items():
    print(f"  {mode:11s}: {seconds / 60:5.1f} min, {compiles} XLA compilations")
  print(f"  ratio: {results['batched'][0] / results['one by one'][0]:.2f} of the time")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=6)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--quickstart", action="store_true")
  args = parser.parse_args()
  counter = CompileCounter()
  throughput(args.runs, args.steps, counter)
  if args.quickstart:
    quickstart(counter)


if __name__ == "__main__":
  main()
