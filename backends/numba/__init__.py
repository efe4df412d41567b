"""Numba: fused single-pass kernels with explicit loops, serial (`numba`) and parallel (`numba-parallel`).

The kernels live in backends.numba.kernels (imported only inside prepare, so the registry loads where
numba is missing); its docstring has the details. In short:

- JIT: @njit with cache=False. There is no on-disk cache, so the harness's first_call is the real
  type-inference + LLVM compile time of the case (for that case's dtype only; nothing is compiled
  eagerly), and a second run never silently reuses a stale cache.
- One fused pass per workload, no temporaries: outputs, per-row partial sums and scratch rows are
  preallocated in prepare. numba-parallel runs the same source with parallel=True and a prange over
  batch rows (iwae: over row chunks, one scratch row each); rows write per-row partial sums which are
  summed afterwards in a serial float64 loop, so serial and parallel give identical results.
- Accumulation: each row's sum in the case dtype, the rows in float64 (float64 cases: float64
  throughout). fastmath={"reassoc"} only, so row sums vectorise (see kernels.py for why that is safe).
- eps=sampled: np.random.standard_normal() inside the kernel, Numba's per-thread generator, seeded in
  prepare by calling np.random.seed(case.seed) inside an njit function. Reproducible in the serial
  backend; in the parallel backend the pool threads use their own independently seeded states.
- vae_step: hand-written backprop; the matrix products are np.dot(a, b, out) inside njit, which Numba
  lowers to BLAS gemm (SciPy's BLAS, whose threads the harness limits to the case's count); all
  elementwise work, softplus/sigmoid, the bias-gradient column sums and the SGD update are fused
  explicit loops. So `numba` is still multi-threaded in vae_step through BLAS (threaded=True, as numpy).
- Threads: numba.set_num_threads(case.threads) in prepare, clamped to NUMBA_NUM_THREADS (the pool
  size, fixed when numba is imported; the harness sets it to the case's count in the worker); both
  the requested and the used counts are recorded in notes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from elbolab.model.backend import Backend, Prepared, bind
from elbolab.model.case import Case
from elbolab.model.workloads import VAE_PARAMS, WORKLOADS

_KERNELS: dict[bool, dict] = {}  # compiled dispatchers per parallel flag (lazily built, per process)


def _unavailable_reason() -> str | None:
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        return f"numba not installed ({exc})"
    return None


def _versions() -> dict[str, str]:
    import llvmlite
    import numba

    return {"numba": numba.__version__, "llvmlite": llvmlite.__version__}


def _kernels(parallel: bool) -> dict:
    if parallel not in _KERNELS:
        from backends.numba import kernels

        _KERNELS[parallel] = kernels.build(parallel)
    return _KERNELS[parallel]


def _setup(case: Case, parallel: bool) -> tuple[dict, dict, int]:
    import numba

    kernels = _kernels(parallel)
    compiled = sum(len(getattr(k, "signatures", ())) for k in kernels.values())
    limit = int(numba.config.NUMBA_NUM_THREADS)
    used = max(1, min(case.threads, limit))
    numba.set_num_threads(used)
    notes = {
        "numba_threads": used if parallel else 1,
        "numba_threads_requested": case.threads,
        "NUMBA_NUM_THREADS": limit,
        "threading_layer": str(numba.config.THREADING_LAYER),
        # a worker serves many cases: a (kernel, dtype) compiled by an earlier case is reused, so
        # first_call holds the compile time only in the first case of each signature in a worker
        "jit": "cache=False; the first call compiles unless an earlier case in this worker did",
        "jit_signatures_compiled_before_case": compiled,
        "fastmath": "reassoc",
        "accumulation": "rows in the case dtype, across rows in float64",
    }
    if used < case.threads:
        notes["threads_clamped"] = f"asked {case.threads}, NUMBA_NUM_THREADS={limit}"
    return kernels, notes, used


def _limit_blas(threads: int) -> int:
    """Load SciPy's BLAS (which Numba's np.dot calls) now and limit its pool to the case's count.

    Numba loads it only when np.dot is first compiled, i.e. after a harness-wide threadpoolctl limit
    taken before prepare would have been applied; left alone, its OpenBLAS pool would use every core.
    """
    import scipy.linalg.cython_blas  # noqa: F401
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")
    return threads


def _prepare_elbo(case: Case, inputs: dict, parallel: bool) -> Prepared:
    k, notes, _ = _setup(case, parallel)
    x, x_recon, mu, logvar = (inputs[n] for n in ("x", "x_recon", "mu", "logvar"))
    nb = x.shape[0]
    t = x.dtype.type
    with_grad = WORKLOADS[case.workload].has_gradients
    sampled = case.variant == "eps=sampled"
    if sampled:
        from backends.numba.kernels import seed

        seed(case.seed)
        eps = np.empty_like(mu)  # the kernel writes each draw here
        notes["eps"] = "np.random.standard_normal inside the kernel (Numba's generator, seeded in prepare)"
    else:
        eps = inputs["eps"]
    z = np.empty_like(mu)
    if with_grad:
        g_xr, g_mu, g_lv = np.empty_like(x), np.empty_like(mu), np.empty_like(logvar)
    else:  # not written; 1x1 placeholders keep one compiled signature per dtype
        g_xr = g_mu = g_lv = np.zeros((1, 1), dtype=x.dtype)
    row_recon = np.zeros(nb)
    row_kl = np.zeros(nb)
    consts = (t(0.0), t(1.0), t(0.5), t(2.0 / nb), t(-1.0 / nb), t(0.5 / nb))
    fn = k["elbo"]
    out: dict = {}

    def call():
        recon, kl = fn(
            x, x_recon, mu, logvar, eps, sampled, with_grad, z, g_xr, g_mu, g_lv, row_recon, row_kl,
            *consts,
        )  # fmt: skip
        out["recon"], out["kl"] = recon, kl

    def outputs():
        res = {"z": z, "recon": np.array(out["recon"]), "kl": np.array(out["kl"])}
        res["elbo"] = np.array(out["recon"] - out["kl"])
        if sampled:
            res["eps"] = eps
        if with_grad:
            res.update(grad_x_recon=g_xr, grad_mu=g_mu, grad_logvar=g_lv)
        return res

    return Prepared(call=call, outputs=outputs, notes=notes)


def _prepare_iwae(case: Case, inputs: dict, parallel: bool) -> Prepared:
    k, notes, used = _setup(case, parallel)
    x, mu, logvar, eps, w, bias = (inputs[n] for n in ("x", "mu", "logvar", "eps", "dec_w", "dec_b"))
    nb, nd = x.shape
    nl = mu.shape[1]
    nchunks = max(1, min(nb, used if parallel else 1))
    mean_buf = np.empty((nchunks, nd), dtype=x.dtype)
    z_buf = np.empty((nchunks, nl), dtype=x.dtype)
    row_lse = np.zeros(nb)
    t = x.dtype.type
    fn = k["iwae"]
    notes["row_chunks"] = nchunks
    out: dict = {}

    def call():
        out["iwae"] = fn(x, mu, logvar, eps, w, bias, mean_buf, z_buf, row_lse, t(0.0), t(0.5))

    return Prepared(call=call, outputs=lambda: {"iwae": np.array(out["iwae"])}, notes=notes)


def _prepare_vae_step(case: Case, inputs: dict, parallel: bool) -> Prepared:
    k, notes, _ = _setup(case, parallel)
    x, eps = inputs["x"], inputs["eps"]
    dt = x.dtype
    t = dt.type
    nb = x.shape[0]
    nh = inputs["enc_w"].shape[1]
    nl = inputs["mu_w"].shape[1]
    nd = x.shape[1]
    params = tuple(inputs[n] for n in VAE_PARAMS)
    grads = tuple(np.empty_like(p) for p in params)
    new = tuple(np.empty_like(p) for p in params)
    shapes = [(nb, nh)] + [(nb, nl)] * 4 + [(nb, nh), (nb, nd), (nb, nh)] + [(nb, nl)] * 3 + [(nb, nh)] * 2
    scratch = tuple(np.empty(s, dtype=dt) for s in shapes)
    row_part = np.zeros((nb, 2))
    lr = t(inputs["lr"])
    fn = k["vae_step"]
    notes["matmul"] = "np.dot inside njit -> BLAS gemm (SciPy's BLAS)"
    # numba-parallel: BLAS on one thread. A threaded BLAS between prange loops leaves two pools on
    # the same cores, each spinning while the other works: 12-15x slower at 2 threads on 2 cores
    # (elbolab's anomaly check found it); the parallelism comes from the prange loops instead
    notes["blas_threads"] = _limit_blas(1 if parallel else case.threads)
    out: dict = {}

    def call():
        out["loss"] = fn(x, eps, params, grads, new, scratch, row_part, lr, t(1.0), t(0.5), t(1.0 / nb))

    def outputs():
        res = {"loss": np.array(out["loss"])}
        for name, g, n in zip(VAE_PARAMS, grads, new, strict=True):
            res[f"grad_{name}"] = g
            res[f"new_{name}"] = n
        return res

    return Prepared(call=call, outputs=outputs, notes=notes)


# one module serves two backends: the same preparers, with the option bound
PREPARERS = dict(elbo=_prepare_elbo, elbo_grad=_prepare_elbo, iwae=_prepare_iwae, vae_step=_prepare_vae_step)


backend = Backend(
    name="numba",
    description="Numba @njit, one fused serial pass per workload (BLAS for vae_step's products)",
    preparers=bind(PREPARERS, parallel=False),
    unavailable_reason=_unavailable_reason,
    versions=_versions,
    threaded=True,  # only through BLAS in vae_step
    # numba.set_num_threads in prepare, BLAS through threadpoolctl: one worker for every count
    threads_per_case=True,
)

parallel_backend = replace(
    backend,
    name="numba-parallel",
    description="Numba @njit(parallel=True), prange over batch rows, per-row partial sums",
    preparers=bind(PREPARERS, parallel=True),
)
