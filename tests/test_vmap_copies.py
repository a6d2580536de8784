"""vmap over parameter copies on CPU: an XLA miscompilation and the lab's workaround.

XLA's CPU backend in jaxlib 0.10.2 miscompiles some YNNPACK fusions ("__ynn_fusion"): for
``1 + sum(p[None] * x, -1)`` with x f32[9, 4032, 64] and p f32[4032, 64] the output rows
i >= 8 equal rows i - 8. vmapping a loss over >= 9 parameter copies that meet a shared
(unbatched) constant this way builds that fusion, which is why the river-valley lab's losses
along a line of 9+ transformer copies came out wrong. It is neither NNX (pure-dict params fail
the same way) nor vmap itself (a plain jit of the broadcast program fails). Compiling with
``xla_cpu_experimental_ynn_fusion_type=""`` (``river_valley.jit_over_copies``) is right.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from anytime.theory import river_valley as rv

_SAFE = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _broadcast_reduce(x_NxRxC, p_RxC):
  return 1.0 + jnp.sum(p_RxC[None] * x_NxRxC, axis=-1)


def _inputs(n):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, 4032, 64)).astype(np.float32)
  p = rng.standard_normal((4032, 64)).astype(np.float32)
  return x, p, 1.0 + (p[None].astype(np.float64) * x).sum(-1)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA CPU backend issue")
def test_minimal_program_with_ynn_fusions_off_is_right():
  x, p, want = _inputs(9)
  got = np.asarray(jax.jit(_broadcast_reduce, compiler_options=_SAFE)(x, p))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA CPU backend issue")
def test_minimal_program_default_compile_status():
  """Records whether this jaxlib still has the bug; when it is fixed, drop the workaround.

  Fails only if the default compile is wrong in some other way than the known one (rows i >= 8
  repeating rows i - 8), or if it is wrong without a YNNPACK fusion in the compiled program.
  """
  x, p, want = _inputs(9)
  compiled = jax.jit(_broadcast_reduce).lower(x, p).compile()
  got = np.asarray(compiled(x, p))
  if np.allclose(got, want, rtol=1e-4, atol=1e-3):
    return  # fixed in this jaxlib (or no YNNPACK on this CPU).
  assert "__ynn_fusion" in compiled.as_text()
  np.testing.assert_array_equal(got[8], got[0])
  np.testing.assert_allclose(got[:8], want[:8], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("num_copies", [2, 9, 16])
def test_lab_line_metrics_over_copies_match_one_at_a_time(num_copies):
  """The lab's batched metrics on a line of transformer copies equal the unbatched metrics."""
  chain = rv.make_chain(64, seed=0)
  model = rv.transformer_model(chain, dict(d_model=32, num_layers=1, num_heads=2, mlp_dim=64),
                               seq_len=64, eval_batch_size=64)
  flat, unravel = ravel_pytree(model.init_params)
  other = flat + 0.05 * jax.random.normal(jax.random.key(3), flat.shape)
  alphas = np.linspace(-0.5, 1.5, num_copies)
  metrics_along = rv.jit_over_copies(lambda f: model.metrics(unravel(f)))
  batched = rv.diagnostics.line_metrics(metrics_along, flat, other, alphas)
  one = jax.jit(lambda f: model.metrics(unravel(f)))
  for i, a in enumerate(alphas):
    single = one(flat + jnp.float32(a) * (other - flat))
    for name in rv.METRIC_NAMES:
      assert abs(float(batched[name][i]) - float(single[name])) < 1e-5, (name, i)
