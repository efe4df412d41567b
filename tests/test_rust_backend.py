"""The Rust backend (backends.rust, extension elbolab_rust): agreement with the float64 reference,
bad input raising Python exceptions, the rust-inner call_n path, and the rust-tutorial backend (the
tutorial's own ndarray code). Skips if the extension isn't built."""

from __future__ import annotations

import math

import numpy as np
import pytest

ext = pytest.importorskip("elbolab_rust", reason="elbolab_rust extension not built: run `make rust`")

from backends.rust import backend, inner_loop_backend, tutorial_backend  # noqa: E402
from harness.case import Case  # noqa: E402
from harness.verify import verify  # noqa: E402
from harness.workloads import VAE_PARAMS, WORKLOADS, iwae_reference  # noqa: E402

CASES = [
    (workload, variant)
    for workload in ("elbo", "elbo_grad", "iwae", "vae_step")
    for variant in WORKLOADS[workload].variants
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [1, 7, 128, 1000])
@pytest.mark.parametrize(("workload", "variant"), CASES)
def test_agrees_with_reference(workload, variant, batch, dtype, threads):
    case = Case(workload, "rust", dtype=dtype, batch=batch, threads=threads, variant=variant)
    result = verify(backend, case)
    assert result.ok, result.detail


@pytest.mark.parametrize(("workload", "variant"), CASES)
def test_inner_loop_backend_call_n(workload, variant):
    case = Case(workload, "rust-inner", batch=64, threads=2, variant=variant)
    wl = WORKLOADS[workload]
    inputs = wl.make_inputs(case)
    prepared = inner_loop_backend.prepare(case, {k: v.copy() for k, v in inputs.items()})
    assert prepared.call_n is not None
    prepared.call_n(5)
    from harness.workloads import check_outputs, reference_for

    check = check_outputs(wl, case, prepared.outputs(), reference_for(wl, inputs, case))
    assert check.ok, check.detail
    assert backend.prepare(case, inputs).call_n is None


def test_backends_describe_themselves():
    assert backend.name == "rust" and inner_loop_backend.name == "rust-inner"
    assert backend.threaded and backend.unavailable_reason() is None
    versions = backend.versions()
    assert versions["elbolab_rust"] == ext.__version__
    assert versions["rustc"].startswith("rustc ")
    assert set(backend.workloads) == set(WORKLOADS)


def test_sampled_eps_changes_every_call_and_is_independent_of_threads():
    zs = {}
    for threads in (1, 2):
        case = Case("elbo", "rust", batch=300, threads=threads, variant="eps=sampled", seed=3)
        prepared = backend.prepare(case, WORKLOADS["elbo"].make_inputs(case))
        prepared.call()
        first = prepared.outputs()["z"].copy()
        prepared.call()
        assert not np.array_equal(first, prepared.outputs()["z"])
        zs[threads] = first
    np.testing.assert_array_equal(zs[1], zs[2])


def test_iwae_survives_weights_that_overflow_a_naive_exp():
    case = Case("iwae", "rust", batch=16, input_dim=50, latent_dim=4, samples=6)
    inputs = WORKLOADS["iwae"].make_inputs(case)
    inputs["x"] = inputs["x"] * 300.0  # log w ~ -1e6: exp underflows to 0 for every sample
    want = float(iwae_reference(inputs, case)["iwae"])
    assert want < -1e4
    with np.errstate(divide="ignore"):
        lw_naive = np.log(np.sum(np.exp(np.full(6, want)), axis=0))
    assert not np.isfinite(lw_naive)  # the naive formula fails on these inputs
    for threads in (1, 2):
        for dtype in ("float64", "float32"):
            c = Case(
                "iwae", "rust", dtype=dtype, batch=16, input_dim=50, latent_dim=4, samples=6, threads=threads
            )
            typed = {k: v.astype(dtype) for k, v in inputs.items()}
            p = backend.prepare(c, typed)
            p.call()
            got = float(p.outputs()["iwae"])
            assert math.isfinite(got)
            assert abs(got - want) <= (1e-9 if dtype == "float64" else 2e-4) * abs(want)


