"""Test-only backends: the NumPy and Rust elbo kernels with a controlled amount of extra work.

Registered with ELBOLAB_BACKENDS=tests.slow_backend:backend (numpy-slow) and
tests.slow_backend:rust_backend (rust-slow). ELBOLAB_EXTRA_WORK=0.25 makes every batch of calls
the timer asks for do 25% more of the kernel's work (with_extra_work), with the same backend name
in every run so the cases of a slowed and an unslowed run match. The environment variable is read
in `prepare`, i.e. in the worker process, and the amount is recorded in the measurement's notes.

Used by tests/test_gate.py and scripts/gate_experiment.py to give the gate a true slowdown.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from backends.numpy import backend as numpy_backend
from elbolab.measure.timer import loop_runner
from elbolab.model.backend import Backend, Prepared
from elbolab.model.case import Case

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


def with_extra_work(prepared: Prepared, fraction: float, batch: int, prepare_rows) -> Prepared:
    """Every batch of `loops` calls the timer asks for (call_n) does the kernel's work of
    loops * (1 + fraction) calls: the loops, then int(loops * fraction) more whole calls, then the
    rest as one call of the same kernel on that fraction of the `batch` rows (`prepare_rows(rows)`,
    a plan on the first rows of the inputs, made once per row count). So every sample carries the
    same extra work, real kernel work on real data, and only one call's fixed cost more.

    Two earlier designs measured something else than they meant:
    - one extra call every 1/fraction calls: a sample of `loops` calls held floor or
      ceil(loops * fraction) extra calls, e.g. 0 or 1 at 5 loops a sample (NumPy at batch 1024);
      the samples were bimodal and their median landed anywhere between the modes (a "+10%"
      arm measured 1.05 there, 1.17 for Rust at batch 1024);
    - keeping the thread busy for `fraction` of the kernel's time: +10% of waiting measured
      +12-14% on NumPy at batch 128 (a Python loop between calls disturbs the next call) and
      +0-1% on the memory-bound Rust elbo at batch 1024 (a waiting core is not its bottleneck)."""
    plans = {}
    call_n = loop_runner(prepared, synced=False)  # call_n, or the timer's own loop of calls

    def slowed_n(loops: int) -> None:
        whole, part = divmod(loops * fraction, 1.0)
        call_n(loops + int(whole))
        rows = round(part * batch)
        if rows:
            if rows not in plans:
                plans[rows] = prepare_rows(rows)
            plans[rows].call()

    return replace(prepared, call_n=slowed_n)


def _slowed(prepare_kernel):
    def prepare(case: Case, inputs: dict) -> Prepared:
        prepared = prepare_kernel(case, inputs)
        fraction = extra_work()
        prepared = replace(prepared, notes=dict(prepared.notes, extra_work=fraction))

        def prepare_rows(rows: int) -> Prepared:
            # views of the first rows (C-contiguous), not copies: the extra call reads memory the
            # kernel reads anyway, as more work on the same data would (copies made the working set
            # larger, and the memory-bound Rust kernel at batch 1024 1.4x slower, not 1.1x)
            per_row = {k: v[:rows] if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == case.batch else v
                       for k, v in inputs.items()}  # fmt: skip
            return prepare_kernel(replace(case, batch=rows), per_row)

        # at 0 too: both sides time the same loop
        return with_extra_work(prepared, fraction, case.batch, prepare_rows)

    return prepare


def _numpy_prepare(case: Case, inputs: dict) -> Prepared:
    return numpy_backend.prepare(case, inputs)


def _rust_prepare(case: Case, inputs: dict) -> Prepared:
    from backends.rust import backend as rust_backend

    return rust_backend.prepare(case, inputs)


prepare, prepare_rust = _slowed(_numpy_prepare), _slowed(_rust_prepare)

backend: Backend = replace(
    numpy_backend,
    name="numpy-slow",
    description="test backend: NumPy elbo plus ELBOLAB_EXTRA_WORK of its work",
    preparers={"elbo": prepare, "elbo_grad": prepare},
)


def prepare_pass(case: Case, inputs: dict) -> Prepared:
    """NumPy elbo that redoes ELBOLAB_EXTRA_WORK of its main pass (x - x_recon, its squared norm) in
    every call: extra work inside each call, a fraction of one pass (numpy-slow adds a fraction of
    the whole kernel). tests/test_instructions.py counts it."""
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
    from backends.rust import backend as rust_backend

    return rust_backend.unavailable_reason()


rust_backend: Backend = replace(
    numpy_backend,
    name="rust-slow",
    description="test backend: the Rust elbo plus ELBOLAB_EXTRA_WORK of its work",
    preparers={"elbo": prepare_rust, "elbo_grad": prepare_rust},
    unavailable_reason=_rust_unavailable,
)
