"""Tables of a run: per-call medians with CIs, speed-ups over a baseline, achieved GB/s and GFLOP/s.

Every number is computed from the raw samples of the typed measurements (Measurement.summary), never
read from the stored summary; each row keeps its Measurement (column `m`), so a consumer that needs
the samples takes them from the row, never from a position in the file. Only measurements with
status 'ok' (a passing check) enter a speed-up; every other case stays in the table with its status
and reason. Speed-up verdicts come from elbolab.verdict, the rule the gate uses.

Comparison identity: two measurements are compared when they agree on every case field except the
backend and the device (a torch CUDA time over a NumPy CPU time is a legitimate speed-up) and the seed.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from elbolab.limits import bandwidth_limit_for, gpu_limits_for
from elbolab.measurement import Measurement
from elbolab.report import markdown
from elbolab.report.format import (
    accuracy_text,
    check_digits,
    fmt_count,
    fmt_ns,
    fmt_num,
    fmt_pct,
    fmt_x,
    missing,
)
from elbolab.results import Run, write_text_atomic
from elbolab.stats import summarize
from elbolab.verdict import Verdict, judge

# case fields that must match for two measurements to be compared (all but backend, device, seed)
KEY_FIELDS = (
    "workload",
    "variant",
    "dtype",
    "batch",
    "input_dim",
    "latent_dim",
    "hidden_dim",
    "importance_samples",
    "threads",
)
# A figure above this multiple of the measured limit cannot be real: it is flagged as a measurement error.
# (The probes are NumPy kernels; a hand-written read-mostly kernel may beat them somewhat, not by 1.5x.)
IMPLAUSIBLE_FACTOR = 1.5


@dataclass(frozen=True)
class LoadedRun:
    """One results file as the report sees it."""

    label: str
    path: str
    run: Run


def run_label(run: Run, path: str | Path, taken: Iterable[str] = ()) -> str:
    """A short, unique name for a run: its commit and start time when known, else the file name."""
    commit = (run.git.commit or "")[:8]
    when = (run.started or "")[:16].replace("T", " ")
    base = " ".join(x for x in (commit, when) if x) or Path(path).stem or run.run_id
    label, i = base, 2
    taken = set(taken)
    while label in taken:
        label, i = f"{base} ({i})", i + 1
    return label


def flops_limit_for(limits: dict, dtype: str, threads: int) -> float | None:
    """Peak flops measured for a dtype at no more than `threads` threads (None without limits)."""
    if not isinstance(limits, dict):
        return None
    rows = [r for r in limits.get("flops") or [] if r.get("dtype") == dtype]
    fitting = [r for r in rows if r.get("threads", 1) <= threads] or rows
    if fitting:
        return float(max(r["flops_per_s"] for r in fitting))
    if dtype == "float32" and limits.get("peak_flops_float32"):
        return float(limits["peak_flops_float32"])
    if threads == 1 and limits.get("peak_flops_single_thread") and dtype == "float64":
        return float(limits["peak_flops_single_thread"])
    value = limits.get("peak_flops")
    return float(value) if value else None


def _cost(m: Measurement) -> tuple[float, float]:
    if m.cost is not None:
        return float(m.cost.bytes), float(m.cost.flops)
    from elbolab.workloads import WORKLOADS  # results without a stored cost: the workload's model

    if m.case.workload not in WORKLOADS:
        return math.nan, math.nan
    c = WORKLOADS[m.case.workload].cost(m.case)
    return float(c.bytes), float(c.flops)


_NO_SUMMARY = dict(n=0, median_ns=math.nan, ci_lo_ns=math.nan, ci_hi_ns=math.nan, iqr_ns=math.nan,
                   min_ns=math.nan, mean_ns=math.nan, outliers=0)  # fmt: skip


def measurement_table(run: Run, *, baseline: str = "numpy", label: str = "") -> pd.DataFrame:
    """One row per measurement, in file order; column `m` holds the Measurement itself."""
    limits = run.limits or {}
    rows = []
    for m in run.measurements:
        case = m.case
        row: dict = {
            "run": label,
            "run_id": run.run_id,
            "commit": run.git.commit,
            "started": run.started,
            "m": m,
        }
        row.update({k: getattr(case, k) for k in KEY_FIELDS})
        row["backend"], row["device"] = case.backend, case.device
        row["status"], row["reason"] = m.status, m.reason
        row["loops"] = m.loops
        s = m.summary
        row.update(
            dict(n=s.n, median_ns=s.median, ci_lo_ns=s.ci95[0], ci_hi_ns=s.ci95[1], iqr_ns=s.iqr,
                 min_ns=s.min, mean_ns=s.mean, outliers=s.outliers) if s else _NO_SUMMARY
        )  # fmt: skip
        row["first_call_ns"] = float(m.first_call_ns) if m.first_call_ns is not None else math.nan
        nbytes, flops = _cost(m)
        row["bytes"], row["flops"] = nbytes, flops
        per_s = 1e9 / row["median_ns"] if row["median_ns"] > 0 else math.nan
        row["gb_per_s"] = nbytes * per_s / 1e9
        row["gflop_per_s"] = flops * per_s / 1e9
        threads = case.threads
        bw = bandwidth_limit_for(limits, nbytes, threads) if limits and not math.isnan(nbytes) else None
        on_cpu = row["device"] == "cpu"
        gpu_bw, gpu_peak = gpu_limits_for(limits, row["device"], case.dtype)
        if gpu_bw:  # a GPU case is held to the GPU's own HBM bandwidth and peak, measured in the run
            bw = (gpu_bw, "hbm")
        row["bw_limit_gb_per_s"] = bw[0] / 1e9 if bw and (on_cpu or gpu_bw) else math.nan
        row["bw_limit_level"] = bw[1] if bw and (on_cpu or gpu_bw) else ""
        row["bw_share"] = row["gb_per_s"] / row["bw_limit_gb_per_s"]
        peak = flops_limit_for(limits, case.dtype, threads) if limits and on_cpu else gpu_peak
        row["flops_limit_gflop_per_s"] = peak / 1e9 if peak else math.nan
        row["flops_share"] = row["gflop_per_s"] / row["flops_limit_gflop_per_s"]
        row["bandwidth_bound_ns"] = nbytes / (bw[0] / 1e9) if bw else math.nan
        problems = []
        if row["bw_share"] > IMPLAUSIBLE_FACTOR:
            problems.append(
                f"implies {row['gb_per_s']:.3g} GB/s, {row['bw_share']:.1f}x the measured "
                f"{row['bw_limit_gb_per_s']:.3g} GB/s ({row['bw_limit_level']}): "
                "a measurement error, not a speed-up"
            )
        if row["flops_share"] > IMPLAUSIBLE_FACTOR:
            problems.append(
                f"implies {row['gflop_per_s']:.3g} GFLOP/s, {row['flops_share']:.1f}x the measured peak: "
                "a measurement error"
            )
        row["implausible"] = bool(problems)
        row["plausibility"] = "; ".join(problems)
        row["timed_ok"] = m.timed_ok
        row["correct_digits"] = check_digits(m.check)
        row["instructions"] = m.counts.instructions if m.counts else math.nan
        row["estimated_cycles"] = m.counts.estimated_cycles if m.counts else math.nan
        dev = device_median(m)
        row["device_median_ns"] = dev[0] if dev else math.nan
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["label"] = [backend_label(b, d) for b, d in zip(df["backend"], df["device"], strict=True)]
    _add_speedups(df, baseline)
    return df


def _add_speedups(df: pd.DataFrame, baseline: str) -> None:
    n = len(df)
    speedup, lo, hi = np.full(n, math.nan), np.full(n, math.nan), np.full(n, math.nan)
    verdict, note = [""] * n, [""] * n
    backend, device = df["backend"].to_numpy(), df["device"].to_numpy()
    measurements, implausible = df["m"].to_numpy(), df["implausible"].to_numpy()
    for positions in df.groupby(list(KEY_FIELDS), dropna=False, sort=False).indices.values():
        base_pos = [p for p in positions if backend[p] == baseline]
        if not base_pos:
            for p in positions:
                note[p] = f"no {baseline} measurement to compare with"
            continue
        b = next((p for p in base_pos if device[p] == "cpu"), base_pos[0])
        base_m: Measurement = measurements[b]
        if not base_m.timed_ok:
            for p in positions:
                note[p] = f"baseline {baseline} is {base_m.status}: no speed-up"
            continue
        for p in positions:
            if p == b:
                note[p] = "baseline"
                speedup[p] = lo[p] = hi[p] = 1.0
                continue
            m: Measurement = measurements[p]
            if not m.timed_ok:
                note[p] = f"{m.status}: not compared"
                continue
            j = judge(base_m.per_call_ns, m.per_call_ns, workload=m.case.workload)
            s = j.speedup
            speedup[p], (lo[p], hi[p]) = s.value, s.ci95
            verdict[p] = j.verdict.value
            if implausible[p]:
                note[p] = "implausible time: see plausibility"
    df["speedup"], df["speedup_lo"], df["speedup_hi"] = speedup, lo, hi
    df["verdict"], df["speedup_note"] = verdict, note


def backend_label(backend: str, device: str) -> str:
    return backend if device == "cpu" else f"{backend} ({device})"


HOW_SURE = {
    Verdict.FASTER: "sure (faster, the interval excludes a tie)",
    Verdict.SAME: "a tie (same)",
    Verdict.NOISY: "too noisy to tell",
    Verdict.SLOWER: "slower",  # cannot happen for a winner by median; kept for completeness
}


def summary_table(df: pd.DataFrame, baseline: str = "numpy") -> pd.DataFrame:
    """Who wins each (workload, variant, dtype, threads, batch), by how much over the runner-up and
    over the baseline, and how sure (the shared verdict of the winner against the runner-up)."""
    rows = []
    if df.empty:
        return pd.DataFrame()
    for key, group in df.groupby(["run", *KEY_FIELDS], dropna=False, sort=False):
        ok = group[group["timed_ok"] & ~group["implausible"]].sort_values("median_ns")
        row = dict(zip(["run", *KEY_FIELDS], key, strict=True))
        bad = group[~group["timed_ok"]]
        row["not_ok"] = "; ".join(f"{r['label']}: {r['status']}" for _, r in bad.iterrows())
        flagged = group[group["implausible"]]
        row["implausible"] = ", ".join(r["label"] for _, r in flagged.iterrows())
        row.update(winner="", winner_median_ns=math.nan, runner_up="", margin=math.nan, margin_lo=math.nan,
                   margin_hi=math.nan, how_sure="no valid measurement", vs_baseline=math.nan,
                   vs_baseline_lo=math.nan, vs_baseline_hi=math.nan)  # fmt: skip
        if ok.empty:
            rows.append(row)
            continue
        win = ok.iloc[0]
        row["winner"] = win["label"]
        row["winner_median_ns"] = win["median_ns"]
        row["vs_baseline"], row["vs_baseline_lo"], row["vs_baseline_hi"] = (
            win["speedup"], win["speedup_lo"], win["speedup_hi"],
        )  # fmt: skip
        if len(ok) > 1:
            second = ok.iloc[1]
            j = judge(second["m"].per_call_ns, win["m"].per_call_ns, workload=win["workload"])
            margin = j.speedup  # median(runner-up) / median(winner): how many times faster the winner is
            row.update(runner_up=second["label"], margin=margin.value, margin_lo=margin.ci95[0],
                       margin_hi=margin.ci95[1], how_sure=HOW_SURE[j.verdict])  # fmt: skip
        else:
            row["how_sure"] = "only one valid backend"
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- formatting


def text(v) -> str:
    """A cell as text: None and NaN are empty."""
    return "" if missing(v) else str(v)


CUDA_CLOCK = "host clock, stopped after torch.cuda.synchronize()"
MEDIAN = "median / call [95% CI]"
ACCURACY = "correct digits (worst output)"
# columns display_table gives only where some row has them (DEVICE: CUDA cases; the rest: counted cases)
DEVICE = "device / call (CUDA events) [95% CI]"
COUNTS = ("instructions / call", "est. cycles / call", "L1 / LL misses / call")
OPTIONAL = (ACCURACY, DEVICE, *COUNTS)


def counted(m: Measurement) -> bool:
    """Measured by counting instructions, not timed: no time, so no speed-up and no plot."""
    return m.counts is not None and not m.samples_ns


def device_median(m: Measurement) -> tuple[float, float, float] | None:
    """Median per call between CUDA events (device clock) with its 95% CI, or None."""
    if not m.device_samples_ns or m.loops < 1:
        return None
    s = summarize(np.asarray(m.device_samples_ns, dtype=np.float64) / m.loops)
    return s.median, s.ci95[0], s.ci95[1]


def _median_text(r, m: Measurement) -> str:
    if counted(m):
        return "counted, not timed"
    if not r.n:
        return ""
    text = f"{fmt_ns(r.median_ns)} [{fmt_ns(r.ci_lo_ns)}, {fmt_ns(r.ci_hi_ns)}]"
    return text + " (host clock)" if m.case.device != "cpu" else text


def _optional_columns(ms: list[Measurement]) -> dict[str, list[str]]:
    """Accuracy for every row; the device clock's median and the instruction counts where present."""
    dev = [device_median(m) for m in ms]
    cs = [m.counts for m in ms]
    return {
        ACCURACY: [accuracy_text(m.check) for m in ms],
        DEVICE: [f"{fmt_ns(d[0])} [{fmt_ns(d[1])}, {fmt_ns(d[2])}]" if d else "" for d in dev],
        COUNTS[0]: [
            fmt_count(c.instructions) + (f" ±{100 * c.spread:.1f}%" if c.spread > 0.0005 else "") if c else ""
            for c in cs
        ],  # fmt: skip
        COUNTS[1]: [fmt_count(c.estimated_cycles) if c else "" for c in cs],
        COUNTS[2]: [f"{fmt_count(c.l1_misses)} / {fmt_count(c.ll_misses)}" if c else "" for c in cs],
    }


