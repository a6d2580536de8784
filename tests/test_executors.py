"""Executors (local | Ray | SLURM via submitit) on a toy unit that needs no JAX.

The toy unit "trains" by appending numbered rows to ``rows.txt`` in its own directory and
commits a checkpoint (the number of rows done) after each row; it resumes from that checkpoint
(dropping rows past it) and holds an flock on its directory, so a second claimant waits. Faults
are injected inside the unit: the worker SIGKILLs its own process, or raises, once. Ray and
submitit tests skip when the ``cluster`` extra is not installed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping

import pytest

from anytime.experiments import executors

TAG = "ANYTIME_TOY_TAG"
TAG_AT_IMPORT = os.environ.get(TAG)  # in a worker: proves env was set before this import
TESTS = str(pathlib.Path(__file__).resolve().parent)
REPO = str(pathlib.Path(__file__).resolve().parents[1])
ENV = {TAG: "tagged", "PYTHONPATH": os.pathsep.join([TESTS, REPO])}


@dataclasses.dataclass(frozen=True)
class ToyUnit:
  key: str
  directory: str
  rows: int = 5
  die_at: int = -1  # SIGKILL the worker process after writing this row (first attempt only)
  fail_at: int = -1  # raise after writing this row (first attempt only)
  sleep_s: float = 0.01
  resources: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"CPU": 1})


def execute(unit: ToyUnit) -> None:
  """Idempotent toy training: skip when done, resume from the checkpoint, one writer."""
  d = pathlib.Path(unit.directory)
  d.mkdir(parents=True, exist_ok=True)
  with open(d / ".lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # a second claimant waits here
    checkpoint, rows = d / "checkpoint", d / "rows.txt"
    done = int(checkpoint.read_text()) if checkpoint.exists() else 0
    if done >= unit.rows:
      return
    with open(d / "attempts.txt", "a") as f:
      f.write(f"{os.getpid()} {done} {TAG_AT_IMPORT} {os.environ.get(TAG)}\n")
    kept = rows.read_text().splitlines()[:done] if rows.exists() else []
    rows.write_text("".join(line + "\n" for line in kept))  # rows past the checkpoint: dropped
    for i in range(done, unit.rows):
      time.sleep(unit.sleep_s)
      with open(rows, "a") as f:
        f.write(f"{unit.key} {i} {os.environ.get(TAG)}\n")
      if i == unit.die_at and not (d / "died").exists():
        (d / "died").touch()
        os.kill(os.getpid(), signal.SIGKILL)
      if i == unit.fail_at and not (d / "failed").exists():
        (d / "failed").touch()
        raise RuntimeError(f"injected failure in {unit.key}")
      (d / "checkpoint.tmp").write_text(str(i + 1))
      os.replace(d / "checkpoint.tmp", checkpoint)


def always_fails(unit: ToyUnit) -> None:
  raise RuntimeError(f"{unit.key} cannot work")


def units_in(root: pathlib.Path, **faults) -> list[ToyUnit]:
  return [ToyUnit(key=f"u{i}", directory=str(root / f"u{i}"), **faults.get(f"u{i}", {}))
          for i in range(3)]


def outputs(root: pathlib.Path) -> dict[str, str]:
  return {p.parent.name: p.read_text() for p in sorted(root.glob("*/rows.txt"))}


def attempts(root: pathlib.Path, key: str) -> list[list[str]]:
  return [line.split() for line in (root / key / "attempts.txt").read_text().splitlines()]


def expected(rows: int = 5) -> dict[str, str]:
  return {f"u{i}": "".join(f"u{i} {j} tagged\n" for j in range(rows)) for i in range(3)}


def config(name: str, **over) -> "executors.ml_collections.ConfigDict":
  cfg = executors.default_executor_config()
  cfg.name = name
  cfg.ray.num_cpus = 2
  cfg.slurm.cluster = "local"
  cfg.slurm.poll_s = 0.05
  cfg.slurm.timeout_min = 5
  for path, value in over.items():
    section, key = path.split("__")
    cfg[section][key] = value
  return cfg


@pytest.fixture(scope="module")
def ray_cluster():
  """One local Ray cluster of 2 CPUs for this module's Ray tests (run_units then joins it)."""
  ray = pytest.importorskip("ray")
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
           runtime_env={"env_vars": {"PYTHONPATH": ENV["PYTHONPATH"]}})
  yield ray
  ray.shutdown()


