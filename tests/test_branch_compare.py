"""Decay branches, WSD-S and the comparison suite on CPU: exact invariants on tiny runs.

A branch starts from exactly the main state at its branch step and continues the main schedule;
the main branch is unchanged by branching; WSD-S adopts the decayed state; the suite skips
finished runs, resumes an interrupted one and reports exactly what its metrics hold.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from anytime import checkpoint, schedules, train
from anytime.experiments import branch as branch_lib
from anytime.experiments import compare

REPO = Path(__file__).resolve().parent.parent
TIMING_KEYS = ("steps_per_sec", "tokens_per_sec", "mfu")
PEAK = 3e-3


def tiny_config(**overrides):
  config = train.default_config()
  config.model.d_model = 32
  config.model.num_layers = 2
  config.model.num_heads = 2
  config.model.mlp_dim = 64
  config.model.max_len = 32
  config.data.max_bytes = 200_000
  config.train.total_steps = 12
  config.train.batch_size = 8
  config.train.seq_len = 32
  config.train.eval_every = 6
  config.train.eval_batches = 2
  config.train.log_every = 1
  config.train.checkpoint_every = 4
  config.train.async_checkpoints = False
  config.parallel.mesh = dict(data=1, fsdp=1, tensor=1)
  config.parallel.num_devices = 1
  # Warmup past the first branch point, so a branch can start mid-warmup.
  config.optimizer.schedule = dict(name="constant", peak_value=PEAK, warmup_steps=6)
  config.optimizer.averages = {"ema_25": dict(kind="anytime_ema", factor=25.0)}
  config.unlock()
  config.update_from_flattened_dict(overrides)
  config.lock()
  return config


# Budgets 6 and 12 with a third of each as cooldown: branches (S=4, K=2) and (S=8, K=4).
PLANNED = {"branches.budgets": [6, 12], "branches.cooldown_fraction": 1 / 3,
           "branches.shape": "1-sqrt", "branches.final_fraction": 0.1}


# ---------------------------------------------------------------------------- helpers


def without_timing(records):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


_ABSTRACT = {}


def restore(directory, step, config):
  """A checkpoint's train state as numpy (the abstract state does not depend on the schedule)."""
  key = config.to_json_best_effort()
  if key not in _ABSTRACT:
    workdir = directory.parent.parent if directory.parent.name == checkpoint.BRANCHES else \
        directory.parent
    _ABSTRACT[key] = train.build_run(config, str(workdir)).abstract_state
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
def plain(tmp_path_factory):
  """A main run without branches: checkpoints at 4, 8, 12."""
  workdir = tmp_path_factory.mktemp("plain")
  config = tiny_config()
  train.train_and_evaluate(config, str(workdir))
  return workdir, config


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
  """The same main run, taking its planned decay branches inside ``train_and_evaluate``."""
  workdir = tmp_path_factory.mktemp("planned")
  config = tiny_config(**PLANNED)
  train.train_and_evaluate(config, str(workdir))
  return workdir, config


def copy_workdir(source, target):
  shutil.copytree(source, target)
  return target


# ---------------------------------------------------------------------------- branches


def test_main_with_planned_branches_equals_main_without(plain, planned):
  plain_dir, config = plain
  planned_dir, planned_config = planned
  assert train.planned_branches(planned_config) == [
      dict(name="1-sqrt_6", branch_step=4, cooldown_steps=2, shape="1-sqrt", final_fraction=0.1),
      dict(name="1-sqrt_12", branch_step=8, cooldown_steps=4, shape="1-sqrt",
           final_fraction=0.1)]
  main_plain, main_planned = checkpoint.main_dir(plain_dir), checkpoint.main_dir(planned_dir)
  # Branch points are kept (4 would otherwise be dropped by keep_checkpoints=3 ... it is 4, 8, 12
  # here either way), and every common checkpoint is bitwise equal.
  assert checkpoint.CheckpointStore(main_planned, read_only=True).all_steps() == [4, 8, 12]
  for step in (4, 8, 12):
    assert_trees_equal(restore(main_planned, step, config), restore(main_plain, step, config))
  got, want = train.read_metrics(main_planned), train.read_metrics(main_plain)
  assert [r["step"] for r in got] == [r["step"] for r in want]
  assert without_timing(got) == without_timing(want)
  assert {p.name for p in (planned_dir / checkpoint.BRANCHES).iterdir()} == {"1-sqrt_6",
                                                                           "1-sqrt_12"}


