"""The references themselves (formulas, stability, gradients, a higher-precision evaluation) and the
checker's rules (bounds from the arithmetic, the careful line of ok and the worst case beyond it,
ReLU slack, random directions, non-finite values, eps drawn inside the call)."""

import math

import numpy as np
import pytest
from scipy.special import logsumexp

from elbolab.model.accuracy import (
    RUNNING_SUM,
    WHOLE_SUM,
    Tracked,
    compare_output,
    element_bounds,
    masked,
    random_directions,
    unit_roundoff,
)
from elbolab.model.case import Case
from elbolab.model.workloads import VAE_PARAMS, WORKLOADS, check_outputs, init_vae_params


def ref_values(case, inputs=None):
    w = WORKLOADS[case.workload]
    inputs = w.make_inputs(case) if inputs is None else inputs
    return inputs, {k: v.value for k, v in w.reference(inputs, case).items()}


def test_inputs_are_identical_for_every_backend_and_cast_per_dtype():
    a = WORKLOADS["elbo"].make_inputs(Case("elbo", "numpy", batch=5))
    b = WORKLOADS["elbo"].make_inputs(Case("elbo", "rust", batch=5, threads=2))
    c = WORKLOADS["elbo"].make_inputs(Case("elbo", "torch", batch=5, dtype="float32"))
    for k in a:
        assert np.array_equal(a[k], b[k])
        assert c[k].dtype == np.float32 and np.array_equal(c[k], a[k].astype(np.float32))
        assert a[k].flags.c_contiguous
    assert "eps" not in WORKLOADS["elbo"].make_inputs(Case("elbo", "numpy", batch=5, variant="eps=sampled"))


# ------------------------------------------------------------- the references, independently


def _elbo_in_long_double(inp, b, d, lat):
    """The elbo terms as loops in numpy's long double (80-bit extended on x86) with math.fsum."""
    ld = np.longdouble
    x, xr, mu, lv = (inp[k].astype(ld) for k in ("x", "x_recon", "mu", "logvar"))
    recon = -math.fsum(float((x[i, j] - xr[i, j]) ** 2) for i in range(b) for j in range(d)) / b
    kl_terms = []
    for i in range(b):
        for j in range(lat):
            v = lv[i, j]
            # e^v - 1 - v from its series where it cancels, in long double
            t = sum(v**n / math.factorial(n) for n in range(2, 30)) if abs(v) < 0.5 else np.exp(v) - 1 - v
            kl_terms.append(float(mu[i, j] ** 2 + t))
    kl = math.fsum(kl_terms) / (2 * b)
    return recon, kl


@pytest.mark.parametrize("scale", [1.0, 1e-6])
def test_elbo_reference_matches_a_higher_precision_evaluation(scale):
    """Also near zero KL (mu and logvar ~ 1e-6), where 1 + lv - e^lv would lose every digit."""
    b, d, lat = 5, 7, 3
    case = Case("elbo_grad", "numpy", batch=b, input_dim=d, latent_dim=lat)
    inp = WORKLOADS["elbo_grad"].make_inputs(case)
    inp["mu"], inp["logvar"] = inp["mu"] * scale, inp["logvar"] * scale
    ref = WORKLOADS["elbo_grad"].reference(inp, case)
    recon, kl = _elbo_in_long_double(inp, b, d, lat)
    assert float(ref["recon"].value) == pytest.approx(recon, rel=1e-15)
    assert float(ref["kl"].value) == pytest.approx(kl, rel=1e-14)
    # and the reference is within its own bound of the higher-precision value
    for name, exact in (("recon", recon), ("kl", kl)):
        t = ref[name]
        assert abs(float(t.value) - exact) <= float(t.careful) * 2.0**-53
    x, xr, mu, lv, eps = (inp[k] for k in ("x", "x_recon", "mu", "logvar", "eps"))
    assert np.allclose(ref["z"].value, mu + np.exp(lv / 2) * eps, rtol=1e-15)


