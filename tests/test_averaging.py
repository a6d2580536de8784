"""Averages against plain numpy loops, plus optax-style conformance checks."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from anytime import averaging

# These tests check the averages' arithmetic with with_averages last (fold="predicted": no
# lag, readers need no params); tests/test_library_*.py check the default fold="applied".
_with_averages = functools.partial(averaging.with_averages, fold="predicted")

NUM_STEPS = 37


def iterate_sequence(seed=0, num_steps=NUM_STEPS, dim=5):
  """Params after each update of SGD with random gradients, and the gradients."""
  rng = np.random.default_rng(seed)
  grads = rng.normal(size=(num_steps, dim)).astype(np.float32)
  w0 = rng.normal(size=dim).astype(np.float32)
  iterates = w0 - 0.1 * np.cumsum(grads, axis=0)  # SGD(lr=0.1): w_t = w_{t-1} - 0.1 g_t
  return w0, grads, iterates


def run_wrapper(spec, seed=0, num_steps=NUM_STEPS):
  w0, grads, _ = iterate_sequence(seed, num_steps)
  tx = _with_averages(optax.sgd(0.1), {"avg": spec})
  params = {"w": jnp.asarray(w0)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  history = []
  for g in grads:
    updates, state = update({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    history.append(np.asarray(averaging.averaged_params(state, "avg")["w"], np.float64))
  return np.stack(history)


def reference(kind_step, iterates, start_step=0, every=1):
  """Plain loop: avg follows raw params before start, then avg ← (1−ρ)avg + ρ w on folds."""
  out, avg, n = [], None, 0
  for step, w in enumerate(iterates.astype(np.float64), start=1):
    t = step - start_step
    if t < 1 or (n == 0 and t % every):
      avg = w.copy()
    elif t % every == 0:
      n += 1
      if n == 1:
        avg = w.copy()
      else:
        rho = kind_step(t, n)
        avg = (1 - rho) * avg + rho * w
    out.append(avg.copy())
  return np.stack(out)


@pytest.mark.parametrize("start_step,every", [(0, 1), (5, 1), (3, 4)])
def test_polyak(start_step, every):
  _, _, its = iterate_sequence()
  got = run_wrapper(averaging.polyak(start_step=start_step, every=every))
  want = reference(lambda t, n: 1.0 / n, its, start_step, every)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Closed form at the end: the mean of the folded iterates.
  folded = [w for s, w in enumerate(its, 1) if s > start_step and (s - start_step) % every == 0]
  np.testing.assert_allclose(got[-1], np.mean(folded, axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor", [6.25, 25.0])
def test_anytime_ema(factor):
  _, _, its = iterate_sequence()
  got = run_wrapper(averaging.anytime_ema(factor))
  want = reference(lambda t, n: 1.0 - 2.0 ** (-factor / (t + 1)), its)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_anytime_ema_every_k_matches_product_of_decays():
  _, _, its = iterate_sequence(num_steps=60)
  got = run_wrapper(averaging.anytime_ema(10.0, every=3), num_steps=60)
  exact = lambda t, n: 1.0 - np.prod([2.0 ** (-10.0 / (j + 1)) for j in range(t - 2, t + 1)])
  want = reference(exact, its, every=3)
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("gamma,every", [(3.0, 1), (16.3, 1), (5.0, 2)])
def test_power_ema_profile(gamma, every):
  _, _, its = iterate_sequence()
  got = run_wrapper(averaging.power_ema(gamma, every=every))
  want = reference(lambda t, n: 1.0 - (1.0 - every / t) ** (gamma + 1), its, every=every)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if every == 1:  # closed form: Σ_s (s^(γ+1) − (s−1)^(γ+1)) w_s / t^(γ+1)
    t = len(its)
    s = np.arange(1, t + 1, dtype=np.float64)
    weights = (s ** (gamma + 1) - (s - 1) ** (gamma + 1)) / t ** (gamma + 1)
    np.testing.assert_allclose(got[-1], weights @ its, rtol=1e-4, atol=1e-5)


def test_sigma_rel_gamma_roundtrip():
  for gamma in [0.5, 6.94, 16.3, 100.0]:
    assert averaging.sigma_rel_to_gamma(averaging.gamma_to_sigma_rel(gamma)) == pytest.approx(
        gamma, rel=1e-6)
  # EDM2's quoted pairs: sigma_rel 0.05 <-> gamma ~ 16.97, 0.10 <-> ~ 6.94.
  assert averaging.sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
  assert averaging.sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)


@pytest.mark.parametrize("debias", [True, False])
def test_ema(debias):
  w0, _, its = iterate_sequence()
  got = run_wrapper(averaging.ema(0.8, debias=debias))
  if debias:
    want = reference(lambda t, n: (1 - 0.8) / (1 - 0.8**n), its)
  else:  # starts from the initial params
    avg, rows = w0.astype(np.float64), []
    for w in its:
      avg = 0.8 * avg + 0.2 * w
      rows.append(avg)
    want = np.stack(rows)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_tail_is_an_exact_uniform_tail_of_promised_length(fraction):
  _, _, its = iterate_sequence(num_steps=80)
  got = run_wrapper(averaging.tail(fraction), num_steps=80)
  for n in range(1, 81):
    # Find the window [n − k + 1, n] whose uniform mean matches, and check its length.
    matches = [k for k in range(1, n + 1)
               if np.allclose(its[n - k:n].mean(axis=0), got[n - 1], rtol=1e-4, atol=1e-5)]
    assert matches, n
    k = matches[0]
    assert k >= fraction * n - 1e-9, (n, k)
    assert k <= fraction * (2 - fraction) * n + 1, (n, k)


@pytest.mark.parametrize("every,size", [(1, 4), (3, 5)])
def test_window_lawa(every, size):
  _, _, its = iterate_sequence()
  got = run_wrapper(averaging.window(every, size))
  for n in range(1, NUM_STEPS + 1):
    snapshots = [its[s - 1] for s in range(every, n + 1, every)][-size:]
    want = np.mean(snapshots, axis=0) if snapshots else its[n - 1]
    np.testing.assert_allclose(got[n - 1], want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- conformance

ALL_KINDS = {
    "ema": averaging.ema(0.9),
    "ema_25": averaging.anytime_ema(25.0),
    "pema": averaging.power_ema(sigma_rel=0.05),
    "polyak": averaging.polyak(start_step=2),
    "tail": averaging.tail(0.2),
    "lawa": averaging.window(2, 3),
}


def quadratic_problem(dtype=jnp.float32):
  params = {"a": jnp.ones((4, 8), dtype), "b": {"c": jnp.arange(8, dtype=dtype)}}
  loss = lambda p: sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(p))
  return params, loss


def train(tx, params, loss, steps=6, donate=False):
  @functools.partial(jax.jit, donate_argnums=(0, 1) if donate else ())
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


def test_inside_chain_and_state_structure_stable():
  params, loss = quadratic_problem()
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   _with_averages(optax.adamw(0.1), ALL_KINDS))
  state0 = tx.init(params)
  params, state = train(tx, params, loss)
  assert jax.tree.structure(state0) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(state0), jax.tree.leaves(state)):
    assert a.shape == b.shape and a.dtype == b.dtype
  assert set(averaging.average_names(state)) == set(ALL_KINDS)
  for name in ALL_KINDS:
    avg = averaging.averaged_params(state, name)
    assert jax.tree.structure(avg) == jax.tree.structure(params)


def test_inject_hyperparams_outside_and_inside():
  params, loss = quadratic_problem()
  inside = _with_averages(optax.inject_hyperparams(optax.adamw)(learning_rate=0.1),
                                   {"ema_25": averaging.anytime_ema(25.0)})
  outside = optax.inject_hyperparams(
      lambda learning_rate: _with_averages(optax.adamw(learning_rate),
                                                    {"ema_25": averaging.anytime_ema(25.0)})
  )(learning_rate=0.1)
  plain = _with_averages(optax.adamw(0.1), {"ema_25": averaging.anytime_ema(25.0)})
  results = [train(tx, params, loss) for tx in (inside, outside, plain)]
  want = averaging.averaged_params(results[2][1], "ema_25")
  for _, state in results[:2]:
    got = averaging.averaged_params(state, "ema_25")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4), got, want)


def test_multisteps_averages_only_real_updates():
  params, loss = quadratic_problem()
  k = 3
  multi = optax.MultiSteps(_with_averages(optax.sgd(0.05), {"p": averaging.polyak()}),
                           every_k_schedule=k)
  single = _with_averages(optax.sgd(0.05), {"p": averaging.polyak()})
  _, state_multi = train(multi, params, loss, steps=4 * k)
  _, state_single = train(single, params, loss, steps=4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
               averaging.averaged_params(state_multi, "p"),
               averaging.averaged_params(state_single, "p"))


@pytest.mark.parametrize("avg_dtype", [jnp.float32, jnp.bfloat16])
def test_bf16_params_and_bf16_averages_keep_dtypes(avg_dtype):
  params, loss = quadratic_problem(jnp.bfloat16)
  tx = _with_averages(optax.adamw(0.1), {
      "ema": averaging.anytime_ema(25.0, dtype=avg_dtype),
      "lawa": averaging.window(1, 2, dtype=avg_dtype)})
  state0 = tx.init(params)
  _, state = train(tx, params, loss)
  for a, b in zip(jax.tree.leaves(state0), jax.tree.leaves(state)):
    assert a.dtype == b.dtype
  for name in ("ema", "lawa"):
    assert all(x.dtype == avg_dtype
               for x in jax.tree.leaves(averaging.averaged_params(state, name)))


def test_jit_with_donated_state_matches_undonated():
  params, loss = quadratic_problem()
  tx = _with_averages(optax.adamw(0.1), ALL_KINDS)
  p1, s1 = train(tx, params, loss, donate=False)
  p2, s2 = train(tx, jax.tree.map(jnp.copy, params), loss, donate=True)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), (p1, s1), (p2, s2))


def test_shardings_preserved_on_8_device_mesh():
  mesh = jax.make_mesh((2, 4), ("data", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  params = {"w": jnp.ones((8, 16)), "v": jnp.ones((16,))}
  shardings = {"w": NamedSharding(mesh, P("data", "model")), "v": NamedSharding(mesh, P("model"))}
  params = jax.device_put(params, shardings)
  tx = _with_averages(optax.adamw(0.1), {k: v for k, v in ALL_KINDS.items()
                                                  if k != "lawa"})
  loss = lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["v"] ** 2)
  state = jax.jit(tx.init)(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(3):
    params, state = step(params, state)
  for name in averaging.average_names(state):
    avg = averaging.averaged_params(state, name)
    for key in params:
      assert avg[key].sharding.is_equivalent_to(shardings[key], avg[key].ndim), (name, key)


def test_eval_params_includes_schedule_free():
  params, loss = quadratic_problem()
  tx = _with_averages(optax.contrib.schedule_free_adamw(0.1, warmup_steps=2),
                               {"ema_25": averaging.anytime_ema(25.0)})
  params, state = train(tx, params, loss)
  names = averaging.eval_params(state, params)
  assert set(names) == {"raw", "schedule_free", "ema_25"}
  want = optax.contrib.schedule_free_eval_params(state.inner_state, params)
  jax.tree.map(np.testing.assert_array_equal, names["schedule_free"], want)


def test_errors():
  with pytest.raises(ValueError, match="params"):
    tx = _with_averages(optax.sgd(0.1), {"p": averaging.polyak()})
    tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))
  with pytest.raises(ValueError, match="decay"):
    averaging.ema(1.5)
  with pytest.raises(ValueError, match="factor"):
    averaging.anytime_ema(-1.0)
  with pytest.raises(ValueError, match="fraction"):
    averaging.tail(0.0)
  with pytest.raises(ValueError, match="size"):
    averaging.window(1, 0)
  with pytest.raises(ValueError, match="start_step"):
    averaging.polyak(start_step=-2)
  with pytest.raises(ValueError, match="exactly one"):
    averaging.power_ema()
  with pytest.raises(ValueError, match="averages"):
    _with_averages(optax.sgd(0.1), {})
  with pytest.raises(ValueError, match="kind"):
    averaging.from_config({"kind": "swa_of_doom"})
  with pytest.raises(KeyError, match="ema_25"):
    tx = _with_averages(optax.sgd(0.1), {"p": averaging.polyak()})
    averaging.averaged_params(tx.init({"w": jnp.ones(2)}), "ema_25")
  assert math.isclose(averaging.from_config({"kind": "anytime_ema", "factor": 25}).factor, 25.0)


# --------------------------------------------------------------------------- one object per kind

PROFILE_KINDS = [
    averaging.ema(0.8), averaging.ema(0.7, debias=False, every=2), averaging.anytime_ema(6.25),
    averaging.anytime_ema(12.5, every=3, start_step=2), averaging.power_ema(4.0),
    averaging.power_ema(2.0, every=2, start_step=5), averaging.polyak(start_step=4),
    averaging.tail(0.3), averaging.tail(0.5, every=2, start_step=3), averaging.window(1, 4),
    averaging.window(3, 2, start_step=1),
]


@pytest.mark.parametrize("spec", PROFILE_KINDS, ids=repr)
def test_weight_profile_reproduces_the_tracked_average(spec):
  w0, _, its = iterate_sequence()
  got = run_wrapper(spec)
  all_iterates = np.concatenate([w0[None], its]).astype(np.float64)
  for t in range(1, NUM_STEPS + 1):
    weights = spec.weights(t)
    assert weights.shape == (t + 1,) and math.isclose(weights.sum(), 1.0, rel_tol=1e-9)
    np.testing.assert_allclose(got[t - 1], weights @ all_iterates[:t + 1], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("spec", PROFILE_KINDS, ids=repr)
def test_config_roundtrip(spec):
  config = spec.to_config()
  assert averaging.from_config(config) == spec
  assert set(config) >= {"kind", "start_step", "every", "dtype"}


def test_rates_are_the_one_step_recursion():
  np.testing.assert_allclose(averaging.polyak().rates(4), [1, 1 / 2, 1 / 3, 1 / 4])
  np.testing.assert_allclose(averaging.polyak(start_step=2).rates(4), [1, 1, 1, 1 / 2])
  t = np.arange(1, 6.0)
  want = -np.expm1(-math.log(2.0) * 25.0 / (t + 1.0))
  want[0] = 1.0
  np.testing.assert_allclose(averaging.anytime_ema(25.0).rates(5), want)
  with pytest.raises(NotImplementedError):
    averaging.window(1, 2).rates(3)


def test_pure_function_form_matches_the_wrapper():
  params, loss = quadratic_problem()
  tx = _with_averages(optax.adamw(0.1), ALL_KINDS)
  _, wrapped = train(tx, params, loss)
  inner, state = optax.adamw(0.1), averaging.init_averages(ALL_KINDS, params)
  inner_state = inner.init(params)
  for _ in range(6):
    updates, inner_state = inner.update(jax.grad(loss)(params), inner_state, params)
    params = optax.apply_updates(params, updates)
    state = averaging.update_averages(ALL_KINDS, state, params)
  assert averaging.average_names(state) == list(ALL_KINDS)
  for name in ALL_KINDS:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 averaging.averaged_params(state, name), averaging.averaged_params(wrapped, name))


def test_with_averages_of_multisteps_is_refused_with_the_right_order():
  avg = {"p": averaging.polyak()}
  with pytest.raises(ValueError, match=r"optax.MultiSteps\(with_averages"):
    _with_averages(optax.MultiSteps(optax.sgd(0.1), 2), avg)
  tx = _with_averages(optax.MultiSteps(optax.sgd(0.1), 2).gradient_transformation(), avg)
  with pytest.raises(ValueError, match=r"optax.MultiSteps\(with_averages"):
    tx.init({"w": jnp.ones(2)})


def test_hyperparams_pass_through():
  tx = _with_averages(optax.inject_hyperparams(optax.adamw)(learning_rate=0.1),
                               {"p": averaging.polyak()})
  state = tx.init({"w": jnp.ones(2)})
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.1)
  state.hyperparams["learning_rate"] = jnp.asarray(0.05)
  assert float(state.inner_state.hyperparams["learning_rate"]) == pytest.approx(0.05)
  plain = _with_averages(optax.sgd(0.1), {"p": averaging.polyak()})
  with pytest.raises(AttributeError, match="inject_hyperparams"):
    plain.init({"w": jnp.ones(2)}).hyperparams


def test_like_keeps_param_dtypes_and_ints_are_not_averaged():
  params = {"w": jnp.ones(3, jnp.bfloat16), "n": jnp.array([1, 2], jnp.int32)}
  tx = _with_averages(optax.sgd(1.0), {"p": averaging.polyak(),
                                                 "lawa": averaging.window(1, 3)})
  state = tx.init(params)
  for _ in range(4):
    grads = {"w": jnp.ones(3, jnp.bfloat16), "n": jnp.zeros(2, jnp.int32)}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    params["n"] = params["n"] + 1  # an int counter the model keeps
  for name in ("p", "lawa"):
    avg = averaging.averaged_params(state, name)
    assert avg["w"].dtype == jnp.float32 and avg["n"].dtype == jnp.int32
    # ints are not averaged: the value at the last fold (before the +1 of the last loop).
    np.testing.assert_array_equal(avg["n"], [4, 5])
    cast = averaging.averaged_params(state, name, like=params)
    assert cast["w"].dtype == jnp.bfloat16
  assert all(v["w"].dtype == jnp.bfloat16
             for v in averaging.eval_params(state, params).values())


@pytest.mark.parametrize("name", list(ALL_KINDS))
def test_abstract_state_gives_abstract_params(name):
  params, _ = quadratic_problem(jnp.bfloat16)
  tx = _with_averages(optax.adamw(0.1), ALL_KINDS)
  abstract = jax.eval_shape(tx.init, params)
  avg = averaging.averaged_params(abstract, name, like=params)
  assert jax.tree.structure(avg) == jax.tree.structure(params)
  for a, p in zip(jax.tree.leaves(avg), jax.tree.leaves(params)):
    assert isinstance(a, jax.ShapeDtypeStruct) and a.shape == p.shape and a.dtype == p.dtype


def test_docstring_examples_run():
  """The package's examples (``>>>`` in docstrings) are tested, one module at a time."""
  import doctest  # pylint: disable=g-import-not-at-top
  import importlib  # pylint: disable=g-import-not-at-top
  import pkgutil  # pylint: disable=g-import-not-at-top

  modules = [averaging] + [importlib.import_module(f"anytime.averaging.{m.name}")
                           for m in pkgutil.iter_modules(averaging.__path__)]
  attempted = 0
  for module in modules:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, module.__name__
    attempted += result.attempted
  assert attempted >= 30
