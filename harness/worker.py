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
            exit_now(0)
        if message[0] == "stop":
            exit_now(0)
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
        "wall_s": time.perf_counter() - t0,  # for the record, not a benchmark: trainings run side by side
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


class OpenCase:
    """One case made ready to sample in this process: inputs made, prepared, first call timed, loop
    count calibrated, warmed up, and its outputs checked against the reference. The thread limits
    of the case hold while it is open."""

    def __init__(self, backend, case, timer):
        from elbolab.timer import Sampler
        from elbolab.workloads import WORKLOADS
        from threadpoolctl import threadpool_limits

        self.case, self.timer = case, timer
        self.workload = WORKLOADS[case.workload]
        self.cost = self.workload.cost(case)
        self._limits = threadpool_limits(limits=case.threads)
        reset_ok = _reset_peak_rss()
        baseline = _status_bytes("VmRSS")
        self.inputs = self.workload.make_inputs(case)
        self.stage = "prepare"
        self.prepared = backend.prepare(case, {k: v.copy() for k, v in self.inputs.items()})
        self.backend_notes = dict(self.prepared.notes)
        self.stage = "timing"
        self.sampler = Sampler(self.prepared, timer)
        self.loops, self.first_call_ns = self.sampler.loops, self.sampler.first_call_ns
        self.calibration = tuple(self.sampler.calibration)
        affordable = timer.budget_ns // self.sampler.sample_ns
        if affordable > timer.min_samples + timer.warmup:
            self.sampler.warm_up(timer.warmup)
        self.stage = "reading outputs"
        self._snapshot()
        device_peak = self.prepared.device_peak_bytes() if self.prepared.device_peak_bytes else None
        # read before the reference is computed, whose temporaries are not the backend's
        self.memory = _memory(reset_ok, baseline, device_peak)
        self.stage = "timing"

    def _snapshot(self) -> None:
        """The outputs of the last call (and, with eps drawn inside the call, the next call's eps)."""
        import numpy as np

        got = self.prepared.outputs()
        self.next_eps = None
        if self.case.variant == "eps=sampled":  # a fresh draw per call: call once more and compare
            got = {k: np.array(v, copy=True) for k, v in got.items()}
            self.prepared.call()
            if self.prepared.sync:
                self.prepared.sync()
            self.next_eps = np.array(self.prepared.outputs().get("eps"), copy=True)
        self.got = got

    def check(self):
        from elbolab.workloads import check_outputs

        return check_outputs(self.workload, self.case, self.inputs, self.got, self.next_eps)

    def notes(self, **more) -> dict:
        return dict(self.backend_notes, worker_pid=os.getpid(), **more)

    def close(self) -> None:
        self._limits.restore_original_limits()
        self.prepared = self.sampler = None


def _failure(case, stage: str, exc: Exception, cost):
    from elbolab.measurement import not_measured

    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return not_measured(case, "failed", f"{stage} raised {exc.__class__.__name__}: {exc}{where}", cost)


def measure_case(backend, case, timer):
    """Measure one case in this process: inputs, prepare, timing, the check. Returns a Measurement
    (a failure of the backend is a 'failed' measurement with the reason, never an exception)."""
    from elbolab.measurement import Measurement, not_measured
    from elbolab.timer import sample_until_precise
    from elbolab.workloads import WORKLOADS

    cost = WORKLOADS[case.workload].cost(case)
    reason = backend.skip_reason(case)
    if reason:
        return not_measured(case, "skipped", reason, cost)
    opened = None
    stage = "prepare"
    try:
        opened = OpenCase(backend, case, timer)
        cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
        samples, stopped = sample_until_precise(opened.sampler, timer)
        cpu_ns, wall_ns = time.process_time_ns() - cpu0, time.perf_counter_ns() - wall0
        device_ns = opened.sampler.device_ns[-len(samples) :] if opened.sampler.device_ns else []
        opened.stage = "reading outputs"
        opened._snapshot()
    except Exception as exc:
        return _failure(case, opened.stage if opened else stage, exc, cost)
    finally:
        if opened is not None:
            opened.close()
    check = opened.check()
    return Measurement(
        case,
        "ok" if check.ok else "incorrect",
        None if check.ok else check.detail,
        loops=opened.loops,
        samples_ns=tuple(float(s) for s in samples),
        first_call_ns=opened.first_call_ns,
        check=check,
        memory=opened.memory,
        cost=cost,
        notes=opened.notes(sampling=f"stopped at {len(samples)} samples: {stopped}"),
        calibration=opened.calibration,
        cpu_ns=cpu_ns,
        wall_ns=wall_ns,
        device_samples_ns=tuple(device_ns),
    )


# ----------------------------------------------------------------------------- the A/B stdio worker
#
# The fine-interleaved A/B gate keeps one worker per side alive and asks each, in turn, for a few
# samples of the same case. A side is a revision installed in its own folder, so its worker is a
# plain subprocess of that revision (`python -m elbolab.worker BACKEND THREADS`), spoken to in JSON
# lines on stdin/stdout:
#   worker -> driver  {"hello": {"pid", "versions"}} or {"error": "..."}
#   driver -> worker  {"op": "open", "case": case_json, "timer": timer_json}
#   worker -> driver  {"status", "reason", "loops", "first_call_ns", "calibration", "sample_ns",
#                      "check", "memory", "cost", "notes"}     (samples come next)
#   driver -> worker  {"op": "sample", "count": n}  ->  {"samples_ns": [...]}
#   driver -> worker  {"op": "close"}  ->  {"closed": true}
# Anything printed by a backend goes to stderr, never into the protocol.


