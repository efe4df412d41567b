"""The HTML report: one self-contained page for one or more results files.

The first screen answers "who wins, at which size, by how much, how sure": a speed-up matrix per
workload (rows: backends, columns: batch sizes; the headline dtype and the fewest threads), each
cell coloured by its speed-up over the baseline on a diverging log scale, its verdict mark from
elbolab.analyse.verdict and its 95% interval on hover. Then the problems (the machine's health warnings
from elbolab.measure.health, failures by case, skips grouped by reason, elbolab.analyse.anomalies grouped by kind
with their likely cause, less accurate and implausible cases), the claims check, the plots (time vs
batch and thread scaling per workload, bandwidth, roofline, noise, training), the per-case tables
(collapsed, one per workload; accuracy beside the median, the CUDA device clock beside the host's,
instruction counts where a case was counted instead of timed) and the machine, its health facts,
software and limits.

A case measured by counting instructions has no time: it is shown as 'counted' in the matrix, with
its counts in the per-case table, and enters no speed-up or plot.

Several results files: the first is the base and each later one is compared with it by
elbolab.analyse.compare (ratio with its interval and the shared verdict; times normalized by a reference case
when the CPUs differ; one sentence when they cannot be compared). The rest of the page shows the
newest file; its per-case tables and metadata are given for every file.

Jinja2 with autoescaping on: every string from a results file is escaped; the only markup inserted
unescaped is the SVG of elbolab.report.plots (whose text matplotlib escapes). No external URL, no
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
from elbolab.analyse.table import KEY_FIELDS, backend_label, device_median, measurement_table, summary_table
from elbolab.analyse.verdict import DEFAULT_RULE, Verdict
from elbolab.measure.training import FINAL_STEPS, final_loss
from elbolab.model.case import Case
from elbolab.model.measurement import Measurement
from elbolab.model.roofline import size_text
from elbolab.report import plots
from elbolab.report.claims import check_claims
from elbolab.report.format import fmt_change, fmt_count, fmt_interval, fmt_ns, fmt_time, fmt_x, missing
from elbolab.report.tables import CUDA_CLOCK, OPTIONAL, LoadedRun, counted, display_summary, display_table

TEMPLATES = Path(__file__).with_name("templates")
BROKEN = ("incorrect", "failed", "timeout")
DIMS = ("input_dim", "latent_dim", "hidden_dim", "importance_samples")
SATURATE = 30.0  # a speed-up (or slow-down) of this much gets the full colour
GOOD, BAD, WHITE = (26, 152, 80), (215, 48, 39), (255, 255, 255)


@dataclass
class RunView:
    run: LoadedRun
    table: pd.DataFrame
    summary: pd.DataFrame
    claims: list = field(default_factory=list)
    anomalies: list[dict] = field(default_factory=list)
    figures: list[tuple[str, Markup]] = field(default_factory=list)


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


def _case_text(r) -> str:
    return case_text(r.m.case)


def case_text(c: Case) -> str:
    return f"{c.workload} {c.variant} {c.dtype} B={c.batch} t={c.threads} {c.backend} ({c.device})"


def _workload_title(workload: str, variant: str) -> str:
    return workload if variant == "eps=given" else f"{workload} ({variant.replace('=', ' ')})"


def _threads(t: int) -> str:
    return f"{t} thread{'s' if t != 1 else ''}"


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


# ------------------------------------------------------------------------------------ one measurement


def _time_note(m: Measurement) -> str:
    """For a case on a device: which clock its time is, and the device's own median."""
    if m.case.device == "cpu":
        return ""
    dev = device_median(m)
    return f" ({CUDA_CLOCK}" + (f"; CUDA events: {fmt_ns(dev[0])} per call)" if dev else ")")


# ------------------------------------------------------------------------------------ matrices


@dataclass(frozen=True)
class Cell:
    text: str
    cls: str = ""
    style: str = ""
    title: str = ""


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


def _column_key(r) -> tuple:
    return (int(r.batch), *(getattr(r, d) for d in DIMS))


def _column_names(keys: list[tuple]) -> list[str]:
    varying = [i for i in range(len(DIMS)) if len({k[1 + i] for k in keys}) > 1]
    short = {"input_dim": "D", "latent_dim": "L", "hidden_dim": "H", "importance_samples": "K"}
    return [f"B={k[0]}" + "".join(f" {short[DIMS[i]]}={k[1 + i]}" for i in varying) for k in keys]


def _row_order(pair: tuple[str, str], baseline: str) -> tuple:
    return (pair[0] != baseline, *plots.series_order(pair))


def _speed_cell(speed: float, lo: float, hi: float, verdict: Verdict, title: str, win: bool = False) -> Cell:
    bg, fg = speed_colour(speed)
    return Cell(
        f"{fmt_speed(speed)} {verdict.mark}",
        "sp win" if win else "sp",
        f"background:{bg};color:{fg}",
        f"{title}: {fmt_x(speed, lo, hi)} (95% interval), {verdict.value}",
    )


