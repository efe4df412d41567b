"""Opening a case: the one way a case is made ready, run and checked in the process that measures it.

The runner's workers, the A/B gate's stdio workers, instruction counting under Valgrind and the
tests all open a case here: the harness makes the inputs, the backend prepares them, the first call
is timed apart (compilation, JIT, allocation), the loop count is calibrated and the case warmed up
(when it is to be timed), and the outputs are read and checked against the float64 reference. What
differs between them is only what they do with the open case: sample it until precise (the runner),
sample it a block at a time in turn with another revision (the gate), or count its instructions.
"""

from __future__ import annotations

import os
import resource
import time
import traceback

import numpy as np
from threadpoolctl import threadpool_limits

from elbolab.measure.timer import Sampler, TimerConfig, loop_runner, sample_until_precise
from elbolab.model.backend import Backend
from elbolab.model.case import Case
from elbolab.model.measurement import Check, Cost, Measurement, Memory, not_measured
from elbolab.model.workloads import WORKLOADS, check_outputs


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

    def open(self) -> OpenCase:
        case, timer = self.case, self.timer
        self._limits = threadpool_limits(limits=case.threads)
        reset_ok = _reset_peak_rss()
        baseline = _status_bytes("VmRSS")
        self.inputs = self.workload.make_inputs(case)
        self.prepared = self.backend.prepare(case, {k: v.copy() for k, v in self.inputs.items()})
        self.backend_notes = dict(self.prepared.notes)
        self.run = loop_runner(self.prepared)
        self.stage = "the first call"
        if timer is None:  # not to be timed (counted, or checked only): one call
            t0 = time.perf_counter_ns()
            self.run(1)
            self.first_call_ns, self.loops, self.calibration = time.perf_counter_ns() - t0, 1, ()
        else:
            self.sampler = Sampler(self.prepared, timer)
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

    def read_outputs(self) -> None:
        """The outputs of the last call (and, with eps drawn inside the call, the next call's eps)."""
        self.stage = "reading outputs"
        got = self.prepared.outputs()
        self.next_eps = None
        if self.case.variant == "eps=sampled":  # a fresh draw per call: call once more and compare
            got = {k: np.array(v, copy=True) for k, v in got.items()}
            self.prepared.call()
            if self.prepared.sync:
                self.prepared.sync()
            self.next_eps = np.array(self.prepared.outputs().get("eps"), copy=True)
        self.got = got

    def check_outputs(self) -> Check:
        return check_outputs(self.workload, self.case, self.inputs, self.got, self.next_eps)

    def notes(self, **more) -> dict:
        return dict(self.backend_notes, worker_pid=os.getpid(), **more)

    def close(self) -> None:
        if self._limits is not None:
            self._limits.restore_original_limits()
        self.prepared = self.sampler = self.run = self._limits = None


def failure(case: Case, stage: str, exc: BaseException, cost: Cost | None) -> Measurement:
    """A backend that raised: 'failed', with the stage, the exception and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}" if tb else ""
    return not_measured(case, "failed", f"{stage} raised {exc.__class__.__name__}: {exc}{where}", cost)


def open_case(backend: Backend, case: Case, timer: TimerConfig | None) -> OpenCase | Measurement:
    """The case opened, or the Measurement saying why it could not be (skipped, or failed)."""
    cost = WORKLOADS[case.workload].cost(case)
    reason = backend.skip_reason(case)
    if reason:
        return not_measured(case, "skipped", reason, cost)
    opened = OpenCase(backend, case, timer)
    try:
        return opened.open()
    except Exception as exc:
        opened.close()
        return failure(case, opened.stage, exc, cost)


def measure_case(backend: Backend, case: Case, timer: TimerConfig) -> Measurement:
    """Measure one case in this process: open it, sample it until precise, read and check the
    outputs. A failure of the backend is a 'failed' measurement with the reason, never an exception."""
    opened = open_case(backend, case, timer)
    if isinstance(opened, Measurement):
        return opened
    try:
        cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
        samples, stopped = sample_until_precise(opened.sampler, timer)
        cpu_ns, wall_ns = time.process_time_ns() - cpu0, time.perf_counter_ns() - wall0
        device_ns = opened.sampler.device_ns[-len(samples) :] if opened.sampler.device_ns else []
        opened.read_outputs()
    except Exception as exc:
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