@pytest.mark.parametrize("name", ["1-sqrt_6", "1-sqrt_12"])
def test_planned_branch_starts_at_main_state_and_continues_its_schedule(planned, name):
  workdir, config = planned
  plan = {p["name"]: p for p in train.planned_branches(config)}[name]
  start, cooldown = plan["branch_step"], plan["cooldown_steps"]
  directory = checkpoint.branch_dir(workdir, name)
  lineage = json.loads((directory / branch_lib.LINEAGE).read_text())
  assert lineage["finished"] and lineage["parent"] == "main"
  assert (lineage["parent_step"], lineage["cooldown_steps"], lineage["end_step"]) == (
      start, cooldown, start + cooldown)
  records = train.read_metrics(directory)
  main_records = train.read_metrics(checkpoint.main_dir(workdir))
  steps = list(range(start + 1, start + cooldown + 1))
  assert sorted(by_step(records, "loss")) == steps
  # The first branch step sees the main params and batch at S: loss and gradient norm are
  # computed before the LR is used, so they equal main's bit for bit.
  for key in ("loss", "grad_norm"):
    assert by_step(records, key)[start + 1] == by_step(main_records, key)[start + 1]
  # The logged LR is the schedule at the step before the increment.
  main_schedule = schedules.from_config(config.optimizer.schedule)
  branch_schedule = schedules.decay_branch(main_schedule, start, cooldown, "1-sqrt", 0.1)
  lrs = by_step(records, "lr")
  assert lrs == {s: lr_of(branch_schedule, s - 1) for s in steps}
  assert lrs[start + 1] == by_step(main_records, "lr")[start + 1] == lr_of(main_schedule, start)
  assert all(lrs[s] < lrs[s - 1] for s in steps[1:])
  assert lr_of(branch_schedule, start + cooldown) == pytest.approx(
      0.1 * lr_of(main_schedule, start), rel=1e-6)
  # Evaluated and checkpointed at its end.
  assert "eval_loss/raw" in records[-1] and records[-1]["step"] == start + cooldown
  assert checkpoint.CheckpointStore(directory, read_only=True).all_steps()[-1] == start + cooldown


def test_library_branch_restores_main_exactly_and_leaves_main_untouched(plain, planned,
                                                                       tmp_path):
  plain_dir, config = plain
  planned_dir, _ = planned
  workdir = copy_workdir(plain_dir, tmp_path / "w")
  main = checkpoint.main_dir(workdir)
  before = file_bytes(main)
  # 1. A branch whose decay keeps the LR at main's (final_fraction=1 after warmup) is main's
  # own continuation: restoring main at 8 (params, optimizer state with averages, step, RNG,
  # data iterator) and training 4 steps gives main's state at 12 bit for bit.
  branch_lib.branch(str(workdir), from_step=8, cooldown_steps=4, shape="linear",
                    final_fraction=1.0, name="flat")
  flat = checkpoint.branch_dir(workdir, "flat")
  assert_trees_equal(restore(flat, 12, config), restore(main, 12, config))
  main_records = [r for r in train.read_metrics(main) if r["step"] > 8]
  assert without_timing(train.read_metrics(flat)) == without_timing(main_records)
  # 2. The same branch from the restored checkpoint equals the planned one taken in memory.
  result = branch_lib.branch(str(workdir), from_step=8, cooldown_steps=4, shape="1-sqrt",
                             final_fraction=0.1)
  got = checkpoint.branch_dir(workdir, "1-sqrt_12")
  want = checkpoint.branch_dir(planned_dir, "1-sqrt_12")
  assert_trees_equal(restore(got, 12, config), restore(want, 12, config))
  assert without_timing(train.read_metrics(got)) == without_timing(train.read_metrics(want))
  assert result == train.read_metrics(got)[-1]
  # 3. Main is byte-identical, and a finished branch is not silently redone.
  assert file_bytes(main) == before
  with pytest.raises(ValueError, match="already exists"):
    branch_lib.branch(str(workdir), from_step=8, cooldown_steps=4, shape="1-sqrt",
                      final_fraction=0.1)
  with pytest.raises(ValueError, match=r"not a checkpoint of the main branch; available: "
                                       r"\[4, 8, 12\]"):
    branch_lib.branch(str(workdir), from_step=6, cooldown_steps=2)


