"""The worker protocol: both sides of every pipe between the lab and a process that measures.

A worker is a fresh process (spawned, never forked, so no thread pool or CUDA context is
inherited) that serves cases of one backend at one thread count (or every count, for a backend
that sets its threads per case). Its thread environment (OMP/BLAS/Numba/Rayon variables) is set
before it starts, so libraries read it at import. Each case is opened, sampled and checked by
elbolab.measure.opening, the one way a case is opened.

The runner's workers speak tuples over a multiprocessing Connection, the runner asking and the
worker answering each request (numpy arrays travel pickled):
  worker -> runner  ("hello", {"pid": ..., "versions": {...}})
  runner -> worker  ("open", key, case_json, timer_json, {"cpus": [...] | None, "loops": n | None})
  worker -> runner  ("opened", {"loops", "first_call_ns", "calibration", "sample_ns", "memory",
                                "cost", "notes", "call_n_ratio"})  or ("not opened", measurement_json)
  runner -> worker  ("sample", key, n, input_set | None)  -> ("samples", [ns, ...])
  runner -> worker  ("check", key, input_set, calls, hold_above | None)
                                                          -> ("checked", {"outputs": {...}, "held": {name: shape},
                                                                          "outputs_ns", "call_ns"})
  runner -> worker  ("pick", key, {name: flat indices})   -> ("picked", {name: elements})
                    (outputs above hold_above elements stay in the worker until the runner, having
                     seen their shapes, picks the elements it checks)
  runner -> worker  ("draws", key, count)                 -> ("drawn", [eps, ...])
  runner -> worker  ("close", key)                        -> ("closed", census)
(key: the case's label; a worker may hold several cases of one cell open, e.g. cpu and cuda)
  runner -> worker  ("train", device, dtype, threads, train_config_json)
  worker -> runner  ("trained", {"status": ..., "reason": ..., "losses": [...], "wall_s": ...})
  runner -> worker  ("stop",)
A backend that raises inside a request answers ("raised", reason, census) and its case is closed. A worker
that dies or hangs answers nothing: the runner records its case as failed or timed out, kills it,
and starts a fresh one for the next case.

The A/B gate's workers speak JSON lines over stdin/stdout (below: serve_stdio, StdioWorker).
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from threadpoolctl import threadpool_limits

from elbolab.measure import census
from elbolab.measure.machine import thread_env
from elbolab.measure.opening import OpenCase, failure, open_case
from elbolab.measure.timer import TimerConfig
from elbolab.measure.training import TrainConfig, train
from elbolab.model.backend import Backend, backend_named, discover
from elbolab.model.case import Case
from elbolab.model.measurement import Measurement, not_measured
from elbolab.model.workloads import REFERENCE_CACHE_ENV


@dataclass(frozen=True)
class WorkerSpec:
    backend: str
    threads: int


# ------------------------------------------------------------------------ the worker's side of the pipe


def serve(conn, spec: WorkerSpec) -> None:
    """Worker process entry point: answers the runner's requests until told to stop.

    The worker leads a process group of its own, so that every process a backend starts (and
    those they start) is ended with it (kill: one signal to the group), also when the worker
    dies; a Ctrl-C at the terminal reaches the runner, which ends the workers, not the backends.
    What a backend writes to stdout goes to stderr: stdout is the lab's (tables, JSON)."""
    os.setpgid(0, 0)
    os.dup2(2, 1)
    try:
        _serve(conn, spec)
    except (BrokenPipeError, EOFError, OSError):  # the runner is gone: nothing to answer
        exit_now(0)


