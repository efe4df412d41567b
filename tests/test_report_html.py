"""The HTML report's structure: the first screen, the speed-up matrix, problems, each case's detail,
changes between runs, plots and size.

Checked without a browser (tests/test_report_browser.py renders the page in Chromium): the run,
machine and resolution lines; problems ranked by how much they matter (incorrect, implausible, then
anomalies by size) and compile time not among them; the claims' one-line verdicts; matrix cells
against the measurement table and the shared verdict, their time and interval printed, ties
outlined as ties, one link each to the case's detail (samples, evidence, history); skips grouped by
reason; the machine's health; accuracy, instruction counts and the CUDA clock in a case's detail;
thread scaling against the shared ratio estimate; several runs shown as a change computed by
elbolab.analyse.compare; one colour per backend across every figure, legends clear of the axes,
time axes in their units, thread ticks at the counts run, empty panels said, shared y ranges; the
Markdown summary under 60,000 characters; and the size of the default report of the reference run.
"""

from __future__ import annotations

import html
import math
import re
import time
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape
from matplotlib.text import Text

from elbolab.analyse.anomalies import scan
from elbolab.analyse.control import control_noise
from elbolab.analyse.table import KEY_FIELDS, measurement_table, summary_table
from elbolab.analyse.verdict import Verdict, judge
from elbolab.model.case import Case
from elbolab.model.measurement import Check, InstructionCounts, Measurement, correct_digits
from elbolab.report import plots, summary
from elbolab.report.claims import check_claims
from elbolab.report.format import accuracy_text, fmt_ns, fmt_x
from elbolab.report.history import CaseHistory, Histories
from elbolab.report.html import (
    build_views,
    fmt_speed,
    render,
    skipped_by_reason,
    speed_colour,
    speedup_matrices,
)
from elbolab.report.matrix import leaders
from elbolab.report.tables import LoadedRun, display_summary
from elbolab.store.database import case_id
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


def _two(v: float) -> str:
    return f"{v:.0f}" if v >= 9.95 else f"{v:.2g}"


def test_matrix_cells_print_the_tables_speedup_time_and_interval_with_the_shared_verdict(doc, table):
    noise = control_noise(list(doc.measurements))
    anchors = {i: f"c{i}" for i in range(len(table))}
    matrices = speedup_matrices(table, "numpy", noise, anchors=anchors)
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
                    assert cell.cls == "none" and cell.text == "" and not cell.href
                    continue
                index, r = r.index[0], r.iloc[0]
                if r.status != "skipped":
                    assert cell.href == f"#c{index}"  # one click to the case's detail
                if r.status in ("incorrect", "failed", "timeout"):
                    assert cell.cls == "bad" and r.status in cell.text and not cell.style
                elif r.status == "skipped":
                    assert cell.cls == "skip" and not cell.style and not cell.href
                elif r.implausible:
                    assert cell.cls == "flag" and "implausible" in cell.text and not cell.style
                    assert cell.sub == f"{fmt_ns(r.median_ns)}: not a speed-up"
                elif r.speedup_note == "baseline":
                    assert "base" in cell.cls and not cell.style and cell.text == fmt_ns(r.median_ns)
                    assert cell.sub == f"{fmt_ns(r.ci_lo_ns)}–{fmt_ns(r.ci_hi_ns)}"  # its interval, printed
                else:
                    v = Verdict(r.verdict)
                    assert cell.text == f"{fmt_speed(r.speedup)} {v.mark}"
                    assert cell.style.startswith(f"background:{speed_colour(r.speedup)[0]}")
                    # the time and the speed-up's interval, printed in the cell, not on hover
                    assert cell.sub == f"{fmt_ns(r.median_ns)} · {_two(r.speedup_lo)}–{_two(r.speedup_hi)}"
                    checked += 1
    assert checked > 40


