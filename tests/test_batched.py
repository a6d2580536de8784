"""Many runs as one program equal each run trained alone (to float32 rounding).

The reference trains every run by itself with the single-run jitted step (``loop.Run``) and
its own data iterator; the group trains them stacked and vmapped. 12 runs cover the >= 9
parameter copies at which a vmapped NNX model once gave wrong losses on CPU.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from etils import epath

from anytime import workdir as workdir_lib
from anytime import averaging, batched, checkpoint, loop, naming, parallel, schedules
from anytime import config as config_lib

from _tiny import tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("compilation_cache")]  # training runs

STEPS = 8


def run_config(lr: float, seed: int, schedule: str = "cosine"):
  config = tiny_config(**{
      "seed": seed, "parallel.num_devices": 1, "parallel.mesh": {"data": 1, "fsdp": 1,
                                                                "tensor": 1},
      "data.max_bytes": 100_000, "train.total_steps": STEPS, "train.log_every": 1,
      "train.eval_every": STEPS // 2, "train.eval_batches": 2, "train.checkpoint_every": STEPS,
  })
  config.unlock()
  config.optimizer.schedule = (
      dict(name="cosine", peak_value=lr, total_steps=STEPS, warmup_steps=2) if schedule == "cosine"
      else dict(name="constant", peak_value=lr, warmup_steps=2))
  config.optimizer.averages = {"ema_4": dict(kind="anytime_ema", factor=4.0)}
  config.lock()
  config_lib.validate_config(config)
  return config


def specs_for(workdir: epath.Path, count: int) -> list[batched.RunSpec]:
  lrs = [1e-3, 3e-3, 1e-2]
  specs = []
  for i in range(count):
    lr, seed = lrs[i % 3], i // 3
    config = run_config(lr, seed, "cosine" if i % 2 == 0 else "constant")
    specs.append(batched.RunSpec(name=f"r{i}", config=config,
                                 directory=workdir / f"r{i}" / "main", end_step=STEPS))
  return specs


def train_alone(spec: batched.RunSpec, workdir) -> tuple[list[float], object, dict]:
  """The reference: the single-run jitted step, one run at a time."""
  run = loop.build_run(spec.config, workdir)
  state = run.init_state()
  iterator = run.make_train_iterator()
  losses = []
  for step in range(STEPS):
    state, metrics = run.train_step(state, next(iterator), run.learning_rate(step))
    losses.append(float(metrics["loss"]))
  evals = {name: run.validation_loss(p)
           for name, p in averaging.eval_params(state.opt_state, state.params).items()}
  return losses, state, evals


@pytest.mark.parametrize("count", [1, 3, 12])
def test_batched_equals_sequential(tmp_path, count):
  specs = specs_for(tmp_path, count)
  groups = batched.group_runs(specs, max_runs=12)
  assert len(groups) == 1 and len(groups[0]) == count
  batched.train_group(groups[0], workdir=tmp_path)
  for spec in specs:
    want_losses, want_state, want_evals = train_alone(spec, tmp_path)
    records = loop.read_metrics(spec.directory)
    got_losses = [r["loss"] for r in records if "loss" in r]
    np.testing.assert_allclose(got_losses, want_losses, rtol=2e-5, err_msg=spec.name)
    last = loop.last_evaluation(spec.directory)
    assert last["step"] == STEPS
    for name, value in want_evals.items():
      np.testing.assert_allclose(last[naming.eval_key(name)], value, rtol=2e-5)
    store = checkpoint.CheckpointStore(spec.directory, read_only=True)
    run = loop.build_run(spec.config, tmp_path)
    got_state = store.restore(STEPS, run.abstract_state)
    store.close()
    assert int(got_state.step) == STEPS
    for got, want in zip(jax.tree.leaves(got_state.params), jax.tree.leaves(want_state.params)):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=5e-6)
    assert batched.finished(spec)


def test_learning_rate_is_the_schedules_value(tmp_path):
  spec = specs_for(tmp_path, 1)[0]
  batched.train_group([spec], workdir=tmp_path)
  schedule = schedules.from_config(spec.config.optimizer.schedule.to_dict())
  got = {r["step"]: r["lr"] for r in loop.read_metrics(spec.directory) if "lr" in r}
  # The record of step s holds the LR used for the update from s - 1 to s.
  for step, lr in got.items():
    np.testing.assert_allclose(lr, float(schedule(step - 1)), rtol=1e-6)


def test_group_refuses_runs_that_differ_in_structure(tmp_path):
  a, b = specs_for(tmp_path, 2)
  config = run_config(1e-3, 0)
  config.unlock()
  config.optimizer.averages = {}
  config.lock()
  other = batched.RunSpec(name="other", config=config, directory=tmp_path / "o",
                          end_step=STEPS)
  assert len(batched.group_runs([a, b, other], max_runs=8)) == 2
  with pytest.raises(ValueError, match="cannot be trained in one group"):
    batched.train_group([a, other], workdir=tmp_path)
  with pytest.raises(ValueError, match="max_runs"):
    batched.group_runs([a], max_runs=0)


def test_group_runs_splits_large_groups_evenly(tmp_path):
  specs = specs_for(tmp_path, 12)
  sizes = sorted(len(g) for g in batched.group_runs(specs, max_runs=5))
  assert sizes == [4, 4, 4]


def test_a_diverged_run_does_not_stop_the_others(tmp_path):
  good = specs_for(tmp_path, 1)[0]
  bad = batched.RunSpec(name="bad", config=run_config(1e6, 0), directory=tmp_path / "bad" / "main",
                        end_step=STEPS)
  batched.train_group([good, bad], workdir=tmp_path)
  assert np.isnan(loop.last_evaluation(bad.directory)["eval_loss/raw"])
  assert any(r.get("diverged") for r in loop.read_metrics(bad.directory))
  assert np.isfinite(loop.last_evaluation(good.directory)["eval_loss/raw"])


def test_groups_of_one_program_build_it_once(tmp_path, monkeypatch):
  """A second group of the same shape (other seeds, schedules, eval and checkpoint steps)
  reuses the first one's built and compiled program, and still equals training alone."""
  builds = []
  build_run = loop.build_run
  monkeypatch.setattr(loop, "build_run", lambda *a, **k: builds.append(a) or build_run(*a, **k))
  first = specs_for(tmp_path / "first", 2)
  batched.train_group(first, workdir=tmp_path)
  assert len(builds) == 1
  second = []
  for i, spec in enumerate(specs_for(tmp_path / "second", 5)[3:]):  # seeds 1, other LRs
    config = spec.config
    config.unlock()
    config.train.eval_every = STEPS // 4  # host-side only: the same program
    config.train.checkpoint_every = STEPS // 2
    config.lock()
    second.append(batched.RunSpec(name=f"s{i}", config=config, directory=spec.directory,
                                  end_step=STEPS))
  batched.train_group(second, workdir=tmp_path)
  assert len(builds) == 1
  for spec in second:
    want_losses, _, want_evals = train_alone(spec, tmp_path)
    got = [r["loss"] for r in loop.read_metrics(spec.directory) if "loss" in r]
    np.testing.assert_allclose(got, want_losses, rtol=2e-5, err_msg=spec.name)
    evals = [r["step"] for r in loop.read_metrics(spec.directory) if naming.is_eval_record(r)]
    assert evals == [2, 4, 6, 8]
    for name, value in want_evals.items():
      np.testing.assert_allclose(loop.last_evaluation(spec.directory)[naming.eval_key(name)],
                                 value, rtol=2e-5)
  # Another optimizer structure (no averages) is another program.
  config = run_config(1e-3, 0)
  config.unlock()
  config.optimizer.averages = {}
  config.lock()
  before = len(builds)  # (train_alone built the references)
  batched.train_group([batched.RunSpec(name="other", config=config, end_step=STEPS,
                                       directory=tmp_path / "other" / "main")],
                      workdir=tmp_path)
  assert len(builds) == before + 1


