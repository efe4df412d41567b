"""The Markdown summary of a run, for a pull request comment or a CI job summary (GitHub takes at
most 65,536 characters in either): headed by the run, its commit and the machine, then the problems
worst first, the claims' verdicts and the speed-up grids, in the words of the report's first screen
(elbolab.report.summary, the same claims and matrices). Every case is in the full table beside it
(NAME.cases.md, NAME.csv); the summary stays under LIMIT characters by listing fewer problems and
grids, saying what it left out.
"""

from __future__ import annotations

from elbolab.report import names, summary
from elbolab.report.html import RunView
from elbolab.report.markdown import md, table
from elbolab.report.matrix import Matrix, speedup_matrices

LIMIT = 60_000  # characters: under GitHub's 65,536 for a comment or a job summary, with room to spare
PROBLEMS = 25  # listed before "and N more"


def _grid(m: Matrix) -> str:
    """A matrix as a Markdown table: the speed-up and its mark, bold where it leads, then the time
    and interval, as the HTML cell prints them (every string escaped, the bold added after)."""
    lines = [
        "| backend | " + " | ".join(md(c) for c in m.columns) + " |",
        "|" + "---|" * (len(m.columns) + 1),
    ]
    for row in m.rows:
        cells = []
        for c in row.cells:
            text = md(c.text) + (f" ({md(c.sub)})" if c.sub else "")
            cells.append(f"**{text}**" if c.text and ("win" in c.cls or "tie" in c.cls) else text)
        lines.append(f"| {md(row.label)} | " + " | ".join(cells) + " |")
    head = f"**{md(m.title)}** ({md(m.setting)})" + (f": {md(m.note)}" if m.note else "")
    hidden = f"\n\nnot run here: {md(', '.join(label for label, _ in m.hidden))}" if m.hidden else ""
    return f"{head}\n\n" + "\n".join(lines) + f"{hidden}\n"


def markdown_summary(view: RunView, baseline: str, stem: str, limit: int = LIMIT) -> str:
    """The summary of the newest run (view), pointing to the full table at STEM.cases.md."""
    run = view.run.run
    lines = [f"## elbolab: {md(view.run.label)}", "",
             f"- **Run** {md(summary.run_line(run))}",
             f"- **Commit** `{md(run.git.commit or 'unknown')}`" + (" (uncommitted changes)" if run.git.dirty else ""),
             f"- **Machine** {md(summary.machine_line(run))}"]  # fmt: skip
    control = summary.control_sentence(view.noise, baseline)
    if control:
        lines.append(f"- **Resolution** {md(control)}")
    lines.append("")
    ps = view.problems
    lines.append(f"### Problems ({len(ps)}), worst first" if ps else "### Problems: none")
    lines.append("")
    for i, p in enumerate(ps[:PROBLEMS], 1):
        why = f" — {md(p.why)}" if p.order != 4 else ""
        lines.append(f"{i}. {md(p.what)}: {md(summary.short_case(p.case))}{why}")
    if len(ps) > PROBLEMS:
        counts = ", ".join(f"{n} {kind}" for kind, n in summary.problem_counts(ps[PROBLEMS:]))
        lines.append(
            f"\n…and {len(ps) - PROBLEMS} more ({md(counts)}): the HTML report and {md(stem)}.cases.md"
        )
    fc = summary.first_calls_line(summary.first_calls(run.measurements, view.found))
    if fc:
        lines += ["", md(fc)]
    lines += ["", "### The tutorial's claims", ""]
    lines.append(table(["#", "claim", "published", "verdict here"],
                       [(c.id, c.claim, c.figure, c.summary or c.verdict) for c in view.claims]))  # fmt: skip
    lines += [f"### Who wins: speed-up over {md(baseline)}", "",
              "Cell: speed-up over the baseline and the verdict (+ faster, - slower, = same, ? too noisy to tell), then "
              "the time per call and the speed-up's 95% interval, widened by the null control; bold: the fastest, or "
              "tied for it.", ""]  # fmt: skip
    text = "\n".join(lines)
    grids = speedup_matrices(view.table, baseline, view.noise, lead=view.lead) if not view.table.empty else []
    tail = [f"Every case, with its reason or note: `{md(stem)}.cases.md` and `{md(stem)}.csv`."]
    shown_rows = [row.backend for m in grids for row in m.rows]
    tail += ["", "Names: " + "; ".join(f"**{md(n)}**: {md(w)}" for n, w in names.glossary(shown_rows))]
    tail_text = "\n" + "\n".join(tail) + "\n"
    left = 0
    for m in grids:
        block = "\n" + _grid(m)
        if len(text) + len(block) + len(tail_text) + 200 > limit:
            left += 1
            continue
        text += block
    if left:
        text += f"\n{left} more grid{'s' if left != 1 else ''} left out to stay under {limit:,} characters: the HTML report.\n"
    return text + tail_text