def test_elbo_gradients_match_finite_differences():
    case = Case("elbo_grad", "numpy", batch=3, input_dim=4, latent_dim=2)
    inp, ref = ref_values(case)
    h = 1e-6
    for name, grad in (("x_recon", "grad_x_recon"), ("mu", "grad_mu"), ("logvar", "grad_logvar")):
        for idx in np.ndindex(inp[name].shape):
            up, down = dict(inp), dict(inp)
            up[name], down[name] = inp[name].copy(), inp[name].copy()
            up[name][idx] += h
            down[name][idx] -= h
            fd = (float(ref_values(case, up)[1]["elbo"]) - float(ref_values(case, down)[1]["elbo"])) / (2 * h)
            assert ref[grad][idx] == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_iwae_reference_matches_direct_densities_and_is_stable():
    case = Case("iwae", "numpy", batch=4, input_dim=5, latent_dim=3, importance_samples=6)
    inp, ref = ref_values(case)
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
    assert float(ref["iwae"]) == pytest.approx(total / 4, rel=1e-12)

    # x far from the decoder mean: log w ~ -1e6, where exp underflows to 0 and a naive log(mean(exp))
    # gives -inf; the stable reference stays finite
    far = dict(inp, x=inp["x"] + 1000.0)
    val = float(ref_values(case, far)[1]["iwae"])
    assert np.isfinite(val) and val < -1e5


def test_vae_reference_matches_torch_autograd():
    """An independent oracle for the hand-written backprop: torch.autograd in float64."""
    torch = pytest.importorskip("torch")
    case = Case("vae_step", "numpy", batch=6, input_dim=9, latent_dim=3, hidden_dim=5)
    inp, ref = ref_values(case)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in VAE_PARAMS) for k, v in inp.items()}
    h1 = torch.relu(t["x"] @ t["enc_w"] + t["enc_b"])
    mu, lv = h1 @ t["mu_w"] + t["mu_b"], h1 @ t["logvar_w"] + t["logvar_b"]
    z = mu + torch.exp(0.5 * lv) * t["eps"]
    logits = torch.relu(z @ t["dec_w"] + t["dec_b"]) @ t["out_w"] + t["out_b"]
    rec = (t["x"] * logits - torch.nn.functional.softplus(logits, threshold=1e9)).sum()
    kl = -0.5 * (1 + lv - mu**2 - torch.exp(lv)).sum()
    loss = (kl - rec) / 6
    loss.backward()
    assert float(ref["loss"]) == pytest.approx(float(loss), rel=1e-12)
    for name in VAE_PARAMS:
        np.testing.assert_allclose(ref[f"grad_{name}"], t[name].grad.numpy(), rtol=1e-9, atol=1e-13)


def test_vae_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    d, h, lat, b = 6, 5, 3, 4
    case = Case("vae_step", "numpy", batch=b, input_dim=d, latent_dim=lat, hidden_dim=h)
    inp = dict(init_vae_params(d, h, lat, rng), x=rng.random((b, d)), eps=rng.standard_normal((b, lat)))
    inp["lr"] = np.array(0.05)
    _, ref = ref_values(case, inp)
    step = 1e-6
    for name in VAE_PARAMS:
        for idx in np.ndindex(inp[name].shape):
            up, down = dict(inp), dict(inp)
            up[name], down[name] = inp[name].copy(), inp[name].copy()
            up[name][idx] += step
            down[name][idx] -= step
            fd = (float(ref_values(case, up)[1]["loss"]) - float(ref_values(case, down)[1]["loss"])) / (
                2 * step
            )
            assert ref[f"grad_{name}"][idx] == pytest.approx(fd, rel=1e-5, abs=1e-8), (name, idx)
            assert ref[f"new_{name}"][idx] == pytest.approx(inp[name][idx] - 0.05 * ref[f"grad_{name}"][idx])