@pytest.fixture
def engine(request, tmp_path):
  """The executor config for one engine, its extra imported or the test skipped."""
  name = request.param
  if name == "ray":
    request.getfixturevalue("ray_cluster")
  if name == "slurm":
    pytest.importorskip("submitit")
  return config(name, slurm__folder=str(tmp_path / "submitit"))


# ------------------------------------------------------------------------------------------
# Config, description.


@pytest.mark.parametrize("path,value,key", [
    ("name", "kubernetes", "suite.executor.name"),
    ("ray.max_retries", -1, "suite.executor.ray.max_retries"),
    ("ray.num_cpus_per_unit", -1.0, "suite.executor.ray.num_cpus_per_unit"),
    ("slurm.cluster", "pbs", "suite.executor.slurm.cluster"),
    ("slurm.timeout_min", 0, "suite.executor.slurm.timeout_min"),
    ("slurm.setup", ["module load cuda", 3], "suite.executor.slurm.setup"),
    ("slurm.folder", "gs://b/x", "suite.executor.slurm.folder"),
])
def test_bad_config_is_one_line_naming_the_key(path, value, key):
  cfg = executors.default_executor_config()
  section, _, name = path.rpartition(".")
  (cfg[section] if section else cfg)[name] = value
  with pytest.raises(ValueError) as info:
    executors.validate_executor_config(cfg)
  message = str(info.value)
  assert message.startswith(key + ":") and "accepted" in message and "\n" not in message
  with pytest.raises(ValueError, match=key.replace(".", r"\.")):
    executors.run_units([], execute, config=cfg)


def test_bad_units_are_refused(tmp_path):
  twice = [ToyUnit("a", str(tmp_path)), ToyUnit("a", str(tmp_path))]
  with pytest.raises(ValueError, match="repeated: \\['a'\\]"):
    executors.run_units(twice, execute, config=config("local"))
  with pytest.raises(ValueError, match="not filesystem-safe"):
    executors.run_units([ToyUnit("a/b", str(tmp_path))], execute, config=config("local"))


def test_describe_every_engine_without_its_extra(tmp_path):
  units = units_in(tmp_path) + [ToyUnit("g", str(tmp_path / "g"), resources={"GPU": 8})]
  local = executors.describe(units, config("local"))
  assert "4 unit(s) in this process" in local and "3 x {CPU: 1}" in local
  ray = executors.describe(units, config("ray", ray__address="auto"))
  assert "4 task(s) on the Ray cluster at auto" in ray and "max_retries=3" in ray
  assert "num_gpus: 8" in ray
  tpu = executors.describe([ToyUnit("t", "t", resources={"TPU": 4, "TPU-v4-16-head": 1})],
                           config("ray"))
  assert "TPU slice" in tpu and "TPU-v4-16-head" in tpu
  slurm = executors.describe(units, config("slurm", slurm__cluster="slurm",
                                           slurm__partition="gpu", slurm__setup=["module load x"]),
                             workdir=str(tmp_path))
  assert "4 job(s) in 2 array(s)" in slurm and "partition gpu" in slurm
  assert "gpus_per_node=8" in slurm and "module load x" in slurm
  assert str(tmp_path / "executor" / "slurm") in slurm
  with pytest.raises(ValueError, match="suite.executor.slurm.folder: required"):
    executors.describe(units, config("slurm"), workdir="gs://bucket/suite")


# ------------------------------------------------------------------------------------------
# Same outputs on every engine; env before import; faults.


def test_local_runs_units_in_order_and_skips_finished_ones(tmp_path):
  lines = []
  executors.run_units(units_in(tmp_path), execute, config=config("local"), env=ENV,
                      log=lines.append)
  assert outputs(tmp_path) == expected()
  assert [line for line in lines if "unit " in line][0].endswith("unit 1/3 u0")
  assert TAG not in os.environ  # the local engine restores the environment
  executors.run_units(units_in(tmp_path), execute, config=config("local"), env=ENV)
  assert all(len(attempts(tmp_path, f"u{i}")) == 1 for i in range(3))  # skipped, not re-run


