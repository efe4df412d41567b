"""Anomalies are flagged with a likely cause; the machine's health is recorded and checked."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from elbolab.analyse.anomalies import scan
from elbolab.cli import main
from elbolab.measure.health import survey
from elbolab.model.case import Case
from elbolab.model.workloads import WORKLOADS
from tests.builders import make_run, noisy, ok


def _kinds(run):
    return {(a.case.backend, a.case.threads, a.kind) for a in scan(run)}


def test_slower_with_more_threads_is_flagged():
    rng = np.random.default_rng(0)
    one, two = Case("vae_step", "numba-parallel", threads=1), Case("vae_step", "numba-parallel", threads=2)
    run = make_run([ok(one, noisy(rng, 1e7)), ok(two, noisy(rng, 1.2e8))])
    (a,) = scan(run)
    assert a.kind == "slower with more threads" and a.case == two and "oversubscription" in a.likely_cause
    same = make_run([ok(one, noisy(rng, 1e7)), ok(two, noisy(rng, 0.6e7))])
    assert not scan(same)


def test_first_call_and_oversubscription_are_flagged():
    m = ok(Case("elbo", "numba"), [1e4] * 9)
    run = make_run([replace(m, first_call_ns=int(2e9), cpu_ns=int(3e9), wall_ns=int(1e9))])
    assert {a.kind for a in scan(run)} == {"slow first call", "oversubscribed"}


def test_far_below_the_roofline_its_peers_reach():
    case = Case("elbo", "slowpy", batch=8192)
    cost = WORKLOADS["elbo"].cost(case)
    fast = replace(ok(Case("elbo", "rust", batch=8192), [cost.bytes / 25.0] * 9), cost=cost)  # 25 GB/s
    slow = replace(ok(case, [cost.bytes / 1.0] * 9), cost=cost)  # 1 GB/s
    run = replace(make_run([fast, slow]), limits={"memory_bandwidth_bytes_per_s": 30e9,
                                                  "memory_bandwidth_single_thread_bytes_per_s": 30e9})  # fmt: skip
    kinds = _kinds(run)
    assert ("slowpy", 1, "far below the roofline") in kinds and (
        "rust",
        1,
        "far below the roofline",
    ) not in kinds


def test_numba_parallel_runs_blas_on_one_thread_inside_its_parallel_kernel():
    pytest.importorskip("numba")
    from backends.numba import parallel_backend

    case = Case("vae_step", "numba-parallel", batch=8, input_dim=9, latent_dim=2, hidden_dim=5, threads=2)
    prepared = parallel_backend.prepare(case, WORKLOADS["vae_step"].make_inputs(case))
    assert prepared.notes["blas_threads"] == 1


def test_health_sees_an_openblas_override_and_the_load(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    h = survey()
    assert h.facts["environment"]["OPENBLAS_CORETYPE"] == "Haswell"
    assert any("OPENBLAS_CORETYPE=Haswell" in w for w in h.warnings)
    assert len(h.facts["load_average"]) == 3 and h.facts["cores_available"] >= 1


def test_doctor_prints_and_exits_0(capsys):
    assert main(["doctor", "--json"]) == 0
    assert '"facts"' in capsys.readouterr().out
