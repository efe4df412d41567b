"""The one verdict rule: is head faster or slower than base, by how much, and how sure.

Every consumer that puts a word on a ratio — the console grid, the report's speed-up matrix and
tables, the claims check, `compare` and the gate — calls `judge` here, so the same samples give the
same word everywhere.

The ratio is head/base of the per-call times (> 1: head is slower), estimated by Hodges-Lehmann
with its exact 95% rank interval (elbolab.model.stats.ratio_interval). With a threshold t (default 10%)
and a noise band b (default 3%):

- slower            the whole interval lies above 1 + b
- faster            the whole interval lies below 1 / (1 + b)
- same              otherwise, if the whole interval lies inside [1/(1+t), 1+t]: no change that matters
- too noisy to tell otherwise: the interval straddles the band and reaches past the threshold

A *regression* is 'slower' AND an estimated ratio above 1 + t. This joins asv's rule (significant
AND larger than a factor) with criterion's (the whole interval outside a noise band): the band
covers the run-to-run offsets (memory layout, frequency state) that repeated runs of identical code
show and that no within-run interval can see.

When both sides were pooled from several interleaved rounds (the A/B gate), a confident change must
also show in every pairing of rounds: the median of every head round above that of every base round
(to within the noise band; likewise for faster). If the machine's speed moved between runs, the
rounds disagree and the verdict is 'too noisy to tell'. Under no change all head rounds land above
all base rounds with probability about 1/C(2R, R) (1/6 for 2 rounds, 1/20 for 3), whatever the
run-to-run swings; a real change shows in every pairing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from elbolab.model.errors import UsageError
from elbolab.model.measurement import Measurement
from elbolab.model.stats import RatioEstimate, paired_ratio_interval, ratio_interval

DEFAULT_THRESHOLD = 0.10
# The same-machine interleaved A/B gate measures a ratio to about ±1-2% on a noisy 2-core machine,
# so it gates at 5% (docs/gating.md: its false-alarm and detection rates, measured); two separate
# runs share no drift and keep 10%.
DEFAULT_AB_THRESHOLD = 0.05
DEFAULT_NOISE_BAND = 0.03


class Verdict(str, Enum):
    FASTER = "faster"
    SLOWER = "slower"
    SAME = "same"
    NOISY = "too noisy to tell"

    @property
    def mark(self) -> str:
        """One character for dense grids."""
        return {"faster": "+", "slower": "-", "same": "=", "too noisy to tell": "?"}[self.value]

    def __str__(self) -> str:
        return self.value


class RuleError(UsageError):
    """A threshold or noise band that makes no sense; one line for the user."""


@dataclass(frozen=True)
class Rule:
    """The parameters of the verdict: threshold (per workload if wanted) and noise band."""

    threshold: float = DEFAULT_THRESHOLD
    noise_band: float = DEFAULT_NOISE_BAND
    per_workload: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for name, t in [
            ("threshold", self.threshold),
            *((f"threshold for {w}", t) for w, t in self.per_workload),
        ]:
            if not (isinstance(t, (int, float)) and math.isfinite(t) and 0 < t < 10):
                raise RuleError(f"{name} must be a positive fraction such as 0.1, got {t!r}")
        smallest = min([self.threshold, *(t for _, t in self.per_workload)])
        if not (isinstance(self.noise_band, (int, float)) and 0 <= self.noise_band < smallest):
            raise RuleError(
                f"noise band must be at least 0 and below every threshold, got {self.noise_band!r}"
            )

    @classmethod
    def of(cls, threshold: float = DEFAULT_THRESHOLD, noise_band: float = DEFAULT_NOISE_BAND,
           per_workload: Mapping[str, float] | None = None) -> Rule:  # fmt: skip
        return cls(threshold, noise_band, tuple(sorted((per_workload or {}).items())))

    def threshold_for(self, workload: str) -> float:
        return dict(self.per_workload).get(workload, self.threshold)

    def describe(self, unit: str = "ns") -> str:
        extra = "".join(f", {w} {t:.1%}" for w, t in self.per_workload)
        interval = "whole 95% rank interval" if unit == "ns" else "instruction count ± 3 x its repeat spread"
        return (
            f"{'times' if unit == 'ns' else 'instruction counts'}: slower/faster = {interval} beyond "
            f"±{self.noise_band:.1%}; same = within ±{self.threshold:.1%}{extra}; "
            f"regression = slower with a ratio above +{self.threshold:.1%}{extra}"
        )

    def to_json(self) -> dict:
        return {
            "threshold": self.threshold,
            "noise_band": self.noise_band,
            "per_workload": dict(self.per_workload),
        }


DEFAULT_RULE = Rule()


@dataclass(frozen=True)
class Judgement:
    """head vs base: the time ratio head/base with its interval, and what it means."""

    ratio: float
    ci95: tuple[float, float]
    verdict: Verdict
    regression: bool
    threshold: float
    # False when the rounds of a pooled A/B measurement disagree (the verdict was demoted)
    rounds_agree: bool | None = None

    @property
    def speedup(self) -> RatioEstimate:
        """base/head: how many times faster head is than base."""
        return RatioEstimate(self.ratio, self.ci95).inverse()

    def to_json(self) -> dict:
        return {
            "ratio": self.ratio,
            "ci95": [self.ci95[0], self.ci95[1] if math.isfinite(self.ci95[1]) else None],
            "verdict": self.verdict.value,
            "regression": self.regression,
            "threshold": self.threshold,
            "rounds_agree": self.rounds_agree,
        }


def verdict_of(ci: tuple[float, float], threshold: float, noise_band: float) -> Verdict:
    lo, hi = ci
    if lo > 1.0 + noise_band:
        return Verdict.SLOWER
    if hi < 1.0 / (1.0 + noise_band):
        return Verdict.FASTER
    if lo >= 1.0 / (1.0 + threshold) and hi <= 1.0 + threshold:
        return Verdict.SAME
    return Verdict.NOISY


def rounds_agree(
    base_rounds: Sequence[float] | None,
    head_rounds: Sequence[float] | None,
    verdict: Verdict,
    noise_band: float,
) -> bool | None:
    """Whether every round median of head is beyond every round median of base in the verdict's
    direction (None when either side was not pooled from two or more rounds)."""
    if not base_rounds or not head_rounds or len(base_rounds) < 2 or len(head_rounds) < 2:
        return None
    if verdict is Verdict.SLOWER:
        return min(head_rounds) * (1.0 + noise_band) > max(base_rounds)
    if verdict is Verdict.FASTER:
        return max(head_rounds) < min(base_rounds) * (1.0 + noise_band)
    return None


def decide(
    estimate: RatioEstimate,
    rule: Rule,
    workload: str = "",
    base_rounds: Sequence[float] | None = None,
    head_rounds: Sequence[float] | None = None,
) -> Judgement:
    """The verdict on a ratio estimate (see the module docstring)."""
    t = rule.threshold_for(workload)
    verdict = verdict_of(estimate.ci95, t, rule.noise_band)
    agree = rounds_agree(base_rounds, head_rounds, verdict, rule.noise_band)
    if agree is False:
        verdict = Verdict.NOISY
    regression = verdict is Verdict.SLOWER and estimate.value > 1.0 + t
    return Judgement(estimate.value, estimate.ci95, verdict, regression, t, agree)


def judge(
    base: Sequence[float],
    head: Sequence[float],
    rule: Rule = DEFAULT_RULE,
    workload: str = "",
    base_rounds: Sequence[float] | None = None,
    head_rounds: Sequence[float] | None = None,
) -> Judgement:
    """head vs base from their per-call samples."""
    return decide(ratio_interval(base, head), rule, workload, base_rounds, head_rounds)


def widened(estimate: RatioEstimate, noise: float) -> RatioEstimate:
    """The interval stretched by a factor e^noise either side (on the log scale): what a run's null
    control measured of its own noise, which no interval from within the run can see."""
    if noise <= 0:
        return estimate
    lo, hi = estimate.ci95
    return RatioEstimate(estimate.value, (lo * math.exp(-noise), hi * math.exp(noise)))


def paired_rounds(base: Measurement, head: Measurement) -> bool:
    """Whether two measurements were sampled in the same interleaved rounds (one cell of one run):
    the same number of rounds, two or more. Their rounds then pair up."""
    return len(base.rounds) >= 2 and len(base.rounds) == len(head.rounds)


def estimate_in_run(base: Measurement, head: Measurement) -> RatioEstimate:
    """head/base measured in one run: over their paired round medians where they were interleaved
    (each round's drift falls on both, so the rounds are the units), else over the pooled samples."""
    if paired_rounds(base, head):
        return paired_ratio_interval(base.round_medians, head.round_medians)
    return ratio_interval(base.per_call_ns, head.per_call_ns)


def judge_in_run(base: Measurement, head: Measurement, rule: Rule = DEFAULT_RULE, workload: str = "",
                 noise: float = 0.0) -> Judgement:  # fmt: skip
    """head vs base measured in one run (estimate_in_run), the interval widened by the run's noise
    as its null control measured it (elbolab.analyse.table.control_noise)."""
    return decide(widened(estimate_in_run(base, head), noise), rule, workload)


# Instruction counts are repeatable to a few 1e-4 (harness/instructions.py), so they are gated at 1%:
# the same rule, with an interval standing for their measured repeatability.
INSTRUCTIONS_RULE = Rule(threshold=0.01, noise_band=0.002)
COUNT_FLOOR = 1e-4  # what differs between two environments (variables, paths) even for identical code


def count_estimate(base: float, head: float, base_spread: float, head_spread: float) -> RatioEstimate:
    """head/base instructions per call with an interval of three times the larger repeatability
    (the relative spread between a count's repeated segments), never narrower than COUNT_FLOOR."""
    ratio = head / base
    half = 3 * max(base_spread, head_spread, COUNT_FLOOR)
    return RatioEstimate(ratio, (ratio * (1 - half), ratio * (1 + half)))