def test_a_tie_is_outlined_as_a_tie_and_a_sure_winner_alone():
    """Two backends the verdict cannot tell apart are both outlined, dashed ('tie'); one faster than
    every other beyond the noise is outlined alone ('win')."""
    rng = np.random.default_rng(3)
    ms = [ok(Case("elbo", "numpy", batch=b), noisy(rng, 1e5)) for b in (1, 128)]
    ms += [ok(Case("elbo", "rust", batch=b), noisy(rng, 2e4)) for b in (1, 128)]
    ms.append(ok(Case("elbo", "numba", batch=1), noisy(rng, 2e4)))  # a tie with rust at B=1
    ms.append(ok(Case("elbo", "numba", batch=128), noisy(rng, 5e4)))  # beaten by rust at B=128
    table = measurement_table(make_run(ms))
    lead = leaders(table, control_noise(list(ms)))
    tied, one = (lead[k] for k in sorted(lead, key=lambda k: k[KEY_FIELDS.index("batch")]))
    assert tied == ({"rust", "numba"}, True) and one == ({"rust"}, False)
    first = summary_table(table).winner.iloc[0]  # the faster by median of the two, named first
    (m,) = speedup_matrices(table, "numpy", lead=lead)
    cls = {(row.label, c): cell.cls for row in m.rows for c, cell in zip(m.columns, row.cells, strict=True)}
    assert cls[("rust", "B=1")] == cls[("numba", "B=1")] == "sp tie"
    assert cls[("rust", "B=128")] == "sp win" and cls[("numba", "B=128")] == "sp"
    words = display_summary(summary_table(table), "numpy", lead)
    assert list(words.winner) == [f"{first}, {({'rust', 'numba'} - {first}).pop()} (tied)", "rust"]
    assert "sure" not in " ".join(words["how sure"])


def test_the_incorrect_and_implausible_cases_are_marked_not_coloured(fixture_page):
    cells = re.findall(
        r'<td class="([^"]*)"( style="[^"]*")? title="([^"]*)">(?:<a href="#c\d+">)?([^<]*)', fixture_page
    )
    bad = [c for c in cells if c[0] == "bad"]
    flagged = [c for c in cells if c[0] == "flag"]
    assert bad and flagged
    assert all(not c[1] for c in bad + flagged)
    assert any("incorrect" in c[3] for c in bad)
    assert all("implausible" in c[3] and "measurement error" in c[2] for c in flagged)


def test_the_first_screen_is_problems_claims_and_matrix_then_the_rest(fixture_page):
    ids = section_ids(fixture_page)
    assert ids[:5] == ["top-problems", "top-claims", "matrix", "problems", "claims"]
    assert ids.index("plots") < ids.index("details") < ids.index("machine")
    assert fixture_page.count('<table class="matrix">') >= 5
    assert "<details open" not in fixture_page


def test_the_header_gives_the_run_the_machine_and_the_resolution_in_a_line_each(doc, fixture_page):
    head = fixture_page[fixture_page.index("<header>") : fixture_page.index("</header>")]
    lines = re.findall(r'<p class="line"><strong>(\w+)</strong> ([^\n]*)</p>', head)
    assert [k for k, _ in lines] == ["Run", "Machine", "Resolution"]
    run, machine, resolution = (text for _, text in lines)
    # the problems first among the statuses, and the commit
    assert "507 cases: 1 incorrect, 1 implausible, 1 failed, 1 timeout, 502 ok, 1 skipped" in run
    assert "commit 0123456789ab" in run
    # CPU model, cores, caches, memory, virtualised or not, load, GPUs: escaped
    assert machine.startswith(
        "Synthetic CPU &lt;b&gt;bold&lt;/b&gt; &amp; co · 2 cores · last-level cache 32 MiB · 8 GiB memory"
    )
    assert "virtualised (kvm)" in machine and "load 1.2 at the start, 2.5 at the end on 2 cores" in machine
    assert machine.endswith("Fixture GPU 80GB")
    # the resolution: the null control's own interval, not a cited figure
    noise = control_noise(list(doc.measurements))
    lo, hi = noise.run.ci95
    assert f"[{1 / hi:.3g}, {1 / lo:.3g}]" in resolution and "80 cells" in resolution
    x = math.expm1(noise.run_noise)
    assert (f"±{x:.0%}" if x >= 0.01 else f"±{x:.1%}") in resolution


