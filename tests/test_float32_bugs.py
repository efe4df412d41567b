"""The float32 bugs that hid under the worst-case bounds (issue 24), caught at every batch of the
default matrix where the workload runs, checked at the function level: each mutant of
tests/mutants.py prepared and called in this process (elbolab.measure.opening.check_case), its eps
draws collected over consecutive calls as the runner collects them (check_draws). The same mutants
also run through the real runner in tests/test_mutations.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import tests.mutants as mutants
from elbolab.measure.opening import check_case, open_case
from elbolab.model.accuracy import direction_ratios, element_bounds
from elbolab.model.case import Case
from elbolab.model.workloads import REFERENCE_CACHE_ENV, VAE_PARAMS, WORKLOADS, check_draws
from tests.test_draws import calls_for

ELBO_BATCHES = (1, 128, 1024, 8192)
VAE_BATCHES = (1, 128, 1024)


@pytest.fixture(autouse=True, scope="module")
def shared_references(tmp_path_factory):
    """The references shared between the mutants of one case, as the runner shares them."""
    mp = pytest.MonkeyPatch()
    mp.setenv(REFERENCE_CACHE_ENV, str(tmp_path_factory.mktemp("references")))
    yield
    mp.undo()


def checked(bug: str, workload: str, batch: int, dtype: str = "float32"):
    backend = getattr(mutants, bug) if bug in mutants.ALL else mutants.VAE_ZERO[bug.removeprefix("vae_zero_")]
    return check_case(backend, Case(workload, backend.name, "cpu", dtype, batch))


@pytest.mark.slow
@pytest.mark.parametrize("batch", ELBO_BATCHES)
@pytest.mark.parametrize("workload", ["elbo", "elbo_grad"])
def test_recon_from_a_subset_of_the_terms_is_incorrect(workload, batch):
    """Half or a quarter of recon's terms, rescaled: at batch 8192 the half is off by 2.8e-4 (elbo)
    and 1.1e-4 (elbo_grad, other data), which the worst case of a float32 sum of 6.4 M terms
    (0.38) admitted; careful float32 summation stays within 7.6e-5 of it."""
    for bug in ("recon_half", "recon_quarter"):
        check = checked(bug, workload, batch)
        assert not check.ok and check.worst_output in ("recon", "elbo"), (bug, check)
    assert checked("correct", workload, batch).ok


@pytest.mark.slow
@pytest.mark.parametrize("batch", ELBO_BATCHES)
def test_one_running_float32_sum_over_everything_is_incorrect_and_by_rows_is_ok(batch):
    naive = checked("naive_sum", "elbo", batch)
    assert naive.ok == (batch == 1), naive  # at batch 1 it is one row's running sum
    assert checked("row_naive", "elbo", batch).ok


@pytest.mark.slow
@pytest.mark.parametrize("batch", VAE_BATCHES)
@pytest.mark.parametrize("layer", mutants.VAE_LAYERS)
def test_a_zeroed_layer_is_incorrect(layer, batch):
    check = checked(f"vae_zero_{layer}", "vae_step", batch)
    assert not check.ok and f"grad_{layer}_" in check.detail, check


@pytest.mark.slow
@pytest.mark.parametrize("batch", VAE_BATCHES)
def test_a_zeroed_layer_fails_along_every_random_direction_by_itself(batch):
    """The directions alone, without the element-by-element test: the error of a zeroed gradient
    (the gradient itself) is past the norm-wise bound along each of the directions (typically by
    10^2-10^4; less only along a direction nearly orthogonal to it, as |N(0, 1)| is sometimes)."""
    case = Case("vae_step", "numpy", "cpu", "float32", batch)
    inputs = WORKLOADS["vae_step"].make_inputs(case)
    ref = WORKLOADS["vae_step"].reference(inputs, case)
    for name in VAE_PARAMS:
        want = ref[f"grad_{name}"]
        _, bound = element_bounds(want, "float32")
        assert direction_ratios(f"grad_{name}", want.value, bound, 4).min() > 1, name


@pytest.mark.slow
@pytest.mark.parametrize("batch", (2, 128, 1024))
def test_a_backward_over_half_the_batch_is_incorrect(batch):
    check = checked("vae_half_batch", "vae_step", batch)
    assert not check.ok and "grad_" in check.detail


@pytest.mark.slow
@pytest.mark.parametrize("batch", VAE_BATCHES)
def test_the_same_vae_kernels_without_a_bug_are_ok(batch):
    assert checked("correct", "vae_step", batch).ok


def mutant_draws(bug: str, workload: str, batch: int) -> list[np.ndarray]:
    """The eps of consecutive calls, as many as the runner collects."""
    backend = getattr(mutants, bug)
    opened = open_case(
        backend, Case(workload, backend.name, "cpu", "float32", batch, variant="eps=sampled"), None
    )
    draws = [np.array(opened.got["eps"], copy=True)]
    for _ in range(calls_for(batch) - 1):
        opened.prepared.call()
        draws.append(np.array(opened.prepared.outputs()["eps"], copy=True))
    opened.close()
    return draws


@pytest.mark.parametrize("batch", ELBO_BATCHES)
@pytest.mark.parametrize("workload", ["elbo", "elbo_grad"])
def test_draws_that_are_not_fresh_standard_normals_fail(workload, batch):
    for bug in mutants.DRAWS:
        assert check_draws(mutant_draws(bug, workload, batch)) is not None, bug
    assert check_draws(mutant_draws("correct", workload, batch)) is None
