"""elbolab.analyse.compare: the statistic, the verdicts, the gate's error rates on simulated noise, rendering.

Nothing here times anything: samples are simulated with fixed seeds, so every number is
deterministic. The simulation is the realistic-noise proof the gate's defaults rest on.
"""

from __future__ import annotations

import io
import math
from dataclasses import replace

import numpy as np
import pytest
from rich.console import Console

from elbolab.analyse.compare import CompareError, Reference, compare, pool_rounds
from elbolab.analyse.verdict import Rule, RuleError, Verdict
from elbolab.cli.render import print_compare
from elbolab.gate.ab import balanced_order
from elbolab.model.case import Case
from elbolab.model.measurement import Measurement
from elbolab.report.markdown import compare_report
from tests.builders import make_run, noisy, ok

ELBO = Case("elbo", "numpy", batch=128)
GRAD = Case("elbo_grad", "numpy", batch=128)
VAE = Case("vae_step", "numpy", batch=128)


# ------------------------------------------------------------- realistic simulated noise


def simulate_ab(rng, slowdown: float, n: int = 15, rounds: int = 3) -> tuple[dict, dict]:
    """One same-machine A/B gate: `rounds` runs per side in balanced order, pooled as the gate pools.

    Noise: log-normal per-sample spread drawn in 5-15%, 3% outliers 1.3-3x slower, a slow drift
    over the whole job (a sine of +-3% and a random linear trend of sd 5%), and a per-run offset of
    sd 2% (memory layout, frequency state) that no within-run interval can see. Each run
    calibrates its own loop count, as the real timer does.
    """
    sigma = rng.uniform(0.05, 0.15)
    order = balanced_order(rounds)
    total = len(order) * n
    phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 2.0) * total
    slope = rng.normal(0, 0.05) / total
    runs: dict[str, list] = {"base": [], "head": []}
    t = 0
    for k, side in enumerate(order):
        idx = np.arange(t, t + n)
        t += n
        drift = 0.03 * np.sin(2 * np.pi * idx / period + phase) + slope * idx
        x = 100_000.0 * np.exp(rng.normal(0, sigma, n) + drift + rng.normal(0, 0.02))
        out = rng.random(n) < 0.03
        x[out] *= rng.uniform(1.3, 3.0, out.sum())
        if side == "head":
            x *= slowdown
        loops = int(rng.integers(40, 60))
        runs[side].append(make_run([ok(ELBO, x, loops=loops)], run_id=f"{side}{k}"))
    return pool_rounds(runs["base"]), pool_rounds(runs["head"])


def gate_rate(seed: int, slowdown: float, pairs: int) -> float:
    rng = np.random.default_rng(seed)
    failed = 0
    for _ in range(pairs):
        base, head = simulate_ab(rng, slowdown)
        failed += compare(base, head).failed
    return failed / pairs


def test_false_alarms_on_simulated_a_a_pairs_stay_under_1_percent():
    rate = gate_rate(seed=2024, slowdown=1.0, pairs=400)
    print(f"simulated A/A false-alarm rate: {rate:.2%}")
    assert rate <= 0.01


def test_a_true_20_percent_slowdown_is_caught_95_percent_of_the_time():
    rate = gate_rate(seed=2025, slowdown=1.20, pairs=300)
    print(f"simulated +20% detection rate: {rate:.2%}")
    assert rate >= 0.95


def test_a_slowdown_of_half_the_threshold_fails_the_gate_far_less_often():
    # the ratio estimate must pass +10%: with 5-15% spread a true +5% does so now and then
    rate = gate_rate(seed=2026, slowdown=1.05, pairs=150)
    print(f"simulated +5% (half the threshold) gate failures: {rate:.2%}")
    assert rate <= 0.15


# ---------------------------------------------------------------------------- compare()


