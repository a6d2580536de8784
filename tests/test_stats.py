"""Seed statistics: standard errors against numpy, paired/unpaired deltas, tie detection."""

import math

import numpy as np
import pytest

from anytime.experiments import stats


def test_standard_error_matches_numpy_ddof1():
  values = [1.6930, 1.6934, 1.6625, 1.7001]
  expected = np.std(values, ddof=1) / np.sqrt(len(values))
  assert stats.standard_error(values) == pytest.approx(expected, rel=1e-12)
  summary = stats.summarize(values)
  assert summary.mean == pytest.approx(np.mean(values))
  assert summary.se == pytest.approx(expected)
  assert summary.num_seeds == 4


def test_single_value_has_no_standard_error():
  assert math.isnan(stats.standard_error([1.0]))
  with pytest.raises(ValueError, match="values"):
    stats.summarize([])


def test_paired_delta_uses_per_seed_differences():
  # The numbers: constant + EMA-25 minus the cosine envelope at 8x, seeds 0, 1, 2.
  method = {0: 1.6427, 1: 1.6344, 2: 1.5994}
  reference = {0: 1.6404, 1: 1.6488, 2: 1.6574}
  d = stats.delta(method, reference)
  diffs = np.array([1.6427 - 1.6404, 1.6344 - 1.6488, 1.5994 - 1.6574])
  assert d.paired and d.num_seeds == 3
  assert d.mean == pytest.approx(diffs.mean())
  assert d.se == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(3))
  assert d.mean == pytest.approx(-0.023, abs=5e-4) and d.se == pytest.approx(0.018, abs=5e-4)
  assert stats.verdict(d.mean, d.se) == "tie"


def test_unpaired_delta_uses_welch_standard_error():
  method = {0: 1.0, 1: 1.2, 2: 1.1}
  reference = {5: 2.0, 6: 2.4}
  d = stats.delta(method, reference)
  assert not d.paired
  expected = math.sqrt(np.var([1.0, 1.2, 1.1], ddof=1) / 3 + np.var([2.0, 2.4], ddof=1) / 2)
  assert d.se == pytest.approx(expected)
  assert d.mean == pytest.approx(1.1 - 2.2)


def test_verdict_ties_within_two_standard_errors():
  assert stats.verdict(-0.038, 0.005) == "win"
  assert stats.verdict(0.038, 0.005) == "loss"
  assert stats.verdict(-0.0099, 0.005) == "tie"
  assert stats.verdict(-0.010, 0.005) == "win"  # exactly 2 s.e. is outside the tie band


def test_one_seed_is_never_a_win():
  d = stats.delta({0: 1.0}, {0: 2.0})
  assert math.isnan(d.se)
  assert stats.verdict(d.mean, d.se) == "tie"


def test_sampling_errors():
  tokens = stats.token_sampling_error(2.0, 8192)
  assert tokens.value == pytest.approx(2.0 / math.sqrt(8192)) and tokens.kind == "tokens"
  assert "lower bound" in tokens.note
  windows = [1.6, 1.7, 1.65, 1.62]
  w = stats.window_sampling_error(windows)
  assert w.value == pytest.approx(np.std(windows, ddof=1) / 2) and w.kind == "windows"
  with pytest.raises(ValueError, match="eval_tokens"):
    stats.token_sampling_error(2.0, 0)


def test_paired_sampling_error_is_the_error_of_the_differences():
  rng = np.random.default_rng(0)
  shared = rng.normal(1.7, 0.3, size=512)  # how hard each window is: common to both models
  a, b = shared + rng.normal(0, 0.01, 512), shared - 0.02 + rng.normal(0, 0.01, 512)
  paired = stats.paired_window_sampling_error(a, b)
  assert paired.kind == "paired windows"
  assert paired.value == pytest.approx(np.std(a - b, ddof=1) / math.sqrt(512))
  # Same windows: the hard-window variance cancels, so a delta is known far better than a loss.
  assert paired.value < stats.window_sampling_error(a).value / 10
  with pytest.raises(ValueError, match="same windows"):
    stats.paired_window_sampling_error(a, b[:-1])
  with pytest.raises(ValueError, match="at least 2"):
    stats.paired_window_sampling_error([1.0], [1.1])
