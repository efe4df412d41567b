"""Workload definitions: the contract every backend implements.

A workload knows how to make its inputs (seeded, identical for every backend), how to compute the
float64 reference on exactly those inputs, which outputs a backend must return, how much memory
traffic and arithmetic one call must do (for the roofline), and how to judge a backend's answer.

Shapes (B batch, D input_dim, L latent_dim, H hidden_dim, K samples), all C-contiguous, one dtype:

elbo        in:  x, x_recon [B,D]; mu, logvar [B,L]; eps [B,L] (absent when variant is eps=sampled)
            out: z [B,L]; recon, kl, elbo (scalars)
elbo_grad   as elbo, plus out: grad_x_recon [B,D], grad_mu [B,L], grad_logvar [B,L]  (of `elbo`)
iwae        in:  x [B,D]; mu, logvar [B,L]; eps [K,B,L]; dec_w [L,D]; dec_b [D]
            out: iwae (scalar)
vae_step    in:  x [B,D] in [0,1]; eps [B,L]; the ten parameters of VAE_PARAMS; lr (0-d array)
            out: loss (scalar, negative ELBO averaged over the batch), grad_<p> and new_<p> per param

Backends return outputs as NumPy arrays (scalars as 0-d arrays or Python floats).
Reductions over large arrays in float32 must not lose precision to a single running float32 sum:
accumulate each row in the case dtype and the rows in float64, or sum pairwise (as NumPy does).
The checker holds a sum over a whole array to that (elbolab.model.accuracy): one running float32 sum
over the 6.4 M terms of recon at batch 8192 loses 2 of float32's 7 digits, more than summing a
quarter of the rows would, and is `incorrect`.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import shutil
import weakref
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from elbolab.model.accuracy import (
    DIRECTIONS,
    Tracked,
    compare_outputs,
    exp,
    expm1,
    logsumexp,
    masked,
    relu,
    sigmoid,
    softplus,
    unit_roundoff,
)
from elbolab.model.case import Case
from elbolab.model.measurement import Check, Cost

LOG_2PI = math.log(2.0 * math.pi)

# Parameter names and shapes of the vae_step MLP (encoder D->H->(mu, logvar), decoder L->H->D).
VAE_PARAMS: tuple[str, ...] = (
    "enc_w", "enc_b", "mu_w", "mu_b", "logvar_w", "logvar_b", "dec_w", "dec_b", "out_w", "out_b",
)  # fmt: skip


def vae_param_shapes(d: int, h: int, latent: int) -> dict[str, tuple[int, ...]]:
    return {
        "enc_w": (d, h), "enc_b": (h,),
        "mu_w": (h, latent), "mu_b": (latent,),
        "logvar_w": (h, latent), "logvar_b": (latent,),
        "dec_w": (latent, h), "dec_b": (h,),
        "out_w": (h, d), "out_b": (d,),
    }  # fmt: skip


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    variants: tuple[str, ...]
    make_inputs: Callable[[Case], dict[str, np.ndarray]]
    reference: Callable[[Mapping[str, np.ndarray], Case], dict[str, Tracked]]
    cost: Callable[[Case], Cost]
    outputs: Callable[[Case], tuple[str, ...]]
    # float64 values a case holds at its peak (inputs, the backend's buffers, the reference)
    peak_values: Callable[[Case], int]
    # outputs that depend on eps, which a backend draws itself when eps is sampled inside the call
    # (it then also returns the 'eps' it drew, and these are checked against that draw); the rest
    # of the reference does not depend on eps (reference() without eps gives it), and
    # draw_reference(inputs with the backend's eps) gives these alone
    sampled_outputs: tuple[str, ...] = ()
    draw_reference: Callable[[Mapping[str, np.ndarray], Case], dict[str, Tracked]] | None = None
    # whether the workload returns gradients (backends with autograd run a backward pass)
    has_gradients: bool = False
    # random directions each non-scalar output is also checked along (elbolab.model.accuracy): for
    # outputs built by matrix products, where a zeroed or partial layer must not hide in the bounds
    directions: int = 0

    def peak_bytes(self, case: Case) -> int:
        """Memory a case needs at its peak (without making anything), to refuse sizes that won't fit."""
        return 8 * self.peak_values(case)