def test_matching_cases_get_ratios_and_a_regression_sets_exit_code_1():
    rng = np.random.default_rng(0)
    base = make_run([ok(ELBO, noisy(rng, 100e3)), ok(GRAD, noisy(rng, 150e3))])
    head = make_run([ok(GRAD, noisy(rng, 150e3)), ok(ELBO, noisy(rng, 130e3))])  # order does not matter
    report = compare(base, head)
    assert [c.case for c in report.comparisons] == [ELBO, GRAD]  # regressions first
    slow, same = report.comparisons
    assert slow.regression and slow.verdict is Verdict.SLOWER and slow.ratio == pytest.approx(1.3, rel=0.05)
    assert slow.ci95[0] < slow.ratio < slow.ci95[1]
    assert not same.regression and same.verdict is Verdict.SAME
    assert report.failed and report.regressions == (slow,)


def test_identical_runs_pass():
    rng = np.random.default_rng(1)
    doc = make_run([ok(ELBO, noisy(rng, 100e3))])
    report = compare(doc, doc)
    assert not report.failed and report.comparisons[0].ratio == 1.0


def test_per_workload_threshold():
    rng = np.random.default_rng(2)
    base = make_run([ok(ELBO, noisy(rng, 100e3, 30)), ok(VAE, noisy(rng, 5e6, 30))])
    head = make_run([ok(ELBO, noisy(rng, 115e3, 30)), ok(VAE, noisy(rng, 5.75e6, 30))])
    report = compare(base, head, rule=Rule.of(per_workload={"vae_step": 0.20}))
    by = {c.case.workload: c for c in report.comparisons}
    assert by["elbo"].regression and by["elbo"].judgement.threshold == 0.10
    assert not by["vae_step"].regression and by["vae_step"].verdict is Verdict.SLOWER
    assert by["vae_step"].judgement.threshold == 0.20


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": 0}, "threshold must be a positive"),
        ({"threshold": math.nan}, "threshold must be a positive"),
        ({"noise_band": 0.2}, "noise band"),
    ],
)
def test_bad_rules_are_errors(kwargs, message):
    with pytest.raises(RuleError, match=message):
        Rule.of(**kwargs)


def test_unknown_workload_in_thresholds_is_a_compare_error():
    doc = make_run([ok(ELBO, [1e5] * 7)])
    with pytest.raises(CompareError, match="unknown workload 'elbow'"):
        compare(doc, doc, rule=Rule.of(per_workload={"elbow": 0.2}))


def test_no_cases_in_common_is_an_error():
    rng = np.random.default_rng(3)
    with pytest.raises(CompareError, match="no cases in common"):
        compare(make_run([ok(ELBO, noisy(rng, 1e5))]), make_run([ok(GRAD, noisy(rng, 1e5))]))


def test_different_case_sets_need_allow_missing_and_are_then_listed():
    rng = np.random.default_rng(4)
    base = make_run([ok(ELBO, noisy(rng, 1e5)), ok(GRAD, noisy(rng, 1e5))])
    head = make_run([ok(ELBO, noisy(rng, 1e5)), ok(VAE, noisy(rng, 1e6))])
    with pytest.raises(CompareError, match="case sets differ.*--allow-missing"):
        compare(base, head)
    report = compare(base, head, allow_missing=True)
    assert [c.case for c in report.comparisons] == [ELBO]
    reasons = {n.case.workload: n.reason for n in report.not_compared}
    assert reasons == {"elbo_grad": "only in base", "vae_step": "only in head"}
    assert not report.failed


def test_only_ok_cases_are_compared_and_a_case_that_broke_fails_the_gate():
    rng = np.random.default_rng(5)
    skipped = Case("elbo", "numpy", device="cuda")
    base = make_run(
        [ok(ELBO, noisy(rng, 1e5)), ok(GRAD, noisy(rng, 1e5)), Measurement(skipped, "skipped", "no GPU")]
    )
    head = make_run(
        [
            ok(ELBO, noisy(rng, 1e5)),
            Measurement(GRAD, "incorrect", "recon off by 1%"),
            Measurement(skipped, "skipped", "no GPU"),
        ]
    )
    report = compare(base, head)
    assert [c.case for c in report.comparisons] == [ELBO]
    by = {n.case: n for n in report.not_compared}
    assert by[GRAD].broken and "head incorrect: recon off by 1%" in by[GRAD].reason
    assert not by[skipped].broken and by[skipped].reason.startswith("base skipped")
    assert report.failed and not report.regressions


