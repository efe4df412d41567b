"""Backends with one realistic bug each, to prove the checker's power (tests/test_mutations.py).

Registered through ELBOLAB_BACKENDS ("tests.mutants:z_scale,..."), so they run through the real
runner in worker processes like any plugin. Each is a small NumPy kernel written the way a fused
kernel is (a row loop's bounds, a vector tail, an accumulator's dtype), with one thing wrong:

  z_scale          z = mu + exp(logvar) * eps: the 1/2 of the standard deviation dropped
  z_zero           eps drawn, z never written (left at its initial zeros)
  z_nan            z computed from an uninitialised buffer: NaN
  exp_poly4        exp by a degree-4 Taylor polynomial (fast, and wrong beyond a few digits)
  tail_skip        the last element of a row skipped when D is not a multiple of the vector width 8
  row_skip         the row loop stops one row short (its z, gradients and terms never computed)
  f32_accumulation float64 case, each row's 8 vector lanes accumulated in float32
  grad_sign        one gradient element with the wrong sign (the last of grad_logvar)
  iwae_drop_logvar IWAE's log q(z|x) without its -0.5 * sum(logvar) term
  vae_shared       vae_step with std = exp(logvar) in the helper shared by forward and backward
  naive_sum        recon summed by one running float32 accumulator over all B*D terms, in order
                   (which the workload contract rules out: at batch 8192 it loses 2 of float32's
                   7 digits, more than summing a quarter of the rows does)

and the float32 bugs that hid under the worst-case bounds (issue 24), each a piece of work missing:

  recon_half       recon from the first half of the B*D terms, doubled (one worker's share lost
                   and the rest rescaled; at B = 1 half of the row)
  recon_quarter    the same from the first quarter, times 4
  vae_zero_enc     vae_step with the encoder's gradients returned as zeros and the encoder left
                   un-updated (vae_zero_<layer> for the others: mu, logvar, dec, out)
  vae_half_batch   vae_step's backward over the first half of the batch, normalised by its rows
                   (no bug at B = 1)
  draw_flip        eps a fixed +-1 pattern whose sign flips each call
  draw_alternate   two stored draws used in turn
  draw_uniform     uniform draws scaled to unit variance
  draw_reused      one stored draw every call
  draw_wide        draws from N(0, 1.2^2)

and the correct ones, which must stay `ok`:

  correct          the same kernels without a bug
  row_naive        recon as each row's running float32 sum, the rows in a running float32 sum too:
                   the least accurate summation the contract allows
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from backends.numpy import backend as numpy_backend
from elbolab.model.backend import Backend, Prepared
from elbolab.model.case import Case
from elbolab.model.workloads import VAE_PARAMS, WORKLOADS

VECTOR = 8  # the SIMD width whose tail `tail_skip` gets wrong
SUBSET = {"recon_half": 2, "recon_quarter": 4}  # the share of recon's terms summed, inverted
VAE_LAYERS = ("enc", "mu", "logvar", "dec", "out")


def _draw(bug: str, rng: np.random.Generator, shape: tuple[int, int], dtype):
    """The eps draw of one call: fresh standard normals, or the bug's non-draw."""
    if bug == "draw_flip":
        pattern = np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(dtype)
        calls = iter(range(1 << 62))
        return lambda: pattern * dtype.type(-1) ** next(calls)
    if bug in ("draw_alternate", "draw_reused"):
        stored = [rng.standard_normal(shape).astype(dtype) for _ in range(2)]
        calls = iter(range(1 << 62))
        return lambda: stored[next(calls) % 2 if bug == "draw_alternate" else 0]
    if bug == "draw_uniform":
        return lambda: (rng.uniform(-1.0, 1.0, shape) * np.sqrt(3.0)).astype(dtype)
    if bug == "draw_wide":
        return lambda: (1.2 * rng.standard_normal(shape)).astype(dtype)
    return lambda: rng.standard_normal(shape).astype(dtype)


def _exp(v, bug):
    if bug == "exp_poly4":
        return 1 + v + v * v / 2 + v**3 / 6 + v**4 / 24
    return np.exp(v)


