"""Terminal rendering: rich tables of runs and comparisons. Every string that comes from a results
file or a backend name is escaped, so a name like '[/bold]' prints as text."""

from __future__ import annotations

import math
import re

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from elbolab.analyse.compare import Comparison
from elbolab.analyse.control import ControlNoise, control_noise
from elbolab.analyse.verdict import Verdict
from elbolab.model.measurement import BROKEN_STATUSES, STATUSES
from elbolab.model.stats import median_ci
from elbolab.report.format import fmt_change, fmt_interval, fmt_ns, fmt_time
from elbolab.store.results import Run


def _short_dtype(dtype: str) -> str:
    return {"float64": "f64", "float32": "f32"}.get(dtype, dtype)


# C0 and C1 control characters but tab and newline: shown as \x1b, never obeyed by the terminal
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_DEFAULT_SIZE_VALUES = (784, 20, 400, 8)  # D, L, H, K


def _plain(text: str) -> str:
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


def median_ci_ns(m) -> tuple[float | None, float | None, float | None]:
    """A case's median per call and its 95% interval, as its summary has them, without the rest of
    the summary (a few samples sort faster in Python than through NumPy)."""
    if not m.samples_ns:
        return None, None, None
    return median_ci(sorted(s / m.loops for s in m.samples_ns))


def _case_label(c) -> str:
    label = f"{c.workload} {c.backend}{'' if c.device == 'cpu' else ' ' + c.device} {_short_dtype(c.dtype)} B={c.batch} t={c.threads}"
    if c.variant != "eps=given":
        label += " " + c.variant
    sizes = (c.input_dim, c.latent_dim, c.hidden_dim, c.importance_samples)
    if sizes != _DEFAULT_SIZE_VALUES:
        label += "".join(
            f" {k}={v}" for k, v, d in zip("DLHK", sizes, _DEFAULT_SIZE_VALUES, strict=True) if v != d
        )
    return label


