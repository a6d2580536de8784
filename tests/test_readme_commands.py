"""Every command of the README's quickstart and "Running the experiments" table runs.

The commands are parsed from README.md at test time: every `code span` of the table's command
column and every line of the quickstart's code block. ``COVERAGE`` says, for each of them, which
scenario below executes it (on a tiny config: small models, few steps, README step numbers
scaled down as ``STEPS`` says), or why it is not a command to execute here. A README command
that ``COVERAGE`` does not know fails the test, so the list cannot fall behind the README.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# The tiny trainer: a d=32 model on 2 CPU devices, checkpoints every 10 steps (all kept).
TINY_TRAIN = [
    "--config.model.d_model=32", "--config.model.num_layers=2", "--config.model.num_heads=2",
    "--config.model.mlp_dim=64", "--config.model.max_len=32", "--config.train.seq_len=32",
    "--config.train.batch_size=8", "--config.train.eval_every=20", "--config.train.eval_batches=1",
    "--config.train.log_every=10", "--config.train.checkpoint_every=10",
    "--config.train.keep_checkpoints=10", "--config.data.max_bytes=200000",
    "--config.optimizer.schedule.warmup_steps=2", "--config.parallel.num_devices=2",
]
TINY_SUITE = [
    "--config.base.model.d_model=16", "--config.base.model.mlp_dim=32",
    "--config.base.model.max_len=16", "--config.base.train.seq_len=16",
    "--config.base.train.batch_size=4", "--config.base.train.eval_batch_size=4",
    "--config.base.train.eval_batches=1", "--config.base.data.max_bytes=100000",
    "--config.suite.base_steps=10", "--config.suite.multipliers=[1,2]",
    "--config.suite.warmup_steps=2", "--config.suite.lr_points=2",
    "--config.suite.max_extensions=0", "--config.suite.seeds=2",
    "--config.suite.methods=['constant']", "--config.suite.inverse_sqrt_offset=4.0",
    "--config.suite.snapshots_per_base=2", "--config.suite.evals_per_base=2",
    "--config.suite.checkpoints_per_base=5",
    "--config.suite.posthoc_sigma_rels=[0.1]", "--config.suite.merge_last=[2]",
]
TINY_LINREG = ["--config.dim=2000", "--config.num_steps=500", "--config.tune_steps=(100,200,500)",
               "--config.fit_range=(100,500)", "--config.lr_multipliers=(0.01,0.1,1.0)",
               "--config.curve_points=5", "--config.estimate_error=False"]
TINY_RIVER = ["--config.budgets=(20,40)", "--config.warmup_steps=2", "--config.eval_every=10",
              "--config.cyclic_cycle_steps=20", "--config.inverse_sqrt_offset=10.0",
              "--config.diagnostics.hessian_every=20", "--config.diagnostics.power_iterations=3",
              "--config.diagnostics.interpolation_points=5"]
# README step numbers -> the tiny run's (a main run of 60 steps; branch points on checkpoints).
STEPS = {"2000": "60", "400": "20", "800": "40", "100": "10", "50": "10"}

# README command (exact code span / quickstart line) -> the scenario that runs it, or why not.
COVERAGE = {
    "python -m anytime.main --config configs/lm_tiny.py --workdir DIR "
    "[--config.train.total_steps=2000]": "train",
    "python -m anytime.main branch --workdir DIR --from-step 400 --cooldown-steps 100 "
    "--shape 1-sqrt --final-fraction 0.1": "branch",
    "... branch --mode wsd_s ...": "wsd_s",
    "--from-step": "wsd_s",
    'schedule.name="wsd_s"': "wsd_s",
    "--config.branches.budgets='[400,800]' --config.branches.cooldown_fraction=0.2": "train",
    "python -m anytime.main compare --config configs/compare_tiny.py --workdir DIR": "compare",
    "compare_shared_corpus.py": "compare",
    "python -m anytime.main report --workdir DIR": "compare",
    "python -m anytime.main compare --config configs/compare_150m.py --workdir DIR --dry-run":
        "dry_run",
    "... compare ... --config.suite.executor.name=ray":
        "not run here: the engines are tested by tests/test_executors.py (extra [cluster])",
    "--config.train.snapshot_every=50": "train",
    "python -m anytime.main posthoc --workdir DIR --step 400,800 "
    "--sigma-rel 0.02,0.05,0.1,0.2": "posthoc",
    "python -m anytime.theory.linreg --config configs/linreg_figure3.py --workdir DIR": "labs",
    "python -m anytime.theory.river_valley --config configs/river_valley.py --workdir DIR":
        "labs",
    "launch/local_multiprocess.sh": "launchers",
    "launch/tpu_vm.sh": "launchers",
    "launch/slurm_gpu.sbatch": "launchers",
    "launch/README.md": "not a command (a document)",
    "python3 -m pip install -e \".[train]\" && python3 -m anytime.main compare --config "
    "configs/compare_tiny.py --workdir /tmp/anytime_compare": "compare",
}


def _section(text: str, title: str) -> str:
  start = text.index(f"## {title}")
  end = text.find("\n## ", start + 1)
  return text[start:end if end != -1 else None]


def readme_commands() -> list[str]:
  """The table's code spans (command column) and the quickstart's code lines."""
  text = README.read_text()
  commands = []
  for line in _section(text, "Running the experiments").splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
    if len(cells) >= 2 and not set(cells[-1]) <= set("-: ") and cells[-1] != "command":
      commands += re.findall(r"`([^`]+)`", line.split("|", 2)[2])
  quickstart = re.search(r"```bash\n(.*?)```", text[:text.index("## Running the experiments")],
                         re.S)
  if quickstart:
    commands += [l.strip() for l in quickstart.group(1).splitlines()
                 if "anytime.main" in l or "anytime.theory" in l]
  return commands


def test_coverage_matches_the_readme():
  """Every README command is covered; every covered command is still in the README."""
  commands = readme_commands()
  assert commands, "no commands found in README.md"
  missing = [c for c in commands if c not in COVERAGE]
  assert not missing, f"README commands no scenario covers (add them to COVERAGE): {missing}"
  stale = [c for c in COVERAGE if c not in commands]
  assert not stale, f"COVERAGE lists commands the README no longer has: {stale}"


# ------------------------------------------------------------------------------ executing


def _env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO), PYTHON=sys.executable)
  return env


def adapt(command: str, workdir: Path, extra: list[str] = ()) -> list[str]:
  """A README command as argv: DIR -> workdir, optional [...] kept, step numbers scaled down,
  ``...`` -> ``python -m anytime.main``, ``python`` -> this interpreter, tiny overrides added."""
  command = command.replace("[", "").replace("]", "") if "'[" not in command else command
  argv = []
  for token in shlex.split(command):
    for readme, tiny in STEPS.items():  # before DIR: a path may hold digits (pytest-50)
      token = re.sub(rf"(?<![\d.]){readme}(?![\d.])", tiny, token)
    argv.append(token.replace("DIR", str(workdir)))
  if argv and argv[0] == "...":
    argv[:1] = ["python", "-m", "anytime.main"]
  if argv and argv[0] in ("python", "python3"):
    argv[0] = sys.executable
  return [a for a in argv if a != "..."] + list(extra)


def test_adapt_leaves_digits_of_the_workdir_alone(tmp_path: Path):
  """README step numbers are scaled in the command, never in the path that replaces DIR."""
  workdir = tmp_path / "pytest-50" / "run_2000"
  argv = adapt("python -m anytime.main branch --workdir DIR --from-step 400", workdir)
  assert argv[-3:] == [str(workdir), "--from-step", "20"]


def run(argv: list[str], timeout: float = 300) -> str:
  start = time.monotonic()
  result = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)
  print(f"{time.monotonic() - start:5.1f}s  {' '.join(argv[:8])} ...")
  assert result.returncode == 0, (argv, result.stdout[-2000:], result.stderr[-3000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  return result.stdout


def _command(scenario: str, contains: str) -> str:
  return next(c for c in readme_commands() if COVERAGE.get(c) == scenario and contains in c)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
  """Rows "train", "branches planned" and the post-hoc row's training, as one 60-step run."""
  workdir = tmp_path_factory.mktemp("readme") / "run"
  budgets = _command("train", "branches.budgets")
  snapshots = _command("train", "snapshot_every")
  argv = adapt(_command("train", "lm_tiny"), workdir,
               TINY_TRAIN + adapt(budgets, workdir) + adapt(snapshots, workdir))
  out = run(argv)
  assert "[main] step 60/60" in out
  return workdir


