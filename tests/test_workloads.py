"""The references themselves: formulas, stability, gradients by finite differences, the checker."""

import math

import numpy as np
import pytest
from scipy.special import logsumexp

from harness.case import Case
from harness.workloads import (
    VAE_PARAMS,
    WORKLOADS,
    check_outputs,
    reference_for,
    vae_forward_backward,
)


def test_inputs_are_identical_for_every_backend_and_cast_per_dtype():
    a = WORKLOADS["elbo"].make_inputs(Case("elbo", "numpy", batch=5))
    b = WORKLOADS["elbo"].make_inputs(Case("elbo", "rust", batch=5, threads=2))
    c = WORKLOADS["elbo"].make_inputs(Case("elbo", "torch", batch=5, dtype="float32"))
    for k in a:
        assert np.array_equal(a[k], b[k])
        assert c[k].dtype == np.float32 and np.array_equal(c[k], a[k].astype(np.float32))
        assert a[k].flags.c_contiguous
    assert "eps" not in WORKLOADS["elbo"].make_inputs(Case("elbo", "numpy", batch=5, variant="eps=sampled"))


def test_elbo_reference_matches_the_formula_written_as_loops():
    case = Case("elbo_grad", "numpy", batch=3, input_dim=4, latent_dim=2)
    inp = WORKLOADS["elbo_grad"].make_inputs(case)
    ref = WORKLOADS["elbo_grad"].reference(inp, case)
    x, xr, mu, lv, eps = (inp[k] for k in ("x", "x_recon", "mu", "logvar", "eps"))
    recon = -sum((x[b, d] - xr[b, d]) ** 2 for b in range(3) for d in range(4)) / 3
    kl = -sum(1 + lv[b, j] - mu[b, j] ** 2 - math.exp(lv[b, j]) for b in range(3) for j in range(2)) / 6
    assert float(ref["recon"]) == pytest.approx(recon, rel=1e-14)
    assert float(ref["kl"]) == pytest.approx(kl, rel=1e-14)
    assert float(ref["elbo"]) == pytest.approx(recon - kl, rel=1e-14)
    assert np.allclose(ref["z"], mu + np.exp(lv / 2) * eps)
    # gradients of elbo = recon - kl, by finite differences
    h = 1e-6
    for name, grad in (("x_recon", "grad_x_recon"), ("mu", "grad_mu"), ("logvar", "grad_logvar")):
        for idx in np.ndindex(inp[name].shape):
            up, down = dict(inp), dict(inp)
            up[name] = inp[name].copy()
            down[name] = inp[name].copy()
            up[name][idx] += h
            down[name][idx] -= h
            fd = (
                float(WORKLOADS["elbo"].reference(up, case)["elbo"])
                - float(WORKLOADS["elbo"].reference(down, case)["elbo"])
            ) / (2 * h)
            assert ref[grad][idx] == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_iwae_reference_matches_direct_densities_and_is_stable():
    case = Case("iwae", "numpy", batch=4, input_dim=5, latent_dim=3, importance_samples=6)
    inp = WORKLOADS["iwae"].make_inputs(case)
    ref = float(WORKLOADS["iwae"].reference(inp, case)["iwae"])
    x, mu, lv, eps, w, b = (inp[k] for k in ("x", "mu", "logvar", "eps", "dec_w", "dec_b"))
    from scipy.stats import multivariate_normal as mvn

    total = 0.0
    for i in range(4):
        logw = []
        for k in range(6):
            z = mu[i] + np.exp(lv[i] / 2) * eps[k, i]
            logw.append(
                mvn.logpdf(x[i], z @ w + b, np.eye(5))
                + mvn.logpdf(z, np.zeros(3), np.eye(3))
                - mvn.logpdf(z, mu[i], np.diag(np.exp(lv[i])))
            )
        total += logsumexp(logw) - math.log(6)
    assert ref == pytest.approx(total / 4, rel=1e-12)

    # x far from the decoder mean: log w ~ -1e6, where exp underflows to 0 and a naive log(mean(exp))
    # gives -inf; the stable reference stays finite and equal to scipy's logsumexp
    far = dict(inp, x=inp["x"] + 1000.0)
    val = float(WORKLOADS["iwae"].reference(far, case)["iwae"])
    assert np.isfinite(val) and val < -1e5


