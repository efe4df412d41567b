"""`elbolab report` and `elbolab claims`: results files to an HTML page, tables and the claims check."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from elbolab.cli.console import stdout_console
from elbolab.cli.measure import add_keyword
from elbolab.model.config import load_config
from elbolab.model.errors import UsageError
from elbolab.model.selection import parse_optional
from elbolab.store.results import load, replace_measurements

DEFAULT_BASELINE = "numpy"
DEFAULT_TITLE = "elbolab report"


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report (plus CSV and Markdown tables) from results files",
        description="Turn one or more results files into a self-contained HTML page; beside it, NAME.md (a "
        "summary for a pull request or CI job summary), NAME.cases.md and NAME.csv (every case).",
    )
    p.add_argument(
        "results",
        nargs="+",
        metavar="RUN.json",
        help="results file(s); with several, the first is the base and each later one is compared with it",
    )
    p.add_argument(
        "-o", "--out", default="reports/report.html", metavar="reports/NAME.html", help="output HTML path"
    )
    # None: unset, they come from [tool.elbolab.report], then the defaults above
    p.add_argument("--baseline", help=f"backend the speed-ups are over (default: {DEFAULT_BASELINE})")
    p.add_argument("--title", help=f"page title (default: {DEFAULT_TITLE!r})")
    p.add_argument(
        "--store",
        metavar="URL",
        help="history store for each case's sparkline (default: $ELBOLAB_STORE or the configured store, else "
        "results/history.sqlite if it exists); --store none: no history",
    )
    add_keyword(p)
    p.set_defaults(func=cmd_report)

    c = subparsers.add_parser(
        "claims",
        help="check the tutorial's published claims against a results file (terminal table)",
        description="Set each published claim (C1-C9) beside what this machine measured.",
    )
    c.add_argument("results", nargs="+", metavar="RUN.json")
    c.add_argument("--json", action="store_true", help="print the checks as JSON (schema elbolab.claims/1)")
    c.set_defaults(func=cmd_claims)


def load_runs(paths: list[str]):
    from elbolab.report.tables import LoadedRun, run_label

    runs: list[LoadedRun] = []
    for path in paths:
        run = load(path)  # ResultsError (a UsageError) on anything unusable
        runs.append(LoadedRun(run_label(run, path, [r.label for r in runs]), str(path), run))
    return runs


def cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from elbolab.report.digest import markdown_summary
    from elbolab.report.html import build_views, render
    from elbolab.report.tables import write_exports
    from elbolab.store.results import output_path, write_text_atomic

    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"{out}: the report is HTML; give an output path ending in .html")
    # every file the report writes is checked before any is: a report that fails changes none
    page_path = output_path(out)
    for sibling in (out.with_suffix(".csv"), out.with_suffix(".md"), out.with_suffix(".cases.md")):
        output_path(sibling, follow_link=False)
    config = load_config()
    selection = parse_optional(args.k)
    runs = load_runs(args.results)
    if selection is not None:  # the cases it selects, in every run (the baseline's cases included)
        runs = [replace(r, run=replace_measurements(r.run, selection.select(r.run.measurements, lambda m: m.case)))
                for r in runs]  # fmt: skip
    baseline = config.pick(args.baseline, "report.baseline", DEFAULT_BASELINE)
    known = {m.case.backend for r in runs for m in r.run.measurements}
    if known and baseline not in known:
        raise UsageError(
            f"baseline backend {baseline!r} is not in the results "
            f"(backends: {', '.join(sorted(map(str, known)))})"
        )
    histories = _histories(config.pick(args.store, "store"), args.store is not None, runs[-1].run)
    views = build_views(runs, baseline, histories=histories)
    page = render(views, baseline, config.pick(args.title, "report.title", DEFAULT_TITLE), out.stem)
    tables = [v.table for v in views if not v.table.empty]
    df = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    summaries = [v.summary for v in views if not v.summary.empty]
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()
    digest = markdown_summary(views[-1], baseline, out.stem)
    try:
        write_text_atomic(page_path, page)
        written = write_exports(df, summary, baseline, out.with_suffix(""), digest) if not df.empty else []
    except OSError as exc:
        raise UsageError(f"{out}: cannot write the report ({exc.strerror})") from None
    print(f"report: {out} ({len(page.encode()) / 1024:.0f} KiB)")
    for path in written:
        print(
            f"{'summary' if path.suffix == '.md' and not path.stem.endswith('.cases') else 'tables'}: {path}"
        )
    return 0


def _histories(store: str | None, named: bool, run):
    """Each case's history from the store in force (--store, ELBOLAB_STORE, the configuration), or
    the default one where it exists; none with --store none. A store that cannot be read costs the
    sparklines, not the report."""
    from elbolab.report.history import default_store, load_histories

    url = default_store() if store is None else (None if store.lower() == "none" else store)
    if url is None:
        return None
    try:
        return load_histories(url, run)
    except UsageError as exc:
        if named:  # named on the command line: the user asked for it
            raise
        print(f"report: no history ({exc})", file=sys.stderr)
        return None


def cmd_claims(args: argparse.Namespace) -> int:

    from elbolab.analyse.table import measurement_table
    from elbolab.report.claims import Outcome, check_claims

    runs = load_runs(args.results)
    console = stdout_console()
    payload = []
    for run in runs:
        checks = check_claims(measurement_table(run.run, label=run.label), run.run)
        payload.append({"run": run.label, "path": run.path, "claims": [c.to_json() for c in checks]})
        if args.json:
            continue
        table = Table(title=f"Claims check: {run.label} ({run.path})", show_lines=True, expand=True)
        for name, style in (
            ("#", "bold"),
            ("claim", ""),
            ("published", ""),
            ("as published, here", ""),
            ("like for like", ""),
            ("verdict", "bold"),
            ("plausibility", ""),
        ):
            table.add_column(name, style=style, overflow="fold")
        for c in checks:
            color = {Outcome.HOLDS: "green", Outcome.DOES_NOT_HOLD: "red"}.get(c.outcome, "yellow")
            verdict = c.verdict + ("".join(f"\nto measure: {cmd}" for cmd in c.commands))
            # markup=False semantics: escape, so a name in brackets from a results file prints as text

            table.add_row(
                *(escape(x) for x in (c.id, c.claim, c.figure, c.as_published, c.like_for_like)),
                f"[{color}]{escape(verdict)}[/{color}]",
                escape(c.plausibility),
            )
        console.print(table)
    if args.json:
        print(json.dumps({"schema": "elbolab.claims/1", "runs": payload}, indent=1, allow_nan=False))
    return 0