def display_table(df: pd.DataFrame, drop_empty: bool = True) -> pd.DataFrame:
    """The measurement table in human units, one string per cell (HTML, Markdown and CSV use it):
    accuracy beside the median, and for CUDA cases the device clock's median beside the host's, for
    counted cases their instruction counts. drop_empty: leave out an optional column no row fills."""
    if df.empty:
        return pd.DataFrame()
    ms = list(df["m"])
    out = pd.DataFrame(
        {
            "run": df["run"],
            "workload": df["workload"],
            "variant": df["variant"],
            "dtype": df["dtype"],
            "threads": df["threads"].astype(str),
            "batch": df["batch"].astype(str),
            "backend": df["label"],
            "status": df["status"],
            MEDIAN: [_median_text(r, m) for r, m in zip(df.itertuples(), ms, strict=True)],
            **_optional_columns(ms),
            "speed-up [95% CI]": [fmt_x(r.speedup, r.speedup_lo, r.speedup_hi) for r in df.itertuples()],
            "verdict": [
                "counted: no time to compare" if counted(m) else text(r.verdict) or text(r.speedup_note)
                for r, m in zip(df.itertuples(), ms, strict=True)
            ],
            "GB/s (share)": [
                f"{fmt_num(r.gb_per_s)} ({fmt_pct(r.bw_share)} of {r.bw_limit_level})"
                if r.bw_limit_level
                else fmt_num(r.gb_per_s)
                for r in df.itertuples()
            ],
            "GFLOP/s (share)": [
                f"{fmt_num(r.gflop_per_s)} ({fmt_pct(r.flops_share)})"
                if not math.isnan(r.flops_share)
                else fmt_num(r.gflop_per_s)
                for r in df.itertuples()
            ],
            "first call": [fmt_ns(v) for v in df["first_call_ns"]],
            "reason / note": [
                "; ".join(x for x in (text(r.reason), text(r.plausibility)) if x) for r in df.itertuples()
            ],
        }
    )
    if df["run"].nunique() <= 1:
        out = out.drop(columns=["run"])
    if drop_empty:
        out = out.drop(columns=[c for c in OPTIONAL if not any(out[c])])
    return out


