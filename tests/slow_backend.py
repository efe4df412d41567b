"""Test-only backends: the NumPy and Rust elbo kernels with a controlled amount of extra work.

Registered with ELBOLAB_BACKENDS=tests.slow_backend:backend (numpy-slow) and
tests.slow_backend:rust_backend (rust-slow). ELBOLAB_EXTRA_WORK=0.25 makes every kernel call take
25% longer (with_extra_time), with the same backend name in every run so the cases of a slowed and
an unslowed run match. The environment variable is read in `prepare`, i.e. in the worker process,
and the amount is recorded in the measurement's notes.

Used by tests/test_gate.py and scripts/gate_experiment.py to give the gate a true slowdown.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import numpy as np
from elbolab.backend import Backend, Prepared
from elbolab.backends.numpy import backend as numpy_backend
from elbolab.case import Case

EXTRA_WORK_ENV = "ELBOLAB_EXTRA_WORK"


def extra_work() -> float:
    text = os.environ.get(EXTRA_WORK_ENV, "0") or "0"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{EXTRA_WORK_ENV} must be a fraction such as 0.25, got {text!r}") from None
    if not 0 <= value <= 10:
        raise ValueError(f"{EXTRA_WORK_ENV} must be between 0 and 10, got {value}")
    return value


def with_extra_time(prepared: Prepared, fraction: float) -> Prepared:
    """Every call (and every call_n batch, the backend's own timing loop) takes 1 + fraction times
    as long: the kernel runs, then the thread stays busy for `fraction` of the time the kernel just
    took. The slowdown is the same in every sample, and scales with the kernel's time when the
    host slows it down, as a real regression does.

    Why not extra kernel calls (this backend's first design: one more call every 1/fraction calls):
    a sample of `loops` calls then holds floor or ceil(loops * fraction) extra calls, e.g. 0 or 1
    at 5 loops a sample (numpy at batch 1024); the samples become bimodal and their median lands
    anywhere between the modes (a "+10%" arm measured 1.05 there, 1.17 for rust at batch 1024)."""
    call, call_n = prepared.call, prepared.call_n

    def stay_busy(started: int) -> None:
        took = time.perf_counter_ns() - started
        until = time.perf_counter_ns() + int(fraction * took)
        while time.perf_counter_ns() < until:
            pass

    def slowed():
        t0 = time.perf_counter_ns()
        call()
        stay_busy(t0)

    def slowed_n(loops: int) -> None:
        t0 = time.perf_counter_ns()
        call_n(loops)
        stay_busy(t0)

    return replace(prepared, call=slowed, call_n=slowed_n if call_n is not None else None)


def _slowed(prepare_kernel):
    def prepare(case: Case, inputs: dict) -> Prepared:
        prepared = prepare_kernel(case, inputs)
        fraction = extra_work()
        prepared = replace(prepared, notes=dict(prepared.notes, extra_work=fraction))
        return with_extra_time(prepared, fraction) if fraction else prepared

    return prepare


def _numpy_prepare(case: Case, inputs: dict) -> Prepared:
    return numpy_backend.prepare(case, inputs)


def _rust_prepare(case: Case, inputs: dict) -> Prepared:
    from elbolab.backends.rust import backend as rust_backend

    return rust_backend.prepare(case, inputs)


prepare, prepare_rust = _slowed(_numpy_prepare), _slowed(_rust_prepare)

backend: Backend = replace(
    numpy_backend,
    name="numpy-slow",
    description="test backend: NumPy elbo, each call ELBOLAB_EXTRA_WORK longer",
    preparers={"elbo": prepare, "elbo_grad": prepare},
)


def prepare_pass(case: Case, inputs: dict) -> Prepared:
    """NumPy elbo that redoes ELBOLAB_EXTRA_WORK of its main pass (x - x_recon, its squared norm) in
    every call: the same extra work in each call, so instruction counts (per-call segments) see
    exactly that fraction, where extra whole calls would fall unevenly between segments."""
    prepared = numpy_backend.prepare(case, inputs)
    fraction = extra_work()
    notes = dict(prepared.notes, extra_work=fraction)
    if fraction == 0:
        return replace(prepared, notes=notes)
    # `fraction` of the elements of the main pass again: whole passes, then a contiguous slice
    x, x_recon = inputs["x"].reshape(-1), inputs["x_recon"].reshape(-1)
    extra = int(round(fraction * x.size))
    full_passes, rest = divmod(extra, x.size)
    sink = np.zeros(1, dtype=np.float64)

    def burn():
        acc = 0.0
        for _ in range(full_passes):
            d = x - x_recon
            acc += float(np.dot(d, d))
        if rest:
            d = x[:rest] - x_recon[:rest]
            acc += float(np.dot(d, d))
        sink[0] = acc  # keep the result alive so the work cannot be skipped

    call = prepared.call

    def slowed():
        call()
        burn()

    return replace(prepared, call=slowed, notes=notes)


pass_backend: Backend = replace(
    numpy_backend,
    name="numpy-pass",
    description="test backend: NumPy elbo plus ELBOLAB_EXTRA_WORK of its main pass in every call",
    preparers={"elbo": prepare_pass, "elbo_grad": prepare_pass},
)


def _rust_unavailable() -> str | None:
    from elbolab.backends.rust import backend as rust_backend

    return rust_backend.unavailable_reason()


rust_backend: Backend = replace(
    numpy_backend,
    name="rust-slow",
    description="test backend: the Rust elbo, each call ELBOLAB_EXTRA_WORK longer",
    preparers={"elbo": prepare_rust, "elbo_grad": prepare_rust},
    unavailable_reason=_rust_unavailable,
)
