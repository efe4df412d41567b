"""The report in a real browser (headless Chromium), at 1400 and 400 px: it renders offline without
console errors or network requests; the first screen at 1400 px answers the four questions (the
machine in one line, the problems ranked, the claims' one-line verdicts and the speed-up matrix with
each cell's time and interval printed, all within 900 px); nothing overflows at 400 px and the
matrix starts on the first screen there; text is legible at both widths (figures keep their natural
size and scroll sideways on a phone); a grid cell is one click from its case's detail (samples,
evidence) in the real page; every backend has one colour in every figure. Besides the fixture and
the reference run, a run built by tests.test_report_html.rich_run (threads 1-4, machine health,
anomalies, instruction counts, CUDA device times) goes through a results file and the browser.

How, without a DevTools-protocol client:

- Console messages come from Chromium's own log (--enable-logging=stderr: 'INFO:CONSOLE' lines);
  network requests from its net log (--log-net-log), keeping the requests a page made (their network
  isolation key is the page's file:// origin) apart from the browser's own background traffic. Both
  detectors are first proven on a page that does make a request and log an error, so a silent
  detector cannot pass. These run on the report exactly as written.
- Layout: a probe page holds the report in an <iframe srcdoc> of exactly the viewport size asked
  for (1400x900 or 400x900; a headless window itself cannot be narrower than 500 px), and a script
  in the probe (never in the report) measures the report's layout on the frame's load event: the
  boxes of the first screen's parts, the page's scroll width, every element that sticks out of the
  viewport without a horizontally scrolling ancestor, the font size of every SVG text times the
  SVG's display scale, the text of the first cells; then it clicks the first cell's link and
  measures the case's detail it opened. `chromium --dump-dom` prints the probe's DOM after that,
  measurements included.
- Screenshots of the first screen (--screenshot --window-size=W,900; the viewport is exactly W x 900)
  are written to reports/report-1400.png and reports/report-400.png from results/reference-2core.json,
  or from the results file ELBOLAB_SCREENSHOT_RUN names (the docs' screenshots are of a real
  `make bench` run: ELBOLAB_SCREENSHOT_RUN=results/scratch/bench-....json pytest -k screenshot, then
  cp reports/report-1400.png docs/report-1400.png, same for 400); the 1400 px one must show the
  matrix's colour key (its two saturated ends, exact pixel colours).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from elbolab.cli.reports import add_commands
from elbolab.report.html import SATURATE, speed_colour
from tests.test_report_html import assert_one_colour_per_backend, series_colours

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "run_fixture.json"
REFERENCE = ROOT / "results" / "reference-2core.json"
REPORTS = ROOT / "reports"
MAX_BYTES = 1_000_000
CHROMIUM = next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None
)

if CHROMIUM is None:
    pytest.skip(
        "headless Chromium not found: install Debian's `chromium` (apt-get install -y chromium, or "
        "`make browser`) to run the browser tests",
        allow_module_level=True,
    )

FLAGS = [
    "--headless",
    "--disable-gpu",
    "--no-sandbox",
    "--enable-logging=stderr",
    "--v=0",
    "--hide-scrollbars",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-default-browser-check",
    "--disable-features=Translate,OptimizationHints,MediaRouter,SpellCheck",
]


def chromium(page: Path, tmp: Path, *extra: str) -> tuple[str, list[str], list[str]]:
    """Open `page`; return (dumped DOM, console lines, URLs the page requested from the network)."""
    netlog = tmp / f"net-{page.stem}.json"
    cmd = [
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={tmp / 'profile'}",
        f"--log-net-log={netlog}",
        *extra,
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    requested = set()
    for event in json.loads(netlog.read_text())["events"]:
        params = event.get("params") or {}
        url = params.get("url", "")
        key = params.get("network_isolation_key", "")
        if url and "file://" in key and not url.startswith(("file:", "data:", "about:", "chrome")):
            requested.add(url)
    return proc.stdout, console, sorted(requested)


# The probe's script: measures the report inside the frame, writes JSON into <pre id="out">.
PROBE = r"""
const frame = document.getElementById('frame');
frame.addEventListener('load', () => {  // once: the probe measures the page it loaded
  const w = frame.contentWindow, d = frame.contentDocument, vw = w.innerWidth;
  const box = (el) => { const r = el.getBoundingClientRect();
    return {top: r.top + w.scrollY, bottom: r.bottom + w.scrollY, left: r.left, right: r.right}; };
  const out = {viewport: [vw, w.innerHeight], scrollWidth: d.documentElement.scrollWidth, boxes: {}};
  for (const sel of ['#matrix', '#matrix .grid', '#matrix table.matrix', '#problems', '#change',
                     '#top-problems', '#top-claims', 'header']) {
    const el = d.querySelector(sel); if (el) out.boxes[sel] = box(el);
  }
  out.lines = [...d.querySelectorAll('header p.line')].map(p => ({text: p.textContent, box: box(p)}));
  const firstTable = d.querySelector('#matrix table.matrix');
  out.cells = firstTable ? [...firstTable.querySelectorAll('td')].map(td => ({cls: td.className, text: td.innerText,
    small: td.querySelector('small') ? parseFloat(w.getComputedStyle(td.querySelector('small')).fontSize) : null,
    visible: td.getBoundingClientRect().width > 0})) : [];
  out.topProblems = [...d.querySelectorAll('#top-problems li')].map(li => li.textContent);
  out.topClaims = [...d.querySelectorAll('#top-claims li')].map(li => li.textContent);
  const scrolls = (el) => { for (let p = el.parentElement; p && p !== d.body; p = p.parentElement) {
      const ox = w.getComputedStyle(p).overflowX;
      if ((ox === 'auto' || ox === 'scroll' || ox === 'hidden') && p.getBoundingClientRect().right <= vw + 0.5) return true;
    } return false; };
  const overflow = [];
  let minHtmlFont = 1e9;
  for (const el of d.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    if ((r.right > vw + 0.5 || r.left < -0.5) && !scrolls(el))
      overflow.push(el.tagName + ' ' + (el.getAttribute('class') || '') + ': ' + (el.textContent || '').slice(0, 60));
    if (!(el instanceof w.SVGElement) && [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()))
      minHtmlFont = Math.min(minHtmlFont, parseFloat(w.getComputedStyle(el).fontSize));
  }
  out.overflow = overflow.slice(0, 20);
  out.minHtmlFont = minHtmlFont;
  const fonts = [];
  for (const svg of d.querySelectorAll('.fig svg')) {
    const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
    for (const t of svg.querySelectorAll('text')) fonts.push(parseFloat(w.getComputedStyle(t).fontSize) * scale);
  }
  out.svgCount = d.querySelectorAll('.fig svg').length;
  out.svgFonts = fonts.length;
  out.svgFontMin = fonts.length ? Math.min(...fonts) : null;
  const hidden = d.querySelectorAll('.case');
  out.casesShownBefore = [...hidden].filter(c => w.getComputedStyle(c).display !== 'none').length;
  // one click from the first linked cell to its case's detail
  const link = d.querySelector('#matrix table.matrix td a[href^="#c"]');
  if (!link) { document.getElementById('out').textContent = JSON.stringify(out); return; }
  out.clicked = link.getAttribute('href');
  // in a srcdoc frame a relative '#c12' resolves against the probe's URL (a navigation away), so the
  // probe follows the link as the report's own page does, by its fragment
  w.location.hash = out.clicked;
  setTimeout(() => {
    const target = d.getElementById(out.clicked.slice(1));
    out.detail = target ? {display: w.getComputedStyle(target).display, top: target.getBoundingClientRect().top,
      height: target.getBoundingClientRect().height, text: target.innerText.slice(0, 400),
      strip: !!target.querySelector('svg.strip'), hash: w.location.hash} : null;
    document.getElementById('out').textContent = JSON.stringify(out);
  }, 200);
}, {once: true});
"""


def layout(page: Path, tmp: Path, width: int, height: int = 900) -> dict:
    """The report's layout in a viewport of width x height CSS px (see the module docstring)."""
    probe = tmp / f"probe-{page.stem}-{width}.html"
    probe.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head><body style="margin:0">'
        f'<iframe id="frame" style="display:block;border:0;width:{width}px;height:{height}px" '
        f'srcdoc="{html.escape(page.read_text(), quote=True)}"></iframe>'
        f'<pre id="out">pending</pre><script>{PROBE}</script></body></html>'
    )
    dom, console, requested = chromium(
        probe, tmp, "--dump-dom", "--virtual-time-budget=3000", f"--window-size={max(width, 1400) + 20},1000"
    )
    found = re.search(r'<pre id="out">(.*?)</pre>', dom, flags=re.S)
    assert found and found.group(1) != "pending", "the probe did not run"
    assert console == [], console
    return json.loads(html.unescape(found.group(1)))


