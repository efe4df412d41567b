"""The HTML report's structure: the speed-up matrix, problems, changes between runs, plots and size.

Checked without a browser (tests/test_report_browser.py renders the page in Chromium): matrix cells
against the measurement table and the shared verdict, skips grouped by reason, anomalies grouped by
kind, the machine's health, accuracy, instruction counts and the CUDA clock beside the time, thread
scaling against the shared ratio estimate, several runs shown as a change computed by
elbolab.analyse.compare, one colour per backend across every figure, legends clear of the axes, shared y
ranges, and the size of the default report of the 720-case reference run.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.text import Text

from elbolab.analyse.anomalies import scan
from elbolab.analyse.table import measurement_table, summary_table
from elbolab.analyse.verdict import Verdict, judge
from elbolab.model.case import Case
from elbolab.model.measurement import Check, InstructionCounts, Measurement, correct_digits
from elbolab.report import plots
from elbolab.report.format import accuracy_text
from elbolab.report.html import (
    build_views,
    fmt_speed,
    problems,
    render,
    speed_colour,
    speedup_matrices,
)
from elbolab.report.tables import LoadedRun
from elbolab.store.results import load
from tests.builders import make_run, noisy, ok

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "run_fixture.json"
REFERENCE = ROOT / "results" / "reference-2core.json"
MAX_BYTES = 1_000_000


# ------------------------------------------------------------------------------ page parsing


class _Series(HTMLParser):
    """Colours of every element tagged data-backend (SVG series and matrix swatches), with what is
    inside it; works on the page as written and on a browser's serialized DOM."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[dict] = []  # {backend, device, colours, dashed, svg}
        self._open: dict | None = None
        self._depth = 0
        self._svg = 0

    def _colours(self, attrs: dict) -> list[str]:
        style = attrs.get("style") or ""
        out = re.findall(r"(?:fill|stroke|background|border-color)\s*:\s*(#[0-9a-fA-F]{6})", style)
        return [c.lower() for c in out if c.lower() not in ("#ffffff", "#000000")]

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg":
            self._svg += 1
        if self._open is not None:
            self._depth += 1
            self._open["colours"] += self._colours(a)
            self._open["dashed"] |= tag == "path" and "stroke-dasharray" in (a.get("style") or "")
        elif "data-backend" in a:
            self._open = {"backend": a["data-backend"], "device": a.get("data-device", "cpu"),
                          "colours": self._colours(a), "dashed": False, "svg": self._svg,
                          "tag": tag}  # fmt: skip
            self._depth = 1
            self.found.append(self._open)

    def handle_startendtag(self, tag, attrs):
        if self._open is not None:
            a = dict(attrs)
            self._open["colours"] += self._colours(a)
            self._open["dashed"] |= tag == "path" and "stroke-dasharray" in (a.get("style") or "")
        elif "data-backend" in dict(attrs):
            self.handle_starttag(tag, attrs)
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if self._open is not None:
            self._depth -= 1
            if self._depth == 0:
                self._open = None


def series_colours(page: str) -> tuple[dict[str, set[str]], list[dict]]:
    """{backend: the colours its tagged elements use, over every figure and the matrix}, and the
    tagged elements themselves; asserts each tagged element uses one colour."""
    parser = _Series()
    parser.feed(page)
    colours: dict[str, set[str]] = {}
    for s in parser.found:
        assert len(set(s["colours"])) == 1, f"{s['backend']} ({s['device']}) drawn in {set(s['colours'])}"
        colours.setdefault(s["backend"], set()).update(s["colours"])
    return colours, parser.found


def assert_one_colour_per_backend(page: str, min_figures: int = 3) -> dict[str, str]:
    colours, found = series_colours(page)
    assert colours, "no tagged series in the page"
    for backend, used in colours.items():
        assert len(used) == 1, f"{backend} has several colours: {used}"
    single = {b: next(iter(c)) for b, c in colours.items()}
    assert len(set(single.values())) == len(single), f"two backends share a colour: {single}"
    figures = {s["svg"] for s in found if s["tag"] != "span"}
    assert len(figures) >= min_figures
    return single


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([\w-]+)"', page)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def doc():
    return load(FIXTURE)


