"""Tests for anytime.posthoc: exact profiles, least-squares weights, Orbax snapshots, sharding."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate

from anytime import averaging, posthoc

# These tests check the averages' arithmetic with with_averages last (fold="predicted": no
# lag, readers need no params); tests/test_library_*.py check the default fold="applied".
_with_averages = functools.partial(averaging.with_averages, fold="predicted")


def _run(averages, iterates):
  """Feeds ``iterates`` [T, ...] as the successive params through ``with_averages``.

  SGD with lr 1 and gradient ``params − w_t`` makes the params after update t exactly ``w_t``.
  Returns the final opt_state.
  """
  tx = _with_averages(optax.sgd(1.0), averages)
  params = jnp.zeros_like(iterates[0])
  state = tx.init(params)

  @jax.jit
  def run(params, state):
    def step(carry, w):
      params, state = carry
      updates, state = tx.update(params - w, state, params)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, state), iterates)[0]

  return run(params, state)[1]


def _power_profile(gamma, t, n=None):
  """Independent reference: (s^(γ+1) − (s−1)^(γ+1)) / t^(γ+1) for s = 1..t, zero-padded to n."""
  s = np.arange(1, t + 1, dtype=np.float64)
  out = np.zeros(n or t)
  out[:t] = (s ** (gamma + 1) - (s - 1) ** (gamma + 1)) / t ** (gamma + 1)
  return out


def _anytime_profile(factor, t):
  """Independent reference: the weights of 2^(−f/(t+1)) EMA by forward recursion."""
  weights = np.zeros(t)
  for step in range(1, t + 1):
    keep = 0.0 if step == 1 else 2.0 ** (-factor / (step + 1))
    weights *= keep
    weights[step - 1] = 1.0 - keep
  return weights


# --------------------------------------------------------------------------- profiles


def test_profiles_match_the_tracked_averages():
  t = 120
  averages = {"p": averaging.power_ema(gamma=6.94), "a": averaging.anytime_ema(25.0),
              "late": averaging.power_ema(gamma=3.0, start_step=30)}
  state = _run(averages, jnp.eye(t))  # iterate s is the unit vector e_s: the average = profile
  np.testing.assert_allclose(averaging.averaged_params(state, "p"),
                             posthoc.profile(t, gamma=6.94), atol=2e-6)
  np.testing.assert_allclose(averaging.averaged_params(state, "p"), _power_profile(6.94, t),
                             atol=2e-6)
  np.testing.assert_allclose(averaging.averaged_params(state, "a"),
                             posthoc.profile(t, anytime_factor=25.0), atol=2e-6)
  np.testing.assert_allclose(_anytime_profile(25.0, t), posthoc.profile(t, anytime_factor=25.0),
                             atol=1e-12)
  late = np.exp(posthoc._Kind(averaging.power_ema(3.0, start_step=30)).log_weights(t))
  np.testing.assert_allclose(averaging.averaged_params(state, "late"), late / late.sum(),
                             atol=2e-6)
  tail = posthoc.profile(t, gamma=0.0, tail_start=80)
  np.testing.assert_allclose(tail, np.r_[np.zeros(80), np.full(40, 1 / 40)], atol=1e-15)


def test_inner_products_match_brute_force_sums():
  rng = np.random.default_rng(0)
  n = 400
  kinds = [posthoc._Kind(averaging.PowerEma(gamma=16.97)),
           posthoc._Kind(averaging.PowerEma(gamma=6.94)),
           posthoc._Kind(averaging.AnytimeEma(factor=12.5)),
           posthoc._Kind(averaging.PowerEma(gamma=0.0))]
  profiles = []
  for _ in range(12):
    kind = kinds[rng.integers(len(kinds))]
    end = int(rng.integers(2, n + 1))
    start = int(rng.integers(0, end)) if getattr(kind.average, "gamma", None) == 0.0 else 0
    profiles.append(posthoc._Profile(kind, start, end))

  def dense(p):
    if isinstance(p.kind.average, averaging.AnytimeEma):
      w = _anytime_profile(p.kind.average.factor, p.end)
    else:
      w = _power_profile(p.kind.average.gamma, p.end)
    w[:p.start] = 0.0
    return np.r_[w / w.sum(), np.zeros(n - p.end)]

  matrix = np.stack([dense(p) for p in profiles])
  expected = matrix @ matrix.T
  got = posthoc._InnerProducts(kinds, n).matrix(profiles, profiles)
  np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("g1,t1,g2,t2", [(6.94, 20_000, 16.97, 30_000), (3.0, 50_000, 3.0, 50_000),
                                         (16.97, 40_000, 6.94, 10_000)])
def test_inner_products_approach_edm2_integrals(g1, t1, g2, t2):
  """For large t the discrete profiles tend to EDM2's continuous (γ+1) s^γ / t^(γ+1)."""
  def f(s):
    return ((g1 + 1) * s ** g1 / t1 ** (g1 + 1)) * ((g2 + 1) * s ** g2 / t2 ** (g2 + 1))

  integral = integrate.quad(f, 0, min(t1, t2), epsabs=0, epsrel=1e-12, limit=200)[0]
  kinds = [posthoc._Kind(averaging.PowerEma(gamma=g1)),
           posthoc._Kind(averaging.PowerEma(gamma=g2))]
  got = posthoc._InnerProducts(kinds, max(t1, t2)).matrix(
      [posthoc._Profile(kinds[0], 0, t1)], [posthoc._Profile(kinds[1], 0, t2)])[0, 0]
  np.testing.assert_allclose(got, integral, rtol=2e-4)