def display_summary(summary: pd.DataFrame, baseline: str) -> pd.DataFrame:
    if summary.empty:
        return pd.DataFrame()
    out = pd.DataFrame(
        {
            "run": summary["run"],
            "workload": summary["workload"]
            + np.where(summary["variant"] != "eps=given", " " + summary["variant"], ""),
            "dtype": summary["dtype"],
            "threads": summary["threads"].astype(str),
            "batch": summary["batch"].astype(str),
            "winner": summary["winner"],
            "median / call": [fmt_ns(v) for v in summary["winner_median_ns"]],
            "over runner-up [95% CI]": [
                f"{fmt_x(r.margin, r.margin_lo, r.margin_hi)} over {r.runner_up}" if r.runner_up else ""
                for r in summary.itertuples()
            ],
            "how sure": summary["how_sure"],
            f"over {baseline} [95% CI]": [
                fmt_x(r.vs_baseline, r.vs_baseline_lo, r.vs_baseline_hi) for r in summary.itertuples()
            ],
            "not ok / flagged": [
                "; ".join(
                    x for x in (r.not_ok, f"implausible: {r.implausible}" if r.implausible else "") if x
                )
                for r in summary.itertuples()
            ],
        }
    )
    if summary["run"].nunique() <= 1:
        out = out.drop(columns=["run"])
    return out


