"""Terminal rendering: rich tables of runs and comparisons. Every string that comes from a results
file or a backend name is escaped, so a name like '[/bold]' prints as text."""

from __future__ import annotations

import math
import re
import textwrap

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from elbolab.analyse.compare import Comparison
from elbolab.analyse.control import ControlNoise, control_noise
from elbolab.analyse.verdict import Verdict
from elbolab.model.backend import control_name
from elbolab.model.measurement import BROKEN_STATUSES
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


WIDTH = 100  # no summary line is longer: it never wraps mid-sentence in a 100-column terminal or log
TOP_PROBLEMS = 5
GRID_BATCH = 128  # the other workloads' column in the console grid: the tutorial's batch
SHORT_NAMES = {"rust-inner": "n calls looped inside Rust", "numpy-control": "numpy again, the null control"}


def _fit(text: str, width: int = WIDTH) -> str:
    """One line of at most `width` cells, cut at a word with an ellipsis where it is longer."""
    if cell_len(text) <= width:
        return text
    cut = text[: width - 1]
    while cell_len(cut) > width - 1:
        cut = cut[:-1]
    space = cut.rfind(" ")
    return (cut[:space] if space > width // 2 else cut).rstrip(" ,;:·") + "…"


_UNIT = re.compile(r"(\d) (ns|µs|ms|s|GB/s|MB|MiB|GiB|KiB)\b")


def _lines(text: str, indent: str = "  ", width: int = WIDTH) -> list[str]:
    """A sentence wrapped at words into lines of at most `width` cells, the rest indented; a number
    stays with its unit."""
    glued = _UNIT.sub("\\1\u00a0\\2", text)  # textwrap breaks only at ASCII whitespace
    lines = textwrap.wrap(glued, width, subsequent_indent=indent, break_on_hyphens=False) or [""]
    return [line.replace("\u00a0", " ") for line in lines]


def print_wrapped(console: Console, text: str, style: str = "") -> None:
    """A sentence in lines of at most 100 columns, wrapped at words with the rest indented, whatever
    the console's width (a terminal's, or 200 or 80 when piped): the run's summary, the training's
    lines and the results line read alike in a terminal and a CI log."""
    for line in _lines(text):
        console.print(line, style=style or None, markup=False, highlight=False, soft_wrap=True)


class _Out:
    """Plain lines (no rich wrapping: the width is ours) with a style each, and a count."""

    def __init__(self, console: Console):
        self.console, self.n = console, 0

    def __call__(self, text: str, style: str = "", wrap: bool = False) -> None:
        for line in _lines(text) if wrap else [_fit(text)]:
            self.console.print(line, style=style or None, markup=False, highlight=False, soft_wrap=True)
            self.n += 1

    def grid(self, table: Table) -> None:
        self.console.print(table, width=WIDTH, soft_wrap=False)
        self.n += table.row_count + 2


def print_run_summary(run: Run, console: Console, baseline: str = "numpy") -> None:
    """What a run found, in at most 30 lines of at most 100 columns: the statuses (problems first),
    the machine and the run's resolution in a line each, the problems worst first, the compile time
    (in seconds: not a problem), the claims' verdicts, the machine's warnings, and a grid of
    speed-ups over the baseline. The words are the report's first screen's (elbolab.report.summary)."""
    from elbolab.analyse.anomalies import scan
    from elbolab.analyse.table import measurement_table
    from elbolab.report import summary
    from elbolab.report.claims import Outcome, check_claims

    out = _Out(console)
    ms = run.measurements
    counts = summary.status_counts(run)
    broken = any(s in BROKEN_STATUSES or s == "implausible" for s, _ in counts)
    tally = ", ".join(f"{n} {s}" for s, n in counts)
    out(f"run {run.run_id}: {len(ms)} cases: {tally}", "bold red" if broken else "bold")
    out(f"machine: {summary.machine_line(run, short=True)}", wrap=True)
    control = control_noise(list(ms), baseline)
    if control.run is not None:
        out(f"resolution: {control_line(control, baseline)}", wrap=True)
    found = scan(run)
    ps = summary.problems(run, found)
    if ps:
        out(f"problems ({len(ps)}), worst first:", "bold")
        for i, p in enumerate(ps[:TOP_PROBLEMS], 1):
            out(f"  {i}. {p.what}: {summary.short_case(p.case)}", "red" if p.order < 4 else "yellow")
        if len(ps) > TOP_PROBLEMS:
            rest = ", ".join(f"{n} {kind}" for kind, n in summary.problem_counts(ps[TOP_PROBLEMS:]))
            out(f"  ... and {len(ps) - TOP_PROBLEMS} more: {rest}", wrap=True)
    else:
        out("problems: none (every case correct and plausible, nothing looks wrong)")
    fc = summary.first_calls(ms, found)
    if fc:
        each = ", ".join(f"{f.backend} up to {fmt_ns(f.longest_ns)}" for f in fc)
        out(f"compile, first calls (timed apart; not a problem): {each}", wrap=True)
    warnings = (run.health.get("start") or {}).get("warnings", [])
    if warnings:
        out(f"machine warnings: {'; '.join(w.split(':')[0] for w in warnings)} (elbolab doctor)", "yellow")
    df = measurement_table(run, baseline=baseline)
    claims = check_claims(df, run, control) if not df.empty else []
    if claims:
        by = {o: [c.id for c in claims if c.outcome is o] for o in Outcome}
        words = {Outcome.HOLDS: "hold", Outcome.HOLDS_ONLY_WHEN: "hold only partly",
                 Outcome.DOES_NOT_HOLD: "do not hold", Outcome.NOT_MEASURED: "not measured"}  # fmt: skip
        out("claims: " + "; ".join(f"{', '.join(ids)} {words[o]}" for o, ids in by.items() if ids), wrap=True)
        c5 = next((c for c in claims if c.id == "C5"), None)  # the tutorial's headline: Rust 50x NumPy
        if c5 is not None and c5.outcome is not Outcome.NOT_MEASURED:
            out(f"  C5 {c5.claim} {c5.figure}: {c5.summary or c5.verdict}", wrap=True)
    counted = [m for m in ms if m.counted_ok and not m.timed_ok]
    if counted:
        # an instruction count is not a time: no speed-up grid, the counts themselves
        out(
            f"instructions per call ({len(counted)} counted case{'s' if len(counted) > 1 else ''}; callgrind):"
        )
        for m in counted[:8]:
            out(f"  {m.case.label():<60} {m.counts.instructions:>16,.0f}")
        if len(counted) > 8:
            out(f"  ... and {len(counted) - 8} more (elbolab show FILE)")
    if df.empty or baseline not in set(df.backend) or not any(m.timed_ok for m in ms):
        return
    _grid(out, df, baseline)


def _grid(out: _Out, df, baseline: str) -> None:
    """Speed-ups over the baseline at the headline setting: every batch of the first workload, the
    tutorial's batch of the others (every cell: the report)."""
    given = df[(df.variant == "eps=given") & (df.device == "cpu")]
    if given.empty:
        return
    dtype = "float64" if "float64" in set(given.dtype) else sorted(set(given.dtype))[0]
    threads = int(given.threads.min())
    sel = given[(given.dtype == dtype) & (given.threads == threads)]
    workloads = list(dict.fromkeys(sel.workload))
    columns = [(workloads[0], b) for b in sorted(set(sel[sel.workload == workloads[0]].batch))]
    for w in workloads[1:]:
        batches = sorted(set(sel[sel.workload == w].batch))
        columns.append((w, min(batches, key=lambda b: (abs(b - GRID_BATCH), b))))
    out(f"speed-up over {baseline}, {dtype}, {threads} thread{'s' if threads > 1 else ''} (+ faster - slower = same "
        "? too noisy x not ok · skipped):")  # fmt: skip
    grid = Table(box=None, pad_edge=False, show_edge=False, padding=(0, 1))
    grid.add_column("")
    for k, (w, b) in enumerate(columns):
        first = k == 0 or columns[k - 1][0] != w
        grid.add_column(f"{w if first else ''}\nB={b}", justify="right", no_wrap=True)
    backends = [b for b in dict.fromkeys(sel.backend) if b != baseline]
    for backend in backends:
        cells = []
        for w, b in columns:
            row = sel[(sel.workload == w) & (sel.batch == b) & (sel.backend == backend)]
            cells.append(_grid_cell(row.iloc[0]) if not row.empty else "")
        grid.add_row(escape(backend), *cells)
    out.grid(grid)
    # the two names a reader of the tutorial cannot guess (every name: the report, under its grids)
    shown = {b: w for b, w in SHORT_NAMES.items() if b in backends}
    if shown:
        out("; ".join(f"{b}: {w}" for b, w in shown.items()))


def _grid_cell(r) -> str:
    if r.status == "skipped":
        return "·"
    if not r.timed_ok:
        return f"[red]{escape(str(r.status)[:4])} x[/]"
    if r.speedup == r.speedup:  # not NaN
        mark = Verdict(r.verdict).mark if r.verdict else ""
        style = "green" if mark == "+" else "red" if mark == "-" else ""
        text = f"{r.speedup:.3g}x{mark}"
        return f"[{style}]{text}[/]" if style else text
    return ""


def control_line(control: ControlNoise, baseline: str) -> str:
    """The run's null control in one line: the reference against itself, and what it means."""
    j = control.run
    lo, hi = j.ci95
    x = math.expm1(control.run_noise)
    noise = (f"±{x:.0%}" if x >= 0.01 else f"±{x:.1%}") if math.isfinite(x) else "any difference"
    head = (f"{control_name(baseline)} {j.speedup.value:.3g}x [{1 / hi:.3g}, {1 / lo if lo > 0 else float('inf'):.3g}] "
            f"of {baseline} ({j.verdict.value}, {len(control.cells)} cells)")  # fmt: skip
    if j.verdict is Verdict.SAME:
        return head + f": {noise} is this run's noise"
    return head + f": it cannot tell {noise}"


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
