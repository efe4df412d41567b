"""The CUDA side: the fused Triton kernel (torch-triton) and its CUDA-graph replay (torch-cudagraph),
torch.compile's fullgraph, the GPU limits probe, the SM-clock warning and the report's note on a
CUDA row without a GPU limit.

Everywhere: the kernel in Triton's interpreter (the variants' own call on CPU tensors), compiled
for Hopper (sm_90) without a GPU to read its IR, one launch and no ATen op per call, the
refusals. On a GPU (marked gpu, skipped with the reason elsewhere): both variants against the
reference, one kernel per call from the profiler, bitwise-repeatable calls."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from elbolab.measure.opening import check_case
from elbolab.model.backend import discover
from elbolab.model.case import Case
from elbolab.model.workloads import WORKLOADS

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
from backends.torch import fused, gpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = discover()
ELBO_CASES = [(w, v) for w in ("elbo", "elbo_grad") for v in ("eps=given", "eps=sampled")]


def _cuda() -> bool:
    return torch.cuda.is_available()


# ------------------------------------------------------------------------ the kernel, on the CPU


@pytest.mark.slow
def test_the_fused_triton_kernel_is_correct_in_the_interpreter():
    proc = subprocess.run([sys.executable, "-m", "tests.triton_interpret_check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["interpreted"], "the check ran the compiled kernel, not the interpreter"
    cases = report["cases"]
    assert len(cases) == 2 * 2 * 2 * 5
    assert any(c["programs"] > 4 and "block_p=4" in c["case"] for c in cases)  # the final loop ran
    assert any("D=2500" in c["case"] for c in cases)  # the loop over D ran (D > 1024)
    for c in cases:
        assert c["ok"] and not c["less_accurate"], c
        sampled = "eps=sampled" in c["case"]
        # two calls: the ticket counter is back at 0, the eps seed advanced once a call
        assert c["state_after"] == [0, c["seed"] + (2 if sampled else 0)], c
        assert sampled or c["same_on_repeat"], c
    assert report["row_offsets"]["ok"], report["row_offsets"]
    # TRITON_INTERPRET in the environment: every CUDA variant that runs Triton refuses the case
    for name in ("torch-triton", "torch-cudagraph", "torch-compile"):
        assert report["refusals"][name] == gpu.INTERPRETER_REASON, (name, report["refusals"])


# (dtype of the arrays, GRAD, SAMPLE, batch) as the kernel is specialised for the cases: every
# specialisation at B=8192, and the tilings of B=1 (one row, one program) and B=128
SPECIALISATIONS = [(dt, g, s, 8192) for dt in ("fp32", "fp64") for g in (False, True) for s in (False, True)]
SPECIALISATIONS += [(dt, True, True, b) for dt in ("fp32", "fp64") for b in (1, 128)]


def _compile_for_hopper(dt: str, grad: bool, sample: bool, batch: int = 8192):
    """The kernel compiled by Triton for sm_90 as the D=784, L=20 cases launch it (no GPU needed)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    arrays = ("x_ptr", "xr_ptr", "mu_ptr", "lv_ptr", "eps_ptr", "z_ptr", "gxr_ptr", "gmu_ptr", "glv_ptr")
    signature = {a: f"*{dt}" for a in arrays}
    signature.update(part_ptr="*fp64", state_ptr="*i64", out_ptr="*fp64", c_ptr=f"*{dt}", B="i32", D="i32",
                     L="i32")  # fmt: skip
    shape = fused.Shape.of(batch, 784, 20)
    constexprs = dict(GRAD=grad, SAMPLE=sample, ROWS=shape.rows, BLOCK_D=shape.block_d, BLOCK_L=shape.block_l,
                      BLOCK_P=shape.block_p)  # fmt: skip
    signature.update({k: "constexpr" for k in constexprs})
    source = ASTSource(fn=fused.elbo_fused, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32))


@pytest.mark.slow
@pytest.mark.parametrize(("dt", "grad", "sample", "batch"), SPECIALISATIONS)
def test_the_kernel_compiles_for_hopper_with_64_bit_offsets_and_one_ticket(dt, grad, sample, batch):
    if fused.interpreted():
        pytest.skip("TRITON_INTERPRET is set in this process: triton.jit made an interpreted function")
    kernel = _compile_for_hopper(dt, grad, sample, batch)
    ttir, ptx = kernel.asm["ttir"], kernel.asm["ptx"]
    assert kernel.asm["cubin"], "ptxas produced no machine code"
    # every pointer arithmetic on a block of addresses (the [B,D] and [B,L] arrays, the partials)
    # is 64-bit: row * D passes 2^31 at B = 2.74M
    offsets = re.findall(r"tt\.addptr [^:]+: tensor<[^>]*!tt\.ptr<[^>]*>>, tensor<[0-9x]+x(i\d+)>", ttir)
    assert offsets and set(offsets) == {"i64"}, sorted(set(offsets))
    # the final reduction's ticket: one acquire-release atomic at GPU scope, right after a barrier
    # (so every thread's share of the program's partial sums is ordered before the ticket)
    lines = [line.strip() for line in ttir.splitlines() if line.strip()]
    tickets = [i for i, line in enumerate(lines) if re.search(r"tt\.atomic_rmw add, acq_rel, gpu", line)]
    assert len(tickets) == 1 and re.search(r"\b(ttg|gpu)\.barrier\b", lines[tickets[0] - 1]), lines[
        tickets[0] - 1
    ]
    atomics = [line for line in ptx.splitlines() if "atom." in line]
    assert len(atomics) == 1 and "acq_rel" in atomics[0] and ".gpu" in atomics[0], atomics
    if dt == "fp32":
        # the only 64-bit loads of a float32 kernel are the partial sums, read from L2 (.cg) never
        # from a stale L1 line, and the eps seed
        plain = [
            line for line in ptx.splitlines() if "ld.global" in line and ".b64" in line and ".cg" not in line
        ]
        assert len(plain) == (1 if sample else 0), plain


