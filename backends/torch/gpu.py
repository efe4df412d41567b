"""Two CUDA variants that aim at the device's own limits, beside eager PyTorch and torch.compile:

torch-triton     elbo and elbo_grad as one fused Triton kernel (backends/torch/fused.py): one pass
                 over x and x_recon, the latents in the same program, row partial sums added by one
                 torch.sum. What the H200's HBM can stream is the floor it is held to.
torch-cudagraph  the whole call (eager PyTorch ops, gradients written directly, eps drawn on the
                 device) captured once as a CUDA graph and replayed: one launch per call instead of
                 ~15, which is what dominates at batch 128 (~100 us of launches for ~1 us of work).

Both run on CUDA only; on a machine without a GPU they are skipped with the reason. The Triton
kernel is also checked on the CPU in Triton's interpreter (tests/test_gpu_variants.py).
"""

from __future__ import annotations

import numpy as np

from backends.torch import _device_unavailable_reason, _events
from elbolab.model.backend import Prepared
from elbolab.model.case import Case
from elbolab.model.workloads import WORKLOADS


def triton_unavailable() -> str | None:
    try:
        import torch  # noqa: F401
        import triton  # noqa: F401
    except ImportError as exc:
        return f"Triton is not installed ({exc})"
    return None


def cuda_unavailable(device: str) -> str | None:
    if device != "cuda":
        return f"{device}: this variant runs on CUDA only"
    return _device_unavailable_reason(device)


def _tensors(case: Case, inputs: dict):
    import torch

    device = torch.device(case.device)
    torch.cuda.reset_peak_memory_stats(device)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in inputs.items()}
    peak = lambda: int(torch.cuda.max_memory_allocated(device))  # noqa: E731
    return torch, device, t, peak


def _np(t) -> np.ndarray:
    return np.array(t.detach().cpu().numpy(), copy=True)


def prepare_triton(case: Case, inputs: dict) -> Prepared:
    from backends.torch import fused

    torch, device, t, peak = _tensors(case, inputs)
    x, x_recon, mu, logvar = (t[k] for k in ("x", "x_recon", "mu", "logvar"))
    b = x.shape[0]
    grads = None
    if WORKLOADS[case.workload].has_gradients:
        grads = (torch.empty_like(x), torch.empty_like(mu), torch.empty_like(logvar))
    z = torch.empty_like(mu)
    rows = (
        torch.empty(b, dtype=torch.float64, device=device),
        torch.empty(b, dtype=torch.float64, device=device),
    )
    consts = torch.tensor(fused.constants(b), dtype=x.dtype, device=device)
    sampled = case.variant == "eps=sampled"
    eps = torch.empty_like(mu) if sampled else t["eps"]
    gen = torch.Generator(device=device)
    gen.manual_seed(case.seed)
    out: dict = {}

    def call():
        if sampled:
            torch.randn(mu.shape, generator=gen, device=device, dtype=mu.dtype, out=eps)
        out["recon"], out["kl"] = fused.launch(x, x_recon, mu, logvar, eps, z, grads, *rows, consts)

    def outputs():
        res = {
            "z": _np(z),
            "recon": _np(out["recon"]),
            "kl": _np(out["kl"]),
            "elbo": _np(out["recon"] - out["kl"]),
        }
        if sampled:
            res["eps"] = _np(eps)
        if grads is not None:
            res.update(grad_x_recon=_np(grads[0]), grad_mu=_np(grads[1]), grad_logvar=_np(grads[2]))
        return res

    notes = {"kernel": "one fused Triton kernel (rows in blocks) + torch.sum of the row partials in float64",
             "sync": "torch.cuda.synchronize before the clock stops"}  # fmt: skip
    return Prepared(call=call, outputs=outputs, sync=torch.cuda.synchronize, device_peak_bytes=peak,
                    device_events=_events(torch, device), notes=notes)  # fmt: skip


def _elbo_body(torch, t: dict, out: dict, grads: bool, sampled: bool):
    """The eager ELBO writing into the static tensors of `out` (what the graph captures)."""
    x, x_recon, mu, logvar = (t[k] for k in ("x", "x_recon", "mu", "logvar"))
    b = x.shape[0]

    def body():
        if sampled:
            torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, out=out["eps"])
        eps = out["eps"] if sampled else t["eps"]
        torch.addcmul(mu, torch.exp(0.5 * logvar), eps, out=out["z"])
        diff = x - x_recon
        out["recon"].copy_(-torch.sum(diff * diff) / b)
        em1 = torch.expm1(logvar)
        out["kl"].copy_(0.5 * torch.sum(mu * mu + (em1 - logvar)) / b)
        if grads:
            torch.mul(diff, 2.0 / b, out=out["grad_x_recon"])
            torch.mul(mu, -1.0 / b, out=out["grad_mu"])
            torch.mul(em1, -0.5 / b, out=out["grad_logvar"])

    return body


def prepare_cudagraph(case: Case, inputs: dict) -> Prepared:
    torch, device, t, peak = _tensors(case, inputs)
    grads = WORKLOADS[case.workload].has_gradients
    sampled = case.variant == "eps=sampled"
    mu = t["mu"]
    out = {"z": torch.empty_like(mu), "recon": torch.zeros((), dtype=mu.dtype, device=device),
           "kl": torch.zeros((), dtype=mu.dtype, device=device), "eps": torch.empty_like(mu)}  # fmt: skip
    if grads:
        out.update(grad_x_recon=torch.empty_like(t["x"]), grad_mu=torch.empty_like(mu),
                   grad_logvar=torch.empty_like(t["logvar"]))  # fmt: skip
    torch.cuda.manual_seed(case.seed)  # the graph replays the default generator's draws (graph-safe RNG)
    body = _elbo_body(torch, t, out, grads, sampled)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm up outside the capture (allocator, kernels, cuBLAS handles)
        for _ in range(3):
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()

    def outputs():
        res = {"z": _np(out["z"]), "recon": _np(out["recon"]), "kl": _np(out["kl"])}
        res["elbo"] = res["recon"] - res["kl"]
        if sampled:
            res["eps"] = _np(out["eps"])
        if grads:
            res.update({k: _np(out[k]) for k in ("grad_x_recon", "grad_mu", "grad_logvar")})
        return res

    notes = {"kernel": "the eager call captured once as a CUDA graph and replayed (one launch per call)",
             "rng": "the default CUDA generator, seeded with case.seed, replayed graph-safely",
             "sync": "torch.cuda.synchronize before the clock stops"}  # fmt: skip
    return Prepared(call=graph.replay, outputs=outputs, sync=torch.cuda.synchronize, device_peak_bytes=peak,
                    device_events=_events(torch, device), notes=notes)  # fmt: skip