def test_vae_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    from harness.workloads import init_vae_params

    d, h, lat, b = 6, 5, 3, 4
    params = init_vae_params(d, h, lat, rng)
    x = rng.random((b, d))
    eps = rng.standard_normal((b, lat))
    _, grads = vae_forward_backward(x, eps, params)
    step = 1e-6
    for name in VAE_PARAMS:
        for idx in np.ndindex(params[name].shape):
            up = {k: v.copy() for k, v in params.items()}
            down = {k: v.copy() for k, v in params.items()}
            up[name][idx] += step
            down[name][idx] -= step
            fd = (vae_forward_backward(x, eps, up)[0] - vae_forward_backward(x, eps, down)[0]) / (2 * step)
            assert grads[name][idx] == pytest.approx(fd, rel=1e-5, abs=1e-8), (name, idx)


def test_vae_reference_update_is_sgd():
    case = Case("vae_step", "numpy", batch=4, input_dim=8, latent_dim=2, hidden_dim=5)
    inp = WORKLOADS["vae_step"].make_inputs(case)
    ref = WORKLOADS["vae_step"].reference(inp, case)
    lr = float(inp["lr"])
    for name in VAE_PARAMS:
        assert np.allclose(ref[f"new_{name}"], inp[name] - lr * ref[f"grad_{name}"])
    assert np.isfinite(float(ref["loss"])) and float(ref["loss"]) > 0


def _checked(case, mutate):
    w = WORKLOADS[case.workload]
    inp = w.make_inputs(case)
    ref = reference_for(w, inp, case)
    got = {k: np.array(v, copy=True) for k, v in ref.items() if k != "_inputs"}
    mutate(got)
    return check_outputs(w, case, got, ref)


def test_checker_accepts_reference_and_rejects_wrong_answers():
    case = Case("elbo_grad", "numpy", batch=16)
    assert _checked(case, lambda g: None).ok
    bad = _checked(case, lambda g: g.__setitem__("kl", g["kl"] * (1 + 1e-6)))
    assert not bad.ok and bad.worst_output == "kl"
    assert not _checked(case, lambda g: g.pop("grad_mu")).ok
    assert not _checked(case, lambda g: g.__setitem__("z", g["z"][:, :3])).ok
    assert not _checked(case, lambda g: g["grad_x_recon"].__setitem__((0, 0), np.nan)).ok


def test_float32_tolerance_accepts_float32_rounding_only():
    case = Case("elbo", "numpy", batch=64, dtype="float32")
    assert _checked(case, lambda g: g.update({k: v.astype(np.float32) for k, v in g.items()})).ok
    assert not _checked(case, lambda g: g.__setitem__("recon", g["recon"] * 1.001)).ok


def test_sampled_z_checked_by_moments():
    case = Case("elbo", "numpy", batch=256, variant="eps=sampled")
    w = WORKLOADS["elbo"]
    inp = w.make_inputs(case)
    ref = reference_for(w, inp, case)
    rng = np.random.default_rng(0)
    mu, lv = inp["mu"], inp["logvar"]
    good = {k: ref[k] for k in ("recon", "kl", "elbo")}
    good["z"] = mu + np.exp(lv / 2) * rng.standard_normal(mu.shape)
    assert check_outputs(w, case, good, ref).ok
    assert not check_outputs(
        w, case, dict(good, z=mu + np.exp(lv / 2) * 2 * rng.standard_normal(mu.shape)), ref
    ).ok
    assert not check_outputs(
        w, case, dict(good, z=mu + 0.5 + np.exp(lv / 2) * rng.standard_normal(mu.shape)), ref
    ).ok
    assert not check_outputs(w, case, dict(good, z=mu.copy()), ref).ok  # eps forgotten: variance 0


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_cost_models_grow_with_batch(name):
    small = WORKLOADS[name].cost(Case(name, "numpy", batch=10))
    big = WORKLOADS[name].cost(Case(name, "numpy", batch=1000))
    assert 0 < small.bytes < big.bytes and 0 < small.flops < big.flops
    f32 = WORKLOADS[name].cost(Case(name, "numpy", batch=1000, dtype="float32"))
    assert f32.bytes * 2 == big.bytes


def test_elbo_is_memory_bound_and_vae_step_compute_bound():
    elbo = WORKLOADS["elbo"].cost(Case("elbo", "numpy", batch=1024))
    vae = WORKLOADS["vae_step"].cost(Case("vae_step", "numpy", batch=1024))
    assert elbo.flops / elbo.bytes < 1  # flops per byte: far left of any ridge point
    assert vae.flops / vae.bytes > 50
