"""Rust: fused ELBO-family kernels in a PyO3/ndarray/rayon extension (`elbolab_rust`).

Two backends share the kernels:
  rust        Prepared.call runs the kernel once per Python call (what a user of the extension gets)
  rust-inner  Prepared.call_n(n) runs n iterations in a loop inside Rust (what the tutorial timed)
A third runs other code:
  rust-tutorial  the tutorial's own Rust: idiomatic ndarray expressions with a temporary array per
                 operation (elbo only), timed as the tutorial did, call_n(n) looping inside Rust;
                 the baseline for claims C4 and C9

prepare() allocates every output (z, gradients, new parameters; with eps=sampled also `eps`, the
eps each call drew) once and builds a *plan* in Rust that validates the arrays once; each call then
only re-checks them cheaply, releases the GIL and runs the kernel on a per-case rayon pool of exactly
`case.threads` threads (serial code when 1, and below a measured batch threshold). While a plan
lives its input arrays are read-only (a write raises; see the GIL contract in backends/rust/README.md).
The extension is imported lazily, so the registry loads without it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from elbolab.model.backend import Backend, Build, Prepared
from elbolab.model.case import Case
from elbolab.model.workloads import VAE_PARAMS

_NOT_BUILT = "elbolab_rust extension not built: run `make rust`"
# the A/B gate builds this per revision it measures (elbolab.gate.ab)
RUST_BUILD = Build(kind="maturin", manifest="backends/rust/Cargo.toml", module="elbolab_rust")


def _ext():
    import elbolab_rust

    return elbolab_rust


def _unavailable() -> str | None:
    try:
        _ext()
    except ImportError:
        return _NOT_BUILT
    return None


def _versions() -> dict[str, str]:
    try:
        ext = _ext()
    except ImportError:
        return {}
    return {"elbolab_rust": ext.__version__, "rustc": ext.RUSTC_VERSION}


def _notes(ext, case: Case, inner: bool) -> dict:
    info = ext.build_info()
    notes = {
        "timing": "n iterations looped inside Rust (call_n)"
        if inner
        else "one extension call per Python call",
        "simd": info["simd"],
        "gil": "released during the kernel",
        "threads": f"per-case rayon pool of {case.threads}" if case.threads > 1 else "serial, no pool",
    }
    if case.workload in ("elbo", "elbo_grad"):
        notes["parallel_threshold_elems"] = info["elbo_par_min_elems"]
        if case.variant == "eps=sampled":
            notes["rng"] = info["rng"]
            notes["eps"] = "drawn straight into the output 'eps' (one [B,L] write per call)"
    elif case.workload == "vae_step":
        notes["gemm"] = info["gemm"]
    return notes


def _eps_arrays(case: Case, inputs: dict) -> tuple[np.ndarray | None, dict]:
    """(eps to pass, {"eps": eps_out} or {}): sampled eps are drawn in the call and kept in eps_out."""
    if case.variant == "eps=sampled":
        return None, {"eps": np.empty_like(inputs["mu"])}
    return inputs["eps"], {}


def _elbo_outputs(plan, z: np.ndarray, extra: dict):
    def outputs():
        recon, kl, elbo = plan.result()
        return {"z": z, "recon": np.array(recon), "kl": np.array(kl), "elbo": np.array(elbo), **extra}

    return outputs


def _prepare_elbo(ext, pool, case: Case, inputs: dict):
    x, x_recon, mu, logvar = (inputs[k] for k in ("x", "x_recon", "mu", "logvar"))
    eps, drawn = _eps_arrays(case, inputs)
    z = np.empty_like(mu)
    grads = {}
    if case.workload == "elbo_grad":
        grads = {
            "grad_x_recon": np.empty_like(x),
            "grad_mu": np.empty_like(mu),
            "grad_logvar": np.empty_like(logvar),
        }
    plan = ext.ElboPlan(
        pool, x, x_recon, mu, logvar, eps, z, **grads, seed=case.seed, eps_out=drawn.get("eps")
    )
    return plan, _elbo_outputs(plan, z, {**grads, **drawn})


def _prepare_iwae(ext, pool, case: Case, inputs: dict):
    plan = ext.IwaePlan(pool, *(inputs[k] for k in ("x", "mu", "logvar", "eps", "dec_w", "dec_b")))
    return plan, lambda: {"iwae": np.array(plan.result())}


def _prepare_vae_step(ext, pool, case: Case, inputs: dict):
    params = [inputs[p] for p in VAE_PARAMS]
    grads = [np.empty_like(p) for p in params]
    news = [np.empty_like(p) for p in params]
    plan = ext.VaePlan(pool, inputs["x"], inputs["eps"], params, float(inputs["lr"]), grads, news)

    def outputs():
        out = {"loss": np.array(plan.result())}
        out.update({f"grad_{p}": g for p, g in zip(VAE_PARAMS, grads, strict=True)})
        out.update({f"new_{p}": n for p, n in zip(VAE_PARAMS, news, strict=True)})
        return out

    return plan, outputs


_PREPARE = {
    "elbo": _prepare_elbo,
    "elbo_grad": _prepare_elbo,
    "iwae": _prepare_iwae,
    "vae_step": _prepare_vae_step,
}


def _preparers(inner: bool) -> dict:
    def prepare(case: Case, inputs: dict) -> Prepared:
        ext = _ext()
        pool = ext.Pool(case.threads)
        plan, outputs = _PREPARE[case.workload](ext, pool, case, inputs)
        # plan.run is a bound builtin method: no Python frame between the timer and Rust
        return Prepared(
            call=plan.run,
            outputs=outputs,
            call_n=plan.run_n if inner else None,
            notes=_notes(ext, case, inner),
        )

    return dict.fromkeys(_PREPARE, prepare)


backend = Backend(
    name="rust",
    description="Rust (PyO3 + ndarray + rayon), fused single-pass kernels, one extension call per iteration",
    preparers=_preparers(inner=False),
    build=RUST_BUILD,
    unavailable_reason=_unavailable,
    versions=_versions,
    threaded=True,
)

# the same kernels, timed as the tutorial did: the loop inside Rust
inner_loop_backend = replace(
    backend,
    name="rust-inner",
    description="Rust kernels timed as the tutorial did: n iterations looped inside Rust (call_n)",
    preparers=_preparers(inner=True),
)


# ------------------------------------------------------------------------------- rust-tutorial


def _prepare_tutorial(case: Case, inputs: dict) -> Prepared:
    ext = _ext()
    x, x_recon, mu, logvar = (inputs[k] for k in ("x", "x_recon", "mu", "logvar"))
    eps, drawn = _eps_arrays(case, inputs)
    z = np.empty_like(mu)
    plan = ext.TutorialPlan(x, x_recon, mu, logvar, eps, z, seed=case.seed, eps_out=drawn.get("eps"))
    outputs = _elbo_outputs(plan, z, drawn)

    notes = {
        "timing": "n iterations looped inside Rust (call_n), as the tutorial timed its 10,000-iteration loop",
        "code": "the tutorial's idiomatic ndarray: one temporary array per operation, libm exp via mapv, "
        "z copied into the output; not fused, not hand-vectorised",
        "gil": "released during the loop",
        "threads": "serial (the tutorial's code has no threads; case.threads is ignored)",
    }
    if case.variant == "eps=sampled":
        notes["rng"] = ext.build_info()["tutorial_rng"]
        notes["eps"] = "the eps of each call are copied out of the tutorial's fresh array (output 'eps')"
    return Prepared(call=plan.run, outputs=outputs, call_n=plan.run_n, notes=notes)


tutorial_backend = Backend(
    name="rust-tutorial",
    description=(
        "The tutorial's own Rust ELBO (claims C4, C9): idiomatic ndarray expressions allocating a "
        "temporary per operation (std = logvar.mapv(exp), z = &mu + &(&std * &eps), recon and kl "
        "from array expressions, eps drawn into a fresh array), single thread; call_n(n) runs the n "
        "iterations in a loop inside Rust, as the tutorial timed it"
    ),
    preparers={"elbo": _prepare_tutorial},
    build=RUST_BUILD,
    unavailable_reason=_unavailable,
    versions=_versions,
    threaded=False,
)