class _Launches:
    """Stands in for the jitted kernel: records each launch instead of running it."""

    def __init__(self):
        self.grids: list[tuple] = []

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.grids.append(grid)

        return launch


@pytest.mark.parametrize(("workload", "variant"), ELBO_CASES)
def test_a_call_is_one_kernel_launch_and_no_aten_op(monkeypatch, workload, variant):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    launches = _Launches()
    monkeypatch.setattr(fused, "elbo_fused", launches)
    case = Case(workload, "torch-triton", "cpu", "float32", 300, variant=variant)
    t = {k: torch.from_numpy(v) for k, v in WORKLOADS[workload].make_inputs(case).items()}
    call, _, notes = gpu.fused_call(torch, case, t)
    ops = Ops()
    with ops:
        for _ in range(3):
            call()
    assert ops.ops == [], "ATen ops in the call: each is another launch and ~7 us of host time on a GPU"
    assert launches.grids == [(fused.Shape.of(300, 784, 20).programs,)] * 3
    assert notes["launches_per_call"] == 1


def test_the_profiler_counts_what_a_call_dispatches():
    """count_launches on the eager CPU path: the ops kernels.elbo_terms calls (the CUDA path runs the
    same ops, one kernel each or more)."""
    case = Case("elbo", "torch", "cpu", "float32", 64)
    prepared = BACKENDS["torch"].prepare(case, WORKLOADS["elbo"].make_inputs(case))
    counts = gpu.count_launches(prepared, calls=5)
    assert counts["aten_ops"] >= 10, counts
    assert counts["aten_op_names"]["aten::sum"] == 2, counts  # recon and kl: one reduction each
    assert "cuda_kernels" not in counts  # nothing ran on a device


def test_without_a_gpu_the_variants_say_why():
    for name in ("torch-triton", "torch-cudagraph"):
        reason = BACKENDS[name].skip_reason(Case("elbo", name, "cuda", "float32"))
        if not _cuda():
            assert reason and "CUDA" in reason
        assert "has no device cpu" in BACKENDS[name].skip_reason(Case("elbo", name, "cpu", "float32"))


def test_with_a_gpu_and_no_interpreter_nothing_is_refused(monkeypatch):
    if os.environ.get("TRITON_INTERPRET"):
        pytest.skip("TRITON_INTERPRET is set in this process")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("torch-triton", "torch-cudagraph"):
        assert BACKENDS[name].skip_reason(Case("elbo", name, "cuda", "float32")) is None


# ------------------------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_a_graph_break_under_torch_compile_is_a_recorded_failure(monkeypatch):
    import backends.torch as bt
    from backends.torch import kernels

    reason = bt.compiled_backend.unavailable_reason() or bt.compiled_backend.device_unavailable_reason("cpu")
    if reason:
        pytest.skip(reason)
    plain = kernels.elbo_terms

    def with_a_break(*args):
        torch._dynamo.graph_break()  # what an unsupported call inside the kernel amounts to
        return plain(*args)

    monkeypatch.setattr(kernels, "elbo_terms", with_a_break)
    with pytest.raises(
        RuntimeError,
        match=r"failed: the first call raised RuntimeError: torch\.compile\(fullgraph=True\) failed",
    ):
        check_case(bt.compiled_backend, Case("elbo", "torch-compile", "cpu", "float32", 7))


# -------------------------------------------------------------------- limits, health, the report


