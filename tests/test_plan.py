"""The suite as a plan of units: its cost arithmetic, and the same report whichever engine runs
the units (this process, a local Ray cluster of 2 workers, submitit's local SLURM executor),
also when a Ray worker is killed in the middle of a unit.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from anytime import loop
from anytime.experiments import compare, plan

import _tiny


def mini_suite(**suite_overrides) -> ml_collections.ConfigDict:
  return _tiny.tiny_suite(**{**dict(
      base_steps=6, multipliers=[1, 2], warmup_steps=1, lr_centre=3e-3, lr_points=2,
      max_extensions=0, tuning_seeds=[0], seeds=2, max_seeds=2, baselines=["cosine"],
      methods=["constant"], wsd_variants=[], posthoc_sigma_rels=[], merge_last=[],
      checkpoints_per_base=3, snapshots_per_base=3, evals_per_base=1, ema_factors=[25.0]),
      **suite_overrides})


def test_cost_is_six_n_tokens_and_hours_at_the_stated_mfu(tmp_path):
  config = mini_suite(cost_mfu=0.5, cost_peak_flops=1e12)
  methods = compare.validate(config)
  planned = plan.plan_runs(config, tmp_path, methods,
                           {("cosine", 6): [1e-3], ("constant", None): [1e-3, 2e-3]}, [0, 1])
  params = 12_345
  cost = plan.cost([p.spec for p in planned], config, params)
  steps = 2 * 6 + 2 * 2 * 12  # cosine at 6 steps x 2 seeds; constant to 12 steps x 2 LRs x 2
  tokens = steps * config.base.train.batch_size * config.base.train.seq_len
  assert (cost.runs, cost.steps, cost.tokens) == (6, steps, tokens)
  assert cost.flops == pytest.approx(6 * params * tokens, rel=1e-12)
  assert cost.accelerator_hours == pytest.approx(6 * params * tokens / (0.5 * 1e12) / 3600)
  assert not (tmp_path / "runs").exists()  # planning writes nothing


def _records(workdir: Path) -> dict[tuple, float]:
  stored = json.loads((workdir / "records.json").read_text())
  return {(r["method"], r["candidate"], r["horizon"], r["peak_value"], r["seed"]): r["loss"]
          for r in stored["records"]}


def _verdicts(workdir: Path) -> list[tuple[str, str, str]]:
  rows = (workdir / "report" / "deltas.csv").read_text().splitlines()
  header = rows[0].split(",")
  at = {name: header.index(name) for name in ("method", "horizon_steps", "verdict")}
  return [tuple(row.split(",")[at[k]] for k in ("method", "horizon_steps", "verdict"))
          for row in rows[1:]]


@pytest.fixture(scope="module")
def local_suite(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("local") / "suite"
  compare.run_suite(mini_suite(), str(workdir))
  return workdir


def _same_suite(workdir: Path, reference: Path) -> None:
  want, got = _records(reference), _records(workdir)
  assert got.keys() == want.keys()
  np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want], rtol=2e-6)
  assert _verdicts(workdir) == _verdicts(reference)
  for run in (workdir / "runs").iterdir():  # every run trained once: no repeated log rows
    steps = [r["step"] for r in loop.read_metrics(run / "main") if "grad_norm" in r]
    assert steps == sorted(set(steps)), run.name


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "slurm"])
def test_engines_write_the_local_executors_report(engine, local_suite, tmp_path):
  pytest.importorskip("ray" if engine == "ray" else "submitit")
  config = mini_suite()
  config.suite.executor.name = engine
  config.suite.executor.ray.num_cpus = 2
  config.suite.executor.slurm.cluster = "local"
  config.suite.executor.slurm.poll_s = 0.5
  workdir = tmp_path / "suite"
  compare.run_suite(config, str(workdir))
  _same_suite(workdir, local_suite)


def _kill_a_worker_when(ready) -> list[int]:
  """Kills (SIGKILL) the Ray worker processes running a unit once ``ready()``."""
  import psutil  # pylint: disable=g-import-not-at-top  (installed with ray)

  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and not ready():
    time.sleep(0.05)
  killed = []
  for proc in psutil.process_iter(["pid", "cmdline"]):
    cmdline = " ".join(proc.info["cmdline"] or [])
    if cmdline.startswith("ray::") and "tuning-1" in cmdline:
      os.kill(proc.info["pid"], signal.SIGKILL)
      killed.append(proc.info["pid"])
  return killed


@pytest.mark.slow
def test_a_ray_worker_killed_mid_unit_is_retried_and_resumes(local_suite, tmp_path):
  pytest.importorskip("ray")
  config = mini_suite()
  config.suite.executor.name = "ray"
  config.suite.executor.ray.num_cpus = 2
  workdir = tmp_path / "suite"
  target = workdir / "runs" / "constant_lr3.57e-3_s0" / "main"

  def ready() -> bool:  # the unit has saved a checkpoint before its end
    return target.exists() and any(p.name.isdigit() and int(p.name) < 12
                                   for p in target.iterdir())

  killed: list[int] = []
  killer = threading.Thread(target=lambda: killed.extend(_kill_a_worker_when(ready)))
  killer.start()
  compare.run_suite(config, str(workdir))
  killer.join()
  assert killed, "no Ray worker was running a unit when the checkpoint appeared"
  _same_suite(workdir, local_suite)


def _suite_process(workdir: Path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  worker = Path(__file__).with_name("_suite_worker.py")
  return subprocess.Popen([sys.executable, str(worker), str(workdir)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)


@pytest.fixture(scope="module")
def uninterrupted_suite(tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp("uninterrupted") / "suite"
  reference = _suite_process(workdir)
  out = reference.communicate(timeout=900)[0]
  assert reference.returncode == 0, out
  return workdir


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_a_signalled_suite_exits_0_and_resumes_to_the_same_report(signal_name, tmp_path,
                                                                  uninterrupted_suite):
  """SIGTERM (a preempted VM) or Ctrl-C to a running suite: the group in flight saves every
  member, one line says how to resume, exit 0; re-running the command finishes with the records
  and verdicts of an uninterrupted suite."""
  proc = _suite_process(tmp_path / "run")
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("[tuning-1-") and " step " in line and int(
        line.split(" step ")[1].split("/")[0]) >= 5:
      proc.send_signal(getattr(signal, signal_name))
      break
  output = "".join(lines) + proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, output
  stopped = [l for l in output.splitlines() if f"{signal_name}: saved a checkpoint" in l]
  assert len(stopped) == 1 and "re-run the same command to resume" in stopped[0].lower(), output
  step = stopped[0].split("at step ")[1].split()[0]
  members = [d for d in (tmp_path / "run" / "runs").iterdir() if (d / "main" / step).exists()]
  assert len(members) >= 2, (step, output)  # every member of the group in flight
  assert not (tmp_path / "run" / "records.json").exists()
  resumed = _suite_process(tmp_path / "run")
  out = resumed.communicate(timeout=900)[0]
  assert resumed.returncode == 0, out
  _same_suite(tmp_path / "run", uninterrupted_suite)