@pytest.fixture(scope="module")
def table(doc):
    return measurement_table(doc, label="fixture")


@pytest.fixture(scope="module")
def fixture_page(doc) -> str:
    """The whole fixture (427 cases, one backend named like a script) with its plots."""
    return render(build_views([LoadedRun("fixture", "run_fixture.json", doc)]))


# ------------------------------------------------------------------------------ the matrix


def test_colour_scale_is_diverging_and_log_symmetric():
    assert speed_colour(1.0)[0] == "#ffffff"
    for s in (1.2, 3, 10, 30, 100):
        faster, slower = speed_colour(s)[0], speed_colour(1 / s)[0]
        rf, gf, _ = (int(faster[i : i + 2], 16) for i in (1, 3, 5))
        rs, gs, _ = (int(slower[i : i + 2], 16) for i in (1, 3, 5))
        assert gf > rf and rs > gs  # faster green, slower red
    # saturates: 30x and 300x look the same, and darker than 3x
    assert speed_colour(30)[0] == speed_colour(300)[0] != speed_colour(3)[0]
    shown = [fmt_speed(x) for x in (52.13, 2.58, 1.0, 0.28, 0.0625)]
    assert shown == ["52x", "2.6x", "1.0x", "0.28x", "0.062x"]


def test_matrix_cells_are_the_tables_speedups_with_the_shared_verdict(table):
    summary = summary_table(table)
    matrices = speedup_matrices(table, summary, "numpy")
    assert [m.title for m in matrices][:2] == ["elbo", "elbo (eps sampled)"]
    assert all(m.setting == "float64, 1 thread" for m in matrices)
    checked = 0
    for m in matrices:
        workload, _, variant = m.title.partition(" (")
        variant = "eps=" + variant.rstrip(")").replace("eps ", "") if variant else "eps=given"
        for row in m.rows:
            for col, cell in zip(m.columns, row.cells, strict=True):
                batch = int(col.removeprefix("B="))
                r = table[(table.workload == workload) & (table.variant == variant) & (table.dtype == "float64")
                          & (table.threads == 1) & (table.batch == batch) & (table.label == row.label)]  # fmt: skip
                if r.empty:
                    assert cell.cls == "none" and cell.text == ""
                    continue
                r = r.iloc[0]
                if r.status in ("incorrect", "failed", "timeout"):
                    assert cell.cls == "bad" and r.status in cell.text and not cell.style
                elif r.status == "skipped":
                    assert cell.cls == "skip" and not cell.style
                elif r.implausible:
                    assert cell.cls == "flag" and "implausible" in cell.text and not cell.style
                elif r.speedup_note == "baseline":
                    assert "base" in cell.cls and not cell.style
                else:
                    v = Verdict(r.verdict)
                    assert cell.text == f"{fmt_speed(r.speedup)} {v.mark}"
                    assert cell.style.startswith(f"background:{speed_colour(r.speedup)[0]}")
                    assert f"[{r.speedup_lo:.3g}, " in cell.title and v.value in cell.title
                    checked += 1
    assert checked > 40


def test_the_incorrect_and_implausible_cases_are_marked_not_coloured(fixture_page):
    cells = re.findall(r'<td class="([^"]*)"( style="[^"]*")? title="([^"]*)">([^<]*)</td>', fixture_page)
    bad = [c for c in cells if c[0] == "bad"]
    flagged = [c for c in cells if c[0] == "flag"]
    assert bad and flagged
    assert all(not c[1] for c in bad + flagged)
    assert any("incorrect" in c[3] for c in bad)
    assert all("implausible" in c[3] and "measurement error" in c[2] for c in flagged)


def test_the_first_section_is_the_matrix_and_then_the_problems(fixture_page):
    ids = section_ids(fixture_page)
    assert ids[:3] == ["matrix", "problems", "claims"]
    assert ids.index("plots") < ids.index("details") < ids.index("machine")
    assert fixture_page.count('<table class="matrix">') >= 5
    # the per-case tables are collapsed, one per workload
    assert re.search(r"<details>\s*<summary>elbo: \d+ measurements", fixture_page)
    assert "<details open" not in fixture_page


