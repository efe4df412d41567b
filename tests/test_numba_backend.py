"""The Numba backends (serial and parallel) agree with the float64 reference."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from elbolab.measure.opening import check_case
from elbolab.model.backend import _load
from elbolab.model.case import Case
from elbolab.model.workloads import VAE_PARAMS, WORKLOADS, iwae_reference

numba = pytest.importorskip("numba")
import backends.numba as bn  # noqa: E402

CASES = [(w, v) for w in ("elbo", "elbo_grad", "iwae", "vae_step") for v in WORKLOADS[w].variants]
BATCHES = (1, 7, 128)  # 7: not a multiple of any vector width
DTYPES = ("float64", "float32")
TWO_THREADS = min(2, numba.config.NUMBA_NUM_THREADS)


def _assert_ok(backend, case):
    result = check_case(backend, case)
    assert result.ok, f"{case.label()}: {result.detail}"


def _run(backend, case, inputs=None):
    inputs = WORKLOADS[case.workload].make_inputs(case) if inputs is None else inputs
    prepared = backend.prepare(case, inputs)
    prepared.call()
    return prepared


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("workload", "variant"), CASES)
def test_numba_agrees_with_reference(workload, variant, dtype, batch):
    _assert_ok(bn.backend, Case(workload, "numba", dtype=dtype, batch=batch, variant=variant))


@pytest.mark.parametrize("threads", sorted({1, TWO_THREADS}))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("workload", "variant"), CASES)
def test_numba_parallel_agrees_with_reference(workload, variant, dtype, batch, threads):
    case = Case(workload, "numba-parallel", dtype=dtype, batch=batch, variant=variant, threads=threads)
    _assert_ok(bn.parallel_backend, case)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("workload", ["elbo_grad", "iwae"])
def test_parallel_gives_the_serial_bits(workload, dtype):
    """Per-row partial sums, summed serially in row order: thread count cannot change the result."""
    case = Case(workload, "numba", dtype=dtype, batch=37)
    serial = _run(bn.backend, case).outputs()
    parallel = _run(bn.parallel_backend, Case(workload, "numba-parallel", dtype=dtype, batch=37,
                                              threads=TWO_THREADS)).outputs()  # fmt: skip
    for name, value in serial.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(parallel[name]), err_msg=name)


def test_serial_sampled_eps_reproducible_from_seed():
    case = Case("elbo", "numba", batch=16, variant="eps=sampled", seed=3)
    first = np.array(_run(bn.backend, case).outputs()["z"])
    second = np.array(_run(bn.backend, case).outputs()["z"])
    np.testing.assert_array_equal(first, second)
    other = np.array(_run(bn.backend, Case("elbo", "numba", batch=16, variant="eps=sampled", seed=4))
                     .outputs()["z"])  # fmt: skip
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("backend", [bn.backend, bn.parallel_backend], ids=lambda b: b.name)
def test_iwae_is_stable_where_a_naive_exp_overflows(backend):
    """log w of order -1e5 (exp underflows to 0 in float64) and spread over thousands: still exact."""
    case = Case("iwae", backend.name, batch=9)
    inputs = WORKLOADS["iwae"].make_inputs(case)
    inputs["x"] = inputs["x"] * 50.0
    inputs["eps"] = inputs["eps"] * 10.0
    want = float(iwae_reference(inputs, case)["iwae"].value)
    assert want < -1e4 and np.isfinite(want)
    got = float(_run(backend, case, {k: v.copy() for k, v in inputs.items()}).outputs()["iwae"])
    assert abs(got - want) <= 1e-9 * abs(want)


def test_vae_step_leaves_inputs_unchanged():
    case = Case("vae_step", "numba", batch=5)
    inputs = WORKLOADS["vae_step"].make_inputs(case)
    originals = {k: v.copy() for k, v in inputs.items()}
    prepared = _run(bn.backend, case, inputs)
    first = {k: np.array(v) for k, v in prepared.outputs().items()}
    prepared.call()
    second = prepared.outputs()
    for name in VAE_PARAMS:
        np.testing.assert_array_equal(first[f"new_{name}"], second[f"new_{name}"])
    for k, v in originals.items():
        np.testing.assert_array_equal(inputs[k], v)


def test_threads_set_clamped_and_recorded():
    limit = numba.config.NUMBA_NUM_THREADS
    prepared = _run(bn.parallel_backend, Case("elbo", "numba-parallel", batch=4, threads=limit + 7))
    assert prepared.notes["numba_threads"] == limit == numba.get_num_threads()
    assert prepared.notes["numba_threads_requested"] == limit + 7
    assert "threads_clamped" in prepared.notes
    prepared = _run(bn.parallel_backend, Case("elbo", "numba-parallel", batch=4, threads=1))
    assert prepared.notes["numba_threads"] == 1 == numba.get_num_threads()
    assert "threads_clamped" not in prepared.notes


def test_registered_entry_points_load():
    assert _load("backends.numba:backend").name == "numba"
    assert _load("backends.numba:parallel_backend").name == "numba-parallel"


def test_unavailable_reason_when_numba_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # makes `import numba` raise ImportError
    for backend in (bn.backend, bn.parallel_backend):
        reason = backend.unavailable_reason()
        assert isinstance(reason, str) and reason.startswith("numba not installed")
        assert backend.skip_reason(Case("elbo", backend.name)) == reason


def test_available_and_versioned():
    assert bn.backend.unavailable_reason() is None
    assert bn.parallel_backend.versions()["numba"] == numba.__version__
    assert bn.backend.skip_reason(Case("elbo", "numba", device="cuda")) == "numba has no device cuda"
