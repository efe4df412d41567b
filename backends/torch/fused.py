"""A fused single-pass ELBO kernel in Triton (elbo and elbo_grad, float32 and float64).

One program per block of rows: it streams the row's x and x_recon once (the squared differences
summed in the case dtype, grad_x_recon written in the same pass), then the row's latents (z, the
KL term mu^2 + e^lv - 1 - lv with e^lv - 1 computed without cancellation near 0, the gradients),
and writes the row's two partial sums. The rows' partial sums are then added in float64 by
torch.sum: two launches per call, the second tiny, and a deterministic result.

This module imports triton at the top; `backends.torch` imports it only for the torch-triton
backend, which runs on CUDA. The same kernel runs on the CPU in Triton's interpreter
(TRITON_INTERPRET=1, set before triton is imported), which is how the tests check it where there is
no GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

# The constants travel in a small array of the case dtype (Triton types a Python float literal as
# float32, which would cost a float64 kernel its digits): the three scale factors, then the Taylor
# coefficients of e^x - 1 from x^1 to x^14 (truncation below 1e-17 of the value where |x| < 0.5).
TAYLOR_TERMS = 14


def constants(b: int) -> list[float]:
    import math

    return [2.0 / b, -1.0 / b, -0.5 / b] + [1.0 / math.factorial(k) for k in range(1, TAYLOR_TERMS + 1)]


@triton.jit
def _expm1(x, c_ptr):
    """e^x - 1: its Taylor series (Horner) where |x| < 0.5, exp(x) - 1 elsewhere (no cancellation
    beyond 2x there), so the KL term and its gradient keep their digits near logvar = 0."""
    p = tl.load(c_ptr + 3 + 13)  # 1/14!
    for k in tl.static_range(12, -1, -1):  # 1/13! ... 1/1!
        p = p * x + tl.load(c_ptr + 3 + k)
    series = p * x
    return tl.where(tl.abs(x) < 0.5, series, tl.exp(x) - 1.0)


@triton.jit
def elbo_rows(
    x_ptr, xr_ptr, mu_ptr, lv_ptr, eps_ptr, z_ptr, gxr_ptr, gmu_ptr, glv_ptr, row_recon_ptr, row_kl_ptr, c_ptr,
    B, D, L, GRAD: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    two_over_b = tl.load(c_ptr)
    neg_inv_b = tl.load(c_ptr + 1)
    neg_half_over_b = tl.load(c_ptr + 2)
    for r in range(ROWS):
        b = pid * ROWS + r
        if b < B:
            acc = tl.zeros([BLOCK_D], dtype=x_ptr.dtype.element_ty)
            for start in range(0, D, BLOCK_D):
                offs = start + tl.arange(0, BLOCK_D)
                m = offs < D
                x = tl.load(x_ptr + b * D + offs, mask=m, other=0.0)
                xr = tl.load(xr_ptr + b * D + offs, mask=m, other=0.0)
                diff = x - xr
                acc += diff * diff
                if GRAD:
                    tl.store(gxr_ptr + b * D + offs, diff * two_over_b, mask=m)
            tl.store(row_recon_ptr + b, tl.sum(acc, axis=0).to(tl.float64))
            lo = tl.arange(0, BLOCK_L)
            lm = lo < L
            mu = tl.load(mu_ptr + b * L + lo, mask=lm, other=0.0)
            lv = tl.load(lv_ptr + b * L + lo, mask=lm, other=0.0)
            eps = tl.load(eps_ptr + b * L + lo, mask=lm, other=0.0)
            tl.store(z_ptr + b * L + lo, mu + tl.exp(0.5 * lv) * eps, mask=lm)
            em1 = _expm1(lv, c_ptr)
            kl = tl.where(lm, mu * mu + (em1 - lv), 0.0)
            tl.store(row_kl_ptr + b, tl.sum(kl, axis=0).to(tl.float64))
            if GRAD:
                tl.store(gmu_ptr + b * L + lo, mu * neg_inv_b, mask=lm)
                tl.store(glv_ptr + b * L + lo, em1 * neg_half_over_b, mask=lm)


def launch(x, x_recon, mu, logvar, eps, z, grads, row_recon, row_kl, consts, rows_per_program: int = 4):
    """Fill z (and grads) and the rows' partial sums; return (recon, kl) as 0-d float64 tensors.
    `consts` is constants(B) as a tensor of the case dtype on the device."""
    import torch

    b, d = x.shape
    lat = mu.shape[1]
    block_d = min(1024, triton.next_power_of_2(d))
    block_l = triton.next_power_of_2(lat)
    gxr, gmu, glv = grads if grads is not None else (z, z, z)  # not written when GRAD is False
    grid = (triton.cdiv(b, rows_per_program),)
    elbo_rows[grid](
        x, x_recon, mu, logvar, eps, z, gxr, gmu, glv, row_recon, row_kl, consts, b, d, lat,
        GRAD=grads is not None, ROWS=rows_per_program, BLOCK_D=block_d, BLOCK_L=block_l,
    )  # fmt: skip
    recon = -torch.sum(row_recon) / b
    kl = 0.5 * torch.sum(row_kl) / b
    return recon, kl
