"""One correctness check of a backend on a case: inputs, prepare, one call, compare with reference."""

from __future__ import annotations

from elbolab.backend import Backend
from elbolab.case import Case
from elbolab.measurement import Check
from elbolab.workloads import WORKLOADS, check_outputs


def verify(backend: Backend, case: Case) -> Check:
    workload = WORKLOADS[case.workload]
    inputs = workload.make_inputs(case)
    prepared = backend.prepare(case, {k: v.copy() for k, v in inputs.items()})
    prepared.call()
    if prepared.sync:
        prepared.sync()
    return check_outputs(workload, case, inputs, prepared.outputs())
