"""The HTML report's structure: the speed-up matrix, problems, changes between runs, plots and size.

Checked without a browser (tests/test_report_browser.py renders the page in Chromium): matrix cells
against the measurement table and the shared verdict, skips grouped by reason, several runs shown as
a change computed by elbolab.compare, one colour per backend across every figure, legends clear of
the axes, shared y ranges, and the size of the default report of the 720-case reference run.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from elbolab.case import Case
from elbolab.measurement import Check, Measurement
from elbolab.report import plots
from elbolab.report.html import build_views, fmt_speed, problems, render, speed_colour, speedup_matrices
from elbolab.report.tables import LoadedRun, measurement_table, summary_table
from elbolab.results import load
from elbolab.verdict import Verdict
from matplotlib.text import Text

from tests.builders import make_run, ok

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
    # a time figure per workload (elbo, vae_step), bandwidth, roofline, noise, training
    assert [salt for salt, _, _ in drawn] == [
        "time-elbo",
        "time-vae_step",
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
        for t in g["texts"]:
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
    assert page.count("<svg") <= 10  # one time figure per workload, not per workload x variant x kind
    assert elapsed < 60  # generous: ~10 s on a 2-core machine; tests never assert a tight timing
    assert_one_colour_per_backend(page)


def test_a_run_without_measurements_or_without_the_baseline_still_renders():
    page = render(build_views([LoadedRun("empty", "e.json", make_run([]))]))
    assert 'id="matrix"' in page and "No measurement to compare." in page and "<svg" not in page
    only_rust = make_run([ok(Case("elbo", "rust", batch=b), [1e4] * 9) for b in (1, 8)])
    page = render(build_views([LoadedRun("r", "r.json", only_rust)], with_plots=False))
    matrix = page[page.index('id="matrix"') : page.index('id="problems"')]
    assert matrix.count(">n/a</td>") == 2 and "no numpy measurement to compare with" in matrix
