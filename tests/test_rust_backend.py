"""The Rust backend (backends.rust, extension elbolab_rust): agreement with the float64 reference
(also at odd sizes that exercise every vector tail), bad input raising Python exceptions, the GIL
contract (inputs read-only while a plan holds them, plans keeping their arrays alive), the eps a
sampled call drew (eps_out), the rust-inner call_n path, and the rust-tutorial backend (the
tutorial's own ndarray code). Skips if the extension isn't built."""

from __future__ import annotations

import gc
import math
import threading

import numpy as np
import pytest

ext = pytest.importorskip("elbolab_rust", reason="elbolab_rust extension not built: run `make rust`")

from backends.rust import backend, inner_loop_backend, tutorial_backend  # noqa: E402
from elbolab.measure.opening import check_case  # noqa: E402
from elbolab.model.case import Case  # noqa: E402
from elbolab.model.workloads import VAE_PARAMS, WORKLOADS, check_outputs, iwae_reference  # noqa: E402


def _value(ref) -> np.ndarray:
    """A reference output as a float64 array (the references return elbolab.model.accuracy.Tracked)."""
    return np.asarray(getattr(ref, "value", ref), dtype=np.float64)


def _case(
    workload,
    backend_name="rust",
    *,
    dtype="float64",
    batch=128,
    input_dim=784,
    latent_dim=20,
    hidden_dim=400,
    samples=8,
    threads=1,
    variant="eps=given",
    seed=0,
) -> Case:
    """A Case built positionally (the field holding K is being renamed in elbolab.model.case)."""
    fields = (dtype, batch, input_dim, latent_dim, hidden_dim, samples, threads, variant, seed)
    return Case(workload, backend_name, "cpu", *fields)


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
    result = check_case(backend, case)
    assert result.ok, result.detail


@pytest.mark.parametrize(("workload", "variant"), CASES)
def test_inner_loop_backend_call_n(workload, variant):
    case = Case(workload, "rust-inner", batch=64, threads=2, variant=variant)
    wl = WORKLOADS[workload]
    inputs = wl.make_inputs(case)
    prepared = inner_loop_backend.prepare(case, {k: v.copy() for k, v in inputs.items()})
    assert prepared.call_n is not None
    prepared.call_n(5)
    check = check_outputs(wl, case, inputs, prepared.outputs())
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
    case = _case("iwae", batch=16, input_dim=50, latent_dim=4, samples=6)
    inputs = WORKLOADS["iwae"].make_inputs(case)
    inputs["x"] = inputs["x"] * 300.0  # log w ~ -1e6: exp underflows to 0 for every sample
    want = float(_value(iwae_reference(inputs, case)["iwae"]))
    assert want < -1e4
    with np.errstate(divide="ignore"):
        lw_naive = np.log(np.sum(np.exp(np.full(6, want)), axis=0))
    assert not np.isfinite(lw_naive)  # the naive formula fails on these inputs
    for threads in (1, 2):
        for dtype in ("float64", "float32"):
            c = _case("iwae", dtype=dtype, batch=16, input_dim=50, latent_dim=4, samples=6, threads=threads)
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
    del plan  # logvar is read-only while the plan holds it
    lv[5, :5] = [2000.0, -2000.0, np.inf, -np.inf, np.nan]
    with np.errstate(over="ignore", invalid="ignore"):
        want = a["mu"] + np.exp(0.5 * lv) * a["eps"]
    plan = ext.ElboPlan(ext.Pool(1), a["x"], a["x_recon"], a["mu"], lv, a["eps"], a["z"])
    plan.run()
    np.testing.assert_allclose(a["z"], want, rtol=1e-14, atol=1e-15)
    assert math.isnan(plan.result()[1])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("logvar_scale", [1.0, 1e-6])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_elbo_grad_is_as_accurate_as_careful_arithmetic(dtype, logvar_scale, threads):
    """grad_logvar = -(e^logvar - 1)/(2B) with e^logvar - 1 computed without cancellation: the lab's
    checker holds it to the careful (expm1) bound, so rust elbo_grad is not 'less accurate', on the
    workload's own inputs and with logvar scaled to ~1e-6 (where (1 - e^logvar)/(2B) would keep
    only ~u/|logvar| of relative accuracy: ~1e-10 in float64, nothing in float32)."""
    from elbolab.model.backend import discover

    rust = discover()["rust"]
    case = Case("elbo_grad", "rust", dtype=dtype, batch=1024, threads=threads)
    if logvar_scale == 1.0:
        check = check_case(rust, case)
    else:
        workload = WORKLOADS["elbo_grad"]
        inputs = workload.make_inputs(case)
        inputs["logvar"] = (inputs["logvar"] * logvar_scale).astype(dtype)
        assert np.all(np.abs(inputs["logvar"]) < 1e-5) and np.any(inputs["logvar"] != 0)
        prepared = rust.prepare(case, {k: v.copy() for k, v in inputs.items()})
        prepared.call()
        check = check_outputs(workload, case, inputs, prepared.outputs())
    assert check.ok, check.describe() or check.detail
    assert not check.less_accurate, check.describe()