# --------------------------------------------------------------------------------------- inputs


def _rng(case: Case) -> np.random.Generator:
    # The seed depends on what the data is (workload, sizes, seed), never on backend or dtype, so
    # every backend and both dtypes see the same values (float32 inputs are the float64 ones cast).
    key = f"{case.workload}|{case.batch}|{case.input_dim}|{case.latent_dim}|{case.hidden_dim}|{case.importance_samples}"
    return np.random.default_rng([case.seed, zlib.crc32(key.encode())])


def input_set(case: Case, k: int) -> dict[str, np.ndarray]:
    """The k-th of a case's distinct input sets (0: the case's own, make_inputs(case)), of the same
    shapes and distributions, from another seed: what the harness rotates the timed calls through,
    so that a call cannot return what an earlier call computed."""
    workload = WORKLOADS[case.workload]
    if k == 0:
        return workload.make_inputs(case)
    return workload.make_inputs(replace(case, seed=(case.seed + 7_919 * k) % 2**63))


SHARED_INPUT_BYTES = 4 << 20  # a row block of x at least this large: input sets worth sharing


def shared_input_set(case: Case, k: int) -> dict[str, np.ndarray]:
    """input_set(case, k), made once per run where it is large and read back by every other worker
    that needs it (from the folder the runner names: REFERENCE_CACHE_ENV), read-only. Making one
    of elbo's sets at batch 8192 and copying it took 0.15-0.5 s; mapping and copying it, 0.04 s. Each set is
    a folder of .npy files renamed into place whole, so a reader finds all of it or none; what is
    read must be what input_set makes (the key is everything it is made from), and the parent
    checks every answer against inputs it made itself (elbolab.measure.evidence.References)."""
    folder = os.environ.get(REFERENCE_CACHE_ENV)
    if not folder or case.batch * case.input_dim * np.dtype(case.dtype).itemsize < SHARED_INPUT_BYTES:
        return input_set(case, k)
    key = hashlib.sha256(json.dumps(dict(_data_spec(case), set=k), sort_keys=True).encode()).hexdigest()[:32]
    where = Path(folder) / f"inputs-{key}"
    try:
        names = json.loads((where / "names.json").read_text())
        # mapped, not read: the pages come from the page cache (a read copied 100 MB into fresh
        # pages, 0.3 s, no faster than making the set); they are only ever copied from
        return {name: np.load(where / f"{i}.npy", mmap_mode="r") for i, name in enumerate(names)}
    except (OSError, ValueError):
        pass  # not made yet (or not readable: made again)
    made = input_set(case, k)
    tmp = Path(folder) / f".inputs-{key}.{os.getpid()}"
    try:
        tmp.mkdir()
        for i, value in enumerate(made.values()):
            np.save(tmp / f"{i}.npy", value)
        (tmp / "names.json").write_text(json.dumps(list(made)))
        os.rename(tmp, where)  # whole or absent; another worker's copy may be there first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk, or a copy already there: only sharing lost
    return made


def _cast(arrays: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=dtype, order="C") for k, v in arrays.items()}


def _elbo_inputs(case: Case) -> dict[str, np.ndarray]:
    rng = _rng(case)
    b, d, lat = case.batch, case.input_dim, case.latent_dim
    arrays = {
        "x": rng.random((b, d)),
        "x_recon": rng.random((b, d)),
        "mu": rng.standard_normal((b, lat)),
        "logvar": 0.5 * rng.standard_normal((b, lat)),
        "eps": rng.standard_normal((b, lat)),
    }
    if case.variant == "eps=sampled":
        del arrays["eps"]
    return _cast(arrays, case.dtype)