def test_different_machines_are_not_compared_in_absolute_terms():
    rng = np.random.default_rng(6)
    base = make_run([ok(ELBO, noisy(rng, 1e5))], cpu="Fast CPU")
    head = make_run([ok(ELBO, noisy(rng, 2e5))], cpu="Slow CPU")
    with pytest.raises(CompareError, match="different machines.*--normalize"):
        compare(base, head)


def test_normalize_divides_by_the_numpy_elbo_case_of_the_same_run():
    rng = np.random.default_rng(7)
    rust = Case("elbo", "rust", batch=128)
    rust_grad = Case("elbo_grad", "rust", batch=128)
    big = Case("elbo", "rust", batch=4096)
    base = make_run(
        [ok(ELBO, noisy(rng, 100e3)), ok(rust, noisy(rng, 50e3)), ok(rust_grad, noisy(rng, 60e3)),
         ok(big, noisy(rng, 1e6))],
        cpu="Fast CPU",
    )  # fmt: skip
    # head's machine is twice as slow; rust elbo_grad also regressed by 30% on top
    head = make_run(
        [ok(ELBO, noisy(rng, 200e3)), ok(rust, noisy(rng, 100e3)), ok(rust_grad, noisy(rng, 156e3)),
         ok(big, noisy(rng, 2e6))],
        cpu="Slow CPU",
    )  # fmt: skip
    report = compare(base, head, reference=Reference())
    by = {c.case: c for c in report.comparisons}
    assert by[rust].ratio == pytest.approx(1.0, rel=0.05) and not by[rust].regression
    assert by[rust].base_median == pytest.approx(0.5, rel=0.05)  # in units of the reference
    assert by[rust_grad].regression and by[rust_grad].ratio == pytest.approx(1.3, rel=0.05)
    assert by[rust_grad].ci95[0] < 1.3 < by[rust_grad].ci95[1] or by[rust_grad].ci95[0] > 1.03
    reasons = {n.case: n.reason for n in report.not_compared}
    assert reasons[ELBO] == "the normalization reference itself"
    assert reasons[big].startswith("no reference (numpy elbo float64 B=4096)")
    assert any("different machines" in n for n in report.notices)
    assert report.failed


def test_normalize_by_another_reference():
    rng = np.random.default_rng(17)
    rust = Case("elbo", "rust", batch=128)
    base = make_run([ok(ELBO, noisy(rng, 100e3)), ok(rust, noisy(rng, 50e3))], cpu="A")
    head = make_run([ok(ELBO, noisy(rng, 300e3)), ok(rust, noisy(rng, 100e3))], cpu="B")
    report = compare(base, head, reference=Reference.parse("rust:elbo"))
    (c,) = report.comparisons
    assert c.case == ELBO and c.ratio == pytest.approx(1.5, rel=0.05)
    with pytest.raises(CompareError, match="BACKEND"):
        Reference.parse("rust::")


def test_normalize_without_any_reference_is_an_error():
    rng = np.random.default_rng(8)
    rust = Case("elbo", "rust", batch=128)
    base = make_run([ok(rust, noisy(rng, 5e4))], cpu="A")
    head = make_run([ok(rust, noisy(rng, 5e4))], cpu="B")
    with pytest.raises(CompareError, match="--normalize needs the numpy elbo case"):
        compare(base, head, reference=Reference())


def test_a_large_slowdown_that_is_too_noisy_is_not_a_regression_but_is_flagged():
    rng = np.random.default_rng(10)
    base = make_run([ok(ELBO, noisy(rng, 1e5, 7, sigma=0.4))])
    head = make_run([ok(ELBO, noisy(rng, 1.25e5, 7, sigma=0.4))])
    report = compare(base, head)
    c = report.comparisons[0]
    if c.verdict is Verdict.NOISY and c.ratio > 1.1:
        assert any("too noisy to tell" in n for n in report.notices)
    assert not c.regression or c.ci95[0] > 1.03


