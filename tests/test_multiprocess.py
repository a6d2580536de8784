"""Multi-host correctness on one machine: 2 JAX processes x 2 CPU devices on 127.0.0.1.

A 2-process run (launch/local_multiprocess.sh) must compute exactly what 1 process with the same
4-device mesh computes from the same global batches; each process reads only its share of the
data; checkpoints move between process counts and mesh shapes; metrics are written once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from anytime import branches, checkpoint, loop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_reliability import (REPO, NoStore, assert_no_pickle, load_state, tiny_config)

pytestmark = pytest.mark.slow  # whole training runs, subprocesses or notebooks

STEPS = 20
LOCAL_BATCH = 4  # global 8 over 2 processes
CHANGES = dict(train__total_steps=STEPS, train__checkpoint_every=10, train__eval_every=10,
               parallel__num_devices=4)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env() -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO), PYTHON=sys.executable)
  return env


class ConcatenatedIterators:
  """The global batch of a P-process run, assembled in one process from the P local iterators."""

  def __init__(self, iterators: list[Any]):
    self.iterators = iterators

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(it) for it in self.iterators]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
  """The tiny run on 2 processes x 2 devices, through launch/local_multiprocess.sh."""
  workdir = tmp_path_factory.mktemp("two_process")
  overrides = {k.replace("__", "."): v for k, v in CHANGES.items()}
  overrides["parallel.num_devices"] = 0  # all 4 devices of the 2 processes
  from test_reliability import cli_args  # pylint: disable=g-import-not-at-top

  args = cli_args(workdir, **{k.replace(".", "__"): v for k, v in overrides.items()})[3:]
  proc = subprocess.Popen(
      ["bash", str(REPO / "launch/local_multiprocess.sh"), "-n", "2", "-d", "2", "-p",
       str(free_port()), "--", *args], cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    out, _ = proc.communicate(timeout=400)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, 9)
      proc.wait()
  logs = {i: (workdir / "logs" / f"process_{i}.log").read_text() for i in range(2)}
  assert proc.returncode == 0, out + logs[0][-3000:] + logs[1][-3000:]
  return workdir


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> tuple[Path, Any]:
  """One process, 4 devices, same mesh, fed the concatenation of the 2 processes' batches."""
  workdir = tmp_path_factory.mktemp("one_process")
  config = tiny_config(**CHANGES)
  run = loop.build_run(config, str(workdir))
  t = config.train
  from anytime.lm import data as data_lib  # pylint: disable=g-import-not-at-top

  iterators = [data_lib.make_train_iterator(
      config.data, run.tokenizer, seq_len=t.seq_len, global_batch_size=t.batch_size,
      seed=config.seed, process_index=p, process_count=2) for p in range(2)]
  writer = loop.MetricsWriter(workdir / "main")
  state = loop.run_loop(run, run.init_state(), ConcatenatedIterators(iterators), NoStore(),
                         writer, end_step=STEPS)
  writer.close()
  store = checkpoint.CheckpointStore(workdir / "main", async_save=False)
  store.save(STEPS, state)  # a 1-process checkpoint, for the reverse restore
  store.close()
  return workdir, jax.tree.map(np.asarray, state)


def by_path(tree: Any) -> dict[tuple[str, ...], np.ndarray]:
  """Leaves keyed by their path as strings (a NamedTuple and the dict Orbax makes of it agree)."""
  name = lambda k: str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))))
  return {tuple(map(name, path)): np.asarray(x)
          for path, x in jax.tree.flatten_with_path(tree)[0]}


def records(workdir: Path) -> list[dict[str, Any]]:
  return loop.read_metrics(workdir / "main")


# Cross-process all-reduces (gloo) add the 4 devices' partial sums in another order than XLA
# does inside one process, so results agree to float32 rounding, not bit for bit (measured: at
# most 1.3e-7 relative on the losses of this run). Wrong data or sharding gives ~1e-2.
RTOL = 2e-6


def test_two_processes_compute_what_one_process_computes(two_process_run, one_process_run):
  """Same global batches, same 4-device mesh: the same per-step losses and eval losses (to
  float32 rounding of the all-reduce), and the same final params and optimizer state."""
  one_dir, one_state = one_process_run
  two = {m["step"]: m for m in records(two_process_run) if "loss" in m}
  one = {m["step"]: m for m in records(one_dir) if "loss" in m}
  assert sorted(two) == list(range(1, STEPS + 1)) == sorted(one)
  got, want = (np.array([d[s]["loss"] for s in sorted(d)]) for d in (two, one))
  print("max relative loss difference:", np.max(np.abs(got / want - 1)))
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)
  evals = lambda d: np.array([(m["step"], m["eval_loss/raw"], m["eval_loss/ema_25"])
                              for m in records(d) if "eval_loss/raw" in m])
  assert evals(two_process_run)[:, 0].tolist() == [10, 20]
  np.testing.assert_allclose(evals(two_process_run), evals(one_dir), rtol=RTOL, atol=0)
  restored = load_state(two_process_run, STEPS)  # written by 2 processes, read by 1
  assert int(restored["step"]) == STEPS
  got_leaves, want_leaves = by_path(restored), by_path(one_state)
  assert sorted(got_leaves) == sorted(want_leaves)
  pairs = [(got_leaves[k], want_leaves[k]) for k in want_leaves if k[0] != "rng"]
  worst = 0.0
  for a, b in pairs:
    assert a.shape == b.shape and a.dtype == b.dtype
    scale = np.max(np.abs(b)) if b.size else 0.0
    if scale:
      worst = max(worst, float(np.max(np.abs(a - b)) / scale))
  print("max relative state difference:", worst)
  assert worst < 1e-4


