"""The worker protocol: the only module that knows both sides of the runner/worker pipe.

A worker is a fresh process (spawned, never forked, so no thread pool or CUDA context is
inherited) that serves cases of one backend at one thread count. Its thread environment
(OMP/BLAS/Numba/Rayon variables) is set before it starts, so libraries read it at import.

Messages (tuples over a multiprocessing Connection):
  worker -> runner  ("hello", {"pid": ..., "versions": {...}})
  runner -> worker  ("case", case_json, timer_json)
  worker -> runner  ("result", measurement_json)   (elbolab.measurement.Measurement.to_json)
  runner -> worker  ("train", device, dtype, threads, train_config_json)
  worker -> runner  ("trained", {"status": ..., "reason": ..., "losses": [...], "wall_s": ...})
  runner -> worker  ("stop",)
A worker that dies or hangs sends nothing: the runner records that case as failed or timed out.
"""

from __future__ import annotations

import os
import resource
import time
import traceback
from dataclasses import dataclass, replace

THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "RAYON_NUM_THREADS",
)


def thread_env(threads: int) -> dict[str, str]:
    return {name: str(threads) for name in THREAD_ENV_VARS}


@dataclass(frozen=True)
class WorkerSpec:
    backend: str
    threads: int


def serve(conn, spec: WorkerSpec) -> None:
    """Worker process entry point."""
    from elbolab.backend import discover
    from elbolab.case import Case
    from elbolab.timer import TimerConfig

    backends = discover()
    backend = backends[spec.backend]
    versions: dict = {}
    try:
        if backend.unavailable_reason() is None:
            versions = backend.versions()
    except Exception as exc:  # a broken library still lets cases report why they are skipped
        versions = {"error": f"{exc.__class__.__name__}: {exc}"}
    conn.send(("hello", {"pid": os.getpid(), "versions": versions}))
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "stop":
            return
        if message[0] == "train":
            conn.send(("trained", train_backend(backend, *message[1:])))
            continue
        _, case_json, timer_json = message
        t0 = time.perf_counter_ns()
        m = measure_case(backend, Case.from_json(case_json), TimerConfig(**timer_json))
        # the whole case in the worker (inputs, prepare, timing, reference, check): the harness's cost
        m = replace(m, notes=dict(m.notes, case_wall_ns=time.perf_counter_ns() - t0))
        conn.send(("result", m.to_json()))


def train_backend(backend, device: str, dtype: str, threads: int, config_json: dict) -> dict:
    from elbolab.case import Case
    from elbolab.train import TrainConfig, train
    from threadpoolctl import threadpool_limits

    reason = backend.skip_reason(Case("vae_step", backend.name, device, dtype))
    if reason:
        return {"status": "skipped", "reason": reason}
    t0 = time.perf_counter()
    try:
        with threadpool_limits(limits=threads):
            trained = train(backend, device, dtype, threads, TrainConfig(**config_json))
    except Exception as exc:
        return {"status": "failed", "reason": f"{exc.__class__.__name__}: {exc}"}
    return {
        "status": "incorrect" if trained.incorrect_step else "ok",
        "reason": trained.incorrect_step,
        "losses": trained.losses,
        "max_bound_used": trained.max_bound_used,
        "less_accurate_steps": trained.less_accurate_steps,
        "wall_s": time.perf_counter() - t0,
    }


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS to its current RSS (Linux).

    A worker serves many cases, so without this the peak of a small case would be that of the
    largest case before it.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _memory(reset_ok: bool, baseline: int | None, device_peak: int | None):
    from elbolab.measurement import Memory

    peak = _status_bytes("VmHWM") if reset_ok else None
    return Memory(
        # where the peak cannot be reset, the worker's peak so far (ru_maxrss)
        peak_rss_bytes=peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        peak_scope="case" if peak else "worker",
        baseline_rss_bytes=baseline,
        device_peak_bytes=device_peak,
    )


def measure_case(backend, case, timer):
    """Measure one case in this process: inputs, prepare, timing, the check. Returns a Measurement
    (a failure of the backend is a 'failed' measurement with the reason, never an exception)."""
    import numpy as np
    from elbolab.measurement import Measurement, not_measured
    from elbolab.timer import time_prepared
    from elbolab.workloads import WORKLOADS, check_outputs
    from threadpoolctl import threadpool_limits

    workload = WORKLOADS[case.workload]
    cost = workload.cost(case)
    reason = backend.skip_reason(case)
    if reason:
        return not_measured(case, "skipped", reason, cost)

    reset_ok = _reset_peak_rss()
    baseline = _status_bytes("VmRSS")
    inputs = workload.make_inputs(case)
    stage = "prepare"
    try:
        with threadpool_limits(limits=case.threads):
            prepared = backend.prepare(case, {k: v.copy() for k, v in inputs.items()})
            stage = "timing"
            timing = time_prepared(prepared, timer)
            stage = "reading outputs"
            got = prepared.outputs()
            next_eps = None
            if case.variant == "eps=sampled":  # a fresh draw per call: call once more and compare
                got = {k: np.array(v, copy=True) for k, v in got.items()}
                prepared.call()
                if prepared.sync:
                    prepared.sync()
                next_eps = np.array(prepared.outputs().get("eps"), copy=True)
            device_peak = prepared.device_peak_bytes() if prepared.device_peak_bytes else None
            # read before the reference is computed, whose temporaries are not the backend's
            memory = _memory(reset_ok, baseline, device_peak)
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
        return not_measured(case, "failed", f"{stage} raised {exc.__class__.__name__}: {exc}{where}", cost)

    check = check_outputs(workload, case, inputs, got, next_eps)
    return Measurement(
        case,
        "ok" if check.ok else "incorrect",
        None if check.ok else check.detail,
        loops=timing.loops,
        samples_ns=tuple(float(s) for s in timing.samples_ns),
        first_call_ns=timing.first_call_ns,
        check=check,
        memory=memory,
        cost=cost,
        notes=dict(prepared.notes, worker_pid=os.getpid()),
        calibration=timing.calibration,
    )