# ---------------------------------------------------------------------------- the checker


def _checked(case, mutate, dtype_cast=None):
    """The reference's own values (optionally rounded to the case dtype), mutated, then checked."""
    w = WORKLOADS[case.workload]
    inp = w.make_inputs(case)
    got = {k: np.array(v.value, copy=True) for k, v in w.reference(inp, case).items()}
    if dtype_cast:
        got = {k: v.astype(dtype_cast) for k, v in got.items()}
    mutate(got)
    return check_outputs(w, case, inp, got)


def test_checker_accepts_the_reference_and_rejects_wrong_answers():
    case = Case("elbo_grad", "numpy", batch=16)
    good = _checked(case, lambda g: None)
    assert good.ok and good.error_units == 0 and good.digits == 17.0
    bad = _checked(case, lambda g: g.__setitem__("kl", g["kl"] * (1 + 1e-9)))
    assert not bad.ok and bad.worst_output == "kl" and "what the arithmetic can give" in bad.detail
    assert not _checked(case, lambda g: g.pop("grad_mu")).ok
    assert not _checked(case, lambda g: g.__setitem__("z", g["z"][:, :3])).ok
    assert not _checked(case, lambda g: g["grad_x_recon"].__setitem__((0, 0), np.nan)).ok
    flip = _checked(case, lambda g: g["grad_mu"].__setitem__((3, 1), -g["grad_mu"][3, 1]))
    assert not flip.ok and flip.worst_output == "grad_mu"


def test_float32_rounding_is_ok_and_an_error_the_worst_case_admits_is_not():
    case = Case("elbo", "numpy", batch=64, dtype="float32")
    rounded = _checked(case, lambda g: None, dtype_cast=np.float32)
    assert rounded.ok and rounded.error_units <= 1.0  # one rounding to float32
    # 50,176 float32 additions can be off by 50,176 u = 0.3% in the worst case, so a 0.1% error in
    # the sum is within what the arithmetic can give; careful summation stays within ~1e-5 of it:
    # incorrect, and said to be less accurate than careful code (not impossible)
    loose = _checked(case, lambda g: g.__setitem__("recon", g["recon"] * 1.001))
    assert not loose.ok and loose.worst_output == "recon"
    assert "what careful float32 arithmetic gives" in loose.detail and "admits it" in loose.detail
    assert loose.expected_units < loose.error_units < loose.bound_units
    # a 1% error is past the worst case too
    wrong = _checked(case, lambda g: g.__setitem__("recon", g["recon"] * 1.01))
    assert not wrong.ok and "what the arithmetic can give" in wrong.detail
    assert wrong.error_units > wrong.bound_units
    # in float64 the same sum is held to 6e-12 in the worst case, and to 1e-14 carefully
    assert not _checked(
        Case("elbo", "numpy", batch=64), lambda g: g.__setitem__("recon", g["recon"] * (1 + 1e-13))
    ).ok


def test_bounds_grow_with_the_number_of_terms():
    small = WORKLOADS["elbo"].reference(WORKLOADS["elbo"].make_inputs(c := Case("elbo", "numpy", batch=4)), c)
    big_case = Case("elbo", "numpy", batch=512)
    big = WORKLOADS["elbo"].reference(WORKLOADS["elbo"].make_inputs(big_case), big_case)
    # in units of u relative to the value: grows with the number of terms for a sum ...
    assert float(small["recon"].worst / abs(small["recon"].value)) < float(
        big["recon"].worst / abs(big["recon"].value)
    )
    # ... but not for an elementwise output (relative to the size of its terms, mu and sigma * eps)
    for ref, c in ((small, Case("elbo", "numpy", batch=4)), (big, big_case)):
        inp = WORKLOADS["elbo"].make_inputs(c)
        terms = np.abs(inp["mu"]) + np.abs(np.exp(inp["logvar"] / 2) * inp["eps"])
        assert np.max(ref["z"].worst / terms) < 10


