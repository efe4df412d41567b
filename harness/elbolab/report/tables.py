"""A run's tables as people read them: the measurement table (elbolab.analyse.table) formatted for
the console, the report and the CSV/Markdown exports.
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

from elbolab.analyse.table import HOW_SURE, KEY_FIELDS, device_median
from elbolab.analyse.verdict import Verdict
from elbolab.model.measurement import Measurement
from elbolab.report import markdown
from elbolab.report.format import (
    accuracy_text,
    fmt_count,
    fmt_ns,
    fmt_num,
    fmt_pct,
    fmt_x,
    missing,
)
from elbolab.store.results import Run, write_text_atomic


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


NO_GPU_LIMIT = "no GPU limit measured in this run: no HBM bound, so an implausible time goes unflagged"


def no_gpu_limit(r) -> str:
    """NO_GPU_LIMIT for a timed row off the CPU that has no bandwidth limit (the run measured none
    for its device: `--no-limits`, a probe that failed, or a file from before the probe), else ''."""
    return NO_GPU_LIMIT if r.device != "cpu" and not r.bw_limit_level and not missing(r.median_ns) else ""


def display_table(df: pd.DataFrame, drop_empty: bool = True) -> pd.DataFrame:
    """The measurement table in human units, one string per cell (HTML, Markdown and CSV use it):
    accuracy beside the median, and for CUDA cases the device clock's median beside the host's, for
    counted cases their instruction counts. drop_empty: leave out an optional column no row fills.
    One pass over the rows (a run may have tens of thousands)."""
    if df.empty:
        return pd.DataFrame()
    ms = list(df["m"])
    rows = list(df.itertuples())
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
            MEDIAN: [_median_text(r, m) for r, m in zip(rows, ms, strict=True)],
            **_optional_columns(ms),
            "speed-up [95% CI]": [fmt_x(r.speedup, r.speedup_lo, r.speedup_hi) for r in rows],
            "verdict": [
                "counted: no time to compare" if counted(m) else text(r.verdict) or text(r.speedup_note)
                for r, m in zip(rows, ms, strict=True)
            ],
            "GB/s (share)": [
                f"{fmt_num(r.gb_per_s)} ({fmt_pct(r.bw_share)} of {r.bw_limit_level})"
                if r.bw_limit_level
                else fmt_num(r.gb_per_s)
                for r in rows
            ],
            "GFLOP/s (share)": [
                f"{fmt_num(r.gflop_per_s)} ({fmt_pct(r.flops_share)})"
                if not math.isnan(r.flops_share)
                else fmt_num(r.gflop_per_s)
                for r in rows
            ],
            "first call": [fmt_ns(v) for v in df["first_call_ns"]],
            "reason / note": [
                "; ".join(x for x in (text(r.reason), text(r.plausibility), no_gpu_limit(r)) if x)
                for r in rows
            ],
        }
    )
    if df["run"].nunique() <= 1:
        out = out.drop(columns=["run"])
    if drop_empty:
        out = out.drop(columns=[c for c in OPTIONAL if not any(out[c])])
    return out


# The shared verdict of winner vs runner-up (elbolab.analyse.table.HOW_SURE) in the report's words:
# "faster" is on the interval the null control widened, so no word claims more than the run can see
HOW_SURE_WORDS = {
    HOW_SURE[Verdict.FASTER]: "faster than the runner-up, beyond the run's noise",
    HOW_SURE[Verdict.SAME]: "a tie (the same within the threshold)",
    HOW_SURE[Verdict.NOISY]: "too noisy to tell: a tie as far as this run can see",
}


def display_summary(summary: pd.DataFrame, baseline: str, lead: dict | None = None) -> pd.DataFrame:
    """Who wins each cell, in words; with `lead` (elbolab.report.matrix.leaders), a tie names every
    backend tied for the fastest, never one of them alone."""
    if summary.empty:
        return pd.DataFrame()

    def winner(r) -> str:
        labels, tie = (lead or {}).get(tuple(getattr(r, f) for f in KEY_FIELDS), ({r.winner}, False))
        if tie:
            return ", ".join(sorted(labels, key=lambda x: x != r.winner)) + " (tied)"
        return r.winner

    out = pd.DataFrame(
        {
            "run": summary["run"],
            "workload": summary["workload"]
            + np.where(summary["variant"] != "eps=given", " " + summary["variant"], ""),
            "dtype": summary["dtype"],
            "threads": summary["threads"].astype(str),
            "batch": summary["batch"].astype(str),
            "winner": [winner(r) if r.winner else "" for r in summary.itertuples()],
            "median / call": [fmt_ns(v) for v in summary["winner_median_ns"]],
            "over runner-up [95% CI]": [
                f"{fmt_x(r.margin, r.margin_lo, r.margin_hi)} over {r.runner_up}" if r.runner_up else ""
                for r in summary.itertuples()
            ],
            "how sure": [HOW_SURE_WORDS.get(v, v) for v in summary["how_sure"]],
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


def write_exports(df: pd.DataFrame, summary: pd.DataFrame, baseline: str, stem: Path,
                  digest: str | None = None) -> list[Path]:  # fmt: skip
    """Write STEM.csv (raw numbers) and STEM.cases.md (who wins and every case, in human units), and
    STEM.md, the short summary for a pull request (`digest`, elbolab.report.digest) where given;
    return the paths. Each is written atomically."""
    csv_path, cases_path = stem.with_suffix(".csv"), stem.with_suffix(".cases.md")
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
    write_text_atomic(cases_path, "\n".join(md))
    written = [csv_path, cases_path]
    if digest is not None:
        write_text_atomic(stem.with_suffix(".md"), digest)
        written.append(stem.with_suffix(".md"))
    return written
