"""Scheduling overhead per unit of each executor: no-op units, timed end to end.

    python benchmarks/executor_overhead.py [--units 20] [--engines local,ray,slurm]

A unit here does nothing (``execute`` returns at once), so all of a run's time is the engine's:
  - local: a Python call per unit;
  - ray: a local cluster of 2 CPUs (started once, timed apart: a real suite joins a running
    cluster); per unit a task with {"CPU": 1}, its runtime_env (the env of the suite), a
    worker process started for that runtime_env the first time, then reused;
  - slurm: submitit's local executor (cluster="local"): per unit a controller and a job
    subprocess that starts Python, imports ``anytime`` (jax) and unpickles the unit; on a real
    SLURM cluster add sbatch/squeue latency (seconds to minutes of queueing, by cluster).
Printed per engine: total seconds, seconds per unit (total / units: with 2 units running at
once on ray/slurm) and, for ray, the cluster's start. Needs ``pip install .[cluster]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Mapping

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [HERE, REPO]

from anytime.experiments import executors  # noqa: E402


@dataclasses.dataclass(frozen=True)
class NoOpUnit:
  key: str
  resources: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"CPU": 1})


def execute(unit: NoOpUnit) -> None:
  del unit


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--units", type=int, default=20)
  parser.add_argument("--engines", default="local,ray,slurm")
  args = parser.parse_args()
  import executor_overhead as bench  # pylint: disable=import-outside-toplevel
  # (workers import the unit type and execute by reference: from this module, not __main__)
  units = [bench.NoOpUnit(f"noop{i:03d}") for i in range(args.units)]
  env = {"PYTHONPATH": os.pathsep.join([HERE, REPO]), "ANYTIME_BENCH": "1"}
  print(f"{args.units} no-op units, {os.cpu_count()} CPUs")
  print(f"{'engine':>6} {'total s':>8} {'ms/unit':>9}")
  for name in args.engines.split(","):
    cfg = executors.default_executor_config()
    cfg.name = name
    cfg.ray.num_cpus = 2
    cfg.slurm.cluster = "local"
    cfg.slurm.poll_s = 0.05
    cfg.slurm.array_parallelism = 2
    extra = ""
    with tempfile.TemporaryDirectory() as tmp:
      cfg.slurm.folder = tmp
      if name == "ray":
        import ray  # pylint: disable=import-outside-toplevel
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        extra = f"  (+ {time.perf_counter() - start:.2f} s to start the local cluster)"
      try:
        start = time.perf_counter()
        executors.run_units(units, bench.execute, config=cfg, env=env, log=lambda _: None)
        total = time.perf_counter() - start
      finally:
        if name == "ray":
          ray.shutdown()
    print(f"{name:>6} {total:8.2f} {1e3 * total / len(units):9.2f}{extra}", flush=True)


if __name__ == "__main__":
  main()
