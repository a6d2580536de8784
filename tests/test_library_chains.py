"""``with_averages`` (default ``fold="applied"``) anywhere in an optax chain: every kind equals a
numpy reference computed from the params actually applied; ``apply_if_finite`` skips never
count; masks, bf16 storage, memory kinds and a cloudpickle round-trip of a whole optimizer."""

import math
import pickle

import cloudpickle
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from anytime import averaging, schedules

STEPS = 10

KINDS = {
    "ema": averaging.ema(0.8),
    "anytime_ema": averaging.anytime_ema(2.0),
    "power_ema": averaging.power_ema(gamma=1.5),
    "polyak": averaging.polyak(),
    "tail": averaging.tail(0.5),
    "window": averaging.window(every=1, size=3),
}


# --------------------------------------------------------------------------- numpy references


def reference(kind, spec, iterates):
  """The average after the iterates w_1..w_t ([t, ...] float64; skipped updates left out), per
  the kind's documented formula (each kind: its builder's docstring)."""
  w = np.asarray(iterates, np.float64)
  t = len(w)
  if kind == "ema":  # debiased: Σ_s (1 − d) d^(t−s) w_s / (1 − d^t)
    d = spec.decay
    c = (1 - d) * d ** (t - np.arange(1, t + 1)) / (1 - d ** t)
    return np.tensordot(c, w, 1)
  if kind == "anytime_ema":  # w̄_1 = w_1, then w̄_s = d_s w̄_(s−1) + (1 − d_s) w_s, d_s = 2^(−f/(s+1))
    out = w[0]
    for s in range(2, t + 1):
      d = 2.0 ** (-spec.factor / (s + 1))
      out = d * out + (1 - d) * w[s - 1]
    return out
  if kind == "power_ema":  # Σ_s (s^(γ+1) − (s−1)^(γ+1)) / t^(γ+1) w_s
    a = spec.gamma + 1
    s = np.arange(1, t + 1, dtype=np.float64)
    return np.tensordot((s ** a - (s - 1) ** a) / t ** a, w, 1)
  if kind == "polyak":
    return w.mean(0)
  if kind == "window":
    return w[-spec.size:].mean(0)
  if kind == "tail":  # A takes B's place when B holds >= fraction of the iterates folded so far
    a_start, b_start, b_count = 0, 0, 0
    for s in range(1, t + 1):
      b_count += 1
      if b_count >= spec.fraction * s:
        a_start, b_start, b_count = b_start, s, 0
    return w[a_start:].mean(0)
  raise AssertionError(kind)


def _tree_reference(kind, spec, applied):
  return jax.tree.map(lambda *xs: reference(kind, spec, np.stack(xs)), *applied)


# --------------------------------------------------------------------------- running a chain


def _params():
  keys = jax.random.split(jax.random.key(0), 2)
  return {"a": jax.random.normal(keys[0], (3, 4)), "b": jax.random.normal(keys[1], (4,))}


def _grads(step, params):
  key = jax.random.fold_in(jax.random.key(1), step)
  return jax.tree.map(lambda p: jax.random.normal(key, p.shape) + 0.3 * p, params)


def run(tx, *, nan_at=(), steps=STEPS):
  """``steps`` updates of ``tx`` (jitted); returns the final state, the final params and the
  params after each update that changed them (an update skipped by ``apply_if_finite`` is not
  an iterate)."""
  params = _params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  applied = []
  for step in range(steps):
    grads = _grads(step, params)
    if step in nan_at:
      grads = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
    updates, state = update(grads, state, params)
    new = optax.apply_updates(params, updates)
    if step in nan_at:  # the update was dropped
      for x, y in zip(jax.tree.leaves(new), jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, y)
    else:
      applied.append(new)
    params = new
  return state, params, applied


