"""Failure-proof runs: preemption (SIGKILL, SIGTERM), damaged checkpoints, full or unwritable
disks, bad configs, the NaN guard, no pickle, and the TPU launcher's dry run.

The trainer runs in subprocesses (``python -m anytime.main``, 2 CPU devices) where a signal must
hit a real process, and in-process (the first 2 of the 8 test devices) elsewhere; both use the
same tiny config, so their results are bitwise comparable.
"""

from __future__ import annotations

import _thread
import copy
import dataclasses
import io
import json
import os
import pickle
import pickletools
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import pytest
from ml_collections import config_flags
from absl import flags

from anytime import workdir as workdir_lib
from anytime import branches, checkpoint, loop, parallel

pytestmark = pytest.mark.slow  # whole training runs, subprocesses or notebooks

REPO = Path(__file__).resolve().parents[1]
TOTAL_STEPS = 40
# The tiny run, as CLI overrides of configs/lm_tiny.py (the in-process runs apply the same).
OVERRIDES = {
    "model.d_model": 32, "model.num_layers": 2, "model.num_heads": 2, "model.mlp_dim": 64,
    "model.max_len": 32, "train.seq_len": 32, "train.batch_size": 8,
    "train.total_steps": TOTAL_STEPS, "train.checkpoint_every": 5, "train.keep_checkpoints": 20,
    "train.eval_every": 20, "train.eval_batches": 2, "train.log_every": 1,
    "data.max_bytes": 200_000, "optimizer.schedule.warmup_steps": 5, "parallel.num_devices": 2,
}
AVERAGES = {"ema_25": dict(kind="anytime_ema", factor=25.0)}


def tiny_config(**changes: Any) -> ml_collections.ConfigDict:
  """configs/lm_tiny.py with OVERRIDES and ``changes`` (keys with '__' for '.')."""
  sys.path.insert(0, str(REPO / "configs"))
  try:
    import lm_tiny  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  config = lm_tiny.get_config()
  config.optimizer.averages = copy.deepcopy(AVERAGES)
  for key, value in {**OVERRIDES, **{k.replace("__", "."): v for k, v in changes.items()}}.items():
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


def cli_args(workdir: Path, **changes: Any) -> list[str]:
  values = {**OVERRIDES, **{k.replace("__", "."): v for k, v in changes.items()}}
  return ([sys.executable, "-m", "anytime.main", "--config", str(REPO / "configs/lm_tiny.py"),
           "--workdir", str(workdir), "--config.optimizer.averages=" + json.dumps(AVERAGES)] +
          [f"--config.{k}={v}" for k, v in values.items()])


def subprocess_env(compilation_cache: Path | None = None) -> dict[str, str]:
  """2 CPU devices; an optional persistent compilation cache shared by the attempts of a run
  (the same executables, loaded instead of compiled again)."""
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO))
  if compilation_cache is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(compilation_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def losses(workdir: Path) -> dict[int, float]:
  return {m["step"]: m["loss"] for m in loop.read_metrics(workdir / "main") if "loss" in m}


def load_state(workdir: Path, step: int) -> Any:
  """The raw train state of ``step`` as numpy, on one device (whatever mesh wrote it)."""
  path = workdir / "main" / str(step) / "state"
  with checkpoint.ocp.StandardCheckpointer() as checkpointer:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(path).item_metadata)
    return jax.tree.map(np.asarray, checkpointer.restore(path, target))


def assert_trees_equal(a: Any, b: Any) -> None:
  """Bitwise equality of two trees of arrays (same structure)."""
  flat_a, tree_a = jax.tree.flatten_with_path(a)[0], jax.tree.structure(a)
  flat_b, tree_b = jax.tree.flatten_with_path(b)[0], jax.tree.structure(b)
  assert tree_a == tree_b
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path), strict=True)


def file_digests(directory: Path) -> dict[str, bytes]:
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
  """An uninterrupted in-process run of TOTAL_STEPS (checkpoints every 5 steps, all kept)."""
  workdir = tmp_path_factory.mktemp("reference")
  branches.train(tiny_config(), str(workdir))
  return workdir


