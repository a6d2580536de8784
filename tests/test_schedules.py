"""Schedules against closed forms, continuity, optax equality and argument validation."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from anytime import schedules

STEPS = np.arange(0, 400)


def values(schedule, steps=STEPS):
  return np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps)))


def test_constant_with_warmup_closed_form():
  sched = schedules.constant(2.0, warmup_steps=10, warmup_init_fraction=0.1)
  v = values(sched)
  expected = np.where(STEPS < 10, 0.2 + (2.0 - 0.2) * STEPS / 10, 2.0)
  np.testing.assert_allclose(v, expected, rtol=1e-6)


@pytest.mark.parametrize("exponent,offset", [(0.5, 1.0), (0.5, 40.0), (0.3, 7.0), (0.0, 3.0)])
def test_polynomial_decay_closed_form(exponent, offset):
  sched = schedules.polynomial_decay(1e-3, exponent=exponent, offset=offset, warmup_steps=20)
  v = values(sched)
  s = np.maximum(STEPS - 20.0, 0.0)
  expected = np.where(STEPS < 20, 1e-3 * STEPS / 20, 1e-3 * (offset / (s + offset)) ** exponent)
  np.testing.assert_allclose(v, expected, rtol=1e-5)
  assert np.all(np.diff(v[20:]) <= 1e-12)  # monotone non-increasing after warmup


def test_inverse_sqrt_is_polynomial_half():
  a = values(schedules.inverse_sqrt(1.0, offset=50.0, warmup_steps=5))
  b = values(schedules.polynomial_decay(1.0, exponent=0.5, offset=50.0, warmup_steps=5))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(a[5 + 150], math.sqrt(50 / 200), rtol=1e-6)


def test_cosine_matches_optax_warmup_cosine():
  ours = values(schedules.cosine(1.0, total_steps=300, final_fraction=0.1, warmup_steps=30))
  ref = values(optax.warmup_cosine_decay_schedule(0.0, 1.0, 30, 300, end_value=0.1))
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
  assert ours[300] == pytest.approx(0.1, rel=1e-6) and ours[399] == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize("final, warmup, init", [(0.2, 0, 0.0), (0.0, 30, 0.1)])
def test_linear_closed_form(final, warmup, init):
  """Linear warmup, then linear to ``final`` x peak at the horizon; (0, 30, 0.1) is D2Z."""
  peak, total = 3e-3, 300
  v = values(schedules.linear(peak, total_steps=total, final_fraction=final,
                              warmup_steps=warmup, warmup_init_fraction=init))
  body = 1 - (1 - final) * (STEPS - warmup) / (total - warmup)
  warm = init + (1 - init) * STEPS / max(warmup, 1)
  expected = peak * np.where(STEPS < warmup, warm, np.where(STEPS < total, body, final))
  np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-6 * peak)
  assert np.all(np.diff(v[warmup:total + 1]) < 0)
  assert abs(v[total] - final * peak) < 1e-6 * peak  # exactly final (0 for D2Z) up to float32


SHAPE_FORMS = {
    "linear": lambda p, f: f + (1 - f) * (1 - p),
    "1-sqrt": lambda p, f: f + (1 - f) * (1 - np.sqrt(p)),
    "cosine": lambda p, f: f + (1 - f) * 0.5 * (1 + np.cos(np.pi * p)),
    "square": lambda p, f: f + (1 - f) * (1 - p**2),
    "exponential": lambda p, f: f**p,
}


@pytest.mark.parametrize("shape", schedules.COOLDOWN_SHAPES)
def test_wsd_closed_form_and_continuity(shape):
  sched = schedules.wsd(3.0, total_steps=300, cooldown_fraction=0.2, shape=shape,
                        final_fraction=0.1, warmup_steps=10)
  v = values(sched)
  p = np.clip((STEPS - 240) / 60, 0, 1)
  expected = np.where(STEPS < 10, 3.0 * STEPS / 10,
                      np.where(STEPS < 240, 3.0, 3.0 * SHAPE_FORMS[shape](p, 0.1)))
  np.testing.assert_allclose(v, expected, rtol=1e-5, atol=1e-6)
  # Continuous at the phase boundaries, monotone in the cooldown, ends at the final fraction.
  assert abs(v[240] - v[239]) < 1e-5
  assert np.all(np.diff(v[240:301]) <= 1e-6)
  assert v[300] == pytest.approx(0.3, rel=1e-5)


@pytest.mark.parametrize("branch_step", [0, 57, 200])
def test_decay_branch_continues_main_schedule(branch_step):
  main = schedules.inverse_sqrt(1.0, offset=40.0, warmup_steps=10)
  branch = schedules.decay_branch(main, branch_step, 100, "1-sqrt", final_fraction=0.1)
  v, m = values(branch), values(main)
  np.testing.assert_array_equal(v[:branch_step], m[:branch_step])
  assert v[branch_step] == pytest.approx(m[branch_step], rel=1e-6)
  end = branch_step + 100
  if end < len(STEPS):
    assert v[end] == pytest.approx(0.1 * m[branch_step], rel=1e-5)
    assert np.all(np.diff(v[branch_step:end + 1]) <= 1e-7)


def test_wsd_s_decays_and_restarts_at_peak():
  sched = schedules.wsd_s(1.0, decay_ends=[100, 250], cooldown_steps=40, final_fraction=0.0)
  v = values(sched)
  assert np.all(v[:60] == 1.0)
  np.testing.assert_allclose(v[60:100], 1 - (np.arange(60, 100) - 60) / 40, rtol=1e-5)
  assert np.all(v[100:210] == 1.0) and v[249] < 0.05 and np.all(v[250:] == 1.0)
  rewarm = values(schedules.wsd_s(1.0, decay_ends=[100], cooldown_steps=40, rewarmup_steps=20))
  np.testing.assert_allclose(rewarm[100:121], np.arange(21) / 20, rtol=1e-5, atol=1e-7)


def test_cyclic_cosine_restarts():
  v = values(schedules.cyclic_cosine(1.0, cycle_steps=100, final_fraction=0.0))
  np.testing.assert_allclose(v[:100], v[100:200], rtol=1e-6)
  assert v[0] == 1.0 and v[50] == pytest.approx(0.5, abs=1e-6)


def test_anytime_exponent():
  assert schedules.anytime_exponent(1.5, 1.5) == 0.0
  assert schedules.anytime_exponent(1.5, 1.2) == 0.0
  assert schedules.anytime_exponent(1.5, 3.0) == pytest.approx(0.5)
  assert schedules.anytime_exponent(1.1, 2.2) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="capacity"):
    schedules.anytime_exponent(1.0, 2.0)


def test_python_int_and_array_steps_agree():
  sched = schedules.wsd(1.0, total_steps=100, cooldown_steps=20, shape="cosine")
  assert float(sched(90)) == pytest.approx(float(sched(jnp.asarray(90))))
  assert float(sched(np.int64(90))) == pytest.approx(float(sched(jnp.asarray(90.0))))


def test_from_config_builds_each_and_rejects_unknown():
  cfg = ml_collections.ConfigDict(dict(name="wsd", peak_value=1.0, total_steps=100,
                                       cooldown_fraction=0.2, shape="1-sqrt"))
  np.testing.assert_array_equal(
      values(schedules.from_config(cfg)),
      values(schedules.wsd(1.0, total_steps=100, cooldown_fraction=0.2, shape="1-sqrt")))
  branch = schedules.from_config(dict(name="constant", peak_value=1.0,
                                      decay={"branch_step": 50, "cooldown_steps": 10}))
  assert float(branch(60)) == pytest.approx(0.0, abs=1e-7)
  with pytest.raises(ValueError, match="schedule.name"):
    schedules.from_config(dict(name="constant_linear_decay_10p", peak_value=1.0))
  with pytest.raises(ValueError, match="schedule.warmup"):
    schedules.from_config(dict(name="constant", peak_value=1.0, warmup=3))
  with pytest.raises(ValueError, match="schedule.total_steps is required"):
    schedules.from_config(dict(name="cosine", peak_value=1.0))


@pytest.mark.parametrize("make,match", [
    (lambda: schedules.constant(1.0, warmup_steps=-1), "warmup_steps"),
    (lambda: schedules.constant(-1.0), "peak_value"),
    (lambda: schedules.cosine(1.0, total_steps=100, final_fraction=1.5), "final_fraction"),
    (lambda: schedules.constant(1.0, warmup_steps=5, warmup_init_fraction=2.0),
     "warmup_init_fraction"),
    (lambda: schedules.wsd(1.0, total_steps=100, cooldown_steps=200), "must not exceed"),
    (lambda: schedules.wsd(1.0, total_steps=100, cooldown_fraction=1.2), "cooldown_fraction"),
    (lambda: schedules.wsd(1.0, total_steps=100, cooldown_steps=10, shape="zigzag"), "shape"),
    (lambda: schedules.wsd(1.0, total_steps=100), "exactly one"),
    (lambda: schedules.decay_branch(schedules.constant(1.0), 10, 5, "exponential", 0.0),
     "exponential"),
    (lambda: schedules.polynomial_decay(1.0, exponent=1.0), "exponent"),
    (lambda: schedules.cosine(1.0, total_steps=10, warmup_steps=10), "warmup_steps"),
    (lambda: schedules.wsd_s(1.0, decay_ends=[50, 40], cooldown_steps=5), "decay_ends"),
    (lambda: schedules.wsd_s(1.0, decay_ends=[50, 60], cooldown_steps=20), "decay_ends"),
    (lambda: schedules.constant(1.0)(-3), "step"),
])
def test_bad_arguments_raise_clear_errors(make, match):
  with pytest.raises(ValueError, match=match):
    make()


# ------------------------------------------------------------------ plain callables (issue 23)

_EVERY_SCHEDULE = """
from anytime import schedules as S
EVERY = [S.constant(1e-3), S.constant(1e-3, warmup_steps=3, warmup_init_fraction=0.1),
         S.inverse_sqrt(1.0, offset=4, warmup_steps=2), S.polynomial_decay(1.0, exponent=0.3),
         S.cosine(1.0, total_steps=10, warmup_steps=2), S.linear(1.0, total_steps=10),
         S.wsd(1.0, total_steps=10, cooldown_fraction=0.2, shape="1-sqrt"),
         S.wsd_s(1.0, decay_ends=[5, 10], cooldown_steps=2, rewarmup_steps=1),
         S.cyclic_cosine(1.0, cycle_steps=4),
         S.decay_branch(S.inverse_sqrt(1.0), 5, 3, "exponential", 0.1),
         S.from_config({"name": "cosine", "peak_value": 1.0, "total_steps": 20,
                        "decay": {"branch_step": 10, "cooldown_steps": 5}})]