def test_float32_sums_by_row_are_ok_and_one_running_sum_over_the_whole_array_is_not():
    """The workload contract: each row summed in the dtype (in any order, a naive loop included),
    the rows in float64 or pairwise; never one running float32 sum over everything, which at batch
    8192 stagnates (terms below half an ulp of the running total vanish) and loses 2 of float32's 7
    digits: more than summing a quarter of the rows and rescaling does."""
    case = Case("elbo", "numpy", batch=8192, dtype="float32")
    inp = WORKLOADS["elbo"].make_inputs(case)
    diff = inp["x"] - inp["x_recon"]
    squares = diff * diff
    rows = np.cumsum(squares, axis=1, dtype=np.float32)[:, -1]  # each row a running float32 sum

    def recon(total):
        return lambda g: g.__setitem__("recon", np.float32(-total / 8192))

    assert _checked(case, recon(rows.sum(dtype=np.float64))).ok
    assert _checked(case, recon(np.cumsum(rows, dtype=np.float32)[-1])).ok  # the rows too
    assert _checked(case, recon(np.sum(squares))).ok  # NumPy's pairwise sum
    naive = _checked(case, recon(np.cumsum(squares.ravel(), dtype=np.float32)[-1]))
    assert (
        not naive.ok and naive.worst_output == "recon" and "less accurate than careful code" in naive.detail
    )
    assert naive.expected_units < naive.error_units < naive.bound_units


def test_near_zero_kl_the_cancelling_formula_is_less_accurate_than_careful_and_incorrect():
    """KL ~ 1e-12 from terms of size 1: 1 + lv - mu^2 - e^lv loses every digit there, which the
    worst case of its arithmetic allows but careful arithmetic (expm1) does not."""
    case = Case("elbo", "numpy", batch=64)
    w = WORKLOADS["elbo"]
    inp = w.make_inputs(case)
    inp["mu"], inp["logvar"] = inp["mu"] * 0.0, inp["logvar"] * 1e-6  # KL ~ 1e-12
    ref = {k: v.value for k, v in w.reference(inp, case).items()}
    mu, lv = inp["mu"], inp["logvar"]
    cancelling = -0.5 * np.sum(1.0 + lv - mu * mu - np.exp(lv)) / 64
    accurate = 0.5 * np.sum(mu * mu + (np.expm1(lv) - lv)) / 64
    assert check_outputs(w, case, inp, dict(ref, kl=accurate, elbo=ref["recon"] - accurate)).ok
    old = check_outputs(w, case, inp, dict(ref, kl=cancelling, elbo=ref["recon"] - cancelling))
    assert not old.ok and old.worst_output == "kl" and "admits it" in old.detail


def test_non_finite_values_match_only_the_same_non_finite_reference():
    case = Case("elbo", "numpy", batch=8)
    w = WORKLOADS["elbo"]
    inp = w.make_inputs(case)
    inp["mu"][0, 0] = 1e200  # mu^2 overflows: the KL is +inf, the ELBO -inf, z stays finite
    ref = {k: v.value for k, v in w.reference(inp, case).items()}
    assert ref["kl"] == np.inf and ref["elbo"] == -np.inf
    assert check_outputs(w, case, inp, dict(ref)).ok  # a correct inf is correct
    assert not check_outputs(w, case, inp, dict(ref, kl=np.float64(1e300))).ok  # finite garbage vs inf
    assert not check_outputs(w, case, inp, dict(ref, elbo=np.inf)).ok  # the wrong sign
    assert not check_outputs(w, case, inp, dict(ref, recon=np.nan)).ok  # nan where the reference is finite