def test_problems_are_ranked_by_how_much_they_matter(doc, fixture_page):
    ranked = summary.problems(doc, scan(doc))
    kinds = [p.kind for p in ranked]
    assert kinds[:4] == ["incorrect", "implausible", "failed", "timeout"]
    slower = [p for p in ranked if p.kind == "slower with more threads"]
    # the fixture's 110x slow-down with 2 threads first among the anomalies, the model's own 1.1x last
    assert slower[0].case.backend == "torch" and slower[0].case.batch == 128 and 100 < slower[0].size < 120
    assert slower[0].what.startswith("110x slower with 2 threads than with 1")
    assert [p.size for p in slower] == sorted((p.size for p in slower), reverse=True)
    assert ranked.index(slower[0]) == 4
    # a compile is not a problem: the first calls are reported in seconds
    assert "slow first call" not in kinds and any(a.kind == "slow first call" for a in scan(doc))
    fc = summary.first_calls(doc.measurements, scan(doc))
    assert fc[0].backend == "numba" and 0.7e9 < fc[0].longest_ns < 0.9e9
    assert "numba " in summary.first_calls_line(fc) and " ms" in summary.first_calls_line(fc)
    # the first screen lists the worst five, each linked to its case
    top = _section(fixture_page, "top-problems")
    items = re.findall(r'<li class="p(\d)"><a href="#c(\d+)">([^<]*)</a>', top)
    assert [int(o) for o, _, _ in items] == [0, 1, 2, 3, 4]
    assert [int(i) for _, i, _ in items] == [p.index for p in ranked[:5]]
    assert "110x slower with 2 threads than with 1" in items[4][2]
    assert "the problems in full" in top  # five: all of them here


def test_the_claims_verdicts_are_on_the_first_screen_one_line_each(doc, table, fixture_page):
    top = _section(fixture_page, "top-claims")
    items = re.findall(r"<li>(.*?)</li>", top)
    checks = check_claims(table, doc)
    assert len(items) == len(checks) == 10
    for item, c in zip(items, checks, strict=True):
        assert f'href="#claim-{c.id}"' in item and c.summary and escape(c.summary) in item
    assert 'id="claim-C5"' in _section(fixture_page, "claims")


def test_every_name_in_the_matrices_is_explained(fixture_page):
    names_html = _section(fixture_page, "matrix")
    listed = dict(re.findall(r"<dt>([^<]*)</dt><dd>([^<]*)</dd>", names_html))
    for row in set(re.findall(r'<span class="sw" data-backend="([^"]*)"', names_html)):
        assert html.unescape(row) in {html.unescape(k) for k in listed}, row
    assert "null control" in listed["numpy-control"] and "looped inside Rust" in listed["rust-inner"]
    assert "eps sampled" in listed and "eps given" in listed


def test_skips_are_grouped_by_reason_and_a_failure_ranks_before_a_less_accurate_answer():
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
    assert skipped_by_reason(measurement_table(run)) == [("no CUDA device", 3, "torch (cuda) ×3")]
    page = render(build_views([LoadedRun("r", "r.json", run)], with_plots=False))
    assert "&lt;b&gt;boom&lt;/b&gt;" in page and "<b>boom" not in page
    problems_html = page[page.index('id="problems"') : page.index('id="claims"')]
    assert problems_html.count("no CUDA device") == 1  # one row for the three skips
    assert "Skipped: 3 cases" in problems_html
    # ranked: the failure before the valid but less accurate answer
    assert problems_html.index("✗ failed") < problems_html.index(
        "valid but less accurate than careful arithmetic"
    )


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
    assert ids[:2] == ["change", "top-problems"]
    change = page[page.index('id="change"') : page.index('id="top-problems"')]
    assert "Same CPU" in change and "FAIL: 2 regression(s)" in change
    # rust got 2x slower: 0.5x as fast as in base, verdict slower, a regression
    assert change.count("0.5x - !") == 2 and "head time / base time 2" in change
    # numpy did not change: 'same'
    assert change.count("1.0x =") == 2
    assert "Side by side" not in page