"""


def test_jit_twice_on_every_schedule_in_a_subprocess():
  """``jax.jit(schedule)`` twice used to end the interpreter (SIGSEGV): run it in a child."""
  import subprocess
  import sys
  code = _EVERY_SCHEDULE + """
import jax
for s in EVERY:
  for _ in range(3):
    assert abs(float(jax.jit(s)(7)) - float(s(7))) <= 1e-6 * abs(float(s(7))), s
print("ok", len(EVERY))
"""
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["ok", "11"]


def test_every_schedule_pickles_with_the_standard_pickle():
  import pickle
  scope = {}
  exec(_EVERY_SCHEDULE, scope)  # pylint: disable=exec-used
  steps = jnp.arange(0, 25)
  for schedule in scope["EVERY"]:
    back = pickle.loads(pickle.dumps(schedule))
    assert repr(back) == repr(schedule)
    np.testing.assert_array_equal(values(back, steps), values(schedule, steps))


def test_negative_steps_raise_when_concrete_and_clamp_when_traced():
  sched = schedules.cyclic_cosine(1.0, cycle_steps=4, warmup_steps=2)
  for step in (-1, np.int32(-1), jnp.array([-1, 2]), np.array([3.0, -0.5])):
    with pytest.raises(ValueError, match="step must be >= 0"):
      sched(step)
  assert float(jax.jit(sched)(-3)) == float(sched(0))  # traced: clamped to 0, no wrap-around
  np.testing.assert_array_equal(values(sched, np.array([-5, 0])), values(sched, np.array([0, 0])))


def test_wsd_zero_cooldown_fraction_is_refused():
  with pytest.raises(ValueError, match=r"^cooldown_fraction must be in \(0, 1\], got 0.0"):
    schedules.wsd(1.0, total_steps=100, cooldown_fraction=0.0)
