"""Speed and accuracy of anytime.theory.linreg's exact and fast modes.

  python benchmarks/linreg_throughput.py                       # ~2 min on a 2-core CPU
  python benchmarks/linreg_throughput.py --mode=fast_vs_exact  # ~5 min on one H100 GPU

(with the package installed, or PYTHONPATH=. from the repository root).

``throughput`` runs, interleaved (so all see the same contention), a straightforward
``lax.scan`` over (22 LRs, d) float64 arrays written from the (s, s_bar, c) update rules
(``linreg.straightforward_risk``; it also emits both risks every step, as such code would)
and ``linreg.expected_risk`` in its exact mode (``fused`` and ``two_pass``), and prints
coordinate-updates per second (best of the repeats) and the ratios. ``fast_vs_exact`` runs the
Figure 3 panels (d = 500k, N = 50k, 22 LRs, constant / 1/sqrt(t) / t^-gamma* + average and
cosine at N) in both modes and prints the relative error of the fast mode; its exact half is
~5.5e11 coordinate-updates per panel (~50 s on one H100, hours on a 2-core CPU). Results as JSON
lines on stdout (and in --output if given).
"""

import json
import time

import numpy as np
from absl import app, flags

from anytime import schedules
from anytime.theory import linreg

flags.DEFINE_enum("mode", "throughput", ["throughput", "fast_vs_exact"], "What to measure.")
flags.DEFINE_integer("dim", 100_000, "Dimension (throughput).")
flags.DEFINE_integer("num_steps", 400, "Steps per timed run (throughput).")
flags.DEFINE_integer("repeats", 3, "Interleaved repeats (throughput).")
flags.DEFINE_integer("bins_per_octave", 32, "Fast-mode resolution (fast_vs_exact).")
flags.DEFINE_string("output", "", "Optional JSONL file for the results.")
FLAGS = flags.FLAGS

MULTIPLIERS = (1e-4, 2e-4, 5e-4, 7e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 3e-2, 5e-2, 7.5e-2, 0.1, 0.2,
               0.3, 0.5, 0.8, 1.0, 2.0, 3.0, 5.0, 10.0)


def _emit(record):
  print(json.dumps(record), flush=True)
  if FLAGS.output:
    with open(FLAGS.output, "a") as f:
      f.write(json.dumps(record) + "\n")


def throughput():
  problem = linreg.PowerLawProblem(FLAGS.dim, 1.5, 3.0, 0.01)
  steps = FLAGS.num_steps
  shape = linreg.schedule_shape(schedules.inverse_sqrt(1.0), steps)
  lrs = np.asarray(MULTIPLIERS) / problem.trace
  coords = linreg.exact_coordinates(problem)
  runs = {
      "straightforward_scan": lambda: linreg.straightforward_risk(problem, shape, lrs, [steps]),
      "expected_risk_fused": lambda: linreg.expected_risk(coords, problem.noise, shape, lrs,
                                                          [steps], method="fused"),
      "expected_risk_two_pass": lambda: linreg.expected_risk(coords, problem.noise, shape, lrs,
                                                             [steps], method="two_pass"),
  }
  for run in runs.values():  # compile
    run()
  updates = len(lrs) * problem.dim * steps
  times = {name: [] for name in runs}
  for _ in range(FLAGS.repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  rates = {name: updates / min(t) for name, t in times.items()}
  _emit({"mode": "throughput", "dim": problem.dim, "lrs": len(lrs), "steps": steps,
         "seconds": times, "updates_per_second": rates,
         "speedup_vs_straightforward": {name: rate / rates["straightforward_scan"]
                                        for name, rate in rates.items()}})


def fast_vs_exact():
  num_steps, checkpoints = 50_000, [1000, 2000, 3000, 5000, 8000, 10_000, 20_000, 50_000]
  for a in (1.1, 1.5, 1.9):
    for b in (a, 2 * a):
      problem = linreg.PowerLawProblem(500_000, a, b, 0.01)
      shapes = np.stack([linreg.schedule_shape(fn, num_steps) for fn in (
          schedules.constant(1.0), schedules.inverse_sqrt(1.0),
          schedules.polynomial_decay(1.0, exponent=problem.optimal_exponent),
          schedules.cosine(1.0, total_steps=num_steps, final_fraction=0.0))])
      lrs = np.asarray(MULTIPLIERS) / problem.trace
      record = {"mode": "fast_vs_exact", "capacity": a, "source": b}
      results = {}
      for fast in (False, True):
        start = time.perf_counter()
        results[fast], estimate = linreg.problem_risk(
            problem, shapes, lrs, checkpoints, fast=fast, bins_per_octave=FLAGS.bins_per_octave,
            estimate_error=fast)
        record["fast_seconds" if fast else "exact_seconds"] = time.perf_counter() - start
      exact, fast = results[False], results[True]
      ok = ~exact.diverged
      record["diverged_agree"] = bool(np.all(exact.diverged == fast.diverged))
      record["max_relative_error_last"] = float(np.abs(fast.last[ok] / exact.last[ok] - 1).max())
      record["max_relative_error_average"] = float(
          np.abs(fast.average[:, ok] / exact.average[:, ok] - 1).max())
      record["error_estimate"] = estimate
      _emit(record)


def main(argv):
  del argv
  {"throughput": throughput, "fast_vs_exact": fast_vs_exact}[FLAGS.mode]()


if __name__ == "__main__":
  app.run(main)
