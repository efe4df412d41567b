"""The Numba kernels: one fused pass per workload, explicit loops, compiled serial and parallel.

This module imports numba at the top; `backends.numba` imports it only inside `prepare`.

`build(parallel)` compiles the same Python source twice: with parallel=False every `prange` is a
plain `range`; with parallel=True the outer `prange` over batch rows (or row chunks) runs on Numba's
thread pool. Reductions never race: each row writes its own partial sum into a float64 array, and
the rows are summed afterwards in one serial float64 loop, in row order, so serial and parallel
give the same bits for elbo and iwae.

Precision: each row's sum is accumulated in the case dtype (float32 rows stay float32, like the
float32 arithmetic around them) and the rows are summed in float64 (see elbolab.model.workloads). Scalar
constants are passed in the case dtype (`zero`, `one`, `half`, ...), because a Python literal such as
2.0 or 1 would promote float32 arithmetic to float64.

fastmath={"reassoc"} only: it lets LLVM reorder the additions of a row's sum, which is what allows
the reduction loops to be vectorised (without it each row sum is one serial chain of dependent
adds). It is the same freedom NumPy's pairwise summation takes and the bounds of elbolab.model.accuracy
allow (they hold any summation order). No 'nnan'/'ninf'/'afn'/'contract': NaN
and inf still propagate, exp/log are the exact library functions, no FMA contraction is introduced.

Sampled eps: np.random.standard_normal() inside the kernel, Numba's own generator (Mersenne
Twister, one state per thread), written into the eps buffer as it is drawn (the lab checks z
against the draw). `seed(s)` seeds the calling thread's state; in the serial kernels
that makes the draws reproducible from case.seed. In the parallel kernels the pool's worker threads
draw from their own states, which Numba seeds independently, so the draws are not reproducible
there (only their distribution is checked anyway).

cache=False: no on-disk cache, so the harness's first_call is the real JIT compile time of the case
(types are inferred and the kernel compiled at the first call, for that call's dtype only).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

FASTMATH = {"reassoc"}
LOG_2PI = math.log(2.0 * math.pi)


@njit(cache=False)
def seed(s):
    """Seed Numba's generator of the calling thread (np.random.seed outside njit seeds NumPy's)."""
    np.random.seed(s)


def build(parallel: bool):
    """The kernels as a dict of Numba dispatchers, serial or parallel (compiled lazily)."""
    jit = njit(parallel=parallel, fastmath=FASTMATH, cache=False, nogil=True)
    serial_jit = njit(fastmath=FASTMATH, cache=False, nogil=True)  # loops too short to share out
    return {
        "elbo": _elbo(jit),
        "iwae": _iwae(jit),
        "vae_step": _vae_step(jit, *_vae_helpers(jit, serial_jit)),
    }


# One factory per kernel: each compiles its kernel with the `jit` it is given (serial or parallel);
# a kernel calls other jitted functions through its factory's closure.


def _elbo(jit):
    @jit
    def elbo(
        x, x_recon, mu, logvar, eps, sampled, with_grad, z, g_xr, g_mu, g_lv, row_recon, row_kl,
        zero, one, half, two_over_b, neg_inv_b, half_over_b,
    ):  # fmt: skip
        """Fills z (and the gradients); returns (recon, kl) in float64."""
        nb, nd = x.shape
        nl = mu.shape[1]
        for b in prange(nb):
            s = zero
            if with_grad:
                for j in range(nd):
                    diff = x[b, j] - x_recon[b, j]
                    s += diff * diff
                    g_xr[b, j] = diff * two_over_b
            else:
                for j in range(nd):
                    diff = x[b, j] - x_recon[b, j]
                    s += diff * diff
            row_recon[b] = s
            k = zero
            for j in range(nl):
                m = mu[b, j]
                lv = logvar[b, j]
                em1 = np.expm1(lv)
                k += m * m + (em1 - lv)  # -(1 + lv - m^2 - e^lv): every term >= 0, no cancellation
                if sampled:  # drawn here, and kept in eps for the check
                    eps[b, j] = np.random.standard_normal()
                z[b, j] = m + np.exp(half * lv) * eps[b, j]
                if with_grad:
                    g_mu[b, j] = m * neg_inv_b
                    g_lv[b, j] = -em1 * half_over_b
            row_kl[b] = k
        recon = 0.0
        kl = 0.0
        for b in range(nb):
            recon += row_recon[b]
            kl += row_kl[b]
        return -recon / nb, 0.5 * kl / nb

    return elbo


def _iwae(jit):
    @jit
    def iwae(x, mu, logvar, eps, w, bias, mean_buf, z_buf, row_lse, zero, half):
        """Rows in len(mean_buf) chunks, each with its own scratch row; online log-sum-exp over K."""
        nk, nb, nl = eps.shape
        nd = x.shape[1]
        nchunks = mean_buf.shape[0]
        for c in prange(nchunks):
            mean = mean_buf[c]
            zr = z_buf[c]
            for b in range(c * nb // nchunks, (c + 1) * nb // nchunks):
                lv_sum = 0.0
                for j in range(nl):
                    lv_sum += logvar[b, j]
                top = -np.inf
                acc = 0.0
                for k in range(nk):
                    zz = zero
                    ee = zero
                    for j in range(nl):
                        e = eps[k, b, j]
                        zj = mu[b, j] + np.exp(half * logvar[b, j]) * e
                        zr[j] = zj
                        zz += zj * zj
                        ee += e * e
                    for i in range(nd):
                        mean[i] = bias[i]
                    for j in range(nl):
                        zj = zr[j]
                        for i in range(nd):
                            mean[i] += zj * w[j, i]
                    rr = zero
                    for i in range(nd):
                        r = x[b, i] - mean[i]
                        rr += r * r
                    log_w = -0.5 * (float(rr) + float(zz) - float(ee) - lv_sum + nd * LOG_2PI)
                    # streaming log-sum-exp: acc = sum_k exp(log_w_k - top), top = max so far
                    if k == 0 or log_w > top:
                        acc = acc * np.exp(top - log_w) + 1.0 if k > 0 else 1.0
                        top = log_w
                    else:
                        acc += np.exp(log_w - top)
                row_lse[b] = top + np.log(acc)
        total = 0.0
        for b in range(nb):
            total += row_lse[b]
        return total / nb - np.log(nk)

    return iwae


def _vae_helpers(jit, serial_jit):
    """The vae_step kernel's helpers: bias + ReLU in place, column sums, SGD updates."""

    @jit
    def bias_relu(a, bias, zero):
        """a = max(a + bias, 0) in place."""
        for b in prange(a.shape[0]):
            for j in range(a.shape[1]):
                v = a[b, j] + bias[j]
                a[b, j] = v if v > zero else zero

    @jit
    def colsum(a, out):
        """out[j] = sum_b a[b, j], columns split into blocks across threads, rows in order."""
        nb, nc = a.shape
        nblocks = (nc + 63) // 64
        for blk in prange(nblocks):
            lo = blk * 64
            hi = min(lo + 64, nc)
            for j in range(lo, hi):
                out[j] = a[0, j]
            for b in range(1, nb):
                for j in range(lo, hi):
                    out[j] += a[b, j]

    @jit
    def sgd2(p, g, new, lr):
        for i in prange(p.shape[0]):
            for j in range(p.shape[1]):
                new[i, j] = p[i, j] - lr * g[i, j]

    @serial_jit
    def sgd1(p, g, new, lr):
        for i in range(p.shape[0]):
            new[i] = p[i] - lr * g[i]

    return bias_relu, colsum, sgd2, sgd1


