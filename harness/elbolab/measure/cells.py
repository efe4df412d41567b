"""Measuring the grid one cell at a time: the backends one speed-up compares, close together.

A cell is every case that differs only by backend (and device): the same workload, variant, dtype,
batch, sizes and threads. Its cases are opened together, one in each backend's worker (every worker
pinned to the same cores), and sampled in interleaved rounds: in each round every backend takes a
block of samples, in an order that turns from round to round (forwards, then backwards, starting one
further on), so drift and load fall on every backend alike, and each round's medians pair up into
the round ratios a speed-up's interval is built from (elbolab.analyse.table). Rounds alternate
between two input sets the harness writes; the checks of chosen calls and samples (single calls on
either set, one right after the other; the last call of a sample) are made at rounds drawn at random
per case, and eps drawn inside the call is collected from consecutive calls after the last round.

The null control: where the reference backend (NumPy) is in a cell, it is measured a second time in
a worker of its own as `numpy-control` (elbolab.model.backend.CONTROL_SUFFIX), a backend like any
other. Its speed-up over NumPy should be 1; what it is instead is the run's own noise.
"""

from __future__ import annotations

import math
import os
import random
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from elbolab.measure.census import usable_cpus
from elbolab.measure.evidence import SAMPLED_ELEMENTS, CaseRecord
from elbolab.measure.timer import TimerConfig
from elbolab.measure.worker import Worker, WorkerLost, WorkerSpec, ask, kill, start_worker, stop, validated
from elbolab.model.backend import Backend, control_name
from elbolab.model.case import Case
from elbolab.model.measurement import not_measured

REFERENCE = "numpy"  # the backend every speed-up is over, and whose control is measured


@dataclass(frozen=True)
class CellConfig:
    rounds: int = 8  # paired rounds: 6 is the fewest a 95% signed-rank interval can be made of
    block: int = 2  # samples a backend takes per round
    # ... where a case's blocks of all rounds last at most this; a cell with a longer case takes one
    # sample a round: a sample of tens of milliseconds (vae_step at batch 1024, the elbo family at
    # 8192: a call or a few) is steady already, and its second sample cost ~25 s of a make bench
    block_budget_ns: int = 400_000_000
    control: bool = True  # measure the reference backend a second time in every cell it is in
    draws: int = 64  # at most this many consecutive calls' eps are collected (eps drawn inside)
    draw_values: int = 4096  # ... and at least this many numbers, where the calls allow
    seed: int | None = None  # of the random choice of checked rounds (None: fresh each run)

    @classmethod
    def quick(cls) -> CellConfig:
        return cls(rounds=6, block=1)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def cell_key(case: Case) -> tuple:
    """What the cases one speed-up compares share: everything but the backend and the device."""
    return (case.workload, case.variant, case.dtype, case.batch, case.input_dim, case.latent_dim,
            case.hidden_dim, case.importance_samples, case.threads, case.seed)  # fmt: skip


def cells_of(cases: Sequence[Case], control: bool) -> list[list[Case]]:
    """The cases grouped into cells, in the order the plan gave them; each cell with the reference
    backend gets its control."""
    cells: dict[tuple, list[Case]] = {}
    for case in cases:
        cells.setdefault(cell_key(case), []).append(case)
    if control:
        for members in cells.values():
            ref = next((c for c in members if c.backend == REFERENCE and c.device == "cpu"), None)
            if ref is not None:
                members.append(replace(ref, backend=control_name(REFERENCE)))
    return list(cells.values())


