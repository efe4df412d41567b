"""Isolation and crash safety: a misbehaving backend loses only its own case."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from elbolab.measure.plan import Plan, plan_cases
from elbolab.measure.runner import open_run, run_plan, run_training
from elbolab.measure.timer import TimerConfig
from elbolab.measure.training import TrainConfig
from elbolab.model.backend import discover
from elbolab.model.case import Case
from elbolab.model.errors import UsageError
from elbolab.store.results import load, now
from tests.fault_backends import FAULT_BATCH

pytestmark = pytest.mark.slow


def _status(run):
    return {(m.case.backend, m.case.batch): (m.status, m.reason) for m in run.measurements}


def test_crash_hang_raise_and_lie_become_statuses_and_everything_else_runs(tmp_path, fault_backends):
    out = tmp_path / "run.json"
    plan = Plan(
        backends=("numpy", "crashing", "hanging", "raising", "lying", "aborting"),
        workloads=("elbo",), batches=(1, FAULT_BATCH, 9), dtypes=("float64",), threads=(1,),
        variants=("eps=given",), quick=True, control=False,
    )  # fmt: skip
    run_plan(plan, out, case_timeout=8, measure_limits=False)
    s = _status(load(out))
    assert len(s) == 18
    # the faulty cases
    assert s[("crashing", FAULT_BATCH)][0] == "failed" and "SIGSEGV" in s[("crashing", FAULT_BATCH)][1]
    assert s[("aborting", FAULT_BATCH)][0] == "failed" and "SIGABRT" in s[("aborting", FAULT_BATCH)][1]
    assert s[("hanging", FAULT_BATCH)][0] == "timeout"
    assert (
        s[("raising", FAULT_BATCH)][0] == "failed"
        and "FloatingPointError: kernel exploded" in s[("raising", FAULT_BATCH)][1]
    )
    assert s[("lying", FAULT_BATCH)][0] == "incorrect" and "recon" in s[("lying", FAULT_BATCH)][1]
    # every other case ran, including those after the crash on a fresh worker
    others = {k: v for k, v in s.items() if k[1] != FAULT_BATCH or k[0] == "numpy"}
    assert all(v == ("ok", None) for v in others.values()), others


def test_training_loses_only_what_a_crash_was_training_while_backends_train_side_by_side(
    tmp_path, fault_backends, monkeypatch
):
    """A worker a backend trains its dtypes in turn, two backends at once; a crash loses only the
    training it was doing, and a fresh worker trains the next dtype."""
    monkeypatch.setenv("ELBOLAB_BACKENDS", "tests.fault_backends:crashing_float32")
    out = tmp_path / "run.json"
    with open_run(out, Plan(), TimerConfig()) as run:
        run_training(
            run, ["crashing-float32", "numpy"], ["float32", "float64"], TrainConfig(steps=20), jobs=2
        )
        run.finish(now())
    t = {(c.backend, c.dtype): c for c in load(out).training}
    assert set(t) == {(b, d) for b in ("crashing-float32", "numpy") for d in ("float32", "float64")}
    crashed = t[("crashing-float32", "float32")]
    assert crashed.status == "failed" and "SIGSEGV" in crashed.reason and not crashed.losses
    after = t[("crashing-float32", "float64")]
    assert after.status == "ok" and len(after.losses) == 20
    assert after.losses == t[("numpy", "float64")].losses  # the same kernel on the same batches
    assert t[("numpy", "float32")].status == "ok" and len(t[("numpy", "float32")].losses) == 20


def test_unavailable_backend_cases_are_skipped_with_reason(tmp_path, fault_backends, monkeypatch):
    monkeypatch.setenv("ELBOLAB_BACKENDS", "tests.fault_backends:gone")
    out = tmp_path / "run.json"
    plan = Plan(backends=("gone",), workloads=("elbo",), batches=(1,), dtypes=("float64",), threads=(1,),
                variants=("eps=given",), quick=True)  # fmt: skip
    run_plan(plan, out, measure_limits=False)
    (m,) = load(out).measurements
    assert m.status == "skipped" and m.reason == "gonelib not installed"


def test_numba_serves_every_thread_count_from_one_worker_compiling_once(tmp_path):
    """numba sets its threads per case (numba.set_num_threads), so one worker, sized for the most
    threads, measures both counts: the kernel compiles in the first case only. numpy, whose
    libraries read their thread variables at import, keeps a worker per count."""
    pytest.importorskip("numba")
    out = tmp_path / "run.json"
    plan = Plan(backends=("numba-parallel", "numpy"), workloads=("elbo",), batches=(1,), dtypes=("float64",),
                threads=(1, 2), variants=("eps=given",), quick=True)  # fmt: skip
    run_plan(plan, out, measure_limits=False)
    got = {(m.case.backend, m.case.threads): m for m in load(out).measurements}
    assert all(m.status == "ok" for m in got.values()), [m.reason for m in got.values()]
    one, two = got[("numba-parallel", 1)], got[("numba-parallel", 2)]
    assert one.notes["worker_pid"] == two.notes["worker_pid"]
    assert one.notes["NUMBA_NUM_THREADS"] == two.notes["NUMBA_NUM_THREADS"] == 2
    assert (one.notes["numba_threads"], two.notes["numba_threads"]) == (1, 2)
    # compiled by the first case, reused by the second (a fresh worker would compile again)
    assert one.notes["jit_signatures_compiled_before_case"] < two.notes["jit_signatures_compiled_before_case"]
    assert two.first_call_ns < one.first_call_ns / 10
    assert got[("numpy", 1)].notes["worker_pid"] != got[("numpy", 2)].notes["worker_pid"]


def test_plan_rejects_bad_input():
    backends = discover()
    with pytest.raises(UsageError, match="unknown backend 'nope'"):
        plan_cases(Plan(backends=("nope",)), backends)
    with pytest.raises(UsageError, match="unknown workload"):
        plan_cases(Plan(workloads=("elbow",)), backends)
    with pytest.raises(UsageError, match="batch must be a positive integer"):
        plan_cases(Plan(batches=(0,)), backends)
    with pytest.raises(UsageError, match="batch must be a positive integer"):
        plan_cases(Plan(batches=(-5,)), backends)
    with pytest.raises(UsageError, match="GiB"):
        plan_cases(Plan(backends=("numpy",), workloads=("elbo",), batches=(10**9,)), backends)


def test_plan_is_the_product_of_the_filters():
    cases = plan_cases(
        Plan(
            backends=("numpy",),
            workloads=("elbo", "iwae"),
            batches=(1, 2),
            dtypes=("float32",),
            threads=(1, 2),
            full=True,
        ),
        discover(),
    )
    # elbo: 2 variants x 2 batches x 2 threads; iwae: 1 variant x 2 x 2
    assert len(cases) == 8 + 4
    assert all(c.dtype == "float32" for c in cases)
    assert Case("iwae", "numpy", batch=2, dtype="float32", threads=2) in cases


def test_default_matrix_draws_eps_inside_the_call_only_where_the_claims_check_reads_it():
    from elbolab.report.claims import CLAIMS, Spec

    plan = Plan(backends=("numpy", "rust"), workloads=("elbo", "iwae"), batches=(1, 128), threads=(1, 2))
    cases = plan_cases(plan, discover())
    sampled = {c for c in cases if c.variant == "eps=sampled"}
    # the tutorial's: elbo, float64, one thread (C1, C5, C7, C8 read these), at every batch (a ratio
    # that fails at 128 is looked for at the other batches)
    assert sampled == {
        Case("elbo", b, batch=n, variant="eps=sampled") for b in ("numpy", "rust") for n in (1, 128)
    }
    # every other case eps given: 2 workloads x 2 backends x 2 dtypes x 2 batches x 2 threads
    assert len(cases) - len(sampled) == 32 and all(c.variant == "eps=given" for c in set(cases) - sampled)
    # asked for, a variant is measured everywhere; --full measures every variant everywhere
    assert len(plan_cases(replace(plan, variants=("eps=sampled",)), discover())) == 2 * 2 * 2 * 2
    assert len(plan_cases(replace(plan, full=True), discover())) == 32 + 16

    # the default matrix holds every case the claims check reads
    everything = set(plan_cases(Plan(), discover()))
    for claim in CLAIMS:
        for spec in claim.specs:
            if isinstance(spec, Spec) and spec.backend in discover():
                assert (
                    Case(spec.workload, spec.backend, spec.device, spec.dtype, 128, variant=spec.variant)
                    in everything
                )


def _cli(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "elbolab.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, **kw,
    )  # fmt: skip


def test_sigkill_midway_keeps_finished_cases_and_resume_finishes(tmp_path):
    out = tmp_path / "run.json"
    args = ["run", "--backend", "numpy", "--workload", "elbo,iwae", "--batch", "1,64,128,256",
            "--dtype", "float64,float32", "--threads", "1", "--quick", "--full", "--no-limits", "--no-control",
            "--out", str(out)]  # fmt: skip
    proc = _cli(*args)
    deadline = time.time() + 60
    n = 0
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            n = len(json.loads(out.read_text())["measurements"])
        except (FileNotFoundError, json.JSONDecodeError) as exc:  # never a torn file
            assert isinstance(exc, FileNotFoundError), exc
        if n >= 3:
            break
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker, mid-run
    proc.wait()
    run = load(out)
    done = len(run.measurements)
    assert 3 <= done < 24 and run.finished is None

    proc = _cli(*args, "--resume")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    run = load(out)
    keys = [m.case.key() for m in run.measurements]
    assert len(keys) == 24 and len(set(keys)) == 24  # nothing lost, nothing twice
    assert run.finished is not None
    assert all(m.status == "ok" for m in run.measurements)


def test_peak_memory_is_per_case_not_per_worker(tmp_path):
    out = tmp_path / "run.json"
    plan = Plan(backends=("numpy",), workloads=("elbo",), batches=(8192, 1), dtypes=("float64",), threads=(1,),
                variants=("eps=given",), quick=True, control=False)  # fmt: skip
    run_plan(plan, out, measure_limits=False)
    big, small = (m.memory for m in load(out).measurements)
    if big.peak_scope != "case":
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    # 8192 x 784 float64 inputs are 2 x 51 MB; the batch-1 case served next by the same worker
    # must not inherit that peak
    assert big.peak_rss_bytes - big.baseline_rss_bytes > 100e6
    assert small.peak_rss_bytes - small.baseline_rss_bytes < 20e6


def test_a_backend_with_two_devices_keeps_both_cases_of_a_cell_open(tmp_path):
    """torch's cpu and cuda cases share a cell and a worker: opening one must not close the other
    (the cuda case is skipped here, without a GPU, after the cpu case was opened)."""
    pytest.importorskip("torch")
    out = tmp_path / "run.json"
    plan = Plan(backends=("torch",), workloads=("elbo",), batches=(1,), dtypes=("float64",), threads=(1,),
                variants=("eps=given",), quick=True, control=False)  # fmt: skip
    run_plan(plan, out, measure_limits=False)
    status = {m.case.device: (m.status, m.reason) for m in load(out).measurements}
    assert status["cpu"] == ("ok", None)
    assert status.get("cuda", ("skipped",))[0] in ("skipped", "ok")
