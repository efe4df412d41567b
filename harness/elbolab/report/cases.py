"""Each case's detail, one click from its grid cell: what was measured and how well, its samples as a
strip beside its baseline's (every sample a dot, as criterion shows a benchmark's distribution),
the evidence that the timed calls did the work, and its history per commit where the history store
has one (a sparkline, as asv draws beside every benchmark).

The strips are drawn here from numbers alone (a few hundred bytes each, no matplotlib): a report of
several hundred cases stays well under a megabyte. The detail is hidden until its anchor is the
page's target (CSS :target), so it costs no scrolling; the page keeps working without script.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from markupsafe import Markup, escape

from elbolab.analyse.table import device_median
from elbolab.model.measurement import Measurement
from elbolab.report import plots
from elbolab.report.format import accuracy_text, fmt_count, fmt_ns, fmt_pct, fmt_x, missing
from elbolab.report.history import CaseHistory
from elbolab.report.summary import short_case
from elbolab.report.tables import CUDA_CLOCK
from elbolab.report.trends import sparkline

STRIP_WIDTH, LABEL_WIDTH, ROW_HEIGHT = 330, 92, 15


def anchor(index: int, run: int = 0) -> str:
    """The id of a case's detail: its position in its results file (and the file's, past the first)."""
    return f"c{index}" if run == 0 else f"r{run}c{index}"


def _x(v: float, lo: float, span: float) -> float:
    return LABEL_WIDTH + 4 + (STRIP_WIDTH - LABEL_WIDTH - 10) * (math.log(v) - lo) / span


def strip(
    label: str, x: np.ndarray, colour: str, ref: tuple[str, float, float, float] | None = None
) -> Markup:
    """A case's per-call samples on a log axis: a dot per sample (jittered across the row), its
    median as a bar; ref (label, median, 95% interval) is the baseline's median drawn as a grey bar
    with its interval as a band, so the speed-up can be seen; the axis's ends are labelled. Whole
    pixels and the page's CSS for the strokes keep it to a few hundred bytes."""
    x = x[np.isfinite(x) & (x > 0)]
    if not x.size:
        return Markup("")
    values = [float(x.min()), float(x.max())] + ([ref[1], ref[2], ref[3]] if ref else [])
    values = [v for v in values if v > 0 and math.isfinite(v)]
    lo, hi = math.log(min(values)), math.log(max(values))
    pad = max((hi - lo) * 0.04, 0.01)
    lo, hi = lo - pad, hi + pad
    span = hi - lo
    height, y0 = 2 * ROW_HEIGHT + 13, ROW_HEIGHT
    points = [(round(_x(v, lo, span)), y0 + (i * 7) % 5 - 2) for i, v in enumerate(x)]
    dots = (
        f"M{points[0][0]} {points[0][1]}h0"
        + "".join(  # relative moves: a few bytes a dot
            f"m{b[0] - a[0]} {b[1] - a[1]}h0" for a, b in zip(points, points[1:], strict=False)
        )
    )
    med = _x(float(np.median(x)), lo, span)
    parts = [f'<text x="{LABEL_WIDTH}" y="{y0 + 4}" text-anchor="end">{escape(label)}</text>']
    if ref is not None:
        name, m, a, b = ref
        xa, xb, xm = (_x(v, lo, span) for v in (a, b, m))
        parts.append(f'<rect class="r" x="{xa:.0f}" y="{y0 - 9}" width="{max(xb - xa, 1):.0f}" height="18"/>'
                     f'<path class="b" d="M{xm:.0f} {y0 - 9}v18"/>'
                     f'<text x="{min(xm, STRIP_WIDTH - 40):.0f}" y="{y0 - 11}" text-anchor="middle">{escape(name)}</text>')  # fmt: skip
    parts.append(
        f'<path class="d" d="{dots}" stroke="{colour}"/><path class="m" d="M{med:.0f} {y0 - 6}v12"/>'
    )
    axis = height - 13
    parts.append(f'<path class="a" d="M{LABEL_WIDTH + 4} {axis}H{STRIP_WIDTH - 6}"/>'
                 f'<text x="{LABEL_WIDTH + 4}" y="{height - 1}">{escape(fmt_ns(math.exp(lo + pad)))}</text>'
                 f'<text x="{STRIP_WIDTH - 6}" y="{height - 1}" text-anchor="end">{escape(fmt_ns(math.exp(hi - pad)))}'
                 "</text>")  # fmt: skip
    return Markup(f'<svg class="strip" width="{STRIP_WIDTH}" height="{height}">{"".join(parts)}</svg>')


@dataclass(frozen=True)
class CaseDetail:
    anchor: str
    title: str
    status: str
    facts: list[str]
    strip: Markup
    spark: Markup
    history: str  # what the sparkline shows, or why there is none


