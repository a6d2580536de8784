"""Decay branches (WSD), WSD-S, and the branches a main run plans for itself.

A branch restores the main branch's state at step S (params, optimizer state with its averages,
data iterator), continues with ``schedules.decay_branch(main_schedule, S, K, shape, fraction)``
for K steps, and is stored under ``workdir/branches/<name>/`` with a lineage record. The main
branch is never written by a branch, except in ``wsd_s`` mode, where the main branch adopts the
decayed state and continues from it at peak (Wen et al. 2024).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from anytime import checkpoint, loop, naming, schedules
from anytime import config as config_lib
from anytime import workdir as workdir_lib


class PlannedBranch(NamedTuple):
  """A decay branch a main run takes by itself when it passes ``branch_step``."""

  name: str
  branch_step: int
  cooldown_steps: int
  shape: str
  final_fraction: float


def planned_branches(config: ml_collections.ConfigDict) -> list[PlannedBranch]:
  """One branch per budget in ``config.branches.budgets``, its cooldown ending at the budget."""
  b = config.branches
  plan = []
  for budget in sorted(set(b.budgets)):
    cooldown = naming.cooldown_steps(b.cooldown_fraction, budget)
    plan.append(PlannedBranch(naming.branch_name(b.shape, budget), budget - cooldown, cooldown,
                              b.shape, b.final_fraction))
  return plan


def train(config: ml_collections.ConfigDict, workdir: str, *,
          start_over: bool = False) -> dict[str, Any]:
  """Trains the main branch (resuming if it can) and takes its planned decay branches.

  Returns the main branch's last evaluation metrics. ``start_over``: train from step 0 in a
  main directory whose checkpoints are gone (``loop.check_not_orphaned``).
  """
  loop.start(config)
  plan = planned_branches(config)

  def take_branches(step, state, train_iter):
    for p in plan:
      if p.branch_step == step and not workdir_lib.branch_finished(workdir, p.name):
        run_branch_from_state(config, workdir, state, train_iter, **p._asdict())

  def hook(step, state, train_iter):
    take_branches(step, state, train_iter)
    return state

  def on_restore(restored, state, train_iter):
    # Resumed exactly at a branch point whose branch did not finish: the loop only calls the
    # hook after a step, so take that branch here.
    if restored is not None:
      take_branches(restored, state, train_iter)

  return loop.train_and_evaluate(config, workdir, hook=hook if plan else None,
                                 hook_steps=frozenset(p.branch_step for p in plan),
                                 on_restore=on_restore if plan else None,
                                 start_over=start_over)


def _branch_schedule(config: ml_collections.ConfigDict, branch_step: int, cooldown_steps: int,
                     shape: str, final_fraction: float) -> dict[str, Any]:
  schedule = config.optimizer.schedule.to_dict()
  if "decay" in schedule:
    raise ValueError("optimizer.schedule already holds a decay; branch from an undecayed run")
  # Validate eagerly (shape, fraction, lengths) before anything expensive.
  schedules.decay_branch(schedules.from_config(schedule), branch_step, cooldown_steps, shape,
                         final_fraction)
  schedule["decay"] = dict(branch_step=branch_step, cooldown_steps=cooldown_steps, shape=shape,
                           final_fraction=final_fraction)
  return schedule


def _copy_iterator(run: loop.Run, source_iterator):
  iterator = run.make_train_iterator()
  iterator.set_state(source_iterator.get_state())
  return iterator


def run_branch_from_state(config: ml_collections.ConfigDict, workdir: str | epath.Path,
                          state: loop.TrainState,
                          train_iter, *, name: str, branch_step: int, cooldown_steps: int,
                          shape: str, final_fraction: float,
                          branch_run: loop.Run | None = None) -> loop.TrainState:
  """Runs one decay branch from an in-memory main state; returns the branch's final state.

  The main state and iterator are copied, never consumed, so the main run goes on unchanged.
  ``branch_run``: the run already built with the branch's schedule, if the caller has one.
  """
  directory = workdir_lib.branch_dir(workdir, name)
  schedule = _branch_schedule(config, branch_step, cooldown_steps, shape, final_fraction)
  run = branch_run or loop.build_run(config, workdir, schedule_override=schedule)
  state = jax.tree.map(jnp.copy, state)
  iterator = _copy_iterator(run, train_iter)
  lineage = workdir_lib.branch_lineage(
      parent_step=branch_step, cooldown_steps=cooldown_steps, shape=shape,
      final_fraction=final_fraction, schedule=schedule, finished=False,
      config_hash=checkpoint.config_hash(json.loads(config.to_json_best_effort())))
  checkpoint.check_writable(directory, field=f"branch {name}")
  with checkpoint.DirectoryLock(directory):  # one writer per branch directory
    return _run_branch_locked(config, run, state, iterator, directory, lineage, name,
                              branch_step + cooldown_steps)


def _run_branch_locked(config, run, state, iterator, directory, lineage, name, end_step):
  workdir_lib.write_lineage(directory, lineage)
  # An unfinished branch (interrupted) is redone from the main state: its stale checkpoints
  # would make the save of the same step fail.
  if jax.process_index() == 0 and directory.exists():
    for stale in directory.iterdir():
      if stale.name.isdigit():
        stale.rmtree()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"anytime_branch_{name}")
  store = checkpoint.CheckpointStore(directory, keep_latest=1,
                                     async_save=config.train.async_checkpoints)
  writer = loop.MetricsWriter(directory)
  try:
    state = loop.run_loop(run, state, iterator, store, writer, end_step=end_step,
                          label=f"branch {name}")
  finally:
    store.close()
    writer.close()
  workdir_lib.write_lineage(directory, {**lineage, "finished": True})
  return state


def branch(workdir: str, *, from_step: int, cooldown_steps: int, shape: str = "linear",
           final_fraction: float = 0.0, name: str = "", mode: str = "wsd") -> dict[str, Any]:
  """Restores main checkpoint ``from_step`` and runs a decay branch of ``cooldown_steps``.

  ``mode="wsd"``: the branch goes to ``workdir/branches/<name>/``; main is untouched.
  ``mode="wsd_s"``: additionally the main branch adopts the decayed state at
  ``from_step + cooldown_steps`` and will continue from there at peak when training resumes.
  This needs the main branch to be paused at ``from_step`` (no newer main checkpoint).
  Returns the branch's final evaluation metrics.
  """
  if mode not in ("wsd", "wsd_s"):
    raise ValueError(f"--mode must be 'wsd' or 'wsd_s', got {mode!r}")
  if name:
    workdir_lib.check_branch_name(name)  # before any file is read or written
  main_directory = workdir_lib.main_dir(workdir)
  if mode == "wsd_s":  # main adopts the branch's state: nobody else may train main meanwhile
    with checkpoint.DirectoryLock(main_directory):
      return _branch(workdir, main_directory, from_step, cooldown_steps, shape, final_fraction,
                     name, mode)
  return _branch(workdir, main_directory, from_step, cooldown_steps, shape, final_fraction, name,
                 mode)


def _branch(workdir, main_directory, from_step, cooldown_steps, shape, final_fraction, name,
            mode):
  config = config_lib.stored_config(workdir)
  loop.start(config)
  main_store = checkpoint.CheckpointStore(main_directory, read_only=True)
  steps = main_store.all_steps()
  if from_step not in steps:
    raise ValueError(f"--from-step {from_step} is not a checkpoint of the main branch; "
                     f"available: {steps}")
  if mode == "wsd_s" and steps[-1] > from_step:
    raise ValueError(f"--mode wsd_s needs the main branch paused at --from-step {from_step}, "
                     f"but it has checkpoints up to step {steps[-1]}")
  name = name or naming.branch_name(shape, from_step + cooldown_steps)
  if workdir_lib.branch_finished(workdir, name):
    raise ValueError(f"branch {name!r} already exists in {workdir}; pick another --name")
  schedule = _branch_schedule(config, from_step, cooldown_steps, shape, final_fraction)
  run = loop.build_run(config, workdir, schedule_override=schedule)
  iterator = run.make_train_iterator()
  state = main_store.restore(from_step, run.abstract_state, iterator)
  main_store.close()
  state = run_branch_from_state(config, workdir, state, iterator, name=name,
                                branch_step=from_step, cooldown_steps=cooldown_steps,
                                shape=shape, final_fraction=final_fraction, branch_run=run)
  if mode == "wsd_s":
    end = from_step + cooldown_steps
    store = checkpoint.CheckpointStore(main_directory,
                                       keep_latest=config.train.keep_checkpoints,
                                       keep_period=config.train.keep_period,
                                       keep_steps=[end] + [p.branch_step for p in
                                                           planned_branches(config)])
    branch_store = checkpoint.CheckpointStore(workdir_lib.branch_dir(workdir, name),
                                              read_only=True)
    iterator = run.make_train_iterator()
    state = branch_store.restore(end, run.abstract_state, iterator)
    branch_store.close()
    store.save(end, state, iterator)
    store.close()
    history = workdir_lib.read_lineage(main_directory) or {"adopted": []}
    history["adopted"].append(dict(branch=name, from_step=from_step, at_step=end))
    workdir_lib.write_lineage(main_directory, history)
  return loop.last_evaluation(workdir_lib.branch_dir(workdir, name))