class Workers:
    """One live worker per (backend, threads) spec, started when a cell first needs it and kept
    for the run (a JIT compiles once, torch is imported once); one that died or hung is replaced.

    Only the worker being asked runs: every other live worker's process group is stopped
    (SIGSTOP) while it works, and continued when the cell ends. A worker that has just finished
    its block is not idle: its OpenMP and OpenBLAS threads spin-wait for the next parallel region
    (OpenBLAS for ~2^28 cycles, about 0.1 s here), and at 2 threads on 2 cores they took the cores
    from the next backend of the round. On the 2-core VM torch's elbo at batch 128 and 2 threads
    took 39.8 ms a call in a cell against 353 µs alone, numba-parallel's 8.6 ms against 34 µs; the
    report called them 100x slower with 2 threads than with 1. Stopped, they cost nothing; each
    backend keeps its own waiting policy (OMP_WAIT_POLICY=PASSIVE also quietened them, and slowed
    the backends that spin by design)."""

    def __init__(self, spec_of: Callable[[Case], WorkerSpec], env: dict[str, str], start_timeout: float):
        self.spec_of, self.env, self.start_timeout = spec_of, env, start_timeout
        self.live: dict[WorkerSpec, Worker] = {}
        self.versions: dict[str, dict] = {}
        self.held: set[int] = set()  # process groups stopped while another worker works
        self.failed: dict[WorkerSpec, str] = {}  # specs whose worker did not start (prestart)

    def prestart(self, cases: Sequence[Case], jobs: int) -> None:
        """Start the workers of `cases` before any is measured, `jobs` at a time: a worker's start
        is its imports (torch ~3 s here, 15 workers ~27 s in a make bench one after the other),
        which use a core each and wait on the disk. A worker that does not start is recorded, and
        its cases fail with the reason when their cell asks for it."""
        specs = list(dict.fromkeys(self.spec_of(c) for c in cases if self.spec_of(c) not in self.live))

        started: list[Worker] = []  # each as soon as its process exists: an interrupt ends them all

        def start(spec: WorkerSpec) -> tuple[WorkerSpec, Worker | str]:
            try:
                return spec, start_worker(
                    spec, start_timeout=self.start_timeout, env=self.env, started=started
                )
            except RuntimeError as exc:
                return spec, str(exc)

        pool = ThreadPoolExecutor(max_workers=max(1, jobs))
        try:
            results = list(pool.map(start, specs))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for worker in list(started):
                kill(worker)
            raise
        pool.shutdown()
        for spec, got in results:
            if isinstance(got, str):
                self.failed[spec] = got
            else:
                self._adopt(spec, got)

    def for_case(self, case: Case) -> Worker:
        """The case's worker (started if need be), from now on the only one running."""
        spec = self.spec_of(case)
        if spec in self.failed:
            raise RuntimeError(self.failed[spec])
        worker = self.live.get(spec)
        if worker is None or not worker.process.is_alive():
            worker = self._adopt(spec, start_worker(spec, start_timeout=self.start_timeout, env=self.env))
        self._hold_all_but(worker)
        return worker

    def _adopt(self, spec: WorkerSpec, worker: Worker) -> Worker:
        self.live[spec] = worker
        self.versions.setdefault(spec.backend, worker.hello.get("versions", {}))
        return worker

    def _hold_all_but(self, active: Worker) -> None:
        self._signal({active.process.pid}, signal.SIGCONT)
        self.held.discard(active.process.pid)
        others = {w.process.pid for w in self.live.values() if w is not active} - self.held
        self._signal(others, signal.SIGSTOP)
        self.held |= others

    def release(self) -> None:
        """Every stopped worker continued (the end of a cell; before any is stopped or killed)."""
        self._signal(self.held, signal.SIGCONT)
        self.held.clear()

    @staticmethod
    def _signal(groups: set[int], sig: signal.Signals) -> None:
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):  # gone already: its loss is found when it is asked
                pass

    def lost(self, case: Case) -> None:
        worker = self.live.pop(self.spec_of(case), None)
        if worker is not None:
            self.held.discard(worker.process.pid)
            kill(worker)

    def stop_all(self) -> None:
        self.release()
        for worker in self.live.values():
            stop(worker)
        self.live.clear()