def _iwae_inputs(case: Case) -> dict[str, np.ndarray]:
    rng = _rng(case)
    b, d, lat, k = case.batch, case.input_dim, case.latent_dim, case.importance_samples
    return _cast(
        {
            "x": rng.random((b, d)),
            "mu": rng.standard_normal((b, lat)),
            # a trained encoder's posterior is narrower than the prior: log-variances below 0
            "logvar": -1.0 + 0.5 * rng.standard_normal((b, lat)),
            "eps": rng.standard_normal((k, b, lat)),
            "dec_w": rng.standard_normal((lat, d)) / math.sqrt(lat),
            "dec_b": 0.5 + 0.1 * rng.standard_normal(d),
        },
        case.dtype,
    )


def init_vae_params(d: int, h: int, latent: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Glorot-uniform weights, small biases: the same initial VAE for every backend."""
    params = {}
    for name, shape in vae_param_shapes(d, h, latent).items():
        if len(shape) == 2:
            limit = math.sqrt(6.0 / (shape[0] + shape[1]))
            params[name] = rng.uniform(-limit, limit, shape)
        else:
            params[name] = 0.01 * rng.standard_normal(shape)
    return params


def _vae_inputs(case: Case) -> dict[str, np.ndarray]:
    rng = _rng(case)
    b, d, lat, h = case.batch, case.input_dim, case.latent_dim, case.hidden_dim
    arrays = {"x": rng.random((b, d)), "eps": rng.standard_normal((b, lat))}
    arrays.update(init_vae_params(d, h, lat, rng))
    arrays["lr"] = np.array(0.05)
    return _cast(arrays, case.dtype)


# The memory a case holds at its peak, in float64 values, to refuse sizes that would not fit. The
# float64 reference with its running error bounds dominates (every intermediate carries a value and
# two bounds, plus numpy's temporaries), whatever the case dtype; the multipliers are the number of
# arrays of the largest shape alive at the peak, measured as the peak RSS of a fresh worker running
# the case (tests/test_memory.py holds every workload to within 1.5x of this).


def _elbo_peak_values(case: Case) -> int:
    arrays = 17 if WORKLOADS[case.workload].has_gradients else 16
    return arrays * case.batch * case.input_dim + 20 * case.batch * case.latent_dim


def _iwae_peak_values(case: Case) -> int:
    b, d, lat, k = case.batch, case.input_dim, case.latent_dim, case.importance_samples
    return 10 * k * b * d + 20 * k * b * lat + 6 * b * d + 4 * lat * d


def _vae_peak_values(case: Case) -> int:
    b, d, lat, h = case.batch, case.input_dim, case.latent_dim, case.hidden_dim
    params = sum(math.prod(s) for s in vae_param_shapes(d, h, lat).values())
    return 16 * b * (d + h) + 40 * b * lat + 10 * params


# ------------------------------------------------------------------------------------ references
#
# The references are float64 and written with elbolab.model.accuracy.Tracked values, so every output
# carries the magnitude and rounding depth its tolerance is derived from. They share no code with
# any backend (the NumPy backend has its own kernels); the tests check them against finite
# differences and against a higher-precision (long double / math.fsum) evaluation.


def _tracked(inputs: Mapping[str, np.ndarray], case: Case) -> dict[str, Tracked]:
    """The inputs (exact in the case dtype) as float64 values tracked in the case dtype's arithmetic."""
    u = unit_roundoff(case.dtype)
    return {k: Tracked(np.asarray(v, dtype=np.float64), u=u) for k, v in inputs.items()}


def half_excess(lv: Tracked) -> Tracked:
    """e^lv - 1 - lv, which is >= 0: the KL term without the cancellation of 1 + lv - e^lv.

    Careful arithmetic computes it as expm1(lv) - lv; near lv = 0 the plain 1 + lv - e^lv loses
    most digits: valid, but flagged as less accurate (elbolab.model.accuracy)."""
    return expm1(lv) - lv


def elbo_reference(inputs: Mapping[str, np.ndarray], case: Case) -> dict[str, Tracked]:
    a = _tracked(inputs, case)
    x, x_recon, mu, logvar = a["x"], a["x_recon"], a["mu"], a["logvar"]
    b = x.shape[0]
    out: dict[str, Tracked] = {}
    if "eps" in a:  # given, or the backend's own draw when eps is sampled inside the call
        out.update(elbo_draw_reference(inputs, case))
    diff = x - x_recon
    recon = -(diff * diff).sum() * (1.0 / b)
    kl = (mu * mu + half_excess(logvar)).sum() * (0.5 / b)
    out.update(recon=recon, kl=kl, elbo=recon - kl)
    if WORKLOADS[case.workload].has_gradients:
        out["grad_x_recon"] = diff * (2.0 / b)
        out["grad_mu"] = mu * (-1.0 / b)
        out["grad_logvar"] = -expm1(logvar) * (0.5 / b)
    return out


def elbo_draw_reference(inputs: Mapping[str, np.ndarray], case: Case) -> dict[str, Tracked]:
    """The outputs of elbo that depend on eps (its sampled_outputs): z alone. The rest of the
    reference does not change with a backend's draw, so it is made once per input set."""
    a = _tracked({k: inputs[k] for k in ("mu", "logvar", "eps")}, case)
    return {"z": a["mu"] + exp(0.5 * a["logvar"]) * a["eps"]}


def iwae_reference(inputs: Mapping[str, np.ndarray], case: Case) -> dict[str, Tracked]:
    a = _tracked(inputs, case)
    x, mu, logvar, eps, w, bias = a["x"], a["mu"], a["logvar"], a["eps"], a["dec_w"], a["dec_b"]
    k, _, lat = eps.shape
    d = x.shape[1]
    z = mu[None] + exp(0.5 * logvar)[None] * eps  # [K,B,L]
    resid = x[None] - (z @ w + bias)  # [K,B,D]
    log_px = (resid * resid).sum(axis=2) * -0.5 - 0.5 * d * LOG_2PI
    log_pz = (z * z).sum(axis=2) * -0.5 - 0.5 * lat * LOG_2PI
    # (z - mu)/sigma is eps exactly; the reference uses that identity, as every backend may
    log_qz = (eps * eps).sum(axis=2) * -0.5 - logvar.sum(axis=1)[None] * 0.5 - 0.5 * lat * LOG_2PI
    lse = logsumexp(log_px + log_pz - log_qz, axis=0)  # [B]
    return {"iwae": (lse - math.log(k)).mean()}


def vae_reference(inputs: Mapping[str, np.ndarray], case: Case) -> dict[str, Tracked]:
    """One SGD step of the MLP VAE with hand-written backprop (checked by finite differences and
    against torch.autograd in the tests)."""
    a = _tracked(inputs, case)
    x, eps = a["x"], a["eps"]
    p = {name: a[name] for name in VAE_PARAMS}
    b = x.shape[0]
    h1_pre = x @ p["enc_w"] + p["enc_b"]
    h1 = relu(h1_pre)
    mu = h1 @ p["mu_w"] + p["mu_b"]
    logvar = h1 @ p["logvar_w"] + p["logvar_b"]
    std = exp(0.5 * logvar)
    z = mu + std * eps
    h3_pre = z @ p["dec_w"] + p["dec_b"]
    h3 = relu(h3_pre)
    logits = h3 @ p["out_w"] + p["out_b"]
    rec = (x * logits - softplus(logits)).sum()
    kl = (mu * mu + half_excess(logvar)).sum() * 0.5
    out = {"loss": (kl - rec) * (1.0 / b)}

    d_logits = (sigmoid(logits) - x) * (1.0 / b)
    g = {"out_w": h3.T @ d_logits, "out_b": d_logits.sum(axis=0)}
    d_h3 = masked(d_logits @ p["out_w"].T, h3_pre)
    g["dec_w"] = z.T @ d_h3
    g["dec_b"] = d_h3.sum(axis=0)
    d_z = d_h3 @ p["dec_w"].T
    d_mu = d_z + mu * (1.0 / b)
    d_logvar = d_z * std * eps * 0.5 + expm1(logvar) * (0.5 / b)
    g["mu_w"] = h1.T @ d_mu
    g["mu_b"] = d_mu.sum(axis=0)
    g["logvar_w"] = h1.T @ d_logvar
    g["logvar_b"] = d_logvar.sum(axis=0)
    d_h1 = masked(d_mu @ p["mu_w"].T + d_logvar @ p["logvar_w"].T, h1_pre)
    g["enc_w"] = x.T @ d_h1
    g["enc_b"] = d_h1.sum(axis=0)
    lr = a["lr"]
    for name in VAE_PARAMS:
        out[f"grad_{name}"] = g[name]
        out[f"new_{name}"] = p[name] - lr * g[name]
    return out


# ---------------------------------------------------------------------------------- cost models


def _elbo_cost(case: Case) -> Cost:
    b, d, lat, size = case.batch, case.input_dim, case.latent_dim, np.dtype(case.dtype).itemsize
    eps_reads = 0 if case.variant == "eps=sampled" else b * lat
    reads = 2 * b * d + 2 * b * lat + eps_reads
    writes = b * lat  # z
    flops = 3 * b * d + 7 * b * lat + 3 * b * lat  # recon; kl (incl. exp); z (incl. exp)
    if WORKLOADS[case.workload].has_gradients:
        writes += b * d + 2 * b * lat
        flops += 2 * b * d + 3 * b * lat
    return Cost(bytes=(reads + writes) * size, flops=flops)


def _iwae_cost(case: Case) -> Cost:
    b, d, lat, k = case.batch, case.input_dim, case.latent_dim, case.importance_samples
    reads = b * d + 2 * b * lat + k * b * lat + lat * d + d
    flops = k * b * (2 * lat * d + 4 * d + 8 * lat) + 4 * k * b
    return Cost(bytes=reads * np.dtype(case.dtype).itemsize, flops=flops)


def _vae_cost(case: Case) -> Cost:
    b, d, lat, h = case.batch, case.input_dim, case.latent_dim, case.hidden_dim
    params = sum(math.prod(s) for s in vae_param_shapes(d, h, lat).values())
    # forward matmuls: D*H + 2*H*L + L*H + H*D multiply-adds per row; backward does twice that
    macs = b * (d * h + 2 * h * lat + lat * h + h * d)
    elementwise = b * (10 * d + 6 * h + 12 * lat)
    # every parameter read, every gradient and updated parameter written, x and eps read once
    elements = 3 * params + b * d + b * lat
    return Cost(bytes=elements * np.dtype(case.dtype).itemsize, flops=3 * 2 * macs + elementwise)


# ------------------------------------------------------------------------------------- checking


def check_outputs(
    workload: Workload,
    case: Case,
    inputs: Mapping[str, np.ndarray],
    got: Mapping[str, object],
    next_eps: np.ndarray | None = None,
) -> Check:
    """A backend's outputs against the reference, every element held to the bound careful
    arithmetic in the case dtype stays within (elbolab.model.accuracy).

    With eps drawn inside the call the backend returns the eps it drew: the reference is computed
    with that eps, so z is checked exactly like every other output, and the draw itself, with the
    next call's (`next_eps`), must be fresh standard normals (check_draws).
    """
    expected, got, problems = expected_outputs(workload, case, inputs, got, next_eps)
    return compare_outputs(got, expected, case.dtype, problems, workload.directions)


def expected_outputs(
    workload: Workload,
    case: Case,
    inputs: Mapping[str, np.ndarray],
    got: Mapping[str, object],
    next_eps: np.ndarray | None = None,
) -> tuple[dict[str, Tracked], Mapping[str, object], list[str]]:
    """The reference check_outputs holds `got` to, `got` as it is compared (less the outputs of a
    draw that is itself wrong) and the problems found on the way. With eps drawn inside the call,
    the outputs eps does not touch come from one reference of the input set for every backend
    and draw; the others are made from the backend's own draw."""
    problems: list[str] = []
    if case.variant == "eps=sampled" and workload.sampled_outputs:
        eps = got.get("eps")
        problem = one_draw_problem(eps, next_eps, (case.batch, case.latent_dim))
        drawn = None
        if problem:
            problems.append(problem)
            got = {k: v for k, v in got.items() if k not in workload.sampled_outputs}
        else:
            drawn = dict(inputs, eps=np.asarray(eps, dtype=case.dtype))
        expected = dict(cached_reference(workload, {k: v for k, v in inputs.items() if k != "eps"}, case))
        if drawn is not None:
            by_draw = workload.draw_reference or workload.reference
            expected.update(by_draw(drawn, case))
        return expected, got, problems
    return cached_reference(workload, inputs, case), got, problems


# The runner names a folder here for the length of a run; its workers share the references in it.
REFERENCE_CACHE_ENV = "ELBOLAB_REFERENCE_CACHE"


def cached_reference(workload: Workload, inputs: Mapping[str, np.ndarray], case: Case) -> dict[str, Tracked]:
    """workload.reference, computed once per run for all the backends and thread counts that share
    a case's inputs. The tracked reference costs ~10x the plain computation (1.6 s for elbo_grad at
    batch 8192), and ~10 workers of a `make bench` check the same inputs. Not for inputs holding a
    backend's own draw of eps (eps drawn inside the call): check_outputs asks for the part of the
    reference eps does not touch, which is shared, and makes the rest per draw. The key is what the
    inputs are made from (workload, dtype, sizes, seed; elbolab.model.workloads._rng) plus a fingerprint
    of the inputs themselves, so a reference can never be served for other data."""
    folder = os.environ.get(REFERENCE_CACHE_ENV)
    if not folder or (case.variant == "eps=sampled" and "eps" in inputs):  # a backend's own draw
        return workload.reference(inputs, case)
    spec = _data_spec(case)
    spec["inputs"] = {k: [list(np.shape(v)), _fingerprint(v)] for k, v in sorted(inputs.items())}
    path = Path(folder) / f"{hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]}.npz"
    held = _HELD.get(path)
    if held is not None:
        _HELD.move_to_end(path)
        return held
    expected = _load_or_compute(workload, inputs, case, path)
    _HELD[path] = expected
    while len(_HELD) > 1 and sum(_nbytes(t) for t in _HELD.values()) > HELD_BYTES:
        _HELD.popitem(last=False)
    return expected


def _data_spec(case: Case) -> dict:
    """What a case's data is made from: every field but who computes it (backend, device, threads)."""
    return {k: v for k, v in case.to_json().items() if k not in ("backend", "device", "threads")}


def _fingerprint(v) -> float:
    """The sum of an input's values, remembered for a read-only array that owns its data (the
    parent's input sets, elbolab.measure.evidence.References): its values cannot change under it,
    and summing elbo's 13 M inputs at batch 8192 took 13 ms at every check."""
    a = np.asarray(v)
    if a.flags.writeable or a.base is not None:
        return float(np.sum(a, dtype=np.float64))
    hit = _SUMS.get(id(a))
    if hit is not None and hit[0]() is a:  # an id is reused once its array is gone: the ref tells
        return hit[1]
    total = float(np.sum(a, dtype=np.float64))
    key = id(a)
    _SUMS[key] = (weakref.ref(a, lambda _: _SUMS.pop(key, None)), total)
    return total


_SUMS: dict[int, tuple[weakref.ref, float]] = {}


# The references last used, held in this process: a case's checks read its two input sets' again
# and again, and loading elbo_grad's at batch 8192 (three 51 MB arrays) from its file took ~0.1 s a
# check, a third of the parent's checking. Bounded: about four such references.
HELD_BYTES = 700 << 20
_HELD: collections.OrderedDict[Path, dict[str, Tracked]] = collections.OrderedDict()


def _nbytes(expected: dict[str, Tracked]) -> int:
    return sum(t.value.nbytes + t.worst.nbytes + t.careful.nbytes for t in expected.values())


def _load_or_compute(
    workload: Workload, inputs: Mapping[str, np.ndarray], case: Case, path: Path
) -> dict[str, Tracked]:
    try:
        with np.load(path) as saved:
            u = float(saved["u"])
            names = {k.rsplit("/", 1)[0] for k in saved.files if "/" in k}
            return {
                n: Tracked(saved[f"{n}/value"], saved[f"{n}/worst"], saved[f"{n}/careful"], u) for n in names
            }
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # not there yet, or not whole (a file damaged by hand; writers replace atomically)
    expected = workload.reference(inputs, case)
    arrays = {
        f"{n}/{part}": getattr(t, part) for n, t in expected.items() for part in ("value", "worst", "careful")
    }
    us = {t.u for t in expected.values()}
    if len(us) == 1:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, u=np.float64(us.pop()), **arrays)
            os.replace(tmp, path)  # whole or absent: a reader never sees a partial file
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk costs only the sharing
    return expected


