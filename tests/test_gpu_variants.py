"""The CUDA variants (torch-triton, torch-cudagraph): the Triton kernel checked on the CPU in Triton's
interpreter everywhere; both variants checked on a GPU where there is one (skipped with the reason
elsewhere)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from elbolab.measure.opening import check_case
from elbolab.model.backend import discover
from elbolab.model.case import Case

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = discover()


@pytest.mark.slow
def test_the_fused_triton_kernel_is_correct_in_the_interpreter():
    if BACKENDS["torch-triton"].unavailable_reason():
        pytest.skip(BACKENDS["torch-triton"].unavailable_reason())
    proc = subprocess.run([sys.executable, "-m", "tests.triton_interpret_check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 12
    for r in results:
        assert r["ok"] and not r["less_accurate"], r


def test_without_a_gpu_the_variants_say_why():
    for name in ("torch-triton", "torch-cudagraph"):
        reason = BACKENDS[name].skip_reason(Case("elbo", name, "cuda", "float32"))
        import torch

        if not torch.cuda.is_available():
            assert reason and "CUDA" in reason
        assert "has no device cpu" in BACKENDS[name].skip_reason(Case("elbo", name, "cpu", "float32"))


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA device here")
@pytest.mark.parametrize("name", ["torch-triton", "torch-cudagraph"])
@pytest.mark.parametrize("workload", ["elbo", "elbo_grad"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", ["eps=given", "eps=sampled"])
@pytest.mark.parametrize("batch", [1, 128, 8192])
def test_cuda_variants_agree_with_the_reference(name, workload, dtype, variant, batch):
    check = check_case(BACKENDS[name], Case(workload, name, "cuda", dtype, batch, variant=variant))
    assert check.ok and not check.less_accurate, check.detail
