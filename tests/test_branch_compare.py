"""Decay branches and WSD-S on CPU: exact invariants on tiny runs.

A branch starts from exactly the main state at its branch step and continues the main schedule;
the main branch is unchanged by branching; WSD-S adopts the decayed state. (The comparison
suite, which trains its branches with ``anytime.batched``, is tested in tests/test_suite.py.)
"""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from anytime import workdir as workdir_lib
from anytime import branches, checkpoint, loop, schedules

import _tiny

# Whole training runs and subprocesses that share most of their programs.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("compilation_cache")]

REPO = Path(__file__).resolve().parent.parent
TIMING_KEYS = ("steps_per_sec", "tokens_per_sec", "mfu")
PEAK = 3e-3


def tiny_config(**overrides):
  return _tiny.tiny_config(**{"train.eval_batches": 1, "train.log_every": 1,
                              "parallel.mesh": {"data": 1, "fsdp": 1, "tensor": 1},
                              "parallel.num_devices": 1, **overrides})


def branching_config():
  """A 16-step constant-LR run with anytime EMAs, a LAWA window and planned linear WSD branches
  (to 10%) ending at 8 and 16: the horizon-free run of a 2-horizon comparison."""
  config = tiny_config(**{"train.total_steps": 16, "train.eval_every": 4,
                          "train.eval_at": [8, 16], "train.checkpoint_every": 4})
  config.unlock()
  config.optimizer.schedule = dict(name="constant", peak_value=PEAK, warmup_steps=2,
                                   warmup_init_fraction=0.1)
  config.optimizer.averages = {
      "ema_6p25": dict(kind="anytime_ema", factor=6.25),
      "ema_25": dict(kind="anytime_ema", factor=25.0),
      "lawa": dict(kind="window", every=1, size=10)}
  config.branches.update(dict(budgets=[8, 16], cooldown_fraction=0.2, shape="linear",
                              final_fraction=0.1))
  config.lock()
  return config


# The constant run's planned WSD branches: budgets 8 and 16, a fifth of each as cooldown.
PLANNED = {"linear_8": (6, 2), "linear_16": (13, 3)}  # name -> (branch step S, cooldown K)


# ---------------------------------------------------------------------------- helpers


def without_timing(records):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


_ABSTRACT = {}


def restore(directory, step, config):
  """A checkpoint's train state as numpy (the abstract state does not depend on the schedule)."""
  key = config.to_json_best_effort()
  if key not in _ABSTRACT:
    workdir = directory.parent.parent if directory.parent.name == workdir_lib.BRANCHES else \
        directory.parent
    _ABSTRACT[key] = loop.build_run(config, str(workdir)).abstract_state
  store = checkpoint.CheckpointStore(directory, read_only=True)
  state = store.restore(step, _ABSTRACT[key])
  store.close()
  return jax.tree.map(np.asarray, jax.device_get(state))


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def file_bytes(directory):
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def by_step(records, key):
  return {r["step"]: r[key] for r in records if key in r}


def lr_of(schedule, step):
  return float(np.float32(schedule(step)))


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
  """The constant-LR main run (16 steps), which took its WSD branches in the loop."""
  config = branching_config()
  workdir = tmp_path_factory.mktemp("planned")
  branches.train(config, str(workdir))
  return workdir, config


@pytest.fixture(scope="module")
def plain(planned, tmp_path_factory):
  """The same main run without branches, checkpointed at 6, 12, 16."""
  _, planned_config = planned
  config = copy.deepcopy(planned_config)
  config.unlock()
  config.branches.budgets = []
  config.train.checkpoint_every = 6  # safe on resume: does not change what is computed
  config.lock()
  workdir = tmp_path_factory.mktemp("plain")
  branches.train(config, str(workdir))
  return workdir, config


def copy_workdir(source, target):
  shutil.copytree(source, target)
  return target


# ---------------------------------------------------------------------------- branches


def test_main_with_planned_branches_equals_main_without(plain, planned):
  plain_dir, config = plain
  planned_dir, planned_config = planned
  assert [p._asdict() for p in branches.planned_branches(planned_config)] == [
      dict(name=name, branch_step=start, cooldown_steps=cooldown, shape="linear",
           final_fraction=0.1) for name, (start, cooldown) in PLANNED.items()]
  main_plain, main_planned = workdir_lib.main_dir(plain_dir), workdir_lib.main_dir(planned_dir)
  # Branch points 6 and 13 are kept next to the latest three.
  assert checkpoint.CheckpointStore(main_planned, read_only=True).all_steps() == [6, 12, 13, 16]
  assert checkpoint.CheckpointStore(main_plain, read_only=True).all_steps() == [6, 12, 16]
  for step in (6, 12, 16):
    assert_trees_equal(restore(main_planned, step, config), restore(main_plain, step, config))
  got, want = loop.read_metrics(main_planned), loop.read_metrics(main_plain)
  assert [r["step"] for r in got] == [r["step"] for r in want]
  assert without_timing(got) == without_timing(want)
  assert {p.name for p in (planned_dir / workdir_lib.BRANCHES).iterdir()} == set(PLANNED)


