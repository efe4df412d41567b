"""Terminal rendering: rich tables of runs and comparisons. Every string that comes from a results
file or a backend name is escaped, so a name like '[/bold]' prints as text."""

from __future__ import annotations

from elbolab.compare import Report
from elbolab.report.format import fmt_change, fmt_interval, fmt_ns, fmt_time
from elbolab.results import Run
from elbolab.verdict import Verdict
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def print_run_table(run: Run, console: Console) -> None:
    table = Table(title=escape(f"run {run.run_id} on {run.cpu or '?'}"))
    for col in ("workload", "backend", "device", "dtype", "batch", "threads", "variant"):
        table.add_column(col)
    for col in ("per call (median)", "95% CI", "first call", "GB/s", "status"):
        table.add_column(col, justify="right" if col != "status" else "left")
    for m in run.measurements:
        c, s = m.case, m.summary
        gbps = f"{m.cost.bytes / s.median:.2f}" if s and m.cost and m.cost.bytes else "-"
        status = m.status if m.status == "ok" else f"{m.status}: {m.reason}"
        table.add_row(
            *(escape(str(v)) for v in (c.workload, c.backend, c.device, c.dtype, c.batch, c.threads, c.variant)),
            fmt_ns(s.median) if s else "-",
            f"{fmt_ns(s.ci95[0])} – {fmt_ns(s.ci95[1])}" if s else "-",
            fmt_ns(m.first_call_ns) or "-", gbps, escape(status),
        )  # fmt: skip
    console.print(table)


_STYLE = {Verdict.SLOWER: "yellow", Verdict.FASTER: "green", Verdict.SAME: "", Verdict.NOISY: "magenta"}


def print_compare(report: Report, console: Console, outcome: str | None = None) -> None:
    table = Table(title=escape(f"{report.head.label} vs {report.base.label}"), title_justify="left")
    for col, justify in (("case", "left"), (report.base.label, "right"), (report.head.label, "right"),
                         ("ratio (95% CI)", "right"), ("change", "right"), ("verdict", "left")):  # fmt: skip
        table.add_column(escape(col), justify=justify)
    for c in report.comparisons:
        style = "bold red" if c.regression else _STYLE[c.verdict]
        verdict = c.word
        table.add_row(
            escape(c.case.label()),
            fmt_time(c.base_median, report.normalized),
            fmt_time(c.head_median, report.normalized),
            f"{c.ratio:.3f} ({fmt_interval(c.ci95)})",
            fmt_change(c.ratio),
            f"[{style}]{verdict}[/]" if style else verdict,
        )
    console.print(escape(report.base.describe()), highlight=False)
    console.print(escape(report.head.describe()), highlight=False)
    if report.comparisons:
        console.print(table)
    if report.not_compared:
        console.print(f"not compared ({len(report.not_compared)}):")
        for n in report.not_compared:
            mark = "[bold red]BROKEN[/] " if n.broken else ""
            console.print(f"  {mark}{escape(n.case.label())}: {escape(n.reason)}", highlight=False)
    for notice in report.notices:
        console.print(f"[yellow]note[/]: {escape(notice)}", highlight=False)
    console.print(escape(report.rule.describe()), style="dim", highlight=False)
    text = outcome or report.headline()
    bad = report.failed or "NOT PASSED" in text or "FAIL" in text
    console.print(text, style="bold red" if bad else "bold green", highlight=False, markup=False)
