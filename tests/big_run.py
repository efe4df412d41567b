"""A large synthetic results file (issue 27: the report at 20,000 cases), written in seconds.

The cases cover what a big matrix has: ten backends (the null control and a CUDA device among
them), every workload and both eps variants, fourteen batches, two dtypes, four thread counts and
three input sizes, cut to `n` cases. Times follow the model of tests/data/make_fixture.py
(overhead + bytes / bandwidth + flops / rate), sampled in 8 interleaved rounds of 2 with log-normal
noise; a few cases are incorrect, implausible, failed, timed out or skipped, and some are slower
with more threads, so every section of the report has work to do. The records are written as
plain dicts in the results schema (no Measurement objects: building 20,000 of them would cost
more than the report under test); `elbolab report` validates them on load like any file.

    python -m tests.big_run OUT.json [N]      # N defaults to 20,000
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np

from elbolab.model.case import Case
from elbolab.model.workloads import WORKLOADS
from elbolab.store.results import SCHEMA

BACKENDS = {  # per-call overhead (ns), bytes/ns, flops/ns, scales with threads
    "numpy": (15_000, 10.0, 20.0, False),
    "numpy-control": (15_000, 10.0, 20.0, False),
    "torch": (40_000, 12.0, 40.0, True),
    "torch-compile": (25_000, 14.0, 40.0, True),
    "numba": (3_000, 15.0, 25.0, True),
    "numba-parallel": (6_000, 15.0, 25.0, True),
    "rust": (1_500, 20.0, 30.0, True),
    "rust-inner": (200, 20.0, 30.0, True),
    "rust-tutorial": (900, 4.0, 8.0, False),
}
WORKLOADS_VARIANTS = (("elbo", "eps=given"), ("elbo", "eps=sampled"), ("elbo_grad", "eps=given"),
                      ("iwae", "eps=given"), ("vae_step", "eps=given"))  # fmt: skip
BATCHES = tuple(2**k for k in range(14))  # 1 ... 8192
DTYPES = ("float64", "float32")
THREADS = (1, 2, 4, 8)
INPUT_DIMS = (784, 3072, 12288, 196)
ROUNDS, PER_ROUND = 8, 2
LIMITS = {
    "memory_bandwidth_bytes_per_s": 30e9,
    "memory_bandwidth_single_thread_bytes_per_s": 28e9,
    "cache_bandwidth_bytes_per_s": 95e9,
    "peak_flops": 100e9,
    "peak_flops_float32": 200e9,
    "peak_flops_single_thread": 52e9,
    "threads": list(THREADS),
    "last_level_cache_bytes": 32 * 2**20,
    "last_level_cache_source": "synthetic",
    "bandwidth_by_size": [
        {"size_label": "l2", "working_set_bytes": 262128, "bytes_per_s": {str(t): 90e9 for t in THREADS}},
        {"size_label": "llc", "working_set_bytes": 8388600, "bytes_per_s": {str(t): 85e9 for t in THREADS}},
        {
            "size_label": "dram",
            "working_set_bytes": 268435440,
            "bytes_per_s": {str(t): 30e9 for t in THREADS},
        },
    ],
    "bandwidth": [],
    "flops": [],
    "quick": True,
    "duration_s": 1.0,
    "blas": [],
    "method": {"bandwidth": "synthetic", "flops": "synthetic"},
}


def _cases(n: int) -> list[Case]:
    out = []
    grid = itertools.product(INPUT_DIMS, WORKLOADS_VARIANTS, DTYPES, THREADS, BATCHES)
    for dim, (workload, variant), dtype, threads, batch in grid:
        for backend in BACKENDS:
            out.append(
                Case(workload, backend, "cpu", dtype, batch, input_dim=dim, threads=threads, variant=variant)
            )
        if threads == 1:
            out.append(
                Case(workload, "torch", "cuda", dtype, batch, input_dim=dim, threads=1, variant=variant)
            )
        if len(out) >= n:
            return out[:n]
    return out


def _time(case: Case, cost) -> float:
    overhead, bw, rate, threaded = BACKENDS[case.backend]
    if case.device == "cuda":
        overhead, bw, rate, threaded = 60_000, 500.0, 5000.0, False
    if case.dtype == "float32":
        rate *= 2
    if threaded and case.threads > 1:
        bw, rate = bw * min(case.threads, 2) * 0.8, rate * min(case.threads, 2) * 0.9
    t = overhead + cost.bytes / bw + cost.flops / rate
    if case.backend == "numba-parallel" and case.threads > 2:
        t *= 3 + case.threads  # oversubscribed: slower with more threads, by a lot
    return t


def record(case: Case, rng: np.random.Generator, i: int) -> dict:
    cost = WORKLOADS[case.workload].cost(case)
    base = {"case": case.to_json(), "reason": None, "loops": 0, "samples_ns": [], "rounds": [],
            "first_call_ns": None, "check": None, "memory": {}, "cost": {"bytes": cost.bytes, "flops": cost.flops},
            "notes": {}, "cpu_ns": None, "wall_ns": None, "device_samples_ns": [], "calibration": [],
            "evidence": None, "counts": None}  # fmt: skip
    if case.device == "cuda":
        return base | {"status": "skipped", "reason": "no CUDA device (torch.cuda.is_available() is False)"}
    if i % 997 == 13:
        return base | {"status": "failed", "reason": "ValueError: synthetic failure"}
    if i % 1499 == 21:
        return base | {"status": "timeout", "reason": "no result within 120 s (worker killed)"}
    t = _time(case, cost)
    loops = max(1, int(1e6 / t))
    noise = rng.lognormal(0.0, 0.03, ROUNDS * PER_ROUND)
    samples = [max(1, round(loops * t * v)) for v in noise]
    u = 2.0**-53 if case.dtype == "float64" else 2.0**-24
    check = {"ok": True, "worst_output": "elbo", "detail": None, "rel_err": 30 * u, "error_units": 30.0,
             "bound_units": 3e4, "expected_units": 2e3, "digits": 14.0, "rel_tolerance": None,
             "less_accurate": False}  # fmt: skip
    status, reason = "ok", None
    if i % 1201 == 7:
        status, reason = "incorrect", "elbo: error 0.0031 is 1.2e+03x what the arithmetic can give"
        check = dict(check, ok=False, detail=reason, error_units=5e4, bound_units=40.0)
    elif i % 1103 == 5:
        status, reason = "implausible", "implies 900 GB/s at a 13 KB working set: 10x the ceiling there"
    return base | {
        "status": status, "reason": reason, "loops": loops, "samples_ns": samples,
        "rounds": [PER_ROUND] * ROUNDS, "first_call_ns": int(3 * t + (8e8 if "numba" in case.backend else 5e4)),
        "check": check, "memory": {"peak_rss_bytes": int(5e7 + 1e3 * case.batch), "peak_scope": "case",
                                   "baseline_rss_bytes": int(5e7), "device_peak_bytes": None},
    }  # fmt: skip


def build(n: int = 20_000, seed: int = 27) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "schema": SCHEMA, "run_id": f"big-{n}", "started": "2026-01-01T00:00:00+00:00",
        "finished": "2026-01-01T06:00:00+00:00",
        "machine": {"cpu": "Synthetic CPU", "cores": 8, "logical_cpus": 8, "cpu_affinity": 8, "cpu_max_mhz": 0.0,
                    "memory_bytes": 64 * 2**30, "os": "Linux (synthetic)", "hostname": "big", "gpus": []},
        "software": {"python": "3.11.7", "numpy": "2.4.6"}, "git": {"commit": "ab" * 20, "dirty": False},
        "config": {"note": "tests/big_run.py"}, "limits": LIMITS, "health": {},
        "measurements": [record(c, rng, i) for i, c in enumerate(_cases(n))], "training": [],
    }  # fmt: skip


def write(path: Path, n: int = 20_000) -> Path:
    path.write_text(json.dumps(build(n), separators=(",", ":")))
    return path


if __name__ == "__main__":
    out = write(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 20_000)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
