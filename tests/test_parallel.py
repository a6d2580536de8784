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


def test_scan_steps_equals_single_steps():
  """k steps in one program (parallel.jit_steps_over_copies) = k dispatches of the step, for a
  vmapped group of the trainer's real step: states and per-step metrics."""
  import tempfile

  import jax
  import numpy as np

  from anytime import loop
  from tests._tiny import tiny_config

  config = tiny_config()
  with tempfile.TemporaryDirectory() as tmp:
    run = loop.build_run(config, tmp, constrain_activations=False)
    iterator = run.make_train_iterator()
    k, runs = 3, 2
    batches = [next(iterator) for _ in range(k)]
    batches = {key: np.stack([np.stack([b[key]] * runs) for b in batches]) for key in batches[0]}
    lrs = np.array([[1e-3, 3e-3], [2e-3, 4e-3], [1.5e-3, 0.5e-3]], np.float32)
    init = parallel.jit_over_copies(run.init_fn)
    one = parallel.jit_over_copies(run.step_fn)
    state = init(np.arange(runs, dtype=np.uint32))
    single_metrics = []
    for i in range(k):
      state, metrics = one(state, jax.tree.map(lambda x: x[i], batches), lrs[i])
      single_metrics.append(metrics)
    scanned_state, scanned_metrics = parallel.jit_steps_over_copies(run.step_fn)(
        init(np.arange(runs, dtype=np.uint32)), batches, lrs)
  # Bitwise on this CPU (the scan's body compiles to the same kernels); a backend that fused
  # across steps would be allowed float32 rounding, so loosen this there, not in the loop.
  jax.tree.map(np.testing.assert_array_equal, scanned_state, state)
  for i, metrics in enumerate(single_metrics):
    for key in ("loss", "grad_norm", "lr", "finite"):
      np.testing.assert_array_equal(scanned_metrics[key][i], metrics[key])