@pytest.mark.parametrize("name", list(PLANNED))
def test_planned_branch_starts_at_main_state_and_continues_its_schedule(planned, name):
  workdir, config = planned
  start, cooldown = PLANNED[name]
  directory = workdir_lib.branch_dir(workdir, name)
  lineage = json.loads((directory / workdir_lib.LINEAGE).read_text())
  assert lineage["finished"] and lineage["parent"] == "main"
  assert (lineage["parent_step"], lineage["cooldown_steps"], lineage["end_step"]) == (
      start, cooldown, start + cooldown)
  records = loop.read_metrics(directory)
  main_records = loop.read_metrics(workdir_lib.main_dir(workdir))
  steps = list(range(start + 1, start + cooldown + 1))
  assert sorted(by_step(records, "loss")) == steps
  # The first branch step sees the main params and batch at S: loss and gradient norm are
  # computed before the LR is used, so they equal main's bit for bit.
  for key in ("loss", "grad_norm"):
    assert by_step(records, key)[start + 1] == by_step(main_records, key)[start + 1]
  # The logged LR is the schedule at the step before the increment.
  main_schedule = schedules.from_config(config.optimizer.schedule)
  branch_schedule = schedules.decay_branch(main_schedule, start, cooldown, "linear", 0.1)
  lrs = by_step(records, "lr")
  assert sorted(lrs) == steps
  # (Up to float32 rounding: inside the jitted step XLA may fuse the arithmetic differently.)
  np.testing.assert_allclose([lrs[s] for s in steps],
                             [lr_of(branch_schedule, s - 1) for s in steps], rtol=1e-6)
  assert lrs[start + 1] == by_step(main_records, "lr")[start + 1] == lr_of(main_schedule, start)
  assert all(lrs[s] < lrs[s - 1] for s in steps[1:])
  assert lr_of(branch_schedule, start + cooldown) == pytest.approx(0.1 * PEAK, rel=1e-6)
  # Evaluated and checkpointed at its end.
  assert "eval_loss/raw" in records[-1] and records[-1]["step"] == start + cooldown
  assert checkpoint.CheckpointStore(directory, read_only=True).all_steps() == [start + cooldown]


def test_library_branch_restores_main_exactly_and_leaves_main_untouched(plain, planned,
                                                                       tmp_path):
  plain_dir, config = plain
  planned_dir, _ = planned
  workdir = copy_workdir(plain_dir, tmp_path / "w")
  main = workdir_lib.main_dir(workdir)
  before = file_bytes(main)
  # 1. A branch whose decay keeps main's LR (final_fraction=1 after warmup) is main's own
  # continuation: restoring main at 12 (params, optimizer state with its averages, step, RNG,
  # data iterator) and training 4 steps gives main's state at 16 bit for bit.
  branches.branch(str(workdir), from_step=12, cooldown_steps=4, shape="linear",
                    final_fraction=1.0, name="flat")
  flat = workdir_lib.branch_dir(workdir, "flat")
  assert_trees_equal(restore(flat, 16, config), restore(main, 16, config))
  main_records = [r for r in loop.read_metrics(main) if r["step"] > 12]
  flat_records = loop.read_metrics(flat)
  assert [r["step"] for r in flat_records] == [r["step"] for r in main_records]
  assert without_timing(flat_records) == without_timing(main_records)
  # 2. The planned branch 6 -> 8, redone from the restored checkpoint, equals the one the
  # main run took from its in-memory state.
  result = branches.branch(str(workdir), from_step=6, cooldown_steps=2, shape="linear",
                             final_fraction=0.1)
  got = workdir_lib.branch_dir(workdir, "linear_8")
  want = workdir_lib.branch_dir(planned_dir, "linear_8")
  assert_trees_equal(restore(got, 8, config), restore(want, 8, config))
  assert without_timing(loop.read_metrics(got)) == without_timing(loop.read_metrics(want))
  assert result == loop.read_metrics(got)[-1]
  # 3. Main is byte-identical; a finished branch is not silently redone; a missing step is named.
  assert file_bytes(main) == before
  with pytest.raises(ValueError, match="already exists"):
    branches.branch(str(workdir), from_step=6, cooldown_steps=2, shape="linear",
                      final_fraction=0.1)
  with pytest.raises(ValueError, match=r"not a checkpoint of the main branch; available: "
                                       r"\[6, 12, 16\]"):
    branches.branch(str(workdir), from_step=8, cooldown_steps=2)