# ----------------------------------------------------------------------------------- bad input


def _elbo_arrays(b=4, d=10, lat=3, dtype=np.float64):
    rng = np.random.default_rng(0)
    return {
        "x": rng.random((b, d)).astype(dtype),
        "x_recon": rng.random((b, d)).astype(dtype),
        "mu": rng.standard_normal((b, lat)).astype(dtype),
        "logvar": rng.standard_normal((b, lat)).astype(dtype),
        "eps": rng.standard_normal((b, lat)).astype(dtype),
        "z": np.empty((b, lat), dtype),
    }


def _plan(**overrides):
    a = _elbo_arrays()
    a.update(overrides)
    return ext.ElboPlan(ext.Pool(1), a["x"], a["x_recon"], a["mu"], a["logvar"], a["eps"], a["z"])


def test_good_plan_runs():
    a = _elbo_arrays()
    recon, kl, elbo = _plan(**a).run()
    assert math.isclose(recon, -np.sum((a["x"] - a["x_recon"]) ** 2) / 4)
    assert math.isclose(elbo, recon - kl)


@pytest.mark.parametrize(
    ("override", "exc", "match"),
    [
        ({"x": [[1.0, 2.0]]}, TypeError, "x must be a numpy.ndarray"),
        ({"x_recon": np.zeros((4, 10), np.float32)}, TypeError, "x_recon has dtype"),
        ({"x": np.zeros((4, 10), np.int64)}, TypeError, "float32 and float64"),
        ({"z": np.zeros((4, 3), np.float32)}, TypeError, "z has dtype"),
        ({"x_recon": np.zeros((4, 11))}, ValueError, r"x_recon has shape \(4, 11\), expected \(4, 10\)"),
        ({"mu": np.zeros((5, 3))}, ValueError, r"mu has shape \(5, 3\), expected \(4, 3\)"),
        ({"eps": np.zeros((4, 3, 1))}, ValueError, "eps has shape"),
        ({"x": np.zeros(40)}, ValueError, "x must be 2-D"),
        ({"x_recon": np.zeros((10, 4)).T}, ValueError, "C-contiguous"),
        ({"z": np.zeros((4, 6))[:, ::2]}, ValueError, "C-contiguous"),
        ({"z": np.zeros((0, 3))}, ValueError, "shape"),
    ],
)
def test_bad_arrays_raise(override, exc, match):
    with pytest.raises(exc, match=match):
        _plan(**override)


def test_read_only_output_raises():
    z = np.empty((4, 3))
    z.flags.writeable = False
    with pytest.raises(ValueError, match="output z is read-only"):
        _plan(z=z)


def test_output_aliasing_an_input_raises():
    a = _elbo_arrays()
    with pytest.raises(ValueError, match="share memory"):
        _plan(z=a["mu"], mu=a["mu"])


def test_empty_batch_raises():
    a = _elbo_arrays(b=0)
    with pytest.raises(ValueError):
        ext.ElboPlan(ext.Pool(1), a["x"], a["x_recon"], a["mu"], a["logvar"], a["eps"], a["z"])


def test_array_changed_after_prepare_raises():
    a = _elbo_arrays()
    plan = _plan(**a)
    plan.run()
    a["z"].flags.writeable = False
    with pytest.raises(ValueError, match="changed in place"):
        plan.run()
    a["z"].flags.writeable = True
    plan.run()
    a["x"].shape = (40,)
    with pytest.raises(ValueError, match="x was changed in place"):
        plan.run()


def test_partial_gradients_raise():
    a = _elbo_arrays()
    with pytest.raises(ValueError, match="all of grad_x_recon"):
        ext.ElboPlan(
            ext.Pool(1),
            a["x"],
            a["x_recon"],
            a["mu"],
            a["logvar"],
            a["eps"],
            a["z"],
            grad_mu=np.empty((4, 3)),
        )


@pytest.mark.parametrize("threads", [0, -1, 100000])
def test_bad_thread_counts_raise(threads):
    with pytest.raises(ValueError, match="threads"):
        ext.Pool(threads)