def build(results: Path, out: Path) -> Path:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    try:  # the page shows the path it was given: a relative one keeps the screenshots free of this machine
        results = results.relative_to(Path.cwd())
    except ValueError:
        pass
    args = parser.parse_args(["report", str(results), "-o", str(out), "--store", "none"])
    assert args.func(args) == 0
    return out


@pytest.fixture(scope="module")
def fixture_page() -> Path:
    REPORTS.mkdir(exist_ok=True)
    return build(FIXTURE, REPORTS / "report_fixture.html")


@pytest.fixture(scope="module")
def rich_page(tmp_path_factory) -> Path:
    """A run with what the fixture lacks: 1, 2 and 4 threads, the machine's health with warnings,
    anomalies, instruction counts, CUDA device times and a less accurate case (saved as JSON and
    read back, so all of it survives the results file)."""
    from elbolab.store.results import save
    from tests.test_report_html import rich_run

    path = tmp_path_factory.mktemp("rich") / "rich.json"
    save(path, rich_run())
    REPORTS.mkdir(exist_ok=True)
    return build(path, REPORTS / "report_rich.html")


@pytest.fixture(scope="module")
def reference_page() -> Path:
    """The default report of the committed 720-case reference run (what `make bench` writes)."""
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} is not in this checkout")
    REPORTS.mkdir(exist_ok=True)
    return build(REFERENCE, REPORTS / "report_reference.html")