def _evidence(m: Measurement, share: float | None = None) -> str:
    """What the harness proved about the timed calls (the ceiling share only where it is not the
    share the rates already show)."""
    e = m.evidence
    if e is None:
        return ""
    parts = [
        f"{e.input_sets} input sets, {e.rotations} rewrites",
        f"{e.checked_calls + e.checked_samples} calls checked",
    ]
    if e.busy_threads is not None:
        cores = f" on cores {', '.join(map(str, e.pinned_cpus))}" if e.pinned_cpus else ""
        parts.append(f"{e.busy_threads} busy thread{'s' if e.busy_threads != 1 else ''}{cores}")
    if e.children:
        parts.append(f"{e.children} child processes")
    if e.ceiling_share is not None and not math.isclose(e.ceiling_share, share or -1):
        parts.append(f"{fmt_pct(e.ceiling_share)} of the bandwidth ceiling")
    if e.call_n_ratio is not None:
        parts.append(f"call_n(n) at {e.call_n_ratio:.2f} of a loop of call() per call")
    parts += list(e.notes)
    return "evidence: " + "; ".join(parts)


def _history(h: CaseHistory | None, stored: bool) -> tuple[Markup, str]:
    if h is None:
        return Markup(""), ("not in the history store" if stored else "")
    if len(h.medians) < 2:
        return Markup(""), "history: this commit only, so far"
    changes = (
        f", {len(h.changes)} change point{'s' if len(h.changes) != 1 else ''} (dots)" if h.changes else ""
    )
    text = (f"history over {len(h.medians)} commits ({h.commits[0][:7]} to {h.commits[-1][:7]}): "
            f"{fmt_ns(h.medians[0])} to {fmt_ns(h.medians[-1])}{changes}")  # fmt: skip
    return sparkline(list(h.medians), list(h.changes), width=200, height=22), text


def detail(r, base, anchor_id: str, history: CaseHistory | None = None, stored: bool = False) -> CaseDetail:
    """The detail of one row of the measurement table (r), with its cell's baseline row (base, or
    None) for the strip."""
    m: Measurement = r.m
    facts = []
    if m.status != "ok":
        facts.append(f"{m.status}: {m.reason or 'no reason given'}")
    if r.n:
        rounds = f" in {len(m.rounds)} rounds" if len(m.rounds) > 1 else ""
        clock = f" ({CUDA_CLOCK})" if m.case.device != "cpu" else ""
        facts.append(f"median {fmt_ns(r.median_ns)} [{fmt_ns(r.ci_lo_ns)}, {fmt_ns(r.ci_hi_ns)}] per call{clock}, "
                     f"{r.n} samples of {m.loops:,} calls{rounds}")  # fmt: skip
    dev = device_median(m)
    if dev:
        facts.append(
            f"on the device (CUDA events) {fmt_ns(dev[0])} [{fmt_ns(dev[1])}, {fmt_ns(dev[2])}] per call"
        )
    if m.counts is not None:
        c = m.counts
        spread = f" ±{100 * c.spread:.1f}%" if c.spread > 0.0005 else ""
        facts.append(f"counted, not timed: {fmt_count(c.instructions)}{spread} instructions, {fmt_count(c.estimated_cycles)} "
                     f"estimated cycles, {fmt_count(c.l1_misses)} L1 / {fmt_count(c.ll_misses)} LL misses per call")  # fmt: skip
    if not missing(r.speedup) and r.speedup_note != "baseline":
        note = re.sub(
            r"interval widened by (±[\d.]+%), the noise the null control measured",
            r"interval widened \1 by the null control",
            str(r.speedup_note or ""),
        )
        facts.append(
            f"speed-up {fmt_x(r.speedup, r.speedup_lo, r.speedup_hi)}: {r.verdict}"
            + (f" ({note})" if note else "")
        )
    elif r.speedup_note:
        facts.append(str(r.speedup_note))
    if not missing(r.first_call_ns):
        facts.append(f"first call {fmt_ns(r.first_call_ns)} (timed apart)")
    acc = accuracy_text(m.check)
    if acc:
        facts.append(f"correct digits: {acc}")
    if not missing(r.gb_per_s) and r.n:
        share = f" ({fmt_pct(r.bw_share)} of {r.bw_limit_level})" if r.bw_limit_level else ""
        facts.append(f"{r.gb_per_s:.3g} GB/s{share}, {r.gflop_per_s:.3g} GFLOP/s")
    if r.plausibility and m.status != "implausible":
        facts.append(str(r.plausibility))
    ev = _evidence(m, None if missing(r.bw_share) else float(r.bw_share))
    if ev:
        facts.append(ev)
    ref = None
    if base is not None and base.n and base.m is not m:
        ref = (str(base.label), float(base.median_ns), float(base.ci_lo_ns), float(base.ci_hi_ns))
    drawn = (
        strip(str(r.label), m.per_call_ns, plots.backend_colour(m.case.backend), ref) if r.n else Markup("")
    )
    spark, history_text = _history(history, stored)
    return CaseDetail(anchor_id, short_case(m.case), m.status, facts, drawn, spark, history_text)