def test_bad_n_raises():
    with pytest.raises(ValueError, match="n must be"):
        _plan().run_n(0)


def test_iwae_bad_inputs_raise():
    rng = np.random.default_rng(0)
    x, mu, lv = rng.random((4, 10)), rng.random((4, 3)), rng.random((4, 3))
    eps, w, b = rng.random((2, 4, 3)), rng.random((3, 10)), rng.random(10)
    ext.IwaePlan(ext.Pool(2), x, mu, lv, eps, w, b).run()
    with pytest.raises(ValueError, match="eps must be 3-D"):
        ext.IwaePlan(ext.Pool(1), x, mu, lv, eps[0], w, b)
    with pytest.raises(ValueError, match="eps has shape"):
        ext.IwaePlan(ext.Pool(1), x, mu, lv, rng.random((2, 5, 3)), w, b)
    with pytest.raises(ValueError, match="dec_w has shape"):
        ext.IwaePlan(ext.Pool(1), x, mu, lv, eps, w.T.copy(), b)
    with pytest.raises(TypeError, match="dec_b has dtype"):
        ext.IwaePlan(ext.Pool(1), x, mu, lv, eps, w, b.astype(np.float32))


def test_vae_bad_inputs_raise():
    case = Case("vae_step", "rust", batch=3, input_dim=6, hidden_dim=5, latent_dim=2)
    inputs = WORKLOADS["vae_step"].make_inputs(case)
    params = [inputs[p] for p in VAE_PARAMS]
    grads = [np.empty_like(p) for p in params]
    news = [np.empty_like(p) for p in params]
    pool = ext.Pool(1)
    ext.VaePlan(pool, inputs["x"], inputs["eps"], params, 0.1, grads, news).run()
    with pytest.raises(ValueError, match="10 arrays"):
        ext.VaePlan(pool, inputs["x"], inputs["eps"], params[:9], 0.1, grads, news)
    with pytest.raises(TypeError, match="sequence"):
        ext.VaePlan(pool, inputs["x"], inputs["eps"], 5, 0.1, grads, news)
    bad = list(grads)
    bad[3] = np.empty(7)
    with pytest.raises(ValueError, match="grad_mu_b has shape"):
        ext.VaePlan(pool, inputs["x"], inputs["eps"], params, 0.1, bad, news)
    with pytest.raises(ValueError, match="share memory"):
        ext.VaePlan(pool, inputs["x"], inputs["eps"], params, 0.1, grads, params)
    with pytest.raises(ValueError, match="lr must be finite"):
        ext.VaePlan(pool, inputs["x"], inputs["eps"], params, float("nan"), grads, news)


def test_stream_probe():
    bw = ext.stream_probe("read2", 1 << 20, reps=3, threads=1)
    assert bw > 1e8
    assert ext.stream_probe("triad", 1 << 20, reps=2, threads=2) > 1e8
    with pytest.raises(ValueError, match="unknown probe"):
        ext.stream_probe("bogus", 1 << 20)
    with pytest.raises(ValueError):
        ext.stream_probe("copy", 8)


def test_elbo_exp_out_of_fast_range_matches_numpy():
    """logvar beyond the fast exp's range (|logvar| > 1416, inf, NaN) falls back to the portable
    path for that piece; values at the edge of the range stay on the fast path."""
    b, lat = 64, 20
    a = _elbo_arrays(b=b, d=10, lat=lat)
    a["eps"] = np.abs(a["eps"]) + 0.5
    lv = a["logvar"]
    lv[3, :4] = [1400.0, -1400.0, 1416.0, -1416.0]  # in range: finite
    want_ok = a["mu"] + np.exp(0.5 * lv) * a["eps"]
    plan = ext.ElboPlan(ext.Pool(1), a["x"], a["x_recon"], a["mu"], lv, a["eps"], a["z"])
    plan.run()
    np.testing.assert_allclose(a["z"], want_ok, rtol=1e-14, atol=1e-15)
    lv[5, :5] = [2000.0, -2000.0, np.inf, -np.inf, np.nan]
    with np.errstate(over="ignore", invalid="ignore"):
        want = a["mu"] + np.exp(0.5 * lv) * a["eps"]
    plan.run()
    np.testing.assert_allclose(a["z"], want, rtol=1e-14, atol=1e-15)
    assert math.isnan(plan.result()[1])


