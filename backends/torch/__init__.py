"""PyTorch, eager (`torch`) and through `torch.compile` (`torch-compile`), on cpu and cuda.

What one timed call does
- Inputs are moved to the device once, in `prepare` (torch.from_numpy(...).to(device)); the call
  touches only device tensors. `outputs()` copies results back to NumPy, outside the timed loop.
- elbo: forward only, under torch.inference_mode(); z goes into a preallocated buffer (out=).
- elbo_grad: autograd, as the tutorial timed it. x_recon, mu and logvar are leaf tensors with
  requires_grad; each call sets their .grad to None (optimizer.zero_grad's default), computes the
  elbo and calls elbo.backward(); the gradients are the leaves' .grad.
- eps=sampled: eps = torch.randn(..., generator=g, device=device) inside the call, with a
  torch.Generator on the case's device seeded from case.seed in prepare. Under torch-compile the draw
  stays eager, outside the compiled graph (a Generator argument would break the graph).
- iwae: forward only, torch.logsumexp over the K samples.
- vae_step: autograd through the MLP VAE (kernels.vae_loss), then new_p = p - lr*grad written into
  preallocated new_* tensors under no_grad, out of place, so the inputs never change and every call
  does identical work.

The tutorial's exact PyTorch setting (claim C2/C3: float32, forward + backward, eps drawn inside the
timed call) is the case  workload=elbo_grad, dtype=float32, variant=eps=sampled, backend=torch
(device cpu or cuda), e.g. Case("elbo_grad", "torch", dtype="float32", variant="eps=sampled").

Threads: torch.set_num_threads(case.threads) in prepare, recorded in notes (intra-op pool; the
inter-op pool is not used by these kernels).

CUDA: Prepared.sync is torch.cuda.synchronize, called by the timer before the clock stops (noted in
the results as notes["sync"]); peak device memory is torch.cuda.max_memory_allocated, its counter
reset in prepare before the inputs are moved, so the peak includes the inputs.

torch-compile: torch.compile(fn, fullgraph=True) in default mode, so a graph break is an error whose
message becomes the case's recorded reason ('failed'), never a silent fall back to eager code; the
same for Dynamo's recompile limit where this torch has the switch. Compilation happens in the first
call, which the harness times apart as first_call (tens of seconds on a 2-core CPU: Dynamo tracing,
Inductor C++ codegen and a g++ build; elbo_grad and vae_step also compile the backward graph). Dynamo is reset
and Inductor's on-disk FX-graph and AOT-autograd caches are switched off in prepare (one case per
worker process makes both harmless), so tracing and code generation are always in first_call. The
compiled-C++ cache in Inductor's cache directory is left on: with it warm, elbo's first_call is
~2 s on this 2-core machine; with an empty cache directory (first use ever, or
TORCHINDUCTOR_CACHE_DIR pointing at a fresh folder) it is ~20 s, mostly g++. notes["compile"] says so.
Where it cannot work the backend says why: no C++ compiler for cpu, no Triton/CUDA for cuda, or
TRITON_INTERPRET set (Inductor's CUDA kernels are Triton kernels: they would run on the CPU).
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np

from elbolab.model.backend import Backend, Prepared, bind
from elbolab.model.case import Case
from elbolab.model.workloads import VAE_PARAMS, WORKLOADS

SYNC_NOTE = (
    "host clock stopped after torch.cuda.synchronize; each sample also timed on the device "
    "between CUDA events (device_samples_ns)"
)


# ------------------------------------------------------------------------------ availability


def _unavailable_reason() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return f"torch not installed ({exc})"
    return None


def _device_unavailable_reason(device: str) -> str | None:
    if device == "cpu":
        return None
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        return None
    return f"unknown device {device!r}"


def _compile_unavailable_reason() -> str | None:
    reason = _unavailable_reason()
    if reason:
        return reason
    import torch

    try:
        torch._dynamo.eval_frame.check_if_dynamo_supported()
    except Exception as exc:  # e.g. a Python version this torch's Dynamo does not support
        return f"torch.compile unsupported here: {exc}"
    return None


def _compile_device_unavailable_reason(device: str) -> str | None:
    reason = _device_unavailable_reason(device)
    if reason:
        return reason
    import torch._inductor.config as inductor_config

    if device == "cpu":
        candidates = [c for c in inductor_config.cpp.cxx if c]
        if not any(shutil.which(c) for c in candidates):
            return f"torch.compile on cpu needs a C++ compiler (none of {candidates} on PATH)"
    if device == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "torch.compile on cuda needs Triton (not installed or no usable GPU for it)"
        from backends.torch.gpu import interpreter_reason  # Inductor's kernels are Triton kernels

        return interpreter_reason()
    return None


def _versions() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__, "cuda": str(torch.version.cuda)}


# ---------------------------------------------------------------------------------- prepare


def _setup(case: Case, inputs: dict, compiled: bool):
    """Threads, device, peak-memory counter, inputs on the device, notes. Returns (torch, tensors, ...)."""
    import torch

    torch.set_num_threads(case.threads)
    device = torch.device(case.device)
    notes: dict = {"torch_threads": torch.get_num_threads()}
    sync = peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        sync = torch.cuda.synchronize
        peak = lambda: int(torch.cuda.max_memory_allocated(device))  # noqa: E731
        notes["sync"] = SYNC_NOTE
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in inputs.items()}
    if compiled:
        import torch._dynamo
        import torch._dynamo.config as dynamo_config
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        torch._dynamo.reset()
        inductor_config.fx_graph_cache = False
        if hasattr(functorch_config, "enable_autograd_cache"):
            functorch_config.enable_autograd_cache = False
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        if hasattr(dynamo_config, "fail_on_recompile_limit_hit"):  # else Dynamo runs eager past it
            dynamo_config.fail_on_recompile_limit_hit = True
        notes["compile"] = (
            "torch.compile(fullgraph=True) default mode, compiled in the first call; FX-graph and AOT-autograd "
            f"caches off; compiled C++ reused from {cache_dir()} if built before (an empty cache "
            "directory adds g++ time)"
        )
    return torch, device, tensors, notes, sync, peak


def _prepared(torch, device, call, outputs, sync, peak, notes: dict, tensors: dict) -> Prepared:
    return Prepared(call=call, outputs=outputs, sync=sync, device_peak_bytes=peak,
                    device_events=_events(torch, device), load=loader(torch, device, tensors), notes=notes)  # fmt: skip


def loader(torch, device, tensors: dict):
    """Prepared.load for a CUDA case: the harness's new input values copied into the device tensors
    the call reads (on the CPU the tensors share the harness's arrays, torch.from_numpy, and need
    no loading)."""
    if device.type != "cuda":
        return None

    def load(values: dict) -> None:
        with torch.no_grad():  # the leaves of elbo_grad and vae_step require grad
            for name, value in values.items():
                if name in tensors:
                    tensors[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))
        torch.cuda.synchronize(device)

    return load


def _maybe_compile(torch, fn, compiled: bool):
    if not compiled:
        return fn
    compiled_fn = torch.compile(fn, fullgraph=True)

    def call(*args, **kwargs):
        try:
            return compiled_fn(*args, **kwargs)
        except Exception as exc:  # make the recorded reason say what failed (a graph break, too)
            raise RuntimeError(f"torch.compile(fullgraph=True) failed: {type(exc).__name__}: {exc}") from exc

    return call


def _events(torch, device):
    """Fresh CUDA timing events per sample (the timer records them around the calls), or None."""
    if device.type != "cuda":
        return None
    return lambda: (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))


def _np(t) -> np.ndarray:
    return np.array(t.detach().cpu().numpy(), copy=True)


def _prepare_elbo(case: Case, inputs: dict, compiled: bool) -> Prepared:
    from backends.torch import kernels

    torch, device, t, notes, sync, peak = _setup(case, inputs, compiled)
    x, x_recon, mu, logvar = (t[k] for k in ("x", "x_recon", "mu", "logvar"))
    with_grad = WORKLOADS[case.workload].has_gradients
    fn = _maybe_compile(torch, kernels.elbo_terms, compiled)

    state: dict = {}
    if case.variant == "eps=sampled":
        gen = torch.Generator(device=device)
        gen.manual_seed(case.seed)
        notes["eps"] = "torch.randn on the device inside the call, torch.Generator seeded with case.seed"

        def draw_eps():
            state["eps"] = torch.randn(mu.shape, generator=gen, device=device, dtype=mu.dtype)
            return state["eps"]
    else:
        eps = t["eps"]

        def draw_eps():
            return eps

    if with_grad:
        leaves = (x_recon.requires_grad_(True), mu.requires_grad_(True), logvar.requires_grad_(True))
        notes["autograd"] = "elbo.backward(); gradients are the leaves' .grad, set to None each call"

        def call():
            for leaf in leaves:
                leaf.grad = None
            z, recon, kl, elbo = fn(x, x_recon, mu, logvar, draw_eps())
            elbo.backward()
            state["out"] = (z, recon, kl, elbo)

    else:
        z_buf = None if compiled else torch.empty_like(mu)

        def call():
            with torch.inference_mode():
                state["out"] = fn(x, x_recon, mu, logvar, draw_eps(), z_buf)

    def outputs():
        z, recon, kl, elbo = state["out"]
        res = {"z": _np(z), "recon": _np(recon), "kl": _np(kl), "elbo": _np(elbo)}
        if "eps" in state:
            res["eps"] = _np(state["eps"])
        if with_grad:
            res.update(grad_x_recon=_np(x_recon.grad), grad_mu=_np(mu.grad), grad_logvar=_np(logvar.grad))
        return res

    return _prepared(torch, device, call, outputs, sync, peak, notes, t)


def _prepare_iwae(case: Case, inputs: dict, compiled: bool) -> Prepared:
    from backends.torch import kernels

    torch, device, t, notes, sync, peak = _setup(case, inputs, compiled)
    args = tuple(t[k] for k in ("x", "mu", "logvar", "eps", "dec_w", "dec_b"))
    fn = _maybe_compile(torch, kernels.iwae_bound, compiled)
    state: dict = {}

    def call():
        with torch.inference_mode():
            state["iwae"] = fn(*args)

    return _prepared(torch, device, call, lambda: {"iwae": _np(state["iwae"])}, sync, peak, notes, t)


def _prepare_vae_step(case: Case, inputs: dict, compiled: bool) -> Prepared:
    from backends.torch import kernels

    torch, device, t, notes, sync, peak = _setup(case, inputs, compiled)
    x, eps = t["x"], t["eps"]
    lr = float(inputs["lr"])
    params = tuple(t[name].requires_grad_(True) for name in VAE_PARAMS)
    new = tuple(torch.empty_like(p, requires_grad=False) for p in params)
    fn = _maybe_compile(torch, kernels.vae_loss, compiled)
    notes["autograd"] = "loss.backward(); new_p = p - lr*grad into preallocated tensors (no_grad)"
    state: dict = {}

    def call():
        for p in params:
            p.grad = None
        loss = fn(x, eps, *params)
        loss.backward()
        with torch.no_grad():
            for p, n in zip(params, new, strict=True):
                torch.add(p, p.grad, alpha=-lr, out=n)
        state["loss"] = loss

    def outputs():
        res = {"loss": _np(state["loss"])}
        for name, p, n in zip(VAE_PARAMS, params, new, strict=True):
            res[f"grad_{name}"] = _np(p.grad)
            res[f"new_{name}"] = _np(n)
        return res

    return _prepared(torch, device, call, outputs, sync, peak, notes, t)


# one module serves two backends: the same preparers, with the option bound
PREPARERS = dict(elbo=_prepare_elbo, elbo_grad=_prepare_elbo, iwae=_prepare_iwae, vae_step=_prepare_vae_step)


backend = Backend(
    name="torch",
    description="PyTorch eager; autograd for gradients (the tutorial's PyTorch)",
    preparers=bind(PREPARERS, compiled=False),
    devices=("cpu", "cuda"),
    unavailable_reason=_unavailable_reason,
    device_unavailable_reason=_device_unavailable_reason,
    versions=_versions,
    threaded=True,
    # torch.set_num_threads(case.threads) in prepare: one worker serves every thread count (a
    # torch worker takes ~6 s to start on 2 cores, most of it importing torch)
    threads_per_case=True,
)

compiled_backend = replace(
    backend,
    name="torch-compile",
    description="PyTorch through torch.compile (fullgraph, default mode, Inductor); compile time is first_call",
    preparers=bind(PREPARERS, compiled=True),
    unavailable_reason=_compile_unavailable_reason,
    device_unavailable_reason=_compile_device_unavailable_reason,
    # every case compiles anew (2 s with a warm Inductor cache, ~20 s cold on 2 cores): by default
    # only the tutorial's kernel at a cache-sized and a DRAM-sized batch, one thread
    default_scope={
        "workloads": ("elbo", "elbo_grad"),
        "batches": (128, 8192),
        "threads": (1,),
        "variants": ("eps=given",),
    },
)


# The CUDA variants aiming at the device's limits (backends/torch/gpu.py): imported lazily, so this
# module loads where torch or triton is missing.
def _gpu(name: str):
    def prepare(case: Case, inputs: dict) -> Prepared:
        from backends.torch import gpu

        return getattr(gpu, name)(case, inputs)

    return prepare


def _gpu_check(name: str):
    def check(*args):
        from backends.torch import gpu

        return getattr(gpu, name)(*args)

    return check


def _cuda_variant(name: str, description: str, prepare: str, **extra) -> Backend:
    """A CUDA-only torch variant of elbo and elbo_grad, prepared in backends.torch.gpu."""
    return replace(backend, name=name, description=description, devices=("cuda",), threaded=False,
                   preparers={"elbo": _gpu(prepare), "elbo_grad": _gpu(prepare)},
                   device_unavailable_reason=_gpu_check("cuda_unavailable"), **extra)  # fmt: skip


triton_backend = _cuda_variant(
    "torch-triton", "elbo and elbo_grad as one fused Triton kernel on CUDA: one pass, one launch a call",
    "prepare_triton", unavailable_reason=_gpu_check("triton_unavailable"),
)  # fmt: skip
cudagraph_backend = _cuda_variant(
    "torch-cudagraph", "the fused Triton launch captured as a CUDA graph and replayed: one graph launch a call",
    "prepare_cudagraph", unavailable_reason=_gpu_check("triton_unavailable"),
)  # fmt: skip
