"""Decay branches, WSD-S and the comparison suite on CPU: exact invariants on tiny runs.

A branch starts from exactly the main state at its branch step and continues the main schedule;
the main branch is unchanged by branching; WSD-S adopts the decayed state; the suite skips
finished runs, resumes an interrupted one and reports exactly what its metrics hold.
"""

import copy
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from anytime import branches, checkpoint, loop, schedules
from anytime.experiments import compare

import _tiny

pytestmark = pytest.mark.slow  # whole training runs, subprocesses or notebooks

REPO = Path(__file__).resolve().parent.parent
TIMING_KEYS = ("steps_per_sec", "tokens_per_sec", "mfu")
PEAK = 3e-3


def tiny_config(**overrides):
  return _tiny.tiny_config(**{"train.eval_batches": 1, "train.log_every": 1,
                              "parallel.mesh": {"data": 1, "fsdp": 1, "tensor": 1},
                              "parallel.num_devices": 1, **overrides})


def suite_config():
  suite = compare.default_suite()
  suite.base_steps = 8
  suite.multipliers = [1, 2]
  suite.warmup_steps = 2
  suite.cosine_peak_values = [3e-3, 1e-2]
  suite.methods = ["cosine", "constant", "schedule_free_adamw"]
  suite.peak_values = [PEAK]
  suite.schedule_free_peak_values = [PEAK]
  suite.ema_factors = [6.25, 25.0]
  suite.posthoc_sigma_rels = []  # no post-hoc column (its own tests cover it)
  return ml_collections.ConfigDict(dict(base=tiny_config(), suite=suite))


SUITE_RUNS = ["cosine_8_lr3e-3", "cosine_8_lr1e-2", "cosine_16_lr3e-3", "cosine_16_lr1e-2",
              "constant_lr3e-3", "schedule_free_lr3e-3"]
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
    workdir = directory.parent.parent if directory.parent.name == checkpoint.BRANCHES else \
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


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """A persistent compilation cache for this module (runs here share most of their programs)."""
  from jax._src import compilation_cache as cache_lib  # pylint: disable=g-import-not-at-top

  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  saved = {name: getattr(jax.config, name) for name in names}
  directory = str(tmp_path_factory.mktemp("jax_cache"))
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  cache_lib.reset_cache()
  yield directory
  for name, value in saved.items():
    jax.config.update(name, value)
  cache_lib.reset_cache()


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
  """A tiny comparison suite, run once for the module."""
  workdir = tmp_path_factory.mktemp("suite")
  config = suite_config()
  assert [r["name"] for r in compare.plan(config)] == SUITE_RUNS
  compare.run_suite(config, str(workdir))
  return workdir, config


@pytest.fixture(scope="module")
def planned(suite):
  """The suite's constant-LR main run (16 steps), which took its WSD branches in the loop."""
  workdir, config = suite
  run_config = {r["name"]: r["config"] for r in compare.plan(config)}["constant_lr3e-3"]
  return workdir / "runs" / "constant_lr3e-3", run_config


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
  main_plain, main_planned = checkpoint.main_dir(plain_dir), checkpoint.main_dir(planned_dir)
  # Branch points 6 and 13 are kept next to the latest three.
  assert checkpoint.CheckpointStore(main_planned, read_only=True).all_steps() == [6, 12, 13, 16]
  assert checkpoint.CheckpointStore(main_plain, read_only=True).all_steps() == [6, 12, 16]
  for step in (6, 12, 16):
    assert_trees_equal(restore(main_planned, step, config), restore(main_plain, step, config))
  got, want = loop.read_metrics(main_planned), loop.read_metrics(main_plain)
  assert [r["step"] for r in got] == [r["step"] for r in want]
  assert without_timing(got) == without_timing(want)
  assert {p.name for p in (planned_dir / checkpoint.BRANCHES).iterdir()} == set(PLANNED)


