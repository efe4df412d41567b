"""The roofline: the ceilings a case is held to, read from the limits measured in its run.

A time per call implies a bandwidth (the bytes the workload must move over the time) and a flop
rate; neither can exceed what the machine reached on the probes of elbolab.measure.probes at the
case's working set and thread count. These functions only read the `limits` dict stored in a
results file, so the analysis and the report use the same ceilings the run measured.
"""

from __future__ import annotations

import math

from elbolab.model.measurement import Measurement
from elbolab.model.workloads import WORKLOADS


def bandwidth_limit_for(
    limits: dict, working_set_bytes: float, threads: int | None = None
) -> tuple[float, str] | None:
    """The fastest bandwidth a kernel touching `working_set_bytes` can plausibly reach here.

    Returns (bytes/s, what it was measured on) or None without limits. With a sweep
    (limits["bandwidth_sweep"], elbolab.measure.probes), see sweep_limit. Results files written
    before the sweep hold four probes ("bandwidth_by_size"): the limit is the best figure measured
    at any probed working set at least as large as the case's (the LLC probe counting for anything up
    to the LLC's size; DRAM when it is larger than all of them), at any thread count up to `threads`
    (all counts when None).
    """
    if not isinstance(limits, dict):
        return None
    if limits.get("bandwidth_sweep"):
        return sweep_limit(
            limits["bandwidth_sweep"], working_set_bytes, threads, limits.get("bandwidth_reprobes") or []
        )
    sizes = limits.get("bandwidth_by_size")
    if not sizes:
        bw = limits.get("memory_bandwidth_bytes_per_s")
        return (float(bw), "dram") if bw else None
    llc = limits.get("last_level_cache_bytes") or 0

    def capacity(s: dict) -> float:
        # the LLC probe stands for everything that fits in the last-level cache
        return max(s["working_set_bytes"], llc) if s.get("size_label") == "llc" else s["working_set_bytes"]

    candidates = [s for s in sizes if capacity(s) >= working_set_bytes] or [
        max(sizes, key=lambda s: s["working_set_bytes"])
    ]
    best: tuple[float, str] | None = None
    for s in candidates:
        for t, value in s["bytes_per_s"].items():
            if threads is not None and int(t) > threads and any(int(k) <= threads for k in s["bytes_per_s"]):
                continue
            if best is None or value > best[0]:
                best = (float(value), s["size_label"])
    return best


SWEEP_KERNELS = ("read", "copy")


def size_text(nbytes: float) -> str:
    """16 KiB, 1.5 MiB, 1 GiB: a working set as the sweep's rows are read."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes:.0f} B"


def sweep_limit(
    sweep: list[dict], working_set_bytes: float, threads: int | None, reprobes: list[dict] = ()
) -> tuple[float, str] | None:
    """The ceiling a bandwidth sweep sets for a working set and thread count.

    What the machine can deliver only falls as the working set grows (a larger set cannot sit in a
    faster level) and only rises with threads, and a probe never beats the machine. So the probe at
    the largest swept size not above the case's (its floor) bounds the case from above, and any probe
    at that size or larger, at no more threads than the case's, measured a rate the machine reaches
    at the floor: the ceiling is the best of them, read and copy alike. The floor, not the next size
    up: the next one may already be over a cache's edge the case is under (a case at 12 MB against
    a 16 MiB probe spilling to DRAM). A case smaller than the smallest probe is held to the smallest
    (16 KiB sits in every L1 data cache, as anything smaller does); one larger than the largest to
    the largest, where the curve was flat. Re-probes (the runner measures a suspect case's working
    set again before calling it implausible) join the probes at or above the floor; the floor comes
    from the sweep alone, so a re-probe can only raise a ceiling. Threads: a probe at more threads
    than the case is ignored unless no probe ran at that few (all counts when `threads` is None).
    """
    rows = [r for r in sweep if r.get("working_set_bytes")]
    if not rows:
        return None
    sizes = sorted({r["working_set_bytes"] for r in rows})
    floor = max((s for s in sizes if s <= working_set_bytes), default=sizes[0])
    pool = [r for r in [*rows, *reprobes] if r.get("working_set_bytes", 0) >= floor]
    if threads is not None:
        pool = [r for r in pool if r["threads"] <= threads] or pool
    best: tuple[float, str] | None = None
    for r in pool:
        for kernel in SWEEP_KERNELS:
            value = r.get(f"{kernel}_bytes_per_s")
            if value and (best is None or value > best[0]):
                plural = "s" if r["threads"] > 1 else ""
                where = f"{kernel} at {size_text(r['working_set_bytes'])}, {r['threads']} thread{plural}"
                best = (float(value), ("re-probed " if r in reprobes else "") + where)
    return best


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


def gpu_limits_for(limits: dict, device: str, dtype: str) -> tuple[float | None, float | None]:
    """(bandwidth, peak flops) of the first CUDA device measured in the run, for a case's dtype."""
    gpus = (limits or {}).get("gpus") or []
    if not gpus or not device.startswith("cuda"):
        return None, None
    g = gpus[0]
    return g.get("hbm_read_bytes_per_s"), (g.get("flops_per_s") or {}).get(dtype)


def cost_of(m: Measurement) -> tuple[float, float]:
    """(bytes, flops) one call of the case must move and do: as recorded, or, for results without a
    stored cost, the workload's model (NaN for a workload this lab does not know)."""
    if m.cost is not None:
        return float(m.cost.bytes), float(m.cost.flops)
    if m.case.workload not in WORKLOADS:
        return math.nan, math.nan
    c = WORKLOADS[m.case.workload].cost(m.case)
    return float(c.bytes), float(c.flops)


def bandwidth_share(m: Measurement, limits: dict) -> float | None:
    """The share of its bandwidth ceiling a timed CPU case reaches (bytes per call over its median
    per call, against bandwidth_limit_for at its working set and thread count), or None."""
    s = m.summary
    nbytes = cost_of(m)[0]
    if s is None or not s.median > 0 or math.isnan(nbytes) or not limits:
        return None
    bw = bandwidth_limit_for(limits, nbytes, m.case.threads)
    return nbytes / (s.median / 1e9) / bw[0] if bw else None
