"""Report tables, claims, HTML and CLI, checked against the fixed fixture tests/data/run_fixture.json."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from elbolab.analyse.control import control_noise
from elbolab.analyse.table import KEY_FIELDS, measurement_table, summary_table
from elbolab.analyse.verdict import DEFAULT_NOISE_BAND, DEFAULT_THRESHOLD, verdict_of
from elbolab.cli.reports import add_commands
from elbolab.model.errors import UsageError
from elbolab.model.measurement import Measurement
from elbolab.model.stats import median_ci_ranks, paired_ratio_interval
from elbolab.report.claims import NOT_MEASURED, Outcome, check_claims
from elbolab.report.html import build_views, render
from elbolab.report.tables import LoadedRun, write_exports
from elbolab.store.results import Run, load, save

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "run_fixture.json"
EVIL = "<script>alert(1)</script>"


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    args = parser.parse_args(list(argv))
    return args.func(args)


def keep(run: Run, predicate) -> Run:
    return replace(run, measurements=tuple(m for m in run.measurements if predicate(m)))


@pytest.fixture(scope="module")
def doc() -> Run:
    return load(FIXTURE)


@pytest.fixture(scope="module")
def table(doc) -> pd.DataFrame:
    return measurement_table(doc, label="fixture")


@pytest.fixture(scope="module")
def report(doc, tmp_path_factory) -> Path:
    """The CLI's report of a part of the fixture (elbo and vae_step, plus every case that is not ok),
    to keep the tests quick; the browser tests render the whole fixture."""
    part = keep(doc, lambda m: m.case.workload in ("elbo", "vae_step") or m.status != "ok")
    folder = tmp_path_factory.mktemp("report")
    save(folder / "part.json", part)
    out = folder / "fixture.html"
    assert cli("report", str(folder / "part.json"), "-o", str(out)) == 0
    return out


def raw_per_call(m: Measurement) -> np.ndarray:
    return np.asarray(m.samples_ns, dtype=float) / m.loops


def test_fixture_is_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("make_fixture", DATA / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert json.loads(FIXTURE.read_text()) == json.loads(json.dumps(module.build()))


def test_every_measurement_is_a_row_in_file_order(doc, table):
    assert len(table) == len(doc.measurements)
    assert list(table["backend"]) == [m.case.backend for m in doc.measurements]
    assert list(table["m"]) == list(doc.measurements)  # each row keeps its measurement


def test_medians_and_cis_equal_statistics_of_the_raw_samples(doc, table):
    for row in table[table.n > 0].itertuples():
        x = np.sort(raw_per_call(row.m))
        lo, hi = median_ci_ranks(x.size)
        assert row.median_ns == pytest.approx(np.median(x), rel=1e-12)
        assert (row.ci_lo_ns, row.ci_hi_ns) == pytest.approx((x[lo - 1], x[hi - 1]), rel=1e-12)
        assert row.min_ns == pytest.approx(x[0])


def test_speedups_are_judged_on_paired_rounds_widened_by_the_null_control(doc, table):
    """Every speed-up is the Hodges-Lehmann estimate over the cell's paired round medians, its
    signed-rank interval widened by the cell's null control, and the one rule's verdict on it."""
    noise = control_noise(list(doc.measurements))
    assert noise.run is not None and len(noise.cells) == 80  # numpy-control in every numpy cell
    checked = 0
    for _, group in table.groupby(list(KEY_FIELDS)):
        base = group[(group.backend == "numpy") & (group.device == "cpu")]
        if base.empty or base.iloc[0].status != "ok":
            continue
        bm = base.iloc[0]["m"]
        for row in group[(group.status == "ok") & (group.backend != "numpy")].itertuples():
            est = paired_ratio_interval(bm.round_medians, row.m.round_medians)
            d = 0.0 if row.backend == "numpy-control" else noise.for_case(bm.case)
            lo, hi = est.ci95[0] * math.exp(-d), est.ci95[1] * math.exp(d)
            assert row.speedup == pytest.approx(1 / est.value, rel=1e-12)
            assert (row.speedup_lo, row.speedup_hi) == pytest.approx((1 / hi, 1 / lo), rel=1e-12)
            assert row.speedup_lo <= row.speedup <= row.speedup_hi
            assert row.verdict == verdict_of((lo, hi), DEFAULT_THRESHOLD, DEFAULT_NOISE_BAND).value
            # a Hodges-Lehmann estimate lies among the rounds' own ratios
            rounds = np.asarray(bm.round_medians) / np.asarray(row.m.round_medians)
            assert rounds.min() <= row.speedup * (1 + 1e-12) and row.speedup <= rounds.max() * (1 + 1e-12)
            checked += 1
    assert checked > 300


def test_achieved_bandwidth_and_flops_come_from_the_cost_model(doc, table):
    for row in table[table.n > 0].itertuples():
        cost = row.m.cost
        assert row.gb_per_s == pytest.approx(cost.bytes / row.median_ns, rel=1e-12)
        assert row.gflop_per_s == pytest.approx(cost.flops / row.median_ns, rel=1e-12)


def test_failed_incorrect_implausible_timeout_skipped_are_shown_with_reasons_and_never_compared(table):
    bad = table[table.status != "ok"]
    assert sorted(bad.status) == ["failed", "implausible", "incorrect", "skipped", "timeout"]
    assert bad.reason.str.len().min() > 5
    assert bad.speedup.isna().all()
    assert (bad.speedup_note.str.contains("not compared")).all()
    # the incorrect case was timed (and fast): it still has a median but no speed-up
    incorrect = bad[bad.status == "incorrect"].iloc[0]
    assert incorrect.n > 0 and math.isnan(incorrect.speedup)


def test_no_invalid_or_implausible_backend_ever_wins(doc, table):
    summary = summary_table(table)
    invalid = table[(table.status != "ok") | table.implausible]
    for row in invalid.itertuples():
        key = summary
        for f in KEY_FIELDS:
            key = key[key[f] == getattr(row, f)]
        assert (key.winner != row.label).all()
    assert (summary.winner != "").all()


def test_baseline_that_is_not_ok_gives_no_speedups(doc):
    target = next(m for m in doc.measurements if m.case.backend == "numpy" and m.case.batch == 128)
    failed = Measurement(target.case, "failed", "MemoryError")
    bad = replace(doc, measurements=tuple(failed if m is target else m for m in doc.measurements))
    df = measurement_table(bad)
    mask = np.ones(len(df), dtype=bool)
    for f in KEY_FIELDS:
        mask &= (df[f] == getattr(target.case, f)).to_numpy()
    group = df[mask]
    assert len(group) > 2 and group.speedup.isna().all()
    assert group.speedup_note.str.contains("baseline numpy is failed").all()


def test_a_time_beyond_the_measured_bandwidth_is_flagged(table):
    flagged = table[table.implausible]
    assert list(flagged.backend) == ["rust-inner"] and list(flagged.batch) == [1]
    assert flagged.iloc[0].status == "implausible"  # judged by the runner, its reason shown
    assert "measurement error" in flagged.iloc[0].plausibility


def test_csv_and_markdown_exports(doc, table, tmp_path):
    summary = summary_table(table)
    csv, cases = write_exports(table, summary, "numpy", tmp_path / "t")
    back = pd.read_csv(csv)
    assert len(back) == len(table)
    np.testing.assert_allclose(back.median_ns.to_numpy(), table.median_ns.to_numpy(), rtol=1e-12)
    text = cases.read_text()
    assert cases.name == "t.cases.md"
    assert "| workload |" in text and "speed-up [95% CI]" in text
    assert "no result within 120 s" in text  # reasons of the non-ok cases are in the tables


def test_claims_cover_c1_to_c9_with_verdicts(doc, table):
    checks = check_claims(table, doc)
    assert [c.id for c in checks] == ["C1", "C2", "C3", "C4", "C5", "C6a", "C6b", "C7", "C8", "C9"]
    by_id = {c.id: c for c in checks}
    assert all(c.verdict and c.plausibility and c.as_published for c in checks)
    assert by_id["C4"].plausibility.endswith("a measurement error, not a speed-up")  # 3.6 us for 1.7 MB
    assert "plausible" in by_id["C1"].plausibility
    # the fixture's Rust is at most 17x NumPy (rust-inner at batch 1): looked for at every batch and
    # calling convention, and the largest named
    c5 = by_id["C5"]
    assert c5.outcome is Outcome.DOES_NOT_HOLD
    assert c5.verdict.startswith(
        "does not hold at any batch or Rust calling convention measured: the largest is rust-inner"
    )
    assert c5.summary.startswith(
        "does not hold: at batch 128: rust-inner 2.4x, rust 2.35x; at most 16.7x (rust-inner, batch 1)"
    )
    assert by_id["C9"].verdict.startswith(NOT_MEASURED) and by_id["C9"].outcome is Outcome.NOT_MEASURED


def test_claims_for_cases_missing_from_the_run_say_how_to_measure(doc):
    partial = keep(doc, lambda m: m.case.backend == "numpy")
    checks = {c.id: c for c in check_claims(measurement_table(partial), partial)}
    assert checks["C4"].verdict == NOT_MEASURED
    assert any(
        cmd.startswith("elbolab run --backend rust-inner --workload elbo") for cmd in checks["C4"].commands
    )
    assert checks["C3"].verdict == NOT_MEASURED
    assert any("--device cuda" in cmd for cmd in checks["C3"].commands)


def test_html_escapes_every_string_from_the_results(report):
    page = report.read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page.lower()  # the page has no script at all
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page


def test_html_is_self_contained(report):
    page = report.read_text()
    attrs = re.findall(r"""\b(?:src|href|xlink:href|action|data)\s*=\s*["']([^"']*)["']""", page, flags=re.I)
    assert attrs, "expected some internal links"
    assert not [a for a in attrs if not a.startswith("#")], "only in-page links allowed"
    assert "http" not in " ".join(attrs)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page), "no CSS fetches"
    assert "@import" not in page and "<link" not in page.lower() and "<iframe" not in page.lower()


def test_html_has_the_matrix_first_then_problems_claims_plots_and_metadata(report):
    page = report.read_text()
    order = [
        page.index(s)
        for s in (
            'id="matrix"',
            'id="problems"',
            'id="claims"',
            'id="plots"',
            'id="training"',
            'id="details"',
            'id="machine"',
        )
    ]
    assert order == sorted(order)
    assert page.count("<svg") >= 6  # time per workload (elbo, vae_step), bandwidth, roofline, noise, training
    assert "Training on sklearn digits 8x8" in page
    assert "numba not installed" in page  # a failed training entry is shown with its reason
    assert "rust-inner does not implement workload vae_step" in page
    assert "0123456789abcdef" in page and "Fixture GPU 80GB" in page
    assert "C9" in page and "bandwidth bound" in page


def test_report_writes_csv_and_markdown_next_to_the_html(report):
    assert report.with_suffix(".csv").exists() and report.with_suffix(".md").exists()


def test_two_results_files_show_the_change_not_side_by_side(doc, tmp_path):
    doc = keep(doc, lambda m: m.case.workload in ("elbo", "elbo_grad"))
    other = replace(
        doc,
        run_id="second-run",
        machine=dict(doc.machine, hostname="second-machine", cpu="Other CPU"),
        limits=dict(doc.limits, memory_bandwidth_bytes_per_s=60e9),
        measurements=tuple(
            replace(m, samples_ns=tuple(2 * s for s in m.samples_ns)) for m in doc.measurements
        ),
    )
    runs = [LoadedRun(EVIL, "a.json", doc), LoadedRun("fedcba98 2024-06-02 12:00", "b.json", other)]
    page = render(build_views(runs, with_plots=False))
    assert "Side by side" not in page
    change = page[page.index('id="change"') : page.index('id="top-problems"')]
    # different CPUs: every time divided by the numpy elbo reference of its own run, so a uniform 2x
    # slow-down of the whole machine is no change
    assert "Different CPUs" in change and "normalized" in change
    # (two separate runs: compare widens every interval by the drift between them, so not 'same')
    assert re.search(r"PASS: no regression in \d+ compared case\(s\)", change)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in change and "fedcba98 2024-06-02 12:00" in change
    # metadata of both runs, labelled by their labels (never by hostname)
    assert "second-machine" in page and "Other CPU" in page and "Synthetic CPU" in page
    assert ">second-machine<" not in page.replace('<td class="wrap">second-machine</td>', "")
    assert "60 GB/s" in page and "30 GB/s" in page
    assert "<script" not in page.lower()


def test_cli_report_on_two_files(tmp_path, doc):
    iwae = [m for m in doc.measurements if m.case.workload == "iwae"][:30]
    small = replace(doc, measurements=tuple(iwae))
    save(tmp_path / "a.json", small)
    save(tmp_path / "b.json", replace(small, training=()))
    out = tmp_path / "two.html"
    assert (
        cli(
            "report", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(out), "--baseline", "rust"
        )
        == 0
    )
    page = out.read_text()
    assert "speed-up over rust" in page and "b.json" in page
    assert 'id="change"' in page and "Same CPU" in page  # the second file compared with the first
    assert "01234567 2024-06-01 12:00 (2)" in page  # the same run twice: labels kept apart


def test_cli_user_errors_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="no such results file"):
        cli("report", str(tmp_path / "missing.json"), "-o", str(tmp_path / "r.html"))
    with pytest.raises(UsageError, match="baseline backend 'nope'"):
        cli("report", str(FIXTURE), "-o", str(tmp_path / "r.html"), "--baseline", "nope")
    with pytest.raises(UsageError, match="ending in .html"):
        cli("report", str(FIXTURE), "-o", str(tmp_path / "r.pdf"))
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text(FIXTURE.read_text()[:500])
    with pytest.raises(UsageError, match="not valid JSON"):
        cli("claims", str(corrupt))


@pytest.fixture(scope="module")
def claims_file(doc, tmp_path_factory) -> Path:
    """The fixture at the claims' batch only (what the claims read), to keep the CLI tests quick."""
    small = keep(doc, lambda m: m.case.batch == 128)
    path = tmp_path_factory.mktemp("claims") / "b128.json"
    save(path, small)
    return path


