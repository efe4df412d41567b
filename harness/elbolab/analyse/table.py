"""A run as a table: one row per measurement with its per-call median and interval, the rates it
implies (GB/s, GFLOP/s) against the roofline of its run, whether that is physically possible, and
its speed-up over a baseline by the one verdict rule; and each grid cell's winner.

Every number is computed from the raw samples of the typed measurements (Measurement.summary), never
read from the stored summary; each row keeps its Measurement (column `m`), so a consumer that needs
the samples takes them from the row, never from a position in the file. Only measurements with
status 'ok' (a passing check) enter a speed-up; every other case stays in the table with its status
and reason. Speed-up verdicts come from elbolab.analyse.verdict, the rule the gate uses.

Comparison identity: two measurements are compared when they agree on every case field except the
backend and the device (a torch CUDA time over a NumPy CPU time is a legitimate speed-up) and the seed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from elbolab.analyse.control import control_noise
from elbolab.analyse.verdict import Verdict, judge_in_run
from elbolab.model.backend import is_control
from elbolab.model.measurement import Measurement, correct_digits
from elbolab.model.roofline import bandwidth_limit_for, cost_of, flops_limit_for, gpu_limits_for
from elbolab.model.stats import summarize
from elbolab.store.results import Run

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


def device_median(m: Measurement) -> tuple[float, float, float] | None:
    """Median per call between CUDA events (device clock) with its 95% CI, or None."""
    if not m.device_samples_ns or m.loops < 1:
        return None
    s = summarize(np.asarray(m.device_samples_ns, dtype=np.float64) / m.loops)
    return s.median, s.ci95[0], s.ci95[1]


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
        nbytes, flops = cost_of(m)
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
        judged = m.evidence is not None  # the runner judged the ceiling itself (re-probed) and set the status
        if row["bw_share"] > IMPLAUSIBLE_FACTOR and not judged:
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
        if m.evidence is not None and m.evidence.ceiling_share is not None:
            row["bw_share"] = m.evidence.ceiling_share  # as the runner judged it, after re-probing
        if m.status == "implausible":
            problems.insert(0, m.reason or "implausible")
        row["implausible"] = bool(problems)
        row["plausibility"] = "; ".join(problems)
        row["timed_ok"] = m.timed_ok
        row["correct_digits"] = correct_digits(m.check)
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
    noise = control_noise([m for m in measurements], baseline)
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
        d = noise.for_case(base_m.case)
        for p in positions:
            if p == b:
                note[p] = "baseline"
                speedup[p] = lo[p] = hi[p] = 1.0
                continue
            m: Measurement = measurements[p]
            if not m.timed_ok:
                note[p] = f"{m.status}: not compared"
                continue
            j = judge_in_run(
                base_m, m, workload=m.case.workload, noise=0.0 if is_control(m.case.backend) else d
            )
            s = j.speedup
            speedup[p], (lo[p], hi[p]) = s.value, s.ci95
            verdict[p] = j.verdict.value
            if is_control(m.case.backend):
                note[p] = f"the null control: {baseline} again, in a worker of its own"
            elif implausible[p]:
                note[p] = "implausible time: see plausibility"
            elif d > 0:
                note[p] = f"interval widened by ±{math.expm1(d):.1%}, the noise the null control measured"
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
    over the baseline, and how sure (the shared verdict of the winner against the runner-up).
    Walks each cell's rows by position (plain arrays, not a DataFrame per cell: a run of 20,000
    cases has thousands of cells)."""
    rows = []
    if df.empty:
        return pd.DataFrame()
    noise = control_noise(list(df["m"]), baseline)
    col = {c: df[c].to_numpy() for c in ("label", "status", "timed_ok", "implausible", "median_ns", "speedup",
                                         "speedup_lo", "speedup_hi", "backend", "m", "workload")}  # fmt: skip
    control = [is_control(b) for b in col["backend"]]
    for key, positions in df.groupby(["run", *KEY_FIELDS], dropna=False, sort=False).indices.items():
        group = sorted(positions)  # file order within the cell
        # the control is the reference again: it never wins
        ok = [i for i in group if not control[i] and col["timed_ok"][i] and not col["implausible"][i]]
        ok.sort(key=lambda i: col["median_ns"][i])
        row = dict(zip(["run", *KEY_FIELDS], key, strict=True))
        row["not_ok"] = "; ".join(
            f"{col['label'][i]}: {col['status'][i]}" for i in group if not col["timed_ok"][i]
        )
        row["implausible"] = ", ".join(col["label"][i] for i in group if col["implausible"][i])
        row.update(winner="", winner_median_ns=math.nan, runner_up="", margin=math.nan, margin_lo=math.nan,
                   margin_hi=math.nan, how_sure="no valid measurement", vs_baseline=math.nan,
                   vs_baseline_lo=math.nan, vs_baseline_hi=math.nan)  # fmt: skip
        if not ok:
            rows.append(row)
            continue
        win = ok[0]
        row["winner"] = col["label"][win]
        row["winner_median_ns"] = col["median_ns"][win]
        row["vs_baseline"], row["vs_baseline_lo"], row["vs_baseline_hi"] = (
            col["speedup"][win], col["speedup_lo"][win], col["speedup_hi"][win],
        )  # fmt: skip
        if len(ok) > 1:
            second, m = ok[1], col["m"][win]
            j = judge_in_run(col["m"][second], m, workload=col["workload"][win], noise=noise.for_case(m.case))
            margin = j.speedup  # median(runner-up) / median(winner): how many times faster the winner is
            row.update(runner_up=col["label"][second], margin=margin.value, margin_lo=margin.ci95[0],
                       margin_hi=margin.ci95[1], how_sure=HOW_SURE[j.verdict])  # fmt: skip
        else:
            row["how_sure"] = "only one valid backend"
        rows.append(row)
    return pd.DataFrame(rows)
