"""NumPy: the tutorial's baseline, written as a careful NumPy user would (vectorised, preallocated
outputs, the KL term as expm1(logvar) - logvar so it keeps its digits near zero).

Elementwise work and reductions run on one thread (NumPy's ufuncs are single-threaded); the
matrix products of vae_step go through the BLAS NumPy links, whose threads the harness limits with
threadpoolctl to the case's count. The kernels share no code with the harness's reference.
"""

from __future__ import annotations

import numpy as np

from elbolab.model.backend import Backend, Prepared
from elbolab.model.case import Case
from elbolab.model.workloads import VAE_PARAMS, WORKLOADS


def _elbo_terms(x, x_recon, mu, logvar):
    b = x.shape[0]
    diff = x - x_recon
    recon = -np.dot(diff.ravel(), diff.ravel()) / b
    # 1 + lv - mu^2 - e^lv = -(mu^2 + (e^lv - 1 - lv)): every term >= 0, nothing cancels
    kl = 0.5 * np.sum(mu * mu + (np.expm1(logvar) - logvar)) / b
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
    sampled = case.variant == "eps=sampled"
    drawn = {"eps": inputs.get("eps")}
    if sampled:
        # as the tutorial timed NumPy: eps drawn inside the timed call (kept for the check)
        rng = np.random.default_rng(case.seed)

        def draw_eps():
            drawn["eps"] = rng.standard_normal(mu.shape, dtype=dtype)
            return drawn["eps"]
    else:

        def draw_eps():
            return drawn["eps"]

    def call():
        np.multiply(np.exp(0.5 * logvar), draw_eps(), out=z)
        np.add(z, mu, out=z)
        diff, recon, kl = _elbo_terms(x, x_recon, mu, logvar)
        out["recon"], out["kl"] = recon, kl
        out["elbo"] = recon - kl
        if with_grad:
            np.multiply(diff, dtype.type(2.0 / b), out=grad_x_recon)
            np.multiply(mu, dtype.type(-1.0 / b), out=grad_mu)
            np.expm1(logvar, out=grad_logvar)  # (1 - e^lv) / 2B, exact near lv = 0
            np.multiply(grad_logvar, dtype.type(-0.5 / b), out=grad_logvar)

    def outputs():
        res = dict(out, z=z)
        if sampled:
            res["eps"] = drawn["eps"]
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


def _vae_loss_and_grads(x, eps, p: dict, grads: dict) -> float:
    """One forward and backward pass of the MLP VAE, hand-written, gradients into `grads`."""
    b = x.shape[0]
    one, half, inv_b = (x.dtype.type(v) for v in (1.0, 0.5, 1.0 / b))
    h1_pre = x @ p["enc_w"]
    h1_pre += p["enc_b"]
    h1 = np.maximum(h1_pre, 0)
    mu = h1 @ p["mu_w"] + p["mu_b"]
    logvar = h1 @ p["logvar_w"] + p["logvar_b"]
    std = np.exp(half * logvar)
    z = mu + std * eps
    h3_pre = z @ p["dec_w"] + p["dec_b"]
    h3 = np.maximum(h3_pre, 0)
    logits = h3 @ p["out_w"]
    logits += p["out_b"]

    # Bernoulli log-likelihood x*l - log(1 + e^l), overflow-free
    rec = np.sum(x * logits - np.logaddexp(0, logits))
    kl = half * np.sum(mu * mu + (np.expm1(logvar) - logvar))
    loss = float((kl - rec) * inv_b)

    d_logits = (one / (one + np.exp(-logits)) - x) * inv_b
    np.matmul(h3.T, d_logits, out=grads["out_w"])
    np.sum(d_logits, axis=0, out=grads["out_b"])
    d_h3 = d_logits @ p["out_w"].T
    d_h3 *= h3_pre > 0
    np.matmul(z.T, d_h3, out=grads["dec_w"])
    np.sum(d_h3, axis=0, out=grads["dec_b"])
    d_z = d_h3 @ p["dec_w"].T
    d_mu = d_z + mu * inv_b
    d_logvar = half * (d_z * std * eps + np.expm1(logvar) * inv_b)
    np.matmul(h1.T, d_mu, out=grads["mu_w"])
    np.sum(d_mu, axis=0, out=grads["mu_b"])
    np.matmul(h1.T, d_logvar, out=grads["logvar_w"])
    np.sum(d_logvar, axis=0, out=grads["logvar_b"])
    d_h1 = d_mu @ p["mu_w"].T
    d_h1 += d_logvar @ p["logvar_w"].T
    d_h1 *= h1_pre > 0
    np.matmul(x.T, d_h1, out=grads["enc_w"])
    np.sum(d_h1, axis=0, out=grads["enc_b"])
    return loss


def _prepare_vae_step(case: Case, inputs: dict) -> Prepared:
    x, eps, lr = inputs["x"], inputs["eps"], inputs["lr"].dtype.type(inputs["lr"])
    params = {p: inputs[p] for p in VAE_PARAMS}
    grads = {p: np.empty_like(v) for p, v in params.items()}
    new = {p: np.empty_like(v) for p, v in params.items()}
    out = {}

    def call():
        out["loss"] = _vae_loss_and_grads(x, eps, params, grads)
        for name in VAE_PARAMS:  # SGD: new = p - lr * g
            np.multiply(grads[name], -lr, out=new[name])
            new[name] += params[name]

    def outputs():
        res = {"loss": np.array(out["loss"])}
        res.update({f"grad_{p}": grads[p] for p in VAE_PARAMS})
        res.update({f"new_{p}": new[p] for p in VAE_PARAMS})
        return res

    return Prepared(call=call, outputs=outputs)


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
