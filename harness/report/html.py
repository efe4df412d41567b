"""The HTML report: one self-contained page for one or more results files.

Summary first (who wins at which size, by how much, how sure), then the claims check, plots, every
measurement, and the machine, software and limits of each run. Jinja2 with autoescaping on: every
string from a results file is escaped; the only markup inserted unescaped is the SVG matplotlib wrote.
No external URL, no script, no fetch: the page opens offline.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pandas as pd
from elbolab.report import plots
from elbolab.report.claims import check_claims
from elbolab.report.format import fmt_ns, fmt_x
from elbolab.report.tables import (
    KEY_FIELDS,
    LoadedRun,
    display_summary,
    display_table,
    measurement_table,
    summary_table,
)
from markupsafe import Markup

TEMPLATES = Path(__file__).with_name("templates")


@dataclass
class RunView:
    run: LoadedRun
    table: pd.DataFrame
    summary: pd.DataFrame
    claims: list = field(default_factory=list)
    figures: list[tuple[str, Markup]] = field(default_factory=list)


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


def _figures(view: RunView, baseline: str) -> list[tuple[str, Markup]]:
    df, run = view.table, view.run.run
    figs: list[tuple[str, str | None]] = []
    if df.empty:
        return []
    pairs = list(dict.fromkeys(zip(df.workload, df.variant, strict=True)))
    for workload, variant in pairs:
        figs.append((f"speed-up: {workload} {variant}", plots.speedup_bars(df, workload, variant, baseline)))
    for workload, variant in pairs:
        figs.append((f"time vs batch: {workload} {variant}", plots.time_vs_batch(df, workload, variant)))
    for workload, variant in pairs:
        figs.append(
            (
                f"bandwidth: {workload} {variant}",
                plots.bandwidth_vs_batch(df, workload, variant, run.limits),
            )
        )
    figs.append(("roofline", plots.roofline(df, run.limits)))
    figs.append(("noise", plots.distributions(df)))
    figs.append(("training", plots.training_losses(run.training)))
    return [(title, Markup(svg)) for title, svg in figs if svg]


def headlines(summary: pd.DataFrame, baseline: str) -> list[tuple[str, list[str]]]:
    """One sentence per workload (fewest threads, float64 first): who wins at each batch."""
    out = []
    if summary.empty:
        return out
    for (workload, variant), group in summary.groupby(["workload", "variant"], sort=False):
        dtype = "float64" if "float64" in set(group.dtype) else sorted(set(group.dtype))[0]
        t = min(group.threads)
        g = group[(group.dtype == dtype) & (group.threads == t)].sort_values("batch")
        parts = []
        for r in g.itertuples():
            if not r.winner:
                parts.append(f"B={r.batch}: no valid measurement")
                continue
            margin = (
                f"{fmt_x(r.margin, r.margin_lo, r.margin_hi)} over {r.runner_up}, {r.how_sure}"
                if r.runner_up
                else r.how_sure
            )
            over = (
                f"; {fmt_x(r.vs_baseline, r.vs_baseline_lo, r.vs_baseline_hi)} over {baseline}"
                if not math.isnan(r.vs_baseline) and r.winner != baseline
                else ""
            )
            parts.append(f"B={r.batch}: {r.winner} ({fmt_ns(r.winner_median_ns)}; {margin}{over})")
        name = workload if variant == "eps=given" else f"{workload} ({variant})"
        out.append((f"{name}, {dtype}, {t} thread{'s' if t != 1 else ''}", parts))
    return out


def side_by_side(views: list[RunView]) -> tuple[list[str], list[list[str]]]:
    """Winner per (workload, variant, dtype, threads, batch) with one column per run."""
    keys: dict[tuple, dict[str, str]] = {}
    for v in views:
        for r in v.summary.itertuples():
            key = (r.workload, r.variant, r.dtype, r.threads, r.batch)
            cell = r.winner or "—"
            if r.runner_up:
                cell += f" ({fmt_x(r.margin, r.margin_lo, r.margin_hi)} over {r.runner_up}; {r.how_sure})"
            keys.setdefault(key, {})[v.run.label] = cell
    header = ["workload", "variant", "dtype", "threads", "batch"] + [v.run.label for v in views]
    rows = [
        [*map(str, k)] + [cells.get(v.run.label, "not measured") for v in views] for k, cells in keys.items()
    ]
    return header, rows


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


def _limits_rows(views: list[RunView]) -> tuple[list[str], list[list[str]]]:
    def gb(x):
        return f"{x / 1e9:.3g} GB/s" if x else "not measured"

    def gf(x):
        return f"{x / 1e9:.3g} GFLOP/s" if x else "not measured"

    names = [
        ("memory bandwidth, DRAM, all threads", "memory_bandwidth_bytes_per_s", gb),
        ("memory bandwidth, DRAM, 1 thread", "memory_bandwidth_single_thread_bytes_per_s", gb),
        ("bandwidth in L2-sized working set", "cache_bandwidth_bytes_per_s", gb),
        ("peak flops float64 (matmul)", "peak_flops", gf),
        ("peak flops float32 (matmul)", "peak_flops_float32", gf),
        ("peak flops float64, 1 thread", "peak_flops_single_thread", gf),
    ]
    rows = [[label] + [fn((v.run.run.limits).get(key)) for v in views] for label, key, fn in names]
    sizes: list[str] = []
    for v in views:
        for s in (v.run.run.limits).get("bandwidth_by_size") or []:
            label = f"bandwidth at {s['size_label']} ({s['working_set_bytes'] / 2**20:.3g} MiB), by threads"
            if label not in sizes:
                sizes.append(label)
    for label in sizes:
        row = [label]
        for v in views:
            cell = ""
            for s in (v.run.run.limits).get("bandwidth_by_size") or []:
                if label.startswith(f"bandwidth at {s['size_label']} "):
                    cell = ", ".join(f"t={t}: {b / 1e9:.3g} GB/s" for t, b in s["bytes_per_s"].items())
            row.append(cell)
        rows.append(row)
    method = [(v.run.run.limits).get("method") for v in views]
    rows.append(["how measured"] + [_plain(m) if m else "" for m in method])
    return ["limit"] + [v.run.label for v in views], rows


def _case_text(r) -> str:
    return f"{r.workload} {r.variant} {r.dtype} B={r.batch} t={r.threads} {r.backend} ({r.device})"


def build_views(runs: list[LoadedRun], baseline: str = "numpy", with_plots: bool = True) -> list[RunView]:
    views = []
    for run in runs:
        table = measurement_table(run.run, baseline=baseline, label=run.label)
        summary = summary_table(table, baseline) if not table.empty else pd.DataFrame()
        view = RunView(run, table, summary)
        view.claims = check_claims(table, run.run)
        if with_plots:
            view.figures = _figures(view, baseline)
        views.append(view)
    return views


def render(views: list[RunView], baseline: str = "numpy", title: str = "elbolab report") -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every string from a results file is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = env.get_template("report.html.j2")
    run_ctx = []
    for v in views:
        details = display_table(v.table)
        summary = display_summary(v.summary, baseline)
        statuses = v.table["status"].value_counts().to_dict() if not v.table.empty else {}
        problems = v.table[v.table["status"] != "ok"] if not v.table.empty else pd.DataFrame()
        flagged = v.table[v.table["implausible"]] if not v.table.empty else pd.DataFrame()
        run_ctx.append(
            {
                "label": v.run.label,
                "path": v.run.path,
                "run_id": v.run.run.run_id,
                "started": v.run.run.started,
                "finished": v.run.run.finished or "not finished (partial run)",
                "headlines": headlines(v.summary, baseline),
                "summary_header": list(summary.columns),
                "summary_rows": _rows(summary),
                "details_header": list(details.columns),
                "details_rows": _rows(details),
                "details_status": list(v.table["status"]) if not v.table.empty else [],
                "details_flag": list(v.table["implausible"]) if not v.table.empty else [],
                "statuses": statuses,
                "problems": [
                    (
                        _case_text(r),
                        r.status,
                        _plain(r.reason),
                    )
                    for r in problems.itertuples()
                ],
                "flagged": [
                    (
                        _case_text(r),
                        r.plausibility,
                    )
                    for r in flagged.itertuples()
                ],
                "claims": [c.to_json() for c in v.claims],
                "figures": v.figures,
                "training": [
                    {
                        k: _plain(getattr(t, k))
                        for k in (
                            "backend",
                            "device",
                            "dtype",
                            "threads",
                            "status",
                            "reason",
                            "steps",
                            "batch",
                            "lr",
                            "dataset",
                        )
                    }
                    | {"final": _plain(t.losses[-1]) if t.losses else ""}
                    for t in v.run.run.training
                ],
            }
        )
    sbs_header, sbs_rows = side_by_side(views) if len(views) > 1 else ([], [])
    machine = _meta_rows(views, "machine")
    software = _meta_rows(views, "software")
    git = _meta_rows(views, "git")
    config = _meta_rows(views, "config")
    limits = _limits_rows(views)
    return template.render(
        title=title,
        baseline=baseline,
        runs=run_ctx,
        key_fields=", ".join(f for f in KEY_FIELDS),
        sbs_header=sbs_header,
        sbs_rows=sbs_rows,
        meta=[
            ("Machine", machine),
            ("Software", software),
            ("Git", git),
            ("Config", config),
            ("Measured limits", limits),
        ],
    )
