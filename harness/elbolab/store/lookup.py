"""A run named as asv users name one: a git revision (`main`, `HEAD~3`, a sha) or a run id, read from
the history store, for `elbolab compare main HEAD` and `elbolab gate RUN_ID HEAD`.

A revision means the runs the store holds of that commit, on one machine (runs of uncommitted trees
are left out: they did not measure the commit). When both sides are revisions they must come from
one machine: the one machine both were measured on, or the one `--machine` names. Where a commit
has several runs on it, the latest is used and a notice says so (name a run id to choose another).
Anything that cannot be found is one line naming what was looked for and where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elbolab.model.errors import UsageError
from elbolab.store.commits import find_repo, git
from elbolab.store.database import MachineRow, Store, StoredRun
from elbolab.store.results import Run

MIN_ID_PREFIX = 6  # a run id may be abbreviated, as a git sha may, to a unique prefix this long


@dataclass(frozen=True)
class Found:
    run: Run
    notice: str  # how the name was read: 'main is 1a2b3c4d5e: run 3fa2... of 2026-... on M'


def find_runs(
    names: list[str], store: Store, repo: Path | None = None, machine: str | None = None
) -> list[Found]:
    """The stored run each name means (a run id, or a revision's latest run on the common machine)."""
    repo = repo if repo is not None else find_repo()
    machines = {m.machine_id: m for m in store.machines()}
    wanted = _machines(machines, machine)
    candidates = [_candidates(name, store, repo) for name in names]
    # a run id fixes its machine; revisions must agree with it and with each other
    common = set(wanted)
    for runs in candidates:
        common &= {r.machine_id for r in runs}
    if not common:
        raise UsageError(_no_common_machine(names, candidates, machines, machine))
    if len(common) > 1:
        labels = ", ".join(sorted(f"{machines[m].label} ({m[:8]})" for m in common))
        raise UsageError(f"{' and '.join(map(repr, names))} were measured on {len(common)} machines "
                         f"({labels}); choose one with --machine")  # fmt: skip
    (machine_id,) = common
    found = []
    for name, runs in zip(names, candidates, strict=True):
        here = sorted((r for r in runs if r.machine_id == machine_id), key=lambda r: (r.started, r.run_id))
        chosen = here[-1]
        what = name if chosen.run_id == name else f"{name} is {chosen.commit[:10] if chosen.commit else '?'}:"
        notice = (f"{what} run {chosen.run_id} of {chosen.started[:19]} on {machines[machine_id].label}"
                  + (f" (the latest of {len(here)}; name a run id to choose another)" if len(here) > 1 else ""))  # fmt: skip
        found.append(Found(store.load_run(chosen.run_id), notice))
    return found


def _machines(machines: dict[str, MachineRow], text: str | None) -> set[str]:
    if not text:
        return set(machines)
    by_id = {m for m in machines if m.startswith(text.lower())}
    chosen = by_id or {m for m, row in machines.items() if text.lower() in row.label.lower()}
    if not chosen:
        known = ", ".join(f"{r.label} ({m[:8]})" for m, r in machines.items()) or "none"
        raise UsageError(f"--machine {text!r} names no stored machine (machines: {known})")
    return chosen


def _candidates(name: str, store: Store, repo: Path | None) -> list[StoredRun]:
    """The stored runs a name can mean: the run of that id, else the clean runs of that revision."""
    every = store.runs()
    exact = [r for r in every if r.run_id == name]
    if exact:
        return exact
    if len(name) >= MIN_ID_PREFIX:
        prefixed = [r for r in every if r.run_id.startswith(name)]
        if len(prefixed) > 1:
            raise UsageError(f"run id {name!r} is ambiguous in {store.url}: "
                             f"{', '.join(r.run_id for r in prefixed[:5])}")  # fmt: skip
        if prefixed:
            return prefixed
    sha = _revision(name, repo)
    if sha is None:
        where = f"a git revision of {repo}" if repo else "a git revision (no git checkout here)"
        raise UsageError(f"{name!r} is not a results file, a run id in {store.url}, or {where}")
    runs = [r for r in every if r.commit == sha and not r.dirty]
    if not runs:
        raise UsageError(f"{name!r} (commit {sha[:10]}) has no stored run in {store.url}: measure it with "
                         f"`elbolab history run {name}^..{name}`, or ingest its results file")  # fmt: skip
    return runs


def _revision(name: str, repo: Path | None) -> str | None:
    if repo is None or not name or name.startswith("-"):
        return None
    out = git(repo, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
    return out.stdout.strip() if out.returncode == 0 else None


def _no_common_machine(names, candidates, machines, machine: str | None) -> str:
    parts = []
    for name, runs in zip(names, candidates, strict=True):
        on = sorted({machines[r.machine_id].label for r in runs})
        parts.append(f"{name!r} on {', '.join(on)}")
    limit = f" matching --machine {machine!r}" if machine else ""
    return (
        f"no machine{limit} has stored runs of every side ({'; '.join(parts)}); compare results files instead"
    )
