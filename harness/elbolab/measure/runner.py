"""Runs a plan: every case in a worker process, each result written to the results file as it
arrives; or, with --measure instructions, every case counted under Valgrind.

Cases are grouped by (backend, threads): one worker serves a group so a library is imported once,
and its thread environment is set before that import. A backend that sets its thread count per case
at run time (numba, torch) has one worker for all its counts, started with the largest: its JIT
compiles once a run and torch is imported once. Measured in fresh processes, alternating, a
one-thread case ran as fast in a pool sized for two as in a pool of one (numba-parallel elbo at
batch 1 and 1024, vae_step at 128; torch the same; the spread between processes, up to 1.7x at
batch 1, was larger than any difference). A case that crashes or hangs its worker loses
only itself (recorded as failed/timeout); a fresh worker takes the rest of the group. Every result
is written to disk (atomically) as soon as it arrives.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from elbolab.measure import probes
from elbolab.measure.cells import CellConfig, Workers, cells_of, measure_cell, specs_for
from elbolab.measure.evidence import References, judge
from elbolab.measure.health import survey
from elbolab.measure.instructions import count_case, end_all_counts, unavailable_reason
from elbolab.measure.machine import git_info, machine_info, software_info, usable_cores
from elbolab.measure.plan import Plan, check_names, default_threads, plan_cases
from elbolab.measure.timer import TimerConfig
from elbolab.measure.training import DATASET, TrainConfig, curves
from elbolab.measure.worker import Worker, WorkerSpec, ask_training, end, kill, start_worker, stop
from elbolab.model.backend import Backend, discover, discover_with_errors, is_control
from elbolab.model.case import DTYPES, Case
from elbolab.model.errors import UsageError
from elbolab.model.measurement import Measurement
from elbolab.model.workloads import REFERENCE_CACHE_ENV
from elbolab.store.results import Run, RunFile, TrainingCurve, now, open_results

# --------------------------------------------------------------------------------------- execution


# called with each measurement as it is recorded (the CLI draws progress with it)
OnResult = Callable[[Measurement], None]


def execute(
    cases: Sequence[Case],
    run: RunFile,
    timer: TimerConfig,
    backends: dict[str, Backend],
    *,
    case_timeout: float,
    on_result: OnResult | None = None,
    cell_config: CellConfig | None = None,
    limits: dict | None = None,
    train: Training | None = None,
) -> None:
    """Measure every case (of `backends`, as discovered by the plan) cell by cell, interleaved
    (elbolab.measure.cells), judge each in this process (elbolab.measure.evidence) and append it to
    `run` as soon as its cell is done; then, with `train`, train in the same workers."""
    config = cell_config or CellConfig()
    software = run.software.setdefault("backends", {})
    refs = References()
    reprobe = _reprobe_into(limits) if limits else None
    with _reference_folder() as folder, _environ({REFERENCE_CACHE_ENV: folder}):
        workers = Workers(specs_for(cases, backends), {REFERENCE_CACHE_ENV: folder}, WORKER_START_TIMEOUT_S)
        try:
            workers.prestart(cases, usable_cores())
            for index, members in enumerate(cells_of(cases, config.control)):
                t0 = time.perf_counter_ns()
                records = measure_cell(members, workers, timer, config, index, case_timeout)
                cell_ns = (time.perf_counter_ns() - t0) // max(1, len(records))
                for rec in records:
                    t1 = time.perf_counter_ns()
                    m = judge(rec, refs, limits or {}, reprobe)
                    # where a run's time goes: its cell's share of measuring, and checking in this process
                    m = replace(
                        m,
                        notes=dict(m.notes, cell_wall_ns=cell_ns, check_wall_ns=time.perf_counter_ns() - t1),
                    )
                    run.add(m)
                    if on_result:
                        on_result(m)
                software.update(workers.versions)
            if train is not None:
                workers.release()  # nothing is timed from here: every worker may run
                run_training(run, train.backends, train.dtypes, train.config, borrow=workers)
        except BaseException:  # interrupted: a worker in a long call would not read 'stop' soon
            for worker in workers.live.values():
                kill(worker)
            workers.live.clear()
            raise
        finally:
            workers.stop_all()


# A worker's start (importing its libraries: torch takes ~6 s here) is bounded apart from the
# cases' timeout: --timeout bounds a case, not the import of a library.
WORKER_START_TIMEOUT_S = 300.0


def _reprobe_into(limits: dict):
    """The re-probe a case above its ceiling gets before it is called implausible: the bandwidth at
    a working set, measured again now, its row kept in the run's limits ("bandwidth_reprobes"), so
    the report reads the same ceiling the judgement did."""

    def reprobe(working_set_bytes: float, threads: int) -> float:
        row = probes.probe_bandwidth_row(int(working_set_bytes), threads)
        limits.setdefault("bandwidth_reprobes", []).append(row)
        return probes.best_rate(row)

    return reprobe


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """Variables set in this process for the length of a run (the parent checks outputs too, and
    shares the run's folder of references with the workers)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _reference_folder():
    """A folder for the run's shared references (elbolab.model.workloads.cached_reference), removed at
    the end; folders of runs that were killed (their process is gone) are removed first."""
    prefix = "elbolab-references-"
    for stale in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        pid = stale.name[len(prefix) :].split("-")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def count(
    cases: Sequence[Case], run: RunFile, *, jobs: int, case_timeout: float, on_result: OnResult | None
) -> None:
    """Count each case's instructions under Valgrind (elbolab.measure.instructions), `jobs` at a time: counts
    do not depend on the machine's load, so cases may run side by side. Interrupted, every counting
    process is killed (each leads its own session)."""
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(count_case, case, timeout=case_timeout) for case in cases]
        for future in as_completed(futures):
            m = future.result()
            run.add(m)
            if on_result:
                on_result(m)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        end_all_counts()
        raise
    pool.shutdown()


