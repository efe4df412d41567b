"""Where a run's time went, from its results file: the limits, the cells (with the samples, the
first calls and the opens inside them) and the parent's checks, summed from each case's notes.

    .venv/bin/python scripts/bench_split.py RUN.json [RUN2.json ...]

The training, history ingest and report of `make bench` come after the run: its wall time
(`/usr/bin/time make bench`) less the run's is what they took.
"""

from __future__ import annotations

import collections
import datetime as dt
import sys

from elbolab.store.results import load


def main(paths: list[str]) -> int:
    for path in paths:
        run = load(path)
        ms = run.measurements
        seconds = (
            dt.datetime.fromisoformat(run.finished) - dt.datetime.fromisoformat(run.started)
        ).total_seconds()
        cells = sum(m.notes.get("cell_wall_ns", 0) for m in ms) / 1e9
        checks = sum(m.notes.get("check_wall_ns", 0) for m in ms) / 1e9
        first = sum(m.first_call_ns or 0 for m in ms) / 1e9
        samples = sum(sum(m.samples_ns) for m in ms if m.samples_ns) / 1e9
        opens = sum(m.notes.get("open_wall_ns", 0) for m in ms) / 1e9
        limits = (run.limits or {}).get("duration_s", 0.0)
        statuses = collections.Counter(m.status for m in ms)
        print(f"{path}: {dict(statuses)}")
        print(f"  run {seconds:.0f} s: limits {limits:.1f} s, cells {cells:.0f} s (samples {samples:.0f}, first calls "
              f"{first:.0f}, opens {opens:.0f}), parent checks {checks:.0f} s, "
              f"the rest {seconds - cells - checks - limits:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
