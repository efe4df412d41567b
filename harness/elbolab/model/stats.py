"""Statistics on raw samples. Pure functions of numbers: nothing here touches a clock.

The median is the headline (robust to the slow outliers a shared machine produces). Its 95%
confidence interval is the distribution-free one from order statistics (the binomial method found
in every nonparametric-statistics table), so no normality is assumed. Ratios between two sets of
samples (speed-ups, regressions) get the Hodges-Lehmann estimate of the scale ratio with its exact
rank-test (Mann-Whitney) interval: see `ratio_interval`. What a ratio *means* (faster, slower, same,
too noisy to tell) is decided in one place only, elbolab.analyse.verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    ci95: tuple[float, float]
    q1: float
    q3: float
    iqr: float
    min: float
    max: float
    mean: float
    std: float
    outliers: int  # samples beyond Tukey's fences (1.5 IQR outside the quartiles)

    def to_json(self) -> dict:
        data = asdict(self)
        data["ci95"] = list(self.ci95)
        return data


@lru_cache(maxsize=1024)
def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int]:
    """1-based ranks (lo, hi) of the order statistics bounding the median with >= `confidence`.

    The number of samples below the true median is Binomial(n, 1/2); x_(lo)..x_(hi) covers it
    with probability P(lo <= K <= hi - 1). For n = 20 this gives (6, 15), as the tables do.
    Below n = 6 no pair reaches 95%, and the full range (1, n) is returned.
    """
    if n < 1:
        raise ValueError("need at least one sample")
    # the binomial CDF from scipy.special: importing scipy.stats costs each worker 1.5-2.6 s
    from scipy.special import bdtr

    alpha = 1.0 - confidence
    cdf = bdtr(np.arange(n + 1), n, 0.5)  # P(K <= k)
    # the smallest k with CDF(k) >= alpha/2: the rank leaves less than alpha/2 below it
    lo = max(int(np.searchsorted(cdf, alpha / 2, side="left")), 1)
    hi = n - lo + 1
    if cdf[hi - 1] - cdf[lo - 1] < confidence:
        return 1, n
    return lo, hi


def median_ci(sorted_samples: Sequence[float]) -> tuple[float, float, float]:
    """(median, lo, hi): the median of sorted samples and its distribution-free 95% interval. Cheap
    enough for the timer's stopping rule, which asks after every sample."""
    n = len(sorted_samples)
    lo, hi = median_ci_ranks(n)
    mid = n // 2
    median = sorted_samples[mid] if n % 2 else (sorted_samples[mid - 1] + sorted_samples[mid]) / 2
    return float(median), float(sorted_samples[lo - 1]), float(sorted_samples[hi - 1])


def summarize(samples: Sequence[float]) -> Summary:
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = x.size
    if n == 0:
        raise ValueError("need at least one sample")
    median, ci_lo, ci_hi = median_ci(x)
    q1, q3 = np.percentile(x, [25, 75])
    iqr = q3 - q1
    outliers = int(np.sum((x < q1 - 1.5 * iqr) | (x > q3 + 1.5 * iqr)))
    return Summary(
        n=n,
        median=median,
        ci95=(ci_lo, ci_hi),
        q1=float(q1),
        q3=float(q3),
        iqr=float(iqr),
        min=float(x[0]),
        max=float(x[-1]),
        mean=float(x.mean()),
        std=float(x.std(ddof=1)) if n > 1 else 0.0,
        outliers=outliers,
    )


@dataclass(frozen=True)
class RatioEstimate:
    """head/base time ratio: the Hodges-Lehmann estimate and its 95% rank interval (> 1: head slower)."""

    value: float
    ci95: tuple[float, float]

    def inverse(self) -> RatioEstimate:
        """base/head: a speed-up of head over base."""
        lo, hi = self.ci95
        return RatioEstimate(
            1.0 / self.value, (1.0 / hi if hi > 0 else math.inf, 1.0 / lo if lo > 0 else math.inf)
        )