def print_run_table(run: Run, console: Console) -> None:
    """Every measurement, one line each, as plain aligned text: a table of 20,000 cases (a thread
    sweep on a big machine, a month of runs) prints in a fraction of a second, where rich's layout
    took 25 s. The median and its 95% interval only, not the whole summary of each case."""
    rows = [("case", "median", "95% CI", "1st call", "GB/s", "status")]
    for m in run.measurements:
        status = (
            m.status
            if m.status != "ok"
            else ("ok, less accurate" if m.check and m.check.less_accurate else "ok")
        )
        if m.reason:
            status += f": {' '.join(m.reason.split())}"
        median, lo, hi = median_ci_ns(m)
        if m.counts is not None and median is None:
            # counted, not timed: instructions per call in place of a time, their spread between
            # the repeated segments in place of an interval (0 when the count is deterministic)
            middle, spread = f"{m.counts.instructions:,.0f} instr", f"±{m.counts.spread:.2%}"
        else:
            middle = fmt_ns(median) if median is not None else "-"
            spread = f"{fmt_ns(lo)}–{fmt_ns(hi)}" if median is not None else "-"
        gbps = f"{m.cost.bytes / median:.1f}" if median and m.cost and m.cost.bytes else "-"
        rows.append((_case_label(m.case), middle, spread, fmt_ns(m.first_call_ns) or "-", gbps, status[:200]))
    if _CONTROL.search("\t".join(r[0] + "\t" + r[5] for r in rows)):  # rare: then cell by cell
        rows = [(_plain(r[0]), *r[1:5], _plain(r[5])) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    row = "  ".join([f"{{:<{widths[0]}}}", *(f"{{:>{w}}}" for w in widths[1:]), "{}"])
    lines = [_plain(f"run {run.run_id} on {run.cpu or '?'}"), row.format(*rows[0])]
    lines.append("  ".join("-" * w for w in widths) + "  ------")
    lines += [row.format(*r).rstrip() for r in rows[1:]]
    console.file.write("\n".join(lines) + "\n")


def control_line(control: ControlNoise, baseline: str) -> str:
    """The run's null control in one line: the reference against itself, and what it means."""
    j = control.run
    lo, hi = j.ci95
    text = (f"null control ({len(control.cells)} cells): {baseline} again in its own worker measured "
            f"{j.speedup.value:.3g}x [{1 / hi:.3g}, {1 / lo if lo > 0 else float('inf'):.3g}] the speed of {baseline}: "
            f"{j.verdict.value}")  # fmt: skip
    if j.verdict is Verdict.SAME:
        return (
            text
            + f"; speed-up intervals widened by their cell's control (±{math.expm1(control.run_noise):.0%} run-wide)"
        )
    return text + (f"; the run cannot tell differences within ±{math.expm1(control.run_noise):.0%}: every speed-up's "
                   "interval is widened by that, so such verdicts read 'too noisy to tell'")  # fmt: skip


def print_run_summary(run: Run, console: Console, baseline: str = "numpy") -> None:
    """What a run found, in about 30 lines: the status tally with every problem named, then for each
    workload a backend x batch grid of speed-ups over the baseline with the verdict's mark."""
    from elbolab.analyse.table import measurement_table

    ms = run.measurements
    counts = {s: sum(m.status == s for m in ms) for s in STATUSES}
    tally = ", ".join(
        (f"[bold red]{n} {s}[/]" if s in BROKEN_STATUSES and n else f"{n} {s}") for s, n in counts.items()
    )
    console.print(f"run {escape(run.run_id)}: {len(ms)} cases: {tally}", highlight=False)
    control = control_noise(list(ms), baseline)
    if control.run is not None:
        console.print(f"  {escape(control_line(control, baseline))}", highlight=False)
    # the worst first: wrong answers, then times that cannot be, then cases that did not run
    severity = {"incorrect": 0, "implausible": 1, "failed": 2, "timeout": 3}
    problems = sorted((m for m in ms if m.status in severity), key=lambda m: severity[m.status])
    for m in problems[:8]:
        line = f"{m.case.label()}: {m.reason or ''}"
        console.print(
            f"  [red]{m.status}[/] {escape(line[: 94 - len(m.status)])}", highlight=False, overflow="ellipsis"
        )
    if len(problems) > 8:
        console.print(
            f"  ... and {len(problems) - 8} more (elbolab show FILE --status incorrect,implausible,failed,timeout)"
        )
    loose = [m for m in ms if m.check is not None and m.check.less_accurate]
    if loose:
        console.print(f"  {len(loose)} valid but less accurate than careful arithmetic (e.g. "
                      f"{escape(loose[0].case.label())}: {escape(loose[0].check.describe())})", highlight=False)  # fmt: skip
    from elbolab.analyse.anomalies import scan

    for warning in (run.health.get("start") or {}).get("warnings", [])[:3]:
        console.print(f"  [yellow]machine[/]: {escape(warning)}", highlight=False)
    anomalies = scan(run)
    kinds: dict[str, list] = {}
    for a in anomalies:
        kinds.setdefault(a.kind, []).append(a)
    for kind, group in kinds.items():
        worst = group[0]
        console.print(f"  [yellow]{len(group)} {escape(kind)}[/] (e.g. {escape(worst.case.label())}: {escape(worst.detail)}; "
                      f"likely {escape(worst.likely_cause)})", highlight=False)  # fmt: skip
    counted = [m for m in ms if m.counted_ok and not m.timed_ok]
    if counted:
        # an instruction count is not a time: no speed-up grid, the counts themselves
        console.print(f"instructions per call ({len(counted)} counted case{'s' if len(counted) > 1 else ''}; "
                      "callgrind, deterministic):", highlight=False)  # fmt: skip
        for m in counted[:12]:
            console.print(f"  {escape(m.case.label()):<60} {m.counts.instructions:>16,.0f}", highlight=False)
        if len(counted) > 12:
            console.print(f"  ... and {len(counted) - 12} more (elbolab show FILE)")
    df = measurement_table(run, baseline=baseline)
    if df.empty or baseline not in set(df.backend) or not any(m.timed_ok for m in ms):
        return
    given = df[(df.variant == "eps=given") & (df.device == "cpu")]
    if given.empty:
        return
    dtype = "float64" if "float64" in set(given.dtype) else sorted(set(given.dtype))[0]
    threads = int(given.threads.min())
    sel = given[(given.dtype == dtype) & (given.threads == threads)]
    workloads = list(dict.fromkeys(sel.workload))
    console.print(f"speed-up over {escape(baseline)} ({dtype}, {threads} thread{'s' if threads > 1 else ''}, eps given; "
                  "+ faster, - slower, = same, ? too noisy, x not ok, · skipped):", highlight=False)  # fmt: skip
    # two workloads per grid keep it within 100 columns
    for pair in (workloads[i : i + 2] for i in range(0, len(workloads), 2)):
        columns = [(w, b) for w in pair for b in sorted(set(sel[sel.workload == w].batch))]
        grid = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1))
        grid.add_column("")
        for w, b in columns:
            grid.add_column(
                f"{w}\nB={b}" if b == min(x for ww, x in columns if ww == w) else f"\nB={b}", justify="right"
            )
        backends = [b for b in dict.fromkeys(sel[sel.workload.isin(pair)].backend) if b != baseline]
        for backend in backends:
            cells = []
            for w, b in columns:
                row = sel[(sel.workload == w) & (sel.batch == b) & (sel.backend == backend)]
                if row.empty:
                    cells.append("")
                    continue
                r = row.iloc[0]
                if r.status == "skipped":
                    cells.append("·")
                elif not r.timed_ok:
                    cells.append(f"[red]{escape(str(r.status)[:4])} x[/]")
                elif r.speedup == r.speedup:  # not NaN
                    mark = Verdict(r.verdict).mark if r.verdict else ""
                    style = "green" if mark == "+" else "red" if mark == "-" else ""
                    text = f"{r.speedup:.3g}x{mark}"
                    cells.append(f"[{style}]{text}[/]" if style else text)
                else:
                    cells.append("")
            grid.add_row(escape(backend), *cells)
        console.print(grid)


_STYLE = {Verdict.SLOWER: "yellow", Verdict.FASTER: "green", Verdict.SAME: "", Verdict.NOISY: "magenta"}


def print_compare(report: Comparison, console: Console, outcome: str | None = None) -> None:
    table = Table(title=escape(f"{report.head.label} vs {report.base.label}"), title_justify="left")
    for col, justify in (("case", "left"), (report.base.label, "right"), (report.head.label, "right"),
                         ("ratio (95% CI)", "right"), ("change", "right"), ("verdict", "left")):  # fmt: skip
        table.add_column(escape(col), justify=justify)
    for c in report.comparisons:
        style = "bold red" if c.regression else _STYLE[c.verdict]
        verdict = c.word
        table.add_row(
            escape(c.case.label()),
            fmt_time(c.base_median, report.normalized, c.unit),
            fmt_time(c.head_median, report.normalized, c.unit),
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
    for line in report.describe_rules():
        console.print(escape(line), style="dim", highlight=False)
    text = outcome or report.headline()
    bad = report.failed or "NOT PASSED" in text or "FAIL" in text
    console.print(text, style="bold red" if bad else "bold green", highlight=False, markup=False)
