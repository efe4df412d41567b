"""Statistics on fixed samples with known answers."""

import math

import numpy as np
import pytest

from elbolab.model.stats import mann_whitney_critical, median_ci_ranks, ratio_interval, summarize


@pytest.mark.parametrize(
    "n, ranks",
    # ranks of the order statistics of the distribution-free 95% CI of the median, as tabulated
    # (e.g. Conover, Practical Nonparametric Statistics, table A3; Hollander & Wolfe)
    [(6, (1, 6)), (10, (2, 9)), (15, (4, 12)), (20, (6, 15)), (30, (10, 21)), (100, (40, 61))],
)
def test_median_ci_ranks_match_published_tables(n, ranks):
    assert median_ci_ranks(n) == ranks


@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_median_ci_ranks_are_the_exact_binomial_ranks(confidence):
    """The ranks from scipy.special's binomial CDF (cheap to import in every worker) are those of
    the definition, checked here with scipy.stats' binomial: the smallest lo with
    P(K <= lo) >= alpha/2, and coverage P(lo <= K <= n - lo) >= confidence."""
    from scipy.stats import binom

    alpha = 1 - confidence
    for n in [*range(1, 301), 1000, 5001]:
        lo, hi = median_ci_ranks(n, confidence)
        if (lo, hi) == (1, n) and binom.cdf(n - 1, n, 0.5) - binom.cdf(0, n, 0.5) < confidence:
            continue  # too few samples for any narrower interval
        assert hi == n - lo + 1
        assert binom.cdf(lo - 1, n, 0.5) <= alpha / 2 < binom.cdf(lo, n, 0.5), n
        assert binom.cdf(hi - 1, n, 0.5) - binom.cdf(lo - 1, n, 0.5) >= confidence, n


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


@pytest.mark.parametrize(
    "m, n, expected",
    # two-sided 5% critical values of the Mann-Whitney U from published tables
    [(7, 7, 8), (8, 8, 13), (10, 10, 23), (20, 20, 127), (5, 8, 6), (3, 3, -1)],
)
def test_mann_whitney_critical_values_match_tables(m, n, expected):
    assert mann_whitney_critical(m, n) == expected


def test_normal_approximation_agrees_with_exact_at_the_switch():
    exact = mann_whitney_critical(60, 60)  # 3600 <= 4000: exact
    approx_mean, sd = 1800, math.sqrt(60 * 60 * 121 / 12)
    assert abs(exact - (approx_mean - 1.959964 * sd - 0.5)) <= 2


def test_rank_interval_covers_the_true_ratio_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(1000):
        base = np.exp(rng.normal(0, 0.1, 9))
        head = 1.2 * np.exp(rng.normal(0, 0.1, 11))
        lo, hi = ratio_interval(base, head).ci95
        hits += lo <= 1.2 <= hi
    assert 0.93 <= hits / 1000 <= 0.98


def test_rank_interval_is_exact_for_a_pure_scale_change_and_inverts():
    base = [100.0, 110.0, 120.0, 130.0, 140.0, 150.0, 160.0]
    r = ratio_interval(base, [2 * x for x in base])
    assert r.value == pytest.approx(2.0)
    assert r.ci95[0] < 2.0 < r.ci95[1]
    inv = r.inverse()
    assert inv.value == pytest.approx(0.5) and inv.ci95 == pytest.approx((1 / r.ci95[1], 1 / r.ci95[0]))


def test_rank_interval_of_identical_constant_samples_is_exactly_one():
    r = ratio_interval([5.0] * 10, [5.0] * 10)
    assert r.value == 1.0 and r.ci95 == (1.0, 1.0)


def test_too_few_samples_give_an_infinite_interval():
    assert ratio_interval([1.0, 1.1, 1.2], [2.0, 2.1, 2.2]).ci95 == (0.0, math.inf)


def test_empty_samples_rejected():
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        ratio_interval([], [1.0])


# ------------------------------------------------------------------ paired units (A/B worker pairs)


def test_signed_rank_critical_values_match_the_tables():
    from elbolab.model.stats import signed_rank_critical

    assert [signed_rank_critical(n) for n in (5, 6, 8, 10, 15, 20)] == [-1, 0, 3, 8, 25, 52]


def _pairs_with_process_offsets(rng, n_pairs: int, ratio: float, offset_sigma=0.10, samples=12, noise=0.05):
    """Worker pairs as measured on the 2-core VM: each process has an offset of its own (sigma 10%),
    each sample noise around it. Returns per-side samples and per-side pair medians."""
    base, head, base_meds, head_meds = [], [], [], []
    for _ in range(n_pairs):
        b = np.exp(rng.normal(0, offset_sigma)) * np.exp(rng.normal(0, noise, samples))
        h = ratio * np.exp(rng.normal(0, offset_sigma)) * np.exp(rng.normal(0, noise, samples))
        base += list(b)
        head += list(h)
        base_meds.append(float(np.median(b)))
        head_meds.append(float(np.median(h)))
    return base, head, base_meds, head_meds


def test_pairs_not_pooled_samples_are_the_unit_when_processes_carry_offsets():
    """The reason the A/B gate judges by worker pairs: with per-process offsets, pooled samples give
    an interval that misses the truth most of the time; the paired interval keeps its 95%."""
    from elbolab.model.stats import paired_ratio_interval

    rng = np.random.default_rng(7)
    pooled_misses = paired_misses = 0
    trials = 300
    for _ in range(trials):
        base, head, bm, hm = _pairs_with_process_offsets(rng, 8, 1.0)
        lo, hi = ratio_interval(base, head).ci95
        pooled_misses += not lo <= 1.0 <= hi
        lo, hi = paired_ratio_interval(bm, hm).ci95
        paired_misses += not lo <= 1.0 <= hi
    assert paired_misses / trials <= 0.06
    assert pooled_misses / trials >= 0.4


def test_paired_interval_needs_six_pairs_and_finds_a_real_change():
    from elbolab.model.stats import paired_ratio_interval

    assert paired_ratio_interval([1.0] * 5, [1.2] * 5).ci95 == (0.0, math.inf)
    rng = np.random.default_rng(3)
    _, _, bm, hm = _pairs_with_process_offsets(rng, 20, 1.3)
    est = paired_ratio_interval(bm, hm)
    assert 1.0 < est.ci95[0] < 1.3 < est.ci95[1] and est.value == pytest.approx(1.3, rel=0.1)
    with pytest.raises(ValueError):
        paired_ratio_interval([1.0, 2.0], [1.0])
