"""Two CUDA variants that aim at the device's own limits, beside eager PyTorch and torch.compile:

torch-triton     elbo and elbo_grad as one fused Triton kernel (backends/torch/fused.py): one pass
                 over x and x_recon, the latents and the final reduction in the same launch, eps
                 drawn in the kernel when sampled. One kernel launch and no ATen op per call: the
                 cost beside the data's own traffic is Triton's host-side launch.
torch-cudagraph  the same launch captured once as a CUDA graph and replayed: one graph launch
                 holding one kernel per call, without Triton's Python launcher in the loop.

Both run on CUDA only; on a machine without a GPU they are skipped with the reason, and so they are
where TRITON_INTERPRET makes Triton run kernels in its CPU interpreter (else a CUDA row would be
measured on the CPU). The call is built by `fused_call` from tensors on any device, so the tests run the very
same call in Triton's interpreter on the CPU (tests/triton_interpret_check.py). `count_launches`
counts what one call dispatches (ATen ops, and CUDA kernels from the profiler on a GPU).
"""

from __future__ import annotations

import numpy as np

from backends.torch import _device_unavailable_reason, _events, loader
from elbolab.model.backend import Prepared
from elbolab.model.case import Case
from elbolab.model.workloads import WORKLOADS

INTERPRETER_REASON = (
    "TRITON_INTERPRET is set: Triton would run the kernel in its interpreter on the CPU, not on the "
    "GPU (unset it to measure CUDA)"
)


def triton_unavailable() -> str | None:
    try:
        import torch  # noqa: F401
        import triton  # noqa: F401
    except ImportError as exc:
        return f"Triton is not installed ({exc})"
    return None


def interpreter_reason() -> str | None:
    """INTERPRETER_REASON where this process's Triton interprets kernels, else None. Asked of the
    kernel itself (triton.jit decides when it decorates), not of the variable's spelling."""
    from backends.torch import fused

    return INTERPRETER_REASON if fused.interpreted() else None


def cuda_unavailable(device: str) -> str | None:
    if device != "cuda":
        return f"{device}: this variant runs on CUDA only"
    return _device_unavailable_reason(device) or interpreter_reason()


def _tensors(case: Case, inputs: dict):
    import torch

    device = torch.device(case.device)
    torch.cuda.reset_peak_memory_stats(device)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in inputs.items()}
    peak = lambda: int(torch.cuda.max_memory_allocated(device))  # noqa: E731
    return torch, device, t, peak


def _np(t) -> np.ndarray:
    return np.array(t.detach().cpu().numpy(), copy=True)


def fused_call(torch, case: Case, t: dict, shape=None):
    """(call, outputs, notes) of the fused kernel on the tensors `t` (the case's inputs, on any
    device): every buffer allocated here, so a call only launches the kernel. `shape` overrides the
    tiling (the tests use it to make the final reduction loop)."""
    from backends.torch import fused

    x, x_recon, mu, logvar = (t[k] for k in ("x", "x_recon", "mu", "logvar"))
    (b, d), lat = x.shape, mu.shape[1]
    sampled = case.variant == "eps=sampled"
    fused.check_sizes(b, d, lat, sampled)
    shape = shape or fused.Shape.of(b, d, lat)
    buf = fused.buffers(torch, shape, b, x.dtype, x.device, case.seed)
    z = torch.empty_like(mu)
    eps = torch.empty_like(mu) if sampled else t["eps"]
    grads = None
    if WORKLOADS[case.workload].has_gradients:
        grads = (torch.empty_like(x), torch.empty_like(mu), torch.empty_like(logvar))

    def call():
        fused.launch(x, x_recon, mu, logvar, eps, z, grads, sampled, shape, buf)

    call.buffers = buf  # the kernel's own state, for the tests (the counter is 0 between calls)

    def outputs():
        recon, kl, elbo = _np(buf.out)
        res = {"z": _np(z), "recon": np.array(recon), "kl": np.array(kl), "elbo": np.array(elbo)}
        if sampled:
            res["eps"] = _np(eps)
        if grads is not None:
            res.update(grad_x_recon=_np(grads[0]), grad_mu=_np(grads[1]), grad_logvar=_np(grads[2]))
        return res

    notes = {
        "kernel": f"one fused Triton kernel a call, final reduction included ({shape.programs} programs of "
        f"{shape.rows} rows; partial sums added in float64 by the last program, in program order)",
        "launches_per_call": 1,
    }
    if sampled:
        notes["eps"] = (
            "drawn in the kernel (tl.randn, Philox) keyed by a device-side seed from case.seed, advanced each call"
        )
    return call, outputs, notes


