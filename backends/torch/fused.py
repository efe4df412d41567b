"""The ELBO (elbo and elbo_grad, float32 and float64) as one Triton kernel: one launch per call.

Each program takes a tile of ROWS rows: it streams their x and x_recon once (the squared
differences summed in the case dtype, grad_x_recon written in the same pass, in chunks of BLOCK_D
columns so any D works), then their latents (eps loaded, or drawn in the kernel; z; the KL term
mu^2 + e^lv - 1 - lv with e^lv - 1 computed without cancellation near 0; the gradients), and writes
the tile's two partial sums in float64. The final reduction is in the same launch: every program
takes a ticket from a counter (an atomic add, acquire-release at GPU scope, after a barrier so the
whole program's partial-sum store is ordered before it), and the program that draws the last
ticket adds all the partials in program order in float64 (deterministic, whatever the order in
which programs finish), writes recon, kl and elbo, and resets the counter for the next call. So a
call is one kernel launch and no ATen op after it. On a GPU each further op would cost ~7 us of host
time, against a floor of ~16 us for the whole elbo call at B=8192 in float32 on an H100 (54 MB at
its ~3.35 TB/s; issue 29's estimates and the data sheet, not measurements of this kernel).

eps=sampled draws eps inside the kernel (Triton's Philox, tl.randn) keyed by a seed that lives on
the device and that the last program advances, so every call (and every replay of a CUDA graph
holding the launch) draws fresh values; the kernel also writes the eps it drew, for the check.

Indices into the [B, D] and [B, L] arrays are 64-bit (_row_offsets): B*D passes 2^31 at
B = 2.74M for D = 784, where a 32-bit product would wrap to another row's memory.

This module imports triton at the top; `backends.torch` imports it only for the CUDA variants. The
same kernel runs on the CPU in Triton's interpreter (TRITON_INTERPRET=1, set before triton is
imported), which is how the tests check it where there is no GPU; `interpreted()` says whether
that is what this process got, so the CUDA variants can refuse it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import triton
import triton.language as tl

# The constants travel in a small array of the case dtype (Triton types a Python float literal as
# float32, which would cost a float64 kernel its digits): the three scale factors, then the Taylor
# coefficients of e^x - 1 from x^1 to x^14 (truncation below 1e-17 of the value where |x| < 0.5).
TAYLOR_TERMS = 14
TILE = 4096  # elements of x per program and chunk: ROWS x BLOCK_D
MAX_ROWS = 32  # keeps the latent tile (ROWS x BLOCK_L) in registers at small D
MAX_BLOCK_D = 1024
MAX_BLOCK_P = 1024  # partial sums added per step of the final reduction


def constants(b: int) -> list[float]:
    return [2.0 / b, -1.0 / b, -0.5 / b] + [1.0 / math.factorial(k) for k in range(1, TAYLOR_TERMS + 1)]


@triton.jit
def _row_offsets(rows, n):
    """Where each row starts in a row-major array of n columns, in 64 bits."""
    return rows.to(tl.int64) * n


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
def elbo_fused(
    x_ptr, xr_ptr, mu_ptr, lv_ptr, eps_ptr, z_ptr, gxr_ptr, gmu_ptr, glv_ptr, part_ptr, state_ptr, out_ptr,
    c_ptr, B, D, L, GRAD: tl.constexpr, SAMPLE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    rmask = rows < B

    # the reconstruction term, one pass over x and x_recon
    xrow = _row_offsets(rows, D)[:, None]
    acc = tl.zeros([ROWS, BLOCK_D], dtype=x_ptr.dtype.element_ty)
    two_over_b = tl.load(c_ptr)
    for start in range(0, D, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)
        m = rmask[:, None] & (cols < D)[None, :]
        off = xrow + cols[None, :]  # 64-bit, like every block offset here
        x = tl.load(x_ptr + off, mask=m, other=0.0)
        xr = tl.load(xr_ptr + off, mask=m, other=0.0)
        diff = x - xr
        acc += diff * diff
        if GRAD:
            tl.store(gxr_ptr + off, diff * two_over_b, mask=m)
    recon_part = tl.sum(tl.sum(acc, axis=1).to(tl.float64), axis=0)

    # the latents: z, the KL term, their gradients
    lcols = tl.arange(0, BLOCK_L)
    lm = rmask[:, None] & (lcols < L)[None, :]
    loff = _row_offsets(rows, L)[:, None] + lcols[None, :]
    mu = tl.load(mu_ptr + loff, mask=lm, other=0.0)
    lv = tl.load(lv_ptr + loff, mask=lm, other=0.0)
    if SAMPLE:
        # keyed by the device-side seed (read before this program's ticket, so the last program's
        # update below cannot race with it); the offset is the element's index (B*L < 2^31, see launch)
        seed = tl.load(state_ptr + 1)
        eps = tl.randn(seed, loff.to(tl.int32)).to(mu.dtype)
        tl.store(eps_ptr + loff, eps, mask=lm)
    else:
        eps = tl.load(eps_ptr + loff, mask=lm, other=0.0)
    tl.store(z_ptr + loff, mu + tl.exp(0.5 * lv) * eps, mask=lm)
    em1 = _expm1(lv, c_ptr)
    kl = tl.where(lm, mu * mu + (em1 - lv), 0.0)
    kl_part = tl.sum(tl.sum(kl, axis=1).to(tl.float64), axis=0)
    if GRAD:
        tl.store(gmu_ptr + loff, mu * tl.load(c_ptr + 1), mask=lm)
        tl.store(glv_ptr + loff, em1 * tl.load(c_ptr + 2), mask=lm)

    # the final reduction in the same launch: the program with the last ticket adds the partials
    tl.store(part_ptr + pid, recon_part)
    tl.store(part_ptr + nprog + pid, kl_part)
    tl.debug_barrier()  # every thread's part of this program done before its ticket is taken
    ticket = tl.atomic_add(state_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == nprog - 1:
        sum_r = tl.zeros([BLOCK_P], dtype=tl.float64)
        sum_k = tl.zeros([BLOCK_P], dtype=tl.float64)
        for start in range(0, nprog, BLOCK_P):
            p = start + tl.arange(0, BLOCK_P).to(tl.int64)  # every block offset 64-bit, as above
            pm = p < nprog
            # .cg: from L2, where the other programs' stores are, never a stale L1 line
            sum_r += tl.load(part_ptr + p, mask=pm, other=0.0, cache_modifier=".cg")
            sum_k += tl.load(part_ptr + nprog + p, mask=pm, other=0.0, cache_modifier=".cg")
        recon = -tl.sum(sum_r, axis=0) / B
        kl_total = 0.5 * tl.sum(sum_k, axis=0) / B
        tl.store(out_ptr, recon)
        tl.store(out_ptr + 1, kl_total)
        tl.store(out_ptr + 2, recon - kl_total)
        tl.store(state_ptr, 0)  # the counter, ready for the next call (and the next graph replay)
        if SAMPLE:
            tl.store(state_ptr + 1, seed + 1)  # a fresh key for the next call's eps


@dataclass(frozen=True)
class Shape:
    """How a [B, D] / [B, L] problem is tiled: ROWS rows a program, BLOCK_D columns a chunk."""

    programs: int
    rows: int
    block_d: int
    block_l: int
    block_p: int

    @staticmethod
    def of(b: int, d: int, lat: int) -> Shape:
        block_d = min(MAX_BLOCK_D, triton.next_power_of_2(d))
        rows = max(1, min(MAX_ROWS, TILE // block_d, triton.next_power_of_2(b)))
        programs = triton.cdiv(b, rows)
        block_p = min(MAX_BLOCK_P, triton.next_power_of_2(programs))
        return Shape(programs, rows, block_d, triton.next_power_of_2(lat), block_p)


@dataclass(frozen=True)
class Buffers:
    """What one call reads and writes besides the case's own arrays, allocated once (prepare):
    `partials` [2 * programs] float64; `state` int64 [2] (the ticket counter, 0 between calls, and
    the eps seed); `out` float64 [3] (recon, kl, elbo); `consts` constants(B) in the case dtype."""

    partials: object
    state: object
    out: object
    consts: object


def buffers(torch, shape: Shape, b: int, dtype, device, seed: int) -> Buffers:
    return Buffers(
        partials=torch.zeros(2 * shape.programs, dtype=torch.float64, device=device),
        state=torch.tensor([0, seed % 2**62], dtype=torch.int64, device=device),
        out=torch.zeros(3, dtype=torch.float64, device=device),
        consts=torch.tensor(constants(b), dtype=dtype, device=device),
    )


def launch(x, x_recon, mu, logvar, eps, z, grads, sampled: bool, shape: Shape, buf: Buffers) -> None:
    """One call: z (and grads, and eps when `sampled`) and buf.out = (recon, kl, elbo), in one
    kernel launch. `grads` is (grad_x_recon, grad_mu, grad_logvar) or None."""
    b, d = x.shape
    lat = mu.shape[1]
    gxr, gmu, glv = grads if grads is not None else (z, z, z)  # not written when GRAD is False
    elbo_fused[(shape.programs,)](
        x, x_recon, mu, logvar, eps, z, gxr, gmu, glv, buf.partials, buf.state, buf.out, buf.consts, b, d, lat,
        GRAD=grads is not None, SAMPLE=sampled, ROWS=shape.rows, BLOCK_D=shape.block_d, BLOCK_L=shape.block_l,
        BLOCK_P=shape.block_p,
    )  # fmt: skip


def check_sizes(b: int, d: int, lat: int, sampled: bool) -> None:
    """Sizes the kernel cannot take, as a ValueError a person can act on."""
    if sampled and b * lat >= 2**31:
        raise ValueError(f"eps=sampled: B*L = {b * lat} draws, the in-kernel Philox offsets are 32-bit")
    if triton.cdiv(b, Shape.of(b, d, lat).rows) >= 2**31:
        raise ValueError(f"B = {b}: more programs than a launch grid holds")


def interpreted() -> bool:
    """Whether this process's Triton runs kernels in its CPU interpreter (TRITON_INTERPRET was set
    when triton.jit decorated them): what the tests want, never what a CUDA measurement may get."""
    return not isinstance(elbo_fused, triton.runtime.jit.JITFunction)
