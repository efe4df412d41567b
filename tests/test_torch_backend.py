"""The PyTorch backends (eager and torch.compile, cpu and cuda) agree with the float64 reference."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from elbolab.measure.opening import check_case
from elbolab.model.backend import _load
from elbolab.model.case import Case
from elbolab.model.workloads import VAE_PARAMS, WORKLOADS

torch = pytest.importorskip("torch")
import backends.torch as bt  # noqa: E402

CASES = [(w, v) for w in ("elbo", "elbo_grad", "iwae", "vae_step") for v in WORKLOADS[w].variants]
BATCHES = (1, 7, 128)  # 7: not a multiple of any vector width
DTYPES = ("float64", "float32")

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"
)


def _assert_ok(backend, case):
    result = check_case(backend, case)
    assert result.ok, f"{case.label()}: {result.detail}"


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("workload", "variant"), CASES)
def test_torch_cpu_agrees_with_reference(workload, variant, dtype, batch):
    _assert_ok(bt.backend, Case(workload, "torch", dtype=dtype, batch=batch, variant=variant))


@pytest.mark.parametrize(("workload", "variant"), CASES)
def test_torch_cpu_two_threads(workload, variant):
    case = Case(workload, "torch", batch=33, threads=2, variant=variant)
    _assert_ok(bt.backend, case)


def test_threads_are_set_and_recorded():
    case = Case("elbo", "torch", batch=3, threads=1)
    prepared = bt.backend.prepare(case, WORKLOADS["elbo"].make_inputs(case))
    assert prepared.notes["torch_threads"] == 1 == torch.get_num_threads()
    assert prepared.sync is None and prepared.device_peak_bytes is None  # cpu: nothing to wait for


def test_tutorial_setting_is_a_reproducible_case():
    """float32, forward + backward (autograd), eps drawn inside the call: as the tutorial timed it."""
    case = Case("elbo_grad", "torch", dtype="float32", variant="eps=sampled", batch=128)
    _assert_ok(bt.backend, case)
    zs = []
    for _ in range(2):
        prepared = bt.backend.prepare(case, WORKLOADS[case.workload].make_inputs(case))
        prepared.call()
        zs.append(prepared.outputs()["z"])
        prepared.call()  # a second call draws new eps and must not accumulate gradients
        assert not np.array_equal(zs[-1], prepared.outputs()["z"])
        np.testing.assert_allclose(prepared.outputs()["grad_mu"], _expected_grad_mu(case), rtol=1e-6)
    np.testing.assert_array_equal(zs[0], zs[1])  # same seed, same draws


def _expected_grad_mu(case):
    mu = WORKLOADS[case.workload].make_inputs(case)["mu"].astype(np.float64)
    return -mu / case.batch


def test_vae_step_leaves_inputs_unchanged():
    case = Case("vae_step", "torch", batch=5)
    inputs = WORKLOADS["vae_step"].make_inputs(case)
    originals = {k: v.copy() for k, v in inputs.items()}
    prepared = bt.backend.prepare(case, inputs)
    prepared.call()
    first = {k: np.array(v) for k, v in prepared.outputs().items()}
    prepared.call()
    second = prepared.outputs()
    for name in VAE_PARAMS:  # identical work each call: no in-place update, no grad accumulation
        np.testing.assert_array_equal(first[f"new_{name}"], second[f"new_{name}"])
        np.testing.assert_array_equal(first[f"grad_{name}"], second[f"grad_{name}"])
    for k, v in originals.items():
        np.testing.assert_array_equal(inputs[k], v)


def test_registered_entry_points_load():
    assert _load("backends.torch:backend").name == "torch"
    assert _load("backends.torch:compiled_backend").name == "torch-compile"


def test_unavailable_reason_when_torch_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    for backend in (bt.backend, bt.compiled_backend):
        reason = backend.unavailable_reason()
        assert isinstance(reason, str) and reason.startswith("torch not installed")
        assert backend.skip_reason(Case("elbo", backend.name)) == reason


def test_cuda_unavailable_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = bt.backend.device_unavailable_reason("cuda")
    assert reason == "no CUDA device (torch.cuda.is_available() is False)"
    assert bt.backend.skip_reason(Case("elbo", "torch", device="cuda")) == reason
    assert bt.compiled_backend.device_unavailable_reason("cuda") == reason
    assert bt.backend.device_unavailable_reason("cpu") is None


def test_compile_without_cpp_compiler_says_why(monkeypatch):
    monkeypatch.setattr(bt.shutil, "which", lambda name: None)
    reason = bt.compiled_backend.device_unavailable_reason("cpu")
    assert isinstance(reason, str) and "C++ compiler" in reason


def test_versions():
    assert bt.backend.versions()["torch"] == torch.__version__


# ------------------------------------------------------------------------------ torch.compile


def _compile_skip_reason(device="cpu"):
    return bt.compiled_backend.unavailable_reason() or bt.compiled_backend.device_unavailable_reason(device)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("workload", "variant", "dtype"),
    [("elbo_grad", "eps=sampled", "float32"), ("vae_step", "eps=given", "float64")],
)
def test_torch_compile_cpu_agrees(workload, variant, dtype):
    reason = _compile_skip_reason()
    if reason:
        pytest.skip(reason)
    case = Case(workload, "torch-compile", dtype=dtype, batch=7, variant=variant)
    _assert_ok(bt.compiled_backend, case)


# ----------------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("workload", "variant"), CASES)
def test_torch_cuda_agrees_with_reference(workload, variant, dtype, batch):
    _assert_ok(bt.backend, Case(workload, "torch", device="cuda", dtype=dtype, batch=batch, variant=variant))


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_syncs_and_records_peak_memory():
    case = Case("elbo_grad", "torch", device="cuda", dtype="float32", variant="eps=sampled")
    prepared = bt.backend.prepare(case, WORKLOADS[case.workload].make_inputs(case))
    assert prepared.sync is not None
    assert "torch.cuda.synchronize" in prepared.notes["sync"] and prepared.device_events is not None
    prepared.call()
    prepared.sync()
    host_peak = WORKLOADS[case.workload].peak_bytes(case)  # what the case holds on the host
    assert prepared.device_peak_bytes() >= 2 * case.batch * case.input_dim * 4
    assert prepared.device_peak_bytes() <= host_peak + (64 << 20)
    outputs = prepared.outputs()
    assert all(isinstance(v, np.ndarray) for v in outputs.values())


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_torch_compile_cuda_agrees():
    reason = _compile_skip_reason("cuda")
    if reason:
        pytest.skip(reason)
    for workload, variant in (("elbo_grad", "eps=sampled"), ("vae_step", "eps=given")):
        case = Case(workload, "torch-compile", device="cuda", dtype="float32", batch=7, variant=variant)
        _assert_ok(bt.compiled_backend, case)