def one_draw_problem(eps, next_eps, shape: tuple[int, int]) -> str | None:
    """eps drawn by the backend: present, the right shape, and with the next call's a draw."""
    if eps is None:
        return "eps: the backend did not return the eps it drew (output 'eps')"
    if np.shape(eps) != shape:
        return f"eps: shape {np.shape(eps)}, expected {shape}"
    return check_draws([eps] if next_eps is None else [eps, next_eps])


# A correct generator fails check_draws about once in DRAW_LEVEL^-1 checks: its three tests share
# the level (Bonferroni), and a repeat by chance is rarer still (see _repeat).
DRAW_LEVEL = 1e-6
TAIL = 2.0  # |x| > 2: 4.6% of standard normals, 58 of the 1,280 numbers of 64 draws at B=1, L=20


def check_draws(draws: list[np.ndarray]) -> str | None:
    """None if the eps of consecutive calls of an eps=sampled case look like fresh, independent
    standard normal draws, else one line saying what is wrong.

    `draws`: each call's eps ([B, L], the case dtype), in call order (the runner takes enough calls
    for ~4096 numbers, 3 to 64 of them). Fresh: no draw equals another or another's negation, nor
    does any row of 2+ numbers (a reuse of period p needs p + 1 calls to show). Standard normal, all
    the numbers together, three tests sharing DRAW_LEVEL (Bonferroni): Kolmogorov-Smirnov against
    N(0, 1) for the shape; sum x^2 against its exact chi-squared(n) for the scale, where KS is weak
    (N(0, 1.2^2) at n = 1,280); the count beyond +-TAIL against its exact binomial for the tails,
    where KS is weak too (a uniform draw scaled to unit variance has no tail at all).
    """
    arrays = [np.asarray(d, dtype=np.float64) for d in draws]
    if not arrays:
        return "eps: no draws to check"
    for i, a in enumerate(arrays):
        if a.shape != arrays[0].shape:
            return f"eps: call {i} drew shape {a.shape}, call 0 {arrays[0].shape}"
        if not np.all(np.isfinite(a)):
            return f"eps: non-finite values in call {i}'s draw"
    repeat = _repeat(arrays)
    if repeat:
        return repeat
    from scipy import stats  # ~2 s to import, and workers import this module at start-up

    x = np.concatenate([a.ravel() for a in arrays])
    n, level = x.size, DRAW_LEVEL / 3
    over = f"over {n} numbers of {len(arrays)} call{'s' if len(arrays) > 1 else ''}"
    ks = stats.kstest(x, "norm")
    if ks.pvalue < level:
        return f"eps: not standard normal: Kolmogorov-Smirnov D = {ks.statistic:.3g} {over} (p = {ks.pvalue:.2g})"
    squares = float(x @ x)
    p = 2 * min(stats.chi2.sf(squares, n), stats.chi2.cdf(squares, n))
    if p < level:
        return f"eps: variance {squares / n:.3g} {over}, not 1 (chi-squared p = {p:.2g})"
    beyond = int(np.count_nonzero(np.abs(x) > TAIL))
    share = 2 * stats.norm.sf(TAIL)
    p = stats.binomtest(beyond, n, share).pvalue
    if p < level:
        return (f"eps: {beyond} numbers beyond +-{TAIL:g} {over}, where a standard normal has "
                f"{share * n:.0f} +- {math.sqrt(n * share * (1 - share)):.0f} (binomial p = {p:.2g})")  # fmt: skip
    return None