# --------------------------------------------------------------------------- weights


def test_weights_sum_to_one_and_fit_error_is_the_profile_error():
  gammas = [averaging.sigma_rel_to_gamma(0.05), averaging.sigma_rel_to_gamma(0.10)]
  steps = list(range(25, 1001, 25))
  n = 1000
  for target in (dict(sigma_rel=0.07), dict(anytime_factor=25.0), dict(sigma_rel=0.15),
                 dict(gamma=0.0, tail_start=500)):
    weights, fit_error = posthoc.solve_weights(steps, gammas, target_step=n, **target)
    assert weights.shape == (len(steps), 2)
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-12)
    reconstructed = sum(weights[i, j] * _power_profile(gammas[j], s, n)
                        for i, s in enumerate(steps) for j in range(2))
    wanted = posthoc.profile(n, **target)
    np.testing.assert_allclose(
        fit_error, np.linalg.norm(reconstructed - wanted) / np.linalg.norm(wanted), rtol=1e-4)
    assert fit_error < 1e-2, (target, fit_error)
  # A tracked profile at a snapshot step is found exactly.
  weights, fit_error = posthoc.solve_weights(steps, gammas, target_step=500, sigma_rel=0.10)
  assert fit_error < 1e-6
  np.testing.assert_allclose(weights[steps.index(500), 1], 1.0, atol=1e-6)
  assert np.all(weights[steps.index(500) + 1:] == 0.0)  # no snapshot after the target


def test_fit_error_grows_for_a_narrow_target_and_a_target_between_snapshots():
  gammas = [averaging.sigma_rel_to_gamma(0.05), averaging.sigma_rel_to_gamma(0.10)]
  steps = list(range(100, 2001, 100))
  _, wide = posthoc.solve_weights(steps, gammas, target_step=2000, sigma_rel=0.07)
  _, narrow = posthoc.solve_weights(steps, gammas, target_step=2000, sigma_rel=0.01)
  _, between = posthoc.solve_weights(steps, gammas, target_step=2050, sigma_rel=0.07)
  assert wide < 5e-3 < narrow and wide < between