def _vae_step(jit, bias_relu, colsum, sgd2, sgd1):
    @jit
    def vae_step(x, eps, params, grads, new, scratch, row_part, lr, one, half, inv_b):
        """One SGD step of the MLP VAE, hand-written backprop (as vae_forward_backward).

        Matrix products: np.dot(a, b, out), which Numba lowers to BLAS gemm (through SciPy's BLAS);
        everything elementwise is one fused loop over rows. Returns the loss (float64).
        """
        enc_w, enc_b, mu_w, mu_b, lv_w, lv_b, dec_w, dec_b, out_w, out_b = params
        g_enc_w, g_enc_b, g_mu_w, g_mu_b, g_lv_w, g_lv_b, g_dec_w, g_dec_b, g_out_w, g_out_b = grads
        n_enc_w, n_enc_b, n_mu_w, n_mu_b, n_lv_w, n_lv_b, n_dec_w, n_dec_b, n_out_w, n_out_b = new
        h1, mu, lv, std, z, h3, dlog, d_h3, d_z, d_mu, d_lv, d_h1, d_h1b = scratch
        nb, nd = x.shape
        nh = h1.shape[1]
        nl = mu.shape[1]
        zero = one - one

        # forward
        np.dot(x, enc_w, h1)
        bias_relu(h1, enc_b, zero)
        np.dot(h1, mu_w, mu)
        np.dot(h1, lv_w, lv)
        for b in prange(nb):
            s = zero
            for j in range(nl):
                m = mu[b, j] + mu_b[j]
                v = lv[b, j] + lv_b[j]
                sd = np.exp(half * v)
                mu[b, j] = m
                lv[b, j] = v
                std[b, j] = sd
                z[b, j] = m + sd * eps[b, j]
                s += m * m + (np.expm1(v) - v)  # the KL term, every part >= 0
            row_part[b, 0] = s
        np.dot(z, dec_w, h3)
        bias_relu(h3, dec_b, zero)
        np.dot(h3, out_w, dlog)
        for b in prange(nb):
            s = zero
            for j in range(nd):
                v = dlog[b, j] + out_b[j]
                xv = x[b, j]
                e = np.exp(-abs(v))  # softplus and sigmoid from one exp, overflow-free
                s += xv * v - ((v if v > zero else zero) + np.log1p(e))
                sig = one / (one + e) if v >= zero else e / (one + e)
                dlog[b, j] = (sig - xv) * inv_b  # the logits are not needed any more
            row_part[b, 1] = s
        kl = 0.0
        rec = 0.0
        for b in range(nb):
            kl += row_part[b, 0]
            rec += row_part[b, 1]
        loss = (0.5 * kl - rec) / nb

        # backward
        np.dot(h3.T, dlog, g_out_w)
        colsum(dlog, g_out_b)
        np.dot(dlog, out_w.T, d_h3)
        for b in prange(nb):
            for j in range(nh):
                if not h3[b, j] > zero:
                    d_h3[b, j] = zero
        np.dot(z.T, d_h3, g_dec_w)
        colsum(d_h3, g_dec_b)
        np.dot(d_h3, dec_w.T, d_z)
        for b in prange(nb):
            for j in range(nl):
                dz = d_z[b, j]
                sd = std[b, j]
                d_mu[b, j] = dz + mu[b, j] * inv_b
                d_lv[b, j] = dz * (half * sd * eps[b, j]) + half * np.expm1(lv[b, j]) * inv_b
        np.dot(h1.T, d_mu, g_mu_w)
        colsum(d_mu, g_mu_b)
        np.dot(h1.T, d_lv, g_lv_w)
        colsum(d_lv, g_lv_b)
        np.dot(d_mu, mu_w.T, d_h1)
        np.dot(d_lv, lv_w.T, d_h1b)
        for b in prange(nb):
            for j in range(nh):
                d_h1[b, j] = d_h1[b, j] + d_h1b[b, j] if h1[b, j] > zero else zero
        np.dot(x.T, d_h1, g_enc_w)
        colsum(d_h1, g_enc_b)

        # SGD, out of place
        sgd2(enc_w, g_enc_w, n_enc_w, lr)
        sgd1(enc_b, g_enc_b, n_enc_b, lr)
        sgd2(mu_w, g_mu_w, n_mu_w, lr)
        sgd1(mu_b, g_mu_b, n_mu_b, lr)
        sgd2(lv_w, g_lv_w, n_lv_w, lr)
        sgd1(lv_b, g_lv_b, n_lv_b, lr)
        sgd2(dec_w, g_dec_w, n_dec_w, lr)
        sgd1(dec_b, g_dec_b, n_dec_b, lr)
        sgd2(out_w, g_out_w, n_out_w, lr)
        sgd1(out_b, g_out_b, n_out_b, lr)
        return loss

    return vae_step