def cell_cpus(index: int, threads: int) -> set[int] | None:
    """The cores a cell's workers run on: the same for every backend of the cell (a core that is
    slower, or busier with interrupts, cannot favour one), moving round the machine from cell to
    cell; None when the cell needs every core."""
    allowed = usable_cpus()
    if not allowed or threads >= len(allowed):
        return None
    start = index * threads
    return {allowed[(start + j) % len(allowed)] for j in range(threads)}


def measure_cell(members: Sequence[Case], workers: Workers, timer: TimerConfig, config: CellConfig,
                 index: int, timeout: float) -> list[CaseRecord]:  # fmt: skip
    """Open every member, sample them in interleaved rounds with the checks, close them; one
    record per member (the parent judges them: elbolab.measure.evidence)."""
    rng = random.Random(None if config.seed is None else (config.seed, index))
    cpus = cell_cpus(index, members[0].threads)
    records = {c: CaseRecord(c) for c in members}
    live: list[Case] = []
    for case in members:
        if _open(records[case], workers, timer, cpus, timeout):
            live.append(case)
    plans = {c: _check_plan(rng, config.rounds) for c in live}
    block = config.block if _affordable(records, live, timer, config) else 1
    for r in range(config.rounds):
        order = live[r % len(live) :] + live[: r % len(live)] if live else []
        if r % 2:
            order.reverse()
        for case in order:
            rec = records[case]
            if rec.lost is not None:
                continue
            _request(rec, workers, timeout, _round(rec, r, block, plans[case]))
    for case in live:
        rec = records[case]
        if rec.lost is None and case.variant == "eps=sampled":
            count = min(config.draws, max(3, -(-config.draw_values // (case.batch * case.latent_dim))))
            _request(rec, workers, timeout, [("draws", count)])
        if rec.lost is None:
            _close(rec, workers, timeout)
    workers.release()
    return [records[c] for c in members]


def _check_plan(rng: random.Random, rounds: int) -> dict[int, list[tuple]]:
    """Where a case's checks go, by round: four single calls in a row on alternating input sets
    after a round drawn at random (a backend that works only every second or third call answers
    one of them with the other set's outputs), the last call of a sample after another round, and
    a single call on set 1 before the first round (a backend that computes only once, at its first
    call, is caught at once)."""
    run_at, sample_at = rng.randrange(rounds), rng.randrange(rounds)
    plan: dict[int, list[tuple]] = {-1: [("check", 1, 1)]}
    plan.setdefault(run_at, []).extend(("check", k, 1) for k in (0, 1, 0, 1))
    plan.setdefault(sample_at, []).insert(0, ("check", sample_at % 2, 0))  # the round's own set
    return plan


def _round(rec: CaseRecord, r: int, block: int, plan: dict[int, list[tuple]]) -> list[tuple]:
    """The requests of round r for one case: the checks due before it (round 0 only), its block
    of samples on the round's input set, then the checks due after it."""
    requests = list(plan.get(-1, [])) if r == 0 else []
    requests.append(("sample", block, r % 2))
    return requests + list(plan.get(r, []))


def _affordable(records: dict, live: list[Case], timer: TimerConfig, config: CellConfig) -> bool:
    """Whether every member can take `block` samples a round within the block budget (and the
    case's whole budget)."""
    budget = min(timer.budget_ns, config.block_budget_ns)
    for case in live:
        sample_ns = (records[case].opened or {}).get("sample_ns") or 0
        if sample_ns * config.rounds * config.block > budget:
            return False
    return True


def _open(rec: CaseRecord, workers: Workers, timer: TimerConfig, cpus, timeout: float) -> bool:
    case = rec.case
    try:
        worker = workers.for_case(case)
    except RuntimeError as exc:  # the worker could not start
        rec.not_opened = not_measured(case, "failed", str(exc))
        return False
    try:
        options = {"cpus": sorted(cpus) if cpus else None}
        reply = ask(worker, ("open", case.label(), case.to_json(), timer.to_json(), options), timeout)
    except WorkerLost as lost:
        workers.lost(case)
        rec.lost = (lost.status, f"{lost.reason} (opening the case)")
        return False
    if reply[0] == "opened":
        rec.opened = reply[1]
        return True
    rec.not_opened = validated(case, reply[1])
    return False


def _request(rec: CaseRecord, workers: Workers, timeout: float, requests: list[tuple]) -> None:
    """Send a case's requests in turn, filing each answer in its record; a lost worker or a
    backend that raised ends the case (its record says why)."""
    worker = workers.for_case(rec.case)
    for request in requests:
        try:
            message = (_check_request(rec, request) if request[0] == "check" else
                       (request[0], rec.case.label(), *request[1:]))  # fmt: skip
            reply = ask(worker, message, timeout)
        except WorkerLost as lost:
            workers.lost(rec.case)
            rec.lost = (lost.status, f"{lost.reason}, case {rec.case.label()}")
            return
        kind = reply[0]
        if kind == "samples":
            rec.samples.append(reply[1])
            rec.sets.append(request[2])
        elif kind == "checked":
            checked = reply[1]
            if checked.get("held"):
                try:
                    picked = _pick(rec, worker, timeout, checked["held"])
                except WorkerLost as lost:
                    workers.lost(rec.case)
                    rec.lost = (lost.status, f"{lost.reason}, case {rec.case.label()}")
                    return
                if picked[0] == "raised":
                    rec.lost, rec.census = ("failed", picked[1]), picked[2]
                    return
                checked = dict(checked, outputs={**checked["outputs"], **picked[1]}, picked=picked[2])
            rec.checks.append(checked)
        elif kind == "drawn":
            rec.draws = reply[1]
        elif kind == "raised":
            rec.lost = ("failed", reply[1])
            rec.census = reply[2]
            return


def _check_request(rec: CaseRecord, request: tuple) -> tuple:
    """A check as sent: every element of the outputs of the first check on the case's own inputs
    (set 0), which the parent checks whole; of the others' large outputs only the elements the
    parent picks (elbolab.measure.evidence.SAMPLED_ELEMENTS), sent after the outputs were copied
    (the worker always sends a drawn eps whole: elbolab.measure.opening.OpenCase.checked_call)."""
    _, k, calls = request
    whole = k == 0 and not any(c["set"] == 0 for c in rec.checks)
    return ("check", rec.case.label(), k, calls, None if whole else SAMPLED_ELEMENTS)


def _pick(rec: CaseRecord, worker, timeout: float, held: dict[str, list[int]]) -> tuple:
    """Ask the worker for the elements of each held output at indices drawn here, fresh for every
    check (the backend cannot know them when it computes): ("picked", elements, indices), or the
    worker's ("raised", reason, census)."""
    rng = np.random.default_rng()
    picks = {}
    for name, shape in held.items():
        size = math.prod(shape)
        picks[name] = np.sort(rng.choice(size, min(SAMPLED_ELEMENTS, size), replace=False))
    reply = ask(worker, ("pick", rec.case.label(), picks), timeout)
    return (*reply, picks) if reply[0] == "picked" else reply


def _close(rec: CaseRecord, workers: Workers, timeout: float) -> None:
    try:
        reply = ask(workers.for_case(rec.case), ("close", rec.case.label()), timeout)
    except WorkerLost as lost:
        workers.lost(rec.case)
        rec.lost = (lost.status, f"{lost.reason} (closing the case)")
        return
    rec.census = reply[1]


def specs_for(cases: Sequence[Case], backends: dict[str, Backend]) -> Callable[[Case], WorkerSpec]:
    """The worker that measures each case: one per backend and thread count (thread variables are
    read when a library is imported), except for a backend that sets its threads per case, whose
    one worker starts with the largest count among its cases."""
    shared = {name for name, backend in backends.items() if backend.threads_per_case}
    widest: dict[str, int] = {}
    for case in cases:
        widest[case.backend] = max(widest.get(case.backend, 1), case.threads)

    def spec_of(case: Case) -> WorkerSpec:
        return WorkerSpec(case.backend, widest[case.backend] if case.backend in shared else case.threads)

    return spec_of