def test_wsd_s_adopts_the_decayed_state_and_main_resumes_at_peak(plain, tmp_path):
  plain_dir, config = plain
  workdir = copy_workdir(plain_dir, tmp_path / "w")
  main = checkpoint.main_dir(workdir)
  with pytest.raises(ValueError, match="paused at --from_step 8.*up to step 12"):
    branch_lib.branch(str(workdir), from_step=8, cooldown_steps=2, mode="wsd_s")
  assert not (workdir / checkpoint.BRANCHES).exists()
  assert not (main / branch_lib.LINEAGE).exists()
  # Pause main at 8: as if it had been trained to 8 only.
  shutil.rmtree(main / "12")
  kept = [r for r in train.read_metrics(main) if r["step"] <= 8]
  (main / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
  branch_lib.branch(str(workdir), from_step=8, cooldown_steps=2, shape="linear",
                    final_fraction=0.1, mode="wsd_s")
  name = "linear_10"
  assert json.loads((main / branch_lib.LINEAGE).read_text()) == {
      "adopted": [dict(branch=name, from_step=8, at_step=10)]}
  assert checkpoint.CheckpointStore(main, read_only=True).all_steps() == [4, 8, 10]
  adopted = restore(main, 10, config)
  assert_trees_equal(adopted, restore(checkpoint.branch_dir(workdir, name), 10, config))
  assert int(adopted.step) == 10
  branch_lrs = by_step(train.read_metrics(checkpoint.branch_dir(workdir, name)), "lr")
  assert branch_lrs[10] < PEAK

  # Expected first step after resuming: one main step from the adopted state and its iterator.
  run = train.build_run(config, str(workdir))
  store = checkpoint.CheckpointStore(main, read_only=True)
  iterator = run.make_train_iterator()
  state = store.restore(10, run.abstract_state, iterator)
  store.close()
  _, metrics = run.train_step(state, next(iterator))
  expected_loss = float(metrics["loss"])

  train.train_and_evaluate(config, str(workdir))
  records = train.read_metrics(main)
  assert sorted(by_step(records, "loss")) == list(range(1, 9)) + [11, 12]
  assert by_step(records, "loss")[11] == expected_loss
  assert by_step(records, "lr")[11] == by_step(records, "lr")[12] == lr_of(
      schedules.from_config(config.optimizer.schedule), 10) == float(np.float32(PEAK))
  assert checkpoint.CheckpointStore(main, read_only=True).all_steps()[-1] == 12


def test_branch_command_line(plain, tmp_path):
  plain_dir, _ = plain
  workdir = copy_workdir(plain_dir, tmp_path / "w")
  main = checkpoint.main_dir(workdir)
  before = file_bytes(main)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  env.pop("XLA_FLAGS", None)
  env.pop("ANYTIME_TRACEBACK", None)
  command = [sys.executable, "-m", "anytime.main", "branch", "--workdir", str(workdir)]
  bad = subprocess.run(command + ["--from-step", "5", "--cooldown-steps", "2"], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0
  assert bad.stderr.strip().splitlines()[-1] == (
      "error: --from_step 5 is not a checkpoint of the main branch; available: [4, 8, 12]")
  assert "Traceback" not in bad.stderr
  good = subprocess.run(command + ["--from-step", "8", "--cooldown-steps", "2", "--shape",
                                   "1-sqrt"], env=env, cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert good.returncode == 0, good.stderr[-3000:]
  directory = checkpoint.branch_dir(workdir, "1-sqrt_10")
  lineage = json.loads((directory / branch_lib.LINEAGE).read_text())
  assert lineage["finished"] and (lineage["parent_step"], lineage["cooldown_steps"],
                                  lineage["shape"]) == (8, 2, "1-sqrt")
  records = train.read_metrics(directory)
  config = train.stored_config(str(workdir))
  expected = schedules.decay_branch(schedules.from_config(config.optimizer.schedule), 8, 2,
                                    "1-sqrt", 0.0)
  assert by_step(records, "lr") == {9: lr_of(expected, 8), 10: lr_of(expected, 9)}
  last_eval = records[-1]
  assert last_eval["step"] == 10
  # The printed result is the branch's last evaluation.
  printed = good.stdout.strip().splitlines()[-1]
  assert printed == str({k: round(v, 4) for k, v in last_eval.items()
                         if k != "step" and isinstance(v, float)})
  assert file_bytes(main) == before