def _prepare_elbo(case: Case, inputs: dict, bug: str) -> Prepared:
    x, xr, mu, lv = (inputs[k] for k in ("x", "x_recon", "mu", "logvar"))
    dt = x.dtype.type
    b, d = x.shape
    rows = b - 1 if bug == "row_skip" else b
    cols = d - 1 if bug == "tail_skip" and d % VECTOR else d
    grads = WORKLOADS[case.workload].has_gradients
    sampled = case.variant == "eps=sampled"
    draw = _draw(bug, np.random.default_rng(case.seed), mu.shape, x.dtype)
    z = np.zeros_like(mu)
    g_xr, g_mu, g_lv = np.zeros_like(x), np.zeros_like(mu), np.zeros_like(lv)
    out: dict = {"eps": inputs.get("eps")}

    def call():
        if sampled:
            out["eps"] = draw()
        eps = out["eps"]
        if bug == "z_nan":
            z[:] = np.nan
        elif bug != "z_zero":
            sd = _exp(lv[:rows] if bug == "z_scale" else dt(0.5) * lv[:rows], bug)
            z[:rows] = mu[:rows] + sd * eps[:rows]
        diff = x[:rows, :cols] - xr[:rows, :cols]
        sq = diff * diff
        if bug == "f32_accumulation" and cols % VECTOR == 0:
            # a vector kernel whose 8 lane accumulators were declared float32: each lane sums its
            # column stripe in order, then the lanes are added
            lanes = np.cumsum(sq.reshape(rows, -1, VECTOR).astype(np.float32), axis=1, dtype=np.float32)[
                :, -1
            ]
            row_sums = lanes.sum(axis=1, dtype=np.float32).astype(np.float64)
        elif bug == "naive_sum":
            row_sums = np.cumsum(sq.ravel(), dtype=np.float32)[-1:]
        elif bug == "row_naive":
            row_sums = np.cumsum(np.cumsum(sq, axis=1, dtype=sq.dtype)[:, -1], dtype=sq.dtype)[-1:]
        elif bug in SUBSET:
            terms = sq.ravel()
            row_sums = terms[: terms.size // SUBSET[bug]].sum(keepdims=True) * dt(SUBSET[bug])
        else:
            row_sums = sq.sum(axis=1)
        out["recon"] = -np.sum(row_sums) / b
        m, v = mu[:rows], lv[:rows]
        out["kl"] = 0.5 * np.sum(m * m + (np.expm1(v) - v)) / b
        if grads:
            g_xr[:rows, :cols] = diff * dt(2.0 / b)
            g_mu[:rows] = m * dt(-1.0 / b)
            g_lv[:rows] = -np.expm1(v) * dt(0.5 / b)
            if bug == "grad_sign":
                g_lv[-1, -1] = -g_lv[-1, -1]

    def outputs():
        res = {"z": z, "recon": out["recon"], "kl": out["kl"], "elbo": out["recon"] - out["kl"]}
        if sampled:
            res["eps"] = out["eps"]
        if grads:
            res.update(grad_x_recon=g_xr, grad_mu=g_mu, grad_logvar=g_lv)
        return res

    return Prepared(call=call, outputs=outputs)


def _prepare_iwae(case: Case, inputs: dict, bug: str) -> Prepared:
    x, mu, lv, eps, w, bias = (inputs[k] for k in ("x", "mu", "logvar", "eps", "dec_w", "dec_b"))
    k, _, _ = eps.shape
    out: dict = {}

    def call():
        z = mu + np.exp(0.5 * lv) * eps
        resid = x - (z @ w + bias)
        log_q = -0.5 * (eps * eps).sum(-1) - (0 if bug == "iwae_drop_logvar" else 0.5 * lv.sum(-1))
        log_w = (
            -0.5 * (resid * resid).sum(-1)
            - 0.5 * (z * z).sum(-1)
            - log_q
            - 0.5 * x.shape[1] * np.log(2 * np.pi)
        )
        top = log_w.max(axis=0)
        out["iwae"] = np.mean(top + np.log(np.exp(log_w - top).sum(axis=0))) - np.log(k)

    return Prepared(call=call, outputs=lambda: {"iwae": np.array(out["iwae"])})


def _vae(x, eps, p: dict, bug: str) -> tuple[float, dict]:
    """The NumPy backend's forward and backward, with the bug of vae_shared in the std helper."""
    b = x.shape[0]
    h1_pre = x @ p["enc_w"] + p["enc_b"]
    h1 = np.maximum(h1_pre, 0)
    mu, logvar = h1 @ p["mu_w"] + p["mu_b"], h1 @ p["logvar_w"] + p["logvar_b"]
    # the helper forward and backward share: the standard deviation (vae_shared drops the 1/2)
    std = np.exp(logvar if bug == "vae_shared" else logvar / 2)
    z = mu + std * eps
    h3_pre = z @ p["dec_w"] + p["dec_b"]
    h3 = np.maximum(h3_pre, 0)
    logits = h3 @ p["out_w"] + p["out_b"]
    loss = (
        0.5 * np.sum(mu * mu + np.expm1(logvar) - logvar) - np.sum(x * logits - np.logaddexp(0, logits))
    ) / b
    d_logits = (1 / (1 + np.exp(-logits)) - x) / b
    g = {"out_w": h3.T @ d_logits, "out_b": d_logits.sum(0)}
    d_h3 = (d_logits @ p["out_w"].T) * (h3_pre > 0)
    g["dec_w"], g["dec_b"] = z.T @ d_h3, d_h3.sum(0)
    d_z = d_h3 @ p["dec_w"].T
    d_mu = d_z + mu / b
    d_logvar = 0.5 * (d_z * std * eps + np.expm1(logvar) / b)
    g["mu_w"], g["mu_b"] = h1.T @ d_mu, d_mu.sum(0)
    g["logvar_w"], g["logvar_b"] = h1.T @ d_logvar, d_logvar.sum(0)
    d_h1 = (d_mu @ p["mu_w"].T + d_logvar @ p["logvar_w"].T) * (h1_pre > 0)
    g["enc_w"], g["enc_b"] = x.T @ d_h1, d_h1.sum(0)
    return float(loss), g


def _prepare_vae(case: Case, inputs: dict, bug: str) -> Prepared:
    x, eps, lr = inputs["x"], inputs["eps"], inputs["lr"].dtype.type(inputs["lr"])
    params = {p: inputs[p] for p in VAE_PARAMS}
    out: dict = {}

    def call():
        loss, grads = _vae(x, eps, params, bug)
        if bug == "vae_half_batch":  # the backward's row loop covers the first half of the batch
            half = max(1, x.shape[0] // 2)
            grads = _vae(x[:half], eps[:half], params, bug)[1]
        if bug.startswith("vae_zero_"):  # the layer's gradients zeroed, its weights not updated
            layer = bug.removeprefix("vae_zero_")
            grads.update(
                {
                    f"{layer}_w": np.zeros_like(grads[f"{layer}_w"]),
                    f"{layer}_b": np.zeros_like(grads[f"{layer}_b"]),
                }
            )
        out["loss"] = np.array(loss)
        out.update({f"grad_{p}": grads[p] for p in VAE_PARAMS})
        out.update({f"new_{p}": params[p] - lr * grads[p] for p in VAE_PARAMS})

    return Prepared(call=call, outputs=lambda: dict(out))


def _mutant(bug: str, workloads: tuple[str, ...]) -> Backend:
    preparers = {
        "elbo": _prepare_elbo,
        "elbo_grad": _prepare_elbo,
        "iwae": _prepare_iwae,
        "vae_step": _prepare_vae,
    }

    def bound(prepare):
        return lambda case, inputs: prepare(case, inputs, bug)

    return replace(
        numpy_backend,
        name=f"mutant-{bug.replace('_', '-')}",
        description=f"test backend with one bug: {bug}",
        preparers={w: bound(preparers[w]) for w in workloads},
        threaded=False,
    )


ELBOS = ("elbo", "elbo_grad")
z_scale = _mutant("z_scale", ELBOS)
z_zero = _mutant("z_zero", ELBOS)
z_nan = _mutant("z_nan", ELBOS)
exp_poly4 = _mutant("exp_poly4", ELBOS)
tail_skip = _mutant("tail_skip", ELBOS)
row_skip = _mutant("row_skip", ELBOS)
f32_accumulation = _mutant("f32_accumulation", ("elbo",))
grad_sign = _mutant("grad_sign", ("elbo_grad",))
iwae_drop_logvar = _mutant("iwae_drop_logvar", ("iwae",))
vae_shared = _mutant("vae_shared", ("vae_step",))
naive_sum = _mutant("naive_sum", ("elbo",))
recon_half = _mutant("recon_half", ELBOS)
recon_quarter = _mutant("recon_quarter", ELBOS)
vae_half_batch = _mutant("vae_half_batch", ("vae_step",))
VAE_ZERO = {layer: _mutant(f"vae_zero_{layer}", ("vae_step",)) for layer in VAE_LAYERS}
vae_zero_enc = VAE_ZERO["enc"]
DRAWS = ("draw_flip", "draw_alternate", "draw_uniform", "draw_reused", "draw_wide")
draw_flip, draw_alternate, draw_uniform, draw_reused, draw_wide = (_mutant(bug, ELBOS) for bug in DRAWS)
correct = _mutant("correct", ("elbo", "elbo_grad", "iwae", "vae_step"))  # the same kernels without a bug
row_naive = _mutant("row_naive", ("elbo",))

ALL = ("z_scale", "z_zero", "z_nan", "exp_poly4", "tail_skip", "row_skip", "f32_accumulation",
       "grad_sign", "iwae_drop_logvar", "vae_shared", "naive_sum", "recon_half", "recon_quarter",
       "vae_zero_enc", "vae_half_batch", *DRAWS, "correct", "row_naive")  # fmt: skip