@pytest.mark.parametrize("kwargs,match", [
    (dict(snapshot_steps=[], profile_gammas=[6.9], target_step=5, gamma=1.0), "snapshot_steps"),
    (dict(snapshot_steps=[5, 3], profile_gammas=[6.9], target_step=5, gamma=1.0),
     "snapshot_steps"),
    (dict(snapshot_steps=[5], profile_gammas=[-1.0], target_step=5, gamma=1.0), "profile_gammas"),
    (dict(snapshot_steps=[5], profile_gammas=[6.9], target_step=0, gamma=1.0), "target_step"),
    (dict(snapshot_steps=[5], profile_gammas=[6.9], target_step=4, gamma=1.0), "target_step"),
    (dict(snapshot_steps=[5], profile_gammas=[6.9], target_step=5), "exactly one"),
    (dict(snapshot_steps=[5], profile_gammas=[6.9], target_step=5, gamma=1.0, sigma_rel=0.1),
     "exactly one"),
    (dict(snapshot_steps=[5], profile_gammas=[6.9], target_step=5, gamma=-1.5), "gamma"),
    (dict(snapshot_steps=[5], profile_gammas=[6.9], target_step=5, sigma_rel=0.5), "sigma_rel"),
    (dict(snapshot_steps=[5], profile_gammas=[6.9], target_step=5, anytime_factor=0.0),
     "anytime_factor"),
    (dict(snapshot_steps=[5], profile_gammas=[6.9], target_step=5, gamma=0.0, tail_start=5),
     "tail_start"),
    (dict(snapshot_steps=[5], profile_gammas=[6.9], target_step=5, gamma=1.0,
          profile_start_steps=[0, 1]), "profile_start_steps"),
])
def test_solve_weights_validates(kwargs, match):
  with pytest.raises(ValueError, match=match):
    posthoc.solve_weights(**kwargs)


def test_default_tracking_names_and_validation():
  tracking = posthoc.default_tracking()
  assert list(tracking) == ["pema_050", "pema_100"]
  assert math.isclose(averaging.gamma_to_sigma_rel(tracking["pema_050"].gamma), 0.05)
  with pytest.raises(ValueError, match="sigma_rels"):
    posthoc.default_tracking(())
  with pytest.raises(ValueError, match="sigma_rels"):
    posthoc.default_tracking((0.05, 0.0501))
  with pytest.raises(ValueError, match="sigma_rel"):
    posthoc.default_tracking((0.5,))


# --------------------------------------------------------------------------- snapshots


def _random_walk(num_steps, rng):
  """A params tree per step: a drifting random walk, two leaves, stacked over steps."""
  drift = rng.normal(size=(1, 8, 6)) * 0.02
  w = np.cumsum(rng.normal(size=(num_steps, 8, 6)) * 0.1 + drift, axis=0) + 1.0
  b = np.cumsum(rng.normal(size=(num_steps, 16)) * 0.1, axis=0)
  return {"w": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)}


def _train_and_snapshot(directory, iterates, tracking, direct, every, keep=0, shard=None):
  """Runs with_averages over ``iterates`` and snapshots the tracked averages every ``every``."""
  averages = {**tracking, **direct}
  tx = _with_averages(optax.sgd(1.0), averages)
  params = jax.tree.map(lambda x: jnp.zeros_like(x[0]), iterates)
  if shard is not None:
    params = jax.device_put(params, shard)
  state = tx.init(params)

  @jax.jit
  def chunk(params, state, ws):
    def step(carry, w):
      params, state = carry
      updates, state = tx.update(jax.tree.map(jnp.subtract, params, w), state, params)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, state), ws)[0]

  num_steps = jax.tree.leaves(iterates)[0].shape[0]
  with posthoc.SnapshotWriter(directory, tracking, keep=keep) as writer:
    for end in range(every, num_steps + 1, every):
      ws = jax.tree.map(lambda x: x[end - every:end], iterates)
      params, state = chunk(params, state, ws)
      writer.save(end, posthoc.tracked_averages(state, tracking))
  return state


def _bound(target_profile, fit_error, iterates):
  """Per-coordinate bound on |Σ_s (q − p*)(s) w_s|, q the reconstructed and p* the target profile.

  Both sum to one, so w_s may be shifted by any constant c: Cauchy-Schwarz gives
  <= ‖q − p*‖ ‖w − c‖ with ‖q − p*‖ = fit_error ‖p*‖; c = the last iterate. Plus f32 rounding.
  """
  t = len(target_profile)
  norm = np.linalg.norm(target_profile) * fit_error

  def leaf(x):
    x = np.asarray(x, np.float64)[:t]
    return norm * np.sqrt(((x - x[-1]) ** 2).sum(0)) + 2e-6 * (1 + np.abs(x).max())

  return jax.tree.map(leaf, iterates)