@lru_cache(maxsize=512)
def mann_whitney_critical(m: int, n: int, confidence: float = 0.95) -> int:
    """Largest c with P(U <= c) <= (1 - confidence)/2 for the Mann-Whitney count U of m and n
    samples under no difference; -1 when even U = 0 is more likely than that (too few samples).

    Exact (the distribution of U counted by recursion) while m*n <= 4000, normal approximation
    with continuity correction beyond. For m = n = 7 at 95% this is 8, as the tables say.
    """
    alpha = (1.0 - confidence) / 2
    if m < 1 or n < 1:
        return -1
    if m * n > 4000:
        from scipy import stats as sps  # 1.5-2.6 s to import: only large samples come here

        mean, sd = m * n / 2, math.sqrt(m * n * (m + n + 1) / 12)
        return int(math.floor(mean - sps.norm.ppf(1 - alpha) * sd - 0.5))
    # counts[k][u]: ways to get U = u with i samples on one side and k on the other
    prev = [np.ones(1) for _ in range(n + 1)]
    for i in range(1, m + 1):
        cur = [np.ones(1)]
        for k in range(1, n + 1):
            d = np.zeros(i * k + 1)
            d[k : k + prev[k].size] += prev[k]  # the largest sample is on the i side: +k
            d[: cur[k - 1].size] += cur[k - 1]
            cur.append(d)
        prev = cur
    cdf = np.cumsum(prev[n]) / prev[n].sum()
    return int(np.searchsorted(cdf, alpha + 1e-12, side="right")) - 1


