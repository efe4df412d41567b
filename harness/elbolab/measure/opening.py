"""Opening a case: the one way a case is made ready, run and checked in the process that measures it.

The runner's workers, the A/B gate's stdio workers, instruction counting under Valgrind and the
tests all open a case here: the harness makes the inputs, the backend prepares them, the first call
is timed apart (compilation, JIT, allocation), the loop count is calibrated and the case warmed up
(when it is to be timed), and the outputs are read. What differs between them is only what they do
with the open case: sample it in blocks interleaved with other backends (the runner), in turn with
another revision (the gate), or count its instructions.

The evidence that the timed calls did the work. The harness owns the input buffers the calls read
(Prepared's contract): between samples it rewrites them with another of the case's distinct input
sets (elbolab.model.workloads.input_set), and `checked_call` runs chosen calls on a set the harness
names, then rewrites the inputs with another set BEFORE it reads the outputs, so a backend that
defers its work to outputs(), or returns what an earlier call computed, answers for the wrong
inputs. The outputs go back to the parent process, which checks them (elbolab.measure.evidence):
nothing in this process can change the verdict. While the case is sampled its threads are pinned to
the cores asked for and counted (elbolab.measure.census).
"""

from __future__ import annotations

import os
import resource
import time
import traceback
from collections.abc import Mapping

import numpy as np
from threadpoolctl import threadpool_limits

from elbolab.measure import census
from elbolab.measure.evidence import outputs_problem
from elbolab.measure.timer import Sampler, TimerConfig, loop_runner, sample_until_precise
from elbolab.model.backend import Backend
from elbolab.model.case import Case
from elbolab.model.measurement import Check, Cost, Measurement, Memory, not_measured
from elbolab.model.workloads import WORKLOADS, check_outputs, shared_input_set

# A loop of call() is compared with call_n only where one call takes this long: below it, the
# Python loop's own overhead (~0.1-1 µs a call) is what call_n saves, legitimately.
CALL_N_MIN_CALL_NS = 20_000