@pytest.mark.slow  # a whole training run
def test_reconstruction_matches_directly_tracked_averages(tmp_path):
  rng = np.random.default_rng(1)
  num_steps, every = 600, 20
  iterates = _random_walk(num_steps, rng)
  tracking = posthoc.default_tracking()
  direct = {"pema_070": averaging.power_ema(sigma_rel=0.07),
            "pema_150": averaging.power_ema(sigma_rel=0.15),
            "ema_25": averaging.anytime_ema(25.0),
            "tail": averaging.polyak(start_step=300)}
  state = _train_and_snapshot(str(tmp_path), iterates, tracking, direct, every)
  assert posthoc.list_snapshots(str(tmp_path)) == list(range(every, num_steps + 1, every))
  loaded = posthoc.load_snapshot(str(tmp_path), 600, "pema_050")
  jax.tree.map(np.testing.assert_array_equal, loaded,
               averaging.averaged_params(state, "pema_050"))

  targets = {"pema_070": dict(sigma_rel=0.07), "pema_150": dict(sigma_rel=0.15),
             "ema_25": dict(anytime_factor=25.0), "tail": dict(gamma=0.0, tail_start=300)}
  for name, target in targets.items():
    params, fit_error = posthoc.reconstruct(str(tmp_path), target_step=num_steps, **target)
    assert fit_error < (2e-2 if name == "tail" else 5e-3), (name, fit_error)
    tracked = averaging.averaged_params(state, name)
    bound = _bound(posthoc.profile(num_steps, **target), fit_error, iterates)
    for leaf, (got, want, tol) in {k: (params[k], tracked[k], bound[k]) for k in params}.items():
      assert got.dtype == jnp.float32
      assert np.all(np.abs(np.asarray(got) - np.asarray(want)) <= tol), (name, leaf)
    # The test can fail: the error is far below the gap to the nearest tracked average.
    error = np.abs(np.asarray(params["w"]) - np.asarray(tracked["w"])).max()
    gap = min(np.abs(np.asarray(averaging.averaged_params(state, other)["w"])
                     - np.asarray(tracked["w"])).max() for other in tracking)
    assert error < 0.02 * gap, (name, error, gap)

  # At an intermediate step only the earlier snapshots are used.
  mid, fit_error = posthoc.reconstruct(str(tmp_path), target_step=300, sigma_rel=0.10)
  assert fit_error < 1e-6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), mid,
               posthoc.load_snapshot(str(tmp_path), 300, "pema_100"))


def test_reconstruction_keeps_sharding(tmp_path):
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  shard = {"w": jax.sharding.NamedSharding(mesh, jax.P("data", None)),
           "b": jax.sharding.NamedSharding(mesh, jax.P("data"))}
  iterates = _random_walk(200, np.random.default_rng(2))
  tracking = posthoc.default_tracking()
  direct = {"pema_070": averaging.power_ema(sigma_rel=0.07)}
  state = _train_and_snapshot(str(tmp_path), iterates, tracking, direct, 20, shard=shard)
  tracked = averaging.averaged_params(state, "pema_050")["w"]
  assert tracked.sharding.is_equivalent_to(shard["w"], 2)
  like = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=s),
                      iterates, shard)
  params, fit_error = posthoc.reconstruct(str(tmp_path), sigma_rel=0.07, like=like)
  for name in params:
    assert isinstance(params[name].sharding, jax.sharding.NamedSharding)
    assert params[name].sharding.is_equivalent_to(shard[name], params[name].ndim)
    assert len(params[name].addressable_shards) == 8
  unsharded, _ = posthoc.reconstruct(str(tmp_path), sigma_rel=0.07)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
               params, unsharded)
  bound = _bound(posthoc.profile(200, sigma_rel=0.07), fit_error, iterates)
  tracked = averaging.averaged_params(state, "pema_070")
  for name in params:
    assert np.all(np.abs(np.asarray(params[name]) - np.asarray(tracked[name])) <= bound[name])


