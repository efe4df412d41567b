"""The speed-up matrices: one per workload (rows: backends, columns: batch sizes), each cell coloured
by its speed-up over the baseline on a diverging log scale, with its time and interval printed in
the cell (never on hover only: a phone and a printout have no hover), and one click to the case's
detail.

Words follow the statistics: the verdict's mark is the one rule of elbolab.analyse.verdict, on the
interval widened by the run's null control; the fastest valid backend is outlined only when it is
faster than every other beyond that noise, and backends the verdict cannot tell apart from it are
outlined as a tie (dashed), never one of them as the winner.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

import pandas as pd
from markupsafe import Markup, escape

from elbolab.analyse.control import ControlNoise
from elbolab.analyse.table import KEY_FIELDS, backend_label, device_median
from elbolab.analyse.verdict import Verdict, judge_in_run
from elbolab.model.backend import is_control
from elbolab.model.measurement import Measurement
from elbolab.report import plots
from elbolab.report.format import fmt_count, fmt_ns, fmt_x, missing
from elbolab.report.tables import CUDA_CLOCK, counted

BROKEN = ("incorrect", "failed", "timeout")
DIMS = ("input_dim", "latent_dim", "hidden_dim", "importance_samples")
SATURATE = 30.0  # a speed-up (or slow-down) of this much gets the full colour
GOOD, BAD, WHITE = (26, 152, 80), (215, 48, 39), (255, 255, 255)


def speed_colour(speedup: float) -> tuple[str, str]:
    """(background, text colour) of a speed-up: log scale, green faster, red slower, white at 1x."""
    t = max(-1.0, min(1.0, math.log(speedup) / math.log(SATURATE)))
    t = math.copysign(abs(t) ** 0.75, t)
    end = GOOD if t > 0 else BAD
    rgb = tuple(round(w + (e - w) * abs(t)) for w, e in zip(WHITE, end, strict=True))
    return "#{:02x}{:02x}{:02x}".format(*rgb), ("#ffffff" if abs(t) > 0.55 else "#1d2330")


def fmt_speed(s: float) -> str:
    """A speed-up for a dense grid: '52x', '2.6x', '0.28x'."""
    if s >= 9.95:
        return f"{s:.0f}x"
    if s >= 0.995:
        return f"{s:.1f}x"
    return f"{s:.2g}x"


def colour_scale() -> list[tuple[str, str, str]]:
    """The legend of the matrix colours: (text, background, foreground)."""
    out = []
    for s in (1 / SATURATE, 0.1, 1 / 3, 1.0, 3.0, 10.0, SATURATE):
        bg, fg = speed_colour(s)
        out.append((fmt_speed(s) if s >= 1 else f"1/{1 / s:.0f}", bg, fg))
    return out


def _plain(v) -> str:
    return "" if missing(v) else str(v)


def _two(v: float) -> str:
    """Two significant digits, as a dense grid needs them: '2.5', '0.16', '37', '140', '∞'."""
    if math.isinf(v):
        return "∞"
    return f"{v:.0f}" if abs(v) >= 9.95 else f"{v:.2g}"


def _interval(lo: float, hi: float) -> str:
    return f"{_two(lo)}–{_two(hi)}"


def time_note(m: Measurement) -> str:
    """For a case on a device: which clock its time is, and the device's own median."""
    if m.case.device == "cpu":
        return ""
    dev = device_median(m)
    return f" ({CUDA_CLOCK}" + (f"; CUDA events: {fmt_ns(dev[0])} per call)" if dev else ")")


# ------------------------------------------------------------------------------------ cells


@dataclass(frozen=True)
class Cell:
    text: str
    cls: str = ""
    style: str = ""
    title: str = ""
    sub: str = ""  # the second line: the time and the interval, printed
    href: str = ""  # the case's detail


@dataclass(frozen=True)
class MatrixRow:
    label: str
    backend: str
    colour: str
    cells: list[Cell]
    device: str = "cpu"  # another device: a hollow swatch, as its hollow markers in the plots


@dataclass(frozen=True)
class Matrix:
    title: str
    setting: str
    columns: list[str]
    rows: list[MatrixRow]
    hidden: list[tuple[str, str]]  # rows left out (all skipped): label, why
    hidden_label: str = "not run here"
    note: str = ""  # what the cells are when they are not speed-ups


def speed_cell(speed: float, lo: float, hi: float, verdict: Verdict, title: str, lead: str = "",
               sub: str = "", href: str = "") -> Cell:  # fmt: skip
    bg, fg = speed_colour(speed)
    return Cell(f"{fmt_speed(speed)} {verdict.mark}", f"sp {lead}".strip(), f"background:{bg};color:{fg}",
                f"{title}: {fmt_x(speed, lo, hi)}, {verdict.value}", sub, href)  # fmt: skip


def _time_sub(r) -> str:
    return f"{fmt_ns(r.ci_lo_ns)}–{fmt_ns(r.ci_hi_ns)}" if r.n else ""