def _repeat(arrays: list[np.ndarray]) -> str | None:
    """A draw, or a row of 2+ numbers, equal to another or to its negation. Single numbers are not
    compared: two float32 normals are equal up to sign with probability ~4e-8, so among thousands
    a match is likely; two numbers at once ~1e-15 per pair of rows."""
    width = arrays[0].shape[-1] if arrays[0].ndim else 1
    draws: dict[bytes, int] = {}
    rows: dict[bytes, tuple[int, int]] = {}
    for call, a in enumerate(arrays):
        if a.size < 2:
            return None
        key = _up_to_sign(a.reshape(1, -1)).tobytes()
        if key in draws:
            same = np.array_equal(a, arrays[draws[key]])
            return f"eps: call {call} drew {'the same eps as' if same else 'the negation of the eps of'} call {draws[key]}"
        draws[key] = call
        for r, row in enumerate(_up_to_sign(a.reshape(-1, width)) if width > 1 else ()):
            key = row.tobytes()
            if key in rows:
                return f"eps: row {r} of call {call}'s draw repeats row {rows[key][1]} of call {rows[key][0]} (or its negation)"
            rows[key] = (call, r)
    return None


def _up_to_sign(rows: np.ndarray) -> np.ndarray:
    """Each row times the sign of its first number: a row and its negation become the same."""
    return rows * np.where(rows[:, :1] < 0, -1.0, 1.0)