class Trainer:
  """One ``python -m anytime.main`` subprocess; always killed on exit."""

  def __init__(self, workdir: Path, log: Path):
    self.workdir = workdir
    self.log_path = log
    self._log = log.open("w")
    self.proc = subprocess.Popen(cli_args(workdir), cwd=REPO,
                                 env=subprocess_env(workdir.parent / "jax_cache"),
                                 stdout=self._log, stderr=subprocess.STDOUT)

  def wait_for_step(self, step: int, timeout: float = 150.0) -> int:
    """Polls this process's own progress lines until ``step`` is done; returns the last one.

    (metrics.jsonl may still hold lines of the previous attempt until the resumed process
    truncates it, so it cannot tell whether this process has started training.)
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      self._log.flush()
      done = re.findall(r"\[main\] step (\d+)/", self.log_path.read_text(errors="replace"))
      if done and int(done[-1]) >= step:
        return int(done[-1])
      if self.proc.poll() is not None:
        raise AssertionError(f"trainer exited early ({self.proc.returncode}):\n{self.output()}")
      time.sleep(0.005)
    raise AssertionError(f"step {step} not reached in {timeout}s:\n{self.output()}")

  def output(self) -> str:
    self._log.flush()
    return self.log_path.read_text()[-3000:]

  def close(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()
    self._log.close()


# ------------------------------------------------------------------------------ preemption


def test_sigkill_and_sigterm_resume_bitwise(reference: Path, tmp_path: Path):
  """Killed twice with SIGKILL and once with SIGTERM at random steps, resumed each time: the
  final train state (params, optimizer state with the EMA, step) and every logged loss equal
  the uninterrupted run's, bit for bit. SIGTERM saves the current step and exits with 0."""
  rng = random.Random(int.from_bytes(os.urandom(4), "little"))
  workdir = tmp_path / "run"
  events = []
  resumed_from = 0
  for attempt, how in enumerate(("kill", "term", "kill")):
    trainer = Trainer(workdir, tmp_path / f"attempt_{attempt}.log")
    try:
      target = rng.randint(resumed_from + 2, resumed_from + 10)
      seen = trainer.wait_for_step(target)
      if how == "kill":
        trainer.proc.send_signal(signal.SIGKILL)
        assert trainer.proc.wait(timeout=30) == -signal.SIGKILL
      else:
        trainer.proc.send_signal(signal.SIGTERM)
        assert trainer.proc.wait(timeout=60) == 0, trainer.output()
        out = trainer.output()
        saved = int(out.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
        assert saved >= seen and saved < TOTAL_STEPS
        assert checkpoint.CheckpointStore(workdir / "main", read_only=True).latest_step() == saved
        assert (workdir / "main" / str(saved) / "commit_success.txt").exists()
      events.append((how, target, seen))
    finally:
      trainer.close()
    store = checkpoint.CheckpointStore(workdir / "main", read_only=True)
    resumed_from = store.latest_step() or 0
    store.close()
  print("interruptions (signal, target step, last logged step):", events)
  branches.train(tiny_config(), str(workdir))  # the last resume, to the end

  assert_trees_equal(load_state(workdir, TOTAL_STEPS), load_state(reference, TOTAL_STEPS))
  got, want = losses(workdir), losses(reference)
  assert sorted(got) == list(range(1, TOTAL_STEPS + 1))
  assert got == want  # exact float equality, every step
  evals = lambda d: [m for m in loop.read_metrics(d / "main") if "eval_loss/raw" in m]
  assert [(m["step"], m["eval_loss/raw"], m["eval_loss/ema_25"]) for m in evals(workdir)] == \
      [(m["step"], m["eval_loss/raw"], m["eval_loss/ema_25"]) for m in evals(reference)]
  assert_no_pickle(workdir)


# ------------------------------------------------------------------------------ damage


def test_damaged_checkpoints_fall_back_to_newest_intact(reference: Path, tmp_path: Path,
                                                        capsys, monkeypatch):
  """Step 40 truncated, step 35 missing directory entries: resume reports both, sets them aside
  untouched (never deleted), restores 30, and ends bitwise equal to the uninterrupted run."""
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  main = workdir / "main"
  truncated = [p for p in (main / "40" / "state").rglob("*") if p.is_file() and
               p.stat().st_size > 64 and "/d/" in str(p)]
  assert truncated
  for p in truncated:
    with p.open("r+b") as f:
      f.truncate(p.stat().st_size // 2)
  (main / "35" / "state" / "manifest.ocdbt").unlink()
  shutil.rmtree(main / "35" / "state" / "ocdbt.process_0")
  damaged = {step: file_digests(main / str(step)) for step in (35, 40)}

  def refuse(*args, **kwargs):
    raise AssertionError("pickle was used while restoring")

  monkeypatch.setattr(pickle, "load", refuse)
  monkeypatch.setattr(pickle, "loads", refuse)
  monkeypatch.setattr(pickle, "Unpickler", refuse)
  branches.train(tiny_config(), str(workdir))
  out = capsys.readouterr().out
  assert f"checkpoint step 40 in {main} could not be restored" in out
  assert f"checkpoint step 35 in {main} could not be restored" in out
  assert "resumed from step 30" in out
  for step, digests in damaged.items():  # kept byte for byte, out of the way
    assert file_digests(main / f"{step}.damaged") == digests
  assert_trees_equal(load_state(workdir, TOTAL_STEPS), load_state(reference, TOTAL_STEPS))
  assert losses(workdir) == losses(reference)


def test_no_checkpoint_restores_is_an_error_not_a_fresh_start(reference: Path, tmp_path: Path):
  """If every checkpoint is damaged, the trainer refuses to start over on top of them."""
  workdir = tmp_path / "run"
  main = workdir / "main"
  main.mkdir(parents=True)
  shutil.copy(reference / "main" / "config.json", main / "config.json")
  shutil.copytree(reference / "main" / "5", main / "5")
  (main / "5" / "state" / "_METADATA").write_text("{not json")
  for attempt in range(2):  # and again when re-run (e.g. by an automatic restart)
    with pytest.raises(loop.TrainingError, match=r"set aside: 5\.damaged\) but none could"):
      branches.train(tiny_config(), str(workdir))
  assert (main / "5.damaged" / "state" / "_METADATA").read_text() == "{not json"
  assert not (main / "5").exists() and not (main / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------ disks


def test_unwritable_workdir_is_a_clear_error(tmp_path: Path):
  """A workdir under a regular file (unwritable even for root): the error names the path."""
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(OSError) as info:
    branches.train(tiny_config(), str(blocker / "run"))
  assert str(blocker) in str(info.value)


def test_disk_full_keeps_previous_checkpoints(reference: Path, tmp_path: Path):
  """Files may not grow past 16 kB while resuming from step 10 (as on a full disk): the run
  fails with an error naming the workdir, and checkpoints 5 and 10 stay byte-for-byte intact."""
  workdir = tmp_path / "run"
  main = workdir / "main"
  main.mkdir(parents=True)
  for name in ("config.json", "metrics.jsonl", "5", "10"):
    src = reference / "main" / name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, main / name)
  before = {step: file_digests(main / str(step)) for step in (5, 10)}
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  error = None
  try:
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, hard))
    branches.train(tiny_config(train__total_steps=15), str(workdir))
  except Exception as e:  # pylint: disable=broad-except
    error = e
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous_handler)
  assert error is not None, "a run on a full disk must fail"
  chain, e = [], error
  while e is not None:
    chain.append(f"{type(e).__name__}: {e}")
    e = e.__cause__ or e.__context__
  print("disk-full error:", chain[0][:400])
  assert any(str(main) in m for m in chain), chain
  assert any("File too large" in m or "No space" in m for m in chain), chain
  for step, digests in before.items():
    assert file_digests(main / str(step)) == digests
  store = checkpoint.CheckpointStore(main, read_only=True)
  assert 10 in store.all_steps() and 15 not in store.all_steps()
  store.close()


# ------------------------------------------------------------------------------ configs


def test_compile_log_sees_compilations():
  """Control for the tests below: the compile log does see a compilation, by name."""
  with parallel.compile_log() as compiles:
    jax.jit(lambda x: x * 3 + 1)(np.arange(7.0))
  assert compiles == ["jit(<lambda>)"]


BAD_CONFIGS = [
    (dict(optimizer__schedule__warmup_steps=100), "optimizer.schedule.warmup_steps"),
    (dict(branches__cooldown_fraction=1.5), "branches.cooldown_fraction"),
    (dict(branches__budgets=[10, 100]), "branches.budgets"),
    (dict(parallel__mesh=dict(data=3, fsdp=1, tensor=1)), "parallel.mesh"),
    (dict(parallel__mesh=dict(data=-1, fsdp=-1, tensor=1)), "parallel.mesh"),
    (dict(train__batch_size=6, parallel__num_devices=4), "train.batch_size"),
    (dict(train__eval_batch_size=3), "train.eval_batch_size"),
    (dict(train__total_steps=0), "train.total_steps"),
    (dict(train__nan_policy="ignore"), "train.nan_policy"),
    (dict(train__seq_len=64), "model.max_len"),
    (dict(parallel__num_devices=64), "parallel.num_devices"),
    (dict(data__max_bytes=-1), "data.max_bytes"),
]