def prepare_triton(case: Case, inputs: dict) -> Prepared:
    torch, device, t, peak = _tensors(case, inputs)
    call, outputs, notes = fused_call(torch, case, t)
    notes["sync"] = "torch.cuda.synchronize before the clock stops"
    return Prepared(call=call, outputs=outputs, sync=torch.cuda.synchronize, device_peak_bytes=peak,
                    device_events=_events(torch, device), load=loader(torch, device, t), notes=notes)  # fmt: skip


def prepare_cudagraph(case: Case, inputs: dict) -> Prepared:
    torch, device, t, peak = _tensors(case, inputs)
    launch, outputs, notes = fused_call(torch, case, t)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # Triton compiles and loads the kernel here, outside the capture
        launch()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch()
    notes["kernel"] = "the fused Triton launch captured once as a CUDA graph and replayed: " + notes["kernel"]
    notes["sync"] = "torch.cuda.synchronize before the clock stops"
    # the graph reads the captured tensors' memory: load() copies new inputs into it
    return Prepared(call=graph.replay, outputs=outputs, sync=torch.cuda.synchronize, device_peak_bytes=peak,
                    device_events=_events(torch, device), load=loader(torch, device, t), notes=notes)  # fmt: skip


# ------------------------------------------------------------------------------ launch counts

LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                "cudaGraphLaunch", "cuGraphLaunch")  # fmt: skip


def count_launches(prepared: Prepared, calls: int = 20) -> dict:
    """What one call of a prepared case dispatches, from the PyTorch profiler over `calls` calls
    (after one more, so nothing is compiled or loaded inside): aten_ops, the ATen operators called
    from Python or the autograd engine (an op's own inner ops not counted again; on CUDA each such
    compute op is at least one kernel launch and ~5-10 us of host time), and on a GPU cuda_kernels,
    the kernels that ran on the device (those replayed from a CUDA graph included: CUPTI reports
    each kernel node). A profiler, not a dispatch mode: under a TorchDispatchMode Dynamo runs the
    eager code, so a compiled call would be counted as eager."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available() and prepared.sync is not None
    prepared.call()
    if prepared.sync:
        prepared.sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            prepared.call()
        if prepared.sync:
            prepared.sync()

    def top_level_aten(e) -> bool:
        parent = e.cpu_parent
        return e.name.startswith("aten::") and not (parent is not None and parent.name.startswith("aten::"))

    events = list(prof.events())
    aten = [e.name for e in events if e.device_type == torch.autograd.DeviceType.CPU and top_level_aten(e)]
    out: dict = {"calls": calls, "aten_ops": len(aten) / calls, "aten_op_names": _per_call(aten, calls)}
    if cuda:
        kernels = [e.name[:80] for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                   and not e.name.lower().startswith(("memcpy", "memset"))]  # fmt: skip
        out["cuda_kernels"] = len(kernels) / calls
        out["cuda_kernel_names"] = _per_call(kernels, calls)
        # the host's launch calls as the profiler saw them (runtime and, where recorded, driver API)
        launches = [e.name for e in events if e.name in LAUNCH_CALLS]
        out["launch_calls"] = len(launches) / calls
        out["launch_call_names"] = _per_call(launches, calls)
    return out


def _per_call(names: list[str], calls: int) -> dict[str, float]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return {k: v / calls for k, v in sorted(counts.items())}