@pytest.mark.parametrize("with_inf", [False, True])
def test_a_wrong_element_is_named_where_it_is(with_inf):
    """The check compares the finite elements only (flat, in place); the element it names must be
    the wrong one whether or not some elements are non-finite (masked) or none are (all of them)."""
    from elbolab.model.accuracy import compare_output

    ref = np.linspace(1.0, 2.0, 12).reshape(3, 4)
    if with_inf:
        ref[0, 1] = ref[2, 0] = np.inf
    got = ref.copy()
    got[1, 3] *= 1 + 1e-9  # beyond float64 rounding
    err = compare_output("g", got, Tracked(ref), "float64")
    assert not err.ok and "at element (1, 3)" in err.problem
    assert compare_output("g", ref.copy(), Tracked(ref), "float64").ok


def test_sampled_eps_is_checked_exactly_against_the_backends_own_draw():
    case = Case("elbo", "numpy", batch=256, variant="eps=sampled")
    w = WORKLOADS["elbo"]
    inp = w.make_inputs(case)
    rng = np.random.default_rng(0)
    eps = rng.standard_normal((256, 20))
    mu, lv = inp["mu"], inp["logvar"]
    ref = {k: v.value for k, v in w.reference(dict(inp, eps=eps), case).items()}
    good = dict(ref, eps=eps)
    assert check_outputs(w, case, inp, good, next_eps=rng.standard_normal((256, 20))).ok
    assert not check_outputs(w, case, inp, dict(good, z=mu + np.exp(lv) * eps)).ok  # wrong scale
    assert not check_outputs(w, case, inp, dict(good, z=np.zeros_like(mu))).ok  # z never written
    assert not check_outputs(w, case, inp, dict(good, z=np.full_like(mu, np.nan))).ok
    assert not check_outputs(w, case, inp, {k: v for k, v in good.items() if k != "eps"}).ok
    assert not check_outputs(w, case, inp, dict(good, eps=eps * 2, z=mu + np.exp(lv / 2) * eps * 2)).ok
    repeated = check_outputs(w, case, inp, good, next_eps=eps.copy())
    assert not repeated.ok and "same eps" in repeated.detail
    negated = check_outputs(w, case, inp, good, next_eps=-eps)
    assert not negated.ok and "negation" in negated.detail
    uniform = rng.uniform(-1, 1, (256, 20)) * np.sqrt(3)  # unit variance, but no tails
    fake = {k: v.value for k, v in w.reference(dict(inp, eps=uniform), case).items()}
    bad = check_outputs(w, case, inp, dict(fake, eps=uniform), next_eps=rng.standard_normal((256, 20)))
    assert not bad.ok and "eps:" in bad.detail and "z" not in bad.worst_output


def test_running_error_bounds_follow_the_rules():
    assert unit_roundoff("float64") == 2.0**-53 and unit_roundoff("float32") == 2.0**-24
    t = Tracked([1.0, -2.0]) * Tracked([3.0, 4.0]) + 1.0  # exact inputs: one rounding per operation
    assert list(t.value) == [4.0, -7.0] and list(t.worst) == [3.0 + 4.0, 8.0 + 7.0]
    assert list(t.careful) == list(t.worst)  # elementwise work: the same first-order bound
    s = Tracked(np.ones(100)).sum()
    assert float(s.worst) == 99 * 100 and float(s.careful) == pytest.approx(RUNNING_SUM * 10 * 100)
    # a whole array (several axes) is summed blocked: WHOLE_SUM sqrt(m), never below one row's
    whole = Tracked(np.ones((400, 100))).sum()
    assert float(whole.careful) == pytest.approx(WHOLE_SUM * 200 * 40_000)
    assert float(Tracked(np.ones((4, 100))).sum().careful) == pytest.approx(RUNNING_SUM * 10 * 400)
    # inherited errors of distinct terms add in quadrature in the careful bound, in full in the worst
    inherited = Tracked([1.0, 1.0], worst=[3.0, 4.0], careful=[3.0, 4.0]).sum()
    assert float(inherited.worst) == 7 + 2 and float(inherited.careful) == pytest.approx(5 + 2)
    a = Tracked(np.ones((1, 2)), careful=np.array([[3.0, 4.0]]))
    product = a @ Tracked(np.ones((2, 1)))
    assert float(product.careful[0, 0]) == pytest.approx(5 + 2)  # careful_sum(2) = min(1, 1.5 sqrt 2)