@pytest.mark.parametrize("changes,key", BAD_CONFIGS, ids=[k for _, k in BAD_CONFIGS])
def test_bad_config_refused_before_compilation(changes, key, tmp_path: Path):
  """Impossible values raise ValueError naming the key; nothing compiles, nothing is written."""
  with parallel.compile_log() as compiles, pytest.raises(
      ValueError, match=key.replace(".", r"\.")):
    branches.train(tiny_config(**changes), str(tmp_path / "run"))
  assert not compiles, compiles
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,key", [
    ("--config.train.bogus=1", "bogus"),
    ("--config.trian.total_steps=1", "trian"),
    ("--config.train.total_steps=ten", "total_steps"),
    ("--config.train.total_steps=2.5", "total_steps"),
    ("--config.train.nan_policy=1", "nan_policy"),
])
def test_cli_refuses_unknown_keys_and_wrong_types(flag, key):
  """The locked config refuses unknown keys and wrong types on the command line."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  with pytest.raises(Exception) as info:  # absl wraps the ConfigDict error
    values(["prog", f"--config={REPO / 'configs/lm_tiny.py'}", flag])
    values.config  # pylint: disable=pointless-statement
  assert key in str(info.value)


def test_python_config_refuses_unknown_keys_and_wrong_types():
  config = tiny_config()
  with pytest.raises(AttributeError, match="bogus"):
    config.train.bogus = 1
  with pytest.raises(TypeError, match="total_steps"):
    config.train.total_steps = "10"


# ------------------------------------------------------------------------------ NaN guard


class NaNInjector:
  """Wraps a train iterator; the batches of the given (1-based) steps get NaN weights."""

  def __init__(self, inner: Iterator, bad_steps: set[int]):
    self.inner, self.bad_steps, self.step = inner, bad_steps, 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = dict(next(self.inner))
    self.step += 1
    if self.step in self.bad_steps:
      batch["weights"] = np.full(batch["targets"].shape, np.nan, np.float32)
    else:
      batch["weights"] = np.ones(batch["targets"].shape, np.float32)
    return batch

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state) -> None:
    self.inner.set_state(state)


class NoStore:
  """A CheckpointStore stand-in that records saves."""

  def __init__(self):
    self.saved: list[int] = []

  def save(self, step, state, data_iterator=None, **kwargs) -> bool:
    self.saved.append(step)
    return True

  def wait(self) -> None:
    pass

  def latest_step(self) -> int | None:
    return self.saved[-1] if self.saved else None


def test_nan_guard_stop_and_skip(tmp_path: Path):
  """An injected NaN gradient: the update is never applied; "stop" raises TrainingError naming
  the step and leaves the last checkpoint as the latest; "skip" drops exactly that update (the
  state after it equals the state before, bitwise) and counts it; too many in a row stop."""
  config = tiny_config(train__total_steps=6, train__checkpoint_every=2, train__eval_every=100,
                       train__max_skipped_updates=2)
  run = loop.build_run(config, str(tmp_path))
  writer = loop.MetricsWriter(tmp_path / "metrics")

  store = NoStore()
  with pytest.raises(loop.TrainingError, match="non-finite loss or gradient at step 3"):
    loop.run_loop(run, run.init_state(), NaNInjector(run.make_train_iterator(), {3}), store,
                   writer, end_step=6)
  assert store.saved == [2]  # no checkpoint after the bad step

  # One step by hand: the state after a NaN batch is the state before it.
  state = run.init_state()
  good = NaNInjector(run.make_train_iterator(), set())
  state, _ = run.train_step(state, next(good), run.learning_rate(0))
  before = jax.tree.map(np.asarray, state)
  after, metrics = run.train_step(
      state, dict(next(good), weights=np.full((8, 32), np.nan, np.float32)), run.learning_rate(1))
  assert not bool(metrics["finite"])
  assert int(after.step) == 2
  assert_trees_equal(jax.tree.map(np.asarray, after._replace(step=before.step)), before)

  skip = loop.run_loop(
      dataclasses.replace(run, config=_with(config, train__nan_policy="skip")),
      run.init_state(), NaNInjector(run.make_train_iterator(), {3}), NoStore(),
      loop.MetricsWriter(tmp_path / "skip"), end_step=6)
  assert int(skip.step) == 6
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(skip.params))
  records = loop.read_metrics(tmp_path / "skip")
  by_step = {m["step"]: m for m in records if "loss" in m}
  assert [by_step[s]["skipped_updates"] for s in range(1, 7)] == [0, 0, 1, 1, 1, 1]
  assert np.isnan(by_step[3]["loss"]) and all(np.isfinite(by_step[s]["loss"]) for s in (4, 5, 6))

  with pytest.raises(loop.TrainingError, match="non-finite"):
    loop.run_loop(
        dataclasses.replace(run, config=_with(config, train__nan_policy="skip")),
        run.init_state(), NaNInjector(run.make_train_iterator(), {2, 3, 4}), NoStore(),
        loop.MetricsWriter(tmp_path / "skip3"), end_step=6)
  writer.close()


def _with(config: ml_collections.ConfigDict, **changes: Any) -> ml_collections.ConfigDict:
  config = copy.deepcopy(config)
  for key, value in changes.items():
    section, leaf = key.split("__")
    config[section][leaf] = value
  return config


# ------------------------------------------------------------------------------ no pickle

MIN_PICKLE_OPCODES = 8  # "\x80\x04)." (an empty tuple) turns up by chance in array bytes


def _parses_as_pickle(data: bytes) -> bool:
  """Whether ``data`` starts with a well-formed pickle of a non-trivial object (opcodes and
  stack are checked by ``pickletools.dis``; nothing is loaded). Random bytes can form a
  3-opcode pickle of an empty tuple; anything a program would store takes more opcodes."""
  try:
    pickletools.dis(data, out=io.StringIO())
    opcodes = 0
    for opcode, _, _ in pickletools.genops(data):
      opcodes += 1
      if opcode.name == "STOP":
        break
  except Exception:  # pylint: disable=broad-except
    return False
  return opcodes >= MIN_PICKLE_OPCODES


def assert_no_pickle(directory: Path) -> None:
  """No .pkl/.pickle file, and no file holding a pickle (protocol 2-5) at any offset."""
  files = [p for p in directory.rglob("*") if p.is_file()]
  assert files
  for p in files:
    assert p.suffix not in (".pkl", ".pickle", ".pck"), p
    data = p.read_bytes()
    for protocol in range(2, 6):
      start = data.find(bytes([0x80, protocol]))
      while start != -1:
        assert not _parses_as_pickle(data[start:]), f"{p} holds a pickle at byte {start}"
        start = data.find(bytes([0x80, protocol]), start + 1)


def test_pickle_scan_finds_a_pickle(tmp_path: Path):
  """Control: the scan does flag a pickle hidden inside another file."""
  (tmp_path / "clean.bin").write_bytes(b"\x80\x04\x95junk" + bytes(range(256)) + b"\x80\x04).")
  assert_no_pickle(tmp_path)
  (tmp_path / "state.bin").write_bytes(b"header" + pickle.dumps({"a": [1, 2]}, protocol=4))
  with pytest.raises(AssertionError, match="holds a pickle at byte 6"):
    assert_no_pickle(tmp_path)


def test_no_pickle_in_a_workdir(reference: Path):
  assert_no_pickle(reference)
  assert {p.name for p in (reference / "main").iterdir()} >= {"config.json", "metrics.jsonl",
                                                               "40", "tensorboard"}


# ------------------------------------------------------------------------------ launchers


def test_tpu_launcher_dry_run_prints_commands_and_never_calls_gcloud(tmp_path: Path):
  """--dry-run prints every gcloud command with the right flags; a gcloud on PATH that records
  its calls proves none is made."""
  fake_bin = tmp_path / "bin"
  fake_bin.mkdir()
  calls = tmp_path / "gcloud_calls"
  (fake_bin / "gcloud").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit 0\n")
  (fake_bin / "gcloud").chmod(0o755)
  env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
  result = subprocess.run(
      ["bash", str(REPO / "launch/tpu_vm.sh"), "--dry-run", "--name", "anytime-v4",
       "--zone", "us-central2-b", "--accelerator-type", "v4-16",
       "--runtime-version", "tpu-ubuntu2204-base", "--spot", "--project", "my-proj",
       "--workdir", "gs://bucket/runs/tiny", "--config", "configs/lm_tiny.py", "--",
       "--config.train.total_steps=100"],
      env=env, capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 0, result.stderr
  assert not calls.exists(), calls.read_text()
  lines = [l for l in result.stdout.splitlines() if l.startswith("gcloud ")]
  create = [l for l in lines if " tpu-vm create " in l]
  assert len(create) == 1
  for part in ("anytime-v4", "--zone=us-central2-b", "--accelerator-type=v4-16",
               "--version=tpu-ubuntu2204-base", "--spot", "--project=my-proj"):
    assert part in create[0], (part, create[0])
  ssh = [l for l in lines if " tpu-vm ssh " in l]
  assert ssh and all("--worker=all" in l for l in ssh)
  assert all("--zone=us-central2-b" in l for l in lines)
  start = [l for l in ssh if "anytime.main" in l]
  assert len(start) == 1
  for part in ("--config configs/lm_tiny.py", "--workdir gs://bucket/runs/tiny",
               "--config.train.total_steps=100"):
    assert part in start[0]
  assert any(" scp " in l or "git clone" in l or "pip install" in l for l in ssh + lines)

  bad = subprocess.run(["bash", str(REPO / "launch/tpu_vm.sh"), "--dry-run", "--zone", "z"],
                       env=env, capture_output=True, text=True, timeout=60, check=False)
  assert bad.returncode != 0 and "--name" in bad.stderr
  assert not calls.exists()


# ------------------------------------------------------------------------------ locks

_HOLD_LOCK = """
import sys, time
from anytime import checkpoint
lock = checkpoint.DirectoryLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _lock_holder(directory: Path) -> subprocess.Popen:
  proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(directory)], cwd=REPO,
                          env=subprocess_env(), stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "locked"
  return proc


