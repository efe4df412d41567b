"""Statistics on fixed samples with known answers."""

import numpy as np
import pytest

from harness.stats import median_ci_ranks, ratio_of_medians, summarize


@pytest.mark.parametrize(
    "n, ranks",
    # ranks of the order statistics of the distribution-free 95% CI of the median, as tabulated
    # (e.g. Conover, Practical Nonparametric Statistics, table A3; Hollander & Wolfe)
    [(6, (1, 6)), (10, (2, 9)), (15, (4, 12)), (20, (6, 15)), (30, (10, 21)), (100, (40, 61))],
)
def test_median_ci_ranks_match_published_tables(n, ranks):
    assert median_ci_ranks(n) == ranks


def test_median_ci_too_few_samples_is_full_range():
    assert median_ci_ranks(5) == (1, 5)
    assert median_ci_ranks(1) == (1, 1)


def test_summary_of_fixed_samples():
    s = summarize(list(range(1, 21)))
    assert s.n == 20
    assert s.median == 10.5
    assert s.ci95 == (6.0, 15.0)
    assert s.min == 1 and s.max == 20
    assert s.mean == 10.5
    assert s.q1 == pytest.approx(5.75) and s.q3 == pytest.approx(15.25)
    assert s.iqr == pytest.approx(9.5)
    assert s.std == pytest.approx(np.std(np.arange(1, 21), ddof=1))
    assert s.outliers == 0


def test_outliers_counted_beyond_tukey_fences():
    s = summarize([10, 10, 11, 11, 12, 12, 13, 100, 1000])
    # quartiles 11 and 13, fences 8 and 16
    assert s.outliers == 2


def test_summary_is_order_independent():
    rng = np.random.default_rng(1)
    x = rng.lognormal(size=50)
    assert summarize(x) == summarize(rng.permutation(x))


def test_ratio_of_medians_is_deterministic_and_brackets_truth():
    rng = np.random.default_rng(7)
    base = rng.lognormal(np.log(100), 0.05, 40)
    head = rng.lognormal(np.log(120), 0.05, 40)
    r1 = ratio_of_medians(base, head)
    r2 = ratio_of_medians(base, head)
    assert r1 == r2
    assert r1.ci95[0] < 1.2 < r1.ci95[1]
    assert r1.ci95[0] > 1.1  # clearly slower
    assert r1.value == pytest.approx(np.median(head) / np.median(base))


def test_ratio_of_identical_constant_samples_is_exactly_one():
    r = ratio_of_medians([5.0] * 10, [5.0] * 10)
    assert r.value == 1.0 and r.ci95 == (1.0, 1.0)


def test_empty_samples_rejected():
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        ratio_of_medians([], [1.0])