def _serve(conn, spec: WorkerSpec) -> None:
    backend = backend_named(discover(), spec.backend)
    conn.send(("hello", {"pid": os.getpid(), "versions": _versions(backend)}))
    opened: dict[str, OpenCase] = {}  # by case label: a cell may hold a backend's cpu and cuda cases
    while True:
        try:
            message = conn.recv()
        except EOFError:
            exit_now(0)
        op = message[0]
        if op == "stop":
            exit_now(0)
        if op == "train":
            census.pin(None)  # a run's worker is still on its last cell's core: training gets them all
            # every step checks new inputs: nothing for the run's reference folder to share, and
            # writing a file a step made training in a run's worker 1.5-2x slower
            shared = os.environ.pop(REFERENCE_CACHE_ENV, None)
            try:
                conn.send(("trained", train_backend(backend, *message[1:])))
            finally:
                if shared is not None:
                    os.environ[REFERENCE_CACHE_ENV] = shared
            continue
        key = message[1]
        if op == "open":
            if key in opened:
                opened.pop(key).close()
            case, reply = _open(backend, *message[2:])
            if case is not None:
                opened[key] = case
            conn.send(reply)
        elif op == "close":
            case = opened.pop(key, None)
            conn.send(("closed", case.close() if case is not None else {}))
        else:
            case = opened.get(key)
            try:
                conn.send(_serve_open(case, op, message[2:]))
            # the backend raised inside a call: the case ends here. KeyboardInterrupt too: no
            # Ctrl-C reaches this process group, so one raised here is the backend's own
            except (Exception, KeyboardInterrupt) as exc:
                reason = failure(case.case, case.stage, exc, case.cost).reason
                conn.send(("raised", reason, opened.pop(key).close()))


def _open(
    backend: Backend, case_json: dict, timer_json: dict, options: dict
) -> tuple[OpenCase | None, tuple]:
    case = Case.from_json(case_json)
    t0 = time.perf_counter_ns()
    opened = open_case(backend, case, TimerConfig(**timer_json), loops=options.get("loops"))
    if isinstance(opened, Measurement):
        return None, ("not opened", opened.to_json())
    try:
        opened.pin(set(options["cpus"]) if options.get("cpus") else None)
        ratio = opened.call_n_ratio()
    except (Exception, KeyboardInterrupt) as exc:
        opened.close()
        return None, ("not opened", failure(case, "timing call()", exc, opened.cost).to_json())
    return opened, ("opened", {
        "loops": opened.loops, "first_call_ns": opened.first_call_ns,
        "calibration": [list(c) for c in opened.calibration], "sample_ns": opened.sampler.sample_ns,
        "memory": dict(opened.memory.__dict__), "cost": dict(opened.cost.__dict__),
        "notes": opened.notes(open_wall_ns=time.perf_counter_ns() - t0), "call_n_ratio": ratio,
        "loads": opened.prepared.load is not None,
    })  # fmt: skip


def _serve_open(opened: OpenCase | None, op: str, args: tuple) -> tuple:
    if opened is None:
        return ("raised", f"no open case for {op!r}", {})
    if op == "sample":
        n, input_set = args
        return ("samples", opened.sample(n, input_set))
    if op == "check":
        return ("checked", opened.checked_call(*args))
    if op == "pick":
        return ("picked", opened.pick(*args))
    if op == "draws":
        return ("drawn", opened.draws(*args))
    return ("raised", f"unknown request {op!r}", {})


def _versions(backend: Backend) -> dict:
    try:
        return backend.versions() if backend.unavailable_reason() is None else {}
    except Exception as exc:  # a broken library still lets cases report why they are skipped
        return {"error": f"{exc.__class__.__name__}: {exc}"}


def train_backend(backend: Backend, device: str, dtype: str, threads: int, config_json: dict) -> dict:
    """One training run (elbolab.measure.training) in this worker, as the record the runner keeps."""
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


# ------------------------------------------------------------------------ the runner's side of the pipe


@dataclass
class Worker:
    spec: WorkerSpec
    process: multiprocessing.Process
    conn: object
    hello: dict = field(default_factory=dict)


_CTX = multiprocessing.get_context("spawn")
# a child takes its thread environment from os.environ at start: one start at a time (training
# starts workers from several threads)
_START_LOCK = threading.Lock()


