"""Activation rules: scoped to their ``with`` block and to the thread that entered it."""

import threading

import jax.numpy as jnp

from anytime import parallel


def test_activation_rules_are_scoped_to_their_context_and_thread():
  mesh = parallel.make_mesh(dict(data=-1, fsdp=1, tensor=1))
  x = jnp.ones((8, 4))
  assert parallel.constrain(x, ("batch", None)) is x  # no rules: a no-op
  seen_by_other_thread = []
  with parallel.activation_rules(mesh, parallel.DEFAULT_RULES):
    sharded = parallel.constrain(x, ("batch", None))
    assert sharded is not x and sharded.sharding.spec[0] == ("data", "fsdp")
    with parallel.activation_rules(mesh, (("batch", None),)):
      assert parallel.constrain(x, ("batch", None)).sharding.spec[0] is None
    assert parallel.constrain(x, ("batch", None)).sharding.spec[0] == ("data", "fsdp")
    other = threading.Thread(
        target=lambda: seen_by_other_thread.append(parallel.constrain(x, ("batch", None)) is x))
    other.start()
    other.join()
  assert seen_by_other_thread == [True]  # another thread does not inherit this block's rules
  assert parallel.constrain(x, ("batch", None)) is x
