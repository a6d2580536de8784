"""Trainer invariants on CPU: sharded == single device, resume == uninterrupted, it learns."""

import json

import jax
import numpy as np
import pytest

from anytime import workdir as workdir_lib
from anytime import branches, checkpoint, loop
from anytime import config as config_lib
from anytime.lm import data as data_lib
from anytime.lm import model as model_lib

import _tiny

pytestmark = pytest.mark.slow  # whole training runs, subprocesses or notebooks


def tiny_config(**overrides):
  defaults = {"data.max_bytes": 300_000, "train.total_steps": 12, "train.eval_every": 6,
              "train.eval_batches": 2, "train.log_every": 2, "train.checkpoint_every": 4,
              "optimizer.schedule": {"name": "constant", "peak_value": 3e-3, "warmup_steps": 3},
              "optimizer.averages": {"ema_25": {"kind": "anytime_ema", "factor": 25.0},
                                     "polyak": {"kind": "polyak", "start_step": 4}}}
  return _tiny.tiny_config(**{**defaults, **overrides})


def final_state(workdir, config):
  run = loop.build_run(config, workdir)
  store = checkpoint.CheckpointStore(workdir_lib.main_dir(workdir), read_only=True)
  step = store.latest_step()
  state = store.restore(step, run.abstract_state)
  store.close()
  return step, jax.tree.map(np.asarray, jax.device_get(state))


def losses(workdir):
  return [(m["step"], m["loss"]) for m in loop.read_metrics(workdir_lib.main_dir(workdir))
          if "loss" in m]


def evals(workdir):
  return [m for m in loop.read_metrics(workdir_lib.main_dir(workdir))
          if any(k.startswith("eval_loss/") for k in m)]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference"))
  config = tiny_config(**{"parallel.num_devices": 1})
  branches.train(config, workdir)
  return workdir, config


def test_sharded_step_matches_single_device(reference_run, tmp_path):
  ref_dir, ref_config = reference_run
  config = tiny_config(**{"parallel.mesh": {"data": 2, "fsdp": 2, "tensor": 2}})
  branches.train(config, str(tmp_path))
  ref_losses, got_losses = losses(ref_dir), losses(str(tmp_path))
  assert [s for s, _ in ref_losses] == [s for s, _ in got_losses]
  # Different reduction orders across 8 devices: float32 round-off only.
  np.testing.assert_allclose([l for _, l in got_losses], [l for _, l in ref_losses], rtol=2e-5)
  _, ref_state = final_state(ref_dir, ref_config)
  _, got_state = final_state(str(tmp_path), config)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               got_state.params, ref_state.params)
  # The averages live in the optimizer state with the params' shardings.
  run = loop.build_run(config, str(tmp_path))
  state = run.init_state()
  from anytime import averaging
  for name in ("ema_25", "polyak"):
    avg = averaging.averaged_params(state.opt_state, name)
    for a, p in zip(jax.tree.leaves(avg), jax.tree.leaves(state.params)):
      assert a.sharding == p.sharding
  assert any(len(p.sharding.device_set) == 8 and not p.sharding.is_fully_replicated
             for p in jax.tree.leaves(state.params))


def test_interrupted_and_resumed_equals_uninterrupted(reference_run, tmp_path):
  ref_dir, _ = reference_run
  workdir = str(tmp_path)
  config = tiny_config(**{"parallel.num_devices": 1, "train.total_steps": 7})
  branches.train(config, workdir)  # "interrupted" after step 7 (checkpoint at 4, 7)
  # Simulate a crash after step 7's checkpoint: metrics past the last checkpoint get dropped.
  config = tiny_config(**{"parallel.num_devices": 1})
  branches.train(config, workdir)
  step, got = final_state(workdir, config)
  _, want = final_state(ref_dir, config)
  assert step == 12
  jax.tree.map(np.testing.assert_array_equal, got, want)  # bitwise on CPU
  # The first leg also logged and evaluated at its last step, 7; everything else is identical.
  assert [x for x in losses(workdir) if x[0] != 7] == losses(ref_dir)
  assert [x for x in evals(workdir) if x["step"] != 7] == evals(ref_dir)


def test_resume_from_older_checkpoint_drops_later_metrics(reference_run, tmp_path):
  ref_dir, _ = reference_run
  workdir = str(tmp_path)
  config = tiny_config(**{"parallel.num_devices": 1})
  branches.train(config, workdir)
  # Lose the checkpoints after step 8 (as if the process died right after step 11).
  for step in (12,):
    (workdir_lib.main_dir(workdir) / str(step)).rmtree()
  branches.train(config, workdir)
  assert losses(workdir) == losses(ref_dir)
  assert evals(workdir) == evals(ref_dir)


def test_changed_config_is_refused_on_resume(reference_run, tmp_path):
  ref_dir, _ = reference_run
  config = tiny_config(**{"parallel.num_devices": 1, "optimizer.schedule.peak_value": 1e-3,
                          "model.mlp_dim": 128})
  with pytest.raises(ValueError, match="model.mlp_dim, optimizer.schedule.peak_value"):
    branches.train(config, ref_dir)
  # total_steps of an anytime run is safe to change.
  loop.check_resumable(tiny_config(**{"parallel.num_devices": 1, "train.total_steps": 99}),
                        workdir_lib.main_dir(ref_dir))


