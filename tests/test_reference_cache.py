"""The run's shared references: served only for the same inputs, identical to a fresh computation."""

import numpy as np
import pytest

from elbolab.model.case import Case
from elbolab.model.workloads import REFERENCE_CACHE_ENV, WORKLOADS, cached_reference, check_outputs


def _same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        for part in ("value", "worst", "careful"):
            np.testing.assert_array_equal(getattr(a[name], part), getattr(b[name], part))
        assert a[name].u == b[name].u


@pytest.mark.parametrize("workload", ["elbo", "elbo_grad", "iwae", "vae_step"])
def test_a_served_reference_is_the_computed_one(workload, tmp_path, monkeypatch):
    monkeypatch.setenv(REFERENCE_CACHE_ENV, str(tmp_path))
    case = Case(workload, "numpy", "cpu", "float32", 7, input_dim=13, latent_dim=3, hidden_dim=5)
    w = WORKLOADS[workload]
    inputs = w.make_inputs(case)
    fresh = w.reference(inputs, case)
    first = cached_reference(w, inputs, case)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    served = cached_reference(w, inputs, case)
    _same(fresh, first)
    _same(fresh, served)
    # another backend and thread count with the same inputs shares it
    other = Case(workload, "rust", "cpu", "float32", 7, input_dim=13, latent_dim=3, hidden_dim=5, threads=2)
    cached_reference(w, inputs, other)
    assert len(list(tmp_path.glob("*.npz"))) == 1


def _elbo_stored(tmp_path, monkeypatch):
    """A small float64 elbo case whose reference is computed and stored in tmp_path."""
    monkeypatch.setenv(REFERENCE_CACHE_ENV, str(tmp_path))
    case = Case("elbo", "numpy", "cpu", "float64", 7, input_dim=13, latent_dim=3)
    w = WORKLOADS["elbo"]
    inputs = w.make_inputs(case)
    cached_reference(w, inputs, case)
    return w, case, inputs


def test_other_inputs_under_the_same_case_are_never_served_its_reference(tmp_path, monkeypatch):
    w, case, inputs = _elbo_stored(tmp_path, monkeypatch)
    changed = dict(inputs, x_recon=inputs["x_recon"] * 0.5)
    _same(cached_reference(w, changed, case), w.reference(changed, case))
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_a_sampled_case_is_checked_against_its_own_draw_only_the_draw_free_part_is_stored(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(REFERENCE_CACHE_ENV, str(tmp_path))
    case = Case("elbo", "numpy", "cpu", "float64", 64, input_dim=13, latent_dim=3, variant="eps=sampled")
    w = WORKLOADS["elbo"]
    inputs = w.make_inputs(case)
    rng = np.random.default_rng(1)
    for _ in range(2):  # two backends' draws: each z against its own eps, the rest shared
        eps, next_eps = rng.standard_normal((2, 64, 3))  # two calls' draws
        good = {k: t.value for k, t in w.reference(dict(inputs, eps=eps), case).items()}
        assert check_outputs(w, case, inputs, dict(good, eps=eps), next_eps=next_eps).ok
        wrong_z = dict(good, eps=eps, z=good["z"] * 1.01)
        assert not check_outputs(w, case, inputs, wrong_z, next_eps=next_eps).ok
        wrong_kl = dict(good, eps=eps, kl=good["kl"] * 1.01)
        assert not check_outputs(w, case, inputs, wrong_kl, next_eps=next_eps).ok
    (stored,) = tmp_path.glob("*.npz")  # the part eps does not touch, once
    with np.load(stored) as saved:
        assert {k.split("/")[0] for k in saved.files if "/" in k} == {"recon", "kl", "elbo"}


def test_a_damaged_reference_is_computed_again(tmp_path, monkeypatch):
    w, case, inputs = _elbo_stored(tmp_path, monkeypatch)
    (stored,) = tmp_path.glob("*.npz")
    stored.write_bytes(stored.read_bytes()[:100])  # writers replace atomically; damaged by other means
    _same(cached_reference(w, inputs, case), w.reference(inputs, case))


def test_a_killed_runs_reference_folder_is_removed_by_the_next_run(tmp_path, monkeypatch):
    import tempfile

    from elbolab.measure import runner

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / "elbolab-references-999999999-abc"  # no such pid
    dead.mkdir()
    (dead / "x.npz").write_bytes(b"0" * 10)
    with runner._reference_folder() as folder:
        assert not dead.exists()
        assert folder.startswith(str(tmp_path))
    assert not list(tmp_path.iterdir())