def test_two_runs_on_different_cpus_are_normalized_and_say_so():
    page = render(build_views(_pair(cpu_b="Other CPU", factor=2.0), with_plots=False))
    change = page[page.index('id="change"') : page.index('id="top-problems"')]
    assert "Different CPUs (Test CPU 9000 vs Other CPU)" in change and "divided by the numpy elbo" in change
    assert "0.5x - !" in change


def test_runs_that_cannot_be_compared_get_one_sentence_why():
    page = render(build_views(_pair(cpu_b="Other CPU", with_reference=False), with_plots=False))
    change = page[page.index('id="change"') : page.index('id="top-problems"')]
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
    """Every figure of the fixture, measured as matplotlib laid it out (before it became SVG): the
    widest (elbo), one with an empty panel (elbo, float32 eps sampled is not measured) and the
    narrowest (vae_step), for every kind of figure."""
    figures = []
    real = plots._svg

    def keep(fig, salt, tags=None):
        fig.canvas.draw()
        figures.append((salt, fig, _geometry(fig)))
        return real(fig, salt, tags)

    part = table[table.workload.isin(["elbo", "vae_step"])]
    part = part[~((part.dtype == "float32") & (part.variant == "eps=sampled"))]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_svg", keep)
        for w in dict.fromkeys(part.workload):
            plots.time_vs_batch(part, w)
        plots.thread_scaling(part, "elbo")
        plots.bandwidth(part, doc.limits)
        plots.roofline(part, doc.limits)
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
        # every legend entry on its own: a cut label ('implausible t') shows here
        "legend_texts": [t.get_window_extent(renderer) for lg in fig.legends for t in lg.get_texts()],
        "size": fig.get_size_inches(),
        "fonts": [t.get_fontsize() for t in texts],
        "bbox": fig.bbox,
        "yticks": [[t.get_text() for t in ax.get_yticklabels() if t.get_text()] for ax in axes],
        "xticks": [[t.get_text() for t in ax.get_xticklabels() if t.get_text()] for ax in axes],
        "titles": [ax.get_title() for ax in axes],
        "panel_texts": [[t.get_text() for t in ax.texts] for ax in axes],
        "empty": [not ax.lines and not ax.collections for ax in axes],
    }


def test_legends_never_cover_the_axes_and_text_stays_in_the_figure(drawn):
    # a time figure per workload (elbo, vae_step), thread scaling, bandwidth, roofline, training
    assert [salt for salt, _, _ in drawn] == [
        "time-elbo",
        "time-vae_step",
        "threads-elbo",
        "bandwidth",
        "roofline",
        "training",
    ]
    for salt, _fig, g in drawn:
        for legend in g["legends"]:
            for ax in g["axes"]:
                overlap = legend.intersection(legend, ax)
                assert overlap is None or overlap.width * overlap.height < 1, f"{salt}: legend over axes"
        for t in g["texts"] + g["legends"] + g["legend_texts"]:
            assert t.x0 >= -1 and t.y0 >= -1, f"{salt}: text cut off at the left/bottom"
            assert t.x1 <= g["bbox"].width + 1 and t.y1 <= g["bbox"].height + 1, f"{salt}: text cut off"