@pytest.mark.slow
def test_train_with_planned_branches_and_snapshots(trained: Path):
  main = trained / "main"
  steps = {int(p.name) for p in main.iterdir() if p.name.isdigit()}
  assert 60 in steps
  assert sorted(p.name for p in (trained / "branches").iterdir()) == ["linear_20", "linear_40"]
  assert (main / "snapshots").is_dir()


@pytest.mark.slow
def test_branch_and_posthoc(trained: Path):
  run(adapt(_command("branch", "branch"), trained))
  assert (trained / "branches" / "1-sqrt_30" / "lineage.json").exists()
  run(adapt(_command("posthoc", "posthoc"), trained))


@pytest.mark.slow
def test_wsd_s_branch_and_wsd_s_schedule(tmp_path: Path):
  """WSD-S by adoption (main paused at --from-step) and as one run with schedule.name="wsd_s"."""
  workdir = tmp_path / "paused"
  run(adapt(_command("train", "lm_tiny"), workdir, TINY_TRAIN) +
      ["--config.train.total_steps=20"])
  branch = adapt(_command("wsd_s", "--mode wsd_s"), workdir)
  run(branch + ["--workdir", str(workdir), "--from-step", "20", "--cooldown-steps", "5"])
  run(adapt(_command("train", "lm_tiny"), tmp_path / "one_run", TINY_TRAIN) + [
      "--config.train.total_steps=30", "--config.optimizer.schedule.name=wsd_s",
      "--config.optimizer.schedule.decay_ends=[10,20,30]",
      "--config.optimizer.schedule.cooldown_steps=4"])


