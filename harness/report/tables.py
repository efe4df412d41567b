"""Tables of a run: per-call medians with CIs, speed-ups over a baseline, achieved GB/s and GFLOP/s.

Every number is recomputed from the raw samples of the results file (results.per_call_samples), never
read from the stored summary. Only measurements with status 'ok' and a passing check enter a
speed-up; every other case stays in the table with its status and reason.

Comparison identity: two measurements are compared when they agree on every case field except the
backend and the device (a torch CUDA time over a NumPy CPU time is a legitimate speed-up) and the seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness.limits import bandwidth_limit_for
from harness.results import per_call_samples
from harness.stats import ratio_of_medians, summarize

# case fields that must match for two measurements to be compared (all but backend, device, seed)
KEY_FIELDS = (
    "workload",
    "variant",
    "dtype",
    "batch",
    "input_dim",
    "latent_dim",
    "hidden_dim",
    "samples",
    "threads",
)
# A figure above this multiple of the measured limit cannot be real: it is flagged as a measurement error.
# (The probes are NumPy kernels; a hand-written read-mostly kernel may beat them somewhat, not by 1.5x.)
IMPLAUSIBLE_FACTOR = 1.5
# Ratios whose whole 95% CI lies within this band around 1 are reported as 'same'.
SAME_BAND = (0.97, 1.03)


@dataclass(frozen=True)
class Run:
    """One results file as the report sees it."""

    label: str
    path: str
    doc: dict


def run_label(doc: dict, path: str | Path, taken: Iterable[str] = ()) -> str:
    """A short, unique name for a run: the host or CPU when known, else the file name."""
    machine = doc.get("machine") or {}
    base = str(machine.get("hostname") or Path(path).stem or doc.get("run_id") or "run")
    label, i = base, 2
    taken = set(taken)
    while label in taken:
        label, i = f"{base} ({i})", i + 1
    return label


def ratio_verdict(lo: float, hi: float) -> str:
    """Verdict of a speed-up (base time / other time) from its 95% CI."""
    if any(math.isnan(v) for v in (lo, hi)):
        return ""
    if lo >= SAME_BAND[0] and hi <= SAME_BAND[1]:
        return "same"
    if lo > 1.0:
        return "faster"
    if hi < 1.0:
        return "slower"
    return "too noisy to tell"


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


def _cost(m: dict) -> tuple[float, float]:
    cost = m.get("cost")
    if isinstance(cost, dict) and cost.get("bytes") is not None:
        return float(cost["bytes"]), float(cost.get("flops") or math.nan)
    try:  # results written before the cost was stored: recompute it from the workload's model
        from harness.results import case_of
        from harness.workloads import WORKLOADS

        case = case_of(m)
        c = WORKLOADS[case.workload].cost(case)
        return float(c.bytes), float(c.flops)
    except (KeyError, TypeError, ValueError):
        return math.nan, math.nan


def _timed_ok(m: dict) -> bool:
    check = m.get("check")
    return m.get("status") == "ok" and bool(per_call_samples(m)) and (check is None or bool(check.get("ok")))


def measurement_table(doc: dict, *, baseline: str = "numpy", run: str = "") -> pd.DataFrame:
    """One row per measurement, in file order, with statistics recomputed from the raw samples."""
    limits = doc.get("limits") or {}
    rows = []
    for index, m in enumerate(doc.get("measurements", [])):
        case = m["case"]
        row: dict = {"run": run, "index": index}
        row.update({k: case.get(k) for k in KEY_FIELDS})
        row["backend"] = case.get("backend")
        row["device"] = case.get("device", "cpu")
        row["status"] = m.get("status")
        check = m.get("check") or {}
        reason = m.get("reason")
        if m.get("status") == "ok" and check and not check.get("ok", True):
            reason = f"check failed: {check.get('detail') or 'outputs differ from the reference'}"
        row["reason"] = reason
        samples = per_call_samples(m)
        row["loops"] = m.get("loops") or 0
        if samples:
            s = summarize(samples)
            row.update(
                n=s.n,
                median_ns=s.median,
                ci_lo_ns=s.ci95[0],
                ci_hi_ns=s.ci95[1],
                iqr_ns=s.iqr,
                min_ns=s.min,
                mean_ns=s.mean,
                outliers=s.outliers,
            )
        else:
            row.update(
                n=0,
                median_ns=math.nan,
                ci_lo_ns=math.nan,
                ci_hi_ns=math.nan,
                iqr_ns=math.nan,
                min_ns=math.nan,
                mean_ns=math.nan,
                outliers=0,
            )
        first = m.get("first_call_ns")
        row["first_call_ns"] = float(first) if first is not None else math.nan
        nbytes, flops = _cost(m)
        row["bytes"], row["flops"] = nbytes, flops
        per_s = 1e9 / row["median_ns"] if row["median_ns"] > 0 else math.nan
        row["gb_per_s"] = nbytes * per_s / 1e9
        row["gflop_per_s"] = flops * per_s / 1e9
        threads = int(case.get("threads") or 1)
        bw = bandwidth_limit_for(limits, nbytes, threads) if limits and not math.isnan(nbytes) else None
        on_cpu = row["device"] == "cpu"
        row["bw_limit_gb_per_s"] = bw[0] / 1e9 if bw and on_cpu else math.nan
        row["bw_limit_level"] = bw[1] if bw and on_cpu else ""
        row["bw_share"] = row["gb_per_s"] / row["bw_limit_gb_per_s"]
        peak = flops_limit_for(limits, str(case.get("dtype")), threads) if limits and on_cpu else None
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
        row["timed_ok"] = _timed_ok(m)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["label"] = [
        b if d == "cpu" else f"{b} ({d})" for b, d in zip(df["backend"], df["device"], strict=True)
    ]
    _add_speedups(df, doc, baseline)
    return df


def _add_speedups(df: pd.DataFrame, doc: dict, baseline: str) -> None:
    measurements = doc.get("measurements", [])
    n = len(df)
    speedup, lo, hi = np.full(n, math.nan), np.full(n, math.nan), np.full(n, math.nan)
    verdict, note = [""] * n, [""] * n
    backend, device = df["backend"].to_numpy(), df["device"].to_numpy()
    timed_ok, status = df["timed_ok"].to_numpy(), df["status"].to_numpy()
    implausible, index = df["implausible"].to_numpy(), df["index"].to_numpy()
    for positions in df.groupby(list(KEY_FIELDS), dropna=False, sort=False).indices.values():
        base_pos = [p for p in positions if backend[p] == baseline]
        if not base_pos:
            for p in positions:
                note[p] = f"no {baseline} measurement to compare with"
            continue
        b = next((p for p in base_pos if device[p] == "cpu"), base_pos[0])
        if not timed_ok[b]:
            for p in positions:
                note[p] = f"baseline {baseline} is {status[b]}: no speed-up"
            continue
        base_samples = per_call_samples(measurements[int(index[b])])
        for p in positions:
            if p == b:
                note[p] = "baseline"
                speedup[p] = lo[p] = hi[p] = 1.0
                continue
            if not timed_ok[p]:
                note[p] = f"{status[p]}: not compared"
                continue
            samples = per_call_samples(measurements[int(index[p])])
            # speed-up = median(base) / median(this): ratio_of_medians(base=this, head=base)
            r = ratio_of_medians(samples, base_samples)
            speedup[p], (lo[p], hi[p]) = r.value, r.ci95
            verdict[p] = ratio_verdict(*r.ci95)
            if implausible[p]:
                note[p] = "implausible time: see plausibility"
    df["speedup"], df["speedup_lo"], df["speedup_hi"] = speedup, lo, hi
    df["verdict"], df["speedup_note"] = verdict, note


def report_tables(runs: Sequence[Run], baseline: str = "numpy") -> pd.DataFrame:
    frames = [measurement_table(r.doc, baseline=baseline, run=r.label) for r in runs]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def backend_label(row) -> str:
    return row["backend"] if row["device"] == "cpu" else f"{row['backend']} ({row['device']})"


def summary_table(df: pd.DataFrame, doc_by_run: dict[str, dict], baseline: str = "numpy") -> pd.DataFrame:
    """Who wins each (workload, variant, dtype, threads, batch), by how much over the runner-up and
    over the baseline, and how sure (the verdict of the winner / runner-up ratio's CI)."""
    rows = []
    if df.empty:
        return pd.DataFrame()
    for key, group in df.groupby(["run", *KEY_FIELDS], dropna=False, sort=False):
        ok = group[group["timed_ok"] & ~group["implausible"]].sort_values("median_ns")
        row = dict(zip(["run", *KEY_FIELDS], key, strict=True))
        bad = group[~group["timed_ok"]]
        row["not_ok"] = "; ".join(f"{backend_label(r)}: {r['status']}" for _, r in bad.iterrows())
        flagged = group[group["implausible"]]
        row["implausible"] = ", ".join(backend_label(r) for _, r in flagged.iterrows())
        if ok.empty:
            row.update(
                winner="",
                winner_median_ns=math.nan,
                runner_up="",
                margin=math.nan,
                margin_lo=math.nan,
                margin_hi=math.nan,
                how_sure="no valid measurement",
                vs_baseline=math.nan,
                vs_baseline_lo=math.nan,
                vs_baseline_hi=math.nan,
            )
            rows.append(row)
            continue
        win = ok.iloc[0]
        row["winner"] = backend_label(win)
        row["winner_median_ns"] = win["median_ns"]
        row["vs_baseline"], row["vs_baseline_lo"], row["vs_baseline_hi"] = (
            win["speedup"],
            win["speedup_lo"],
            win["speedup_hi"],
        )
        if len(ok) > 1:
            second = ok.iloc[1]
            measurements = doc_by_run[row["run"]]["measurements"]
            r = ratio_of_medians(
                per_call_samples(measurements[int(win["index"])]),
                per_call_samples(measurements[int(second["index"])]),
            )
            # margin = median(runner-up) / median(winner): how many times faster the winner is
            row.update(
                runner_up=backend_label(second), margin=r.value, margin_lo=r.ci95[0], margin_hi=r.ci95[1]
            )
            verdict = ratio_verdict(*r.ci95)
            row["how_sure"] = {
                "faster": "sure (95% CI excludes a tie)",
                "same": "a tie",
                "too noisy to tell": "too noisy to tell",
            }.get(verdict, verdict)
        else:
            row.update(
                runner_up="",
                margin=math.nan,
                margin_lo=math.nan,
                margin_hi=math.nan,
                how_sure="only one valid backend",
            )
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------- formatting


def text(v) -> str:
    """A cell as text: None and NaN are empty."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def fmt_ns(ns: float) -> str:
    if ns is None or (isinstance(ns, float) and math.isnan(ns)):
        return ""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if abs(ns) >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def fmt_x(v: float, lo: float = math.nan, hi: float = math.nan) -> str:
    if v is None or math.isnan(v):
        return ""
    text = f"{v:.3g}x"
    if not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{lo:.3g}, {hi:.3g}]"
    return text


def fmt_num(v: float, digits: int = 3) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}g}"


def fmt_pct(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.0f}%"


def display_table(df: pd.DataFrame) -> pd.DataFrame:
    """The measurement table in human units, one string per cell (HTML and Markdown use it)."""
    if df.empty:
        return pd.DataFrame()
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
            "median / call [95% CI]": [
                f"{fmt_ns(r.median_ns)} [{fmt_ns(r.ci_lo_ns)}, {fmt_ns(r.ci_hi_ns)}]" if r.n else ""
                for r in df.itertuples()
            ],
            "speed-up [95% CI]": [fmt_x(r.speedup, r.speedup_lo, r.speedup_hi) for r in df.itertuples()],
            "verdict": [text(r.verdict) or text(r.speedup_note) for r in df.itertuples()],
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


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no tabulate needed); pipes in cells are escaped."""
    if df.empty:
        return "_no rows_\n"

    def cell(v) -> str:
        text = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = (
    "run",
    "workload",
    "variant",
    "dtype",
    "batch",
    "threads",
    "input_dim",
    "latent_dim",
    "hidden_dim",
    "samples",
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
)


def write_exports(df: pd.DataFrame, summary: pd.DataFrame, baseline: str, stem: Path) -> list[Path]:
    """Write STEM.csv (raw numbers), STEM.md (summary + details in human units); return the paths."""
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    columns = [c for c in CSV_COLUMNS if c in df.columns]
    df[columns].to_csv(csv_path, index=False)
    md = [
        "# elbolab report tables",
        "",
        f"Speed-ups are over `{baseline}` (median of the baseline / median).",
        "",
    ]
    md += ["## Summary: who wins", "", to_markdown(display_summary(summary, baseline)), ""]
    md += ["## Every measurement", "", to_markdown(display_table(df))]
    md_path.write_text("\n".join(md))
    return [csv_path, md_path]