def test_text_is_legible_at_the_figures_natural_size(drawn):
    for salt, _fig, g in drawn:
        width_in = g["size"][0]
        assert width_in <= plots.MAX_WIDTH + 0.01, f"{salt} is {width_in} in wide: it would be shrunk"
        # at 96 px per inch (CSS), a font of f pt is f * 96 / 72 px: at least 12 px
        assert min(g["fonts"]) * 96 / 72 >= 12, f"{salt}: smallest font {min(g['fonts'])} pt"


TIME_TICK = re.compile(r"^\d+(\.\d+)? (ns|µs|ms|s)$")


def test_axes_speak_in_units_and_at_the_counts_run(drawn):
    """Time axes in ns/µs/ms/s (never '100000 µs' or '1e+06'), thread ticks at the thread counts
    measured and speed-ups as '2x' or '1/8' (never 0.0078125)."""
    by = {salt: g for salt, _, g in drawn}
    for salt in ("time-elbo", "time-vae_step"):
        ticks = [t for axis in by[salt]["yticks"] for t in axis]
        assert ticks and all(TIME_TICK.match(t) for t in ticks), ticks
        assert all(float(t.split()[0]) < 1000 for t in ticks)
    threads = by["threads-elbo"]
    assert all(ticks == ["1", "2"] for ticks in threads["xticks"] if ticks)  # the fixture's counts
    speed = [t for axis in threads["yticks"][: len(threads["yticks"]) // 2] for t in axis]
    assert speed and all(re.fullmatch(r"\d+x|1/\d+", t) for t in speed), speed


def test_an_empty_panel_says_it_is_empty(drawn):
    g = dict((salt, g) for salt, _, g in drawn)["time-elbo"]
    empty = [i for i, e in enumerate(g["empty"]) if e]
    assert empty, "the fixture's float32 eps-sampled elbo panel should be empty"
    for i in empty:
        assert g["panel_texts"][i] == ["not measured in float32"], g["titles"][i]
    assert all(not texts for i, texts in enumerate(g["panel_texts"]) if i not in empty)


def test_the_roofline_has_a_panel_per_working_set_size(drawn):
    g = dict((salt, g) for salt, _, g in drawn)["roofline"]
    titles = [t for t in g["titles"] if t]
    assert [t.split(" ")[0] for t in titles] == ["B=1", "B=128", "B=1024", "B=8192"]
    assert "roof: l2" in titles[0] and "roof: dram" in titles[-1]


def test_facets_of_one_quantity_share_the_y_range(drawn):
    for salt, _fig, g in drawn:
        if salt.startswith(("time-", "bandwidth", "roofline")):
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
    # every path's data is numbers and commands (rounding never writes '10' as '1', or a lone '-')
    for d in re.findall(r' d="([^"]*)"', fixture_page):
        assert re.fullmatch(r"([MmLlHhVvCcZzQqSsTtAa]|-?\d+(\.\d+)?|[ ,])*", d), d[:80]
    assert plots._num(10.0, 0) == "10" and plots._num(-10.2, 0) == "-10" and plots._num(12.5, 1) == "12.5"
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
    # a time and a thread-scaling figure per workload (not per workload x variant x kind), and 3 more
    assert page.count('<div class="fig"') <= 11
    # every link has its detail; every case of a headline grid and every problem has one, one click
    # from its cell (the page's budget leaves some of the other settings' cases to the full table)
    details = set(re.findall(r'<div class="case" id="(c\d+)">', page))
    links = set(re.findall(r'href="#(c\d+)"', page))
    assert links == details and len(details) > 400
    headline = re.findall(
        r'<div class="mx">.*?</table>', _section(page, "matrix").split("<details>")[0], flags=re.S
    )
    for m in headline:
        assert m.count("<td") == m.count('<td class="skip"') + m.count('<td class="none"') + m.count(
            '"><a href="#c'
        )
    left = re.search(r"(\d+) cases \(the least important", page)
    assert left is None or int(left.group(1)) + len(details) == sum(
        m.status != "skipped" for m in run.measurements
    )
    assert elapsed < 60  # generous: ~10 s on a 2-core machine; tests never assert a tight timing
    assert_one_colour_per_backend(page)


def test_a_run_without_measurements_or_without_the_baseline_still_renders():
    page = render(build_views([LoadedRun("empty", "e.json", make_run([]))]))
    assert 'id="matrix"' in page and "No measurement to compare." in page and "<svg" not in page
    only_rust = make_run([ok(Case("elbo", "rust", batch=b), [1e4] * 9) for b in (1, 8)])
    page = render(build_views([LoadedRun("r", "r.json", only_rust)], with_plots=False))
    matrix = _section(page, "matrix")
    # no baseline: the cells are times with their intervals, said so, never a row of n/a
    assert ">n/a" not in matrix and "no numpy measured here: times per call, not speed-ups" in matrix
    assert matrix.count("10 µs<small>") == 2


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


def _details(page: str) -> dict[str, tuple[str, str]]:
    """Each case's detail: its title (short case) -> (its facts as text, its id)."""
    out = {}
    for anchor, title, facts in re.findall(r'<div class="case" id="(c\d+)"><h3>([^<]*) <span[^>]*>[^<]*</span></h3>\s*'
                                           r"<p>(.*?)</p>", _section(page, "details"), flags=re.S):  # fmt: skip
        out[html.unescape(title)] = (html.unescape(facts), anchor)
    return out


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


def test_anomalies_are_ranked_by_size_with_their_likely_cause_and_compiles_are_not_among_them(rich):
    run, page = rich
    found = scan(run)
    kinds = {a.kind for a in found}
    assert {"slow first call", "oversubscribed"} <= kinds
    p = _section(page, "problems")
    ranked = summary.problems(run, found)
    assert "slow first call" not in {q.kind for q in ranked}
    # the less accurate answer after the anomaly: valid answers rank last
    assert [q.kind for q in ranked] == ["oversubscribed", "less accurate"]
    over = ranked[0]
    assert over.size == pytest.approx(2.0) and over.what.startswith(
        "2x more CPU time than wall time x 2 thread(s)"
    )
    assert f"{len(ranked)} problems</strong>: 1 oversubscribed, 1 less accurate." in p
    slow = [a for a in found if a.kind == "slow first call"]
    assert (
        p.count(str(escape(slow[0].likely_cause))) == 0 and p.count(str(escape(over.why))) == 1
    )  # once per kind
    # the rust kernels' 5 s first calls, in seconds, as what they are
    assert (
        "Compile and first-call time (timed apart, in no sample; not a problem): rust 12 cases, typically 5 s, up to 5 s."
        in p
    )


def test_the_machines_warnings_lead_the_problems_and_its_facts_are_in_the_machine_section(rich):
    _, page = rich
    p = _section(page, "problems")
    machine = p.index("The machine")
    assert machine < p.index("2 problems")
    assert "2 warnings at the start of the run" in p
    assert "virtual machine (&lt;b&gt;evil&lt;/b&gt;)" in p and "<b>evil" not in page
    assert "OPENBLAS_CORETYPE=Haswell forces" in p
    assert "0.50, 0.25, 0.12 at the start, 1.90, 1.20, 0.80 at the end" in p and "on 4 cores" in p
    m = _section(page, "machine")
    assert "Machine health" in m
    assert "OPENBLAS_CORETYPE=Haswell" in m and "internal_api openblas, num_threads 4" in m
    assert "avx2, fma" in m and "not visible here" in m  # governor None: the system does not show it
    assert 'load average at the end (1, 5, 15 min)</td><td class="wrap">1.90, 1.20, 0.80' in m
    # and in the header's one line: virtualised, the load at the start and the end
    assert "virtualised (&lt;b&gt;evil&lt;/b&gt;) · load 0.5 at the start, 1.9 at the end on 4 cores" in page
    # a run recorded before elbolab doctor says so, once, and has no health table
    old = render(build_views([LoadedRun("old", "o.json", make_run([ok(Case("elbo", "numpy"), [1e4] * 9)]))],
                             with_plots=False))  # fmt: skip
    assert "No machine health recorded" in old and "Machine health" in _section(old, "machine")
    assert "virtualisation not recorded" in old


def test_accuracy_is_in_each_cases_detail_and_explained(rich):
    _, page = rich
    details = _details(page)
    sloppy = details["elbo f64 B=1024 t=1 rust"][0]
    assert "correct digits: ⚠ 12.3 (recon) less accurate: 40 u; careful ≤ 5 u, bound 900 u" in sloppy
    assert "correct digits: 16.0 (elbo)" in details["elbo f64 B=128 t=1 rust"][0]
    text = _section(page, "details")
    assert "Higham and Mary" in _section(page, "method") and "less accurate" in text and "roundoff" in text
    # schema-1 checks recorded only a relative error: digits as elbolab.model.accuracy computes them
    assert correct_digits(Check(ok=True, rel_err=1e-12)) == pytest.approx(12.0)
    assert accuracy_text(Check(ok=True, rel_err=0.0)) == "exact"
    assert accuracy_text(None) == "" and accuracy_text(Check(ok=True)) == ""
    wrong = Check(ok=False, worst_output="z", error_units=5000.0, bound_units=900.0, digits=9.0)
    assert accuracy_text(wrong) == "✗ 9.0 (z) beyond the bound: 5e+03 u; bound 900 u"


def test_each_case_has_its_samples_evidence_and_speed_up_one_click_from_its_cell(rich, doc, fixture_page):
    run, page = rich
    details = _details(page)
    facts, anchor = details["elbo f64 B=128 t=1 rust"]
    table = measurement_table(run)
    r = table[(table.backend == "rust") & (table.batch == 128) & (table.threads == 1)].iloc[0]
    assert f"median {fmt_ns(r.median_ns)} [{fmt_ns(r.ci_lo_ns)}, {fmt_ns(r.ci_hi_ns)}] per call" in facts
    assert f"speed-up {fmt_x(r.speedup, r.speedup_lo, r.speedup_hi)}: {r.verdict}" in facts
    assert f'href="#{anchor}"' in _section(page, "matrix")
    # the strip: a dot per sample (a move per sample in one path), the baseline's median as a bar
    block = page[page.index(f'id="{anchor}"') :]
    svg = block[block.index('<svg class="strip"') : block.index("</svg>")]
    dots = re.search(r'<path class="d" d="([^"]*)"', svg).group(1)
    assert dots.count("h0") == r.n
    assert '<path class="b"' in svg and ">numpy</text>" in svg
    # the fixture: evidence from the run
    facts = _details(fixture_page)["elbo f64 B=128 t=1 rust"][0]
    assert "evidence: 2 input sets, 7 rewrites; 6 calls checked; 1 busy thread on cores 0" in facts
    assert "(timed apart)" in facts


def test_a_cases_history_is_a_sparkline_per_commit():
    """With the history store's series, a case's detail draws its medians per commit, change points
    as dots; one commit only says so."""
    run = rich_run()
    rust = next(m for m in run.measurements if m.case.backend == "rust" and m.case.batch == 128)
    numpy = next(m for m in run.measurements if m.case.backend == "numpy" and m.case.batch == 128)
    commits = tuple(f"{i:040x}" for i in range(6))
    h = Histories("sqlite:///x", "machine", 6, {
        case_id(rust.case): CaseHistory(commits, (1e3, 1e3, 1.01e3, 2e3, 2e3, 2.02e3), (3,)),
        case_id(numpy.case): CaseHistory(commits[-1:], (5e3,), ()),
    })  # fmt: skip
    page = render(build_views([LoadedRun("rich", "rich.json", run)], with_plots=False, histories=h))
    block = page[page.index("<h3>elbo f64 B=128 t=1 rust ") :]
    block = block[: block.index("</div>")]
    assert '<svg class="spark"' in block and block.count("<circle") == 1
    assert "history over 6 commits (0000000 to 0000000): 1 µs to 2.02 µs, 1 change point (dots)" in block
    one = page[page.index("<h3>elbo f64 B=128 t=1 numpy ") :]
    assert "history: this commit only, so far" in one[: one.index("</div>")]
    assert "History: sqlite:///x, machine machine, 6 commits" in page


def test_instruction_counts_stand_beside_time_and_never_enter_the_matrix_or_plots(rich):
    run, page = rich
    details = _details(page)
    m = next(x for x in run.measurements if x.counts is not None)
    for batch in (1, 128, 1024, 8192):
        facts = details[f"elbo f64 B={batch} t=1 numba"][0]
        assert facts.startswith("counted, not timed: 1.2 M instructions")
        assert f"{m.counts.estimated_cycles / 1e6:.3g} M estimated cycles" in facts
    assert all("counted" not in f for title, (f, _) in details.items() if "numba" not in title)
    matrix = _section(page, "matrix")
    assert matrix.count(">counted</a></td>") == 4 and "1.2 M instructions" in matrix
    figures = re.findall(r'<div class="fig".*?</svg>', _section(page, "plots"), flags=re.S)
    assert figures and not any('data-backend="numba"' in f for f in figures)
    # a run of counted cases only: no time anywhere, and the page still renders
    only = make_run([Measurement(Case("elbo", b, batch=n), "ok", counts=counts()) for b in ("numpy", "rust")
                     for n in (1, 128)])  # fmt: skip
    page = render(build_views([LoadedRun("counted", "c.json", only)]))
    assert _section(page, "matrix").count(">counted</a></td>") == 4 and '<div class="fig"' not in page


def test_cuda_times_say_which_clock_and_give_the_device_median(rich):
    _, page = rich
    details = _details(page)
    for batch in (1, 128, 1024, 8192):
        facts = details[f"elbo f64 B={batch} t=1 torch (cuda)"][0]
        host = re.search(
            r"median ([\d.]+) µs .* per call \(host clock, stopped after torch.cuda.synchronize\(\)\)", facts
        )
        device = re.search(r"on the device \(CUDA events\) ([\d.]+) µs", facts)
        assert host and 25 < float(host.group(1)) < 35  # ~30 µs on the host
        assert device and 6 < float(device.group(1)) < 10  # ~8 µs between the CUDA events
    assert all("CUDA events" not in f for title, (f, _) in details.items() if "cuda" not in title)
    matrix = _section(page, "matrix")
    assert "host clock, stopped after torch.cuda.synchronize(); CUDA events: " in matrix
    assert "torch.cuda.synchronize()" in _section(page, "method")


@pytest.mark.slow
def test_no_legend_or_title_is_cut_in_the_reference_runs_figures():
    """The reference run's figures, with an implausible time flagged in each workload (as the table
    flags one in a file of an older schema), so every legend carries its longest entry ('implausible
    time', once cut to 'implausible t')."""
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} not in this checkout")
    run = load(REFERENCE)
    table = measurement_table(run)
    for w in set(table.workload):
        first = table[(table.workload == w) & table.timed_ok].index[0]
        table.loc[first, "implausible"] = True
    figures = []
    real = plots._svg

    def keep(fig, salt, tags=None):
        fig.canvas.draw()
        figures.append((salt, _geometry(fig)))
        return real(fig, salt, tags)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "_svg", keep)
        for w in dict.fromkeys(table.workload):
            plots.time_vs_batch(table, w)
            plots.thread_scaling(table, w)
        plots.bandwidth(table, run.limits)
        plots.roofline(table, run.limits)
    assert len(figures) >= 8
    for salt, g in figures:
        for t in g["texts"] + g["legends"] + g["legend_texts"]:
            assert (
                t.x0 >= -1 and t.y0 >= -1 and t.x1 <= g["bbox"].width + 1 and t.y1 <= g["bbox"].height + 1
            ), salt