# ------------------------------------------------------------------------------ problems


def test_skips_are_grouped_by_reason_and_less_accurate_cases_listed():
    cases = [Case("elbo", "numpy", batch=b) for b in (1, 8, 64)]
    gpu = [
        Measurement(Case("elbo", "torch", "cuda", batch=b), "skipped", "no CUDA device") for b in (1, 8, 64)
    ]
    sloppy = Check(ok=True, worst_output="recon", error_units=40.0, bound_units=900.0, less_accurate=True)
    run = make_run(
        [ok(c, [1e5] * 9) for c in cases]
        + gpu
        + [replace(ok(Case("elbo", "rust", dtype="float64", batch=8), [5e4] * 9), check=sloppy)]
        + [Measurement(Case("elbo", "numba", batch=1), "failed", "<b>boom</b>")]
    )
    p = problems(measurement_table(run))
    assert p["skipped"] == [("no CUDA device", 3, "torch (cuda) ×3")]
    assert p["failures"] == [("elbo eps=given float64 B=1 t=1 numba (cpu)", "failed", "<b>boom</b>")]
    assert len(p["less_accurate"]) == 1 and "less accurate" in p["less_accurate"][0][1]
    page = render(build_views([LoadedRun("r", "r.json", run)], with_plots=False))
    assert "&lt;b&gt;boom&lt;/b&gt;" in page and "<b>boom" not in page
    problems_html = page[page.index('id="problems"') : page.index('id="claims"')]
    assert problems_html.count("no CUDA device") == 1  # one row for the three skips
    assert "Skipped: 3 cases" in problems_html and "Valid but less accurate" in problems_html


# ------------------------------------------------------------------------------ several runs


def _pair(cpu_b: str = "Test CPU 9000", factor: float = 2.0, with_reference: bool = True):
    rng_cases = [Case("elbo", b, batch=n) for b in ("numpy", "rust") for n in (128, 1024)]
    cases = rng_cases if with_reference else [c for c in rng_cases if c.backend != "numpy"]

    def times(c: Case, f: float):
        base = 1e5 if c.backend == "numpy" else 2e4
        return [base * f * (1 + 0.001 * i) for i in range(15)]

    base = make_run([ok(c, times(c, 1.0)) for c in cases], run_id="base-run", commit="aaaa1111")
    head = make_run(
        [ok(c, times(c, factor if c.backend == "rust" else 1.0)) for c in cases],
        cpu=cpu_b,
        run_id="head-run",
        commit="bbbb2222",
    )
    return [
        LoadedRun("aaaa1111 2026-01-01", "a.json", base),
        LoadedRun("bbbb2222 2026-01-02", "b.json", head),
    ]


def test_two_runs_on_one_machine_show_the_change_with_the_shared_verdict():
    page = render(build_views(_pair(factor=2.0), with_plots=False))
    ids = section_ids(page)
    assert ids[:2] == ["change", "matrix"]
    change = page[page.index('id="change"') : page.index('id="matrix"')]
    assert "Same CPU" in change and "FAIL: 2 regression(s)" in change
    # rust got 2x slower: 0.5x as fast as in base, verdict slower, a regression
    assert change.count("0.5x - !") == 2 and "head time / base time 2" in change
    # numpy did not change: 'same'
    assert change.count("1.0x =") == 2
    assert "Side by side" not in page


def test_two_runs_on_different_cpus_are_normalized_and_say_so():
    page = render(build_views(_pair(cpu_b="Other CPU", factor=2.0), with_plots=False))
    change = page[page.index('id="change"') : page.index('id="matrix"')]
    assert "Different CPUs (Test CPU 9000 vs Other CPU)" in change and "divided by the numpy elbo" in change
    assert "0.5x - !" in change


def test_runs_that_cannot_be_compared_get_one_sentence_why():
    page = render(build_views(_pair(cpu_b="Other CPU", with_reference=False), with_plots=False))
    change = page[page.index('id="change"') : page.index('id="matrix"')]
    assert "ran on a different CPU (Other CPU) from aaaa1111 2026-01-01" in change
    assert "cannot be normalized" in change
    assert '<table class="matrix">' not in change


# ------------------------------------------------------------------------------ plots