def test_detectors_catch_a_bad_page(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<html><body><img src="http://example.invalid/x.png">'
        '<script>console.error("boom")</script></body></html>'
    )
    _, console, requested = chromium(bad, tmp_path, "--dump-dom")
    assert any("boom" in line for line in console)
    assert requested == ["http://example.invalid/x.png"]


def test_layout_probe_catches_an_overflowing_page(tmp_path):
    bad = tmp_path / "wide.html"
    bad.write_text(
        '<html><body><section id="matrix" style="margin-top:1200px">x</section>'
        '<table style="width:900px"><tr><td>wide</td></tr></table>'
        '<div style="overflow-x:auto"><table style="width:900px"><tr><td>scrolls</td></tr></table></div></body></html>'
    )
    probe = layout(bad, tmp_path, 400)
    assert probe["viewport"] == [400, 900]
    assert probe["boxes"]["#matrix"]["top"] >= 1200
    assert any("wide" in o for o in probe["overflow"]) and not any("scrolls" in o for o in probe["overflow"])


@pytest.mark.parametrize("which", ["fixture", "reference", "rich"])
def test_report_renders_offline_without_console_errors(which, request, tmp_path):
    page = request.getfixturevalue(f"{which}_page")
    dom, console, requested = chromium(page, tmp_path, "--dump-dom")
    assert console == []
    assert requested == []
    assert "Who wins: speed-up over numpy" in dom and dom.count('<div class="fig"') >= (
        4 if which == "rich" else 6
    )
    assert "thread scaling" in dom
    if which == "rich":  # what the fixture lacks, as the browser built it
        assert "2 warnings at the start of the run" in dom and "&lt;b&gt;evil&lt;/b&gt;" in dom
        assert "rust 12 cases, typically 5 s" in dom and ">counted</a></td>" in dom
        assert "host clock, stopped after torch.cuda.synchronize()" in dom
        assert "<b>evil" not in dom
    if which == "fixture":
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # rendered as text after parsing too
        assert "<script>alert" not in dom
    # one colour per backend in every figure and the matrix, read from the DOM as the browser built it
    assert_one_colour_per_backend(dom)
    assert series_colours(dom)[0] == series_colours(page.read_text())[0]


def test_reference_report_is_under_1_mb(reference_page):
    size = reference_page.stat().st_size
    assert size < MAX_BYTES, f"{reference_page}: {size} bytes"


TIME = re.compile(r"\d(\.\d+)? (ns|µs|ms|s)")


def _first_screen(probe: dict, height: int = 900) -> None:
    """The four questions answered within the first `height` px: the machine in one line, the
    problems ranked, the claims' verdicts, and the first speed-up matrix whole, every timed cell
    with its time and interval printed (not on hover)."""
    lines = {line["text"].split(" ", 1)[0]: line for line in probe["lines"]}
    assert {"Run", "Machine"} <= set(lines), probe["lines"]
    machine = lines["Machine"]
    assert machine["box"]["bottom"] <= height and " cores" in machine["text"]
    assert machine["box"]["bottom"] - machine["box"]["top"] < 40  # one line (two at most, wrapped)
    for part in ("#top-problems", "#top-claims", "#matrix table.matrix"):
        assert probe["boxes"][part]["bottom"] <= height, (part, probe["boxes"])
    assert probe["topClaims"] and all(" C" not in c[:1] for c in probe["topClaims"])
    timed = [c for c in probe["cells"] if c["cls"].startswith(("sp", "base"))]
    assert timed and all(TIME.search(c["text"]) and "–" in c["text"] for c in timed), timed
    assert all(c["small"] >= 11 for c in timed)


