"""Every timed call does the work that was checked: backends that skip work, written through the
documented contract (tests/integrity_backends.py), come out not ok, each for its reason, through the
real runner; NumPy measured beside them stays ok."""

from __future__ import annotations

import os

import pytest

from elbolab.measure.plan import Plan
from elbolab.measure.runner import run_plan
from elbolab.store.results import load
from tests.conftest import ROOT
from tests.integrity_backends import ALL

pytestmark = pytest.mark.slow


@pytest.fixture
def integrity_backends(monkeypatch):
    monkeypatch.setenv("ELBOLAB_BACKENDS", ",".join(f"tests.integrity_backends:{name}" for name in ALL))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def _run(tmp_path, backends, workloads, batches, **kw) -> dict:
    out = tmp_path / "run.json"
    plan = Plan(backends=("numpy", *backends), workloads=workloads, batches=batches, dtypes=("float64",),
                threads=(1,), variants=("eps=given",), quick=True, **kw)  # fmt: skip
    run_plan(plan, out, measure_limits=True)
    return {(m.case.backend, m.case.workload, m.case.batch): m for m in load(out).measurements}


# (backend, workload, batches, the status it must get, words its reason must hold)
CASES = [
    ("first-call-only", "elbo", (1024, 8192), "incorrect", "input set 1"),
    ("lazy-outputs", "elbo", (1024, 8192), "incorrect", "input set"),
    ("half-call-n", "elbo", (1, 128), "incorrect", "input set"),
    ("half-call-n", "iwae", (1, 128), "incorrect", "input set"),
    ("short-call-n", "elbo", (1, 128), "incorrect", "input set"),
    ("every-other-call", "iwae", (1, 128), "incorrect", "single call"),
    # a gradient of 6.4 M elements: after the first check of set 0, only elements the runner picks
    # travel (elbolab.measure.cells._pick)
    ("first-call-only", "elbo_grad", (8192,), "incorrect", "input set 1"),
    ("every-other-call", "elbo_grad", (8192,), "incorrect", "single call"),
    ("second-thread", "elbo", (8192,), "implausible", "threads did work"),
    ("forked-child", "elbo", (8192,), "implausible", "child process"),
    ("tampering", "elbo", (128,), "incorrect", ""),
]


@pytest.mark.parametrize(
    ("backend", "workload", "batches", "status", "words"), CASES, ids=[c[0] + "-" + c[1] for c in CASES]
)
def test_a_backend_that_skips_work_is_not_ok(
    tmp_path, integrity_backends, backend, workload, batches, status, words
):
    found = _run(tmp_path, (backend,), (workload,), batches)
    for batch in batches:
        m = found[(backend, workload, batch)]
        assert m.status == status, (batch, m.status, m.reason)
        assert words in (m.reason or ""), m.reason
        assert found[("numpy", workload, batch)].status == "ok", found[("numpy", workload, batch)].reason