def test_relu_slack_counts_only_the_elements_careful_arithmetic_can_flip():
    """An element within x's careful bound of 0 may flip in careful arithmetic; one that only the
    worst case could flip gets the slack in `worst` alone; flips in a sum add in quadrature."""
    u = unit_roundoff("float32")
    # worst error 1e3 u, careful 10 u: flippable below 6e-5 in the worst case, 6e-7 carefully
    x = Tracked([1.0, 1e-9, -1e-9, 1e-6, -1.0], worst=np.full(5, 1e3), careful=np.full(5, 10.0), u=u)
    g = Tracked(np.ones(5), u=u)
    d = masked(g, x)
    assert list(d.value) == [1.0, 1.0, 0.0, 1.0, 0.0]
    slack = 1 / u  # |g| in units of u: the element may be g or 0
    assert list(d.careful == slack) == [False, True, True, False, False]
    assert list(d.worst == slack) == [False, True, True, True, False]
    total = d.sum()
    assert float(total.worst) >= 3 * slack and float(total.careful) < 1.5 * slack  # sqrt(2) of 2 flips


def test_vae_step_gradient_bounds_sit_far_below_the_gradients():
    """Issue 24: the worst case exceeds |value| for >= 95% of the elements of 8 of vae_step's 10
    float32 gradients, so a zeroed encoder passed under it. The careful bound exceeds |value| only
    where the gradient is exactly 0 (units that no row activates), and is ~1e-4 of it elsewhere."""
    case = Case("vae_step", "numpy", batch=128, dtype="float32")
    w = WORKLOADS["vae_step"]
    ref = w.reference(w.make_inputs(case), case)
    covered_by_worst = 0
    for name in VAE_PARAMS:
        t = ref[f"grad_{name}"]
        worst, careful = element_bounds(t, "float32")
        value = np.abs(t.value)
        covered_by_worst += np.mean(worst > value) >= 0.95
        nonzero = value > 0
        assert np.mean(careful[nonzero] > value[nonzero]) < 0.01, name
        assert np.median(careful[nonzero] / value[nonzero]) < 1e-3, name
    assert covered_by_worst >= 8


def test_an_error_within_every_elements_bound_but_aligned_is_caught_along_a_random_direction():
    """Each element at 0.9 of its careful bound passes element by element; an error that large on
    every element at once is not what rounding does, and along the checker's first random
    direction it is ~0.9 * 0.8 sqrt(n) of the norm-wise bound."""
    rng = np.random.default_rng(1)
    ref = Tracked(rng.standard_normal(1000), careful=np.full(1000, 100.0), u=unit_roundoff("float32"))
    _, bound = element_bounds(ref, "float32")
    v = random_directions("grad_g", 1000, 4)[0]
    aligned = ref.value + 0.9 * bound * np.sign(v)
    assert compare_output("grad_g", aligned, ref, "float32").ok  # element by element only
    err = compare_output("grad_g", aligned, ref, "float32", directions=4)
    assert not err.ok and "along a random direction" in err.problem
    # honest rounding, every element within a rounding or two, passes both
    rounded = ref.value.astype(np.float32)
    assert compare_output("grad_g", rounded, ref, "float32", directions=4).ok
    # a gradient that is exactly 0 (no unit active) with subnormal noise: bounds at the subnormal
    # floor, whose squares would underflow to 0, still give a ratio (of ~1e-13), not inf or nan
    zero = Tracked(np.zeros(50))
    assert compare_output("grad_g", np.full(50, 1e-320), zero, "float64", directions=4).used < 1e-6


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