class OpenCase:
    """One case made ready in this process: inputs made, prepared, first call timed and, with a
    `timer`, the loop count calibrated and the case warmed up; its outputs read (`got`). The thread
    limits of the case hold while it is open. `stage` names what it was doing if it raises."""

    def __init__(self, backend: Backend, case: Case, timer: TimerConfig | None):
        self.backend, self.case, self.timer = backend, case, timer
        self.stage = "prepare"
        self.workload = WORKLOADS[case.workload]
        self.cost = self.workload.cost(case)
        self.prepared = self.sampler = self.run = self._limits = None
        self.census = census.Census()
        self.pinned: tuple[int, ...] | None = None
        self.input_sets: dict[int, dict[str, np.ndarray]] = {}
        self.current_set = 0
        self.rotations = 0
        self.held: dict[str, np.ndarray] = {}  # a checked call's large outputs, until the parent picks

    def open(self, loops: int | None = None) -> OpenCase:
        """Prepare, first call, then (timed cases) calibrate or take `loops`, and warm up."""
        case, timer = self.case, self.timer
        self._limits = threadpool_limits(limits=case.threads)
        reset_ok = _reset_peak_rss()
        baseline = _status_bytes("VmRSS")
        self.inputs = self.input_sets[0] = shared_input_set(case, 0)
        # the buffers the calls read: the harness's, rewritten between samples (Prepared's contract)
        self.given = {k: v.copy() for k, v in self.inputs.items()}
        self.prepared = self.backend.prepare(case, self.given)
        self.backend_notes = dict(self.prepared.notes)
        self.run = loop_runner(self.prepared)
        self.stage = "the first call"
        if timer is None:  # not to be timed (counted, or checked only): one call
            t0 = time.perf_counter_ns()
            self.run(1)
            self.first_call_ns, self.loops, self.calibration = time.perf_counter_ns() - t0, 1, ()
        else:
            self.sampler = Sampler(self.prepared, timer, loops=loops)
            self.first_call_ns, self.loops = self.sampler.first_call_ns, self.sampler.loops
            self.calibration = tuple(self.sampler.calibration)
            self.stage = "timing"
            if timer.budget_ns // self.sampler.sample_ns > timer.min_samples + timer.warmup:
                self.sampler.warm_up(timer.warmup)
        self.read_outputs()
        device_peak = self.prepared.device_peak_bytes() if self.prepared.device_peak_bytes else None
        # read before the reference is computed, whose temporaries are not the backend's
        self.memory = _memory(reset_ok, baseline, device_peak)
        self.stage = "timing"
        return self

    # ------------------------------------------------------------------------------ the inputs

    def input_set(self, k: int) -> dict[str, np.ndarray]:
        if k not in self.input_sets:
            self.input_sets[k] = shared_input_set(self.case, k)
        return self.input_sets[k]

    def write_inputs(self, k: int) -> None:
        """Rewrite the buffers the calls read with input set k (between calls, never during one)."""
        if k == self.current_set:
            return
        values = self.input_set(k)
        if self.prepared.load is not None:  # a device backend: its own copy, through its loader
            # writable arrays (a shared set is mapped read-only, and torch.from_numpy warns on those)
            self.prepared.load({k: v if v.flags.writeable else np.array(v) for k, v in values.items()})
        else:
            for name, value in values.items():
                _overwrite(self.given[name], value)
        self.current_set = k
        self.rotations += 1

    # ------------------------------------------------------------------------------ sampling

    def pin(self, cpus: set[int] | None) -> None:
        self.pinned = census.pin(cpus)

    def sample(self, n: int, input_set: int | None = None) -> list[int]:
        """n timed samples (on input set `input_set` when given), counted by the census."""
        if input_set is not None:
            self.write_inputs(input_set)
        self.census.begin()
        try:
            return self.sampler.sample(n)
        finally:
            self.census.end()

    def checked_call(self, k: int, calls: int = 1, hold_above: int | None = None) -> dict:
        """`calls` calls (call_n(calls) where the backend loops itself) on input set k, then the
        inputs rewritten with another set, then outputs() timed: what the parent checks against
        the reference for set k. The outputs are copied: the next call may overwrite them.

        With `hold_above`, an output of more elements than that stays here (its shape is sent):
        the parent then asks for the elements it picked (`pick`), after the copy was made. A
        pipe carries ~250 MB/s: the 51 MB gradient of elbo_grad at batch 8192 took 0.2 s a check,
        seven checks a case."""
        self.stage = "a checked call"
        self.write_inputs(k)
        t0 = time.perf_counter_ns()
        self.run(calls)
        t1 = time.perf_counter_ns()
        self.write_inputs(next(j for j in (1, 0) if j != k))  # the answer must already be made
        self.stage = "reading outputs"
        t2 = time.perf_counter_ns()
        got = self.prepared.outputs()
        t3 = time.perf_counter_ns()
        outputs = _copied(got)
        self.stage = "timing"
        self.held = {}
        if hold_above is not None and isinstance(outputs, dict):
            for name in list(outputs):
                # a drawn eps travels whole: the parent makes the outputs it decides from all of it
                if name != "eps" and outputs[name].size > hold_above:
                    self.held[name] = outputs.pop(name)
        shapes = {name: list(a.shape) for name, a in self.held.items()}
        return {"set": k, "calls": calls, "outputs": outputs, "held": shapes, "outputs_ns": t3 - t2,
                "call_ns": t1 - t0}  # fmt: skip

    def pick(self, indices: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The elements at `indices` (flat) of each output the last checked call held."""
        held, self.held = self.held, {}
        return {
            name: held[name].reshape(-1)[np.asarray(idx)] for name, idx in indices.items() if name in held
        }

    def draws(self, count: int) -> list[np.ndarray]:
        """The eps each of `count` consecutive single calls drew (eps drawn inside the call)."""
        self.stage = "drawing eps"
        out = []
        for _ in range(count):
            self.run(1)
            out.append(np.array(_eps_of(self.prepared.outputs()), copy=True))
        self.stage = "timing"
        return out

    def call_n_ratio(self) -> float | None:
        """Per call, call_n(loops) over a loop of call(), where a call is long enough that the
        loop's overhead cannot explain a difference; None where there is no call_n or it is not."""
        p = self.prepared
        if p.call_n is None or self.sampler is None:
            return None
        if min(ns / loops for loops, ns in self.calibration[-2:]) < CALL_N_MIN_CALL_NS:
            return None
        calls = max(1, self.loops)
        by_call_n, by_loop = [], []
        for _ in range(5):  # alternated, the best of each: a shared machine's noise only slows
            t0 = time.perf_counter_ns()
            self.run(calls)
            t1 = time.perf_counter_ns()
            for _ in range(calls):
                p.call()
            if p.sync:
                p.sync()
            by_call_n.append(t1 - t0)
            by_loop.append(time.perf_counter_ns() - t1)
        return min(by_call_n) / min(by_loop)

    # ------------------------------------------------------------------------------ the answer

    def read_outputs(self) -> None:
        """The outputs of the last call (and, with eps drawn inside the call, the next call's eps)."""
        self.stage = "reading outputs"
        got = self.prepared.outputs()
        self.next_eps = None
        if self.case.variant == "eps=sampled":  # a fresh draw per call: call once more and compare
            got = _copied(got)
            self.prepared.call()
            if self.prepared.sync:
                self.prepared.sync()
            self.next_eps = np.array(_eps_of(self.prepared.outputs()), copy=True)
        self.got = got

    def check_outputs(self) -> Check:
        problem = outputs_problem(self.got, self.case)
        if problem:
            return Check(ok=False, detail=problem)
        return check_outputs(
            self.workload, self.case, self.input_sets[self.current_set], self.got, self.next_eps
        )

    def notes(self, **more) -> dict:
        return dict(self.backend_notes, worker_pid=os.getpid(), **more)

    def close(self) -> dict:
        """Release the case; what the census saw (and the child processes it ended)."""
        seen = {
            "busy_threads": self.census.busy_threads if self.census.wall_ns else None,
            "children": len(self.census.children),
            "children_cpu_ns": self.census.children_cpu_ns,
            "cpu_ns": self.census.process_cpu_ns,
            "wall_ns": self.census.wall_ns,
            "pinned": list(self.pinned) if self.pinned else None,
            "ended_children": census.end_children(keep=self.census.before),
        }
        if self.pinned is not None:
            census.pin(None)
        if self._limits is not None:
            self._limits.restore_original_limits()
        self.prepared = self.sampler = self.run = self._limits = None
        return seen


def _overwrite(buffer: np.ndarray, value: np.ndarray) -> None:
    """np.copyto into a buffer a backend made read-only against writes during its calls (the Rust
    plans do): the harness writes between calls only, so it lifts the guard for the copy."""
    if buffer.flags.writeable:
        np.copyto(buffer, value)
        return
    buffer.flags.writeable = True
    try:
        np.copyto(buffer, value)
    finally:
        buffer.flags.writeable = False


def _copied(got: object) -> dict[str, object] | str:
    """The outputs as arrays of their own; a backend whose outputs() returns no mapping gets what
    it returned described instead (a str), for the parent to call the case incorrect."""
    if not isinstance(got, Mapping):
        return f"outputs() returned {type(got).__name__}, not a mapping of output names to arrays"
    return {str(k): np.array(v, copy=True) for k, v in got.items()}


def _eps_of(got: object) -> object:
    return got.get("eps") if isinstance(got, Mapping) else None


def failure(case: Case, stage: str, exc: BaseException, cost: Cost | None) -> Measurement:
    """A backend that raised: 'failed', with the stage, the exception and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return not_measured(case, "failed", f"{stage} raised {exc.__class__.__name__}: {exc}{where}", cost)


def open_case(
    backend: Backend, case: Case, timer: TimerConfig | None, loops: int | None = None
) -> OpenCase | Measurement:
    """The case opened, or the Measurement saying why it could not be (skipped, or failed)."""
    cost = WORKLOADS[case.workload].cost(case)
    reason = backend.skip_reason(case)
    if reason:
        return not_measured(case, "skipped", reason, cost)
    opened = OpenCase(backend, case, timer)
    try:
        return opened.open(loops)
    # KeyboardInterrupt too: a worker is out of reach of Ctrl-C (a process group of its own), so
    # one raised here is the backend's
    except (Exception, KeyboardInterrupt) as exc:
        opened.close()
        return failure(case, opened.stage, exc, cost)


def measure_case(backend: Backend, case: Case, timer: TimerConfig) -> Measurement:
    """Measure one case in this process, on its own: open it, sample it until precise, read and
    check the outputs here. A failure of the backend is a 'failed' measurement with the reason,
    never an exception. (The runner measures cases interleaved and checks them in the parent;
    this is the self-contained form the tests and the memory probe use.)"""
    opened = open_case(backend, case, timer)
    if isinstance(opened, Measurement):
        return opened
    try:
        cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
        samples, stopped = sample_until_precise(opened.sampler, timer)
        cpu_ns, wall_ns = time.process_time_ns() - cpu0, time.perf_counter_ns() - wall0
        device_ns = opened.sampler.device_ns[-len(samples) :] if opened.sampler.device_ns else []
        opened.read_outputs()
    except (Exception, KeyboardInterrupt) as exc:
        return failure(case, opened.stage, exc, opened.cost)
    finally:
        opened.close()
    check = opened.check_outputs()
    return Measurement(
        case,
        "ok" if check.ok else "incorrect",
        None if check.ok else check.detail,
        loops=opened.loops,
        samples_ns=tuple(float(s) for s in samples),
        first_call_ns=opened.first_call_ns,
        check=check,
        memory=opened.memory,
        cost=opened.cost,
        notes=opened.notes(sampling=f"stopped at {len(samples)} samples: {stopped}"),
        calibration=opened.calibration,
        cpu_ns=cpu_ns,
        wall_ns=wall_ns,
        device_samples_ns=tuple(device_ns),
    )


def check_case(backend: Backend, case: Case) -> Check:
    """One call of `case` and its check, nothing timed: is this backend right? (The tests' question;
    a case that cannot be opened raises RuntimeError with the reason.)"""
    opened = open_case(backend, case, timer=None)
    if isinstance(opened, Measurement):
        raise RuntimeError(f"{case.label()}: {opened.status}: {opened.reason}")
    opened.close()
    return opened.check_outputs()


# ---------------------------------------------------------------------------------- memory


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


def _memory(reset_ok: bool, baseline: int | None, device_peak: int | None) -> Memory:
    peak = _status_bytes("VmHWM") if reset_ok else None
    return Memory(
        # where the peak cannot be reset, the worker's peak so far (ru_maxrss)
        peak_rss_bytes=peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        peak_scope="case" if peak else "worker",
        baseline_rss_bytes=baseline,
        device_peak_bytes=device_peak,
    )