# ------------------------------------------------------------------------------- rust-tutorial

TUTORIAL_VARIANTS = WORKLOADS["elbo"].variants


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [1, 7, 128, 1000])
@pytest.mark.parametrize("variant", TUTORIAL_VARIANTS)
def test_tutorial_agrees_with_reference(variant, batch, dtype):
    case = Case("elbo", "rust-tutorial", dtype=dtype, batch=batch, variant=variant)
    result = check_case(tutorial_backend, case)
    assert result.ok, result.detail


@pytest.mark.parametrize("variant", TUTORIAL_VARIANTS)
def test_tutorial_call_n_loops_inside_rust(variant):
    case = Case("elbo", "rust-tutorial", batch=64, variant=variant, seed=5)
    wl = WORKLOADS["elbo"]
    inputs = wl.make_inputs(case)
    prepared = tutorial_backend.prepare(case, {k: v.copy() for k, v in inputs.items()})
    assert prepared.call_n is not None
    prepared.call()
    first = prepared.outputs()["z"].copy()
    prepared.call_n(5)
    check = check_outputs(wl, case, inputs, prepared.outputs())
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


# ------------------------------------------------------------------- odd sizes through the shim

# (B, D, L, H, K): every SIMD tail (D, L not multiples of 4/8/16/32), a partial 64-row RNG/row
# block, B=1, and one case above the elbo's parallel threshold at 2 threads
ODD_SIZES = [(1, 1, 1, 1, 1), (7, 3, 5, 3, 3), (7, 17, 33, 5, 1), (65, 9, 7, 15, 3), (400, 783, 33, 17, 3)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("size", ODD_SIZES, ids=lambda s: "B{}-D{}-L{}-H{}-K{}".format(*s))
@pytest.mark.parametrize("workload", ["elbo", "elbo_grad", "iwae", "vae_step"])
def test_odd_sizes_agree_with_reference(workload, size, dtype, threads):
    b, d, lat, h, k = size
    case = _case(
        workload, dtype=dtype, batch=b, input_dim=d, latent_dim=lat, hidden_dim=h, samples=k, threads=threads
    )
    wl = WORKLOADS[workload]
    inputs = wl.make_inputs(case)
    want = wl.reference({k: v.copy() for k, v in inputs.items()}, case)
    prepared = backend.prepare(case, {k: v.copy() for k, v in inputs.items()})
    prepared.call()
    got = prepared.outputs()
    check = check_outputs(wl, case, inputs, got)  # the lab's own bound, from the arithmetic
    assert check.ok, check.detail
    tol = 1e-12 if dtype == "float64" else 1e-4
    for name, ref in want.items():
        ref = _value(ref)
        value = np.asarray(got[name], dtype=np.float64)
        assert value.shape == ref.shape, name
        scale = max(float(np.max(np.abs(ref))), 1e-300)
        err = float(np.max(np.abs(value - ref))) / scale
        assert err <= tol, f"{name}: error {err:.3g} > {tol:g}"


# ------------------------------------------------------------------------------ the GIL contract


def _plans_of_every_kind():
    """(kind, plan, inputs, outputs) for each plan class, on fresh arrays."""
    a = _elbo_arrays()
    ins = {k: a[k] for k in ("x", "x_recon", "mu", "logvar", "eps")}
    yield "elbo", _plan(**a), ins, {"z": a["z"]}
    a = _elbo_arrays()
    ins = {k: a[k] for k in ("x", "x_recon", "mu", "logvar", "eps")}
    yield "tutorial", _tutorial_plan(**a), ins, {"z": a["z"]}
    rng = np.random.default_rng(1)
    ins = {
        "x": rng.random((4, 10)),
        "mu": rng.random((4, 3)),
        "logvar": rng.random((4, 3)),
        "eps": rng.random((2, 4, 3)),
        "dec_w": rng.random((3, 10)),
        "dec_b": rng.random(10),
    }
    yield "iwae", ext.IwaePlan(ext.Pool(1), *ins.values()), ins, {}
    case = _case("vae_step", batch=3, input_dim=6, hidden_dim=5, latent_dim=2)
    v = WORKLOADS["vae_step"].make_inputs(case)
    params = [v[p] for p in VAE_PARAMS]
    grads = [np.empty_like(p) for p in params]
    news = [np.empty_like(p) for p in params]
    ins = {"x": v["x"], "eps": v["eps"], **{p: v[p] for p in VAE_PARAMS}}
    # the plan is built in the yield: a local would keep it alive in this generator's frame
    yield (
        "vae",
        ext.VaePlan(ext.Pool(1), v["x"], v["eps"], params, 0.1, grads, news),
        ins,
        {"grad_enc_w": grads[0], "new_out_b": news[9]},
    )


def test_inputs_are_read_only_while_a_plan_holds_them():
    for kind, plan, ins, outs in _plans_of_every_kind():
        plan.run()
        for name, arr in ins.items():
            assert not arr.flags.writeable, f"{kind}: input {name} writeable while the plan lives"
            with pytest.raises(ValueError, match="read-only"):
                arr[...] = 0.0
            with pytest.raises(ValueError, match="read-only"):
                np.copyto(arr, 1.0)
        for name, arr in outs.items():
            assert arr.flags.writeable, f"{kind}: output {name}"
            arr[...] = 0.0  # outputs stay writeable (between calls)
        plan.run()
        del plan
        gc.collect()
        for name, arr in ins.items():
            assert arr.flags.writeable, f"{kind}: input {name} not writeable again after del plan"
            arr[...] = 0.5


def test_read_only_guard_is_shared_and_restores_only_what_it_cleared():
    a = _elbo_arrays()
    frozen = a["x_recon"]
    frozen.flags.writeable = False  # read-only before any plan: must stay so
    first = _plan(**a)
    second = _plan(**{**a, "z": np.empty_like(a["z"])})
    del first
    gc.collect()
    assert not a["mu"].flags.writeable  # the second plan still holds mu
    second.run()
    del second
    gc.collect()
    assert a["mu"].flags.writeable and a["x"].flags.writeable
    assert not frozen.flags.writeable


def test_making_an_input_writeable_again_is_refused_at_the_next_call():
    a = _elbo_arrays()
    plan = _plan(**a)
    plan.run()
    a["logvar"].flags.writeable = True  # numpy allows it (the array owns its data)
    with pytest.raises(ValueError, match="input logvar was made writeable"):
        plan.run()
    a["logvar"].flags.writeable = False
    plan.run()


def test_a_plan_keeps_its_arrays_alive():
    def make():
        a = _elbo_arrays(b=6, d=9, lat=5)
        recon = -float(np.sum((a["x"] - a["x_recon"]) ** 2)) / 6
        z = a["mu"] + np.exp(0.5 * a["logvar"]) * a["eps"]
        return _plan(**a), recon, z

    plan, recon, z = make()  # every array's only other reference is gone
    gc.collect()
    np.ones((1 << 16,))  # reuse freed memory if anything was freed
    got = plan.run()
    assert math.isclose(got[0], recon, rel_tol=1e-13)
    # through the shim: drop inputs and the dict, keep only the Prepared
    case = _case("elbo_grad", batch=5, input_dim=7, latent_dim=3)
    inputs = WORKLOADS["elbo_grad"].make_inputs(case)
    want = WORKLOADS["elbo_grad"].reference({k: v.copy() for k, v in inputs.items()}, case)
    prepared = backend.prepare(case, inputs)
    del inputs
    gc.collect()
    prepared.call()
    out = prepared.outputs()
    np.testing.assert_allclose(out["z"], _value(want["z"]), rtol=1e-14)
    np.testing.assert_allclose(out["grad_x_recon"], _value(want["grad_x_recon"]), rtol=1e-14)


def test_held_arrays_cannot_be_resized():
    a = _elbo_arrays()
    plan = _plan(**a)
    with pytest.raises(ValueError):
        a["z"].resize((5, 3))  # an output: refused by numpy's refcheck (the plan holds a reference)
    with pytest.raises(ValueError):
        a["x"].resize((5, 10))  # an input: read-only and referenced
    plan.run()


def test_a_plan_is_exclusive_during_a_call():
    a = _elbo_arrays(b=1024, d=784, lat=20)
    plan = _plan(**a)
    collisions = []

    def long_run():
        try:
            plan.run_n(400)
        except RuntimeError as exc:
            collisions.append(str(exc))

    t = threading.Thread(target=long_run)
    t.start()
    while t.is_alive():
        try:
            plan.run()
        except RuntimeError as exc:
            collisions.append(str(exc))
            break
    t.join()
    assert collisions and all("borrow" in c.lower() for c in collisions), collisions


# ------------------------------------------------------------------------------- eps drawn (eps_out)

EPS_BACKENDS = [("rust", "elbo"), ("rust", "elbo_grad"), ("rust-inner", "elbo"), ("rust-tutorial", "elbo")]
_BY_NAME = {b.name: b for b in (backend, inner_loop_backend, tutorial_backend)}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("name", "workload"), EPS_BACKENDS)
def test_sampled_eps_is_exposed_and_gives_z_exactly(name, workload, dtype):
    be = _BY_NAME[name]
    case = _case(
        workload, name, dtype=dtype, batch=70, input_dim=9, latent_dim=7, variant="eps=sampled", seed=4
    )
    inputs = WORKLOADS[workload].make_inputs(case)
    mu, logvar = (inputs[k].astype(np.float64) for k in ("mu", "logvar"))
    prepared = be.prepare(case, inputs)
    ulp = float(np.finfo(dtype).eps)
    previous = None
    for call in range(3):
        prepared.call() if call != 1 or prepared.call_n is None else prepared.call_n(3)
        out = prepared.outputs()
        eps = out["eps"]
        assert eps.shape == mu.shape and eps.dtype == np.dtype(dtype) and np.all(np.isfinite(eps))
        z = np.asarray(out["z"], dtype=np.float64)
        s_eps = np.exp(0.5 * logvar) * eps.astype(np.float64)
        err = np.abs(z - (mu + s_eps)) / (np.abs(mu) + np.abs(s_eps))
        assert float(np.max(err)) <= 4 * ulp, f"z is not mu + exp(logvar/2)*eps: {np.max(err):.3g}"
        if previous is not None:
            assert not np.any(eps == previous), "successive calls must draw different eps"
        previous = eps.copy()
    assert abs(float(previous.mean())) < 6 / math.sqrt(previous.size)