def case_cell(r, baseline: str, lead: str = "", href: str = "", has_baseline: bool = True) -> Cell:
    """One case of a speed-up matrix (r: a row of the measurement table, or None); lead: 'win' or
    'tie' where it leads its cell."""
    if r is None:
        return Cell("", "none", title="not measured in this run")
    where = f"{r.label}, B={r.batch}"
    if counted(r.m):
        c = r.m.counts
        return Cell("counted", "na", title=f"{where}: counted, not timed: {fmt_count(c.instructions)} instructions, "
                    f"{fmt_count(c.estimated_cycles)} estimated cycles per call", href=href)  # fmt: skip
    if r.status == "skipped":
        return Cell("–", "skip", title=f"{where}: skipped: {_plain(r.reason)}")
    if r.status in BROKEN:
        return Cell(f"✗ {r.status}", "bad", title=f"{where}: {r.status}: {_plain(r.reason)}", href=href)
    if r.implausible:
        return Cell("⚠ implausible", "flag", title=f"{where}: {r.plausibility}",
                    sub=f"{fmt_ns(r.median_ns)}: not a speed-up" if r.n else "", href=href)  # fmt: skip
    lead_words = {"win": "; the fastest valid backend here", "tie": "; tied for the fastest here"}.get(
        lead, ""
    )
    # the time and the interval are printed in the cell: a title only says what a mark cannot
    if r.speedup_note == "baseline" or not has_baseline:
        title = "the baseline" if r.speedup_note == "baseline" else f"a time: no {baseline} here"
        return Cell(fmt_ns(r.median_ns), f"base {lead}".strip(), title=title + time_note(r.m) + lead_words,
                    sub=_time_sub(r), href=href)  # fmt: skip
    if missing(r.speedup) or not r.verdict:
        return Cell("n/a", "na", title=f"{where}: {_plain(r.speedup_note) or 'no speed-up'}", href=href)
    sub = f"{fmt_ns(r.median_ns)} · {_interval(r.speedup_lo, r.speedup_hi)}"
    bg, fg = speed_colour(r.speedup)
    style = f"background:{bg}" + (f";color:{fg}" if fg != "#1d2330" else "")
    extra = f"{time_note(r.m)}{lead_words}".lstrip("; ")  # the mark is the verdict; only what it cannot say
    return Cell(
        f"{fmt_speed(r.speedup)} {Verdict(r.verdict).mark}", f"sp {lead}".strip(), style, extra, sub, href
    )


# ------------------------------------------------------------------------------------ leaders


def cell_key(r) -> tuple:
    return tuple(getattr(r, f) for f in KEY_FIELDS)


def leaders(df: pd.DataFrame, noise: ControlNoise) -> dict[tuple, tuple[set[str], bool]]:
    """Per grid cell: the labels that lead it and whether they are tied. The fastest valid backend
    (ok, plausible, not the control) leads; another leads with it when the shared verdict, on their
    interval widened by the cell's null control, does not find the fastest faster (a tie). Judged
    in order of median until the first backend the fastest beats."""
    out: dict[tuple, tuple[set[str], bool]] = {}
    if df.empty:
        return out
    label, median, m = df["label"].to_numpy(), df["median_ns"].to_numpy(), df["m"].to_numpy()
    valid = (df["timed_ok"] & ~df["implausible"] & ~df["backend"].map(is_control)).to_numpy()
    for key, positions in df.groupby(list(KEY_FIELDS), dropna=False, sort=False).indices.items():
        rows = sorted((i for i in positions if valid[i]), key=lambda i: (median[i], i))
        if not rows:
            continue
        first = m[rows[0]]
        lead = {label[rows[0]]}
        d = noise.for_case(first.case)
        for i in rows[1:]:
            if judge_in_run(m[i], first, workload=first.case.workload, noise=d).verdict is Verdict.FASTER:
                break
            lead.add(label[i])
        out[key if isinstance(key, tuple) else (key,)] = (lead, len(lead) > 1)
    return out


# ------------------------------------------------------------------------------------ matrices


def _column_key(r) -> tuple:
    return (int(r.batch), *(getattr(r, d) for d in DIMS))


def _column_names(keys: list[tuple]) -> list[str]:
    varying = [i for i in range(len(DIMS)) if len({k[1 + i] for k in keys}) > 1]
    short = {"input_dim": "D", "latent_dim": "L", "hidden_dim": "H", "importance_samples": "K"}
    return [f"B={k[0]}" + "".join(f" {short[DIMS[i]]}={k[1 + i]}" for i in varying) for k in keys]


def _row_order(pair: tuple[str, str], baseline: str) -> tuple:
    return (pair[0] != baseline, is_control(pair[0]), *plots.series_order(pair))


def workload_title(workload: str, variant: str) -> str:
    return workload if variant == "eps=given" else f"{workload} ({variant.replace('=', ' ')})"


def threads_text(t: int) -> str:
    return f"{t} thread{'s' if t != 1 else ''}"