def test_one_colour_per_backend_in_every_figure_and_the_matrix(fixture_page):
    colours = assert_one_colour_per_backend(fixture_page)
    for backend, (colour, _marker) in plots.PALETTE.items():
        if backend in colours:
            assert colours[backend] == colour
    evil = "<script>alert(1)</script>"
    assert colours[evil] == plots.backend_colour(evil)  # a hashed colour, escaped in the attribute
    _, found = series_colours(fixture_page)
    cuda_lines = [s for s in found if s["device"] == "cuda" and s["tag"] == "g"]
    assert cuda_lines and any(s["dashed"] for s in cuda_lines)
    assert not any(
        s["dashed"] for s in found if s["device"] == "cpu" and s["tag"] == "g" and s["backend"] == "torch"
    )


def test_backend_styles_are_fixed_and_distinct():
    names = [*plots.PALETTE, "jax", "cupy", "mlx"]
    colours = [plots.backend_colour(n) for n in names]
    assert len(set(colours)) == len(colours)
    assert plots.backend_colour("jax") == plots.backend_colour("jax")
    assert plots.backend_style("torch", "cuda")["color"] == plots.backend_style("torch")["color"]
    assert plots.backend_style("torch", "cuda")["linestyle"] == "--"
    assert plots.backend_style("torch", "cuda")["markerfacecolor"] == "white"


@pytest.fixture(scope="module")
def drawn(table, doc):
    """Every figure of the fixture, measured as matplotlib laid it out (before it became SVG)."""
    figures = []
    real = plots._svg

    def keep(fig, salt, tags=None):
        fig.canvas.draw()
        figures.append((salt, fig, _geometry(fig)))
        return real(fig, salt, tags)

    part = table[table.workload.isin(["elbo", "vae_step"])]  # the widest and the narrowest figure
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_svg", keep)
        for w in dict.fromkeys(part.workload):
            plots.time_vs_batch(part, w)
        plots.thread_scaling(part, "elbo")
        plots.bandwidth(part, doc.limits)
        plots.roofline(part, doc.limits)
        plots.distributions(part)
        plots.training_losses(doc.training)
    return figures


def _geometry(fig) -> dict:
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    return {
        "axes": [ax.get_window_extent(renderer) for ax in axes],
        "ylims": [ax.get_ylim() for ax in axes],
        "legends": [lg.get_window_extent(renderer) for lg in fig.legends],
        # what is drawn: each axes with its tick labels, labels and title; the legends; the title
        "texts": [ax.get_tightbbox(renderer) for ax in axes]
        + [t.get_window_extent(renderer) for t in fig.texts + ([fig._suptitle] if fig._suptitle else [])],
        "size": fig.get_size_inches(),
        "fonts": [t.get_fontsize() for t in texts],
        "bbox": fig.bbox,
    }


def test_legends_never_cover_the_axes_and_text_stays_in_the_figure(drawn):
    # a time figure per workload (elbo, vae_step), thread scaling, bandwidth, roofline, noise, training
    assert [salt for salt, _, _ in drawn] == [
        "time-elbo",
        "time-vae_step",
        "threads-elbo",
        "bandwidth",
        "roofline",
        "distributions",
        "training",
    ]
    for salt, _fig, g in drawn:
        for legend in g["legends"]:
            for ax in g["axes"]:
                overlap = legend.intersection(legend, ax)
                assert overlap is None or overlap.width * overlap.height < 1, f"{salt}: legend over axes"
        for t in g["texts"] + g["legends"]:
            assert t.x0 >= -1 and t.y0 >= -1, f"{salt}: text cut off at the left/bottom"
            assert t.x1 <= g["bbox"].width + 1 and t.y1 <= g["bbox"].height + 1, f"{salt}: text cut off"


def test_text_is_legible_at_the_figures_natural_size(drawn):
    for salt, _fig, g in drawn:
        width_in = g["size"][0]
        assert width_in <= plots.MAX_WIDTH + 0.01, f"{salt} is {width_in} in wide: it would be shrunk"
        # at 96 px per inch (CSS), a font of f pt is f * 96 / 72 px: at least 12 px
        assert min(g["fonts"]) * 96 / 72 >= 12, f"{salt}: smallest font {min(g['fonts'])} pt"


