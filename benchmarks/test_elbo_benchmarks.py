"""The elbolab workloads as pytest-benchmark tests, for people who already use pytest-benchmark.

    pytest benchmarks/ --benchmark-only                      # every available backend
    pytest benchmarks/ --benchmark-only -k "elbo-numpy"      # a slice (ids: workload-backend-device-dtype-B)
    pytest benchmarks/ --benchmark-only --benchmark-autosave / --benchmark-compare

The cases are the lab's own (same seeded inputs, same backends found through the same registry,
same `prepare`); each is checked against the float64 reference before it is timed, so a wrong
backend fails instead of being fast. What this does not give you (use `elbolab run` / `gate`):
worker-process isolation, first-call time kept apart, per-case timeouts, thread counts of pools
other than BLAS/OpenMP (torch, numba, rayon), and the gate's interleaved A/B comparison with
confidence intervals. Filter with -k, e.g. -k "elbo-numpy" or -k "B128 and float32".
(The repo's pytest config has testpaths = ["tests"], so this folder runs only when named.)
"""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_limits

from elbolab.model.backend import discover_with_errors
from elbolab.model.case import Case
from elbolab.model.workloads import WORKLOADS, check_outputs

BATCHES = {"elbo": (1, 128, 1024), "elbo_grad": (128, 1024), "iwae": (128,), "vae_step": (128,)}
DTYPES = ("float64", "float32")

BACKENDS, LOAD_ERRORS = discover_with_errors()


def _params():
    for name, backend in BACKENDS.items():
        for device in backend.devices:
            for workload, batches in BATCHES.items():
                for batch in batches:
                    for dtype in DTYPES:
                        case = Case(workload, name, device=device, dtype=dtype, batch=batch)
                        yield pytest.param(case, id=f"{workload}-{name}-{device}-{dtype}-B{batch}")


@pytest.mark.parametrize("case", list(_params()))
def test_workload(benchmark, case: Case):
    backend = BACKENDS[case.backend]
    reason = backend.skip_reason(case)
    if reason:
        pytest.skip(reason)
    workload = WORKLOADS[case.workload]
    inputs = workload.make_inputs(case)
    prepared = backend.prepare(case, {k: v.copy() for k, v in inputs.items()})
    call, sync = prepared.call, prepared.sync
    run = call if sync is None else (lambda: (call(), sync()))
    run()  # first call (compile/JIT/allocation) outside the measurement, then check the answer
    check = check_outputs(workload, case, inputs, prepared.outputs())
    assert check.ok, f"{case.label()}: wrong answer ({check.worst_output}: {check.describe()})"
    benchmark.group = f"{case.workload} {case.dtype} B={case.batch}"
    benchmark.extra_info.update(case=case.to_json(), notes=prepared.notes)
    with threadpool_limits(limits=case.threads):  # BLAS/OpenMP pools at the case's thread count
        benchmark(run)


def test_backends_load():
    """A backend package that fails to import is reported here rather than silently missing."""
    if LOAD_ERRORS:
        pytest.skip("; ".join(LOAD_ERRORS))
