"""The same suite run by the local executor and by Ray (one worker per core), side by side.

    python benchmarks/suite_executors.py [--config configs/compare_tiny.py] [--set suite.KEY=VALUE ...]

Each engine trains the suite in a fresh workdir, one after the other in this invocation, both
without JAX's persistent compilation cache (both compile cold); prints the wall time of each,
their ratio, and whether the two reports agree (records within float32 rounding, the same
verdicts). On a compute-bound 2-core CPU the ratio
is near 1 at best: one process already keeps both cores busy (the group's run axis is sharded
over one CPU device per core), so two workers only split the same arithmetic and each pays its
own imports and compilations. The gain is on a cluster, where units land on separate machines.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(REPO / "configs" / "compare_tiny.py"))
  parser.add_argument("--set", action="append", default=[],
                      help="suite.KEY=VALUE or base.KEY=VALUE (Python literal), repeatable")
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
  args = parser.parse_args()

  from anytime import parallel  # pylint: disable=g-import-not-at-top
  parallel.use_cpu_devices()
  import runpy  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

  from anytime.experiments import compare  # pylint: disable=g-import-not-at-top

  def config_for(engine: str):
    config = runpy.run_path(args.config)["get_config"]()
    for item in args.set:
      key, value = item.split("=", 1)
      section, _, rest = key.partition(".")
      config[section].unlock()
      config[section].update_from_flattened_dict({rest: ast.literal_eval(value)})
    config.suite.executor.name = engine
    config.suite.executor.ray.num_cpus = args.workers
    return config

  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for engine in ("local", "ray"):
      workdir = Path(tmp) / engine
      start = time.perf_counter()
      compare.run_suite(config_for(engine), str(workdir))
      seconds = time.perf_counter() - start
      records = json.loads((workdir / "records.json").read_text())["records"]
      deltas = (workdir / "report" / "deltas.csv").read_text().splitlines()
      results[engine] = (seconds, records, deltas)
    units = sum(1 for _ in (Path(tmp) / "local" / "runs").iterdir())
  (t_local, rec_local, d_local), (t_ray, rec_ray, d_ray) = results["local"], results["ray"]
  key = lambda r: (r["method"], r["candidate"], r["horizon"], r["peak_value"], r["seed"])
  a = {key(r): r["loss"] for r in rec_local}
  b = {key(r): r["loss"] for r in rec_ray}
  same = a.keys() == b.keys() and np.allclose([a[k] for k in a], [b[k] for k in a], rtol=2e-6)
  verdict = lambda rows: [row.split(",")[-1] for row in rows]
  print(f"suite: {args.config} {' '.join(args.set)}; {units} run directories")
  print(f"local executor: {t_local:8.1f} s")
  print(f"ray, {args.workers} workers: {t_ray:8.1f} s  (ratio ray/local {t_ray / t_local:.2f})")
  print(f"records equal to float32 rounding: {same}; verdicts equal: "
        f"{verdict(d_local) == verdict(d_ray)}")


if __name__ == "__main__":
  main()