def test_facets_of_one_quantity_share_the_y_range(drawn):
    for salt, _fig, g in drawn:
        if salt.startswith(("time-", "bandwidth", "distributions")):
            assert len({tuple(np_round(y)) for y in g["ylims"]}) == 1, f"{salt}: y ranges differ"
        if salt.startswith("threads-"):  # row 1: speed-up, row 2: efficiency, a panel per batch
            half = len(g["ylims"]) // 2
            assert (
                len({tuple(y) for y in g["ylims"][:half]}) == 1
                and len({tuple(y) for y in g["ylims"][half:]}) == 1
            )
        if salt == "training" and len(g["ylims"]) > 2:  # a panel per dtype: the same quantity
            assert tuple(g["ylims"][1]) == tuple(g["ylims"][2])


def np_round(lims) -> tuple:
    return tuple(round(math.log10(abs(v)) if v else 0, 6) for v in lims)


def test_svg_is_compact_and_names_its_series(fixture_page):
    svgs = re.findall(r"<svg.*?</svg>", fixture_page, flags=re.S)
    assert len(svgs) >= 8
    for svg in svgs:
        assert not re.search(r"\d\.\d{3,}", re.sub(r"<text[^>]*>[^<]*</text>", "", svg)), "unrounded number"
        assert "font-family" not in svg and 'id="line2d_' not in svg and "\n" not in svg
        ids = re.findall(r' id="([^"]+)"', svg)
        assert len(ids) == len(set(ids))
    all_ids = re.findall(r' id="([^"]+)"', fixture_page)
    assert len(all_ids) == len(set(all_ids)), "duplicate element ids across the page"


# ------------------------------------------------------------------------------ size and speed


@pytest.mark.slow
def test_the_default_report_of_the_reference_run_is_under_1_mb(tmp_path):
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} not in this checkout")
    run = load(REFERENCE)
    assert len(run.measurements) == 720
    start = time.perf_counter()
    page = render(build_views([LoadedRun("reference", str(REFERENCE), run)]))
    elapsed = time.perf_counter() - start
    size = len(page.encode("utf-8"))
    assert size < MAX_BYTES, f"{size} bytes"
    # a time and a thread-scaling figure per workload (not per workload x variant x kind), and 4 more
    assert page.count("<svg") <= 12
    assert elapsed < 60  # generous: ~10 s on a 2-core machine; tests never assert a tight timing
    assert_one_colour_per_backend(page)


def test_a_run_without_measurements_or_without_the_baseline_still_renders():
    page = render(build_views([LoadedRun("empty", "e.json", make_run([]))]))
    assert 'id="matrix"' in page and "No measurement to compare." in page and "<svg" not in page
    only_rust = make_run([ok(Case("elbo", "rust", batch=b), [1e4] * 9) for b in (1, 8)])
    page = render(build_views([LoadedRun("r", "r.json", only_rust)], with_plots=False))
    matrix = page[page.index('id="matrix"') : page.index('id="problems"')]
    assert matrix.count(">n/a</td>") == 2 and "no numpy measurement to compare with" in matrix


# ------------------------------------------------------------------------------ a run with everything

EVIL = "<b>evil</b>"
PER_CALL = {"Ir": 1_200_000, "Dr": 300_000, "Dw": 100_000, "I1mr": 50, "D1mr": 20_000, "D1mw": 5_000,
            "ILmr": 10, "DLmr": 1_000, "DLmw": 200}  # fmt: skip
HEALTH = {
    "start": {
        "facts": {
            "environment": {"OPENBLAS_CORETYPE": "Haswell"},
            "cores_available": 4,
            "load_average": [0.5, 0.25, 0.125],
            "governor": None,
            "simd": ["avx2", "fma"],
            "blas": [{"internal_api": "openblas", "num_threads": 4}],
            "virtualisation": EVIL,
        },
        "warnings": [
            f"virtual machine ({EVIL}): neighbours on the host can slow it down",
            "OPENBLAS_CORETYPE=Haswell forces OpenBLAS's Haswell kernels",
        ],
    },  # fmt: skip
    "end": {"load_average": [1.9, 1.2, 0.8]},
}


