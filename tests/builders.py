"""Runs and measurements built from simulated per-call times, for tests of statistics and gating."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from elbolab.model.case import Case
from elbolab.model.measurement import Measurement
from elbolab.store.results import Run, new_run

CPU = "Test CPU 9000"


def make_run(
    measurements, cpu: str = CPU, run_id: str = "r", commit: str = "abc123", software: dict | None = None
) -> Run:
    run = new_run(
        run_id, "2026-01-01T00:00:00+00:00", {"cpu": cpu, "cores": 2}, software or {"numpy": "2.0"},
        {"commit": commit, "dirty": False}, {},
    )  # fmt: skip
    return replace(run, measurements=tuple(measurements))


def ok(case: Case, per_call_ns, loops: int = 50) -> Measurement:
    samples = tuple(float(max(1, int(round(t * loops)))) for t in per_call_ns)
    return Measurement(case, "ok", loops=loops, samples_ns=samples, first_call_ns=1000)


def noisy(rng, median_ns: float, n: int = 15, sigma: float = 0.03) -> np.ndarray:
    return median_ns * np.exp(rng.normal(0.0, sigma, n))
