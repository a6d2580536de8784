"""The command line's own behaviour (anytime/main.py, anytime/cli.py): one way to find the
config, argv normalisation, ``compare --dry-run``, and how Ctrl-C ends a command.

The one-line errors of bad input are tested in tests/test_reliability.py (``test_cli_*``).
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from absl import flags

from anytime import cli

REPO = Path(__file__).resolve().parents[1]


def _sigint_default() -> None:
  """In the child before exec: SIGINT back to its default, so Python turns it into
  KeyboardInterrupt even when the test runner was started in the background (a non-interactive
  shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT)."""
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO), ANYTIME_TRACEBACK="")
  env.update(extra)
  return env


@pytest.mark.parametrize("argv,want", [
    (["prog", "--config", "a.py", "--workdir", "w"], "a.py"),
    (["prog", "train", "--config=a.py:x", "--config.train.total_steps=3"], "a.py:x"),
    (["prog", "--config.train.total_steps=3", "--workdir", "w"], None),
    (["prog", "--config"], None),
])
def test_config_path_is_the_one_way_to_find_the_config(argv, want):
  assert cli.config_path(argv) == want


def test_argv_normalisation():
  argv, options = cli.take_schedule_options(cli.normalize_dashes(
      ["prog", "branch", "--from-step=4", "--cooldown-steps", "2", "--dry-run",
       "--config.train.eval-at=1", "--config.optimizer.schedule.warmup_steps=3"]))
  assert argv == ["prog", "branch", "--from_step=4", "--cooldown_steps", "2", "--dry_run",
                  "--config.train.eval-at=1"]
  assert options == {"warmup_steps": 3}


def test_compare_dry_run_reaches_run_suite(monkeypatch, tmp_path: Path):
  from anytime import main, parallel  # pylint: disable=g-import-not-at-top
  from anytime.experiments import compare  # pylint: disable=g-import-not-at-top

  calls = []
  monkeypatch.setattr(compare, "run_suite", lambda config, workdir, **kw: calls.append(kw))
  monkeypatch.setattr(parallel, "use_compilation_cache", lambda *a: None)
  monkeypatch.setattr(parallel, "use_cpu_devices", lambda *a: None)
  for dashes, want in (("--dry-run", {"dry_run": True}), ("--nodry_run", {"dry_run": False})):
    argv = cli.normalize_dashes(["prog", "compare", f"--config={REPO / 'configs/compare_tiny.py'}",
                                 "--workdir", str(tmp_path), dashes])
    monkeypatch.setattr(sys, "argv", argv)  # config_flags and checked_config read sys.argv
    try:
      main.main(flags.FLAGS(argv))
    finally:
      flags.FLAGS.unparse_flags()
    assert calls.pop() == want
  assert not list(tmp_path.iterdir())


def test_compare_dry_run_is_accepted_by_the_suite():
  """The keyword main.py passes exists on the suite's entry point."""
  from anytime.experiments import compare  # pylint: disable=g-import-not-at-top
  assert "dry_run" in inspect.signature(compare.run_suite).parameters


# ------------------------------------------------------------------------------ Ctrl-C

_FAKE = """
import atexit, os, signal, sys, time
from anytime import cli

def main(argv, schedule_options):
  try:
    if {where!r} == "teardown":
      atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(30)))
      return
    print("started", flush=True)
    sys.stderr.write("a progress line on stderr\\n")
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
  finally:
    print("cleanup ran", flush=True)

sys.argv = ["prog"]
cli.run(main)
"""


@pytest.mark.parametrize("where", ["main", "teardown"])
def test_ctrl_c_ends_in_one_line_and_status_130(where: str):
  """Inside the command (its finally blocks run first) or while the interpreter shuts down."""
  result = subprocess.run([sys.executable, "-c", _FAKE.format(where=where)], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=120, check=False,
                          preexec_fn=_sigint_default)
  assert result.returncode == 130, result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  lines = result.stderr.splitlines()
  assert lines[-1] == cli.INTERRUPTED and lines.count(cli.INTERRUPTED) == 1, result.stderr
  assert "cleanup ran" in result.stdout


def test_ctrl_c_shows_the_traceback_with_anytime_traceback():
  result = subprocess.run([sys.executable, "-c", _FAKE.format(where="main")], cwd=REPO,
                          env=_env(ANYTIME_TRACEBACK="1"), capture_output=True, text=True,
                          timeout=120, check=False, preexec_fn=_sigint_default)
  assert result.returncode != 0 and "KeyboardInterrupt" in result.stderr, result.stderr
  assert cli.INTERRUPTED not in result.stderr


@pytest.mark.slow
def test_ctrl_c_while_the_config_file_loads(tmp_path: Path):
  """The real command line, interrupted before main() runs (config_flags runs get_config())."""
  config = tmp_path / "slow_config.py"
  config.write_text(textwrap.dedent("""\
      import time
      def get_config():
        print("loading", flush=True)
        time.sleep(60)
      """))
  process = subprocess.Popen(
      [sys.executable, "-m", "anytime.main", "compare", "--config", str(config), "--workdir",
       str(tmp_path / "w")], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
  try:
    deadline = time.monotonic() + 120
    assert process.stdout.readline().strip() == "loading" and time.monotonic() < deadline
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
  finally:
    process.kill()
  assert process.returncode == 130, stderr
  assert stderr.strip() == cli.INTERRUPTED, stderr
  assert not (tmp_path / "w").exists()
