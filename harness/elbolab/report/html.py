"""The HTML report: one self-contained page for one or more results files.

The first screen answers, in about a minute, which backend is fastest and by how much, whether any
result is wrong or suspicious, whether the tutorial's claims hold, and what machine this was: the run
and the machine in one line each and the run's resolution (its null control), the problems ranked by
how much they matter and the claims' one-line verdicts side by side, then the speed-up matrices
(elbolab.report.matrix: each cell's time and interval printed, the verdict's mark, one click to the
case's detail). Below: every problem with the machine's health warnings and the skips by reason, the
claims check in full, the plots (elbolab.report.plots), the training runs, each case's detail
(elbolab.report.cases: samples, evidence, history; shown when its link is followed), the machine,
software and measured limits, and the method. The first screen's words and the console's and the
Markdown summary's come from one place (elbolab.report.summary).

A case measured by counting instructions has no time: it is shown as 'counted' in the matrix, with
its counts in its detail, and enters no speed-up or plot.

Several results files: the first is the base and each later one is compared with it by
elbolab.analyse.compare (ratio with its interval and the shared verdict; times normalized by a reference case
when the CPUs differ; one sentence when they cannot be compared). The rest of the page shows the
newest file.

Size: a report is one file a person can mail: under 1 MB for a run the size of `make bench`, under
5 MB for one of tens of thousands of cases (page_budget). The per-case details fill what the rest
of the page leaves, by priority (the problems', the headline matrices', then the others); the
other settings' matrices stop at OTHER_CELLS cells; every case is in NAME.csv and NAME.cases.md.

Jinja2 with autoescaping on: every string from a results file is escaped; the only markup inserted
unescaped is SVG drawn from numbers (elbolab.report.plots, whose text matplotlib escapes; the strips
and sparklines of elbolab.report.cases, whose labels are escaped there). No external URL, no
script, no fetch: the page opens offline.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup

from elbolab.analyse import anomalies
from elbolab.analyse.compare import CompareError, Comparison, Reference, compare
from elbolab.analyse.control import ControlNoise, control_noise
from elbolab.analyse.table import KEY_FIELDS, backend_label, measurement_table, summary_table
from elbolab.analyse.verdict import DEFAULT_AB_THRESHOLD, DEFAULT_RULE
from elbolab.measure.training import FINAL_STEPS, final_loss
from elbolab.model.roofline import size_text
from elbolab.report import cases, names, plots, summary
from elbolab.report.claims import check_claims
from elbolab.report.format import fmt_change, fmt_interval, fmt_ratio, fmt_time
from elbolab.report.history import Histories
from elbolab.report.matrix import (  # noqa: F401 (speed_colour, fmt_speed, SATURATE: the report's colour scale)
    SATURATE,
    Cell,
    Matrix,
    build_matrix,
    cell_key,
    colour_scale,
    fmt_speed,
    grid_html,
    leaders,
    speed_cell,
    speed_colour,
    speedup_matrices,
    threads_text,
    with_hidden_label,
    workload_title,
)
from elbolab.report.tables import CUDA_CLOCK, LoadedRun, display_summary

TEMPLATES = Path(__file__).with_name("templates")
DIMS = ("input_dim", "latent_dim", "hidden_dim", "importance_samples")
TOP_PROBLEMS = 5  # on the first screen
LISTED_PROBLEMS = 40  # in the problems section before "and N more" (collapsed)
OTHER_CELLS = 6000  # cells of the other settings' matrices in the page
PAGE_BUDGET, BIG_PAGE_BUDGET = 950_000, 4_800_000  # bytes: under 1 MB, and under 5 MB for a big run
BIG_RUN = 5000  # cases: a run this large gets the big page


@dataclass
class RunView:
    run: LoadedRun
    table: pd.DataFrame
    summary: pd.DataFrame
    noise: ControlNoise = field(default_factory=lambda: ControlNoise({}, None))
    claims: list = field(default_factory=list)
    found: list[anomalies.Anomaly] = field(default_factory=list)
    anomalies: list[dict] = field(default_factory=list)
    problems: list[summary.Problem] = field(default_factory=list)
    figures: list[tuple[str, Markup]] = field(default_factory=list)
    histories: Histories | None = None
    lead: dict = field(default_factory=dict)  # each grid cell's leaders (elbolab.report.matrix.leaders)


# ------------------------------------------------------------------------------------ helpers


def _plain(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and math.isnan(v):
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False, default=str)
    return str(v)


def _rows(df: pd.DataFrame) -> list[list[str]]:
    return [[_plain(v) for v in row] for row in df.itertuples(index=False)]


# ------------------------------------------------------------------------------------ problems


def skipped_by_reason(df: pd.DataFrame) -> list[tuple[str, int, str]]:
    """The skipped cases grouped by their reason, the commonest first: (reason, how many, which)."""
    if df.empty:
        return []
    skipped = []
    sk = df[df.status == "skipped"]
    for reason, group in sk.groupby(sk.reason.fillna("no reason given"), sort=False):
        where = Counter(group.label)
        skipped.append(
            (_plain(reason), len(group), ", ".join(f"{label} ×{n}" for label, n in where.most_common()))
        )
    return sorted(skipped, key=lambda x: -x[1])


def anomaly_causes(found: list[anomalies.Anomaly]) -> list[dict]:
    """elbolab.analyse.anomalies by kind, the most frequent first: the kind, how many, and its likely
    cause(s), said once for the kind (the cases are in the ranked problems)."""
    groups: dict[str, dict] = {}
    for a in found:
        g = groups.setdefault(a.kind, {"kind": a.kind, "causes": [], "count": 0})
        if a.likely_cause not in g["causes"]:
            g["causes"].append(a.likely_cause)
        g["count"] += 1
    return sorted(groups.values(), key=lambda g: -g["count"])


def _loads(value) -> str:
    if not isinstance(value, (list, tuple)) or not value:
        return ""
    return ", ".join(f"{x:.2f}" if isinstance(x, (int, float)) else _plain(x) for x in value)


def machine_health(health: dict) -> dict:
    """The problems section's view of elbolab.measure.health: the warnings seen at the start of the run
    and the load average at its start and end."""
    start = health.get("start") if isinstance(health, dict) else None
    end = health.get("end") if isinstance(health, dict) else None
    start = start if isinstance(start, dict) else {}
    end = end if isinstance(end, dict) else {}
    facts = start.get("facts") if isinstance(start.get("facts"), dict) else {}
    warnings = [_plain(w) for w in start.get("warnings") or [] if w]
    end_load = end.get("load_average")
    if end_load is None and isinstance(end.get("facts"), dict):
        end_load = end["facts"].get("load_average")
    return {
        "recorded": bool(start or end),
        "warnings": warnings,
        "load_start": _loads(facts.get("load_average")),
        "load_end": _loads(end_load),
        "cores": _plain(facts.get("cores_available")),
    }


def _fact(v) -> str:
    """A health fact as text: dicts as k=v, lists of dicts one item each."""
    if v is None:
        return "not visible here"
    if isinstance(v, dict):
        return "; ".join(f"{k}={_plain(x)}" for k, x in v.items()) or "none"
    if isinstance(v, (list, tuple)):
        if not v:
            return "none"
        if all(isinstance(x, dict) for x in v):
            return "; ".join(
                ", ".join(f"{k} {_plain(y)}" for k, y in x.items() if y not in (None, "")) for x in v
            )
        if all(isinstance(x, float) for x in v):
            return _loads(v)
        return ", ".join(_plain(x) for x in v)
    return _plain(v)


# ------------------------------------------------------------------------------------ changes


@dataclass
class RunChange:
    base: str
    head: str
    how: str  # how the runs were compared, or why they could not be
    compared: bool
    headline: str = ""
    notices: list[str] = field(default_factory=list)
    matrices: list[Matrix] = field(default_factory=list)
    broken: list[tuple[str, str]] = field(default_factory=list)
    not_compared: list[tuple[str, int]] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


def _change_cell(c, normalized: bool, label: str, batch) -> Cell:
    if c is None:
        return Cell("", "none", title="not in both runs")
    if not hasattr(c, "judgement"):  # NotCompared
        if c.broken:
            return Cell(f"✗ {c.head_status}", "bad", title=f"{label}, B={batch}: broken: {c.reason}")
        return Cell("–", "skip", title=f"{label}, B={batch}: not compared: {c.reason}")
    lo, hi = c.ci95
    speed = 1 / c.ratio
    word = "a regression (slower beyond the threshold)" if c.regression else c.verdict.value
    title = (
        f"{label}, B={batch}: head time / base time {c.ratio:.3g} [{fmt_interval(c.ci95)}] "
        f"({fmt_change(c.ratio)}; base {fmt_time(c.base_median, normalized)}, head "
        f"{fmt_time(c.head_median, normalized)}), {word}; head speed-up over base"
    )
    s_lo, s_hi = 1 / hi if hi > 0 else math.inf, 1 / lo if lo > 0 else math.inf
    sub = f"{fmt_time(c.head_median, normalized)} · {fmt_ratio(s_lo)}–{fmt_ratio(s_hi)}"
    cell = speed_cell(speed, s_lo, s_hi, c.verdict, title, sub=sub)
    return replace(
        cell, text=cell.text + (" !" if c.regression else ""), cls=cell.cls + (" reg" if c.regression else "")
    )


def _change_matrices(report: Comparison, order: list[str]) -> list[Matrix]:
    """A matrix per workload (in `order`, the base run's) at its headline setting; a case that was
    not compared and is not broken counts as skipped, so rows and columns with no comparison at all
    are left out (the rows named with why)."""
    entries = [*report.comparisons, *report.not_compared]
    rows = []
    for e in entries:
        case = e.case
        skipped = not hasattr(e, "judgement") and not e.broken
        rows.append({"workload": case.workload, "variant": case.variant, "dtype": case.dtype,
                     "threads": case.threads, "batch": case.batch, "backend": case.backend,
                     "device": case.device, "status": "skipped" if skipped else "ok",
                     "reason": e.reason if skipped else "", "entry": e,
                     **{d: getattr(case, d) for d in DIMS}})  # fmt: skip
    if not rows:
        return []
    df = pd.DataFrame(rows)
    df["_order"] = [order.index(w) if w in order else len(order) for w in df.workload]
    df = df.sort_values("_order", kind="stable")
    out = []
    for workload, variant in plots.workload_pairs(df):
        wdf = df[(df.workload == workload) & (df.variant == variant)]
        dtype, t = plots.headline_setting(wdf)
        sub = wdf[(wdf.dtype == dtype) & (wdf.threads == t)]
        column = [(r.batch, *(getattr(r, d) for d in DIMS)) for r in sub.itertuples()]
        kept = {k for k, r in zip(column, sub.itertuples(), strict=True) if r.status != "skipped"}
        sub = sub[[k in kept for k in column]]

        def cell_of(r):
            if r is None:
                return _change_cell(None, report.normalized, "", "")
            return _change_cell(r.entry, report.normalized, backend_label(r.backend, r.device), r.batch)

        title, setting = workload_title(workload, variant), f"{dtype}, {threads_text(t)}"
        m = build_matrix(sub, title, setting, cell_of, "")
        if m is not None:
            out.append(with_hidden_label(m, "not compared"))
    return out


def change(base: RunView, head: RunView) -> RunChange:
    """head compared with base by elbolab.analyse.compare: absolute on one CPU, normalized on two."""
    b, h = base.run.run, head.run.run
    kw = dict(allow_missing=True, base_label=base.run.label, head_label=head.run.label)
    reference = None
    differ = bool(b.cpu and h.cpu and b.cpu != h.cpu)
    try:
        if differ:
            reference = Reference()
        report = compare(b, h, reference=reference, **kw)
    except CompareError as exc:
        if differ:
            why = (
                f"{head.run.label} ran on a different CPU ({h.cpu}) from {base.run.label} ({b.cpu}), and "
                f"its times cannot be normalized: {exc}"
            )
        else:
            why = f"{head.run.label} cannot be compared with {base.run.label}: {exc}"
        return RunChange(base.run.label, head.run.label, why, False)
    ref = report.reference
    if ref is not None:
        how = (
            f"Different CPUs ({b.cpu} vs {h.cpu}): absolute times are not comparable, so every time is divided "
            f"by the {ref.backend} {ref.workload} ({ref.variant}) case of its own run at the same batch and "
            "dtype, and the ratio is of those normalized times."
        )
    else:
        how = "Same CPU: the ratio is of absolute times (head / base), with its 95% interval."
    broken = [(n.case.label(), n.reason) for n in report.broken]
    reasons = Counter(n.reason for n in report.not_compared if not n.broken)
    rows = [
        [
            c.case.label(),
            fmt_time(c.base_median, report.normalized),
            fmt_time(c.head_median, report.normalized),
            f"{c.ratio:.3g} [{fmt_interval(c.ci95)}]",
            fmt_change(c.ratio),
            c.word,
        ]
        for c in report.comparisons
    ]
    return RunChange(
        base.run.label,
        head.run.label,
        how,
        True,
        headline=report.headline(),
        notices=list(report.notices),
        matrices=_change_matrices(report, list(dict.fromkeys(m.case.workload for m in b.measurements))),
        broken=broken,
        not_compared=reasons.most_common(),
        rows=rows,
    )


# ------------------------------------------------------------------------------------ metadata


def _meta_rows(views: list[RunView], section: str) -> tuple[list[str], list[list[str]]]:
    keys: list[str] = []
    for v in views:
        for k in _section(v, section):
            if k not in keys:
                keys.append(k)
    header = [section] + [v.run.label for v in views]
    return header, [[k] + [_pretty(k, _section(v, section).get(k)) for v in views] for k in keys]


def _pretty(key: str, value) -> str:
    """A metadata value as a person reads it: sizes in GiB, an unreported clock said so, an empty
    list as 'none', a list of records one item each (not raw JSON)."""
    if key.endswith("_bytes") and isinstance(value, (int, float)) and value > 0:
        return f"{value / 2**30:.3g} GiB ({value:,.0f} bytes)"
    if key.endswith("_mhz") and isinstance(value, (int, float)):
        return f"{value:,.0f} MHz" if value > 0 else "not reported by the system (0)"
    if isinstance(value, list) and not value:
        return "none"
    if isinstance(value, list) and all(isinstance(x, dict) for x in value):
        return "; ".join(
            ", ".join(f"{k} {_plain(y)}" for k, y in x.items() if y not in (None, "")) for x in value
        )
    if isinstance(value, dict) and value and all(isinstance(x, dict) for x in value.values()):
        return "; ".join(
            f"{k}: " + ", ".join(f"{a} {_plain(b)}" for a, b in x.items()) for k, x in value.items()
        )
    if isinstance(value, dict):
        return "; ".join(f"{k}={_plain(x)}" for k, x in value.items()) or "none"
    return _plain(value)


def _section(view: RunView, section: str) -> dict:
    return view.run.run.header_json().get(section) or {}


def _health_rows(views: list[RunView]) -> tuple[list[str], list[list[str]]]:
    """elbolab doctor's facts at the start of each run, its warnings, and the load at the end."""
    starts, ends = [], []
    for v in views:
        h = v.run.run.health if isinstance(v.run.run.health, dict) else {}
        start, end = h.get("start") or {}, h.get("end") or {}
        starts.append(start if isinstance(start, dict) else {})
        ends.append(end if isinstance(end, dict) else {})
    if not any(starts) and not any(ends):
        return ["fact"] + [v.run.label for v in views], []
    keys: list[str] = []
    for s in starts:
        for k in s.get("facts") or {}:
            if k not in keys:
                keys.append(k)
    names = {"load_average": "load average at the start (1, 5, 15 min)"}
    rows = [[names.get(k, k)] + [_fact((s.get("facts") or {}).get(k)) for s in starts] for k in keys]
    rows.append(
        ["warnings at the start"]
        + ["; ".join(map(_plain, s.get("warnings") or [])) or "none" for s in starts]
    )
    rows.append(
        ["load average at the end (1, 5, 15 min)"]
        + [machine_health(v.run.run.health)["load_end"] for v in views]
    )
    return ["fact"] + [v.run.label for v in views], rows


def _limits_rows(views: list[RunView]) -> tuple[list[str], list[list[str]]]:
    def gb(x):
        return f"{x / 1e9:.3g} GB/s" if x else "not measured"

    def gf(x):
        return f"{x / 1e9:.3g} GFLOP/s" if x else "not measured"

    names = [
        ("memory bandwidth, largest working set, all threads", "memory_bandwidth_bytes_per_s", gb),
        ("memory bandwidth, largest working set, 1 thread", "memory_bandwidth_single_thread_bytes_per_s", gb),
        ("bandwidth in an L2-sized working set (256 KiB)", "cache_bandwidth_bytes_per_s", gb),
        ("peak flops float64 (matmul)", "peak_flops", gf),
        ("peak flops float32 (matmul)", "peak_flops_float32", gf),
        ("peak flops float64, 1 thread", "peak_flops_single_thread", gf),
    ]
    limits = [v.run.run.limits or {} for v in views]
    rows = [[label] + [fn(lim.get(key)) for lim in limits] for label, key, fn in names]
    # one row per probed working set: the sweep's (read / copy at each thread count), or the four
    # probes of files written before it; a run that did not probe a size leaves its cell empty
    cells: dict[str, dict[int, str]] = {}
    for k, lim in enumerate(limits):
        for r in lim.get("bandwidth_sweep") or []:
            label = f"bandwidth at {size_text(r['working_set_bytes'])}: read / copy, by threads"
            text = f"t={r['threads']}: {gb(r['read_bytes_per_s'])} / {gb(r['copy_bytes_per_s'])}"
            cell = cells.setdefault(label, {})
            cell[k] = f"{cell[k]}, {text}" if k in cell else text
        for s in lim.get("bandwidth_by_size") or []:
            label = f"bandwidth at {s['size_label']} ({s['working_set_bytes'] / 2**20:.3g} MiB), by threads"
            cells.setdefault(label, {})[k] = ", ".join(f"t={t}: {gb(b)}" for t, b in s["bytes_per_s"].items())
    rows += [[label] + [cell.get(k, "") for k in range(len(views))] for label, cell in cells.items()]
    rows.append(["how measured"] + [_plain(lim.get("method")) if lim.get("method") else "" for lim in limits])
    return ["limit"] + [v.run.label for v in views], rows


# ------------------------------------------------------------------------------------ figures


def _figures(view: RunView) -> list[tuple[str, Markup]]:
    df, run = view.table, view.run.run
    if df.empty:
        figs: list[tuple[str, str | None]] = [("training", plots.training_losses(run.training))]
    else:
        workloads = list(dict.fromkeys(df.workload))
        figs = [(f"time vs batch: {w}", plots.time_vs_batch(df, w)) for w in workloads]
        figs += [(f"thread scaling: {w}", plots.thread_scaling(df, w)) for w in workloads]
        figs += [
            ("achieved bandwidth", plots.bandwidth(df, run.limits)),
            ("roofline", plots.roofline(df, run.limits)),
            ("training", plots.training_losses(run.training)),
        ]
    return [(title, Markup(svg)) for title, svg in figs if svg]


def build_views(runs: list[LoadedRun], baseline: str = "numpy", with_plots: bool = True,
                histories: Histories | None = None) -> list[RunView]:  # fmt: skip
    """One view per results file; the plots are drawn, and the history store's series (if any)
    shown, for the newest (last) file only."""
    views = []
    for i, run in enumerate(runs):
        table = measurement_table(run.run, baseline=baseline, label=run.label)
        noise = control_noise(list(run.run.measurements), baseline)
        view = RunView(
            run, table, summary_table(table, baseline) if not table.empty else pd.DataFrame(), noise
        )
        view.claims = check_claims(table, run.run, noise)
        view.found = anomalies.scan(run.run)
        view.anomalies = anomaly_causes(view.found)
        view.problems = summary.problems(run.run, view.found)
        view.lead = leaders(table, noise)
        if i == len(runs) - 1:
            view.histories = histories
            if with_plots:
                view.figures = _figures(view)
        views.append(view)
    return views


# ------------------------------------------------------------------------------------ render


def _detail_order(v: RunView, headline: list[Matrix]) -> list[int]:
    """The cases that may get a detail block, by priority: the problems', the headline matrices',
    then every other case in file order; skipped cases have none."""
    shown = [
        int(c.href[2:]) for m in headline for row in m.rows for c in row.cells if c.href.startswith("#c")
    ]
    order = [p.index for p in v.problems if p.index >= 0] + shown + list(range(len(v.table)))
    status = v.table.status.to_numpy()
    return [i for i in dict.fromkeys(order) if status[i] != "skipped"]


def _case_details(v: RunView, baseline: str, order: list[int], room: int) -> dict[int, cases.CaseDetail]:
    """The details of the cases in `order` (by priority) that fit in `room` bytes, by their row (a
    detail is a few hundred bytes of facts and its strip; each is built only while there is room)."""
    if v.table.empty:
        return {}
    df = v.table
    base = {cell_key(r): r for r in df[(df.backend == baseline) & (df.device == "cpu")].itertuples()}
    rows = list(df.itertuples())
    out, used = {}, 0
    for i in order:
        r = rows[i]
        h = v.histories.of(r.m.case) if v.histories is not None else None
        d = cases.detail(r, base.get(cell_key(r)), cases.anchor(i), h, v.histories is not None)
        used += (
            160
            + len(d.title)
            + sum(len(f) + 3 for f in d.facts)
            + len(d.strip)
            + len(d.spark)
            + len(d.history)
        )
        if used > room:
            break
        out[i] = d
    return out


def page_budget(cases_in_run: int) -> int:
    """The bytes a report may take: under 1 MB for a run the size of `make bench` (a page to mail or
    attach), under 5 MB for a run of tens of thousands of cases (issue 27)."""
    return PAGE_BUDGET if cases_in_run <= BIG_RUN else BIG_PAGE_BUDGET


def _relinked(ctx: dict, details: dict[int, cases.CaseDetail], total: int) -> dict:
    """The head's context with its details, and every link to a case without one taken out."""
    anchors = {d.anchor for d in details.values()}

    def cell(c: Cell) -> Cell:
        if not c.href or c.href[1:] in anchors:
            return c
        return replace(
            c, href="", title=(c.title + "; " if c.title else "") + "its detail is in the full table"
        )

    def relink(ms: list[Matrix]) -> list[Matrix]:
        return [replace(m, rows=[replace(r, cells=[cell(c) for c in r.cells]) for r in m.rows]) for m in ms]

    ranked = [dict(p, href=p["href"] if p["href"][1:] in anchors else "") for p in ctx["ranked"]]
    return dict(ctx, matrices=relink(ctx["matrices"]), other_matrices=relink(ctx["other_matrices"]), ranked=ranked,
                details=[details[i] for i in sorted(details)], details_left=total - len(details))  # fmt: skip


def _other_matrices(
    v: RunView, baseline: str, anchors: dict[int, str], lead: dict
) -> tuple[list[Matrix], int]:
    """The other settings' matrices up to OTHER_CELLS cells, and how many were left out."""
    out, cells, left = [], 0, 0
    for m in speedup_matrices(v.table, baseline, v.noise, headline=False, anchors=anchors, lead=lead):
        n = sum(len(r.cells) for r in m.rows)
        if cells + n > OTHER_CELLS:
            left += 1
            continue
        cells += n
        out.append(m)
    return out, left


def _training(v: RunView) -> list[dict]:
    out = []
    for t in v.run.run.training:
        row = {k: _plain(getattr(t, k)) for k in ("backend", "device", "dtype", "threads", "status", "reason",
                                                   "steps", "batch", "lr", "dataset")}  # fmt: skip
        row["final"] = f"{final_loss(t.losses):.6g}" if t.losses else ""
        row["bias_only"] = f"{t.bias_only_loss:.6g}" if t.bias_only_loss is not None else ""
        row["learned"] = {True: "yes", False: "no", None: ""}[t.learned]
        row["diff"] = f"{t.max_rel_diff_vs_numpy:.2g}" if t.max_rel_diff_vs_numpy is not None else ""
        out.append(row)
    return out


def _problem_ctx(p: summary.Problem, linked: set[int]) -> dict:
    return {"what": p.what, "case": summary.short_case(p.case), "why": p.why, "kind": p.kind,
            "href": f"#{cases.anchor(p.index)}" if p.index in linked else "", "order": p.order}  # fmt: skip


def _run_ctx(v: RunView, baseline: str, head: bool) -> dict:
    """What the template shows of one run; for the newest (head), its matrices with every cell
    linked and the order its cases' details are wanted in (render fills them in)."""
    run = v.run.run
    ctx = {
        "label": v.run.label,
        "path": v.run.path,
        "run_line": summary.run_line(run),
        "machine_line": summary.machine_line(run),
        "control": summary.control_sentence(v.noise, baseline),
        "statuses": summary.status_counts(run),
        "finished": run.finished or "not finished (partial run)",
        "skipped": skipped_by_reason(v.table),
        "ranked": [],
        "problem_counts": summary.problem_counts(v.problems),
        "health": machine_health(run.health),
        "anomalies": v.anomalies,
        "claims": [c.to_json() for c in v.claims],
        "training": _training(v),
        "final_steps": FINAL_STEPS,
        "matrices": [],
        "other_matrices": [],
        "other_left": 0,
        "details": [],
        "details_left": 0,
        "order": [],
        "glossary": [],
        "first_calls": summary.first_calls_line(summary.first_calls(run.measurements, v.found)),
        "figures": v.figures,
        "winners_header": [],
        "winners_rows": [],
        "history": "",
    }
    if not head or v.table.empty:
        ctx["ranked"] = [_problem_ctx(p, set()) for p in v.problems]
        return ctx
    lead = v.lead
    # every cell linked: the page's budget decides which details there are (render), and the cells
    # whose case has none are unlinked then (_relinked)
    every = {i: cases.anchor(i) for i in range(len(v.table))}
    ctx["matrices"] = speedup_matrices(v.table, baseline, v.noise, anchors=every, lead=lead)
    ctx["other_matrices"], ctx["other_left"] = _other_matrices(v, baseline, every, lead)
    ctx["order"] = _detail_order(v, ctx["matrices"])
    ctx["ranked"] = [_problem_ctx(p, set(every)) for p in v.problems]
    shown = [row.backend for m in ctx["matrices"] for row in m.rows]
    ctx["glossary"] = names.glossary(
        sorted(set(shown), key=lambda b: (b != baseline, plots.backend_order(b)))
    )
    winners = display_summary(v.summary, baseline, lead)
    ctx["winners_header"], ctx["winners_rows"] = list(winners.columns), _rows(winners)
    h = v.histories
    if h is not None:
        ctx["history"] = (f"History: {h.store}, machine {h.machine}, {h.commits} commit{'s' if h.commits != 1 else ''} "
                          "with runs (each case's sparkline in its detail).")  # fmt: skip
    return ctx


def render(
    views: list[RunView], baseline: str = "numpy", title: str = "elbolab report", stem: str = "report"
) -> str:
    """The page. Rendered twice: once without the cases' details, to measure what the rest of the
    page takes, then with the details (by priority) that fit in the page's budget; a case left out
    keeps its cell, unlinked, and is in the full table beside the page."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every string from a results file is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = env.get_template("report.html.j2")
    runs = [_run_ctx(v, baseline, i == len(views) - 1) for i, v in enumerate(views)]
    changes = [change(views[0], v) for v in views[1:]]
    common = dict(
        title=title,
        stem=stem,
        baseline=baseline,
        changes=changes,
        scale=colour_scale(),
        grid_html=grid_html,
        rule=DEFAULT_RULE.describe(),
        threshold=DEFAULT_RULE.threshold,
        noise_band=DEFAULT_RULE.noise_band,
        ab_threshold=DEFAULT_AB_THRESHOLD,
        variants=list(names.VARIANTS.items()),
        top=TOP_PROBLEMS,
        listed=LISTED_PROBLEMS,
        key_fields=", ".join(KEY_FIELDS),
        cuda_clock=CUDA_CLOCK,
        svg_css=Markup(plots.SVG_CSS),
        meta=[
            ("Machine", _meta_rows(views, "machine")),
            ("Software", _meta_rows(views, "software")),
            ("Git", _meta_rows(views, "git")),
            ("Config", _meta_rows(views, "config")),
            ("Machine health (elbolab doctor at the start of the run; load at its end)", _health_rows(views)),
            ("Measured limits", _limits_rows(views)),
        ],
    )
    if not runs:
        return template.render(runs=runs, head=None, **common)
    head, view = runs[-1], views[-1]
    if view.table.empty:
        return template.render(runs=runs, head=head, **common)
    rest = len(template.render(runs=runs, head=head, **common).encode())
    details = _case_details(view, baseline, head["order"], page_budget(len(view.table)) - rest)
    head = _relinked(head, details, int((view.table.status != "skipped").sum()))
    runs = runs[:-1] + [head]
    return template.render(runs=runs, head=head, **common)