def check(state, params, applied, averages, rtol=2e-5, atol=2e-6):
  assert len(applied) >= 5
  for name, spec in averages.items():
    got = averaging.averaged_params(state, name, like=params)
    want = _tree_reference(name, spec, applied)
    for path, g, w in zip(jax.tree.leaves_with_path(got), jax.tree.leaves(got),
                          jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(g), w, rtol=rtol, atol=atol,
                                 err_msg=f"{name} {jax.tree_util.keystr(path[0])}")
    # eval_params reads the same thing.
    np.testing.assert_array_equal(averaging.eval_params(state, params)[name]["b"], got["b"])


AFTER = {
    "scale": lambda: optax.scale(0.5),
    "clip": lambda: optax.clip(0.01),
    "add_decayed_weights": lambda: optax.add_decayed_weights(1e-2),
}


@pytest.mark.parametrize("after", sorted(AFTER))
def test_every_kind_followed_by_a_transform_equals_the_applied_iterates(after):
  tx = optax.chain(averaging.with_averages(optax.adam(0.05), KINDS), AFTER[after]())
  check(*run(tx), KINDS)


def test_every_kind_before_and_after_transforms():
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   averaging.with_averages(optax.sgd(0.1, momentum=0.9), KINDS),
                   optax.add_decayed_weights(1e-2), optax.scale(-0.7))
  check(*run(tx), KINDS)


def test_nanodo_mup_chain():
  """nanodo's muP optimizer with ``with_averages`` where its base optimizer is:
  scale_by_adam → per-leaf 1/fan_in → scale_by_learning_rate."""
  fan_in = optax.stateless(lambda updates, params: jax.tree.map(
      lambda u, p: u / p.shape[0], updates, params))
  tx = optax.chain(averaging.with_averages(optax.scale_by_adam(), KINDS), fan_in,
                   optax.scale_by_learning_rate(schedules.constant(0.3)))
  check(*run(tx), KINDS)


def test_apply_if_finite_inside_with_averages_skips_are_not_iterates():
  tx = optax.chain(
      averaging.with_averages(optax.apply_if_finite(optax.adam(0.05), 5), KINDS),
      optax.scale(0.5))
  state, params, applied = run(tx, nan_at=(3, 4))
  assert len(applied) == STEPS - 2
  check(state, params, applied, KINDS)
  assert int(state[0].step) == STEPS - 2


def test_apply_if_finite_around_with_averages_skips_are_not_iterates():
  tx = optax.apply_if_finite(
      optax.chain(averaging.with_averages(optax.adam(0.05), KINDS), optax.scale(0.5)), 5)
  check(*run(tx, nan_at=(0, 5)), KINDS)


def test_nan_as_the_last_update_is_not_folded_by_the_readers():
  tx = optax.apply_if_finite(averaging.with_averages(optax.adam(0.05), KINDS), 5)
  check(*run(tx, nan_at=(STEPS - 1,)), KINDS)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("mask", ["tree", "callable"])
def test_masked_out_leaves_are_the_current_params(mask):
  mask = {"a": True, "b": False} if mask == "tree" else (
      lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
  tx = optax.chain(averaging.with_averages(optax.adam(0.05), KINDS, mask=mask), optax.scale(0.5))
  state, params, applied = run(tx)
  stored = state[0].averages.averages["polyak"].params
  assert isinstance(stored["b"], optax.MaskedNode) and stored["a"].shape == (3, 4)
  for name, spec in KINDS.items():
    got = averaging.averaged_params(state, name, like=params)
    np.testing.assert_array_equal(got["b"], params["b"])
    np.testing.assert_allclose(got["a"], _tree_reference(name, spec, applied)["a"], rtol=2e-5,
                               atol=2e-6)
    with pytest.raises(ValueError, match="like=params"):
      averaging.averaged_params(state, name)


def test_bfloat16_storage_with_a_float32_fold():
  f32 = run(optax.chain(averaging.with_averages(optax.adam(0.05), KINDS), optax.scale(0.5)))
  bf16 = run(optax.chain(averaging.with_averages(optax.adam(0.05), KINDS, dtype=jnp.bfloat16),
                         optax.scale(0.5)))
  state, params, _ = bf16
  for x in jax.tree.leaves(state[0].averages.averages):
    if x.ndim:
      assert x.dtype == jnp.bfloat16
  np.testing.assert_array_equal(params["a"], f32[1]["a"])  # the training is the same
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(f32[2]))
  for name in KINDS:
    got = averaging.averaged_params(state, name, like=params)
    want = averaging.averaged_params(f32[0], name, like=params)
    assert got["a"].dtype == jnp.float32
    # One bf16 rounding (2^-9 relative) per stored fold, at most STEPS of them.
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=0, atol=STEPS * 2.0 ** -9 * scale)
      assert not np.array_equal(g, w) or name == "window"


