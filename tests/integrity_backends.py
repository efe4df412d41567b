"""Backends that skip work and pass one check, for the evidence tests (tests/test_integrity.py).

Registered through ELBOLAB_BACKENDS ("tests.integrity_backends:first_call_only,..."), written through
the documented backend contract, each wrapping the NumPy backend, each doing less work in its timed
calls than the outputs it reports claim (or doing it where the clock or the census cannot see it):

  first_call_only   computes on its first call, later calls return at once
  lazy_outputs      does its work when the outputs are read, not in the call
  half_call_n       call_n(n) runs n // 2 calls
  short_call_n      call_n(n) runs n - 1 calls
  every_other_call  works on every other call
  second_thread     half the rows in a second thread (at --threads 1)
  forked_child      half the rows in a child process it forked (its CPU is not the worker's)
  tampering         replaces the checker's functions in its own process, returns zeros

What the evidence cannot see (README, "What the evidence proves"): a backend that memoizes on its
inputs' contents, hashing them in place of the work, where hashing costs less than the work (the
compute-bound iwae and vae_step), since a sample repeats one input set; only a time beyond the
machine's ceilings gives it away.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace

import numpy as np

from backends.numpy import backend as numpy_backend
from elbolab.model.backend import Backend, Prepared
from elbolab.model.case import Case


def _wrapping(name: str, fault) -> Backend:
    def prepare(case: Case, inputs: dict) -> Prepared:
        return fault(numpy_backend.prepare(case, inputs), case, inputs)

    return replace(numpy_backend, name=name, description=f"test backend that skips work: {name}",
                   preparers=dict.fromkeys(numpy_backend.workloads, prepare))  # fmt: skip


def _first_call_only(p: Prepared, case, inputs) -> Prepared:
    done = []

    def call():
        if not done:
            p.call()
            done.append(True)

    return replace(p, call=call)


def _lazy_outputs(p: Prepared, case, inputs) -> Prepared:
    def outputs():
        p.call()
        return p.outputs()

    return replace(p, call=lambda: None, outputs=outputs)


def _call_n(calls_for):
    def fault(p: Prepared, case, inputs) -> Prepared:
        def call_n(n: int) -> None:
            for _ in range(calls_for(n)):
                p.call()

        return replace(p, call_n=call_n)

    return fault


def _every_other_call(p: Prepared, case, inputs) -> Prepared:
    count = [0]

    def call():
        count[0] += 1
        if count[0] % 2:
            p.call()

    return replace(p, call=call)


def _elbo_rows(case: Case, inputs: dict, rows: slice) -> Prepared:
    """The NumPy elbo on a slice of the rows (a view: it reads the harness's buffers)."""
    sub = {k: v[rows] for k, v in inputs.items()}
    return numpy_backend.prepare(replace(case, batch=sub["x"].shape[0]), sub)


def _halves(case: Case, inputs: dict):
    half = case.batch // 2
    return _elbo_rows(case, inputs, slice(0, half)), _elbo_rows(case, inputs, slice(half, None)), half


def _combined(case: Case, first: Prepared, second: Prepared, half: int, out: dict) -> None:
    """The whole batch's outputs from the two halves' (the sums weighted back to 1/B)."""
    a, b = first.outputs(), second.outputs()
    n1, n2 = half, case.batch - half
    for k in ("recon", "kl"):
        out[k] = (float(a[k]) * n1 + float(b[k]) * n2) / case.batch
    out["elbo"] = out["recon"] - out["kl"]
    out["z"] = np.concatenate([a["z"], b["z"]])


def _second_thread(p: Prepared, case, inputs) -> Prepared:
    if case.workload != "elbo" or case.variant != "eps=given" or case.batch < 2:
        return p
    first, second, half = _halves(case, inputs)
    out: dict = {}

    def call():
        t = threading.Thread(target=second.call)  # NumPy releases the GIL in its loops
        t.start()
        first.call()
        t.join()
        _combined(case, first, second, half, out)

    return replace(p, call=call, outputs=lambda: dict(out))


def _forked_child(p: Prepared, case, inputs) -> Prepared:
    """A child process forked in prepare computes the second half of the rows' reconstruction on
    each call, from the parent's buffers through shared memory it maps before forking."""
    if case.workload != "elbo" or case.variant != "eps=given" or case.batch < 2:
        return p
    import mmap

    half = case.batch // 2
    x, xr = inputs["x"], inputs["x_recon"]
    rows = x[half:].nbytes
    shared = mmap.mmap(-1, 2 * rows + 8)
    sx = np.frombuffer(shared, dtype=x.dtype, count=x[half:].size).reshape(x[half:].shape)
    sxr = np.frombuffer(shared, dtype=x.dtype, count=x[half:].size, offset=rows).reshape(x[half:].shape)
    result = np.frombuffer(shared, dtype=np.float64, count=1, offset=2 * rows)
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    if os.fork() == 0:  # the child: forever, on each byte, the second half's sum of squares
        while os.read(go_r, 1):
            d = sx - sxr
            result[0] = float((d * d).sum())  # no BLAS after a fork: its thread pool did not come along
            os.write(done_w, b"x")
        os._exit(0)
    first = _elbo_rows(case, inputs, slice(0, half))
    mu, logvar, eps = inputs["mu"], inputs["logvar"], inputs["eps"]
    z = np.empty_like(mu)
    out: dict = {}

    def call():
        np.copyto(sx, x[half:])
        np.copyto(sxr, xr[half:])
        os.write(go_w, b"x")
        first.call()
        np.multiply(np.exp(0.5 * logvar), eps, out=z)
        np.add(z, mu, out=z)
        kl = 0.5 * float(np.sum(mu * mu + (np.expm1(logvar) - logvar))) / case.batch
        os.read(done_r, 1)
        recon = (float(first.outputs()["recon"]) * half - result[0]) / case.batch
        out.update(z=z, recon=recon, kl=kl, elbo=recon - kl)

    return replace(p, call=call, outputs=lambda: dict(out))


def _tampering(p: Prepared, case, inputs) -> Prepared:
    """Zeros for every output, and the lab's checker replaced in this process by one that passes."""
    import elbolab.model.accuracy as accuracy
    import elbolab.model.workloads as workloads
    from elbolab.model.measurement import Check

    def passes(*args, **kwargs):
        return Check(ok=True, detail="tampered")

    workloads.check_outputs = passes
    accuracy.compare_outputs = passes
    p.call()
    zeros = {k: np.zeros_like(np.asarray(v)) for k, v in p.outputs().items()}
    return replace(p, call=lambda: None, outputs=lambda: zeros)


first_call_only = _wrapping("first-call-only", _first_call_only)
lazy_outputs = _wrapping("lazy-outputs", _lazy_outputs)
half_call_n = _wrapping("half-call-n", _call_n(lambda n: n // 2))
short_call_n = _wrapping("short-call-n", _call_n(lambda n: n - 1))
every_other_call = _wrapping("every-other-call", _every_other_call)
second_thread = _wrapping("second-thread", _second_thread)
forked_child = _wrapping("forked-child", _forked_child)
tampering = _wrapping("tampering", _tampering)

ALL = ("first_call_only", "lazy_outputs", "half_call_n", "short_call_n", "every_other_call", "second_thread",
       "forked_child", "tampering")  # fmt: skip

# not a cheat: NumPy under another name, an A/A beside NumPy (tests/test_reproducibility.py)
numpy_again = replace(
    numpy_backend, name="numpy-again", description="NumPy again, under another name (an A/A)"
)
