"""Checkpoint merging: weights, in-memory merge and merge from CheckpointStore vs numpy."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from anytime import checkpoint
from anytime.experiments import merging


class _State(NamedTuple):  # the layout CheckpointStore saves: TrainState(step, params, opt_state, rng)
  step: Any
  params: Any
  opt_state: Any
  rng: Any


def _params(seed):
  rng = np.random.default_rng(seed)
  return {"dense": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)},
          "embed": rng.normal(size=(5, 2)).astype(jnp.bfloat16),
          "count": np.int32(seed)}


def _expected(trees, weights):
  out = {"dense": {"kernel": sum(w * t["dense"]["kernel"].astype(np.float64)
                                 for t, w in zip(trees, weights))},
         "embed": sum(w * t["embed"].astype(np.float64) for t, w in zip(trees, weights))}
  return out


def test_weights():
  assert merging.uniform_weights(4) == pytest.approx((0.25,) * 4)
  w = merging.ema_weights(3, 0.5)
  assert w == pytest.approx(np.array([0.25, 0.5, 1.0]) / 1.75)  # oldest first
  assert merging.ema_weights(3, 1.0) == pytest.approx(merging.uniform_weights(3))
  with pytest.raises(ValueError, match="alpha"):
    merging.ema_weights(3, 0.0)
  with pytest.raises(ValueError, match="k must be"):
    merging.uniform_weights(0)


def test_last_steps():
  assert merging.last_steps([10, 20, 30, 40], before=35, k=2) == (20, 30)
  assert merging.last_steps([10, 20, 30, 40], before=40, k=3) == (20, 30, 40)
  with pytest.raises(ValueError, match="k: 3 checkpoints"):
    merging.last_steps([10, 20, 30], before=25, k=3)


def test_merge_in_memory_keeps_dtypes_and_newest_integers():
  trees = [_params(s) for s in (1, 2, 3)]
  weights = merging.ema_weights(3, 0.6)
  merged = merging.merge(trees, weights)
  expected = _expected(trees, weights)
  np.testing.assert_allclose(merged["dense"]["kernel"], expected["dense"]["kernel"], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(merged["embed"], np.float32), expected["embed"],
                             rtol=1e-2, atol=1e-2)  # bf16 result of an f32 sum
  assert merged["embed"].dtype == jnp.bfloat16
  assert merged["dense"]["kernel"].dtype == jnp.float32
  assert int(merged["count"]) == 3 and merged["count"].dtype == jnp.int32
  with pytest.raises(ValueError, match="sum to 1"):
    merging.merge(trees, (0.5, 0.5, 0.5))
  with pytest.raises(ValueError, match="one weight per checkpoint"):
    merging.merge(trees, (0.5, 0.5))


def test_merge_checkpoints_from_checkpoint_store(tmp_path):
  store = checkpoint.CheckpointStore(tmp_path / "main", keep_latest=10, async_save=False)
  saved = {}
  for step in (10, 20, 30, 40):
    params = _params(step)
    saved[step] = params
    opt_state = {"mu": jax.tree.map(np.zeros_like, params), "big": np.ones((64,), np.float32)}
    store.save(step, _State(np.int32(step), params, opt_state, np.zeros((2,), np.uint32)))
  store.close()

  steps = merging.last_steps(store.all_steps(), before=35, k=3)
  assert steps == (10, 20, 30)
  weights = merging.ema_weights(3, 0.5)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)),
                          _params(0))
  merged = merging.merge_checkpoints(tmp_path / "main", steps, weights, abstract)
  expected = _expected([saved[s] for s in steps], weights)
  np.testing.assert_allclose(np.asarray(merged["dense"]["kernel"]), expected["dense"]["kernel"],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(merged["embed"], np.float32), expected["embed"],
                             rtol=1e-2, atol=1e-2)
  assert merged["embed"].dtype == jnp.bfloat16
  assert int(merged["count"]) == 30
  in_memory = merging.merge([saved[s] for s in steps], weights)
  np.testing.assert_array_equal(np.asarray(merged["dense"]["kernel"]),
                                np.asarray(in_memory["dense"]["kernel"]))
  with pytest.raises(ValueError, match=r"steps: \[25\] not saved"):
    merging.merge_checkpoints(tmp_path / "main", (20, 25), (0.5, 0.5), abstract)


def test_merge_checkpoints_refuses_unordered_steps(tmp_path):
  with pytest.raises(ValueError, match="steps must be strictly ascending"):
    merging.merge_checkpoints(tmp_path, (20, 10), (0.5, 0.5), {})


def test_merge_checkpoints_restores_onto_given_shardings(tmp_path):
  store = checkpoint.CheckpointStore(tmp_path / "main", keep_latest=5, async_save=False)
  kernels = {s: np.random.default_rng(s).normal(size=(8, 2)).astype(np.float32) for s in (1, 2)}
  for s, kernel in kernels.items():
    store.save(s, _State(np.int32(s), {"kernel": kernel}, {}, np.zeros((2,), np.uint32)))
  store.close()
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  abstract = {"kernel": jax.ShapeDtypeStruct((8, 2), jnp.float32, sharding=sharding)}
  merged = merging.merge_checkpoints(tmp_path / "main", (1, 2), (0.5, 0.5), abstract)
  assert merged["kernel"].sharding == sharding
  np.testing.assert_allclose(np.asarray(merged["kernel"]), (kernels[1] + kernels[2]) / 2,
                             rtol=1e-6)
