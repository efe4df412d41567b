"""Progress of a run on stderr: a live bar on a terminal; plain lines when piped (a CI log), every
few percent, with the case just measured and the time left.

The time left: a run's cells cost very different times (on the 2-core VM an iwae cell at batch 8192
took 75 s, an elbo cell at batch 1 two), and the grid is measured in order, small sizes first, so
counting cases gets it wrong by 5x or more early in a run. Each planned case is given an expected
cost from its workload's cost model (`expected_cost`: a fixed part per case, and parts that grow
with the bytes and the flops of one call, which the harness's inputs, references and checks and
the samples of a slow call all scale with); the time left is the cost still to come times the seconds a
unit of cost has taken so far. So far: from the end of the first burst of results (worker starts,
imports and the machine's limit probes come before it) to the end of the last whole burst (a cell's
results come together, the moment its rounds end), less the first calls they report (JIT compiles,
once per kernel). Cases of a backend and device that have only been skipped so far (a device this
machine lacks) cost nothing. Until a second burst is whole there is no estimate. On the recorded
timelines of a 368-case run and of make bench this is within 2x of the truth (or 30 s of it) from
5% of the run on, "estimating" until make bench's second cell is in (tests/test_report_console.py
replays them, and a simulated run).

Nothing is drawn before the run has been planned and its file opened, so a usage error is one line
and no bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from elbolab.analyse.control import cell_of
from elbolab.model.backend import control_name
from elbolab.model.case import Case
from elbolab.model.measurement import Measurement
from elbolab.model.workloads import WORKLOADS

PLAIN_EVERY = 0.05  # piped: a line every 5% of the cases (and for every case that is not ok)
BURST_S = 0.5  # results closer than this to the previous came with it (a cell is reported at once)
# the expected cost of a case in seconds of the 2-core VM: a fixed part, and parts per GB and per
# GFLOP of one call (the harness's inputs, references and checks, and a slow call's samples, all
# grow with them). Fitted cell by cell on two recorded runs (tests/data/timeline_*.jsonl: a 368-case
# matrix with 10 ms samples, where the flops weighed 3.0, and make bench with 5 ms samples, where
# they weighed 0.5), then chosen so both replay within 2x. Only their ratios matter: the run's own
# pace scales them.
FIXED_S, PER_GB_S, PER_GFLOP_S = 0.3, 25.0, 1.25


def expected_cost(case: Case) -> float:
    """A case's expected cost in the units the time left is counted in (see the module)."""
    cost = WORKLOADS[case.workload].cost(case)
    return FIXED_S + PER_GB_S * cost.bytes / 1e9 + PER_GFLOP_S * cost.flops / 1e9