def test_pooled_rounds_that_disagree_are_too_noisy_to_tell():
    """Runs of one side differing more than the sides do: the machine moved, not the code."""
    rng = np.random.default_rng(14)

    def side(medians):
        return pool_rounds([make_run([ok(ELBO, noisy(rng, m, 15, 0.01))], run_id=str(m)) for m in medians])

    # pooled head is 15% slower and tight within each run, but one base round was as slow as head
    report = compare(side([100e3, 100e3, 130e3]), side([125e3, 125e3, 125e3]))
    c = report.comparisons[0]
    assert c.ratio > 1.1 and c.verdict is Verdict.NOISY and not c.regression
    assert any("not consistently across them" in n for n in report.notices)
    # the same slowdown seen in every round is a regression
    report = compare(side([100e3, 101e3, 99e3]), side([125e3, 126e3, 124e3]))
    assert report.comparisons[0].regression


def test_software_differences_are_noticed():
    rng = np.random.default_rng(11)
    base = make_run([ok(ELBO, noisy(rng, 1e5))])
    head = make_run([ok(ELBO, noisy(rng, 1e5))], software={"numpy": "2.1"})
    assert "numpy differs: base 2.0, head 2.1" in compare(base, head).notices


# ----------------------------------------------------------------------------- rendering


def _report(regress: bool = True):
    rng = np.random.default_rng(12)
    broken = Case("iwae", "numpy", batch=128)
    base = make_run([ok(ELBO, noisy(rng, 100e3)), ok(GRAD, noisy(rng, 1.5e6)), ok(broken, noisy(rng, 1e5))])
    head = make_run(
        [ok(ELBO, noisy(rng, 130e3 if regress else 100e3)), ok(GRAD, noisy(rng, 1.5e6)),
         Measurement(broken, "failed", "worker died: SIGSEGV | core dumped <script>")],
        commit="def456",
    )  # fmt: skip
    return compare(base, head)


def test_markdown_report():
    md = compare_report(_report())
    lines = md.splitlines()
    assert lines[0].startswith("### ❌ elbolab gate: FAIL: 1 regression(s) and 1 broken case(s)")
    assert "| case | base | head | ratio (95% CI) | change | verdict |" in lines
    row = next(ln for ln in lines if ln.startswith("| elbo numpy"))
    assert "REGRESSION" in row and "+3" in row and "100 µs" in row
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 6
    assert "1.5 ms" in md
    assert "<details><summary>Not compared (1)</summary>" in md
    assert "worker died: SIGSEGV \\| core dumped &lt;script&gt;" in md  # a pipe cannot break the table
    assert "- base: abc123, run r" in md and "- head: def456, run r" in md


def test_markdown_report_of_a_pass():
    rng = np.random.default_rng(13)
    doc = make_run([ok(ELBO, noisy(rng, 1e5))])
    md = compare_report(compare(doc, doc))
    assert md.startswith("### ✅ elbolab gate: PASS: no regression in 1 compared case(s) (1 same)")
    assert "Not compared" not in md


def test_terminal_report():
    console = Console(file=io.StringIO(), record=True, width=200, color_system=None)
    print_compare(_report(), console)
    text = console.export_text()
    assert "REGRESSION" in text and "BROKEN" in text and "FAIL: 1 regression(s)" in text
    assert "elbo numpy cpu float64 B=128 t=1" in text


def test_report_is_a_frozen_value():
    report = _report(regress=False)
    with pytest.raises(AttributeError):
        report.rule = Rule()  # type: ignore[misc]
    assert replace(report, notices=()).comparisons == report.comparisons