def counts(calls: int = 10) -> InstructionCounts:
    start = {k: 500 for k in PER_CALL}
    segments = [start] + [{k: start[k] + calls * v + i for k, v in PER_CALL.items()} for i in range(3)]
    return InstructionCounts("callgrind", calls, tuple(segments))


def rich_run():
    """elbo float64: numpy (flat with threads) and rust (scales) at 1, 2 and 4 threads and four
    batches, every rust case with a slow first call; torch on CUDA with device events; numba
    counted, not timed; one less accurate case; an oversubscribed case; the machine's health."""
    rng = np.random.default_rng(1)
    fine = Check(ok=True, worst_output="elbo", rel_err=1e-16, error_units=1.5, bound_units=800.0,
                 expected_units=40.0, digits=16.0)  # fmt: skip
    sloppy = Check(ok=True, worst_output="recon", rel_err=5e-13, error_units=40.0, bound_units=900.0,
                   expected_units=5.0, digits=12.3, less_accurate=True)  # fmt: skip
    ms = []
    for batch in (1, 128, 1024, 8192):
        for t in (1, 2, 4):
            per = 2e3 + 40.0 * batch
            m = replace(ok(Case("elbo", "numpy", batch=batch, threads=t), noisy(rng, per)), check=fine)
            if batch == 8192 and t == 2:
                m = replace(m, cpu_ns=int(4e9), wall_ns=int(1e9))
            ms.append(m)
            rust = ok(
                Case("elbo", "rust", batch=batch, threads=t),
                noisy(rng, (5e2 + 10.0 * batch) / (1 + 0.8 * (t - 1))),
            )
            ms.append(
                replace(rust, first_call_ns=int(5e9), check=sloppy if (batch, t) == (1024, 1) else fine)
            )
        host = ok(Case("elbo", "torch", "cuda", batch=batch), noisy(rng, 3e4))
        device = tuple(float(x) * host.loops for x in noisy(rng, 8e3, n=len(host.samples_ns)))
        ms.append(replace(host, device_samples_ns=device, check=fine))
        ms.append(Measurement(Case("elbo", "numba", batch=batch), "ok", loops=0, counts=counts(), check=fine))
    return replace(make_run(ms), health=HEALTH)


@pytest.fixture(scope="module")
def rich():
    run = rich_run()
    return run, render(build_views([LoadedRun("rich", "rich.json", run)]))


def _section(page: str, name: str) -> str:
    start = page.index(f'<section id="{name}"')
    return page[start : page.index("</section>", start)]