# -------------------------------------------------------------------------------------- registry


def _elbo_outputs(case: Case) -> tuple[str, ...]:
    names = ("z", "recon", "kl", "elbo") + (("eps",) if case.variant == "eps=sampled" else ())
    if WORKLOADS[case.workload].has_gradients:
        names += ("grad_x_recon", "grad_mu", "grad_logvar")
    return names


ELBO = Workload(
    "elbo",
    "the tutorial's kernel: reparameterised z, reconstruction and KL terms (forward only)",
    ("eps=given", "eps=sampled"),
    _elbo_inputs,
    elbo_reference,
    _elbo_cost,
    _elbo_outputs,
    _elbo_peak_values,
    sampled_outputs=("z",),
    draw_reference=elbo_draw_reference,
)

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        ELBO,
        # the same inputs and terms, plus the gradients (its outputs, cost and reference branch on it)
        replace(
            ELBO,
            name="elbo_grad",
            description="elbo plus its gradients w.r.t. x_recon, mu and logvar",
            has_gradients=True,
        ),
        Workload(
            "iwae",
            "importance-weighted bound, K samples, linear-Gaussian decoder, stable log-sum-exp",
            ("eps=given",),
            _iwae_inputs,
            iwae_reference,
            _iwae_cost,
            lambda case: ("iwae",),
            _iwae_peak_values,
        ),
        Workload(
            "vae_step",
            "one SGD step of an MLP VAE: forward, backward to every weight, update",
            ("eps=given",),
            _vae_inputs,
            vae_reference,
            _vae_cost,
            lambda case: (
                ("loss",) + tuple(f"grad_{p}" for p in VAE_PARAMS) + tuple(f"new_{p}" for p in VAE_PARAMS)
            ),
            _vae_peak_values,
            directions=DIRECTIONS,
        ),
    )
}
