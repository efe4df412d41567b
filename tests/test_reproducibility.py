"""Speed-ups that reproduce: a run's verdicts stay right when the machine's load changes mid-run.

A CPU hog (a busy process per core) starts after the first cell of a run. NumPy is measured beside
an identical copy of itself registered as another backend (`numpy-again`, an A/A) and the Rust
kernel (~3x faster than NumPy at these sizes): the copy is never called faster or slower than
NumPy, and Rust never slower; what the load costs is verdicts demoted to 'too noisy to tell' (the
null control measures the noise, and every interval is widened by it), never wrong ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from elbolab.analyse.table import measurement_table
from elbolab.measure.plan import Plan
from elbolab.measure.runner import run_plan
from elbolab.store.results import load
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture
def numpy_again(monkeypatch):
    monkeypatch.setenv("ELBOLAB_BACKENDS", "tests.integrity_backends:numpy_again")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


def test_a_hog_started_mid_run_demotes_verdicts_and_never_makes_them_wrong(tmp_path, numpy_again):
    pytest.importorskip("elbolab_rust")
    hogs: list[subprocess.Popen] = []

    def start_hog_after_the_first_cell(m):
        if not hogs:
            hogs.extend(
                subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(os.cpu_count() or 2)
            )

    out = tmp_path / "run.json"
    plan = Plan(backends=("numpy", "numpy-again", "rust"), workloads=("elbo",), batches=(128, 1024, 4096),
                dtypes=("float64",), threads=(1,), variants=("eps=given",), quick=True)  # fmt: skip
    try:
        run_plan(plan, out, measure_limits=False, on_result=start_hog_after_the_first_cell)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    df = measurement_table(load(out))
    verdicts = {(r.backend, r.batch): r.verdict for _, r in df.iterrows() if r.backend != "numpy"}
    print(verdicts)
    for batch in plan.batches:
        # the control is the detector: its own verdict is what the noise did (not widened by itself)
        assert ("numpy-control", batch) in verdicts
        assert verdicts[("numpy-again", batch)] in ("same", "too noisy to tell"), verdicts
        assert verdicts[("rust", batch)] in ("faster", "too noisy to tell"), verdicts