def test_each_process_reads_only_its_share(two_process_run, one_process_run):
  """Each process saved its own iterator state: its shard of the sampler, and exactly
  STEPS x LOCAL_BATCH records consumed (global index p, p+2, ...); the two shards' batches
  share no window."""
  data = two_process_run / "main" / str(STEPS) / "data"
  assert sorted(p.name for p in data.iterdir() if p.suffix == ".json") == [
      "process_0-of-2.json", "process_1-of-2.json"]
  for p in range(2):
    state = json.loads((data / f"process_{p}-of-2.json").read_text())
    assert f"shard_index={p}, shard_count=2" in state["sampler"]
    assert state["last_seen_indices"] == {"0": p + 2 * (STEPS * LOCAL_BATCH - 1)}
  one_dir, _ = one_process_run
  config = tiny_config(**CHANGES)
  from anytime.lm import data as data_lib  # pylint: disable=g-import-not-at-top

  tok = data_lib.build_tokenizer(config.data, str(one_dir / "main"))
  windows = []
  for p in range(2):
    it = data_lib.make_train_iterator(config.data, tok, seq_len=32, global_batch_size=8, seed=0,
                                      process_index=p, process_count=2)
    rows = np.concatenate([next(it)["inputs"] for _ in range(STEPS)])
    assert rows.shape == (STEPS * LOCAL_BATCH, 32)
    windows.append({r.tobytes() for r in rows})
  assert not windows[0] & windows[1]


def test_metrics_and_reports_written_once(two_process_run):
  """Process 0 alone writes metrics.jsonl (each step once), config.json, TensorBoard events and
  the progress lines; process 1 writes none of them."""
  main = two_process_run / "main"
  steps = [m["step"] for m in records(two_process_run) if "loss" in m]
  assert steps == list(range(1, STEPS + 1))
  eval_steps = [m["step"] for m in records(two_process_run) if "eval_loss/raw" in m]
  assert eval_steps == [10, 20]
  assert len(list((main / "tensorboard").iterdir())) == 1
  assert json.loads((main / "config.json").read_text())["distributed"]["num_processes"] == 2
  logs = [(two_process_run / "logs" / f"process_{i}.log").read_text() for i in range(2)]
  assert logs[0].count(f"[main] step {STEPS}/{STEPS}") == 1
  assert "[main] step" not in logs[1] and "[main] eval" not in logs[1]
  assert_no_pickle(main)


def test_resume_with_another_process_count_is_a_clear_error(two_process_run, tmp_path):
  """The data iterator state of 2 processes cannot feed 1: a ValueError that says so (and
  the checkpoints are not mistaken for damaged ones)."""
  import shutil  # pylint: disable=g-import-not-at-top

  workdir = tmp_path / "run"
  shutil.copytree(two_process_run / "main", workdir / "main")
  config = tiny_config(**{**CHANGES, "train__total_steps": STEPS + 5,
                          "parallel__num_devices": 0})
  with pytest.raises(ValueError, match="data iterator state of 2 processes, but this run has 1"):
    branches.train(config, str(workdir))
  assert not list((workdir / "main").glob("*.damaged*"))


def test_one_process_checkpoint_restored_by_two_processes_on_another_mesh(one_process_run,
                                                                          tmp_path):
  """A checkpoint of 1 process on mesh data=4 loads on 2 processes with mesh fsdp=2 x tensor=2
  (params sharded differently): the gathered params equal the saved ones bitwise."""
  one_dir, one_state = one_process_run
  config = tiny_config(**{**CHANGES, "parallel__num_devices": 0})
  config.parallel.mesh = dict(data=1, fsdp=2, tensor=2)
  config_json = config.to_json_best_effort()
  port = free_port()
  out = tmp_path / "params.npz"
  procs = []
  try:
    for p in range(2):
      procs.append(subprocess.Popen(
          [sys.executable, str(REPO / "tests/_mp_restore.py"), str(one_dir / "main"),
           str(STEPS), str(out), f"127.0.0.1:{port}", "2", str(p), config_json],
          cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
          text=True))
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  assert [proc.returncode for proc in procs] == [0, 0], "\n".join(o[-3000:] for o in outputs)
  assert "on 2 processes" in outputs[0] and "'fsdp': 2" in outputs[0]
  with np.load(out, allow_pickle=False) as restored:
    want = {jax.tree_util.keystr(path): x
            for path, x in jax.tree.flatten_with_path(one_state.params)[0]}
    assert sorted(restored.files) == sorted(want)
    for name, value in want.items():
      np.testing.assert_array_equal(restored[name], value, err_msg=name, strict=True)
