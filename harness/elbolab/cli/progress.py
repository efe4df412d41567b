"""Progress of a run on stderr: a live bar on a terminal; plain lines when piped (a CI log), every
few percent, with the case just measured and the time left.

Nothing is drawn before the run has been planned and its file opened, so a usage error is one line
and no bar.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from elbolab.model.measurement import Measurement

PLAIN_EVERY = 0.05  # piped: a line every 5% of the cases (and for every case that is not ok)


class RunProgress:
    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.total = 0
        self.done = 0
        self.t0 = time.monotonic()
        self.next_line = 0.0
        self._progress: Progress | None = None
        self._task = None

    def planned(self, total: int) -> None:
        self.total, self.t0 = total, time.monotonic()
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=True,
            )  # fmt: skip
            self._progress.start()
            self._task = self._progress.add_task("measuring", total=total)
        else:
            print(f"measuring {total} case(s)", file=self.stream, flush=True)

    def measured(self, m: Measurement) -> None:
        self.done += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=escape(f"{m.case.label()}: {m.status}"))
            return
        share = self.done / self.total if self.total else 1.0
        if share >= self.next_line or m.status not in ("ok", "skipped") or self.done == self.total:
            elapsed = time.monotonic() - self.t0
            eta = elapsed / self.done * (self.total - self.done)
            print(f"[{self.done}/{self.total} {share:4.0%}, {elapsed:.0f} s, ~{eta:.0f} s left] "
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