def test_the_first_screen_answers_the_four_questions_at_1400_px(fixture_page, reference_page, tmp_path):
    for page in (fixture_page, reference_page):
        probe = layout(page, tmp_path, 1400)
        assert probe["viewport"] == [1400, 900]
        _first_screen(probe)
        assert probe["scrollWidth"] <= 1400 and probe["overflow"] == []
        assert probe["svgCount"] >= 6 and probe["svgFonts"] > 100
        assert probe["svgFontMin"] >= 10, f"SVG text at {probe['svgFontMin']:.1f} px at its display size"
        assert probe["minHtmlFont"] >= 11
    # the fixture's problems, ranked: wrong answers, implausible times, then the 110x slow-down
    probe = layout(fixture_page, tmp_path, 1400)
    assert [p.split(":")[0] for p in probe["topProblems"]] == [
        "✗ incorrect answer", "⚠ implausible time", "✗ failed", "✗ timed out",
        "110x slower with 2 threads than with 1 (20.7 ms vs 188 µs)",
    ]  # fmt: skip
    assert any("Null control" in line["text"] for line in probe["lines"])


@pytest.mark.parametrize("width", [1400, 400])
def test_a_cell_is_one_click_from_its_cases_detail(width, fixture_page, tmp_path):
    probe = layout(fixture_page, tmp_path, width)
    assert probe["casesShownBefore"] == 0  # every detail hidden until asked for
    detail = probe["detail"]
    assert detail is not None and detail["hash"] == probe["clicked"]
    assert (
        detail["display"] == "block" and -1 <= detail["top"] < 300 and detail["height"] > 60
    )  # scrolled to it
    assert "median " in detail["text"] and "evidence: 2 input sets" in detail["text"] and detail["strip"]


def test_nothing_overflows_and_text_is_legible_at_400_px(reference_page, fixture_page, rich_page, tmp_path):
    for page in (reference_page, fixture_page, rich_page):
        probe = layout(page, tmp_path, 400)
        assert probe["viewport"] == [400, 900]
        assert probe["scrollWidth"] <= 400, probe["overflow"]
        assert probe["overflow"] == [], probe["overflow"]
        assert probe["boxes"]["#matrix"]["top"] < 900  # the matrix starts on the first screen
        # figures keep their natural size on a phone (and scroll sideways): no 5 px labels
        assert probe["svgFontMin"] >= 10, f"SVG text at {probe['svgFontMin']:.1f} px at 400 px"
        assert probe["minHtmlFont"] >= 11
        timed = [c for c in probe["cells"] if c["cls"].startswith(("sp", "base"))]
        assert timed and all(TIME.search(c["text"]) for c in timed)  # printed, not on hover


def _has_colour(png: Path, hex_colour: str, at_least: int = 20) -> bool:
    from PIL import Image

    target = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    image = Image.open(png).convert("RGB")
    return sum(n for n, c in image.getcolors(maxcolors=1 << 20) if c == target) >= at_least


@pytest.fixture(scope="module")
def screenshot_page(reference_page) -> Path:
    """The page the screenshots show: the reference run, or the results file ELBOLAB_SCREENSHOT_RUN
    names (a real `make bench` run for the docs)."""
    named = os.environ.get("ELBOLAB_SCREENSHOT_RUN")
    if not named:
        return reference_page
    return build(Path(named), REPORTS / "report_screenshot.html")


@pytest.mark.parametrize("width", [1400, 400])
def test_screenshot_of_the_first_screen(width, screenshot_page, tmp_path):
    from PIL import Image

    shot = REPORTS / f"report-{width}.png"
    shot.unlink(missing_ok=True)
    _, console, requested = chromium(
        screenshot_page, tmp_path, f"--screenshot={shot}", f"--window-size={width},900"
    )
    assert console == [] and requested == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(shot).size == (width, 900)
    if width == 1400:  # the matrix's colour key is painted on the first screen: both saturated ends
        for speed in (SATURATE, 1 / SATURATE):
            assert _has_colour(shot, speed_colour(speed)[0]), f"no {speed_colour(speed)[0]} in {shot}"
