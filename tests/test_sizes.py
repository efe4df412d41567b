"""Every backend, every workload, both dtypes, at odd sizes: vector tails, single rows, K = 1.

784 is a multiple of every SIMD width, so the default sizes never exercise a kernel's tail. Here the
input dim D, latent dim L, hidden width H, IWAE's K and the batch B vary independently over sizes
that are not, in a covering grid (every value of every size appears) and in property-based tests
(hypothesis) against the reference, each checked with the bounds of elbolab.model.accuracy.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elbolab.measure.opening import check_case
from elbolab.model.backend import discover
from elbolab.model.case import Case
from elbolab.model.workloads import WORKLOADS

BACKENDS = discover()
# torch.compile compiles anew for every shape: one odd case for it, in its own test
FAST = [n for n in BACKENDS if n != "torch-compile"]

# (B, D, L, K, H): every B in {1, 7, 1000}, D in {1, 7, 783}, L in {1, 5, 33}, K in {1, 3} appears
GRID = [
    (1, 1, 1, 1, 1),
    (7, 7, 5, 3, 3),
    (1000, 783, 33, 3, 17),
    (7, 783, 1, 1, 33),
    (1, 7, 33, 3, 5),
    (1000, 1, 5, 1, 7),
    (1000, 7, 1, 3, 9),
    (7, 1, 33, 1, 1),
]


def _case(backend, workload, dtype, b, d, lat, k, h, variant="eps=given"):
    return Case(workload, backend, "cpu", dtype, b, d, lat, h, k, variant=variant)


def _verify_or_skip(name: str, case: Case):
    backend = BACKENDS[name]
    reason = backend.skip_reason(case)
    if reason:
        pytest.skip(reason)
    return check_case(backend, case)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("name", FAST)
def test_every_backend_is_correct_on_the_odd_size_grid(name, workload, dtype):
    if workload not in BACKENDS[name].workloads:
        pytest.skip(f"{name} does not implement {workload}")
    failures = []
    for b, d, lat, k, h in GRID:
        if workload == "vae_step" and b == 1000 and d == 783:
            b = 64  # a 783x17 VAE at batch 1000 adds minutes and no tail the smaller one lacks
        for variant in WORKLOADS[workload].variants:
            case = _case(name, workload, dtype, b, d, lat, k, h, variant)
            check = _verify_or_skip(name, case)
            if not check.ok:
                failures.append(f"{case.label()}: {check.detail}")
    assert not failures, "\n".join(failures)


def test_torch_compile_on_one_odd_size():
    check = _verify_or_skip("torch-compile", _case("torch-compile", "elbo_grad", "float32", 7, 783, 5, 3, 3))
    assert check.ok, check.detail


sizes = st.tuples(
    st.integers(1, 300),  # B
    st.integers(1, 300),  # D
    st.integers(1, 40),  # L
    st.integers(1, 5),  # K
    st.integers(1, 40),  # H
)


@pytest.mark.parametrize("name", [n for n in ("numpy", "numba", "rust") if n in BACKENDS])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    size=sizes,
    workload=st.sampled_from(list(WORKLOADS)),
    dtype=st.sampled_from(["float64", "float32"]),
    sampled=st.booleans(),
)
def test_property_any_size_matches_the_reference(name, size, workload, dtype, sampled):
    b, d, lat, k, h = size
    variant = "eps=sampled" if sampled and "eps=sampled" in WORKLOADS[workload].variants else "eps=given"
    check = _verify_or_skip(name, _case(name, workload, dtype, b, d, lat, k, h, variant))
    assert check.ok, check.detail