CSV_COLUMNS = (
    "run",
    "run_id",
    "commit",
    "started",
    "workload",
    "variant",
    "dtype",
    "batch",
    "threads",
    "input_dim",
    "latent_dim",
    "hidden_dim",
    "importance_samples",
    "backend",
    "device",
    "status",
    "reason",
    "n",
    "loops",
    "median_ns",
    "ci_lo_ns",
    "ci_hi_ns",
    "iqr_ns",
    "min_ns",
    "mean_ns",
    "outliers",
    "first_call_ns",
    "bytes",
    "flops",
    "gb_per_s",
    "gflop_per_s",
    "bw_limit_gb_per_s",
    "bw_limit_level",
    "bw_share",
    "flops_limit_gflop_per_s",
    "flops_share",
    "bandwidth_bound_ns",
    "speedup",
    "speedup_lo",
    "speedup_hi",
    "verdict",
    "speedup_note",
    "implausible",
    "plausibility",
    "correct_digits",
    "device_median_ns",
    "instructions",
    "estimated_cycles",
)


def csv_cell(value) -> str:
    """A CSV cell that a spreadsheet will not run: text starting with = + - @ (or a tab or CR) is
    a formula in Excel and LibreOffice, so it is prefixed with a quote (OWASP's advice)."""
    text = "" if missing(value) else str(value)
    if text and text[0] in "=+-@\t\r" and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def write_exports(df: pd.DataFrame, summary: pd.DataFrame, baseline: str, stem: Path) -> list[Path]:
    """Write STEM.csv (raw numbers), STEM.md (summary + details in human units); return the paths.
    Both are written atomically."""
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    columns = [c for c in CSV_COLUMNS if c in df.columns]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in df[columns].itertuples(index=False):
        writer.writerow([csv_cell(v) for v in row])
    write_text_atomic(csv_path, buf.getvalue())
    md = [
        "# elbolab report tables",
        "",
        f"Speed-ups are over `{markdown.md(baseline)}` (median of the baseline / median).",
        "",
    ]
    md += ["## Summary: who wins", "", markdown.frame(display_summary(summary, baseline)), ""]
    md += ["## Every measurement", "", markdown.frame(display_table(df))]
    write_text_atomic(md_path, "\n".join(md))
    return [csv_path, md_path]
