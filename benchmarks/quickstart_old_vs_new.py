"""The previous release's quickstart vs the same runs on this release, side by side.

    python benchmarks/quickstart_old_vs_new.py [--old-ref 4eb20e8] [--workdir DIR]
        [--set suite.base_steps=20 ...]   # overrides given to both commands (a quick check)

(a) The previous release (``git archive`` of ``--old-ref`` into a scratch folder) runs its own
quickstart command, ``python -m anytime.main compare --config configs/compare_tiny.py``: 16
runs one after the other, each with its own build and compiled train step. (b) This release
runs the same runs and evaluations (``benchmarks/previous_quickstart.py``) through its batched
engine. Both are fresh processes started by this script one after the other, each with an empty
compilation cache. Prints each one's wall time, the number of train-step programs XLA compiled
(JAX's compile log: compilations minus persistent-cache hits) and the ratio, then the cosine
envelope and constant + EMA-25 losses of both, to show the two computed the same table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPILED = re.compile(r"Finished XLA compilation of (\S+)")
CACHE_HIT = re.compile(r"Persistent compilation cache hit for '([^']+)'")


def extract(ref: str, into: Path) -> None:
  """The tree of commit ``ref`` of this repository, written to ``into``."""
  archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref],
                           check=True, capture_output=True).stdout
  with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
      tar.extractall(into, filter="data")
    else:  # this repository's own archive
      tar.extractall(into)


def timed(command: list[str], cwd: Path, cache: Path, log: Path) -> tuple[float, dict]:
  """Runs ``command``; returns its wall time and counts of compiled programs from its log."""
  env = dict(os.environ, PYTHONPATH=str(cwd), JAX_LOG_COMPILES="1",
             ANYTIME_COMPILATION_CACHE=str(cache), PYTHONUNBUFFERED="1")
  start = time.perf_counter()
  with open(log, "w") as out:
    result = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
  seconds = time.perf_counter() - start
  text = log.read_text()
  if result.returncode:
    sys.exit(f"{' '.join(command)} (in {cwd}) failed with exit code {result.returncode}; "
             f"its output: {log}")
  compiled, hits = COMPILED.findall(text), CACHE_HIT.findall(text)
  count = lambda names, pattern: sum(pattern in name for name in names)
  return seconds, dict(programs=len(compiled) - len(hits),
                       train_steps=count(compiled, "train_step") - count(hits, "train_step"))


def headline(table_json: Path) -> dict[str, dict[int, float]]:
  """{column: {horizon steps: loss}}: the cosine envelope and constant + EMA-25 of a report."""
  rows = json.loads(table_json.read_text())["rows"]
  out: dict[str, dict[int, float]] = {"cosine envelope": {}, "constant + EMA-25": {}}
  for row in rows:
    if "steps" in row:  # the previous release: one row per horizon, a key per column
      out["cosine envelope"][row["steps"]] = row.get("cosine")
      out["constant + EMA-25"][row["steps"]] = row.get("constant+ema_25")
    elif row["column"] in ("envelope", "constant+ema_25"):  # this release: a row per cell
      name = "cosine envelope" if row["column"] == "envelope" else "constant + EMA-25"
      out[name][row["horizon"]] = row["mean"]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--old-ref", default="4eb20e8",
                      help="commit of the previous release (default: 4eb20e8)")
  parser.add_argument("--workdir", default=None,
                      help="scratch folder (default: a new temporary one); must be empty")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override passed to both commands as --config.KEY=VALUE "
                           "(e.g. suite.base_steps=20 for a quick check); repeatable")
  args = parser.parse_args()
  overrides = [f"--config.{item}" for item in args.set]
  work = Path(args.workdir or tempfile.mkdtemp(prefix="quickstart_old_vs_new_"))
  if work.exists() and any(work.iterdir()):
    sys.exit(f"--workdir {work} is not empty; give an empty or new folder")
  work.mkdir(parents=True, exist_ok=True)
  old_tree = work / "old_release"
  extract(args.old_ref, old_tree)
  python = sys.executable
  runs = {
      "previous release": ([python, "-m", "anytime.main", "compare", "--config",
                            "configs/compare_tiny.py", "--workdir", str(work / "old_run")] + overrides,
                           old_tree),
      "this release": ([python, "-m", "anytime.main", "compare", "--config",
                        "benchmarks/previous_quickstart.py", "--workdir", str(work / "new_run")] + overrides,
                       ROOT),
  }
  results = {}
  for label, (command, cwd) in runs.items():
    print(f"{label}: {' '.join(command[1:])} ...", flush=True)
    slug = label.replace(" ", "_")
    results[label] = timed(command, cwd, work / f"cache_{slug}", work / f"{slug}.log")
    print(f"  {results[label][0] / 60:.2f} min", flush=True)
  old, new = results["previous release"], results["this release"]
  print(f"\nThe previous release's quickstart runs ({os.cpu_count()} CPU cores), "
        f"{args.old_ref} vs this release:")
  for label, (seconds, counts) in results.items():
    print(f"  {label:17s} {seconds / 60:6.2f} min  {counts['train_steps']:3d} train-step "
          f"programs compiled ({counts['programs']} programs in all)")
  print(f"  speed-up: {old[0] / new[0]:.2f}x (wall time)")
  tables = {"previous release": headline(work / "old_run" / "report" / "table.json"),
            "this release": headline(work / "new_run" / "report" / "table.json")}
  print("\nSame runs, same table (validation loss; seeds and data order as each release draws "
        "them):")
  for column in ("cosine envelope", "constant + EMA-25"):
    for label, table in tables.items():
      values = table.get(column, {})
      cells = "  ".join(f"{h}: {v:.4f}" if v is not None else f"{h}: -"
                        for h, v in sorted(values.items()))
      print(f"  {column:18s} {label:17s} {cells}")
  print(f"\nLogs and runs: {work}")


if __name__ == "__main__":
  main()