class Eta:
    """Seconds left in a run of `total` cases (see the module). `planned`: the cases the run will
    measure (the null control's are added where the reference is, `control`); without them every
    case counts the same."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic,
                 planned: Iterable[Case] = (), control: bool = False):  # fmt: skip
        self.total, self.clock = total, clock
        self.cost: dict[tuple, float] = {}  # each planned case's expected cost
        self.cells: dict[tuple, list[Case]] = {}  # the planned cases of each cell
        for case in planned:
            self._plan(case)
            if control and case.backend == "numpy" and case.device == "cpu":
                self._plan(Case(**{**case.to_json(), "backend": control_name("numpy")}))
        # the cost still to come, by (backend, device): a cell leaves it whole when its results come
        self.left: dict[tuple[str, str], float] = {}
        for cases in self.cells.values():
            for c in cases:
                g = (c.backend, c.device)
                self.left[g] = self.left.get(g, 0.0) + self.cost[c.key()]
        self.done = self.skipped = 0
        self.first_at: float | None = None  # the end of the first burst, once it has ended
        self.last_at = self.whole_at = 0.0  # the latest result; the end of the last whole burst
        self.counted = 0.0  # cost of the measured cases of whole bursts after the first
        self.first_calls = 0.0  # seconds of their first calls
        self.burst: list[tuple[float, float]] = []  # the newest burst's (cost, first call s), measured
        self.in_first = True
        self.seen: dict[tuple[str, str], list[int]] = {}  # (backend, device): [reported, skipped]

    def _plan(self, case: Case) -> None:
        self.cost[case.key()] = expected_cost(case)
        self.cells.setdefault(cell_of(case), []).append(case)

    def add(self, skipped: bool, first_call_s: float = 0.0, case: Case | None = None) -> None:
        now = self.clock()
        if self.done and now - self.last_at >= BURST_S:  # a new cell's results: the previous burst is whole
            if self.in_first:
                self.in_first, self.first_at = False, self.last_at  # the clock starts here
            else:
                self.counted += sum(c for c, _ in self.burst)
                self.first_calls += sum(f for _, f in self.burst)
            self.whole_at, self.burst = self.last_at, []
        self.done += 1
        self.skipped += skipped
        cost = 1.0
        if case is not None:
            cost = self.cost.get(case.key(), 1.0)
            for c in self.cells.pop(cell_of(case), []):  # its cell is measured: all of it comes now
                self.left[(c.backend, c.device)] -= self.cost[c.key()]
            seen = self.seen.setdefault((case.backend, case.device), [0, 0])
            seen[0] += 1
            seen[1] += skipped
        if not skipped:
            self.burst.append((cost, first_call_s))
        self.last_at = now

    def seconds_left(self) -> float | None:
        if self.first_at is None or self.counted <= 0:
            return None
        per_unit = max(self.whole_at - self.first_at - self.first_calls, 0.0) / self.counted
        if not self.cost:  # no plan: every case the same, the share skipped so far discounted
            return per_unit * (self.total - self.done) * (1 - self.skipped / self.done)
        never = {g for g, (n, s) in self.seen.items() if n and s == n}  # only skipped so far
        return per_unit * max(sum(v for g, v in self.left.items() if g not in never), 0.0)

    def text(self) -> str:
        left = self.seconds_left()
        if left is None:
            return "estimating"
        return f"~{left:.0f} s left" if left < 120 else f"~{left / 60:.0f} min left"


class RunProgress:
    def __init__(self, stream=None, clock: Callable[[], float] = time.monotonic, planned: Iterable[Case] = (),
                 control: bool = False):  # fmt: skip
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.clock = clock
        self.planned_cases, self.control = list(planned), control
        self.total = 0
        self.done = 0
        self.t0 = clock()
        self.next_line = 0.0
        self.eta = Eta(0, clock)
        self._progress: Progress | None = None
        self._task = None

    def planned(self, total: int) -> None:
        self.total, self.t0 = total, self.clock()
        self.eta = Eta(total, self.clock, self.planned_cases, self.control)
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                console=Console(file=self.stream), transient=True,
            )  # fmt: skip
            self._progress.start()
            self._task = self._progress.add_task("measuring", total=total, eta="estimating")
        else:
            print(f"measuring {total} case(s)", file=self.stream, flush=True)

    def measured(self, m: Measurement) -> None:
        self.done += 1
        self.eta.add(m.status == "skipped", (m.first_call_ns or 0) / 1e9, m.case)
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=escape(f"{m.case.label()}: {m.status}"),
                                  eta=self.eta.text())  # fmt: skip
            return
        share = self.done / self.total if self.total else 1.0
        if share >= self.next_line or m.status not in ("ok", "skipped") or self.done == self.total:
            elapsed = self.clock() - self.t0
            print(f"[{self.done}/{self.total} {share:4.0%}, {elapsed:.0f} s, {self.eta.text()}] "
                  f"{m.case.label()}: {m.status}", file=self.stream, flush=True)  # fmt: skip
            while self.next_line <= share:
                self.next_line += PLAIN_EVERY

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> RunProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
