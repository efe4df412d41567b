"""Statistics on raw samples. Pure functions of numbers: nothing here touches a clock.

The median is the headline (robust to the slow outliers a shared machine produces). Its 95%
confidence interval is the distribution-free one from order statistics (the binomial method found
in every nonparametric-statistics table), so no normality is assumed. Ratios between two sets of
samples (speed-ups, regressions) get a percentile-bootstrap interval on the ratio of medians.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps


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


def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int]:
    """1-based ranks (lo, hi) of the order statistics bounding the median with >= `confidence`.

    The number of samples below the true median is Binomial(n, 1/2); x_(lo)..x_(hi) covers it
    with probability P(lo <= K <= hi - 1). For n = 20 this gives (6, 15), as the tables do.
    Below n = 6 no pair reaches 95%, and the full range (1, n) is returned.
    """
    if n < 1:
        raise ValueError("need at least one sample")
    alpha = 1.0 - confidence
    lo = int(sps.binom.ppf(alpha / 2, n, 0.5))
    # ppf gives the smallest k with CDF(k) >= alpha/2; the rank must leave <= alpha/2 below it
    while lo > 0 and sps.binom.cdf(lo - 1, n, 0.5) > alpha / 2:
        lo -= 1
    lo = max(lo, 1)
    hi = n - lo + 1
    if sps.binom.cdf(hi - 1, n, 0.5) - sps.binom.cdf(lo - 1, n, 0.5) < confidence:
        return 1, n
    return lo, hi


def summarize(samples: Sequence[float]) -> Summary:
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = x.size
    if n == 0:
        raise ValueError("need at least one sample")
    lo, hi = median_ci_ranks(n)
    q1, q3 = np.percentile(x, [25, 75])
    iqr = q3 - q1
    outliers = int(np.sum((x < q1 - 1.5 * iqr) | (x > q3 + 1.5 * iqr)))
    return Summary(
        n=n,
        median=float(np.median(x)),
        ci95=(float(x[lo - 1]), float(x[hi - 1])),
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
class Ratio:
    """head / base of the medians, with a 95% bootstrap interval."""

    value: float
    ci95: tuple[float, float]

    def to_json(self) -> dict:
        return {"value": self.value, "ci95": list(self.ci95)}


def ratio_of_medians(
    base: Sequence[float], head: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> Ratio:
    """Ratio median(head)/median(base) with a percentile-bootstrap 95% CI.

    Each side is resampled independently (the samples of two cases are independent); the seed is
    fixed so the same samples always give the same interval.
    """
    a = np.asarray(base, dtype=np.float64)
    b = np.asarray(head, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("need samples on both sides")
    rng = np.random.default_rng(seed)
    med_a = np.median(rng.choice(a, size=(resamples, a.size), replace=True), axis=1)
    med_b = np.median(rng.choice(b, size=(resamples, b.size), replace=True), axis=1)
    boot = med_b / med_a
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return Ratio(float(np.median(b) / np.median(a)), (float(lo), float(hi)))


def geometric_mean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(math.exp(np.mean(np.log(v)))) if v.size else math.nan
