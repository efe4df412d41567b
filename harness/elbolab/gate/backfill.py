"""Backfill: past commits measured on this machine, each in a temporary worktree with its own code
installed and built (elbolab.gate.revisions) and run by its own `elbolab run`, and stored in the
history database. A commit that does not install or build, or whose run fails, is skipped with the
reason recorded in the store.

This module never prints: progress goes to `log`.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from elbolab.gate.revisions import (
    Failure,
    Log,
    builds_needed,
    commit_side,
    left_out,
    run_argv,
    run_side,
)
from elbolab.measure.machine import machine_info
from elbolab.model.backend import discover
from elbolab.model.errors import UsageError
from elbolab.store.commits import commit_info
from elbolab.store.database import MACHINE_ENV, Machine, Store, canonical
from elbolab.store.results import Git, Run


@dataclass(frozen=True)
class Measured:
    runs: tuple[Run, ...]
    notes: tuple[str, ...] = ()


def as_commit(run: Run, sha: str, **history) -> Run:
    """A run made in a temporary install, described as the commit it measured (its own git facts
    describe the install, not the commit)."""
    return replace(run, git=Git(commit=sha, dirty=False),
                   config=dict(run.config, history={"commit": sha, "worktree": True, **history}))  # fmt: skip


def measure_commit(repo: Path, sha: str, config, needed: dict, backend_names: Sequence[str], tmp: Path,
                   log: Log, extra_env: dict[str, str] | None = None, runs: int = 1) -> Measured | Failure:  # fmt: skip
    """Measure one commit in a temporary worktree: its own code installed, its builds built, its
    own `elbolab run` with the filters of `config` (an elbolab.gate.ab.ABConfig), `runs` times
    (separate processes, one after the other: the runs are the units a change is judged on)."""
    with commit_side(repo, sha, needed, tmp, log, extra_env) as side:
        if isinstance(side, Failure):
            return side
        leave, notes = left_out(side, needed)
        selected = config.filter("backend") or tuple(backend_names)
        if leave and set(selected) <= leave:
            return Failure("build", "; ".join(notes))
        made = []
        for k in range(runs):
            out = side.tree.parent / f"run-{k}.json"
            try:
                made.append(run_side(side, run_argv(config, out, leave, backend_names, side.cli), out))
            except UsageError as exc:
                return Failure("run", str(exc))
        return Measured(tuple(as_commit(run, sha, notes=notes) for run in made), tuple(notes))


def origin_of(kind: str, config) -> str:
    """What a measuring session asked for, as stored with its runs and skips."""
    spec = {name: list(values) for name, values in config.run_filters}
    spec.update(quick=config.quick, seed=config.seed, sizes=dict(config.sizes))
    return f"{kind} {canonical(spec)}"


@dataclass(frozen=True)
class BackfillResult:
    measured: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (commit, why)
    already: tuple[str, ...]


def backfill(store: Store, repo: Path, commits: Sequence[str], config, machine_name: str | None = None,
             log: Log = lambda _: None, force: bool = False, extra_env: dict[str, str] | None = None,
             runs: int = 1) -> BackfillResult:  # fmt: skip
    """Measure each commit (oldest first) on this machine `runs` times and store the runs; a commit
    with that many runs (or found unmeasurable) before, with the same filters on this machine, is
    passed over unless `force`; one with fewer gets the runs it lacks."""
    machine = Machine.of(machine_info(), machine_name or os.environ.get(MACHINE_ENV) or None)
    origin = origin_of("backfill", config)
    backends = discover()
    needed = builds_needed(backends, config.filter("backend"))
    done = Counter(r.commit for r in store.runs(machine.machine_id, origin=origin))
    failed = {s.commit: f"{s.stage}: {s.reason}" for s in store.skips(machine.machine_id, origin=origin)}
    measured, skipped, already = [], [], []
    with tempfile.TemporaryDirectory(prefix="elbolab-history-") as tmpdir:
        tmp = Path(tmpdir)
        for i, sha in enumerate(commits):
            head = f"[{i + 1}/{len(commits)}] {sha[:10]}"
            if not force and done[sha] >= runs:
                log(f"{head}: already measured on this machine")
                already.append(sha)
                continue
            if not force and sha in failed:
                log(f"{head}: skipped before ({failed[sha]}); --force to try again")
                skipped.append((sha, failed[sha]))
                continue
            t0 = time.perf_counter()
            lacking = runs if force else runs - done[sha]
            got = measure_commit(repo, sha, config, needed, tuple(backends), tmp, log, extra_env, lacking)
            if isinstance(got, Failure):
                log(f"{head}: SKIPPED, {got.stage} failed: {got.reason}")
                store.record_skip(sha, machine.machine_id, origin, got.stage, got.reason)
                skipped.append((sha, f"{got.stage}: {got.reason}"))
                continue
            for note in got.notes:
                store.record_skip(sha, machine.machine_id, origin, "build", note)
            for run in got.runs:
                res = store.ingest(run, source=f"history run {sha}", machine_name=machine_name, origin=origin,
                                   commit_info=commit_info(repo, sha))  # fmt: skip
                ok = sum(1 for m in run.measurements if m.status == "ok")
                log(f"{head}: {ok}/{len(run.measurements)} cases ok; {res.message}")
            log(f"{head}: {len(got.runs)} run(s) in {time.perf_counter() - t0:.0f} s")
            measured.append(sha)
    return BackfillResult(tuple(measured), tuple(skipped), tuple(already))