def ratio_interval(base: Sequence[float], head: Sequence[float], confidence: float = 0.95) -> RatioEstimate:
    """Hodges-Lehmann estimate of the scale ratio head/base and its rank-test interval (Bauer 1972).

    On log times: the m*n pairwise differences log(head_j) - log(base_i), their median (the
    estimate) and the order statistics bounding it by the Mann-Whitney critical value. Why this
    and not a bootstrap of the ratio of medians:

    - it is exact for any sample count (the count of pairwise differences below the true log ratio
      follows the Mann-Whitney null distribution whatever the noise), so 7+7 quick samples get an
      honest interval, where a percentile bootstrap of a median is discrete and too narrow;
    - it uses every sample, so it is ~20% narrower than the bootstrap interval on log-normal noise;
    - being rank-based it shrugs off the slow outliers a shared machine produces.

    It assumes head is base scaled by a factor, which is what a change in a kernel does to its
    time. With too few samples for the confidence asked, the interval is (0, inf).
    """
    a = np.log(np.asarray(base, dtype=np.float64))
    b = np.log(np.asarray(head, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        raise ValueError("need samples on both sides")
    diffs = np.sort((b[None, :] - a[:, None]).ravel())
    estimate = float(math.exp(np.median(diffs)))
    c = mann_whitney_critical(a.size, b.size, confidence)
    if c < 0:
        return RatioEstimate(estimate, (0.0, math.inf))
    return RatioEstimate(estimate, (float(math.exp(diffs[c])), float(math.exp(diffs[diffs.size - 1 - c]))))


EXACT_SIGNED_RANK_MAX = 1000  # 2**n counts stay finite in float64 up to n = 1023


@lru_cache(maxsize=256)
def signed_rank_critical(n: int, confidence: float = 0.95) -> int:
    """Largest k with P(W+ <= k) <= (1 - confidence)/2 for Wilcoxon's signed-rank statistic of n
    pairs under no difference (its exact distribution, counted by recursion); -1 when n is too
    small for the confidence (fewer than 6 pairs at 95%). For n = 10 at 95% this is 8, as the
    tables say. Above EXACT_SIGNED_RANK_MAX pairs (a run's pooled null control at tens of
    thousands of cases) the counts would overflow and the recursion cost n**3: the normal
    approximation with continuity correction, which is within a rank of the exact value there."""
    alpha = (1.0 - confidence) / 2
    if n < 1:
        return -1
    if n > EXACT_SIGNED_RANK_MAX:
        mean, sd = n * (n + 1) / 4, math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
        return int(math.floor(mean + sd * NormalDist().inv_cdf(alpha) - 0.5))
    top = n * (n + 1) // 2
    counts = np.zeros(top + 1)
    counts[0] = 1.0
    for i in range(1, n + 1):  # rank i is positive or not
        counts[i:] = counts[i:] + counts[: top + 1 - i]
    cdf = np.cumsum(counts) / counts.sum()
    return int(np.searchsorted(cdf, alpha + 1e-12, side="right")) - 1


WALSH_SORT_MAX = 2000  # pairs: beyond, the n(n+1)/2 Walsh averages are not formed (n = 2000: 2 M)
WALSH_IN_PYTHON = 24  # pairs: up to here (a cell's 8 rounds) plain Python is faster than numpy


def _walsh_order_statistic(d: np.ndarray, r: int) -> float:
    """The r-th smallest (0-based) Walsh average (d[i] + d[j]) / 2, i <= j, of sorted d, without
    forming them: bisection on the value, counting the averages at or below it in O(n log n)."""
    n = d.size
    starts = np.arange(n)

    def at_or_below(x: float) -> int:
        return int(np.maximum(np.searchsorted(d, 2 * x - d, side="right") - starts, 0).sum())

    lo, hi = float(d[0]), float(d[-1])  # every average lies in [min, max]
    if at_or_below(lo) >= r + 1:
        return lo
    for _ in range(200):  # lo: fewer than r + 1 at or below; hi: at least r + 1
        mid = (lo + hi) / 2
        if mid <= lo or mid >= hi:
            break
        if at_or_below(mid) >= r + 1:
            hi = mid
        else:
            lo = mid
    return hi


def paired_ratio_interval(
    base: Sequence[float], head: Sequence[float], confidence: float = 0.95
) -> RatioEstimate:
    """head/base from paired units (base[i] and head[i] measured together, e.g. the medians of one
    pair of A/B workers): the Hodges-Lehmann estimate of the log ratios' centre (the median of
    their Walsh averages) and its exact signed-rank interval.

    Why the pairs and not the pooled samples: on a shared VM a worker process has an offset of its
    own (measured here: two workers of identical code differing by up to 30% on a memory-bound
    kernel, one pair 0.65x and the next 1.23x), which no number of samples from the same two
    processes can average out; pooled samples then give an interval far too narrow (A/A gates
    fired). The pairs are the independent units, so the interval is built from them. It needs
    6 pairs or more at 95%, 8 at 99% (else the interval is (0, inf))."""
    a = np.log(np.asarray(base, dtype=np.float64))
    b = np.log(np.asarray(head, dtype=np.float64))
    if a.size != b.size or a.size == 0:
        raise ValueError("need the same number of paired units on both sides, at least one")
    d = b - a
    k = signed_rank_critical(d.size, confidence)
    if d.size > WALSH_SORT_MAX:  # the same order statistics, found by counting (time and memory ~ n)
        d = np.sort(d)
        total = d.size * (d.size + 1) // 2
        middle = [total // 2] if total % 2 else [total // 2 - 1, total // 2]
        estimate = math.exp(sum(_walsh_order_statistic(d, r) for r in middle) / len(middle))
        if k < 0:
            return RatioEstimate(estimate, (0.0, math.inf))
        lo, hi = _walsh_order_statistic(d, k), _walsh_order_statistic(d, total - 1 - k)
        return RatioEstimate(estimate, (math.exp(lo), math.exp(hi)))
    if (
        d.size <= WALSH_IN_PYTHON
    ):  # a cell's rounds: the same sums and sort in Python, without numpy's per-call cost
        x = d.tolist()
        walsh = sorted((x[i] + x[j]) / 2 for i in range(len(x)) for j in range(i, len(x)))
        n, mid = len(walsh), len(walsh) // 2
        estimate = math.exp(walsh[mid] if n % 2 else (walsh[mid - 1] + walsh[mid]) / 2)
        if k < 0:
            return RatioEstimate(estimate, (0.0, math.inf))
        return RatioEstimate(estimate, (math.exp(walsh[k]), math.exp(walsh[n - 1 - k])))
    walsh = np.sort(((d[:, None] + d[None, :]) / 2)[np.triu_indices(d.size)])
    estimate = float(math.exp(np.median(walsh)))
    if k < 0:
        return RatioEstimate(estimate, (0.0, math.inf))
    return RatioEstimate(estimate, (float(math.exp(walsh[k])), float(math.exp(walsh[walsh.size - 1 - k]))))