def start_worker(spec: WorkerSpec, start_timeout: float, env: dict[str, str] | None = None,
                 started: list | None = None) -> Worker:  # fmt: skip
    """A worker of `spec`, once it has said hello. `started` gets it as soon as its process exists
    (training: an interrupt ends the workers that are still importing their libraries too)."""
    parent, child = _CTX.Pipe()
    with _START_LOCK:
        saved = dict(os.environ)
        # the child reads its thread environment at start-up, before it imports any library
        os.environ.update(thread_env(spec.threads), **(env or {}))
        try:
            process = _CTX.Process(target=serve, args=(child, spec), daemon=True)
            process.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
    child.close()
    worker = Worker(spec, process, parent)
    if started is not None:
        started.append(worker)
    try:
        ready = multiprocessing.connection.wait([parent, process.sentinel], start_timeout)
        if parent not in ready:
            if ready:  # died (a child it forked may hold the pipe open: no end of file comes)
                raise EOFError
            kill(worker)
            raise RuntimeError(f"worker for {spec.backend} did not start within {start_timeout:.0f} s")
        worker.hello = parent.recv()[1]
    except (EOFError, OSError):
        _kill_group(process)
        reason = exit_reason(process)
        kill(worker)
        raise RuntimeError(f"worker for {spec.backend} died at start ({reason})") from None
    except BaseException:  # interrupted while it starts: it is not the caller's yet to stop
        kill(worker)
        raise
    return worker


def kill(worker: Worker) -> None:
    """The worker and every process of its group (what its backend started) killed, then reaped.
    The group is signalled before the worker is reaped, while its id cannot be another's."""
    _kill_group(worker.process)
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join(5)
    worker.conn.close()


def end(worker: Worker) -> None:
    """Kill the worker and its group from another thread than the one waiting on it: that thread
    sees it die (its sentinel) and reaps it; nothing it uses is closed under it."""
    _kill_group(worker.process)
    try:
        worker.process.kill()
    except (ValueError, AttributeError):  # already reaped and closed by its thread
        pass


def _kill_group(process: multiprocessing.Process) -> None:
    if process.pid is None:  # never started
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is empty already, or never formed
        pass


def exit_reason(process: multiprocessing.Process) -> str:
    process.join(5)
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def stop(worker: Worker) -> None:
    try:
        worker.conn.send(("stop",))
    except (OSError, BrokenPipeError):
        pass
    # waited for without reaping it (its sentinel), so that its group can still be ended
    multiprocessing.connection.wait([worker.process.sentinel], 10)
    kill(worker)