def test_interleaved_ab_runs_are_judged_by_their_worker_pairs():
    """An A/A whose processes differ by a few percent each: pooled samples call one side slower;
    the runs of an interleaved A/B are judged by their pairs, and say it cannot tell (or same)."""
    from elbolab.analyse.compare import INTERLEAVED_PAIRS, PAIRED_CONFIDENCE
    from elbolab.model.stats import paired_ratio_interval

    rng = np.random.default_rng(11)
    offsets = [1.08, 0.93, 1.06, 0.95, 1.10, 0.97, 1.04, 0.99]  # head's process offset in each of 8 pairs
    base_pairs = [100.0 * np.exp(rng.normal(0, 0.01, 12)) for _ in offsets]
    head_pairs = [100.0 * o * np.exp(rng.normal(0, 0.01, 12)) for o in offsets]

    def run(pairs, run_id, paired):
        m = Measurement(ELBO, "ok", loops=1, samples_ns=tuple(np.concatenate(pairs)), first_call_ns=1,
                        rounds=tuple(len(p) for p in pairs))  # fmt: skip
        r = make_run([m], run_id=run_id)
        return replace(r, config={"ab": {"mode": INTERLEAVED_PAIRS}}) if paired else r

    pooled = compare(run(base_pairs, "b", False), run(head_pairs, "h", False), rule=Rule(0.05))
    paired = compare(run(base_pairs, "b", True), run(head_pairs, "h", True), rule=Rule(0.05))
    (p,) = paired.comparisons
    medians = [np.median(x) for x in base_pairs], [np.median(x) for x in head_pairs]
    want = paired_ratio_interval(*medians, PAIRED_CONFIDENCE)
    assert p.judgement.ci95 == pytest.approx(want.ci95) and p.ratio == pytest.approx(want.value)
    assert (
        pooled.comparisons[0].judgement.ci95[1] - pooled.comparisons[0].judgement.ci95[0]
        < p.ci95[1] - p.ci95[0]
    )
    assert not p.regression and p.verdict is not Verdict.SLOWER


def _separate_run(rng, run_id: str, cell_drift: dict, stray: float, changed: dict | None = None):
    """One run of 6 backends and NumPy's null control in 4 cells: each cell moved by its drift, each
    backend by its own log-normal stray (what the 2-core VM does to separate runs), `changed`
    (backend, batch) -> factor on top."""
    from elbolab.model.backend import control_name

    ms = []
    for batch, drift in cell_drift.items():
        for i, backend in enumerate(
            ("numpy", control_name("numpy"), "rust", "numba", "torch", "rust-inner", "jax")
        ):
            base = 1e5 * (1 + i / 3)
            f = drift * math.exp(rng.normal(0, stray)) * (changed or {}).get((backend, batch), 1.0)
            m = ok(Case("elbo", backend, batch=batch), noisy(rng, base * f, n=16, sigma=0.02))
            ms.append(replace(m, rounds=(2,) * 8))  # 8 interleaved rounds of 2 samples, as a cell takes
    return make_run(ms, run_id=run_id)


def test_separate_runs_are_widened_by_their_cells_drift_and_spread():
    """A/A: cells drifting 0.6-1.6x between the runs and backends straying from their cell by 12%
    (sigma) give no confident verdict; a backend 2x slower in one cell of the head run is still
    found slower there, and only there."""
    rng = np.random.default_rng(5)
    drift_a = {1: 1.0, 128: 1.0, 1024: 1.0, 8192: 1.0}
    drift_b = {1: 0.6, 128: 1.6, 1024: 1.25, 8192: 0.85}
    base = _separate_run(rng, "a", drift_a, 0.12)
    confident = 0
    for seed in range(5):
        head = _separate_run(np.random.default_rng(100 + seed), f"b{seed}", drift_b, 0.12)
        got = compare(base, head, allow_missing=True)
        confident += sum(c.judgement.verdict in (Verdict.SLOWER, Verdict.FASTER) for c in got.comparisons)
        assert any("strayed" in n for n in got.notices)
    assert confident <= 1  # of 5 x 28 cases
    head = _separate_run(np.random.default_rng(7), "c", drift_b, 0.12, changed={("rust", 1024): 2.0})
    got = compare(base, head, allow_missing=True)
    found = {c.case.backend + str(c.case.batch): c.judgement.verdict for c in got.comparisons}
    assert found["rust1024"] is Verdict.SLOWER
    assert sum(v is Verdict.SLOWER for v in found.values()) == 1
