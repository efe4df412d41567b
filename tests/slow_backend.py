"""A test-only backend: the NumPy elbo kernels with a controlled amount of extra work.

Registered with ELBOLAB_BACKENDS=tests.slow_backend:backend. ELBOLAB_EXTRA_WORK=0.25 makes every
call also redo the kernel's dominant pass (x - x_recon, then its squared norm) over the first 25%
of the rows: about +25% work, with the same backend name in every run so the cases of a slowed and
an unslowed run match. The environment variable is read in `prepare`, i.e. in the worker process,
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


def prepare(case: Case, inputs: dict) -> Prepared:
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


backend: Backend = replace(
    numpy_backend,
    name="numpy-slow",
    description="test backend: NumPy elbo plus ELBOLAB_EXTRA_WORK of its main pass",
    preparers={"elbo": prepare, "elbo_grad": prepare},
)


def prepare_rust(case: Case, inputs: dict) -> Prepared:
    """The Rust kernel, called once more every 1/ELBOLAB_EXTRA_WORK calls (an accumulator decides,
    so the extra work is exactly that fraction of kernel calls, evenly spread)."""
    from elbolab.backends.rust import backend as rust_backend

    prepared = rust_backend.prepare(case, inputs)
    fraction = extra_work()
    notes = dict(prepared.notes, extra_work=fraction)
    if fraction == 0:
        return replace(prepared, notes=notes)
    call, owed = prepared.call, [0.0]

    def slowed():
        call()
        owed[0] += fraction
        while owed[0] >= 1.0:
            call()
            owed[0] -= 1.0

    return replace(prepared, call=slowed, call_n=None, notes=notes)


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
