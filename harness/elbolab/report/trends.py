"""The trends page: a static, self-contained HTML view of the history in a results store.

One section per machine (machines side by side in the overview, never mixed in a series). In each:
the change points (commit range, before and after, ratio with its 95% interval and the shared
verdict), one small plot per changed case (median per call over commits in ancestry order, its 95%
interval as a band, the changes marked), and every case in a compact table grouped by workload
with a sparkline, so ~100 commits x ~700 cases stays a page a person can read and a file of a
few MB at most.

Jinja2 with autoescaping (every string from the store is escaped); the only markup inserted as is
is SVG: matplotlib's (its text XML-escaped by matplotlib, '$' escaped so no name becomes math text)
and the sparklines drawn here from numbers alone. No script, no external URL, no fetch.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jinja2
import matplotlib.pyplot as plt  # drawn with the Agg backend, which elbolab.report.plots selects
import numpy as np
from markupsafe import Markup
from matplotlib import ticker

from elbolab.analyse.changes import ChangePoint, History, Series, all_changes
from elbolab.analyse.verdict import DEFAULT_RULE, Rule
from elbolab.report import plots
from elbolab.report.format import fmt_ns

TEMPLATES = Path(__file__).with_name("templates")
MAX_PLOTS = 48  # small plots per machine; further changed cases are in the tables
SPARK_POINTS = 60  # a sparkline shows at most this many commits (medians of equal runs of commits)
SLOWER, FASTER, NEUTRAL = "#b3261e", "#1b6e3a", "#8a8f99"

# ------------------------------------------------------------------------------------ views


@dataclass
class CaseRow:
    label: str
    backend: str
    colour: str
    commits: int
    first: str
    last: str
    overall: str  # last / first
    changes: int
    regression: bool
    spark: Markup
    status: str  # the newest commit's status when it is not ok


@dataclass
class ChangeRow:
    label: str
    good: str
    bad: str
    subject: str
    between: int | None
    before: str
    after: str
    ratio: str
    verdict: str
    regression: bool
    cls: str


@dataclass
class MachineView:
    anchor: str
    label: str
    machine_id: str
    facts: list[tuple[str, str]]
    runs: int
    commits: int
    series: int
    changes: list[ChangeRow]
    n_regressions: int
    n_slower: int
    n_faster: int
    plots: list[tuple[str, Markup]]
    more_plots: int
    groups: list[tuple[str, list[CaseRow]]]
    skips: list[tuple[str, str, str]]


def _x(ratio: float, ci: tuple[float, float]) -> str:
    lo, hi = ci
    return f"{ratio:.3f}x [{lo:.3f}, {'∞' if math.isinf(hi) else f'{hi:.3f}'}]"


def _subject(commits: dict, sha: str) -> str:
    return ((commits.get(sha) or {}).get("subject") or "")[:80]


def sparkline(values: list[float], marks: list[int], width: int = 120, height: int = 18) -> Markup:
    """A tiny inline SVG of log(median) over commits, change points as dots (numbers only)."""
    n = len(values)
    if n == 0:
        return Markup("")
    if n > SPARK_POINTS:  # medians of equal runs of commits; marks map to their bucket
        edges = np.linspace(0, n, SPARK_POINTS + 1).astype(int)
        values = [float(np.median(values[a:b])) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        marks = sorted({int(np.searchsorted(edges, i, side="right")) - 1 for i in marks})
        n = len(values)
    y = np.log(np.asarray(values))
    lo, hi = float(y.min()), float(y.max())
    span = max(hi - lo, math.log(1.25))  # a flat series stays flat: its noise is not stretched
    mid = (hi + lo) / 2
    py = [round((height - 2) * (0.5 - (v - mid) / span) + 1, 1) for v in y]
    px = [round(1 + (width - 2) * (i / max(n - 1, 1)), 1) for i in range(n)]
    pts = " ".join(f"{a:g},{b:g}" for a, b in zip(px, py, strict=True))
    dots = "".join(f'<circle cx="{px[i]:g}" cy="{py[i]:g}" r="2.2" fill="{SLOWER}"/>' for i in marks if i < n)
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f'<polyline points="{pts}" fill="none" stroke="#3b4252" stroke-width="1"/>{dots}</svg>'
    )


_LONG = re.compile(r"(?<![\w#.])(-?\d+\.\d)\d+")


def _svg(fig) -> Markup:
    buf = io.StringIO()
    with plt.rc_context({"svg.hashsalt": "elbolab-trends", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # no XML declaration, no DOCTYPE (an external DTD URL)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'<style type="text/css">[^<]*</style>', "", text)
    text = re.sub(r"font-family:[^;\"]*;?\s*", "", text)
    text = _LONG.sub(r"\1", text)  # coordinates to 0.1 pt
    text = re.sub(r">\s+<", "><", text)
    return Markup(text.strip())


def _t(text: str) -> str:
    return str(text).replace("$", r"\$")


def series_plot(s: Series, changes: list[ChangePoint], commits: dict) -> Markup:
    """Median per call over commits, its 95% interval as a band, confirmed changes marked."""
    pts = [p for p in s.points if p.ok]
    x = np.arange(len(pts))
    med = np.array([p.median for p in pts])
    ci = np.array([p.ci95 for p in pts])
    scale, unit = next(
        ((f, u) for f, u in ((1e9, "s"), (1e6, "ms"), (1e3, "µs")) if med.min() >= f), (1.0, "ns")
    )
    colour = plots.backend_colour(s.case.backend)
    with plt.rc_context({"font.size": 7.5, "axes.titlesize": 8, "axes.spines.top": False,
                         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3}):  # fmt: skip
        fig, ax = plt.subplots(figsize=(3.5, 1.75))
        fig.subplots_adjust(left=0.15, right=0.98, top=0.86, bottom=0.16)
        ax.fill_between(x, ci[:, 0] / scale, ci[:, 1] / scale, color=colour, alpha=0.18, linewidth=0)
        ax.plot(x, med / scale, color=colour, marker="o", markersize=2.2, linewidth=1)
        index = {p.commit: i for i, p in enumerate(pts)}
        ticks = {0: pts[0].commit[:7], len(pts) - 1: pts[-1].commit[:7]}
        for c in changes:
            if not c.confirmed or c.bad not in index:
                continue
            i = index[c.bad]
            ax.axvline(
                i - 0.5, color=SLOWER if c.direction == "slower" else FASTER, linestyle="--", linewidth=1
            )
            ticks[i] = c.bad[:7]
        ax.xaxis.set_major_locator(ticker.FixedLocator(sorted(ticks)))
        labels = ax.set_xticklabels([ticks[i] for i in sorted(ticks)], fontsize=6.5)
        labels[0].set_horizontalalignment("left")
        labels[-1].set_horizontalalignment("right")
        ax.set_xlim(-0.6, len(pts) - 0.4)
        ax.yaxis.set_major_locator(ticker.MaxNLocator(4))
        ax.set_ylabel(_t(unit))
        title = s.case.label().replace(" cpu ", " ", 1) if s.case.device == "cpu" else s.case.label()
        ax.set_title(_t(title), loc="left", fontsize=7.5 if len(title) < 52 else 6.5)
    return _svg(fig)


def _groups(series: list[Series], changes: dict, commits: dict) -> list[tuple[str, list[CaseRow]]]:
    groups: dict[str, list[CaseRow]] = {}
    for s in series:
        pts = s.measured
        cs = [c for c in changes.get(s.key, []) if c.confirmed]
        index = {p.commit: i for i, p in enumerate(pts)}
        newest = s.points[-1] if s.points else None
        title = s.case.workload if s.case.variant == "eps=given" else f"{s.case.workload} ({s.case.variant})"
        label = s.case.label().replace(f"{s.case.workload} ", "", 1)
        groups.setdefault(title, []).append(CaseRow(
            label=label, backend=s.case.backend, colour=plots.backend_colour(s.case.backend), commits=len(pts),
            first=fmt_ns(pts[0].median) if pts else "", last=fmt_ns(pts[-1].median) if pts else "",
            overall=f"{pts[-1].median / pts[0].median:.2f}x" if len(pts) > 1 else "",
            changes=len(cs), regression=any(c.regression for c in cs),
            spark=sparkline([p.median for p in pts], [index[c.bad] for c in cs if c.bad in index]),
            status="" if newest is None or newest.ok else f"{newest.status} at {newest.commit[:7]}",
        ))  # fmt: skip
    return sorted(groups.items())


def machine_view(history: History, machine, changes: dict, commits: dict, skips: list) -> MachineView:
    series = [s for s in history.series if s.machine.machine_id == machine.machine_id]
    found = [c for s in series for c in changes.get(s.key, []) if c.confirmed]
    found.sort(key=lambda c: (not c.regression, c.direction != "slower", -abs(math.log(c.judgement.ratio))))
    rows = [
        ChangeRow(
            label=c.case.label(),
            good=c.good[:10],
            bad=c.bad[:10],
            subject=_subject(commits, c.bad),
            between=c.between,
            before=fmt_ns(c.before_ns),
            after=fmt_ns(c.after_ns),
            ratio=_x(c.judgement.ratio, c.judgement.ci95),
            verdict=c.direction + (", regression" if c.regression else ""),
            regression=c.regression,
            cls="reg" if c.regression else ("slower" if c.direction == "slower" else "faster"),
        )  # fmt: skip
        for c in found
    ]
    changed = []
    seen = set()
    for c in found:  # the plots in the order of the changes table, one per case
        key = (c.machine.machine_id, c.case.key())
        if key not in seen:
            seen.add(key)
            changed.append(next(s for s in series if s.case.key() == c.case.key()))
    plots = [(s.case.label(), series_plot(s, changes.get(s.key, []), commits)) for s in changed[:MAX_PLOTS]]
    fp = machine.fingerprint
    facts = [(k, str(v)) for k, v in (("cpu", fp.get("cpu")), ("cores", fp.get("cores")),
                                      ("logical cpus", fp.get("logical_cpus")),
                                      ("memory", f"{fp['memory_gib']} GiB" if fp.get("memory_gib") else None),
                                      ("gpus", ", ".join(fp.get("gpus") or []) or "none"), ("name", fp.get("name")))
             if v is not None]  # fmt: skip
    commits_here = {p.commit for s in series for p in s.points}
    mine = [k for k in skips if k.machine_id == machine.machine_id]
    return MachineView(
        anchor=f"m-{machine.machine_id}", label=machine.label, machine_id=machine.machine_id, facts=facts,
        runs=machine.runs, commits=len(commits_here), series=len(series), changes=rows,
        n_regressions=sum(c.regression for c in found), n_slower=sum(c.direction == "slower" for c in found),
        n_faster=sum(c.direction == "faster" for c in found), plots=plots, more_plots=max(0, len(changed) - MAX_PLOTS),
        groups=_groups(series, changes, commits),
        skips=[(k.commit[:10], k.stage, k.reason[:300]) for k in mine[-30:]],
    )  # fmt: skip


def render_page(history: History, commits: dict, rule: Rule = DEFAULT_RULE, title: str = "elbolab trends",
                store_url: str = "", skips: list | None = None, notes: list[str] | None = None) -> str:  # fmt: skip
    changes = all_changes(history.series, rule, history.order)
    views = [machine_view(history, m, changes, commits, skips or []) for m in history.machines]
    views = [v for v in views if v.series]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every string from the store is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    statuses = Counter(p.status for s in history.series for p in s.points)
    return env.get_template("trends.html.j2").render(
        title=title, store=store_url, order=history.order.how, rule=rule.describe(), machines=views,
        notes=notes or [], n_series=len(history.series), n_commits=len(history.order.commits),
        statuses=sorted(statuses.items()), max_plots=MAX_PLOTS,
    )  # fmt: skip
