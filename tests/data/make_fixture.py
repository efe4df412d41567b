"""Write tests/data/run_fixture.json: a fixed, synthetic results file for the report tests.

Deterministic (seeded; no clock): run `python tests/data/make_fixture.py` to regenerate it. The times
follow a simple model (per-call overhead + bytes / bandwidth + flops / rate, with log-normal noise and a
few slow outliers) so the report has crossovers to show; they are not measurements of anything.
As a schema-3 run measures them: every cell's cases sampled in 8 interleaved rounds of 2 samples,
numpy measured again in every cell as `numpy-control` (the null control), an evidence record per
timed case, and the machine's health (warnings, load, virtualisation).
It also holds what the report must survive and rank: one 'incorrect', 'implausible', 'failed',
'timeout' and 'skipped' case, a case 110x slower with 2 threads than with 1 (and the model's own
small slow-downs), compiles in the first calls, a backend whose name is an HTML script tag, metadata
with markup in it, a CUDA device, and a training entry with loss curves.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from elbolab.model.case import Case
from elbolab.model.measurement import Check, Evidence, Measurement, Memory
from elbolab.model.workloads import WORKLOADS
from elbolab.store.results import TrainingCurve, new_run

OUT = Path(__file__).with_name("run_fixture.json")
EVIL = "<script>alert(1)</script>"
BATCHES = (1, 128, 1024, 8192)
DTYPES = ("float64", "float32")
THREADS = (1, 2)
WORKLOAD_VARIANTS = (
    ("elbo", "eps=given"),
    ("elbo", "eps=sampled"),
    ("elbo_grad", "eps=given"),
    ("iwae", "eps=given"),
    ("vae_step", "eps=given"),
)
# per-call overhead (ns), bandwidth (bytes/ns), float64 flop rate (flops/ns), threads scale
MODEL = {
    "numpy": (15_000, 10.0, 20.0, False),
    "numpy-control": (15_000, 10.0, 20.0, False),  # numpy again: the null control
    "torch": (40_000, 12.0, 40.0, True),
    "numba": (3_000, 15.0, 25.0, True),
    "rust": (1_500, 20.0, 30.0, True),
    "rust-inner": (200, 20.0, 30.0, True),
}
ROUNDS, PER_ROUND = 8, 2
N_SAMPLES = ROUNDS * PER_ROUND
HEALTH = {
    "start": {
        "facts": {"cores_available": 2, "load_average": [1.25, 0.5, 0.25], "virtualisation": "kvm",
                  "governor": None, "simd": ["avx2", "fma"], "gpus": []},
        "warnings": ["virtual machine (kvm): neighbours on the host can slow it down"],
    },
    "end": {"load_average": [2.5, 1.0, 0.5]},
}  # fmt: skip
# the worst slow-down: torch elbo float64 at batch 128 with 2 threads, 110x its 1-thread time
SLOW_THREADS = Case("elbo", "torch", "cpu", "float64", 128, threads=2)
SLOW_FACTOR = 110.0

LIMITS = {
    "memory_bandwidth_bytes_per_s": 30e9,
    "memory_bandwidth_single_thread_bytes_per_s": 28e9,
    "cache_bandwidth_bytes_per_s": 95e9,
    "peak_flops": 100e9,
    "peak_flops_float32": 200e9,
    "peak_flops_single_thread": 52e9,
    "threads": [1, 2],
    "last_level_cache_bytes": 32 * 2**20,
    "last_level_cache_source": "fixture",
    "bandwidth_by_size": [
        {"size_label": "l2", "working_set_bytes": 262128, "bytes_per_s": {"1": 90e9, "2": 95e9}},
        {"size_label": "batch128", "working_set_bytes": 2097144, "bytes_per_s": {"1": 88e9, "2": 98e9}},
        {"size_label": "llc", "working_set_bytes": 16777200, "bytes_per_s": {"1": 85e9, "2": 90e9}},
        {"size_label": "dram", "working_set_bytes": 268435440, "bytes_per_s": {"1": 28e9, "2": 30e9}},
    ],
    "bandwidth": [],
    "flops": [],
    "quick": True,
    "duration_s": 1.5,
    "blas": [{"user_api": "blas", "internal_api": "openblas", "version": "0.3.x", "num_threads": 2}],
    "method": {"bandwidth": "fixture: synthetic figures", "flops": "fixture: synthetic figures"},
}


def per_call_ns(case: Case) -> float:
    if case == SLOW_THREADS:
        return SLOW_FACTOR * per_call_ns(replace(case, threads=1))
    cost = WORKLOADS[case.workload].cost(case)
    if case.backend == EVIL:
        overhead, bw, rate, threaded = 5_000, 10.0, 20.0, False
    else:
        overhead, bw, rate, threaded = MODEL[case.backend]
    if case.device == "cuda":
        overhead, bw, rate, threaded = 60_000, 500.0, 5000.0, False
    if case.dtype == "float32":
        rate *= 2
    if threaded and case.threads > 1:
        bw, rate = bw * 1.6, rate * 1.8
    t = overhead + cost.bytes / bw + cost.flops / rate
    if case.variant == "eps=sampled":
        t += case.batch * case.latent_dim * (20.0 if case.backend.startswith("numpy") else 4.0)
    return t


def samples_for(rng: np.random.Generator, t: float) -> tuple[int, tuple[float, ...]]:
    loops = max(1, int(1e6 / t))
    noise = rng.lognormal(0.0, 0.03, N_SAMPLES)
    noise[rng.random(N_SAMPLES) < 0.1] *= 1.5  # a few slow outliers, as a shared machine gives
    noise *= np.repeat(rng.lognormal(0.0, 0.01, ROUNDS), PER_ROUND)  # each round's own drift
    return loops, tuple(float(max(1, int(round(loops * t * v)))) for v in noise)


def ok_check(case: Case) -> Check:
    u = 2.0**-53 if case.dtype == "float64" else 2.0**-24
    rel = 3e-15 if case.dtype == "float64" else 4e-7
    return Check(ok=True, worst_output="elbo", rel_err=rel, error_units=rel / u, bound_units=3e4,
                 expected_units=2e3, digits=-float(np.log10(rel)))  # fmt: skip


def build() -> dict:
    rng = np.random.default_rng(20240601)
    doc = new_run(
        run_id="fixture-run-1",
        started="2024-06-01T12:00:00+00:00",
        machine={
            "cpu": "Synthetic CPU <b>bold</b> & co",
            "cores": 2,
            "memory_bytes": 8 * 2**30,
            "os": "Linux (fixture)",
            "gpus": [{"name": "Fixture GPU 80GB"}],
            "hostname": EVIL,
        },
        software={
            "python": "3.11.7",
            "numpy": "2.4.6",
            "torch": "2.15.0",
            "numba": "0.68.1",
            "elbolab_rust": "0.1.0",
            "blas": "openblas 0.3.x",
        },
        git={"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False},
        config={"quick": False, "samples": N_SAMPLES, "note": "synthetic fixture for the report tests"},
    )
    doc = replace(doc, finished="2024-06-01T12:30:00+00:00", limits=LIMITS)
    measurements = []
    cases: list[Case] = []
    for workload, variant in WORKLOAD_VARIANTS:
        for dtype in DTYPES:
            for threads in THREADS:
                for batch in BATCHES:
                    for backend in MODEL:
                        cases.append(
                            Case(workload, backend, "cpu", dtype, batch, threads=threads, variant=variant)
                        )
                    if workload in ("elbo", "elbo_grad") and threads == 1:
                        cases.append(
                            Case(workload, "torch", "cuda", dtype, batch, threads=1, variant=variant)
                        )
    for batch in (1, 128, 1024):
        cases.append(Case("elbo", EVIL, "cpu", "float64", batch, threads=1))

    special = {
        Case("elbo", "rust-inner", "cpu", "float64", 1, threads=1): "implausible",
        Case("elbo_grad", "numba", "cpu", "float32", 8192, threads=1): "incorrect",
        Case("iwae", "rust", "cpu", "float32", 1024, threads=2): "failed",
        Case("vae_step", "torch", "cpu", "float64", 8192, threads=1): "timeout",
        Case("vae_step", "rust-inner", "cpu", "float32", 1, threads=1): "skipped",
    }
    for case in cases:
        cost = WORKLOADS[case.workload].cost(case)
        memory = Memory(
            peak_rss_bytes=int(48e6 + 5e5 * case.batch * (1 + (case.dtype == "float64"))),
            device_peak_bytes=int(2e6 * case.batch) if case.device == "cuda" else None,
        )
        status = special.get(case, "ok")
        t = per_call_ns(case)
        if status == "implausible":
            t = 20.0  # 12.6 KB in 20 ns = 630 GB/s: more than the machine can move
        if status in ("ok", "implausible"):
            loops, samples = samples_for(rng, t)
            share = cost.bytes / t / (LIMITS["cache_bandwidth_bytes_per_s"] / 1e9)
            reason = None
            if status == "implausible":
                reason = (f"{share:.0%} of the bandwidth this machine reaches at the case's working set (re-probed): "
                          "faster than physics allows, a measurement error, not a speed-up")  # fmt: skip
            m = Measurement(
                case,
                status,
                reason,
                loops=loops,
                samples_ns=samples,
                rounds=(PER_ROUND,) * ROUNDS,
                first_call_ns=first_call(case, t),
                check=ok_check(case),
                memory=memory,
                cost=cost,
                evidence=evidence(case, share),
            )
        elif status == "incorrect":
            loops, samples = samples_for(rng, t * 0.5)  # timed, fast, and wrong: must not count
            detail = "grad_x_recon: error 0.0031 at element (3, 7) is 1.2e+03x what the arithmetic can give"
            check = Check(False, "grad_x_recon", detail, rel_err=3.1e-3, error_units=5.2e4, bound_units=40.0)
            m = Measurement(
                case,
                "incorrect",
                detail,
                loops=loops,
                samples_ns=samples,
                rounds=(PER_ROUND,) * ROUNDS,
                first_call_ns=first_call(case, t),
                check=check,
                memory=memory,
                cost=cost,
            )
        elif status == "failed":
            m = Measurement(
                case,
                "failed",
                "ValueError: eps has shape (8, 1024, 20), expected float32 array",
                cost=cost,
            )
        elif status == "timeout":
            m = Measurement(case, "timeout", "no result within 120 s (worker killed)", cost=cost)
        else:
            m = Measurement(case, "skipped", "rust-inner does not implement workload vae_step", cost=cost)
        measurements.append(m)

    steps = 300
    x = np.arange(steps)
    training = []
    for backend, offset in (("numpy", 0.0), ("torch", 1e-6), ("rust", -1e-6)):
        losses = 45.0 * np.exp(-x / 60.0) + 28.0 + 0.5 * np.sin(x / 7.0) * np.exp(-x / 150.0) + offset
        training.append(
            TrainingCurve(backend, "cpu", "float64", "ok", steps=steps, batch=64, lr=0.05,
                          dataset="sklearn digits 8x8", losses=tuple(round(float(v), 6) for v in losses))
        )  # fmt: skip
    training.append(
        TrainingCurve("numba", "cpu", "float64", "failed", reason="numba not installed", steps=steps,
                      batch=64, lr=0.05, dataset="sklearn digits 8x8")
    )  # fmt: skip
    return replace(doc, measurements=tuple(measurements), training=tuple(training), health=HEALTH).to_json()


def evidence(case: Case, share: float) -> Evidence:
    """What a schema-3 run records of a timed case: the inputs rotated, calls checked, the threads
    that did work on the cores pinned, and its share of the bandwidth ceiling."""
    return Evidence(input_sets=2, rotations=7, checked_calls=5, checked_samples=1, busy_threads=case.threads,
                    children=0, pinned_cpus=tuple(range(case.threads)), ceiling_share=round(share, 4))  # fmt: skip


def first_call(case: Case, t: float) -> int:
    jit = {"numba": 8e8, "torch": 5e6}.get(case.backend, 5e4)
    return int(jit + 3 * t)


def main() -> int:
    doc = build()
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    if "--check" in sys.argv:
        return 0 if OUT.read_text() == text else 1
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(doc['measurements'])} measurements, {math.ceil(len(text) / 1024)} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
