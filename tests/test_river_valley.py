"""River-valley lab: chain, sampler, exact losses, Hessian power iteration, the lab end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from anytime import schedules
from anytime.theory import river_valley as rv
from anytime.theory.river_valley import lab

_CONFIG_PATH = os.path.join(os.path.dirname(__file__), "..", "configs", "river_valley.py")


def _load_config_module():
  import importlib.util

  spec = importlib.util.spec_from_file_location("river_valley_config", _CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


rv_config = _load_config_module()


def _binary_entropy(p):
  return -p * np.log(p) - (1 - p) * np.log(1 - p)


def test_two_state_chain_entropy_and_stationary_closed_form():
  a, b = 0.3, 0.1
  chain = rv.chain_from_transition(np.array([[1 - a, a], [b, 1 - b]]), [True, False])
  pi = np.array([b, a]) / (a + b)
  np.testing.assert_allclose(chain.stationary_V, pi, rtol=1e-12)
  expected = pi[0] * _binary_entropy(a) + pi[1] * _binary_entropy(b)
  assert chain.entropy == pytest.approx(expected, rel=1e-12)
  summary = chain.summary()
  assert summary["entropy_low"] == pytest.approx(_binary_entropy(a), rel=1e-12)
  assert summary["entropy_high"] == pytest.approx(_binary_entropy(b), rel=1e-12)


def test_make_chain_structure_and_low_context_entropy():
  v, p = 16, 0.9
  chain = rv.make_chain(v, low_entropy_fraction=0.25, dominant_prob=p,
                        high_entropy_concentration=2.0, seed=3)
  assert chain.low_entropy_V.sum() == 4
  np.testing.assert_allclose(chain.transition_VxV.sum(axis=1), 1.0, rtol=1e-12)
  np.testing.assert_allclose(chain.stationary_V @ chain.transition_VxV, chain.stationary_V,
                             atol=1e-12)
  h_low = -p * np.log(p) - (1 - p) * np.log((1 - p) / (v - 1))
  np.testing.assert_allclose(chain.context_entropy_V[chain.low_entropy_V], h_low, rtol=1e-10)
  assert np.all(chain.context_entropy_V[~chain.low_entropy_V] > h_low)
  assert chain.entropy == pytest.approx(
      float(chain.stationary_V @ chain.context_entropy_V), rel=1e-12)


def test_sampler_transition_frequencies_match_chain():
  chain = rv.make_chain(5, low_entropy_fraction=0.4, dominant_prob=0.8, seed=1)
  tokens = np.asarray(rv.sample_tokens(chain, jax.random.key(0), 256, 201))
  assert tokens.shape == (256, 201) and tokens.dtype == np.int32
  counts = np.zeros((5, 5))
  np.add.at(counts, (tokens[:, :-1].ravel(), tokens[:, 1:].ravel()), 1)
  n_c = counts.sum(axis=1, keepdims=True)
  empirical = counts / n_c
  sigma = np.sqrt(chain.transition_VxV * (1 - chain.transition_VxV) / n_c)
  assert np.all(np.abs(empirical - chain.transition_VxV) <= 5 * sigma + 1e-3)
  # Stationary start: the first tokens and the visit frequencies follow pi.
  visits = np.bincount(tokens.ravel(), minlength=5) / tokens.size
  np.testing.assert_allclose(visits, chain.stationary_V, atol=0.01)
  first = np.bincount(tokens[:, 0], minlength=5) / 256
  np.testing.assert_allclose(first, chain.stationary_V, atol=0.12)


def test_bigram_population_metrics_closed_forms_and_monte_carlo():
  chain = rv.make_chain(8, low_entropy_fraction=0.5, dominant_prob=0.95, seed=2)
  exact = {"logits": jnp.log(jnp.asarray(chain.transition_VxV, jnp.float32))}
  m = rv.bigram_population_metrics(exact["logits"], chain)
  for name in rv.METRIC_NAMES:
    assert abs(float(m[name])) < 1e-5
  # Uniform predictions: the excess is log V - H overall and per context type.
  m = rv.bigram_population_metrics(jnp.zeros((8, 8)), chain)
  s = chain.summary()
  assert float(m["excess"]) == pytest.approx(np.log(8) - chain.entropy, rel=1e-5)
  assert float(m["excess_low"]) == pytest.approx(np.log(8) - s["entropy_low"], rel=1e-5)
  assert float(m["excess_high"]) == pytest.approx(np.log(8) - s["entropy_high"], rel=1e-5)
  # The minibatch cross-entropy estimates excess + entropy.
  model = rv.bigram_model(chain, init_scale=1.0, seed=0)
  tokens = rv.sample_tokens(chain, jax.random.key(1), 256, 65)
  mc = float(jax.jit(model.batch_loss)(model.init_params, tokens))
  assert mc == pytest.approx(float(jax.jit(model.eval_loss)(model.init_params)), abs=0.05)


def test_power_iteration_matches_dense_eigendecomposition():
  chain = rv.make_chain(4, low_entropy_fraction=0.5, dominant_prob=0.9, seed=0)
  model = rv.bigram_model(chain, init_scale=1.0, seed=5)
  flat, unravel = ravel_pytree(model.init_params)
  dense = jax.jit(jax.hessian(lambda x: model.eval_loss(unravel(x))))(flat)
  eigvals, eigvecs = np.linalg.eigh(np.asarray(dense, np.float64))
  value, vector = jax.jit(lambda p: rv.top_hessian_eigenpair(
      model.eval_loss, p, num_iterations=300))(model.init_params)
  assert float(value) == pytest.approx(eigvals[-1], rel=1e-3)
  assert abs(float(ravel_pytree(vector)[0] @ eigvecs[:, -1])) > 0.99
  # A quadratic with a known spectrum.
  a = jnp.diag(jnp.array([5.0, 3.0, 1.0, -0.5]))
  value, _ = rv.top_hessian_eigenpair(lambda p: 0.5 * p["x"] @ a @ p["x"], {"x": jnp.ones(4)},
                                      num_iterations=100)
  assert float(value) == pytest.approx(5.0, rel=1e-4)


def _small_config():
  config = rv_config.get_config()
  config.chain.vocab_size = 8
  config.budgets = (200, 400)
  config.eval_every = 50
  config.warmup_steps = 20
  config.cyclic_cycle_steps = 200
  config.log_every = 0
  config.diagnostics.hessian_every = 100
  config.diagnostics.power_iterations = 20
  config.diagnostics.interpolation_points = 5
  return config


def _steps(model, chain, config, **kwargs):
  return rv.build_steps(model, chain, rv.OptimizerSettings.from_config(config.optimizer),
                        rv.make_averages(config.averages), **kwargs)


def _run(steps, name, schedule, start, end, chunk_steps=100):
  return rv.train_run(steps, name, schedule, steps.init_state(), start, end,
                      chunk_steps=chunk_steps, data_key=jax.random.key(0))


def test_bigram_reaches_near_bayes_loss_with_decayed_schedule():
  config = _small_config()
  chain = rv.make_chain(**config.chain)
  model = rv.bigram_model(chain)
  steps = _steps(model, chain, config, batch_size=8, seq_len=64, hessian_iterations=10)
  start = float(model.metrics(model.init_params)["excess"])
  schedule = schedules.cosine(0.1, total_steps=1000, final_fraction=0.0, warmup_steps=20)
  record, _ = _run(steps, "cosine", schedule, 0, 1000)
  end = record.value(1000)
  assert start == pytest.approx(np.log(8) - chain.entropy, rel=1e-5)
  assert end < 5e-3 * start  # within 0.5% of the initial excess of the Bayes loss.
  constant, _ = _run(steps, "constant", schedules.constant(0.1, warmup_steps=20), 0, 1000)
  assert end < constant.value(1000)  # the decay is what brings it there.


def test_wsd_s_composition_equals_library_wsd_s_for_equal_cooldowns():
  config = _small_config()
  steps = np.arange(0, 1000)
  ours = lab._wsd_s_schedule(0.1, [300, 600, 1000], [100, 100, 100], config)(steps)
  ref = schedules.wsd_s(0.1, decay_ends=[300, 600, 1000], cooldown_steps=100,
                        shape=config.cooldown_shape, final_fraction=config.final_fraction,
                        warmup_steps=config.warmup_steps)(steps)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-6, atol=1e-9)


@pytest.mark.slow  # a whole training run
def test_run_lab_end_to_end(tmp_path):
  config = _small_config()
  summary = rv.run_lab(config, str(tmp_path), verbose=False)
  for name in ("summary.json", "curves.csv", "budgets.csv", "interpolation.csv",
               "projection.csv", "loss_curves.png", "context_types.png", "budgets.png",
               "sharpness_distance.png", "interpolation.png", "river_projection.png"):
    assert os.path.getsize(tmp_path / name) > 0, name
  assert json.load(open(tmp_path / "summary.json"))["budgets"] == [200, 400]
  one_run = summary["findings"]["one_run_budgets"]
  # Same data stream and the same LR up to the first budget: WSD-S == the first WSD branch.
  assert one_run["200"]["wsd_s"] == pytest.approx(one_run["200"]["wsd"], rel=1e-5)
  methods = {r["method"] for r in summary["results"]}
  assert {"constant", "constant+ema_25", "inverse_sqrt+ema_25", "cosine", "wsd", "wsd_s",
          "cyclic_cosine"} <= methods
  for row in summary["results"]:
    assert row["excess"] > 0
  for row in summary["diagnostics"]["per_budget"]:
    assert row["top_hessian_raw"] > 0
    # Triangle inequality between raw, average and decayed branch.
    assert row["distance_raw_to_wsd"] <= (row["distance_raw_to_ema_25"]
                                          + row["distance_ema_25_to_wsd"] + 1e-4)
  # Cyclic cosine cycles end on the budgets (the warmup sits inside the first cycle).
  curves = _read_csv(tmp_path / "curves.csv")
  for b in (200, 400):
    row = [r for r in curves if r["run"] == "cyclic_cosine" and r["step"] == str(b)
           and r["weights"] == "raw"][0]
    assert float(row["lr"]) < 1e-3 * config.peak_lr
  # Adam's preconditioned sharpness is recorded for the raw iterate at the Hessian steps.
  pre = [float(r["top_preconditioned_eigenvalue"]) for r in curves
         if r["run"] == "constant" and r["weights"] == "raw" and int(r["step"]) % 100 == 0]
  assert pre and all(np.isfinite(pre)) and all(p > 0 for p in pre)
  # The interpolation reaches the branch exactly at alpha = 1.
  wsd_b = summary["findings"]["wsd_vs_constant"][0]["wsd_excess_at_budget"]
  rows = [r for r in _read_csv(tmp_path / "interpolation.csv")
          if r["budget"] == "200" and r["target"] == "wsd" and float(r["alpha"]) == 1.0]
  assert float(rows[0]["excess"]) == pytest.approx(wsd_b, rel=1e-4)
  const_b = summary["findings"]["wsd_vs_constant"][0]["constant_excess_at_budget"]
  for target in ("wsd", "ema_25"):
    rows = [r for r in _read_csv(tmp_path / "interpolation.csv")
            if r["budget"] == "200" and r["target"] == target and float(r["alpha"]) == 0.0]
    assert float(rows[0]["excess"]) == pytest.approx(const_b, rel=1e-4)


def _read_csv(path):
  import csv

  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.mark.parametrize("kwargs", [
    dict(vocab_size=1), dict(low_entropy_fraction=1.5), dict(dominant_prob=1.0),
    dict(high_entropy_concentration=0.0), dict(seed=-1),
])
def test_make_chain_rejects_bad_input(kwargs):
  with pytest.raises(ValueError):
    rv.make_chain(**kwargs)


@pytest.mark.parametrize("field,value", [
    ("budgets", (400, 200)), ("budgets", (210, 400)), ("peak_lr", 0.0), ("runs", ("wsd",)),
    ("cooldown_fraction", 1.5), ("reference_average", "nope"), ("eval_every", 0),
])
def test_validate_config_rejects_bad_fields(field, value):
  config = _small_config()
  config[field] = value
  with pytest.raises(ValueError, match=field.split(".")[0]):
    rv.validate_config(config)


def test_other_bad_inputs():
  with pytest.raises(ValueError, match="num_iterations"):
    rv.top_hessian_eigenpair(lambda p: jnp.sum(p ** 2), jnp.ones(3), num_iterations=0)
  with pytest.raises(ValueError, match="transition_VxV"):
    rv.chain_from_transition(np.array([[0.5, 0.6], [0.5, 0.5]]), [True, False])
  with pytest.raises(ValueError, match="irreducible"):
    rv.chain_from_transition(np.eye(3), [True, True, False])
  chain = rv.make_chain(4)
  with pytest.raises(ValueError, match="seq_len"):
    rv.sample_tokens(chain, jax.random.key(0), 2, 1)
  config = _small_config()
  with pytest.raises(ValueError, match="batch_size"):
    _steps(rv.bigram_model(chain), chain, config, batch_size=0, seq_len=8, hessian_iterations=5)
  steps = _steps(rv.bigram_model(chain), chain, config, batch_size=2, seq_len=8,
                 hessian_iterations=5)
  with pytest.raises(ValueError, match="multiples of eval_every"):
    _run(steps, "x", schedules.constant(0.1), 0, 15, chunk_steps=10)
  with pytest.raises(ValueError, match="optimizer.name"):
    rv.OptimizerSettings.from_config(dict(config.optimizer, name="lion"))
  with pytest.raises(ValueError, match="optimizer.b2"):
    rv.OptimizerSettings.from_config(dict(config.optimizer, b2=1.0))
  with pytest.raises(ValueError, match="averages"):
    rv.make_averages({})
  with pytest.raises(ValueError, match="model.name"):
    rv.make_model(chain, dict(config.model, name="mlp"), seq_len=8)


@pytest.mark.slow  # a whole training run
def test_transformer_option():
  import optax

  chain = rv.make_chain(8, seed=0)
  model = rv.transformer_model(chain, dict(d_model=16, num_layers=1, num_heads=2, mlp_dim=32),
                               seq_len=16, eval_batch_size=8)
  metrics = jax.jit(model.metrics)
  start = float(metrics(model.init_params)["excess"])
  assert start > 0
  tx = optax.adam(0.03)

  @jax.jit
  def step(params, opt_state, key):
    grads = jax.grad(model.batch_loss)(params, rv.make_sampler(chain, 16, 16)(key))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = model.init_params, tx.init(model.init_params)
  for i in range(30):
    params, opt_state = step(params, opt_state, jax.random.key(i))
  assert float(metrics(params)["excess"]) < 0.5 * start


def test_preconditioned_power_iteration_matches_dense():
  chain = rv.make_chain(3, low_entropy_fraction=0.5, dominant_prob=0.9, seed=0)
  model = rv.bigram_model(chain, init_scale=1.0, seed=1)
  flat, unravel = ravel_pytree(model.init_params)
  d = jnp.linspace(0.5, 2.0, flat.size)
  dense = jax.jit(jax.hessian(lambda x: model.eval_loss(unravel(x))))(flat)
  expected = np.linalg.eigvalsh(np.asarray(d[:, None] * dense * d[None, :], np.float64))[-1]
  value, _ = jax.jit(lambda p, s: rv.top_hessian_eigenpair(
      model.eval_loss, p, num_iterations=300, scale=s))(model.init_params, unravel(d))
  assert float(value) == pytest.approx(expected, rel=1e-3)
