"""Markdown output (GitHub-flavoured): tables, and the comparison report for a CI job summary.

Every cell is escaped: a results file can carry any string (a backend name, a failure reason), and
GitHub renders inline HTML in Markdown, so '<', '>' and '&' become entities; '|', '*' and '`' are
escaped, no link can be formed, and newlines become spaces.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from elbolab.analyse.compare import Comparison
from elbolab.report.format import fmt_change, fmt_interval, fmt_time, missing


def md(value) -> str:
    text = "" if missing(value) else str(value)
    text = html.escape(text, quote=False)
    text = text.replace("\\", "\\\\")
    for ch in "`*|":  # code spans, emphasis and table cells; brackets and underscores stay readable
        text = text.replace(ch, "\\" + ch)
    text = text.replace("](", "]\\(")  # no links from a results file
    return text.replace("\r", " ").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    rows = list(rows)
    if not rows:
        return "_no rows_\n"
    lines = ["| " + " | ".join(md(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def frame(df) -> str:
    """A pandas DataFrame as a Markdown table."""
    return table(list(df.columns), df.itertuples(index=False)) if not df.empty else "_no rows_\n"


def compare_report(report: Comparison, title: str = "elbolab gate", outcome: str | None = None) -> str:
    """The report as Markdown (for $GITHUB_STEP_SUMMARY or a PR comment)."""
    text = outcome or report.headline()
    bad = report.failed or "NOT PASSED" in text or "FAIL" in text
    icon = "❌" if bad else "✅"
    lines = [f"### {icon} {md(title)}: {md(text)}", ""]
    lines += [
        f"- {md(report.base.describe())}",
        f"- {md(report.head.describe())}",
        *(f"- {md(line)}" for line in report.describe_rules()),
        "",
    ]
    if report.comparisons:
        rows = [
            (c.case.label(), fmt_time(c.base_median, report.normalized, c.unit), fmt_time(c.head_median, report.normalized, c.unit),
             f"{c.ratio:.3f} ({fmt_interval(c.ci95)})", fmt_change(c.ratio), c.word)
            for c in report.comparisons
        ]  # fmt: skip
        lines.append(
            table(["case", report.base.label, report.head.label, "ratio (95% CI)", "change", "verdict"], rows)
        )
    if report.not_compared:
        lines += [f"<details><summary>Not compared ({len(report.not_compared)})</summary>", ""]
        lines += [
            f"- {'**broken** ' if n.broken else ''}{md(n.case.label())}: {md(n.reason)}"
            for n in report.not_compared
        ]
        lines += ["", "</details>", ""]
    lines += [f"> {md(notice)}" for notice in report.notices]
    return "\n".join(lines) + "\n"
