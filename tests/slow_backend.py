"""Test-only backends: the NumPy and Rust elbo kernels with a controlled amount of extra work.

Registered with ELBOLAB_BACKENDS=tests.slow_backend:backend (numpy-slow) and
tests.slow_backend:rust_backend (rust-slow). ELBOLAB_EXTRA_WORK=0.25 calls the kernel once more
every 4 calls: +25% work, with the same backend name in every run so the cases of a slowed and an
unslowed run match. The environment variable is read in `prepare`, i.e. in the worker process,
and the amount is recorded in the measurement's notes.

Used by tests/test_gate.py and scripts/gate_experiment.py to give the gate a true slowdown.
"""

from __future__ import annotations

import os
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


def with_extra_calls(prepared: Prepared, fraction: float) -> Prepared:
    """The kernel called once more every 1/fraction calls (an accumulator decides, so the extra
    work is exactly that fraction of kernel calls, evenly spread): a time ratio of 1 + fraction
    by construction, whatever share of the call the kernel's main pass is. A backend's own
    timing loop (call_n) is kept, with the extra calls added to it, so the slowed and unslowed
    sides differ by the extra calls alone."""
    call, call_n, owed = prepared.call, prepared.call_n, [0.0]

    def owing(calls: int) -> int:
        owed[0] += fraction * calls
        extra = int(owed[0])
        owed[0] -= extra
        return extra

    def slowed():
        for _ in range(1 + owing(1)):
            call()

    def slowed_n(loops: int) -> None:
        call_n(loops + owing(loops))

    return replace(prepared, call=slowed, call_n=slowed_n if call_n is not None else None)


def _slowed(prepare_kernel):
    def prepare(case: Case, inputs: dict) -> Prepared:
        prepared = prepare_kernel(case, inputs)
        fraction = extra_work()
        prepared = replace(prepared, notes=dict(prepared.notes, extra_work=fraction))
        return with_extra_calls(prepared, fraction) if fraction else prepared

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
    description="test backend: NumPy elbo plus ELBOLAB_EXTRA_WORK more kernel calls",
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
    description="test backend: the Rust elbo plus ELBOLAB_EXTRA_WORK more kernel calls",
    preparers={"elbo": prepare_rust, "elbo_grad": prepare_rust},
    unavailable_reason=_rust_unavailable,
)