def test_directory_lock_is_exclusive_and_names_the_holder(tmp_path: Path):
  """A second taker is refused at once with the holder's pid and host; a holder killed with
  SIGKILL leaves no stale lock; a released lock can be taken again."""
  directory = tmp_path / "run" / "main"
  holder = _lock_holder(directory)
  try:
    with pytest.raises(checkpoint.WorkdirLocked, match=rf"in use by pid {holder.pid} on host "):
      checkpoint.DirectoryLock(directory).acquire()
  finally:
    holder.kill()
    holder.wait()
  with checkpoint.DirectoryLock(directory) as lock:  # the dead holder's lock is gone
    assert json.loads((directory / ".lock").read_text())["pid"] == os.getpid()
    with pytest.raises(checkpoint.WorkdirLocked, match=rf"pid {os.getpid()}"):
      checkpoint.DirectoryLock(directory).acquire()
  assert not lock.held
  checkpoint.DirectoryLock(directory).acquire().release()


def test_remote_lock_file_stale_detection(tmp_path: Path, monkeypatch):
  """The lock-file variant (gs:// workdirs): a live holder refuses; a dead holder on this host,
  or a holder that stopped refreshing, is stale and taken over."""
  monkeypatch.setattr(checkpoint, "_is_local", lambda path: False)
  monkeypatch.setattr(checkpoint.time, "sleep", lambda s: None)
  directory = tmp_path / "main"
  directory.mkdir()
  host = checkpoint.socket.gethostname()
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    record = dict(pid=sleeper.pid, host=host, start_time=time.time(), updated=time.time())
    (directory / ".lock").write_text(json.dumps(record))
    with pytest.raises(checkpoint.WorkdirLocked, match=f"pid {sleeper.pid}"):
      checkpoint.DirectoryLock(directory).acquire()
  finally:
    sleeper.kill()
    sleeper.wait()
  lock = checkpoint.DirectoryLock(directory).acquire()  # that pid is dead now: stale
  assert json.loads((directory / ".lock").read_text())["pid"] == os.getpid()
  lock.release()
  assert not (directory / ".lock").exists()
  (directory / ".lock").write_text(json.dumps(dict(pid=1, host="elsewhere", start_time=0,
                                                   updated=time.time())))
  with pytest.raises(checkpoint.WorkdirLocked, match="host elsewhere"):
    checkpoint.DirectoryLock(directory).acquire()
  (directory / ".lock").write_text(json.dumps(dict(pid=1, host="elsewhere", start_time=0,
                                                   updated=time.time() - 3600)))
  checkpoint.DirectoryLock(directory).acquire().release()


