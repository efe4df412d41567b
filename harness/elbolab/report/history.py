"""Each case's history from the history store, for the report's per-case detail (a sparkline of its
median per commit, as asv shows one beside every benchmark).

The store is optional: `elbolab report --store URL`, or the default store when its file exists
(`make bench` ingests the run before it reports, so the run itself is the newest point). Only the
run's own machine is read (a series never mixes machines), with drift between runs taken out as
`elbolab history` does (elbolab.analyse.changes), so the sparkline shows what the trends page shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from elbolab.analyse.changes import all_changes, load_history
from elbolab.store.commits import find_repo, git
from elbolab.store.database import DEFAULT_PATH, DEFAULT_URL, ENV, Machine, Store, case_id, resolve_url
from elbolab.store.results import Run


@dataclass(frozen=True)
class CaseHistory:
    commits: tuple[str, ...]  # in history order, the newest last
    medians: tuple[float, ...]  # per call, ns
    changes: tuple[int, ...]  # positions of confirmed change points (their first bad commit)


@dataclass(frozen=True)
class Histories:
    store: str  # the store as shown (no password)
    machine: str  # its label for the run's machine
    commits: int  # commits with a run of this machine
    cases: dict[str, CaseHistory]  # by elbolab.store.database.case_id

    def of(self, case) -> CaseHistory | None:
        return self.cases.get(case_id(case))


def default_store() -> str | None:
    """The store a report reads when none is named: ELBOLAB_STORE, or the default SQLite file if it
    exists (a report never creates a database)."""
    import os

    url = os.environ.get(ENV)
    if url:
        return url
    return DEFAULT_URL if DEFAULT_PATH.is_file() else None


def _repo_for(run: Run):
    """The git checkout here when the run's commit is on its history (commits then ordered by
    ancestry), else None (ordered by the dates the store recorded): a run from another repository
    or a branch not checked out here still gets its history."""
    repo = find_repo(None)
    commit = run.git.commit
    if repo is None or not commit:
        return None
    return repo if git(repo, "merge-base", "--is-ancestor", commit, "HEAD").returncode == 0 else None


def load_histories(url: str, run: Run) -> Histories | None:
    """The series of the run's machine in the store at `url` (None when the store has no run of that
    machine)."""
    machine = Machine.of(run.machine)
    with Store.open(resolve_url(url)) as store:
        stored = {r.run_id: r.machine_id for r in store.runs()}
        machine_id = stored.get(run.run_id, machine.machine_id)
        known = {m.machine_id: m for m in store.machines()}
        if machine_id not in known:
            return None
        history = load_history(store, _repo_for(run), machine=machine_id)
        shown = store.url
    changes = all_changes(history.series, order=history.order)
    cases = {}
    commits: set[str] = set()
    for s in history.series:
        pts = [p for p in s.points if p.ok and math.isfinite(p.median)]
        commits.update(p.commit for p in pts)
        index = {p.commit: i for i, p in enumerate(pts)}
        marks = tuple(index[c.bad] for c in changes.get(s.key, []) if c.confirmed and c.bad in index)
        cases[s.case_id] = CaseHistory(tuple(p.commit for p in pts), tuple(p.median for p in pts), marks)
    return Histories(shown, known[machine_id].label, len(commits), cases)