def build_matrix(
    sub: pd.DataFrame, title: str, setting: str, cell_of, baseline: str, note: str = ""
) -> Matrix | None:
    """Rows: (backend, device) pairs; columns: batch (and dims when they vary)."""
    if sub.empty:
        return None
    keys = sorted({_column_key(r) for r in sub.itertuples()})
    by_pair: dict[tuple[str, str], dict[tuple, object]] = {}
    for r in sub.itertuples():
        by_pair.setdefault((r.backend, r.device), {})[_column_key(r)] = r
    rows, hidden = [], []
    for pair in sorted(by_pair, key=lambda p: _row_order(p, baseline)):
        found = by_pair[pair]
        label = backend_label(*pair)
        if all(getattr(r, "status", "") == "skipped" for r in found.values()):
            hidden.append((label, "; ".join(Counter(_plain(r.reason) for r in found.values()))))
            continue
        cells = [cell_of(found.get(k)) for k in keys]
        rows.append(MatrixRow(label, pair[0], plots.backend_colour(pair[0]), cells, pair[1]))
    return Matrix(title, setting, _column_names(keys), rows, hidden, note=note)


def speedup_matrices(df: pd.DataFrame, baseline: str, noise: ControlNoise | None = None, headline: bool = True,
                     anchors: dict[int, str] | None = None, lead: dict | None = None) -> list[Matrix]:  # fmt: skip
    """One matrix per workload at its headline setting (headline=True), or one per other (dtype,
    threads) setting; those with the baseline first. anchors: a case's detail by the row's index in
    df; lead: leaders() of df (computed here when not given)."""
    if df.empty:
        return []
    if lead is None:
        lead = leaders(df, noise if noise is not None else ControlNoise({}, None))
    out = []
    for workload, variant in plots.workload_pairs(df):
        wdf = df[(df.workload == workload) & (df.variant == variant)]
        head = plots.headline_setting(wdf)
        settings = sorted(set(zip(wdf.dtype, wdf.threads, strict=True)), key=lambda s: (s[0] != "float64", s))
        for dtype, t in [head] if headline else [s for s in settings if s != head]:
            sub = wdf[(wdf.dtype == dtype) & (wdf.threads == t)]
            with_base = bool((sub.backend == baseline).any())

            def cell_of(r, with_base=with_base):
                if r is None:
                    return case_cell(None, baseline)
                labels, tie = lead.get(cell_key(r), (set(), False))
                mark = ("tie" if tie else "win") if r.label in labels else ""
                href = f"#{anchors[r.Index]}" if anchors and r.Index in anchors else ""
                return case_cell(r, baseline, mark, href, with_base)

            note = "" if with_base else f"no {baseline} measured here: times per call, not speed-ups"
            m = build_matrix(sub, workload_title(workload, variant), f"{dtype}, {threads_text(t)}", cell_of,
                             baseline, note)  # fmt: skip
            if m is not None:
                out.append(m)
    return sorted(out, key=lambda m: bool(m.note))  # stable: speed-up matrices first


def with_hidden_label(m: Matrix, label: str) -> Matrix:
    return replace(m, hidden_label=label)


# ------------------------------------------------------------------------------------ HTML


def _cell_html(c: Cell) -> str:
    attrs = f' class="{escape(c.cls)}"' + (f' style="{escape(c.style)}"' if c.style else "")
    attrs += f' title="{escape(c.title)}"' if c.title else ""
    inner = str(escape(c.text)) + (f"<small>{escape(c.sub)}</small>" if c.sub else "")
    return f"<td{attrs}>" + (f'<a href="{escape(c.href)}">{inner}</a>' if c.href else inner) + "</td>"


def grid_html(matrices: list[Matrix]) -> Markup:
    """The matrices as HTML, every string escaped (built here, not in the template: a run of tens
    of thousands of cases has as many cells, and a template loop costs ten times as much)."""
    out = ['<div class="grid">']
    for m in matrices:
        out.append('<div class="mx"><div class="scroll"><table class="matrix">')
        out.append(
            f'<caption><strong>{escape(m.title)}</strong> <span class="muted">{escape(m.setting)}</span></caption>'
        )
        out.append("<tr><th>backend</th>" + "".join(f"<th>{escape(c)}</th>" for c in m.columns) + "</tr>")
        for row in m.rows:
            swatch = ("background:" if row.device == "cpu" else "border-color:") + row.colour
            out.append(f'<tr><th><span class="sw" data-backend="{escape(row.backend)}" data-device="{escape(row.device)}" '
                       f'style="{escape(swatch)}"></span>{escape(row.label)}</th>'
                       + "".join(_cell_html(c) for c in row.cells) + "</tr>")  # fmt: skip
        out.append("</table></div>")
        if m.note:
            out.append(f'<p class="mnote">{escape(m.note)}</p>')
        if m.hidden:
            spans = ", ".join(
                f'<span title="{escape(why)}">{escape(label)}</span>' for label, why in m.hidden
            )
            out.append(f'<p class="hidden">{escape(m.hidden_label)}: {spans}</p>')
        out.append("</div>")
    out.append("</div>")
    return Markup("\n".join(out))
