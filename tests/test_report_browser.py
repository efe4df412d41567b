"""The report in a real browser: headless Chromium renders it with no console errors and no network requests.

Console messages come from Chromium's own log (--enable-logging=stderr: 'INFO:CONSOLE' lines); network
requests from its net log (--log-net-log), keeping the requests a page made (their network isolation
key is the page's file:// origin) apart from the browser's own background traffic. Both detectors are
first proven on a page that does make a request and log an error, so a silent detector cannot pass.
A screenshot of the fixture's report is saved as reports/report_fixture.png (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from elbolab.cli.reports import add_commands

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "run_fixture.json"
REPORTS = ROOT / "reports"
CHROMIUM = next(
    (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None
)

if CHROMIUM is None:
    pytest.skip(
        "headless Chromium not found: install Debian's `chromium` (apt-get install -y chromium) "
        "to run the browser tests",
        allow_module_level=True,
    )

FLAGS = [
    "--headless",
    "--disable-gpu",
    "--no-sandbox",
    "--enable-logging=stderr",
    "--v=0",
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
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
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


@pytest.fixture(scope="module")
def report_page() -> Path:
    REPORTS.mkdir(exist_ok=True)
    out = REPORTS / "report_fixture.html"
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", str(FIXTURE), "-o", str(out)])
    assert args.func(args) == 0
    return out


def test_detectors_catch_a_bad_page(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<html><body><img src="http://example.invalid/x.png">'
        '<script>console.error("boom")</script></body></html>'
    )
    _, console, requested = chromium(bad, tmp_path, "--dump-dom")
    assert any("boom" in line for line in console)
    assert requested == ["http://example.invalid/x.png"]


def test_report_renders_offline_without_console_errors(report_page, tmp_path):
    dom, console, requested = chromium(report_page, tmp_path, "--dump-dom")
    assert console == []
    assert requested == []
    assert "Summary: who wins" in dom and dom.count("<svg") >= 15
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # rendered as text after parsing too
    assert "<script>alert" not in dom


def test_screenshot(report_page, tmp_path):
    shot = REPORTS / "report_fixture.png"
    shot.unlink(missing_ok=True)
    _, console, requested = chromium(report_page, tmp_path, f"--screenshot={shot}", "--window-size=1400,2400")
    assert shot.exists() and shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert console == [] and requested == []