def serve_stdio(backend_name: str, threads: int) -> int:
    import json
    import sys

    from elbolab.backend import discover
    from elbolab.case import Case
    from elbolab.timer import TimerConfig

    out = sys.stdout
    sys.stdout = sys.stderr  # a backend's prints must not corrupt the protocol

    def send(obj) -> None:
        out.write(json.dumps(obj, allow_nan=False) + "\n")
        out.flush()

    backend = discover().get(backend_name)
    if backend is None:
        send({"error": f"this revision has no backend {backend_name!r}"})
        return 2
    versions: dict = {}
    try:
        if backend.unavailable_reason() is None:
            versions = backend.versions()
    except Exception as exc:
        versions = {"error": f"{exc.__class__.__name__}: {exc}"}
    send({"hello": {"pid": os.getpid(), "versions": versions, "threads": threads}})
    opened: OpenCase | None = None
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "open":
            if opened is not None:
                opened.close()
            reply, opened = _open(backend, Case.from_json(msg["case"]), TimerConfig(**msg["timer"]))
            send(reply)
        elif msg["op"] == "sample":
            send({"samples_ns": opened.sampler.sample(int(msg["count"])) if opened else []})
        elif msg["op"] == "close":
            if opened is not None:
                opened.close()
                opened = None
            send({"closed": True})
        elif msg["op"] == "stop":
            break
    return 0


def _open(backend, case, timer) -> tuple[dict, OpenCase | None]:
    """Open a case for sampling: the reply for the driver, and the open case if it can be sampled."""
    from elbolab.workloads import WORKLOADS

    cost = WORKLOADS[case.workload].cost(case)
    reason = backend.skip_reason(case)
    if reason:
        return {"status": "skipped", "reason": reason}, None
    opened = None
    try:
        opened = OpenCase(backend, case, timer)
        check = opened.check()
    except Exception as exc:
        if opened is not None:
            opened.close()
        return {"status": "failed", "reason": _failure(case, "prepare", exc, cost).reason}, None
    reply = {
        "status": "ok" if check.ok else "incorrect",
        "reason": None if check.ok else check.detail,
        "loops": opened.loops,
        "first_call_ns": opened.first_call_ns,
        "calibration": [list(c) for c in opened.calibration],
        "sample_ns": opened.sampler.sample_ns,
        "check": dict(check.__dict__),
        "memory": dict(opened.memory.__dict__),
        "cost": dict(cost.__dict__),
        "notes": opened.notes(),
    }
    if not check.ok:
        opened.close()
        return reply, None
    return reply, opened


class StdioWorker:
    """The driver's side of the A/B stdio protocol: one worker process of one revision."""

    def __init__(self, argv: list[str], env: dict, cwd, timeout: float, greet: bool = True):
        """Start the worker; with greet=False the caller reads its hello later (greet()), so that
        several workers can start at once."""
        import subprocess

        self.timeout = timeout
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, start_new_session=True)  # fmt: skip
        self.hello: dict = {}
        if greet:
            self.greet()

    def pin(self, cpus: set[int] | None) -> None:
        """Run every thread of the worker (those its backend has started too, e.g. a thread pool)
        on `cpus` only; None: on every core this process may use. Pinning after start-up lets the
        two workers of a pair import and open on separate cores, then sample on the same ones."""
        if not hasattr(os, "sched_setaffinity"):
            return
        cpus = cpus or os.sched_getaffinity(0)
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{self.proc.pid}/task")]
        except OSError:
            tids = [self.proc.pid]
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:  # a thread that has just ended
                pass

    def greet(self) -> dict:
        self.hello = self._read()
        return self.hello

    def _read(self) -> dict:
        import json
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            code = self.proc.poll()
            raise RuntimeError("the worker hung" if code is None else f"the worker died (exit code {code})")
        return json.loads(line)

    def send(self, msg: dict) -> None:
        """Send a request without waiting for its answer (read it with receive())."""
        import json

        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict:
        return self._read()

    def ask(self, msg: dict) -> dict:
        self.send(msg)
        return self._read()

    def stop(self) -> None:
        """Ask the worker to exit, without waiting (close() waits): workers stopped together exit together."""
        try:
            self.proc.stdin.write('{"op": "stop"}\n')
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        import signal
        import subprocess

        try:
            self.stop()
            self.proc.wait(5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def exit_now(code: int) -> None:
    """End the worker without the interpreter's teardown: everything it made dies with it, its
    results are already sent (written to the pipe), and the teardown is slow and noisy (a torch
    worker took 1.2 s to exit, while the runner or an A/B pair waits; Triton's bindings print their
    leak reports at exit)."""
    import sys

    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    import sys

    exit_now(serve_stdio(sys.argv[1], int(sys.argv[2])))