@pytest.mark.slow
def test_compare_and_report(tmp_path: Path):
  quickstart = next(c for c in readme_commands() if c.startswith("python3 -m pip install"))
  compare = quickstart.split("&&", 1)[1].replace("/tmp/anytime_compare", "DIR")
  table = _command("compare", "compare_tiny")
  assert compare.strip().replace("python3 ", "python ") == table  # one command, run once
  workdir = tmp_path / "suite"
  run(adapt(compare, workdir, TINY_SUITE), timeout=600)
  assert (workdir / "report").is_dir()
  shared = REPO / "configs" / _command("compare", "shared_corpus")
  assert shared.exists()  # the real-text suite needs a corpus; its config must at least load
  run([sys.executable, "-c", "import runpy, sys; sys.path.insert(0, 'configs'); "
       f"runpy.run_path({str(shared)!r})['get_config']()"])
  before = (workdir / "report").stat().st_mtime_ns
  run(adapt(_command("compare", "report"), workdir))
  assert sorted(p.name for p in (workdir / "report").iterdir())
  assert (workdir / "report").stat().st_mtime_ns >= before


def test_dry_run_of_the_150m_suite(tmp_path: Path):
  """The accelerator suite's plan and cost print without training or writing anything."""
  command = _command("dry_run", "compare_150m")
  workdir = tmp_path / "dry"
  out = run(adapt(command, workdir))
  assert "Units of phase 1 (36)" in out and "accelerator-hours" in out, out
  assert not workdir.exists()


@pytest.mark.slow
def test_labs(tmp_path: Path):
  run(adapt(_command("labs", "linreg"), tmp_path / "linreg", TINY_LINREG))
  run(adapt(_command("labs", "river_valley"), tmp_path / "rv", TINY_RIVER))
  assert (tmp_path / "rv" / "summary.json").exists()


@pytest.mark.slow
def test_launchers(tmp_path: Path):
  """local_multiprocess.sh trains for real (2 processes x 1 device); tpu_vm.sh in --dry-run
  (it never calls gcloud); slurm_gpu.sbatch has no SLURM here: its syntax is checked."""
  workdir = tmp_path / "mp"
  tiny = [a for a in TINY_TRAIN if "num_devices" not in a]
  run(["bash", str(REPO / _command("launchers", "local_multiprocess")), "-n", "2", "-d", "1",
       "--", "--config", "configs/lm_tiny.py", "--workdir", str(workdir), *tiny,
       "--config.train.total_steps=10"], timeout=300)
  assert (workdir / "main" / "10").is_dir()
  out = run(["bash", str(REPO / _command("launchers", "tpu_vm")), "--dry-run", "--name", "t",
             "--zone", "z", "--workdir", "gs://b/r", "--config", "configs/lm_tiny.py"])
  assert "tpu-vm create" in out
  run(["bash", "-n", str(REPO / _command("launchers", "slurm_gpu"))])
