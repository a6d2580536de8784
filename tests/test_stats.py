"""Statistics: paired deltas, clustered eval error, Satterthwaite df, t intervals, TOST, Holm."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from anytime.experiments import stats


def test_standard_error_matches_numpy_ddof1():
  values = [1.6930, 1.6934, 1.6625, 1.7001]
  expected = np.std(values, ddof=1) / np.sqrt(len(values))
  assert stats.standard_error(values) == pytest.approx(expected, rel=1e-12)
  summary = stats.summarize(values)
  assert summary.mean == pytest.approx(np.mean(values))
  assert summary.se == pytest.approx(expected)
  assert summary.num_seeds == 4
  assert math.isnan(stats.standard_error([1.0]))
  with pytest.raises(ValueError, match="values"):
    stats.summarize([])


def test_paired_delta_uses_common_seeds():
  method = {1: 1.6427, 2: 1.6344, 3: 1.5994, 9: 1.0}
  reference = {1: 1.6404, 2: 1.6488, 3: 1.6574}
  d = stats.delta(method, reference)
  diffs = np.array([1.6427 - 1.6404, 1.6344 - 1.6488, 1.5994 - 1.6574])
  assert d.seeds == (1, 2, 3) and d.num_seeds == 3
  assert d.mean == pytest.approx(diffs.mean())
  assert d.se == pytest.approx(np.std(diffs, ddof=1) / np.sqrt(3))
  with pytest.raises(ValueError, match="missing"):
    stats.delta(method, reference, seeds=(1, 9))
  with pytest.raises(ValueError, match="no common seed"):
    stats.delta({0: 1.0}, {1: 1.0})


def test_cluster_se_by_hand():
  # 5 windows, 2 documents: {0, 1, 2} and {3, 4}.
  diff_sums = np.array([1.0, -2.0, 3.0, 0.5, 1.5])
  tokens = np.array([10.0, 10.0, 20.0, 5.0, 5.0])
  docs = np.array([7, 7, 7, 3, 3])
  d, se, groups = stats.cluster_se(diff_sums, tokens, docs)
  total = 50.0
  d_hand = 4.0 / total  # = 0.08
  e_a = (1.0 - 0.8) + (-2.0 - 0.8) + (3.0 - 1.6)  # residuals D - d T, summed in document 7
  e_b = (0.5 - 0.4) + (1.5 - 0.4)
  se_hand = math.sqrt(2 / 1 * (e_a ** 2 + e_b ** 2) / total ** 2)
  assert groups == 2 and d == pytest.approx(d_hand) and se == pytest.approx(se_hand)
  assert e_a + e_b == pytest.approx(0.0)  # residuals of a ratio estimator sum to zero


def test_cluster_se_with_singleton_clusters_is_the_plain_standard_error():
  rng = np.random.default_rng(0)
  per_token = rng.normal(0.01, 0.05, size=200)
  _, se, _ = stats.cluster_se(per_token * 64, np.full(200, 64.0), np.arange(200))
  assert se == pytest.approx(np.std(per_token, ddof=1) / math.sqrt(200), rel=1e-12)


def test_clustering_widens_the_error_of_correlated_windows():
  rng = np.random.default_rng(1)
  docs = np.repeat(np.arange(20), 16)  # 16 windows per document, a shared document effect
  x = rng.normal(0, 0.02, 20)[docs] + rng.normal(0, 0.005, docs.size)
  tokens = np.full(docs.size, 100.0)
  _, naive, _ = stats.cluster_se(x * 100, tokens, np.arange(docs.size))
  _, clustered, groups = stats.cluster_se(x * 100, tokens, docs)
  assert groups == 20 and clustered > 2.5 * naive
  with pytest.raises(ValueError, match="at least 2 documents"):
    stats.cluster_se(x * 100, tokens, np.zeros(docs.size))


def test_clustered_delta_error_averages_seeds_before_differencing():
  rng = np.random.default_rng(2)
  tokens, docs = np.full(40, 50.0), np.repeat(np.arange(8), 5)
  a = rng.normal(100, 5, (3, 40))
  b = rng.normal(100, 5, (3, 40))
  error = stats.clustered_delta_error(list(a), list(b), tokens, docs)
  d, se, _ = stats.cluster_se(a.mean(0) - b.mean(0), tokens, docs)
  assert (error.delta, error.se, error.clusters, error.windows) == pytest.approx((d, se, 8, 40))
  with pytest.raises(ValueError, match="same windows"):
    stats.clustered_delta_error(list(a), list(b[:2]), tokens, docs)


def test_satterthwaite_matches_welch_two_sample_df():
  rng = np.random.default_rng(3)
  x, y = rng.normal(0, 1, 5), rng.normal(0, 3, 9)
  welch = scipy_stats.ttest_ind(x, y, equal_var=False)
  v = [np.var(x, ddof=1) / 5, np.var(y, ddof=1) / 9]
  assert stats.satterthwaite_df(v, [4, 8]) == pytest.approx(welch.df, rel=1e-12)
  # Closed forms: equal components double the df; an unknown (infinite-df) or zero component
  # leaves the other's df.
  assert stats.satterthwaite_df([1.0, 1.0], [2, 2]) == pytest.approx(4.0)
  assert stats.satterthwaite_df([1.0, 3.0], [2, np.inf]) == pytest.approx(16.0 / (1.0 / 2))
  assert stats.satterthwaite_df([2.0, 0.0], [2, 30]) == pytest.approx(2.0)
  assert stats.satterthwaite_df([0.0, 0.0], [2, 30]) == np.inf


def test_seed_only_interval_is_the_paired_t_test():
  diffs = np.array([-0.012, -0.004, -0.009])
  d = stats.delta({s: x for s, x in enumerate(diffs)}, {s: 0.0 for s in range(3)})
  iv = stats.interval(d.mean, d.se, d.num_seeds, alpha=0.05, margin=0.01)
  test = scipy_stats.ttest_1samp(diffs, 0.0)
  ci = test.confidence_interval(0.95)
  assert iv.df == pytest.approx(2.0) and math.isnan(iv.se_eval)
  assert iv.p_value == pytest.approx(test.pvalue, rel=1e-10)
  assert (iv.low, iv.high) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_tost_matches_two_one_sided_scipy_tests():
  diffs = np.array([0.001, -0.002, 0.0035, 0.0005, -0.001])
  d = stats.delta({s: x for s, x in enumerate(diffs)}, {s: 0.0 for s in range(5)})
  iv = stats.interval(d.mean, d.se, d.num_seeds, alpha=0.05, margin=0.01)
  lower = scipy_stats.ttest_1samp(diffs, -0.01, alternative="greater").pvalue
  upper = scipy_stats.ttest_1samp(diffs, 0.01, alternative="less").pvalue
  assert iv.p_equivalence == pytest.approx(max(lower, upper), rel=1e-10)
  # TOST at alpha <=> the (1 - 2 alpha) interval inside ±margin.
  wide = stats.interval(d.mean, d.se, d.num_seeds, alpha=0.10, margin=0.01)
  assert (iv.p_equivalence <= 0.05) == (-0.01 < wide.low and wide.high < 0.01)
  assert stats.decide(d.mean, 1.0, iv.p_equivalence, 0.05) == "equivalent"


def test_eval_error_widens_the_interval_and_moves_the_df():
  iv = stats.interval(-0.01, 0.003, 3, 0.004, 40, alpha=0.05, margin=0.01)
  assert iv.se == pytest.approx(0.005)
  expected_df = 0.005 ** 4 / (0.003 ** 4 / 2 + 0.004 ** 4 / 39)
  assert iv.df == pytest.approx(expected_df)
  q = scipy_stats.t.ppf(0.975, expected_df)
  assert (iv.low, iv.high) == pytest.approx((-0.01 - q * 0.005, -0.01 + q * 0.005))
  one_seed = stats.interval(-0.01, math.nan, 1, 0.004, 40, alpha=0.05, margin=0.01)
  assert math.isnan(one_seed.df) and math.isnan(one_seed.p_value)
  assert stats.decide(-0.01, one_seed.p_value, one_seed.p_equivalence, 0.05) == "undecided"


def test_holm_by_hand():
  p = [0.01, 0.04, 0.03, 0.005]
  # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max.
  expected = [0.03, 0.06, 0.06, 0.02]
  assert stats.holm(p) == pytest.approx(expected)
  assert stats.holm([0.5, math.nan, 0.01]) == pytest.approx([0.5, math.nan, 0.02],
                                                             nan_ok=True)
  assert stats.holm([[0.01, 0.04], [0.2, 0.9]]) == pytest.approx(np.array([[0.02, 0.04], [0.4, 0.9]]))
  assert stats.bonferroni(p) == pytest.approx([0.04, 0.16, 0.12, 0.02])
  with pytest.raises(ValueError, match="multiplicity"):
    stats.adjust(p, "bh")


def test_decide():
  assert list(stats.decide([-0.02, 0.02, 0.001, 0.001], [0.01, 0.01, 0.5, 0.5],
                           [0.9, 0.9, 0.01, 0.2], 0.05)) == [
                               "win", "loss", "equivalent", "undecided"]
  with pytest.raises(ValueError, match="alpha"):
    stats.decide(0.0, 0.5, 0.5, 0.6)