def open_run(out: Path, plan: Plan, timer: TimerConfig, mode: str = "new") -> RunFile:
    """The results file of a run of `plan` on this machine (elbolab.store.results.open_results)."""
    cells = cell_config(plan)
    config = {"plan": plan.to_json(), "timer": timer.to_json(), "cells": cells.to_json()}
    software = software_info()
    errors = discover_with_errors()[1]
    if errors:  # a plugin refused (a name taken, invalid, an import error) is recorded with the run
        software["backends_not_loaded"] = errors
    return open_results(out, config, machine_info(), software, git_info(), mode)


def cell_config(plan: Plan) -> CellConfig:
    cells = CellConfig.quick() if plan.quick else CellConfig()
    return replace(cells, control=plan.control)


def run_plan(
    plan: Plan,
    out: Path,
    *,
    mode: str = "new",
    case_timeout: float | None = None,
    measure_limits: bool = True,
    on_result: OnResult | None = None,
    on_plan: Callable[[int], None] | None = None,
    jobs: int = 1,
    train: Training | None = None,
) -> Run:
    backends = discover()
    cases = plan_cases(plan, backends)
    if plan.measure == "instructions":
        reason = unavailable_reason()
        if reason:
            raise UsageError(f"--measure instructions: {reason}")
    timer = TimerConfig.quick() if plan.quick else TimerConfig()
    cells = cell_config(plan)
    with open_run(out, plan, timer, mode) as run:
        done = run.done_keys()
        todo = [c for c in cases if c.key() not in done]
        if on_plan:
            controls = sum(
                1 for members in cells_of(todo, cells.control) for c in members if is_control(c.backend)
            )
            on_plan(len(todo) + (controls if plan.measure == "time" else 0))
        run.set_health("start", survey(threads_asked=None).to_json())
        if measure_limits and not run.has_limits() and plan.measure == "time":
            run.set_limits(_measure_limits(plan))
        if plan.measure == "instructions":
            count(todo, run, jobs=jobs, case_timeout=case_timeout or 900, on_result=on_result)
        else:
            execute(todo, run, timer, backends, case_timeout=case_timeout or (120 if plan.quick else 300),
                    on_result=on_result, cell_config=cells, limits=run.limits, train=train)  # fmt: skip
        run.set_health("end", {"load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None})
        run.finish(now())
        return run.run


def _measure_limits(plan: Plan) -> dict:
    return probes.measure_limits(sorted(set(plan.threads or default_threads())), quick=plan.quick)


# ------------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class Training:
    """Training to do at the end of a run (`elbolab run --train`), in the run's own workers."""

    backends: tuple[str, ...]
    dtypes: tuple[str, ...]
    config: TrainConfig


def run_training(
    run: RunFile,
    backend_names: Sequence[str],
    dtypes: Sequence[str],
    config: TrainConfig,
    *,
    timeout: float = 600,
    jobs: int | None = None,
    on_result: Callable[[TrainingCurve], None] | None = None,
    borrow: Workers | None = None,
) -> None:
    """Train the digits VAE (elbolab.measure.training) on every backend (one worker a backend, for
    each of its devices and dtypes; `jobs` workers at once, by default one per core: nothing in
    training is timed, and each trains on one thread); put the curves into `run`, replacing earlier
    curves of the same backend, device and dtype only.

    With `borrow` (a run's workers), a backend trains in the run's one-thread worker where it is
    alive: its JIT has compiled vae_step already (numba's two backends compiled for 38 of the 55 s
    of CPU a fresh training took on the 2-core VM)."""
    backends = discover()
    check_names(backend_names, backends, "backend")
    check_names(dtypes, DTYPES, "dtype")
    todo = {
        name: [(device, dtype) for device in backends[name].devices for dtype in dtypes]
        for name in backend_names
    }
    live: list = []  # the workers training now: an interrupt ends them, and so their threads
    stopping = threading.Event()
    # the longest first, so the last to finish is a short one: a backend's training is mostly its
    # JIT compiling vae_step (numba-parallel's two dtypes 23 s of the 55 s of CPU all take here),
    # which the run's first calls of vae_step measured
    compile_ns: dict[str, float] = {}
    for m in run.run.measurements:
        if m.case.workload == "vae_step" and m.first_call_ns:
            compile_ns[m.case.backend] = compile_ns.get(m.case.backend, 0.0) + m.first_call_ns
    with ThreadPoolExecutor(max_workers=max(1, jobs or usable_cores())) as pool:
        futures = {
            name: pool.submit(
                _train_in_worker, name, todo[name], config, timeout, live, stopping, _borrowed(borrow, name)
            )  # fmt: skip
            for name in sorted(todo, key=lambda name: -compile_ns.get(name, 0.0))
        }
        try:
            done = {name: f.result() for name, f in futures.items()}
        except BaseException:  # Ctrl-C, SIGTERM: the threads wait on their workers (600 s) unless
            stopping.set()
            for future in futures.values():
                future.cancel()
            for worker in list(live):
                end(worker)
            raise
    entries = []
    for name, runs in todo.items():
        for (device, dtype), result in zip(runs, done[name], strict=True):
            entry = {"backend": name, "device": device, "dtype": dtype, "threads": 1,
                     "dataset": DATASET, **config.to_json()}  # fmt: skip
            entries.append(dict(entry, **result))
    trained = [TrainingCurve(**e) for e in curves(entries)]
    for curve in trained:
        if on_result:
            on_result(curve)
    run.put_training(trained)


def _train_in_worker(
    backend: str,
    runs: list[tuple[str, str]],
    config: TrainConfig,
    timeout: float,
    live: list,
    stopping: threading.Event,
    borrowed: Worker | None = None,
) -> list[dict]:
    """Each (device, dtype) of `runs` trained in one worker of the backend, in turn (the `borrowed`
    one of a run, which its run stops, else one started here); a worker that dies or hangs loses
    only the training it was doing: a fresh one takes the rest."""
    results: list[dict] = []
    worker = borrowed
    for device, dtype in runs:
        if stopping.is_set():  # interrupted: no new worker, no further training
            break
        if worker is None:
            try:
                worker = start_worker(WorkerSpec(backend, 1), start_timeout=timeout, started=live)
            except RuntimeError as exc:
                results.append({"status": "failed", "reason": str(exc)})
                continue
        result = ask_training(worker, device, dtype, config.to_json(), timeout)
        results.append(result)
        if result.get("status") in ("timeout", "failed") and not worker.process.is_alive():
            worker = None
    if worker is not None and worker is not borrowed:
        stop(worker)
    return results


def _borrowed(workers: Workers | None, backend: str) -> Worker | None:
    """A run's live one-thread worker of `backend`, if it has one."""
    if workers is None:
        return None
    try:
        spec = workers.spec_of(Case("vae_step", backend, threads=1))
    except KeyError:  # a backend the run did not measure
        return None
    worker = workers.live.get(spec)
    return worker if worker is not None and worker.process.is_alive() else None
