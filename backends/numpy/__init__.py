"""NumPy: the tutorial's baseline, written as a NumPy user would (vectorised, preallocated z).

Elementwise work and reductions run on one thread (NumPy's ufuncs are single-threaded); the
matrix products of vae_step go through the BLAS NumPy links, whose threads the harness limits with
threadpoolctl to the case's count.
"""

from __future__ import annotations

import numpy as np

from harness.backend import Backend, Prepared
from harness.case import Case
from harness.workloads import VAE_PARAMS, WORKLOADS, vae_forward_backward


def _elbo_terms(x, x_recon, mu, logvar):
    b = x.shape[0]
    diff = x - x_recon
    recon = -np.dot(diff.ravel(), diff.ravel()) / b
    kl = -0.5 * np.sum(1.0 + logvar - mu * mu - np.exp(logvar)) / b
    return diff, recon, kl


def _prepare_elbo(case: Case, inputs: dict) -> Prepared:
    x, x_recon, mu, logvar = (inputs[k] for k in ("x", "x_recon", "mu", "logvar"))
    b = x.shape[0]
    dtype = x.dtype
    z = np.empty_like(mu)
    out: dict = {}
    grad_mu = np.empty_like(mu)
    grad_logvar = np.empty_like(logvar)
    grad_x_recon = np.empty_like(x)
    with_grad = WORKLOADS[case.workload].has_gradients
    if case.variant == "eps=sampled":
        # as the tutorial timed NumPy: eps drawn inside the timed call
        rng = np.random.default_rng(case.seed)

        def draw_eps():
            return rng.standard_normal(mu.shape, dtype=dtype)
    else:
        eps = inputs["eps"]

        def draw_eps():
            return eps

    def call():
        np.multiply(np.exp(0.5 * logvar), draw_eps(), out=z)
        np.add(z, mu, out=z)
        diff, recon, kl = _elbo_terms(x, x_recon, mu, logvar)
        out["recon"], out["kl"] = recon, kl
        out["elbo"] = recon - kl
        if with_grad:
            np.multiply(diff, dtype.type(2.0 / b), out=grad_x_recon)
            np.multiply(mu, dtype.type(-1.0 / b), out=grad_mu)
            np.exp(logvar, out=grad_logvar)
            np.subtract(1.0, grad_logvar, out=grad_logvar)
            np.multiply(grad_logvar, dtype.type(0.5 / b), out=grad_logvar)

    def outputs():
        res = dict(out, z=z)
        if with_grad:
            res.update(grad_x_recon=grad_x_recon, grad_mu=grad_mu, grad_logvar=grad_logvar)
        return res

    return Prepared(call=call, outputs=outputs)


def _prepare_iwae(case: Case, inputs: dict) -> Prepared:
    x, mu, logvar, eps, w, bias = (inputs[k] for k in ("x", "mu", "logvar", "eps", "dec_w", "dec_b"))
    k, _, lat = eps.shape
    d = x.shape[1]
    log_2pi = np.log(2 * np.pi)
    out = {}

    def call():
        z = mu + np.exp(0.5 * logvar) * eps  # [K,B,L]
        resid = x - (z @ w + bias)  # [K,B,D]
        log_w = -0.5 * (
            np.einsum("kbd,kbd->kb", resid, resid)
            + np.einsum("kbl,kbl->kb", z, z)
            - np.einsum("kbl,kbl->kb", eps, eps)
            - logvar.sum(axis=1)
            + d * log_2pi
        )
        top = log_w.max(axis=0)
        lse = top + np.log(np.exp(log_w - top).sum(axis=0))
        out["iwae"] = np.mean(lse) - np.log(k)

    return Prepared(call=call, outputs=lambda: out)


def _prepare_vae_step(case: Case, inputs: dict) -> Prepared:
    x, eps, lr = inputs["x"], inputs["eps"], inputs["lr"].dtype.type(inputs["lr"])
    params = {p: inputs[p] for p in VAE_PARAMS}
    out = {}

    def call():
        loss, grads = vae_forward_backward(x, eps, params)
        out["loss"] = loss
        for name in VAE_PARAMS:
            out[f"grad_{name}"] = grads[name]
            out[f"new_{name}"] = params[name] - lr * grads[name]

    return Prepared(call=call, outputs=lambda: out)


def _versions() -> dict[str, str]:
    return {"numpy": np.__version__}


backend = Backend(
    name="numpy",
    description="NumPy, vectorised; BLAS for vae_step's matrix products",
    preparers={
        "elbo": _prepare_elbo,
        "elbo_grad": _prepare_elbo,
        "iwae": _prepare_iwae,
        "vae_step": _prepare_vae_step,
    },
    versions=_versions,
    threaded=True,  # through BLAS in vae_step
)