# ------------------------------------------------------------------------------ writability


def _immutable(path: Path) -> bool:
  """Sets the immutable flag (unwritable even for root); False where chattr is not allowed."""
  result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False) \
      if shutil.which("chattr") else None
  return bool(result) and result.returncode == 0


def test_check_writable_names_the_path(tmp_path: Path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(NotADirectoryError, match=f"--workdir: {blocker} exists and is not a"):
    checkpoint.check_writable(blocker)
  with pytest.raises(PermissionError, match=f"--workdir: cannot write to {blocker}/run"):
    checkpoint.check_writable(blocker / "run")
  checkpoint.check_writable(tmp_path / "new" / "dir")
  assert (tmp_path / "new" / "dir").is_dir() and not list((tmp_path / "new" / "dir").iterdir())


def test_save_into_an_immutable_directory_fails_at_once(tmp_path: Path):
  """Orbax alone waits ~300 s and then raises a TimeoutError naming no path."""
  directory = tmp_path / "main"
  store = checkpoint.CheckpointStore(directory, async_save=True)
  if not _immutable(directory):
    store.close()
    pytest.skip("chattr +i is not permitted here")
  try:
    start = time.monotonic()
    with pytest.raises(PermissionError, match=f"checkpoint directory: cannot write to "
                                              f"{directory}"):
      store.save(1, {"x": np.zeros(3)})
    assert time.monotonic() - start < 10
  finally:
    subprocess.run(["chattr", "-i", str(directory)], check=True)
    store.close()


def test_checkpoint_format_version_is_recorded_and_checked(tmp_path: Path):
  directory = tmp_path / "main"
  checkpoint.CheckpointStore(directory).close()
  record = json.loads((directory / checkpoint.FORMAT_FILE).read_text())
  assert record == {"format": checkpoint.FORMAT_VERSION, "orbax": checkpoint.ocp.__version__}
  (directory / checkpoint.FORMAT_FILE).write_text(json.dumps({"format": 99, "orbax": "9.9"}))
  with pytest.raises(ValueError, match="holds checkpoints of format 99 .*orbax-checkpoint 9.9"):
    checkpoint.CheckpointStore(directory, read_only=True)


# ------------------------------------------------------------------------------ the CLI

ONE_LINE_CASES = {
    "missing config": (["--config", "{tmp}/missing.py"], None, "--config {tmp}/missing.py: no such file"),
    "broken config": (["--config", "{tmp}/cfg.py"], "def get_config(:\n",
                      "--config {tmp}/cfg.py:1: SyntaxError"),
    "config returns None": (["--config", "{tmp}/cfg.py"], "def get_config():\n  return None\n",
                            "get_config() returned NoneType, not an ml_collections.ConfigDict"),
    "partial config": (["--config", "{tmp}/cfg.py"],
                       "import ml_collections\ndef get_config():\n  return ml_collections."
                       "ConfigDict(dict(train=dict(total_steps=5)))\n", "the config lacks "),
    "config raises": (["--config", "{tmp}/cfg.py"], "def get_config():\n  return nope\n",
                      "get_config() failed: NameError"),
    "main is a file": (["--config", str(REPO / "configs/lm_tiny.py"), "--workdir", "{tmp}/w"],
                       None, "{tmp}/w/main exists and is not a directory"),
    "posthoc --step abc": (["posthoc", "--step", "abc", "--sigma-rel", "0.1"], None,
                           "--step takes comma-separated integers, got 'abc'"),
    "bad list": (["--config", str(REPO / "configs/lm_tiny.py"),
                  "--config.branches.budgets=[4,8"], None, "expected a list such as"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ONE_LINE_CASES))
def test_cli_errors_are_one_line(case: str, tmp_path: Path):
  """Bad input ends in one line naming what is wrong, never a traceback; nothing is created."""
  args, config_text, expected = ONE_LINE_CASES[case]
  if config_text is not None:
    (tmp_path / "cfg.py").write_text(config_text)
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "main").write_text("a file where the run directory should be")
  args = [a.format(tmp=tmp_path) for a in args]
  if "--workdir" not in args:
    args += ["--workdir", str(tmp_path / "w")]
  env = {**subprocess_env(), "ANYTIME_TRACEBACK": ""}
  result = subprocess.run([sys.executable, "-m", "anytime.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  errors = [l for l in result.stderr.splitlines() if l.startswith(("error:", "FATAL"))]
  assert len(errors) == 1 and expected.format(tmp=tmp_path) in errors[0], result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
      ["w", "main"] + (["cfg.py"] if config_text is not None else []))


def test_cli_list_overrides_and_schedule_switch(monkeypatch):
  """The README's list overrides parse; a schedule's name and options can be set one by one
  (options the new schedule does not take are dropped from the file's schedule)."""
  from anytime import main  # noqa: F401  (registers the list parser)
  from anytime import cli

  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True)
  argv = ["prog", f"--config={REPO / 'configs/lm_tiny.py'}",
          "--config.branches.budgets=[400,800]", "--config.train.eval_at=100,200"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags finds the overrides in sys.argv
  values(argv)
  assert values.config.branches.budgets == [400, 800]
  assert values.config.train.eval_at == [100, 200]
  argv, schedule = cli._take_free_form(
      ["prog", "--config.optimizer.schedule.name=inverse_sqrt",
       "--config.optimizer.schedule.offset", "40", "--config.train.total_steps=3"])
  assert argv == ["prog", "--config.train.total_steps=3"]
  assert schedule == {"name": "inverse_sqrt", "offset": 40}
  config = values.config
  config.optimizer.schedule = dict(name="cosine", peak_value=3e-3, total_steps=600,
                                   warmup_steps=5)
  cli._apply_schedule_overrides(config, schedule)
  assert config.optimizer.schedule.to_dict() == dict(name="inverse_sqrt", peak_value=3e-3,
                                                     offset=40, warmup_steps=5)
  with pytest.raises(AttributeError):  # the rest of the config stays locked
    config.train.bogus = 1
  with pytest.raises(ValueError, match="optimizer.schedule.name must be one of"):
    cli._apply_schedule_overrides(config, {"name": "cosin"})


# ------------------------------------------------------------------------------ launchers (2)


def test_tpu_launcher_quotes_the_log_dir_and_pins_versions(tmp_path: Path):
  """A --log-dir with spaces and shell syntax reaches the remote shell as one literal path
  (the remote command is run here by bash with stub programs); pip gets the constraints file,
  which pins the tested versions of JAX and Orbax."""
  evil = str(tmp_path / "my logs; touch PWNED")
  result = subprocess.run(
      ["bash", str(REPO / "launch/tpu_vm.sh"), "--dry-run", "--name", "n", "--zone", "z",
       "--workdir", "gs://b/r", "--config", "configs/lm_tiny.py", "--log-dir", evil],
      capture_output=True, text=True, timeout=60, check=True)
  import shlex  # pylint: disable=g-import-not-at-top

  commands = [shlex.split(l) for l in result.stdout.splitlines() if l.startswith("gcloud ")]
  remote = [a.split("=", 1)[1] for c in commands for a in c if a.startswith("--command=")]
  install = [c for c in remote if "pip install" in c]
  assert install and all(c.count("-c launch/constraints.txt") == 2 for c in install), install
  start = [c for c in remote if "anytime.main" in c][0]
  stubs = tmp_path / "bin"
  stubs.mkdir()
  for name, body in (("pgrep", "exit 1"), ("python3", "echo trainer started")):
    (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
    (stubs / name).chmod(0o755)
  (tmp_path / "anytime").mkdir()
  subprocess.run(["bash", "-c", start], cwd=tmp_path, check=True, timeout=30,
                 env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"})
  time.sleep(0.5)  # the stub trainer runs detached
  assert not (tmp_path / "anytime" / "PWNED").exists() and not (tmp_path / "PWNED").exists()
  logs = list(Path(evil).glob("*.log"))
  assert len(logs) == 1 and "trainer started" in logs[0].read_text()

  pins = dict(l.split("==") for l in (REPO / "launch/constraints.txt").read_text().splitlines()
              if "==" in l and not l.startswith("#"))
  from importlib import metadata  # pylint: disable=g-import-not-at-top

  assert pins["orbax-checkpoint"] == metadata.version("orbax-checkpoint")
  assert pins["jax"] == jax.__version__


_FAKE_TRAINER = """#!/usr/bin/env bash
for a in "$@"; do case "$a" in --config.distributed.process_id=*) id="${a#*=}" ;; esac; done
if [[ -n "${FAKE_FAIL:-}" && "$id" == 1 ]]; then exit 3; fi
trap 'echo "saved"; exit ${FAKE_CODE:-0}' TERM
echo "process $id training"
while true; do sleep 0.05; done
"""


@pytest.mark.slow
@pytest.mark.parametrize("env,want", [({}, 0), ({"FAKE_CODE": "5"}, 5), ({"FAKE_FAIL": "1"}, 3)],
                         ids=["saved", "child-fails-on-term", "child-fails"])
def test_local_multiprocess_exit_status(env, want, tmp_path: Path):
  """SIGTERM is forwarded and the script exits with its children's status: 0 when they saved
  and exited 0 (it used to exit 143); a failing child stops the others and its status wins."""
  fake = tmp_path / "fake_python"
  fake.write_text(_FAKE_TRAINER)
  fake.chmod(0o755)
  proc = subprocess.Popen(
      ["bash", str(REPO / "launch/local_multiprocess.sh"), "-n", "2", "-p", "1", "--",
       "--workdir", str(tmp_path / "w")], env={**os.environ, "PYTHON": str(fake), **env},
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if "FAKE_FAIL" not in env:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sum(
        "training" in p.read_text() for p in (tmp_path / "w" / "logs").glob("*.log")) < 2:
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=30) == want, proc.stdout.read()
  if "FAKE_FAIL" not in env:
    assert all("saved" in p.read_text() for p in (tmp_path / "w" / "logs").glob("*.log"))


def test_protected_step_survives_retention_and_resume(tmp_path: Path):
  """A protected step outlives keep_latest, also in a store opened later (a resumed run)."""
  state = {"x": np.zeros(3, np.float32)}
  store = checkpoint.CheckpointStore(tmp_path / "main", keep_latest=2, async_save=False)
  store.save(1, state)
  store.save(2, state)
  store.protect(2)
  for step in (3, 4, 5):
    store.save(step, state)
  assert store.all_steps() == [2, 4, 5]
  store.close()
  store = checkpoint.CheckpointStore(tmp_path / "main", keep_latest=2, async_save=False)
  for step in (6, 7):
    store.save(step, state)
  assert store.all_steps() == [2, 6, 7] and store.protected_steps() == [2]
  store.close()


@pytest.mark.parametrize("name", ["../main", "/tmp/elsewhere", "a/b", "..", ".hidden", "-x",
                                  "x" * 101])
def test_branch_names_are_one_safe_path_component(name: str, tmp_path: Path):
  with pytest.raises(ValueError, match=r"branch name \(--name\) must be"):
    workdir_lib.branch_dir(tmp_path, name)
  assert workdir_lib.branch_dir(tmp_path, "1-sqrt_400.v2") == tmp_path / "branches" / \
      "1-sqrt_400.v2"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["../main", "{outside}"])
def test_branch_cli_refuses_names_outside_branches(name: str, reference: Path, tmp_path: Path):
  """`branch --name ../main` used to delete main's checkpoints and replace its metrics, and
  `--name /some/dir` every numbered folder there: now refused in one line, nothing touched."""
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  outside = tmp_path / "outside"
  (outside / "7").mkdir(parents=True)
  before = file_digests(workdir), file_digests(outside), sorted(os.listdir(outside))
  result = subprocess.run(
      [sys.executable, "-m", "anytime.main", "branch", "--workdir", str(workdir),
       "--from-step", "30", "--cooldown-steps", "5", "--name", name.format(outside=outside)],
      cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: branch name (--name) must be")
  assert "Traceback" not in result.stderr
  assert (file_digests(workdir), file_digests(outside), sorted(os.listdir(outside))) == before
  assert not (workdir / "branches").exists()


# ------------------------------------------------------------------------------ NaN streaks


def test_skip_never_checkpoints_a_streak_and_keeps_the_last_good_one(tmp_path: Path, capsys):
  """nan_policy="skip", NaNs at steps 5-6, checkpoints every 2 steps, retention keeps 1: the
  saves of steps 6 and 8 wait until 3 finite updates in a row (step 9); the last checkpoint
  before the streak (4) survives retention; the eval at step 8 is marked."""
  config = tiny_config(train__total_steps=14, train__checkpoint_every=2, train__eval_every=4,
                       train__keep_checkpoints=1, train__nan_policy="skip",
                       train__clean_steps_before_save=3, train__async_checkpoints=False)
  run = loop.build_run(config, str(tmp_path))
  store = checkpoint.CheckpointStore(tmp_path / "main", keep_latest=1, async_save=False)
  saved = []
  original_save = store.save
  store.save = lambda step, *a, **k: (saved.append(step), original_save(step, *a, **k))[1]
  writer = loop.MetricsWriter(tmp_path / "main")
  loop.run_loop(run, run.init_state(), NaNInjector(run.make_train_iterator(), {5, 6}), store,
                writer, end_step=14)
  store.wait()
  writer.close()
  assert saved == [2, 4, 9, 10, 12, 14]
  assert store.all_steps() == [4, 14]  # 4 is protected: the newest state before the streak
  store.close()
  evals = {m["step"]: m for m in loop.read_metrics(tmp_path / "main") if "tokens" in m
           and any(k.startswith("eval") for k in m)}
  assert evals[8]["after_skipped_updates"] == 2
  assert "after_skipped_updates" not in evals[4] and "after_skipped_updates" not in evals[12]
  out = capsys.readouterr().out
  assert "step 6: not checkpointed (2 skipped updates, 0 of train.clean_steps_before_save=3" in out
  assert "the last good checkpoint is step 4" in out


def test_nan_messages_name_the_policy_in_force(tmp_path: Path):
  config = tiny_config(train__total_steps=6, train__checkpoint_every=2, train__eval_every=100,
                       train__max_skipped_updates=1)
  run = loop.build_run(config, str(tmp_path))
  with pytest.raises(loop.TrainingError) as stop:
    loop.run_loop(run, run.init_state(), NaNInjector(run.make_train_iterator(), {3}), NoStore(),
                  loop.MetricsWriter(tmp_path / "a"), end_step=6)
  assert "with train.nan_policy='stop'" in str(stop.value)
  assert "the last good checkpoint is step 2" in str(stop.value)
  assert "resume with train.nan_policy='skip'" in str(stop.value)
  with pytest.raises(loop.TrainingError) as skip:
    loop.run_loop(dataclasses.replace(run, config=_with(config, train__nan_policy="skip")),
                  run.init_state(), NaNInjector(run.make_train_iterator(), {3, 4}), NoStore(),
                  loop.MetricsWriter(tmp_path / "b"), end_step=6)
  message = str(skip.value)
  assert "2 non-finite updates in a row up to step 4" in message
  assert "train.max_skipped_updates=1 that train.nan_policy='skip' drops" in message
  assert "set train.nan_policy='skip'" not in message and "with 'skip'" not in message


def test_nan_and_spike_policies_are_safe_to_change_on_resume(tmp_path: Path):
  directory = tmp_path / "main"
  directory.mkdir()
  stored = tiny_config()
  (directory / "config.json").write_text(stored.to_json_best_effort())
  loop.check_resumable(tiny_config(train__nan_policy="skip", train__max_skipped_updates=3,
                                   train__spike_policy="stop", train__spike_factor=5.0,
                                   train__clean_steps_before_save=4), directory)
  with pytest.raises(ValueError, match="differing keys: train.seq_len"):
    loop.check_resumable(tiny_config(train__seq_len=16), directory)


def _spiking(run: loop.Run, steps: set[int], factor: float = 1e6) -> loop.Run:
  """The run with its reported loss multiplied by ``factor`` after the given (1-based) steps."""
  def train_step(state, batch, lr):
    step = int(state.step) + 1
    state, metrics = run.train_step(state, batch, lr)
    return state, dict(metrics, loss=metrics["loss"] * factor) if step in steps else metrics
  return dataclasses.replace(run, train_step=train_step)


def test_loss_spike_warns_or_stops(tmp_path: Path, capsys):
  """A finite loss 1e6 x its running level: "warn" prints one warning naming the policy and
  goes on; "stop" raises naming the policy and the alternatives; spike_factor=0 says nothing."""
  config = tiny_config(train__total_steps=8, train__checkpoint_every=4, train__eval_every=100)
  run = loop.build_run(config, str(tmp_path))
  state = loop.run_loop(_spiking(run, {5, 6}), run.init_state(), run.make_train_iterator(),
                        NoStore(), loop.MetricsWriter(tmp_path / "warn"), end_step=8)
  assert int(state.step) == 8
  out = capsys.readouterr().out
  assert out.count("loss spike") == 1 and "WARNING: [main] loss spike at step 5" in out
  assert "train.spike_policy='warn': going on" in out
  with pytest.raises(loop.TrainingError, match=r"loss spike at step 5: .*train.spike_policy="
                                               r"'stop': stopped; .*spike_factor=0"):
    loop.run_loop(_spiking(dataclasses.replace(run, config=_with(config,
                                                                 train__spike_policy="stop")),
                           {5}), run.init_state(), run.make_train_iterator(), NoStore(),
                  loop.MetricsWriter(tmp_path / "stop"), end_step=8)
  loop.run_loop(_spiking(dataclasses.replace(run, config=_with(config, train__spike_factor=0.0)),
                         {5}), run.init_state(), run.make_train_iterator(), NoStore(),
                loop.MetricsWriter(tmp_path / "off"), end_step=8)
  assert "loss spike" not in capsys.readouterr().out


# ------------------------------------------------------------------------------ restarts, locks


def test_orphaned_main_refuses_to_restart_and_start_over_keeps_the_old_files(reference: Path,
                                                                             tmp_path: Path):
  """Checkpoints gone, config.json + metrics.jsonl left: training used to start again from
  step 0 and delete the old metrics. It refuses (one ValueError naming what it found); with
  start_over it trains from scratch and keeps the old files under main/previous-0/."""
  workdir = tmp_path / "run"
  main = workdir / "main"
  shutil.copytree(reference, workdir)
  for p in list(main.iterdir()):
    if p.name.isdigit():
      shutil.rmtree(p)
  before = file_digests(main)
  with pytest.raises(ValueError, match=r"holds config.json and metrics.jsonl \(metrics up to "
                                       r"step 40\) but no checkpoint.*--start-over"):
    branches.train(tiny_config(), str(workdir))
  assert file_digests(main) == before
  branches.train(tiny_config(train__total_steps=8), str(workdir), start_over=True)
  assert (main / "previous-0" / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]
  assert (main / "previous-0" / "config.json").read_bytes() == before["config.json"]
  assert max(m["step"] for m in loop.read_metrics(main)) == 8
  with pytest.raises(ValueError, match="--start-over: .* holds checkpoints"):
    branches.train(tiny_config(train__total_steps=8), str(workdir), start_over=True)


def test_trainer_refuses_a_locked_workdir(reference: Path, tmp_path: Path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  before = file_digests(workdir / "main")
  holder = _lock_holder(workdir / "main")
  try:
    start = time.monotonic()
    with pytest.raises(checkpoint.WorkdirLocked, match=f"in use by pid {holder.pid}"):
      branches.train(tiny_config(train__total_steps=45), str(workdir))
    assert time.monotonic() - start < 10
  finally:
    holder.kill()
    holder.wait()
  after = file_digests(workdir / "main")
  assert {k: v for k, v in after.items() if k != ".lock"} == \
      {k: v for k, v in before.items() if k != ".lock"}


def test_second_cli_trainer_exits_at_once_naming_the_first(tmp_path: Path):
  """Two trainers on one workdir: the second used to crash inside an Orbax save and leave
  duplicate metrics rows; now it exits at once with one line naming the first's pid."""
  workdir = tmp_path / "run"
  first = Trainer(workdir, tmp_path / "first.log")
  try:
    first.wait_for_step(3)
    # Held (SIGSTOP) while the second starts: on a loaded machine the first could otherwise
    # finish and release the workdir before the second has even imported JAX.
    os.kill(first.proc.pid, signal.SIGSTOP)
    try:
      second = subprocess.run(cli_args(workdir), cwd=REPO, env=subprocess_env(),
                              capture_output=True, text=True, timeout=120, check=False)
    finally:
      os.kill(first.proc.pid, signal.SIGCONT)
    assert second.returncode != 0
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"error: WorkdirLocked: {workdir / 'main'} is in use by pid {first.proc.pid} on host ")
    assert first.proc.wait(timeout=300) == 0, first.output()
  finally:
    first.close()
  steps = [m["step"] for m in loop.read_metrics(workdir / "main") if "loss" in m]
  assert steps == list(range(1, TOTAL_STEPS + 1))


def test_immutable_main_fails_at_once_naming_it(reference: Path, tmp_path: Path):
  """Resuming into an immutable main used to hang ~300 s in Orbax and end in a TimeoutError."""
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  if not _immutable(workdir / "main"):
    pytest.skip("chattr +i is not permitted here")
  try:
    start = time.monotonic()
    with pytest.raises(PermissionError, match=f"--workdir: cannot write to {workdir / 'main'}"):
      branches.train(tiny_config(train__total_steps=45), str(workdir))
    assert time.monotonic() - start < 10
  finally:
    subprocess.run(["chattr", "-i", str(workdir / "main")], check=True)


@pytest.mark.parametrize("content", [b"", b"  \n\n\t\n", "caf\xe9".encode("latin-1") * 20],
                         ids=["empty", "blank", "latin-1"])
def test_bad_data_files_refused_before_compilation(content: bytes, tmp_path: Path):
  good = tmp_path / "train.txt"
  good.write_text("some text\n\nmore text\n" * 200)
  bad = tmp_path / "validation.txt"
  bad.write_bytes(content)
  with parallel.compile_log() as compiles, pytest.raises(ValueError, match=str(bad)):
    branches.train(tiny_config(data__source="text", data__train_patterns=(str(good),),
                               data__validation_patterns=(str(bad),)), str(tmp_path / "run"))
  assert not compiles, compiles
  assert not (tmp_path / "run").exists()


def _one_line_error(args: list[str]) -> str:
  result = subprocess.run([sys.executable, "-m", "anytime.main", *args], cwd=REPO,
                          env={**subprocess_env(), "ANYTIME_TRACEBACK": ""},
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, result.stderr[-3000:]
  return errors[0]


def test_cli_one_line_for_damaged_runs_and_divergence(reference: Path, tmp_path: Path):
  """An all-damaged checkpoint set, the NaN stop and a truncated post-hoc snapshot end in one
  line (they used to end in tracebacks)."""
  damaged = tmp_path / "damaged" / "main"
  damaged.mkdir(parents=True)
  shutil.copy(reference / "main" / "config.json", damaged / "config.json")
  shutil.copytree(reference / "main" / "5", damaged / "5")
  (damaged / "5" / "state" / "_METADATA").write_text("{not json")
  line = _one_line_error(cli_args(damaged.parent)[3:])
  assert "TrainingError: " in line and "set aside: 5.damaged) but none could be restored" in line

  line = _one_line_error(cli_args(tmp_path / "nan", optimizer__schedule__peak_value=1e30)[3:])
  assert "non-finite loss or gradient at step" in line and "train.nan_policy='stop'" in line

  snap = tmp_path / "snap"
  branches.train(tiny_config(train__total_steps=10, train__snapshot_every=5), str(snap))
  blobs = [p for p in (snap / "main" / "snapshots" / "10").rglob("*")
           if p.is_file() and "/d/" in str(p) and p.stat().st_size > 1000]
  assert blobs
  for p in blobs:
    with p.open("r+b") as f:
      f.truncate(100)
  line = _one_line_error(["posthoc", "--workdir", str(snap), "--step", "10",
                          "--sigma-rel", "0.05,0.1"])
  assert line.startswith("error: a post-hoc snapshot is damaged or truncated (") and \
      "/snapshots/10/" in line


def test_cli_stderr_drops_only_the_closed_event_loop_traceback_of_foreign_threads():
  """What TensorStore's own threads print after a failed restore ("Event loop is closed") is
  dropped; any other traceback of such a thread, and anything of a Python thread, is kept."""
  from anytime import cli  # pylint: disable=g-import-not-at-top

  out = io.StringIO()
  stream = cli._QuietClosedLoop(out)  # pylint: disable=protected-access
  closed = ["Traceback (most recent call last):\n", '  File "base_events.py", line 806\n',
            "    self._check_closed()\n", "RuntimeError: Event loop is closed", "\n"]
  other = closed[:3] + ["ValueError: something else\n"]

  def from_foreign_thread(chunks, done):
    for chunk in chunks:
      stream.write(chunk)
    done.set()

  for chunks in (closed, other):
    done = threading.Event()
    _thread.start_new_thread(from_foreign_thread, (chunks, done))  # not a threading.Thread
    assert done.wait(10)
  stream.write("".join(closed))  # the main thread: always written
  assert out.getvalue() == "".join(other) + "".join(closed)