class WorkerLost(Exception):
    """The worker died or did not answer in time: its case is recorded as `status` with `reason`
    (failed or timeout), the worker is killed."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def ask(worker: Worker, message: tuple, timeout: float) -> tuple:
    """Send a request and wait for the answer; WorkerLost (the worker killed) if it dies or hangs."""
    try:
        worker.conn.send(message)
        # the answer, or the worker's end: a child the backend forked holds the pipe open, so a
        # dead worker is seen by its sentinel, at once, not by a pipe that never closes
        ready = multiprocessing.connection.wait([worker.conn, worker.process.sentinel], timeout)
        if worker.conn not in ready:
            if ready:
                raise EOFError
            kill(worker)
            raise WorkerLost("timeout", f"no answer to {message[0]!r} within {timeout:.0f} s; worker killed")
        return worker.conn.recv()
    except (EOFError, OSError, BrokenPipeError):
        _kill_group(worker.process)  # what the backend started dies with it, before it is reaped
        reason = f"worker died during {message[0]!r} ({exit_reason(worker.process)})"
        kill(worker)
        raise WorkerLost("failed", reason) from None


def validated(case: Case, rec: object) -> Measurement:
    """A record the worker sent, validated: a backend that returns garbage becomes a failed case."""
    try:
        m = Measurement.from_json(rec)  # type: ignore[arg-type]
    except (ValueError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()
        return not_measured(case, "failed", f"the worker sent an invalid record: {' '.join(first[:3])[:300]}")
    if m.case != case:
        return not_measured(case, "failed", f"the worker answered for another case ({m.case.label()})")
    return m


def ask_training(worker: Worker, device: str, dtype: str, config_json: dict, timeout: float) -> dict:
    """One training run in `worker`, on one thread: its record, or a 'timeout'/'failed' record
    (the worker is then killed; the caller starts a fresh one for the next)."""
    try:
        worker.conn.send(("train", device, dtype, 1, config_json))
        ready = multiprocessing.connection.wait([worker.conn, worker.process.sentinel], timeout)
        if worker.conn not in ready:
            if ready:
                raise EOFError
            kill(worker)
            return {"status": "timeout", "reason": f"no result within {timeout:.0f} s"}
        return worker.conn.recv()[1]
    except (EOFError, OSError):
        _kill_group(worker.process)
        reason = f"worker died during training ({exit_reason(worker.process)})"
        kill(worker)
        return {"status": "failed", "reason": reason}


# ----------------------------------------------------------------------------- the A/B stdio worker
#
# The fine-interleaved A/B gate keeps one worker per side alive and asks each, in turn, for a few
# samples of the same case. A side is a revision installed in its own folder, so its worker is a
# plain subprocess of that revision (`python -m elbolab.measure.worker BACKEND THREADS`), spoken to in JSON
# lines on stdin/stdout:
#   worker -> driver  {"hello": {"pid", "versions"}} or {"error": "..."}
#   driver -> worker  {"op": "open", "case": case_json, "timer": timer_json}
#   worker -> driver  {"status", "reason", "loops", "first_call_ns", "calibration", "sample_ns",
#                      "check", "memory", "cost", "notes"}     (samples come next)
#   driver -> worker  {"op": "sample", "count": n}  ->  {"samples_ns": [...]}
#   driver -> worker  {"op": "close"}  ->  {"closed": true}
# Anything printed by a backend goes to stderr, never into the protocol.


def serve_stdio(backend_name: str, threads: int) -> int:
    # the protocol gets a descriptor of its own; fd 1 becomes stderr, so that nothing a backend
    # writes (print, or a C library's printf to fd 1) can corrupt the protocol
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj) -> None:
        out.write(json.dumps(obj, allow_nan=False) + "\n")
        out.flush()

    backend = discover().get(backend_name)
    if backend is None:
        send({"error": f"this revision has no backend {backend_name!r}"})
        return 2
    send({"hello": {"pid": os.getpid(), "versions": _versions(backend), "threads": threads}})
    opened: OpenCase | None = None
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "open":
            if opened is not None:
                opened.close()
            reply, opened = open_for_stdio(backend, Case.from_json(msg["case"]), TimerConfig(**msg["timer"]))
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


def open_for_stdio(backend: Backend, case: Case, timer: TimerConfig) -> tuple[dict, OpenCase | None]:
    """Open a case for sampling: the reply for the driver, and the open case if it can be sampled."""
    opened = open_case(backend, case, timer)
    if isinstance(opened, Measurement):
        return {"status": opened.status, "reason": opened.reason}, None
    check = opened.check_outputs()
    reply = {
        "status": "ok" if check.ok else "incorrect",
        "reason": None if check.ok else check.detail,
        "loops": opened.loops,
        "first_call_ns": opened.first_call_ns,
        "calibration": [list(c) for c in opened.calibration],
        "sample_ns": opened.sampler.sample_ns,
        "check": dict(check.__dict__),
        "memory": dict(opened.memory.__dict__),
        "cost": dict(opened.cost.__dict__),
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
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            code = self.proc.poll()
            raise RuntimeError("the worker hung" if code is None else f"the worker died (exit code {code})")
        try:
            reply = json.loads(line)
        except ValueError:  # a worker of a revision that let its backend write into the protocol
            raise RuntimeError(f"the worker wrote {line[:60]!r} where its protocol goes") from None
        if not isinstance(reply, dict):
            raise RuntimeError(f"the worker wrote {line[:60]!r} where its protocol goes")
        return reply

    def send(self, msg: dict) -> None:
        """Send a request without waiting for its answer (read it with receive())."""
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
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_now(serve_stdio(sys.argv[1], int(sys.argv[2])))
