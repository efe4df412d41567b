"""Progress of a run on stderr: a live bar on a terminal; plain lines when piped (a CI log), every
few percent, with the case just measured and the time left.

The time left is estimated from the cases measured since the first result came in (worker starts,
imports and the machine's limit probes happen once, before it) and only over cases that are
measured: a skipped case (a device this machine lacks) costs nothing, so the cases still to come
are discounted by the share skipped so far. Until two results have come apart in time there is no
estimate (a first cell's compile would make one up). Results come a cell at a time, so this is
within 2x of the truth once a few cells are done (tests/test_report.py holds it to that on a
simulated run).

Nothing is drawn before the run has been planned and its file opened, so a usage error is one line
and no bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from elbolab.model.measurement import Measurement

PLAIN_EVERY = 0.05  # piped: a line every 5% of the cases (and for every case that is not ok)
BURST_S = 0.5  # results closer than this to the first came with it (one cell is reported at once)


class Eta:
    """Seconds left in a run of `total` cases, from the times results came in (see the module).

    Results come in bursts, a cell at a time, the moment its rounds end; the time a cell took shows
    when its burst comes. So the rate is taken over whole bursts: the time from the end of the first
    burst to the end of the last whole one, over the measured cases of the bursts after the first
    (the newest left out while it may still be arriving). The first calls the results report (a JIT compile, seconds of it in
    a run's first cells) are taken out of that time: they come once per kernel, not per case."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic):
        self.total, self.clock = total, clock
        self.done = self.skipped = 0
        self.first_at: float | None = None  # when the first result came
        self.last_at = 0.0  # when the latest result came
        self.whole_at = 0.0  # when the last whole burst ended
        self.counted = 0  # measured cases of the bursts after the first and before the newest
        self.in_burst = 0  # measured cases of the newest burst so far
        self.first_calls = self.burst_first_calls = 0.0  # seconds of first calls, counted / in the newest

    def add(self, skipped: bool, first_call_s: float = 0.0) -> None:
        now = self.clock()
        self.done += 1
        self.skipped += skipped
        if self.first_at is None:
            self.first_at = now
            self.burst_first_calls = -1.0  # the first burst's time is not counted: nor its first calls
        elif now - self.last_at >= BURST_S:  # a new cell's results: the previous burst is whole
            if self.burst_first_calls >= 0:
                self.counted += self.in_burst
                self.first_calls += self.burst_first_calls
            else:  # the first burst ended: the clock starts here
                self.first_at = self.last_at
            self.whole_at = self.last_at
            self.in_burst, self.burst_first_calls = 0, 0.0
        self.in_burst += not skipped
        if self.burst_first_calls >= 0:
            self.burst_first_calls += first_call_s
        self.last_at = now

    def seconds_left(self) -> float | None:
        if self.first_at is None or self.counted <= 0:
            return None
        spent = max(self.whole_at - self.first_at - self.first_calls, 0.0)
        per_case = spent / self.counted
        left = (self.total - self.done) * (1 - self.skipped / self.done)
        return per_case * left

    def text(self) -> str:
        left = self.seconds_left()
        if left is None:
            return "estimating"
        return f"~{left:.0f} s left" if left < 120 else f"~{left / 60:.0f} min left"


class RunProgress:
    def __init__(self, stream=None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.clock = clock
        self.total = 0
        self.done = 0
        self.t0 = clock()
        self.next_line = 0.0
        self.eta = Eta(0, clock)
        self._progress: Progress | None = None
        self._task = None

    def planned(self, total: int) -> None:
        self.total, self.t0 = total, self.clock()
        self.eta = Eta(total, self.clock)
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
        self.eta.add(m.status == "skipped", (m.first_call_ns or 0) / 1e9)
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