def test_eps_out_bad_use_raises():
    a = _elbo_arrays()
    with pytest.raises(ValueError, match="eps_out is for eps drawn inside the call"):
        ext.ElboPlan(
            ext.Pool(1),
            a["x"],
            a["x_recon"],
            a["mu"],
            a["logvar"],
            a["eps"],
            a["z"],
            eps_out=np.empty((4, 3)),
        )
    with pytest.raises(ValueError, match="eps_out has shape"):
        ext.ElboPlan(
            ext.Pool(1), a["x"], a["x_recon"], a["mu"], a["logvar"], None, a["z"], eps_out=np.empty((4, 4))
        )
    with pytest.raises(ValueError, match="share memory"):
        ext.ElboPlan(ext.Pool(1), a["x"], a["x_recon"], a["mu"], a["logvar"], None, a["z"], eps_out=a["z"])
    with pytest.raises(TypeError, match="eps_out has dtype"):
        ext.TutorialPlan(
            a["x"], a["x_recon"], a["mu"], a["logvar"], None, a["z"], eps_out=np.empty((4, 3), np.float32)
        )
    with pytest.raises(TypeError):
        ext.ElboPlan(
            ext.Pool(1), a["x"], a["x_recon"], a["mu"], a["logvar"], None, a["z"], None, None, None, 0, a["z"]
        )
