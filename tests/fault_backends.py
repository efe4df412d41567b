"""Backends that misbehave on purpose, for the runner's isolation tests.

Registered through ELBOLAB_BACKENDS (e.g. "tests.fault_backends:crashing"). Each behaves like the
NumPy backend except on the batch size FAULT_BATCH (or, for crashing_float32, in float32), where
it segfaults, hangs, raises or lies.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import replace

from backends.numpy import backend as numpy_backend
from elbolab.model.backend import Backend, Prepared
from elbolab.model.case import Case

FAULT_BATCH = 7


def _wrapping(name: str, fault, faulty=lambda case: case.batch == FAULT_BATCH) -> Backend:
    def prepare(case: Case, inputs: dict) -> Prepared:
        prepared = numpy_backend.prepare(case, inputs)
        if not faulty(case):
            return prepared
        return fault(prepared)

    return replace(
        numpy_backend, name=name, description=f"test backend: {name}",
        preparers=dict.fromkeys(numpy_backend.workloads, prepare),
    )  # fmt: skip


def _segfault(prepared: Prepared) -> Prepared:
    def call():
        ctypes.string_at(0)  # reads address 0: SIGSEGV

    return replace(prepared, call=call)


def _hang(prepared: Prepared) -> Prepared:
    def call():
        time.sleep(3600)

    return replace(prepared, call=call)


def _raise(prepared: Prepared) -> Prepared:
    def call():
        raise FloatingPointError("kernel exploded")

    return replace(prepared, call=call)


def _lie(prepared: Prepared) -> Prepared:
    def outputs():
        out = dict(prepared.outputs())
        out["recon"] = float(out["recon"]) * 1.01
        return out

    return replace(prepared, outputs=outputs)


def _abort(prepared: Prepared) -> Prepared:
    def call():
        os.abort()

    return replace(prepared, call=call)


crashing = _wrapping("crashing", _segfault)
hanging = _wrapping("hanging", _hang)
raising = _wrapping("raising", _raise)
lying = _wrapping("lying", _lie)
aborting = _wrapping("aborting", _abort)
# in every float32 case (training, whose batch is its own, trains each dtype in turn)
crashing_float32 = _wrapping("crashing-float32", _segfault, lambda case: case.dtype == "float32")

gone = replace(
    numpy_backend, name="gone", description="test backend: library missing",
    unavailable_reason=lambda: "gonelib not installed",
)  # fmt: skip