def _cell(r, baseline: str, winner: bool) -> Cell:
    """One case of a speed-up matrix (r: a row of the measurement table, or None)."""
    if r is None:
        return Cell("", "none", title="not measured in this run")
    where = f"{r.label}, B={r.batch}"
    if counted(r.m):
        c = r.m.counts
        return Cell("counted", "na", title=f"{where}: counted, not timed: {fmt_count(c.instructions)} instructions, "
                    f"{fmt_count(c.estimated_cycles)} estimated cycles per call")  # fmt: skip
    if r.status == "skipped":
        return Cell("–", "skip", title=f"{where}: skipped: {_plain(r.reason)}")
    if r.status in BROKEN:
        return Cell(f"✗ {r.status}", "bad", title=f"{where}: {r.status}: {_plain(r.reason)}")
    if r.speedup_note == "baseline":
        ci = f"[{fmt_ns(r.ci_lo_ns)}, {fmt_ns(r.ci_hi_ns)}]"
        return Cell(
            fmt_ns(r.median_ns),
            "base win" if winner else "base",
            title=f"{where}: the baseline, median {fmt_ns(r.median_ns)} {ci} per call{_time_note(r.m)}"
            + ("; the fastest valid backend here" if winner else ""),
        )
    if r.implausible:
        return Cell("⚠ implausible", "flag", title=f"{where}: {r.plausibility}")
    if missing(r.speedup) or not r.verdict:
        return Cell("n/a", "na", title=f"{where}: {_plain(r.speedup_note) or 'no speed-up'}")
    title = f"{where}: {fmt_ns(r.median_ns)} per call{_time_note(r.m)}; over {baseline}"
    if winner:
        title = (f"{where} (the fastest valid backend here): {fmt_ns(r.median_ns)} per call{_time_note(r.m)}; "
                 f"over {baseline}")  # fmt: skip
    return _speed_cell(r.speedup, r.speedup_lo, r.speedup_hi, Verdict(r.verdict), title, winner)


def _winners(summary: pd.DataFrame) -> set[tuple]:
    if summary.empty:
        return set()
    return {(*(getattr(r, f) for f in KEY_FIELDS), r.winner) for r in summary.itertuples() if r.winner}


def _matrix(
    sub: pd.DataFrame, title: str, setting: str, cell_of, baseline: str, hidden_reason
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
            hidden.append((label, hidden_reason(found)))
            continue
        cells = [cell_of(found.get(k)) for k in keys]
        rows.append(MatrixRow(label, pair[0], plots.backend_colour(pair[0]), cells, pair[1]))
    return Matrix(title, setting, _column_names(keys), rows, hidden)


def _skip_reason(found: dict) -> str:
    reasons = Counter(_plain(r.reason) for r in found.values())
    return "; ".join(reasons)


def speedup_matrices(
    df: pd.DataFrame, summary: pd.DataFrame, baseline: str, headline: bool = True
) -> list[Matrix]:
    """One matrix per workload at its headline setting (headline=True), or one per other
    (dtype, threads) setting."""
    if df.empty:
        return []
    winners = _winners(summary)
    out = []
    for workload, variant in plots.workload_pairs(df):
        wdf = df[(df.workload == workload) & (df.variant == variant)]
        head = plots.headline_setting(wdf)
        settings = sorted(set(zip(wdf.dtype, wdf.threads, strict=True)), key=lambda s: (s[0] != "float64", s))
        for dtype, t in [head] if headline else [s for s in settings if s != head]:
            sub = wdf[(wdf.dtype == dtype) & (wdf.threads == t)]

            def cell_of(r):
                win = r is not None and (*(getattr(r, f) for f in KEY_FIELDS), r.label) in winners
                return _cell(r, baseline, win)

            m = _matrix(sub, _workload_title(workload, variant), f"{dtype}, {_threads(t)}", cell_of, baseline,
                        _skip_reason)  # fmt: skip
            if m is not None:
                out.append(m)
    return out


# ------------------------------------------------------------------------------------ problems


def problems(df: pd.DataFrame) -> dict:
    """Failures by case, skips grouped by reason, less accurate and implausible cases."""
    if df.empty:
        return {"failures": [], "skipped": [], "less_accurate": [], "implausible": []}
    bad = df[df.status.isin(BROKEN)]
    failures = [(_case_text(r), r.status, _plain(r.reason)) for r in bad.itertuples()]
    skipped = []
    sk = df[df.status == "skipped"]
    for reason, group in sk.groupby(sk.reason.fillna("no reason given"), sort=False):
        where = Counter(group.label)
        skipped.append(
            (_plain(reason), len(group), ", ".join(f"{label} ×{n}" for label, n in where.most_common()))
        )
    skipped.sort(key=lambda x: -x[1])
    less = [
        (_case_text(r), r.m.check.describe() or "less accurate than careful arithmetic")
        for r in df.itertuples()
        if r.m.check is not None and r.m.check.less_accurate
    ]
    flagged = [(_case_text(r), r.plausibility) for r in df[df.implausible].itertuples()]
    return {"failures": failures, "skipped": skipped, "less_accurate": less, "implausible": flagged}


COLLAPSE = 5  # an anomaly with more cases than this lists them collapsed


def anomaly_groups(found: list[anomalies.Anomaly]) -> list[dict]:
    """elbolab.analyse.anomalies grouped by kind, the most frequent first: the count, the likely cause(s)
    and the cases with their details."""
    groups: dict[str, dict] = {}
    for a in found:
        g = groups.setdefault(a.kind, {"kind": a.kind, "causes": [], "cases": []})
        if a.likely_cause not in g["causes"]:
            g["causes"].append(a.likely_cause)
        g["cases"].append((case_text(a.case), a.detail))
    out = sorted(groups.values(), key=lambda g: -len(g["cases"]))
    for g in out:
        g["count"] = len(g["cases"])
        g["collapsed"] = g["count"] > COLLAPSE
    return out


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
    cell = _speed_cell(
        speed, 1 / hi if hi > 0 else math.inf, 1 / lo if lo > 0 else math.inf, c.verdict, title
    )
    return Cell(cell.text + (" !" if c.regression else ""), cell.cls + (" reg" if c.regression else ""),
                cell.style, cell.title)  # fmt: skip


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
        kept = {_column_key(r) for r in sub.itertuples() if r.status != "skipped"}
        sub = sub[[_column_key(r) in kept for r in sub.itertuples()]]

        def cell_of(r):
            if r is None:
                return _change_cell(None, report.normalized, "", "")
            return _change_cell(r.entry, report.normalized, backend_label(r.backend, r.device), r.batch)

        title, setting = _workload_title(workload, variant), f"{dtype}, {_threads(t)}"
        m = _matrix(sub, title, setting, cell_of, "", _skip_reason)
        if m is not None:
            out.append(replace(m, hidden_label="not compared"))
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
    return header, [[k] + [_plain(_section(v, section).get(k)) for v in views] for k in keys]


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
            ("noise", plots.distributions(df)),
            ("training", plots.training_losses(run.training)),
        ]
    return [(title, Markup(svg)) for title, svg in figs if svg]