def _block(page: str, workload: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of one per-case table, as text."""
    details = _section(page, "details")
    start = details.index(f"<summary>{workload}: ")
    table = details[start : details.index("</table>", start)]
    header = re.findall(r"<th>([^<]*)</th>", table)
    rows = [re.findall(r"<td>([^<]*)</td>", row) for row in re.findall(r"<tr class=[^>]*>(.*?)</tr>", table)]
    return header, rows


def test_thread_scaling_is_the_shared_ratio_over_each_backends_own_one_thread_time():
    run = rich_run()
    table = measurement_table(run)
    sc = plots.thread_scaling_data(table, "elbo")
    assert (sc.dtype, sc.variant) == ("float64", "eps=given")
    assert sc.batches == [128, 8192]  # the batch nearest the log-middle of 1..8192, and the largest
    pts = sc.points
    assert set(pts.backend) == {"numpy", "rust"}  # torch (cuda) ran at one thread, numba was counted
    assert sorted(set(pts.threads)) == [1, 2, 4] and set(pts.batch) == {128, 8192}
    for r in pts[pts.threads > 1].itertuples():
        rows = table[(table.workload == "elbo") & (table.backend == r.backend) & (table.batch == r.batch)]
        one = rows[rows.threads == 1].iloc[0].m
        at = rows[rows.threads == r.threads].iloc[0].m
        j = judge(one.per_call_ns, at.per_call_ns, workload="elbo")
        assert r.speedup == pytest.approx(j.speedup.value) and (r.lo, r.hi) == pytest.approx(j.speedup.ci95)
        assert r.efficiency == pytest.approx(r.speedup / r.threads) and r.verdict == j.verdict.value
    rust4 = pts[(pts.backend == "rust") & (pts.threads == 4) & (pts.batch == 8192)].iloc[0]
    assert 3.0 < rust4.speedup < 3.8 and rust4.verdict == "faster"
    numpy4 = pts[(pts.backend == "numpy") & (pts.threads == 4)]
    assert all(0.9 < s < 1.1 for s in numpy4.speedup)
    svg = plots.thread_scaling(table, "elbo")
    tagged = set(re.findall(r'data-backend="([^"]+)" data-device="cpu"', svg))
    assert tagged == {"numpy", "rust"}
    assert "ideal: speed-up = threads" in svg and "efficiency" in svg
    # one thread count only: nothing to scale
    single = make_run([ok(Case("elbo", b, batch=n), [1e4] * 9) for b in ("numpy", "rust") for n in (1, 128)])
    assert plots.thread_scaling(measurement_table(single), "elbo") is None


def test_the_plots_have_a_thread_scaling_figure_per_workload(rich, fixture_page):
    _, page = rich
    plots_html = _section(page, "plots")
    assert plots_html.count('aria-label="thread scaling: ') == 1  # elbo
    assert plots_html.index('aria-label="time vs batch: elbo"') < plots_html.index(
        'aria-label="thread scaling: elbo"'
    )
    # the fixture: threads 1 and 2 for five backends in every workload
    assert _section(fixture_page, "plots").count('aria-label="thread scaling: ') == 4
    assert_one_colour_per_backend(page, min_figures=3)


def test_anomalies_are_grouped_by_kind_with_their_likely_cause(rich):
    run, page = rich
    found = scan(run)
    kinds = {a.kind for a in found}
    assert {"slow first call", "oversubscribed"} <= kinds
    p = _section(page, "problems")
    total = len(found)
    assert f"Anomalies: {total} in {len(kinds)} kinds" in p
    slow = [a for a in found if a.kind == "slow first call"]
    assert len(slow) == 12 and f"slow first call: {len(slow)}</strong>" in p
    assert p.count(slow[0].likely_cause) == 1  # the cause once for the kind, not once per case
    # many cases: collapsed; one case: listed
    block = p[p.index("slow first call: 12") :]
    assert block.index("<details><summary>the 12 cases</summary>") < block.index(
        "elbo eps=given float64 B=1 t=1 rust (cpu)"
    )
    over = p[p.index("oversubscribed: 1") :]
    assert "elbo eps=given float64 B=8192 t=2 numpy (cpu)" in over[: over.find("</table>")]
    assert "<details>" not in over[: over.find("</table>")]
    assert "CPU time 4.0x wall time" in p


def test_the_machines_warnings_lead_the_problems_and_its_facts_are_in_the_machine_section(rich):
    _, page = rich
    p = _section(page, "problems")
    machine = p.index("The machine")
    assert machine < p.index("No case failed") < p.index("Anomalies")
    assert "2 warnings at the start of the run" in p
    assert "virtual machine (&lt;b&gt;evil&lt;/b&gt;)" in p and "<b>evil" not in page
    assert "OPENBLAS_CORETYPE=Haswell forces" in p
    assert "0.50, 0.25, 0.12 at the start, 1.90, 1.20, 0.80 at the end" in p and "on 4 cores" in p
    m = _section(page, "machine")
    assert "Machine health" in m
    assert "OPENBLAS_CORETYPE=Haswell" in m and "internal_api openblas, num_threads 4" in m
    assert "avx2, fma" in m and "not visible here" in m  # governor None: the system does not show it
    assert 'load average at the end (1, 5, 15 min)</td><td class="wrap">1.90, 1.20, 0.80' in m
    # a run recorded before elbolab doctor says so, once, and has no health table
    old = render(build_views([LoadedRun("old", "o.json", make_run([ok(Case("elbo", "numpy"), [1e4] * 9)]))],
                             with_plots=False))  # fmt: skip
    assert "No machine health recorded" in old and "Machine health" in _section(old, "machine")


def test_accuracy_is_shown_beside_the_median_and_explained(rich):
    _, page = rich
    header, rows = _block(page, "elbo")
    median = header.index("median / call [95% CI]")
    assert header[median + 1] == "correct digits (worst output)"
    acc = [r[median + 1] for r in rows]
    assert acc.count("16.0 (elbo)") == len(rows) - 1
    (sloppy,) = [a for a in acc if a.startswith("⚠")]
    assert sloppy == "⚠ 12.3 (recon) less accurate: 40 u; careful ≤ 5 u, bound 900 u"
    method = _section(page, "method")
    assert "Higham and Mary" in method and "less accurate" in method and "correct decimal digits" in method
    # schema-1 checks recorded only a relative error: digits as elbolab.model.accuracy computes them
    assert correct_digits(Check(ok=True, rel_err=1e-12)) == pytest.approx(12.0)
    assert accuracy_text(Check(ok=True, rel_err=0.0)) == "exact"
    assert accuracy_text(None) == "" and accuracy_text(Check(ok=True)) == ""
    wrong = Check(ok=False, worst_output="z", error_units=5000.0, bound_units=900.0, digits=9.0)
    assert accuracy_text(wrong) == "✗ 9.0 (z) beyond the bound: 5e+03 u; bound 900 u"


def test_instruction_counts_stand_beside_time_and_never_enter_the_matrix_or_plots(rich):
    run, page = rich
    header, rows = _block(page, "elbo")
    for col in ("instructions / call", "est. cycles / call", "L1 / LL misses / call"):
        assert col in header
    i, c, b = header.index("instructions / call"), header.index("est. cycles / call"), header.index("backend")
    numba = [r for r in rows if r[b] == "numba"]
    assert len(numba) == 4
    m = next(x for x in run.measurements if x.counts is not None)
    for r in numba:
        assert r[header.index("median / call [95% CI]")] == "counted, not timed"
        assert r[header.index("verdict")] == "counted: no time to compare"
        assert r[i].startswith("1.2 M") and r[c] == f"{m.counts.estimated_cycles / 1e6:.3g} M"
    others = [r for r in rows if r[b] != "numba"]
    assert all(r[i] == "" for r in others)
    matrix = _section(page, "matrix")
    assert matrix.count(">counted</td>") == 4 and "1.2 M instructions" in matrix
    figures = re.findall(r"<svg.*?</svg>", _section(page, "plots"), flags=re.S)
    assert figures and not any('data-backend="numba"' in f for f in figures)
    # a run of counted cases only: no time anywhere, and the page still renders
    only = make_run([Measurement(Case("elbo", b, batch=n), "ok", counts=counts()) for b in ("numpy", "rust")
                     for n in (1, 128)])  # fmt: skip
    page = render(build_views([LoadedRun("counted", "c.json", only)]))
    assert _section(page, "matrix").count(">counted</td>") == 4 and "<svg" not in page
    # columns that no case in a block needs are left out
    header, _ = _block(render(build_views([LoadedRun("r", "r.json", make_run([ok(Case("elbo", "numpy"), [1e4] * 9)]))],
                                          with_plots=False)), "elbo")  # fmt: skip
    assert "instructions / call" not in header and "device / call (CUDA events) [95% CI]" not in header


def test_cuda_times_say_which_clock_and_give_the_device_median(rich):
    _, page = rich
    header, rows = _block(page, "elbo")
    b, med = header.index("backend"), header.index("median / call [95% CI]")
    dev = header.index("device / call (CUDA events) [95% CI]")
    cuda = [r for r in rows if r[b] == "torch (cuda)"]
    assert len(cuda) == 4
    for r in cuda:
        assert r[med].endswith("(host clock)") and 25 < float(r[med].split()[0]) < 35  # ~30 µs on the host
        # ~8 µs between the CUDA events
        assert r[dev].split()[1] == "µs" and 6 < float(r[dev].split()[0]) < 10
    assert all(r[dev] == "" and "host clock" not in r[med] for r in rows if r[b] != "torch (cuda)")
    matrix = _section(page, "matrix")
    assert "host clock, stopped after torch.cuda.synchronize(); CUDA events: " in matrix
    assert "torch.cuda.synchronize()" in _section(page, "method")
