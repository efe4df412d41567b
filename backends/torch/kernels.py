"""The PyTorch kernels, written as a PyTorch user would: plain tensor expressions, autograd for gradients.

This module imports torch at the top; `backends.torch` imports it only inside `prepare`, so the
registry loads where torch is missing. The same functions run eagerly (backend `torch`) and through
`torch.compile` (backend `torch-compile`), so both do exactly the same work.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def elbo_terms(x, x_recon, mu, logvar, eps, z_out=None):
    """z = mu + exp(logvar/2)*eps; recon = -sum((x - x_recon)^2)/B; kl = sum(mu^2 + e^lv - 1 - lv)/2B.

    `z_out` (eager, no-grad only) receives z in place, so the forward-only case writes a
    preallocated buffer like the other backends; under autograd z is a fresh tensor (out= does not
    support autograd).
    """
    b = x.shape[0]
    std = torch.exp(0.5 * logvar)
    if z_out is None:
        z = mu + std * eps
    else:
        z = torch.addcmul(mu, std, eps, out=z_out)
    recon = -torch.sum((x - x_recon) ** 2) / b
    kl = 0.5 * torch.sum(mu * mu + half_excess(logvar)) / b
    return z, recon, kl, recon - kl


class _HalfExcess(torch.autograd.Function):
    """e^x - 1 - x (>= 0) as expm1(x) - x, with the derivative e^x - 1 as expm1(x): autograd of
    expm1(x) - x would compute it as e^x * g - g, which cancels near x = 0."""

    @staticmethod
    def forward(ctx, x):
        em1 = torch.expm1(x)
        ctx.save_for_backward(em1)
        return em1 - x

    @staticmethod
    def backward(ctx, g):
        (em1,) = ctx.saved_tensors
        return g * em1


def half_excess(x):
    """The KL term's e^lv - 1 - lv, accurate near lv = 0 forward and backward."""
    return _HalfExcess.apply(x)


def iwae_bound(x, mu, logvar, eps, dec_w, dec_b):
    """(1/B) sum_b (logsumexp_k log w_bk - log K), linear-Gaussian decoder, stable logsumexp."""
    k = eps.shape[0]
    d = x.shape[1]
    z = mu + torch.exp(0.5 * logvar) * eps  # [K,B,L]
    resid = x - (z @ dec_w + dec_b)  # [K,B,D]
    # log p(x|z) + log p(z) - log q(z|x), with (z - mu)/sigma = eps exactly
    log_w = -0.5 * (
        (resid * resid).sum(-1) + (z * z).sum(-1) - (eps * eps).sum(-1) - logvar.sum(-1) + d * LOG_2PI
    )  # [K,B]
    return (torch.logsumexp(log_w, dim=0) - math.log(k)).mean()


def vae_loss(x, eps, enc_w, enc_b, mu_w, mu_b, logvar_w, logvar_b, dec_w, dec_b, out_w, out_b):
    """Negative ELBO of the MLP VAE averaged over the batch, with a hand-written backward in the
    NumPy and Numba backends; here autograd.

    softplus is logaddexp(logits, 0) (exact and overflow-free; F.softplus switches to the identity
    above a threshold, which differs from the reference by up to e^-20 per element).
    """
    b = x.shape[0]
    h1 = torch.relu(torch.addmm(enc_b, x, enc_w))
    mu = torch.addmm(mu_b, h1, mu_w)
    logvar = torch.addmm(logvar_b, h1, logvar_w)
    std = torch.exp(0.5 * logvar)
    z = mu + std * eps
    h3 = torch.relu(torch.addmm(dec_b, z, dec_w))
    logits = torch.addmm(out_b, h3, out_w)
    rec = torch.sum(x * logits - torch.logaddexp(logits, logits.new_zeros(())))
    kl = 0.5 * torch.sum(mu * mu + half_excess(logvar))
    return (kl - rec) / b
