"""A checkpoint saved with averages {A} restored into {A, B} and into {B} (Orbax, CheckpointStore)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from anytime import averaging, checkpoint


class State(NamedTuple):
  params: Any
  opt_state: Any


def _train(tx, state, steps, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(steps):
    grads = {"w": jnp.asarray(rng.normal(size=3), jnp.float32)}
    updates, opt = tx.update(grads, state.opt_state, state.params)
    state = State(optax.apply_updates(state.params, updates), opt)
  return state


def test_restore_into_a_changed_set_of_averages(tmp_path, capsys):
  a = {"A": averaging.polyak()}
  params = {"w": jnp.arange(3.0)}
  tx_a = averaging.with_averages(optax.sgd(0.1), a)
  state = _train(tx_a, State(params, tx_a.init(params)), 5)
  store = checkpoint.CheckpointStore(tmp_path / "ckpt", async_save=False)
  store.save(5, state)
  store.wait()
  for names in (("A", "B"), ("B",)):
    specs = {"A": averaging.polyak(), "B": averaging.anytime_ema(2.0)}
    tx = averaging.with_averages(optax.sgd(0.1), {n: specs[n] for n in names})
    abstract = jax.eval_shape(lambda: State(params, tx.init(params)))
    restored = store.restore(5, abstract)
    line = capsys.readouterr().out
    assert "averages added B" in line and ("dropped A" in line) == (names == ("B",))
    np.testing.assert_array_equal(restored.params["w"], state.params["w"])
    held = restored.opt_state.averages.averages
    assert int(held["B"].start) == 5 and int(held["B"].count) == 0
    b = averaging.averaged_params(restored.opt_state, "B", like=restored.params)
    np.testing.assert_array_equal(b["w"], state.params["w"])  # starts from the restored params
    if "A" in names:
      np.testing.assert_array_equal(
          averaging.averaged_params(restored.opt_state, "A", like=restored.params)["w"],
          averaging.averaged_params(state.opt_state, "A", like=state.params)["w"])
    # Training goes on; B averages only the iterates after step 5 (first fold copies w_6).
    cont = _train(tx, restored, 1, seed=1)
    np.testing.assert_allclose(
        averaging.averaged_params(cont.opt_state, "B", like=cont.params)["w"], cont.params["w"])
  store.close()