@pytest.mark.parametrize("name", list(PLANNED))
def test_planned_branch_starts_at_main_state_and_continues_its_schedule(planned, name):
  workdir, config = planned
  start, cooldown = PLANNED[name]
  directory = checkpoint.branch_dir(workdir, name)
  lineage = json.loads((directory / branches.LINEAGE).read_text())
  assert lineage["finished"] and lineage["parent"] == "main"
  assert (lineage["parent_step"], lineage["cooldown_steps"], lineage["end_step"]) == (
      start, cooldown, start + cooldown)
  records = loop.read_metrics(directory)
  main_records = loop.read_metrics(checkpoint.main_dir(workdir))
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
  main = checkpoint.main_dir(workdir)
  before = file_bytes(main)
  # 1. A branch whose decay keeps main's LR (final_fraction=1 after warmup) is main's own
  # continuation: restoring main at 12 (params, optimizer state with its averages, step, RNG,
  # data iterator) and training 4 steps gives main's state at 16 bit for bit.
  branches.branch(str(workdir), from_step=12, cooldown_steps=4, shape="linear",
                    final_fraction=1.0, name="flat")
  flat = checkpoint.branch_dir(workdir, "flat")
  assert_trees_equal(restore(flat, 16, config), restore(main, 16, config))
  main_records = [r for r in loop.read_metrics(main) if r["step"] > 12]
  flat_records = loop.read_metrics(flat)
  assert [r["step"] for r in flat_records] == [r["step"] for r in main_records]
  assert without_timing(flat_records) == without_timing(main_records)
  # 2. The planned branch 6 -> 8, redone from the restored checkpoint, equals the one the
  # main run took from its in-memory state.
  result = branches.branch(str(workdir), from_step=6, cooldown_steps=2, shape="linear",
                             final_fraction=0.1)
  got = checkpoint.branch_dir(workdir, "linear_8")
  want = checkpoint.branch_dir(planned_dir, "linear_8")
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
  main = checkpoint.main_dir(workdir)
  with pytest.raises(ValueError, match="paused at --from-step 12.*up to step 16"):
    branches.branch(str(workdir), from_step=12, cooldown_steps=2, mode="wsd_s")
  assert not (workdir / checkpoint.BRANCHES).exists()
  assert not (main / branches.LINEAGE).exists()
  # Pause main at 12: as if it had been trained to 12 only.
  shutil.rmtree(main / "16")
  kept = [r for r in loop.read_metrics(main) if r["step"] <= 12]
  (main / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
  branches.branch(str(workdir), from_step=12, cooldown_steps=2, shape="linear",
                    final_fraction=0.1, mode="wsd_s")
  name = "linear_14"
  assert json.loads((main / branches.LINEAGE).read_text()) == {
      "adopted": [dict(branch=name, from_step=12, at_step=14)]}
  assert checkpoint.CheckpointStore(main, read_only=True).all_steps() == [6, 12, 14]
  adopted = restore(main, 14, config)
  assert_trees_equal(adopted, restore(checkpoint.branch_dir(workdir, name), 14, config))
  assert int(adopted.step) == 14
  assert by_step(loop.read_metrics(checkpoint.branch_dir(workdir, name)), "lr")[14] < PEAK

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
  main = checkpoint.main_dir(workdir)
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
  directory = checkpoint.branch_dir(workdir, "1-sqrt_14")
  lineage = json.loads((directory / branches.LINEAGE).read_text())
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


# ---------------------------------------------------------------------------- the suite


def count_training(monkeypatch):
  calls = []
  real = branches.train

  def counting(config, workdir):
    calls.append(Path(workdir).name)
    return real(config, workdir)

  monkeypatch.setattr(branches, "train", counting)
  return calls


def metric_files(workdir):
  return {str(p.relative_to(workdir)): (p.stat().st_mtime_ns, p.read_bytes())
          for p in sorted(Path(workdir).glob("runs/**/metrics.jsonl"))}


def test_suite_rerun_skips_finished_runs(suite, monkeypatch, tmp_path):
  source, config = suite
  workdir = copy_workdir(source, tmp_path / "w")
  before = metric_files(workdir)
  assert len(before) == len(SUITE_RUNS) + 2  # the constant run's two WSD branches
  table = (workdir / "report" / "table.json").read_text()
  calls = count_training(monkeypatch)
  compare.run_suite(config, str(workdir))
  assert calls == []
  assert metric_files(workdir) == before
  assert (workdir / "report" / "table.json").read_text() == table


def test_suite_resumes_an_interrupted_run(suite, monkeypatch, tmp_path):
  source, config = suite
  workdir = copy_workdir(source, tmp_path / "w")
  run_dir = workdir / "runs" / "constant_lr3e-3"
  main = checkpoint.main_dir(run_dir)
  run_config = {r["name"]: r["config"] for r in compare.plan(config)}["constant_lr3e-3"]
  assert [p.branch_step for p in branches.planned_branches(run_config)] == [6, 13]
  store = checkpoint.CheckpointStore(main, read_only=True)
  assert {13, 16} <= set(store.all_steps())
  store.close()
  want_state = restore(main, 16, run_config)
  want_main = without_timing(loop.read_metrics(main))
  branch = checkpoint.branch_dir(run_dir, "linear_16")
  want_branch = without_timing(loop.read_metrics(branch))
  want_branch_state = restore(branch, 16, run_config)
  table = json.loads((workdir / "report" / "table.json").read_text())
  # Killed while its last WSD branch (13 -> 16) ran, after the branch saved its checkpoint at
  # 16 and before it was marked finished: main's newest checkpoint is the branch point, the
  # branch is unfinished with a stale checkpoint and part of its metrics.
  shutil.rmtree(main / "16")
  kept = [r for r in loop.read_metrics(main) if r["step"] <= 13]
  (main / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
  lineage = json.loads((branch / branches.LINEAGE).read_text())
  (branch / branches.LINEAGE).write_text(json.dumps({**lineage, "finished": False}))
  assert checkpoint.CheckpointStore(branch, read_only=True).all_steps() == [16]
  partial = [r for r in loop.read_metrics(branch) if r["step"] <= 14]
  (branch / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in partial))

  calls = count_training(monkeypatch)
  compare.run_suite(config, str(workdir))
  assert calls == ["constant_lr3e-3"]
  assert_trees_equal(restore(main, 16, run_config), want_state)
  assert without_timing(loop.read_metrics(main)) == want_main
  assert branches.branch_finished(run_dir, "linear_16")
  assert without_timing(loop.read_metrics(branch)) == want_branch
  assert_trees_equal(restore(branch, 16, run_config), want_branch_state)
  assert json.loads((workdir / "report" / "table.json").read_text()) == table


def evals_of(directory):
  return {r["step"]: r for r in loop.read_metrics(directory)
          if any(k.startswith("eval_loss/") for k in r)}


def test_report_table_matches_stored_metrics(suite):
  workdir, config = suite
  runs = workdir / "runs"
  main = lambda name: evals_of(checkpoint.main_dir(runs / name))
  rows = []
  for horizon in (8, 16):
    cosine = {lr: main(f"cosine_{horizon}_lr{tag}")[horizon]["eval_loss/raw"]
              for lr, tag in ((3e-3, "3e-3"), (1e-2, "1e-2"))}
    envelope = min(cosine.values())
    constant = main("constant_lr3e-3")[horizon]
    wsd = evals_of(checkpoint.branch_dir(runs / "constant_lr3e-3", f"linear_{horizon}"))
    values = {
        "cosine": envelope,
        "constant+ema_25": constant["eval_loss/ema_25"],
        "constant+ema_best": min(constant["eval_loss/ema_6p25"], constant["eval_loss/ema_25"]),
        "constant (raw)": constant["eval_loss/raw"],
        "lawa": constant["eval_loss/lawa"],
        "wsd": wsd[horizon]["eval_loss/raw"],
        "schedule_free": main("schedule_free_lr3e-3")[horizon]["eval_loss/schedule_free"],
    }
    row = dict(horizon=f"{horizon // 8}x", steps=horizon, tokens=horizon * 8 * 32)
    for name, value in values.items():
      row[name] = round(value, 4)
      if name != "cosine":
        row[f"{name} - cosine"] = round(value - envelope, 4)
    rows.append(row)
    assert cosine[{v: k for k, v in cosine.items()}[envelope]] == envelope
  table = json.loads((workdir / "report" / "table.json").read_text())
  assert table["rows"] == rows
  assert table["chosen_lr"] == {"constant": 3e-3, "schedule_free": 3e-3}
  with open(workdir / "report" / "table.csv") as f:
    csv_rows = list(csv.DictReader(f))
  assert [{k: str(v) for k, v in row.items()} for row in rows] == csv_rows
  assert table["tokens_spent"]["wsd"] == (16 + 2 + 3) * 8 * 32
  assert table["tokens_spent"]["cosine (whole LR grid)"] == (8 + 16) * 8 * 32 * 2
  assert (workdir / "report" / "table.md").exists()


def test_cosine_envelope_picks_the_best_lr_per_horizon(tmp_path):
  """A fake suite with known losses: per horizon the lowest last-iterate loss wins."""
  config = suite_config()
  config.suite.methods = ["cosine"]
  runs = compare.plan(config)
  manifest = dict(suite=config.suite.to_dict(), base_steps=8, tokens_per_step=256,
                  runs=[dict(name=r["name"], method=r["method"], peak_value=r["peak_value"],
                             horizon=r["horizon"], schedule=r["config"].optimizer.schedule.to_dict())
                        for r in runs])
  (tmp_path / "suite.json").write_text(json.dumps(manifest))
  # Horizon 8: the small LR wins; horizon 16: the large one. An earlier, lower eval must not
  # count (only the horizon's own step does).
  losses = {("cosine_8_lr3e-3"): 3.0, "cosine_8_lr1e-2": 3.5,
            "cosine_16_lr3e-3": 2.9, "cosine_16_lr1e-2": 2.7}
  for name, loss in losses.items():
    horizon = int(name.split("_")[1])
    directory = checkpoint.main_dir(tmp_path / "runs" / name)
    directory.mkdir(parents=True)
    records = [dict(step=horizon // 2, **{"eval_loss/raw": 1.0}),
               dict(step=horizon, **{"eval_loss/raw": loss})]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  results = compare.write_report(str(tmp_path))
  assert results["columns"] == {"cosine": {8: 3.0, 16: 2.7}}
  assert results["cosine_lrs"] == {8: 3e-3, 16: 1e-2}
  table = json.loads((tmp_path / "report" / "table.json").read_text())
  assert [(r["steps"], r["cosine"]) for r in table["rows"]] == [(8, 3.0), (16, 2.7)]
  assert table["cosine_lrs"] == {"8": 3e-3, "16": 1e-2}