def test_snapshot_writer_keep_and_validation(tmp_path):
  tracking = posthoc.default_tracking()
  tree = {"x": jnp.arange(4.0)}
  with posthoc.SnapshotWriter(str(tmp_path / "a"), tracking, keep=2) as writer:
    for step in (10, 20, 30):
      writer.save(step, {name: tree for name in tracking})
    writer.wait()
    with pytest.raises(ValueError, match="step must be >"):
      writer.save(30, {name: tree for name in tracking})
    with pytest.raises(ValueError, match="averages must map exactly"):
      writer.save(40, {"pema_050": tree})
  assert posthoc.list_snapshots(str(tmp_path / "a")) == [20, 30]
  with posthoc.SnapshotWriter(str(tmp_path / "a"), tracking) as writer:  # resume at step 25
    assert writer.discard_after(25) == [30]
    writer.save(30, {name: jax.tree.map(lambda x: x + 1, tree) for name in tracking})
  assert posthoc.list_snapshots(str(tmp_path / "a")) == [20, 30]
  np.testing.assert_array_equal(
      posthoc.load_snapshot(str(tmp_path / "a"), 30, "pema_100")["x"], np.arange(4.0) + 1)
  assert posthoc.list_snapshots(str(tmp_path / "missing")) == []
  with pytest.raises(ValueError, match="keep"):
    posthoc.SnapshotWriter(str(tmp_path / "b"), tracking, keep=-1)
  with pytest.raises(ValueError, match="kind"):
    posthoc.SnapshotWriter(str(tmp_path / "b"), {"p": averaging.polyak()})
  with pytest.raises(ValueError, match="every"):
    posthoc.SnapshotWriter(str(tmp_path / "b"), {"p": averaging.power_ema(3.0, every=2)})
  with pytest.raises(ValueError, match="names"):
    posthoc.SnapshotWriter(str(tmp_path / "b"), {"profiles": averaging.power_ema(3.0)})
  with pytest.raises(ValueError, match="directory"):
    posthoc.reconstruct(str(tmp_path / "missing"), sigma_rel=0.1)
  with pytest.raises(ValueError, match="target_step"):
    posthoc.reconstruct(str(tmp_path / "a"), target_step=5, sigma_rel=0.1)
  with pytest.raises(ValueError, match="tail_start"):
    posthoc.reconstruct(str(tmp_path / "a"), target_step=30, gamma=0.0, tail_start=30)
  with pytest.raises(ValueError, match="exactly one"):
    posthoc.reconstruct(str(tmp_path / "a"), gamma=1.0, anytime_factor=25.0)
  with pytest.raises(ValueError, match="name"):
    posthoc.load_snapshot(str(tmp_path / "a"), 30, "nope")
  with pytest.raises(ValueError, match="step"):
    posthoc.load_snapshot(str(tmp_path / "a"), 10, "pema_050")


def test_tracked_averages_of_a_default_fold_state_need_and_use_the_params():
  """With ``fold="applied"`` (the default) the last iterate is folded in from ``params``: the
  same values as the ``fold="predicted"`` state, in the tracked averages' dtype."""
  tracking = posthoc.default_tracking()
  ws = jnp.linspace(0.0, 1.0, 7)[:, None] * jnp.arange(1.0, 4.0)
  want = _run(tracking, ws)
  tx = averaging.with_averages(optax.sgd(1.0), tracking)
  params = jnp.zeros(3)
  state = tx.init(params)
  for w in ws:
    updates, state = tx.update(params - w, state, params)
    params = optax.apply_updates(params, updates)
  with pytest.raises(ValueError, match="like=params"):
    posthoc.tracked_averages(state, tracking)
  got = posthoc.tracked_averages(state, tracking, params)
  for name in tracking:
    assert got[name].dtype == jnp.float32
    np.testing.assert_allclose(got[name], averaging.averaged_params(want, name), rtol=1e-6,
                               atol=1e-7)
