"""check_draws: the eps of consecutive eps=sampled calls tested as fresh standard normal draws.

Real generators (NumPy's default_rng, torch.randn, NumPy's API inside Numba's njit, and every
backend's own draws, the Rust ones included) pass over many seeds at every batch of the default
matrix; each bad generator fails at every one of them, with the number of calls the runner collects
(at least ~4096 numbers, at most 64 calls, at least 3 so that a reuse of period 2 can show).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from elbolab.model import workloads
from elbolab.model.backend import discover
from elbolab.model.case import Case
from elbolab.model.workloads import WORKLOADS, check_draws

BATCHES = (1, 128, 1024, 8192)
LATENT = 20


def calls_for(batch: int, latent: int = LATENT) -> int:
    """How many calls the runner draws from: ~4096 numbers, between 3 and 64 calls."""
    return min(64, max(3, math.ceil(4096 / (batch * latent))))


def numpy_draws(seed: int, batch: int, dtype=np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, LATENT), dtype=dtype) for _ in range(calls_for(batch))]


@pytest.mark.parametrize("batch", BATCHES)
def test_numpy_draws_pass_over_many_seeds(batch):
    seeds = range(40 if batch < 8192 else 8)
    failures = [(s, check_draws(numpy_draws(s, batch))) for s in seeds]
    assert not [f for f in failures if f[1]], failures
    assert check_draws(numpy_draws(99, batch, np.float64)) is None


def test_torch_randn_passes_over_many_seeds():
    torch = pytest.importorskip("torch")
    for batch in BATCHES:
        for seed in range(20 if batch < 8192 else 4):
            gen = torch.Generator().manual_seed(seed)
            draws = [torch.randn(batch, LATENT, generator=gen).numpy() for _ in range(calls_for(batch))]
            assert check_draws(draws) is None, (batch, seed)


def test_numba_draws_inside_njit_pass_over_many_seeds():
    numba = pytest.importorskip("numba")

    @numba.njit(cache=False)
    def draw(seed, n, batch, latent):
        np.random.seed(seed)
        out = np.empty((n, batch, latent), dtype=np.float32)
        for i in range(n):
            for b in range(batch):
                for j in range(latent):
                    out[i, b, j] = np.random.standard_normal()
        return out

    for batch in BATCHES:
        for seed in range(20 if batch < 8192 else 4):
            assert check_draws(list(draw(seed, calls_for(batch), batch, LATENT))) is None, (batch, seed)


BACKENDS = discover()


# torch-compile draws with torch's eager randn, outside its compiled graph, and compiles per case
OWN_DRAWS = [
    n for n, b in BACKENDS.items() if "cpu" in b.devices and "elbo" in b.workloads and n != "torch-compile"
]


@pytest.mark.parametrize("name", OWN_DRAWS)
def test_every_backends_own_draws_pass(name):
    """The draws each backend makes inside its timed call (Rust's ziggurat and the tutorial's,
    NumPy's, Numba's serial and parallel, torch's), from consecutive calls as the runner takes them."""
    backend = BACKENDS[name]
    for batch in BATCHES:
        for seed in range(3):
            case = Case("elbo", name, "cpu", "float32", batch, variant="eps=sampled", seed=seed, threads=2)
            if backend.skip_reason(case):
                pytest.skip(backend.skip_reason(case))
            prepared = backend.prepare(case, WORKLOADS["elbo"].make_inputs(case))
            draws = []
            for _ in range(calls_for(batch)):
                prepared.call()
                draws.append(np.array(prepared.outputs()["eps"], copy=True))
            assert check_draws(draws) is None, (batch, seed)


def test_the_level_is_what_it_says():
    """At a level of 10% a correct generator fails ~10% of the checks (a bit less: the three
    tests' level is split by Bonferroni): the p-values are right, not just small."""
    saved = workloads.DRAW_LEVEL
    try:
        workloads.DRAW_LEVEL = 0.1
        failed = sum(check_draws(numpy_draws(seed, 1)) is not None for seed in range(300))
    finally:
        workloads.DRAW_LEVEL = saved
    assert 12 <= failed <= 45, failed


# -------------------------------------------------------------------------- bad generators


def flipping_pattern(rng, batch, n):
    pattern = np.where(rng.random((batch, LATENT)) < 0.5, -1.0, 1.0)
    return [pattern * (-1) ** i for i in range(n)]


def alternating(rng, batch, n):
    stored = [rng.standard_normal((batch, LATENT)) for _ in range(2)]
    return [stored[i % 2] for i in range(n)]


def uniform(rng, batch, n):
    return [rng.uniform(-1.0, 1.0, (batch, LATENT)) * math.sqrt(3.0) for _ in range(n)]


def reused(rng, batch, n):
    return [rng.standard_normal((batch, LATENT))] * n


def too_wide(rng, batch, n):
    return [1.2 * rng.standard_normal((batch, LATENT)) for _ in range(n)]


def copied_rows(rng, batch, n):
    return [np.tile(rng.standard_normal(LATENT), (batch, 1)) for _ in range(n)]


BAD = {
    "flipping_pattern": flipping_pattern,
    "alternating": alternating,
    "uniform": uniform,
    "reused": reused,
    "too_wide": too_wide,
    "copied_rows": copied_rows,
}


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("bad", list(BAD))
def test_every_bad_generator_fails_at_every_batch(bad, batch):
    if bad == "copied_rows" and batch == 1:
        pytest.skip("one row: nothing to copy")
    draws = [d.astype(np.float32) for d in BAD[bad](np.random.default_rng(7), batch, calls_for(batch))]
    assert check_draws(draws) is not None


def test_what_is_wrong_is_said():
    rng = np.random.default_rng(3)
    good = [rng.standard_normal((128, LATENT)) for _ in range(3)]
    assert "same eps as call 0" in check_draws(reused(rng, 128, 3))
    assert "negation" in check_draws([good[0], -good[0]])
    assert "repeats row 7 of call 0" in check_draws(
        [good[0], good[1], np.vstack([good[2][:5], good[0][7:8], good[2][6:]])]
    )
    assert "variance" in check_draws(too_wide(rng, 1, 64))  # 1,280 numbers: KS would not see it
    assert "beyond +-2" in check_draws(uniform(rng, 1, 64))
    assert "shape" in check_draws([good[0], good[1][:5]])
    assert "non-finite" in check_draws([good[0], np.full((128, LATENT), np.nan)])
    # a single number a call: chance repeats are too likely to judge, the distribution still is
    assert check_draws([np.array([[x]]) for x in rng.standard_normal(64)]) is None
    assert check_draws([np.array([[0.5]])] * 64) is not None