def test_cli_claims_prints_the_table(capsys, claims_file):
    assert cli("claims", str(claims_file)) == 0
    out = capsys.readouterr().out
    for cid in ("C1", "C5", "C9"):
        assert cid in out
    assert "does not hold" in out


def test_cli_claims_json(capsys, claims_file):
    assert cli("claims", str(claims_file), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "elbolab.claims/1"
    assert [c["id"] for c in data["runs"][0]["claims"]][:2] == ["C1", "C2"]


def test_exports_escape_what_a_results_file_carries(tmp_path):
    from elbolab.model.case import Case
    from tests.builders import make_run, ok

    evil = '=HYPERLINK("http://x")'
    run = make_run(
        [
            ok(Case("elbo", "numpy"), [1e5] * 9),
            ok(Case("elbo", evil), [2e5] * 9),
            Measurement(Case("elbo", "@SUM(A1)"), "failed", "<img src=x onerror=alert(1)> | -2+3"),
        ]
    )
    table = measurement_table(run, label="+cmd")
    csv_path, md_path = write_exports(table, summary_table(table), "numpy", tmp_path / "t")
    csv_text = csv_path.read_text()
    assert "'=HYPERLINK" in csv_text and "'@SUM(A1)" in csv_text and "'+cmd" in csv_text
    assert "\n=" not in csv_text and ",=" not in csv_text and ",@" not in csv_text
    md_text = md_path.read_text()
    assert "<img" not in md_text and "&lt;img src=x onerror=alert(1)&gt; \\| -2+3" in md_text


def test_the_report_draws_each_cases_history_from_the_store(doc, tmp_path, capsys):
    """Three runs of the fixture ingested at three commits, rust 1.6x slower at the last: the report
    of the last, reading the store, gives each case a sparkline over the three commits and rust's
    the slow-down; --store none gives none."""
    from elbolab.store.database import Store

    url = f"sqlite:///{tmp_path / 'history.sqlite'}"
    runs = []
    for k, (sha, factor) in enumerate((("a" * 40, 1.0), ("b" * 40, 1.0), ("c" * 40, 1.6))):
        ms = tuple(replace(m, samples_ns=tuple(s * factor for s in m.samples_ns)) if m.case.backend == "rust" else m
                   for m in doc.measurements)  # fmt: skip
        runs.append(replace(doc, run_id=f"hist-{k}", started=f"2024-06-0{k + 1}T12:00:00+00:00",
                            git=replace(doc.git, commit=sha), measurements=ms))  # fmt: skip
    with Store.open(url) as store:
        for run in runs:
            store.ingest(run)
    save(tmp_path / "last.json", runs[-1])
    out = tmp_path / "r.html"
    assert cli("report", str(tmp_path / "last.json"), "-o", str(out), "--store", url) == 0
    page = out.read_text()
    assert "3 commits with runs" in page
    rust = page[page.index("<h3>elbo f64 B=128 t=1 rust <") :]
    rust = rust[: rust.index("</div>")]
    assert '<svg class="spark"' in rust
    before, after = re.search(
        r"history over 3 commits \(aaaaaaa to ccccccc\): ([\d.]+) µs to ([\d.]+) µs", rust
    ).groups()
    assert float(after) / float(before) == pytest.approx(1.6, rel=0.05)
    assert cli("report", str(tmp_path / "last.json"), "-o", str(out), "--store", "none") == 0
    assert '<svg class="spark"' not in out.read_text()
