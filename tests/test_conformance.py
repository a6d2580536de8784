"""Every average kind through the same checks, in the spirit of optax's contrib/_common_test.py.

Each kind x {chain with clip, inject_hyperparams inside/outside, MultiSteps, bf16, donation,
eval_shape, 2- and 8-device sharding with plain NamedSharding, linen nn.Partitioned and NNX
metadata}.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from anytime import averaging

# These tests check the averages' arithmetic with with_averages last (fold="predicted": no
# lag, readers need no params); tests/test_library_*.py check the default fold="applied".
_with_averages = functools.partial(averaging.with_averages, fold="predicted")

KINDS = {
    "ema": averaging.ema(0.9),
    "anytime_ema": averaging.anytime_ema(25.0),
    "power_ema": averaging.power_ema(sigma_rel=0.1),
    "polyak": averaging.polyak(start_step=1),
    "tail": averaging.tail(0.3),
    "window": averaging.window(2, 3),
}
assert set(KINDS) == set(averaging.KINDS)  # a new kind must be added here


def loss(params):
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32) - 0.5)) for x in jax.tree.leaves(params))


def run(tx, params, steps=5, donate=False):
  @functools.partial(jax.jit, donate_argnums=(0, 1) if donate else ())
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


def small_params(dtype=jnp.float32):
  return {"w": jnp.linspace(-1.0, 1.0, 32, dtype=dtype).reshape(4, 8), "b": jnp.zeros(8, dtype)}


def close(a, b, tol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=tol, atol=tol), a, b)


NESTINGS = {
    "chain_clip": lambda avg: optax.chain(optax.clip_by_global_norm(1.0),
                                          _with_averages(optax.adam(0.1), avg)),
    "inject_inside": lambda avg: _with_averages(
        optax.inject_hyperparams(optax.adam)(learning_rate=0.1), avg),
    "inject_outside": lambda avg: optax.inject_hyperparams(
        lambda learning_rate: _with_averages(optax.adam(learning_rate), avg))(
            learning_rate=0.1),
}


@pytest.mark.parametrize("nesting", list(NESTINGS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_nestings_match_the_plain_wrapper(kind, nesting):
  avg = {kind: KINDS[kind]}
  plain_tx = _with_averages(optax.adam(0.1), avg)
  if nesting == "chain_clip":
    plain_tx = optax.chain(optax.clip_by_global_norm(1.0), plain_tx)
  _, want = run(plain_tx, small_params())
  _, got = run(NESTINGS[nesting](avg), small_params())
  close(averaging.averaged_params(got, kind), averaging.averaged_params(want, kind))


@pytest.mark.parametrize("kind", list(KINDS))
def test_multisteps_averages_real_updates_only(kind):
  avg = {kind: KINDS[kind]}
  _, single = run(_with_averages(optax.sgd(0.1), avg), small_params(), steps=4)
  _, multi = run(optax.MultiSteps(_with_averages(optax.sgd(0.1), avg), 3),
                 small_params(), steps=12)
  close(averaging.averaged_params(multi, kind), averaging.averaged_params(single, kind))


@pytest.mark.parametrize("kind", list(KINDS))
def test_bf16_donation_and_eval_shape(kind):
  avg = {kind: KINDS[kind]}
  tx = _with_averages(optax.adam(0.1), avg)
  params = small_params(jnp.bfloat16)
  state0 = tx.init(params)
  p1, s1 = run(tx, params)
  p2, s2 = run(tx, jax.tree.map(jnp.copy, params), donate=True)
  jax.tree.map(np.testing.assert_array_equal, (p1, s1), (p2, s2))
  assert [x.dtype for x in jax.tree.leaves(state0)] == [x.dtype for x in jax.tree.leaves(s1)]
  abstract = jax.eval_shape(tx.init, params)
  assert jax.tree.structure(abstract) == jax.tree.structure(s1)
  for params_like in (p1, jax.eval_shape(lambda: p1)):
    got = averaging.averaged_params(abstract, kind, like=params_like)
    assert [(x.shape, x.dtype) for x in jax.tree.leaves(got)] == [
        (x.shape, x.dtype) for x in jax.tree.leaves(p1)]
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(
      averaging.eval_params(s1, p1)[kind]))


def mesh_of(num_devices):
  return jax.make_mesh((num_devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:num_devices])


def assert_sharded_like(tree, shardings):
  for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)


@pytest.mark.parametrize("num_devices", [2, 8])
@pytest.mark.parametrize("kind", list(KINDS))
def test_plain_named_sharding(kind, num_devices):
  mesh = mesh_of(num_devices)
  shardings = {"w": NamedSharding(mesh, P(None, "data")), "b": NamedSharding(mesh, P("data"))}
  params = jax.device_put(small_params(), shardings)
  tx = _with_averages(optax.adam(0.1), {kind: KINDS[kind]})
  abstract = jax.eval_shape(tx.init, params)
  # The one helper: optax.tree_map_params gives every average its param's sharding.
  state_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract, shardings,
      transform_non_params=lambda _: NamedSharding(mesh, P()),
      is_leaf=lambda x: isinstance(x, NamedSharding))
  state = jax.jit(tx.init, out_shardings=state_shardings)(params)
  params, state = run(tx, params)
  avg = averaging.averaged_params(state, kind)
  assert_sharded_like(avg, shardings)
  abstract_avg = averaging.averaged_params(jax.eval_shape(lambda: state), kind)
  assert jax.tree.structure(abstract_avg) == jax.tree.structure(params)


class LinenMlp(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Dense(8, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(),
                                                     (None, "data")))(x)
    return nn.Dense(5, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(),
                                                        ("data", None)))(x)


@pytest.mark.parametrize("num_devices", [2, 8])
@pytest.mark.parametrize("kind", list(KINDS))
def test_linen_partitioned_metadata(kind, num_devices):
  """The issue's failure: the window's buffer kept P('data', None, None) on a 3-D array."""
  mesh = mesh_of(num_devices)
  model = LinenMlp()
  tx = _with_averages(optax.adam(0.1), {kind: KINDS[kind]})

  def init():
    params = model.init(jax.random.key(0), jnp.ones((2, 8)))["params"]
    return params, tx.init(params)

  abstract = jax.eval_shape(init)
  specs = nn.get_partition_spec(abstract)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  with jax.set_mesh(mesh):
    params, state = jax.jit(init, out_shardings=shardings)()
  params, state = nn.unbox(params), nn.unbox(state)
  params, state = run(tx, params, steps=3)
  avg = averaging.averaged_params(state, kind)
  assert_sharded_like(avg, shardings[0])


class NnxMlp(nnx.Module):
  def __init__(self, rngs):
    init = nnx.initializers.lecun_normal()
    self.up = nnx.Linear(8, 8, kernel_init=nnx.with_partitioning(init, (None, "data")),
                         rngs=rngs)
    self.down = nnx.Linear(8, 5, kernel_init=nnx.with_partitioning(init, ("data", None)),
                           rngs=rngs)

  def __call__(self, x):
    return self.down(self.up(x))


@pytest.mark.parametrize("num_devices", [2, 8])
@pytest.mark.parametrize("kind", list(KINDS))
def test_nnx_metadata_and_nnx_optimizer(kind, num_devices):
  mesh = mesh_of(num_devices)
  tx = _with_averages(optax.adam(0.1), {kind: KINDS[kind]})

  @nnx.jit
  def create():
    model = NnxMlp(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    state = nnx.state(optimizer)
    nnx.update(optimizer, jax.lax.with_sharding_constraint(state, nnx.get_partition_spec(state)))
    return model, optimizer

  with jax.set_mesh(mesh):
    model, optimizer = create()

    @nnx.jit
    def step(model, optimizer, x):
      grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
      optimizer.update(model, grads)

    for _ in range(3):
      step(model, optimizer, jnp.ones((4, 8)))
  params = nnx.state(model, nnx.Param)
  # nnx.Optimizer keeps the optax state's NamedTuples, with Variables as leaves.
  avg = averaging.averaged_params(optimizer.opt_state, kind)
  want = [p.sharding for p in jax.tree.leaves(params)]
  got = jax.tree.leaves(avg)
  assert len(got) == len(want)
  for x, s in zip(got, want):
    assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)