# ------------------------------------------------------------------------------- rust-tutorial

TUTORIAL_VARIANTS = WORKLOADS["elbo"].variants


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [1, 7, 128, 1000])
@pytest.mark.parametrize("variant", TUTORIAL_VARIANTS)
def test_tutorial_agrees_with_reference(variant, batch, dtype):
    case = Case("elbo", "rust-tutorial", dtype=dtype, batch=batch, variant=variant)
    result = verify(tutorial_backend, case)
    assert result.ok, result.detail


@pytest.mark.parametrize("variant", TUTORIAL_VARIANTS)
def test_tutorial_call_n_loops_inside_rust(variant):
    from harness.workloads import check_outputs, reference_for

    case = Case("elbo", "rust-tutorial", batch=64, variant=variant, seed=5)
    wl = WORKLOADS["elbo"]
    inputs = wl.make_inputs(case)
    prepared = tutorial_backend.prepare(case, {k: v.copy() for k, v in inputs.items()})
    assert prepared.call_n is not None
    prepared.call()
    first = prepared.outputs()["z"].copy()
    prepared.call_n(5)
    check = check_outputs(wl, case, prepared.outputs(), reference_for(wl, inputs, case))
    assert check.ok, check.detail
    z = prepared.outputs()["z"]
    if variant == "eps=sampled":
        assert not np.array_equal(first, z)  # a fresh eps every iteration
    else:
        np.testing.assert_array_equal(first, z)
    assert "inside Rust" in prepared.notes["timing"]


def test_tutorial_backend_describes_itself():
    assert tutorial_backend.name == "rust-tutorial"
    assert tutorial_backend.workloads == ("elbo",)
    assert not tutorial_backend.threaded
    assert "tutorial" in tutorial_backend.description and "inside Rust" in tutorial_backend.description
    assert tutorial_backend.skip_reason(Case("elbo_grad", "rust-tutorial")) is not None


def _tutorial_plan(**overrides):
    a = _elbo_arrays()
    a.update(overrides)
    return ext.TutorialPlan(a["x"], a["x_recon"], a["mu"], a["logvar"], a["eps"], a["z"])


@pytest.mark.parametrize(
    ("override", "exc", "match"),
    [
        ({"x": [[1.0, 2.0]]}, TypeError, "x must be a numpy.ndarray"),
        ({"x_recon": np.zeros((4, 10), np.float32)}, TypeError, "x_recon has dtype"),
        ({"x": np.zeros((4, 10), np.int64)}, TypeError, "float32 and float64"),
        ({"mu": np.zeros((5, 3))}, ValueError, r"mu has shape \(5, 3\), expected \(4, 3\)"),
        ({"eps": np.zeros((4, 3, 1))}, ValueError, "eps has shape"),
        ({"x_recon": np.zeros((10, 4)).T}, ValueError, "C-contiguous"),
        ({"z": np.zeros((0, 3))}, ValueError, "shape"),
    ],
)
def test_tutorial_bad_arrays_raise(override, exc, match):
    with pytest.raises(exc, match=match):
        _tutorial_plan(**override)


def test_tutorial_bad_outputs_and_n_raise():
    z = np.empty((4, 3))
    z.flags.writeable = False
    with pytest.raises(ValueError, match="output z is read-only"):
        _tutorial_plan(z=z)
    a = _elbo_arrays()
    with pytest.raises(ValueError, match="share memory"):
        _tutorial_plan(z=a["mu"], mu=a["mu"])
    plan = _tutorial_plan()
    with pytest.raises(ValueError, match="n must be"):
        plan.run_n(0)
    recon, kl, elbo = plan.run_n(3)
    assert math.isclose(elbo, recon - kl)