def test_wsd_s_adopts_the_decayed_state_and_main_resumes_at_peak(plain, tmp_path):
  plain_dir, config = plain
  workdir = copy_workdir(plain_dir, tmp_path / "w")
  main = workdir_lib.main_dir(workdir)
  with pytest.raises(ValueError, match="paused at --from-step 12.*up to step 16"):
    branches.branch(str(workdir), from_step=12, cooldown_steps=2, mode="wsd_s")
  assert not (workdir / workdir_lib.BRANCHES).exists()
  assert not (main / workdir_lib.LINEAGE).exists()
  # Pause main at 12: as if it had been trained to 12 only.
  shutil.rmtree(main / "16")
  kept = [r for r in loop.read_metrics(main) if r["step"] <= 12]
  (main / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
  branches.branch(str(workdir), from_step=12, cooldown_steps=2, shape="linear",
                    final_fraction=0.1, mode="wsd_s")
  name = "linear_14"
  assert json.loads((main / workdir_lib.LINEAGE).read_text()) == {
      "adopted": [dict(branch=name, from_step=12, at_step=14)]}
  assert checkpoint.CheckpointStore(main, read_only=True).all_steps() == [6, 12, 14]
  adopted = restore(main, 14, config)
  assert_trees_equal(adopted, restore(workdir_lib.branch_dir(workdir, name), 14, config))
  assert int(adopted.step) == 14
  assert by_step(loop.read_metrics(workdir_lib.branch_dir(workdir, name)), "lr")[14] < PEAK

  # The first step after resuming, computed here: one step from the adopted state and its
  # data iterator.
  run = loop.build_run(config, str(workdir))
  store = checkpoint.CheckpointStore(main, read_only=True)
  iterator = run.make_train_iterator()
  state = store.restore(14, run.abstract_state, iterator)
  store.close()
  _, metrics = run.train_step(state, next(iterator), run.learning_rate(14))
  expected_loss = float(metrics["loss"])

  branches.train(config, str(workdir))
  records = loop.read_metrics(main)
  assert sorted(by_step(records, "loss")) == list(range(1, 13)) + [15, 16]
  assert by_step(records, "loss")[15] == expected_loss
  assert by_step(records, "lr")[15] == by_step(records, "lr")[16] == lr_of(
      schedules.from_config(config.optimizer.schedule), 14) == float(np.float32(PEAK))
  assert checkpoint.CheckpointStore(main, read_only=True).all_steps()[-1] == 16


def test_branch_command_line(plain, tmp_path, compilation_cache):
  plain_dir, config = plain
  workdir = copy_workdir(plain_dir, tmp_path / "w")
  main = workdir_lib.main_dir(workdir)
  before = file_bytes(main)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
         "JAX_COMPILATION_CACHE_DIR": compilation_cache,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  env.pop("ANYTIME_TRACEBACK", None)
  command = [sys.executable, "-m", "anytime.main", "branch", "--workdir", str(workdir)]
  bad = subprocess.run(command + ["--from-step", "5", "--cooldown-steps", "2"], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0
  assert bad.stderr.strip().splitlines()[-1] == (
      "error: --from-step 5 is not a checkpoint of the main branch; available: [6, 12, 16]")
  assert "Traceback" not in bad.stderr
  good = subprocess.run(command + ["--from-step", "12", "--cooldown-steps", "2", "--shape",
                                   "1-sqrt"], env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert good.returncode == 0, good.stderr[-3000:]
  directory = workdir_lib.branch_dir(workdir, "1-sqrt_14")
  lineage = json.loads((directory / workdir_lib.LINEAGE).read_text())
  assert lineage["finished"] and (lineage["parent_step"], lineage["cooldown_steps"],
                                  lineage["shape"]) == (12, 2, "1-sqrt")
  records = loop.read_metrics(directory)
  expected = schedules.decay_branch(schedules.from_config(config.optimizer.schedule), 12, 2,
                                    "1-sqrt", 0.0)
  lrs = by_step(records, "lr")
  assert sorted(lrs) == [13, 14] and lrs[13] == lr_of(expected, 12) == float(np.float32(PEAK))
  np.testing.assert_allclose(lrs[14], lr_of(expected, 13), rtol=1e-6)
  assert lrs[14] < lrs[13]
  # The first branch step equals main's step 13 (same state, same batch).
  assert by_step(records, "loss")[13] == by_step(loop.read_metrics(main), "loss")[13]
  last_eval = records[-1]
  assert last_eval["step"] == 14 and "eval_loss/raw" in last_eval
  # The printed result is the branch's last evaluation.
  printed = good.stdout.strip().splitlines()[-1]
  assert printed == str({k: round(v, 4) for k, v in last_eval.items()
                         if k != "step" and isinstance(v, float)})
  assert file_bytes(main) == before
