"""The conditions a cell's backends are measured in: one worker runs at a time (the others' process
groups stopped, so threads spinning after their block cannot take the cores), and a worker pinned
for a one-thread cell gets every core back for the next cell's threads."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from elbolab.measure.cells import Workers
from elbolab.measure.worker import WorkerSpec
from elbolab.model.case import Case


def _stopped(pid: int, want: bool = True, timeout: float = 5.0) -> bool:
    """Whether the process comes to be stopped (or, want=False, to run) within `timeout`: a signal
    is delivered asynchronously, and a busy machine delays it."""
    deadline = time.monotonic() + timeout
    while True:
        now_stopped = psutil.Process(pid).status() == psutil.STATUS_STOPPED
        if now_stopped == want or time.monotonic() > deadline:
            return now_stopped
        time.sleep(0.02)


def test_only_the_worker_asked_runs_the_others_are_stopped_until_the_cell_ends():
    workers = Workers(lambda case: WorkerSpec(case.backend, case.threads), {}, start_timeout=120)
    one, two = (
        Case("elbo", "numpy", "cpu", "float64", 8, threads=1),
        Case("elbo", "numpy", "cpu", "float64", 8, threads=2),
    )
    try:
        first = workers.for_case(one)
        second = workers.for_case(two)  # asking the second stops the first
        assert _stopped(first.process.pid)
        assert not _stopped(second.process.pid, want=False)
        assert workers.for_case(one) is first  # and asking the first again continues it, stops the second
        assert not _stopped(first.process.pid, want=False)
        assert _stopped(second.process.pid)
        workers.release()  # the cell's end
        assert not _stopped(first.process.pid, want=False) and not _stopped(second.process.pid, want=False)
    finally:
        workers.stop_all()  # continues any still held before asking them to stop
    assert not first.process.is_alive() and not second.process.is_alive()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two cores and sched_setaffinity")  # fmt: skip
def test_a_worker_pinned_to_one_core_gets_every_core_back():
    """census.pin(None) after pin({core}): every core the process started with, not the one core
    sched_getaffinity(0) then reports (torch's 2 threads ran on 1 core at 100x the time)."""
    code = (
        "import os\n"
        "from elbolab.measure import census\n"
        "start = os.sched_getaffinity(0)\n"
        "census.pin({min(start)})\n"
        "assert os.sched_getaffinity(0) == {min(start)}\n"
        "census.pin(None)\n"
        "assert os.sched_getaffinity(0) == start, (os.sched_getaffinity(0), start)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_large_outputs_travel_whole_once_then_as_elements_the_runner_picks():
    """After the first check of set 0 (whole), a checked call's large outputs stay in the worker and
    only the elements the runner draws travel; the parent checks those against the reference at the
    same indices, so a wrong element among them is caught and the right ones pass."""
    import numpy as np

    from elbolab.measure.cells import CellConfig, measure_cell
    from elbolab.measure.evidence import SAMPLED_ELEMENTS, References, _checked_outputs
    from elbolab.measure.timer import TimerConfig

    case = Case("elbo_grad", "numpy", "cpu", "float64", 128, threads=1)  # grad: 100,352 elements
    workers = Workers(lambda c: WorkerSpec(c.backend, c.threads), {}, start_timeout=120)
    try:
        (rec,) = measure_cell([case], workers, TimerConfig.quick(), CellConfig.quick(), 0, 120)
    finally:
        workers.stop_all()
    whole = [c for c in rec.checks if not c.get("picked")]
    picked = [c for c in rec.checks if c.get("picked")]
    assert [c["set"] for c in whole] == [0] and len(picked) == len(rec.checks) - 1 >= 4
    for c in picked:
        idx = c["picked"]["grad_x_recon"]
        assert idx.size == SAMPLED_ELEMENTS == c["outputs"]["grad_x_recon"].size
        assert c["held"]["grad_x_recon"] == [128, 784]
    assert len({c["picked"]["grad_x_recon"].tobytes() for c in picked}) == len(picked)  # fresh each time
    check, wrong, _ = _checked_outputs(rec, References())
    assert wrong is None and check.ok
    bad = picked[-1]
    right = bad["outputs"]["grad_x_recon"]
    bad["outputs"]["grad_x_recon"] = right.copy()
    bad["outputs"]["grad_x_recon"][7] *= 1 + 1e-6  # one element of 6.5% of the gradient, off
    _, wrong, _ = _checked_outputs(rec, References())
    assert wrong is not None and "grad_x_recon" in wrong, wrong
    # held in another shape than the reference's: wrong, whatever the elements
    bad["outputs"]["grad_x_recon"] = right
    bad["held"] = dict(bad["held"], grad_x_recon=[784, 128])
    _, wrong, _ = _checked_outputs(rec, References())
    assert wrong is not None and "shape" in wrong, wrong
    assert np.all(np.diff(picked[0]["picked"]["grad_x_recon"]) > 0)  # distinct, sorted