def test_a_gpu_probe_that_fails_is_recorded_not_raised(monkeypatch):
    from elbolab.measure import probes

    monkeypatch.setattr(probes.os.path, "exists", lambda path: path in probes.GPU_DRIVER_NODES)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "device", lambda d: _Nothing())
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)

    def out_of_memory(torch_, device, quick):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(probes, "_probe_gpu", out_of_memory)
    (entry,) = probes.measure_gpu_limits(quick=True)
    assert entry["device"] == "cuda:0" and "out of memory" in entry["error"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (entry,) = probes.measure_gpu_limits(quick=True)
    assert "is_available() is False" in entry["error"]


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_sm_clock_warning_needs_load():
    from elbolab.measure.health import sm_clock_warning

    gpu_ = {"name": "H100", "clocks.sm": "345", "clocks.max.sm": "1980", "utilization.gpu": "0"}
    assert sm_clock_warning(gpu_) is None  # idle: every GPU parks its clock
    busy = dict(gpu_, **{"utilization.gpu": "97"})
    assert "345 MHz of 1980 while 97% busy" in sm_clock_warning(busy)
    assert sm_clock_warning(dict(busy, **{"clocks.sm": "1900"})) is None  # busy at full clock
    assert sm_clock_warning(dict(busy, **{"utilization.gpu": "[N/A]"})) is None
    assert sm_clock_warning({"name": "old"}) is None


def test_a_cuda_row_without_a_gpu_limit_says_so():
    from dataclasses import replace

    from elbolab.analyse.table import measurement_table
    from elbolab.report.tables import NO_GPU_LIMIT, display_table
    from tests.builders import make_run, ok

    ms = [ok(Case("elbo", "numpy", "cpu", "float32", 8192), [9e6] * 9),
          ok(Case("elbo", "torch-triton", "cuda", "float32", 8192), [2e4] * 9),
          _skipped(Case("elbo", "torch-cudagraph", "cuda", "float32", 8192))]  # fmt: skip
    limits = {"memory_bandwidth_bytes_per_s": 5e10}
    notes = display_table(measurement_table(replace(make_run(ms), limits=limits)))["reason / note"].tolist()
    assert NO_GPU_LIMIT not in notes[0]  # a CPU row
    assert NO_GPU_LIMIT in notes[1]  # timed on CUDA, nothing to hold it to
    assert NO_GPU_LIMIT not in notes[2]  # skipped: no time to bound
    gpus = [{"device": "cuda:0", "hbm_read_bytes_per_s": 3e12, "flops_per_s": {"float32": 5e13}}]
    with_gpu = replace(make_run(ms), limits=dict(limits, gpus=gpus))
    table = display_table(measurement_table(with_gpu))
    assert NO_GPU_LIMIT not in table["reason / note"][1] and "of hbm" in table["GB/s (share)"][1]


def _skipped(case: Case):
    from elbolab.model.measurement import not_measured

    return not_measured(case, "skipped", "no CUDA device")


# ------------------------------------------------------------------------------------ on a GPU


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


def _prepared(name: str, case: Case):
    return BACKENDS[name].prepare(case, WORKLOADS[case.workload].make_inputs(case))


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA device here")
@pytest.mark.parametrize("name", ["torch-triton", "torch-cudagraph"])
@pytest.mark.parametrize(("workload", "variant"), ELBO_CASES)
def test_one_kernel_per_call_on_the_gpu(name, workload, variant):
    counts = gpu.count_launches(
        _prepared(name, Case(workload, name, "cuda", "float32", 8192, variant=variant))
    )
    assert counts["cuda_kernels"] == 1 and counts["aten_ops"] == 0, counts


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA device here")
def test_calls_are_bitwise_repeatable_on_the_gpu():
    """The last program's reduction reads every partial after its ticket: a missing fence or a
    stale read would show as a call whose sums differ from the others."""
    case = Case("elbo", "torch-triton", "cuda", "float32", 8192)  # elbo: outputs() copies only z back
    runs = {}
    for name in ("torch-triton", "torch-cudagraph"):
        prepared = _prepared(name, case)
        sums = []
        for _ in range(200):
            prepared.call()
            sums.append(tuple(prepared.outputs()[k].item() for k in ("recon", "kl", "elbo")))
        runs[name] = set(sums)
        assert len(runs[name]) == 1, f"{name}: {len(runs[name])} different results in 200 calls"
    assert runs["torch-triton"] == runs["torch-cudagraph"]


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA device here")
@pytest.mark.parametrize("name", ["torch", "torch-compile", "torch-triton", "torch-cudagraph"])
@pytest.mark.parametrize("workload", ["elbo", "elbo_grad"])
def test_a_cuda_case_reads_the_inputs_the_harness_loads(name, workload):
    """The harness rotates the inputs between calls (Prepared.load on CUDA: a copy into the device
    tensors the call, or the captured graph, reads): a call after loading the second input set
    answers for that set, and outputs() read after the inputs change again still does."""
    from elbolab.measure.opening import open_case
    from elbolab.model.workloads import check_outputs, input_set

    case = Case(workload, name, "cuda", "float32", 128)
    opened = open_case(BACKENDS[name], case, timer=None)
    assert not hasattr(opened, "status"), getattr(opened, "reason", None)
    try:
        got = opened.checked_call(1, 1)["outputs"]
    finally:
        opened.close()
    check = check_outputs(WORKLOADS[workload], case, input_set(case, 1), got)
    assert check.ok, check.detail