def test_config_written_before_a_key_existed_resumes(reference_run, tmp_path):
  """A stored config.json without a schema key (older code) resumes: the key meant its
  default. Free-form sections are taken whole: a schedule option missing there is a change."""
  ref_dir, config = reference_run
  directory = tmp_path / "main"
  directory.mkdir()
  stored = json.loads((workdir_lib.main_dir(ref_dir) / "config.json").read_text())
  del stored["model"]["rope_base"]  # not safe to change: only its default lets it pass
  (directory / "config.json").write_text(json.dumps(stored))
  loop.check_resumable(config, directory)
  del stored["optimizer"]["schedule"]["peak_value"]
  (directory / "config.json").write_text(json.dumps(stored))
  with pytest.raises(ValueError, match=r"differing keys: optimizer\.schedule\.peak_value\."):
    loop.check_resumable(config, directory)


def test_metrics_and_checkpoint_contents(reference_run):
  ref_dir, config = reference_run
  directory = workdir_lib.main_dir(ref_dir)
  records = loop.read_metrics(directory)
  train_records = [r for r in records if "loss" in r]
  assert {"lr", "grad_norm", "tokens", "steps_per_sec", "tokens_per_sec"} <= set(train_records[0])
  assert train_records[-1]["tokens"] == 12 * 8 * 32
  eval_records = evals(ref_dir)
  assert [r["step"] for r in eval_records] == [6, 12]
  assert set(eval_records[-1]) >= {"eval_loss/raw", "eval_loss/ema_25", "eval_loss/polyak"}
  stored = json.loads((directory / "config.json").read_text())
  assert stored["model"]["d_model"] == 32
  assert sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) == [4, 8, 12]
  assert list((directory / "tensorboard").iterdir())


def test_tiny_run_learns_below_unigram_entropy(tmp_path):
  config = tiny_config(**{"train.total_steps": 150, "train.eval_every": 150,
                          "train.checkpoint_every": 150, "parallel.num_devices": 2,
                          "train.log_every": 50, "train.batch_size": 16,
                          "data.max_bytes": 150_000})
  result = branches.train(config, str(tmp_path))
  tokenizer = data_lib.build_tokenizer(config.data)
  entropy = data_lib.unigram_entropy(config.data, tokenizer)
  assert result["eval_loss/raw"] < entropy - 0.6, (result, entropy)


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
  config = tiny_config(**{"parallel.num_devices": 1, "train.total_steps": 4,
                          "train.checkpoint_every": 2})
  workdir = str(tmp_path)
  run = loop.build_run(config, workdir)
  store = checkpoint.CheckpointStore(workdir_lib.main_dir(workdir), async_save=False)
  writer = loop.MetricsWriter(workdir_lib.main_dir(workdir))
  iterator = run.make_train_iterator()

  class Poisoned:
    def __init__(self):
      self.count = 0

    def __next__(self):
      batch = next(iterator)
      self.count += 1
      weights = np.full(batch["inputs"].shape, np.nan if self.count == 3 else 1.0, np.float32)
      return {**batch, "weights": weights}

    def get_state(self):
      return iterator.get_state()

    def set_state(self, s):
      iterator.set_state(s)

  state = run.init_state()
  with pytest.raises(loop.TrainingError, match="non-finite loss.*step 3"):
    loop.run_loop(run, state, Poisoned(), store, writer, end_step=4)
  assert store.all_steps() == [2]
  store.close()


def test_model_counts_and_flops():
  cfg = model_lib.ModelConfig(vocab_size=100, d_model=32, num_layers=2, num_heads=2,
                              mlp_dim=64, max_len=16)
  per_block = 3 * 32 * 32 + 32 * 32 + 2 * 32 * 64 + 2 * 32 + 2 * 16
  total = 100 * 32 + 2 * per_block + 32 + 32 * 100
  assert model_lib.param_count(cfg) == total
  assert model_lib.flops_per_token(cfg, 16) == 6 * (total - 100 * 32) + 12 * 2 * 32 * 16


def test_bad_configs_refused_before_compilation():
  with pytest.raises(ValueError, match="train.batch_size"):
    config_lib.validate_config(tiny_config(**{"train.batch_size": 6}))  # 8 data-parallel devices
  with pytest.raises(ValueError, match="warmup_steps"):
    config_lib.validate_config(tiny_config(**{"optimizer.schedule.warmup_steps": 50}))
  with pytest.raises(ValueError, match="parallel.mesh"):
    config_lib.validate_config(tiny_config(**{"parallel.mesh": {"data": 3, "fsdp": 1, "tensor": 1}}))
  with pytest.raises(ValueError, match="model.max_len"):
    config_lib.validate_config(tiny_config(**{"train.seq_len": 64}))
  with pytest.raises(AttributeError):
    tiny_config().train.totl_steps = 3