def test_a_branch_group_reuses_the_program_of_its_main_runs(tmp_path):
  """States restored from checkpoints enter the step placed like freshly initialised ones:
  the decay branches of a run compile no train step of their own."""
  main = dataclasses.replace(specs_for(tmp_path, 1)[0], keep_steps=frozenset({STEPS // 2}))
  batched.train_group([main], workdir=tmp_path)
  decay = dict(branch_step=STEPS // 2, cooldown_steps=STEPS // 2, shape="linear",
               final_fraction=0.0)
  branch = batched.RunSpec(
      name="branch", config=main.config, end_step=STEPS,
      directory=workdir_lib.branch_dir(main.directory.parent, "linear_to0"),
      start=(main.directory, STEPS // 2),
      schedule=dict(main.config.optimizer.schedule.to_dict(), decay=decay))
  with parallel.compile_log() as compiled:
    batched.train_group([branch], workdir=tmp_path)
  assert not [name for name in compiled if "train_step" in name], compiled
  assert loop.last_evaluation(branch.directory)["step"] == STEPS


def _group_process(workdir, *extra_env):
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from pathlib import Path  # pylint: disable=g-import-not-at-top

  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  worker = Path(__file__).with_name("_group_worker.py")
  return subprocess.Popen([sys.executable, str(worker), str(workdir)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)


@pytest.fixture(scope="module")
def uninterrupted_group(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  reference = _group_process(workdir)
  assert reference.wait(timeout=600) == 0, reference.stdout.read()
  return workdir


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_signal_saves_every_member_and_resume_equals_uninterrupted(tmp_path, signal_name,
                                                                  uninterrupted_group):
  """SIGTERM (or Ctrl-C) to a training group: every member saves the step in flight, one line
  says how to resume, exit status 0; re-running finishes equal to an uninterrupted group."""
  import signal  # pylint: disable=g-import-not-at-top

  proc = _group_process(tmp_path / "run")
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("progress ") and int(line.split()[1]) >= 13:
      proc.send_signal(getattr(signal, signal_name))
      break
  output = "".join(lines) + proc.stdout.read()
  assert proc.wait(timeout=300) == 0, output
  stopped = [l for l in output.splitlines() if f"{signal_name}: saved a checkpoint" in l]
  assert len(stopped) == 1 and "for each of its 3 runs" in stopped[0], output
  assert "re-run the same command to resume" in stopped[0].lower()
  step = int(stopped[0].split("at step ")[1].split()[0])
  assert 13 <= step < 40
  for i in range(3):
    assert step in checkpoint.CheckpointStore(tmp_path / "run" / f"r{i}" / "main",
                                              read_only=True).all_steps()
  resumed = _group_process(tmp_path / "run")
  assert resumed.wait(timeout=600) == 0, resumed.stdout.read()
  for i in range(3):
    got = loop.read_metrics(tmp_path / "run" / f"r{i}" / "main")
    want = loop.read_metrics(uninterrupted_group / f"r{i}" / "main")
    strip = lambda records: [{k: v for k, v in r.items() if not k.endswith("per_sec")}
                             for r in records]
    assert strip(got) == strip(want), i  # bitwise: the same program, the same batches


def test_a_nan_in_one_member_leaves_the_others_unchanged(tmp_path):
  """A member whose guard stops it is set aside; the other members' numbers are those of the
  same group without it being poisoned (same program, bitwise)."""
  specs = specs_for(tmp_path / "a", 3)
  clean = specs_for(tmp_path / "b", 3)
  poisoned = dataclasses.replace(specs[1], config=run_config(1e6, 0))
  batched.train_group([specs[0], poisoned, specs[2]], workdir=tmp_path / "a")
  batched.train_group([clean[0], dataclasses.replace(clean[1], config=run_config(1e-3, 9)),
                       clean[2]], workdir=tmp_path / "b")
  assert any(r.get("diverged") for r in loop.read_metrics(poisoned.directory))
  assert np.isnan(loop.last_evaluation(poisoned.directory)["eval_loss/raw"])
  for a, b in ((specs[0], clean[0]), (specs[2], clean[2])):
    strip = lambda records: [{k: v for k, v in r.items() if not k.endswith("per_sec")}
                             for r in records]
    assert strip(loop.read_metrics(a.directory)) == strip(loop.read_metrics(b.directory))


def test_k_steps_per_dispatch_equal_single_steps(tmp_path):
  """A group whose cadences allow chunks of 4 steps per dispatch (lax.scan) writes the same
  numbers, bitwise, as the same group stepped one step per dispatch."""
  def group(root, log_every):
    specs = []
    for spec in specs_for(root, 3):
      config = spec.config
      config.unlock()
      config.train.log_every = log_every
      config.lock()
      specs.append(dataclasses.replace(spec, config=config))
    return specs

  assert loop._chunk_size(batched._program(group(tmp_path / "x", 4)[0], 3, tmp_path),  # pylint: disable=protected-access
                          [batched._member(s, batched._program(s, 3, tmp_path).template)  # pylint: disable=protected-access
                           for s in group(tmp_path / "x", 4)]) == 4
  chunked, single = group(tmp_path / "a", 4), group(tmp_path / "b", 1)
  batched.train_group(chunked, workdir=tmp_path)
  batched.train_group(single, workdir=tmp_path)
  for a, b in zip(chunked, single):
    evals = lambda d: [r for r in loop.read_metrics(d) if naming.is_eval_record(r)]
    assert evals(a.directory) == evals(b.directory)
    losses = lambda d: {r["step"]: r["loss"] for r in loop.read_metrics(d) if "grad_norm" in r}
    assert losses(a.directory).items() <= losses(b.directory).items()


def test_chunk_size_follows_cadences_branch_starts_and_the_end():
  """k divides every cadence, the end and a branch's start: the quickstart's cadences of 100
  give k = 25; its decay branches from steps 80/160/320 to 100/200/400 give k = 20 from their
  first step (no single-step program); a program without a k-step form gets 1."""
  from types import SimpleNamespace  # pylint: disable=g-import-not-at-top
  train = SimpleNamespace(eval_every=100, checkpoint_every=100, log_every=100, snapshot_every=0)
  member = lambda end, start=None: SimpleNamespace(config=SimpleNamespace(train=train),
                                                   end_step=end, start=start)
  stepping = SimpleNamespace(steps=None)
  assert loop._chunk_size(stepping, [member(400)]) == 25  # pylint: disable=protected-access
  for start, end in ((80, 100), (160, 200), (320, 400)):
    assert loop._chunk_size(stepping, [member(end, ("main", start))] * 2) == 20  # pylint: disable=protected-access
  assert loop._chunk_size(stepping, [member(96)]) == 4  # pylint: disable=protected-access
  assert loop._chunk_size(SimpleNamespace(), [member(400)]) == 1  # pylint: disable=protected-access