def build_views(runs: list[LoadedRun], baseline: str = "numpy", with_plots: bool = True) -> list[RunView]:
    """One view per results file; the plots are drawn for the newest (last) file only."""
    views = []
    for i, run in enumerate(runs):
        table = measurement_table(run.run, baseline=baseline, label=run.label)
        summary = summary_table(table, baseline) if not table.empty else pd.DataFrame()
        view = RunView(run, table, summary)
        view.claims = check_claims(table, run.run)
        view.anomalies = anomaly_groups(anomalies.scan(run.run))
        if with_plots and i == len(runs) - 1:
            view.figures = _figures(view)
        views.append(view)
    return views


# ------------------------------------------------------------------------------------ render


def _details(v: RunView) -> list[dict]:
    """The per-case table of one run, one collapsed block per workload; a column that is empty in
    a block (no device clock, no counts) is left out of it."""
    if v.table.empty:
        return []
    shown = display_table(v.table, drop_empty=False)
    out = []
    for workload in dict.fromkeys(v.table.workload):
        mask = (v.table.workload == workload).to_numpy()
        part, sub = shown[mask], v.table[mask]
        part = part.drop(columns=[c for c in OPTIONAL if not any(part[c])])
        not_ok = int((sub.status != "ok").sum())
        out.append(
            {
                "workload": workload,
                "count": len(sub),
                "not_ok": not_ok,
                "header": list(part.columns),
                "rows": _rows(part),
                "status": list(sub.status),
                "flag": list(sub.implausible),
            }
        )
    return out


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


def _run_ctx(v: RunView, baseline: str) -> dict:
    statuses = v.table["status"].value_counts().to_dict() if not v.table.empty else {}
    winners = display_summary(v.summary, baseline)
    return {
        "label": v.run.label,
        "path": v.run.path,
        "run_id": v.run.run.run_id,
        "commit": (v.run.run.git.commit or "unknown")[:12],
        "cpu": v.run.run.cpu or "",
        "started": v.run.run.started,
        "finished": v.run.run.finished or "not finished (partial run)",
        "count": len(v.table),
        "statuses": statuses,
        "matrices": speedup_matrices(v.table, v.summary, baseline),
        "other_matrices": speedup_matrices(v.table, v.summary, baseline, headline=False),
        "winners_header": list(winners.columns),
        "winners_rows": _rows(winners),
        "problems": problems(v.table),
        "health": machine_health(v.run.run.health),
        "anomalies": v.anomalies,
        "claims": [c.to_json() for c in v.claims],
        "figures": v.figures,
        "training": _training(v),
        "final_steps": FINAL_STEPS,
        "details": _details(v),
    }


def render(views: list[RunView], baseline: str = "numpy", title: str = "elbolab report") -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every string from a results file is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = env.get_template("report.html.j2")
    runs = [_run_ctx(v, baseline) for v in views]
    changes = [change(views[0], v) for v in views[1:]]
    return template.render(
        title=title,
        baseline=baseline,
        runs=runs,
        head=runs[-1] if runs else None,
        changes=changes,
        scale=colour_scale(),
        rule=DEFAULT_RULE.describe(),
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
