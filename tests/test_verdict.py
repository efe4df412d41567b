"""elbolab.analyse.verdict: one rule, the same words everywhere (console, report, claims, compare, gate)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from rich.console import Console

from elbolab.analyse.compare import compare
from elbolab.analyse.table import measurement_table, summary_table
from elbolab.analyse.verdict import Rule, Verdict, decide, judge
from elbolab.cli.render import print_compare
from elbolab.model.case import Case
from elbolab.model.stats import RatioEstimate
from elbolab.report.claims import Lookup, Spec
from elbolab.report.markdown import compare_report
from tests.builders import make_run, ok


@pytest.mark.parametrize(
    "ratio, ci, verdict, regression",
    [
        (1.20, (1.12, 1.28), Verdict.SLOWER, True),  # confidently slower, beyond the threshold
        (1.12, (1.04, 1.20), Verdict.SLOWER, True),  # interval above the noise band, ratio beyond 10%
        (1.08, (1.05, 1.12), Verdict.SLOWER, False),  # confidently slower, but below the threshold
        (1.12, (1.01, 1.25), Verdict.NOISY, False),  # might be noise
        (1.02, (0.97, 1.06), Verdict.SAME, False),
        (1.025, (1.01, 1.04), Verdict.SAME, False),  # a change inside the noise band
        (0.80, (0.75, 0.86), Verdict.FASTER, False),
        (1.00, (0.85, 1.18), Verdict.NOISY, False),
        (1.8, (0.0, math.inf), Verdict.NOISY, False),  # too few samples for any interval
    ],
)
def test_verdicts_on_fixed_intervals(ratio, ci, verdict, regression):
    j = decide(RatioEstimate(ratio, ci), Rule())
    assert (j.verdict, j.regression) == (verdict, regression)


def test_rounds_that_disagree_demote_a_confident_verdict():
    est = RatioEstimate(1.2, (1.15, 1.25))
    assert decide(est, Rule(), base_rounds=[100, 101], head_rounds=[120, 121]).verdict is Verdict.SLOWER
    j = decide(est, Rule(), base_rounds=[100, 125], head_rounds=[120, 121])
    assert j.verdict is Verdict.NOISY and j.rounds_agree is False and not j.regression


def _interval_1_01_to_1_04():
    """Fixed samples whose head/base interval is about [1.01, 1.04]: the audit's example of a ratio
    the old report called 'faster, sure' while the gate called it 'same'."""
    base = 100.0 * np.exp(np.linspace(-0.02, 0.02, 15))
    head = base * 1.025
    return base, head


def test_an_interval_of_1_01_to_1_04_reads_the_same_in_every_consumer():
    base_t, head_t = _interval_1_01_to_1_04()
    j = judge(base_t, head_t)
    lo, hi = j.ci95
    assert 1.0 < lo < 1.03 < hi < 1.06, j.ci95
    expected = j.verdict
    assert expected is Verdict.SAME

    a, b = Case("elbo", "numpy"), Case("elbo", "rust")
    # compare / gate: base run (numpy times) vs head run (same case, slower times)
    report = compare(make_run([ok(a, base_t)]), make_run([ok(a, head_t)], commit="def"))
    assert report.comparisons[0].verdict is expected
    term = Console(file=io.StringIO(), record=True, width=200, color_system=None)
    print_compare(report, term)
    assert f" {expected.value}" in term.export_text()
    assert f"| {expected.value} |" in compare_report(report)

    # the report: rust is 'head' against the numpy baseline; the same samples, the same word
    run = make_run([ok(a, base_t), ok(b, head_t)])
    df = measurement_table(run, baseline="numpy")
    row = df[df.backend == "rust"].iloc[0]
    assert row["verdict"] == expected.value
    assert row["speedup"] == pytest.approx(1 / j.ratio, rel=1e-3)  # ok() rounds samples to whole ns
    # winner vs runner-up: numpy wins by the same margin, judged by the same rule
    summary = summary_table(df, "numpy").iloc[0]
    assert summary["winner"] == "numpy" and "same" in summary["how_sure"]

    # the claims check takes its speed-ups from the same estimate
    look = Lookup(df, run)
    r = look.speedup(
        Spec("numpy", "elbo", "eps=given", "float64"), Spec("rust", "elbo", "eps=given", "float64")
    )
    assert r.value == pytest.approx(row["speedup"]) and r.ci95 == pytest.approx(
        (row["speedup_lo"], row["speedup_hi"])
    )