@pytest.mark.parametrize("memory_kind", ["device", "pinned_host"])
def test_memory_kinds_the_backend_offers(memory_kind):
  offered = {m.kind for m in jax.devices()[0].addressable_memories()}
  if memory_kind not in offered:
    pytest.skip(f"{jax.default_backend()} offers {sorted(offered)}")
  tx = optax.chain(averaging.with_averages(optax.adam(0.05), KINDS, memory_kind=memory_kind),
                   optax.scale(0.5))
  state, params, applied = run(tx)
  for x in jax.tree.leaves(state[0].averages):
    assert x.sharding.memory_kind == memory_kind
  check(state, params, applied, KINDS)


def test_an_unknown_memory_kind_is_refused_in_one_line():
  with pytest.raises(ValueError) as e:
    averaging.with_averages(optax.adam(0.05), KINDS, memory_kind="hbm")
  message = str(e.value)
  assert "\n" not in message and "'hbm'" in message and "'device'" in message


# --------------------------------------------------------------------------- pickling


def test_a_whole_optimizer_survives_cloudpickle():
  def build():
    return optax.chain(
        averaging.with_averages(
            optax.adamw(schedules.wsd(0.05, total_steps=20, warmup_steps=2, cooldown_fraction=0.2)), KINDS,
            mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p), dtype=jnp.bfloat16),
        optax.scale(0.5))

  tx = build()
  back = cloudpickle.loads(cloudpickle.dumps(tx))
  want, got = run(tx), run(back)
  for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(x, y)


def test_the_average_specs_pickle():
  back = pickle.loads(pickle.dumps(KINDS))
  assert back == KINDS


def test_schedules_survive_the_standard_pickle_inside_an_optimizer():
  lr = schedules.inverse_sqrt(0.05, offset=10)
  back = pickle.loads(pickle.dumps(lr))
  for step in (0, 3, 100):
    assert float(back(step)) == float(lr(step))
  assert math.isfinite(float(jax.jit(back)(7)))


def test_nnx_optimizer_reads_with_the_models_params():
  """An ``nnx.Optimizer`` boxes its state in ``OptVariable``s and the model's params in
  ``nnx.Param``s: the readers pair them leaf by leaf."""
  nnx = pytest.importorskip("flax.nnx")
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  averages = {"polyak": KINDS["polyak"], "window": KINDS["window"]}
  tx = optax.chain(averaging.with_averages(optax.adam(0.05), averages), optax.scale(0.5))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  applied = []
  for step in range(6):
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((1, 3)) * (step + 1)) ** 2))(model)
    optimizer.update(model, grads)
    applied.append(jax.tree.map(jnp.copy, nnx.state(model, nnx.Param)))
  params = nnx.state(model, nnx.Param)
  got = averaging.eval_params(optimizer.opt_state, params)
  for name, spec in averages.items():
    assert jax.tree.structure(got[name]) == jax.tree.structure(params)
    for g, *ws in zip(jax.tree.leaves(got[name]), *map(jax.tree.leaves, applied)):
      np.testing.assert_allclose(g, reference(name, spec, np.stack(ws)), rtol=2e-5, atol=2e-6)
