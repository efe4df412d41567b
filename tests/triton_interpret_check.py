"""Run the fused Triton ELBO kernel in Triton's interpreter on the CPU and check it like a backend
(python -m tests.triton_interpret_check; used by tests/test_gpu_variants.py). TRITON_INTERPRET must be
set before triton is imported, hence a process of its own.

It runs the CUDA variants' own call (backends.torch.gpu.fused_call) on CPU tensors, so what is
checked is what the GPU launches: every workload, dtype and eps variant at sizes that take each
path of the kernel (a masked tail of rows and columns, D > 1024 so the loop over D runs, several
steps of the final reduction, near-zero logvar where a cancelling e^x - 1 fails), two calls in a
row (the ticket counter must be back at 0, the seed advanced), and the 64-bit row offsets with
row * D past 2^31. It prints one JSON object on its last line."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace

os.environ["TRITON_INTERPRET"] = "1"

# after the variable, which triton.jit reads when it decorates; at module level, because the
# interpreter resolves a kernel's names in its module's globals
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from backends.torch import fused  # noqa: E402

# (B, D, L, logvar scale, rows of the final reduction's step or None): 37 rows leave a masked tail
# of the last program; D = 2500 runs the loop over D three times (1024-column chunks, the last
# masked); B = 300 at D = 40 is 10 programs, added 4 at a time in the final reduction.
SIZES = ((37, 783, 5, 1.0, None), (1, 1, 1, 1.0, None), (64, 17, 33, 1e-6, None), (5, 2500, 20, 1.0, None),
         (300, 40, 20, 1.0, 4))  # fmt: skip


def _check_case(torch, workload: str, dtype: str, variant: str, size) -> dict:
    from backends.torch import gpu
    from elbolab.model.case import Case
    from elbolab.model.workloads import WORKLOADS, check_outputs

    b, d, lat, scale, block_p = size
    case = Case(workload, "torch-triton", "cpu", dtype, b, d, lat, variant=variant)
    inputs = WORKLOADS[workload].make_inputs(case)
    inputs["logvar"] = inputs["logvar"] * scale  # 1e-6: near zero KL, where cancelling forms fail
    t = {k: torch.from_numpy(v.copy()) for k, v in inputs.items()}
    shape = fused.Shape.of(b, d, lat)
    if block_p:
        shape = replace(shape, block_p=block_p)
    call, outputs, _ = gpu.fused_call(torch, case, t, shape)
    call()
    got = outputs()
    call()  # a second call: same results with eps given, a fresh draw with eps sampled
    again = outputs()
    state = call.buffers.state.tolist()
    check = check_outputs(WORKLOADS[workload], case, inputs, got, again.get("eps"))
    repeat = {k: bool((got[k] == again[k]).all()) for k in got if variant == "eps=given"}
    return {"case": case.label() + f" logvar x{scale:g}" + (f" block_p={block_p}" if block_p else ""),
            "programs": shape.programs, "ok": check.ok, "less_accurate": check.less_accurate,
            "detail": check.detail, "same_on_repeat": all(repeat.values()), "state_after": state,
            "seed": case.seed}  # fmt: skip


@triton.jit
def _probe(out_ptr, first, n, COUNT: tl.constexpr):
    rows = first + tl.arange(0, COUNT)
    tl.store(out_ptr + tl.arange(0, COUNT), fused._row_offsets(rows, n))


def _row_offsets_probe(torch) -> dict:
    """fused._row_offsets for rows near 2.9M of 784 columns (row * D up to 2.3e9 > 2^31)."""
    first, n, count = 2_900_000, 784, 8
    out = torch.zeros(count, dtype=torch.int64)
    _probe[(1,)](out, first, n, COUNT=count)
    want = [(first + i) * n for i in range(count)]
    return {"got": out.tolist(), "want": want, "ok": out.tolist() == want}


def _refusals(torch) -> dict:
    """What the CUDA variants say here, in an interpreting process, if a GPU were present."""
    import torch.utils._triton

    from elbolab.model.backend import discover
    from elbolab.model.case import Case

    torch.cuda.is_available = lambda: True  # as on a GPU machine: only the interpreter is left to refuse
    torch.utils._triton.has_triton = lambda: True
    backends = discover()
    return {name: backends[name].skip_reason(Case("elbo", name, "cuda", "float32"))
            for name in ("torch-triton", "torch-cudagraph", "torch-compile")}  # fmt: skip


def main() -> int:
    import torch

    results = [
        _check_case(torch, workload, dtype, variant, size)
        for workload in ("elbo", "elbo_grad")
        for dtype in ("float64", "float32")
        for variant in ("eps=given", "eps=sampled")
        for size in SIZES
    ]
    report = {"interpreted": fused.interpreted(), "cases": results, "row_offsets": _row_offsets_probe(torch),
              "refusals": _refusals(torch)}  # fmt: skip
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