@pytest.mark.slow
def test_ray_starts_and_stops_a_local_cluster_of_its_own(tmp_path):
  ray = pytest.importorskip("ray")
  if ray.is_initialized():
    pytest.skip("a Ray connection is already open in this process")
  units = units_in(tmp_path)[:1]
  executors.run_units(units, execute, config=config("ray"), env=ENV, log=lambda _: None)
  assert outputs(tmp_path) == {"u0": expected()["u0"]} and not ray.is_initialized()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "slurm"], indirect=True)
def test_engine_matches_local_and_sets_env_before_import(engine, tmp_path):
  executors.run_units(units_in(tmp_path / "local"), execute, config=config("local"), env=ENV)
  executors.run_units(units_in(tmp_path / "remote"), execute, config=engine, env=ENV)
  assert outputs(tmp_path / "remote") == outputs(tmp_path / "local") == expected()
  for i in range(3):
    (pid, start, at_import, at_run), = attempts(tmp_path / "remote", f"u{i}")
    assert int(pid) != os.getpid() and start == "0"
    assert at_import == at_run == "tagged"  # set in the worker before the unit's module loaded


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "slurm"], indirect=True)
def test_killed_worker_is_retried_and_resumes(engine, tmp_path):
  units = units_in(tmp_path, u1={"die_at": 2}, u2={"fail_at": 3})
  executors.run_units(units, execute, config=engine, env=ENV, log=lambda _: None)
  assert outputs(tmp_path) == expected()  # no duplicated or missing rows
  assert [a[1] for a in attempts(tmp_path, "u0")] == ["0"]
  # u1 died after writing row 2, before committing it: the retry starts at its checkpoint, 2
  first, retry = attempts(tmp_path, "u1")
  assert (first[1], retry[1]) == ("0", "2") and first[0] != retry[0]
  assert [a[1] for a in attempts(tmp_path, "u2")] == ["0", "3"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "slurm"], indirect=True)
def test_failure_after_retries_names_units_and_logs(engine, tmp_path):
  engine.ray.max_retries = engine.slurm.max_retries = 1
  units = units_in(tmp_path)[:2]
  with pytest.raises(executors.UnitsFailed) as info:
    executors.run_units(units, always_fails, config=engine, env=ENV, log=lambda _: None)
  assert sorted(info.value.failures) == ["u0", "u1"]
  assert "u0, u1" in str(info.value) and "logs:" in str(info.value)
  assert "cannot work" in str(info.value)


@pytest.mark.slow
def test_killed_coordinator_rerun_finishes_the_rest(tmp_path):
  """SIGKILL the process running run_units mid-suite; running it again skips the finished
  unit, resumes the interrupted one from its checkpoint and runs the last one."""
  script = textwrap.dedent(f"""
      import dataclasses, pathlib, sys
      sys.path[:0] = [{TESTS!r}, {REPO!r}]
      import test_executors as t
      from anytime.experiments import executors
      units = [dataclasses.replace(u, sleep_s=0.2) for u in t.units_in(pathlib.Path({str(tmp_path)!r}))]
      executors.run_units(units, t.execute, config=t.config("local"), env=t.ENV)
  """)
  coordinator = subprocess.Popen([sys.executable, "-c", script], env={**os.environ},
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  checkpoint = tmp_path / "u1" / "checkpoint"
  deadline = time.monotonic() + 60
  while not (checkpoint.exists() and checkpoint.read_text() == "2"):
    assert time.monotonic() < deadline and coordinator.poll() is None
    time.sleep(0.02)
  coordinator.send_signal(signal.SIGKILL)
  coordinator.wait()
  assert not (tmp_path / "u2").exists()
  executors.run_units(units_in(tmp_path), execute, config=config("local"), env=ENV)
  assert outputs(tmp_path) == expected()
  assert [a[1] for a in attempts(tmp_path, "u0")] == ["0"]  # finished: skipped on the re-run
  assert [a[1] for a in attempts(tmp_path, "u1")][0] == "0"
  assert [a[1] for a in attempts(tmp_path, "u1")][1] in ("2", "3")  # from its checkpoint
  assert [a[1] for a in attempts(tmp_path, "u2")] == ["0"]
