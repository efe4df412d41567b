"""Bisect: GOOD..BAD (first-parent line) searched by measurement for the first commit whose case is
a regression against GOOD by the shared verdict, each commit made runnable by
elbolab.gate.revisions and timed paired with GOOD by the gate's interleaved worker pairs
(elbolab.gate.ab), every measurement stored in the history database.

This module never prints: progress goes to `log`.
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from elbolab.analyse.compare import compare, pool_rounds
from elbolab.analyse.verdict import DEFAULT_RULE, Judgement, Rule, Verdict, judge
from elbolab.gate.ab import measure_interleaved, plan_for
from elbolab.gate.backfill import as_commit, measure_commit, origin_of
from elbolab.gate.revisions import Failure, Log, Side, builds_needed, commit_side, left_out
from elbolab.measure.machine import machine_info
from elbolab.model.backend import discover
from elbolab.model.case import Case
from elbolab.model.errors import UsageError
from elbolab.store.commits import commit_info, commit_range, git, rev
from elbolab.store.database import MACHINE_ENV, Machine, Store, case_id
from elbolab.store.results import Run


@dataclass(frozen=True)
class Step:
    commit: str
    outcome: str  # good, bad, skip
    judgement: Judgement | None
    detail: str


@dataclass(frozen=True)
class BisectResult:
    good: str
    bad: str
    first_bad: str | None
    last_good: str | None
    judgement: Judgement | None  # first_bad vs GOOD
    steps: tuple[Step, ...]
    message: str


def bisect(store: Store, repo: Path, good_ref: str, bad_ref: str, case: Case, config, rule: Rule = DEFAULT_RULE,
         machine_name: str | None = None, log: Log = lambda _: None, reuse: bool = False, attempts: int = 2,
         extra_env: dict[str, str] | None = None) -> BisectResult:  # fmt: skip
    """Bisect GOOD..BAD (first-parent line) to the first commit whose `case` is a regression
    against GOOD by the shared verdict. Every measurement is stored. A commit that cannot be
    measured, or stays 'too noisy to tell' after `attempts` measurements, is skipped (as `git
    bisect skip` does) and a neighbour is tried.

    Each commit is measured paired with GOOD: both installed side by side and timed by the gate's
    interleaved worker pairs (elbolab.gate.ab.measure_interleaved), judged on the paired interval over
    the worker pairs, so that a shared machine's load, which can double a time between two separate
    runs, falls on both alike. Separate runs, judged on their pooled samples, are the fallback: with
    `reuse` (stored runs of this machine stand in for measuring), or a GOOD that predates the
    interleaved workers."""
    good, bad = rev(repo, good_ref), rev(repo, bad_ref)
    if good == bad:
        raise UsageError("GOOD and BAD are the same commit")
    if git(repo, "merge-base", "--is-ancestor", good, bad).returncode != 0:
        raise UsageError(f"{good_ref} is not an ancestor of {bad_ref}: nothing to bisect between them")
    line = commit_range(repo, f"{good}..{bad}")
    if line[-1] != bad:
        raise UsageError(f"{bad_ref} is not on the first-parent line after {good_ref}")
    log(
        f"bisecting {len(line)} commits after {good[:10]} up to {bad[:10]} on {case.label()} ({rule.describe()})"
    )
    machine = Machine.of(machine_info(), machine_name or os.environ.get(MACHINE_ENV) or None)
    origin = origin_of("find", config)
    backends = discover()
    needed = builds_needed(backends, config.filter("backend"))

    with tempfile.TemporaryDirectory(prefix="elbolab-find-") as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        good_side = None
        if not reuse:
            good_side = stack.enter_context(commit_side(repo, good, needed, tmp, log, extra_env, "base"))
            if isinstance(good_side, Failure):
                raise UsageError(f"cannot measure GOOD ({good_ref}, {good[:10]}): {good_side.stage} failed: "
                                 f"{good_side.reason}")  # fmt: skip
            leave, notes = left_out(good_side, needed)
            if case.backend in leave:
                raise UsageError(f"cannot measure GOOD ({good_ref}, {good[:10]}): {'; '.join(notes)}")
            if not good_side.serves_stdio():
                log("GOOD predates the interleaved A/B workers: each commit is measured in a run of its own")
                good_side = None
        common = dict(store=store, repo=repo, good=good, case=case, config=config, rule=rule, needed=needed, tmp=tmp,
                      log=log, extra_env=extra_env, machine=machine, machine_name=machine_name, origin=origin)  # fmt: skip
        if good_side is not None:
            log(f"each commit is measured paired with GOOD {good[:10]} (interleaved worker pairs)")
            session = _PairedWithGood(**common, good_side=good_side, backends=backends)
        else:
            session = _SeparateRuns(**common, reuse=reuse, backend_names=tuple(backends))
            log(f"GOOD {good[:10]}: measuring {case.label()}")
            why = session.measure(good)
            if why:
                raise UsageError(f"cannot measure GOOD ({good_ref}, {good[:10]}): {why}")

        log(f"BAD {bad[:10]}: measuring")
        first = session.classify(bad, attempts)
        log(f"BAD {bad[:10]}: {first.outcome}, {first.detail}")
        if first.outcome != "bad":
            msg = (f"{bad_ref} is not a regression against {good_ref} by the rule ({first.detail}): nothing to find"
                   if first.outcome == "good" else f"cannot judge {bad_ref}: {first.detail}")  # fmt: skip
            return BisectResult(good, bad, None, None, first.judgement, (first,), msg)
        return _search(good, line, first, lambda sha: session.classify(sha, attempts), log)


def _search(good: str, line: list[str], first: Step, classify, log: Log) -> BisectResult:
    """Binary search of `line` (the commits after GOOD, the last one BAD, already found bad as
    `first`) for the first bad commit; a skipped commit's nearest neighbour is tried instead."""
    bad = line[-1]
    steps = [first]
    lo, hi = -1, len(line) - 1  # line[lo] is good (-1: GOOD itself), line[hi] is bad
    skipped: set[int] = set()
    judgements = {bad: first.judgement}
    while hi - lo > 1:
        mid = (lo + hi) // 2
        order = sorted((i for i in range(lo + 1, hi) if i not in skipped), key=lambda i: (abs(i - mid), i))
        if not order:
            break
        i = order[0]
        step = classify(line[i])
        steps.append(step)
        log(f"{line[i][:10]} ({i + 1}/{len(line)}): {step.outcome}, {step.detail}")
        if step.outcome == "bad":
            hi = i
            judgements[line[i]] = step.judgement
        elif step.outcome == "good":
            lo = i
        else:
            skipped.add(i)
    last_good = good if lo < 0 else line[lo]
    first_bad = line[hi]
    unsure = [line[i] for i in range(lo + 1, hi)]
    if unsure:
        msg = (f"the first bad commit is one of {len(unsure) + 1}: {', '.join(c[:10] for c in [*unsure, first_bad])} "
               f"(the others could not be judged)")  # fmt: skip
    else:
        msg = f"first bad commit: {first_bad} ({describe(judgements[first_bad])} against GOOD)"
    return BisectResult(good, bad, first_bad, last_good, judgements[first_bad], tuple(steps), msg)


@dataclass
class _Bisecting:
    """What every bisect measurement needs: where to store it, the commits, the case and rule, how
    to build a commit, and the machine it is stored under."""

    store: Store
    repo: Path
    good: str
    case: Case
    config: object
    rule: Rule
    needed: dict
    tmp: Path
    log: Log
    extra_env: dict[str, str] | None
    machine: Machine
    machine_name: str | None
    origin: str

    def skipped(self, sha: str, failure: Failure) -> str:
        """Store why sha could not be measured; the reason, for the bisect's log."""
        self.store.record_skip(sha, self.machine.machine_id, self.origin, failure.stage, failure.reason)
        return f"{failure.stage} failed: {failure.reason}"

    def not_a_regression(self, j: Judgement) -> bool:
        # the question a bisect asks is "a regression or not", the gate's stopping rule: an
        # interval wholly below the threshold answers "not", even where the verdict is noisy
        return j.verdict is not Verdict.NOISY or j.ci95[1] < 1 + self.rule.threshold_for(self.case.workload)

    def classify(self, sha: str, attempts: int) -> Step:
        """Measure sha (again while it is too noisy to tell, up to `attempts` times): good, bad or skip."""
        why = self.measure(sha)
        if why:
            return Step(sha, "skip", None, why)
        for attempt in range(attempts):
            j = self.verdict(sha)
            if j.regression:
                return Step(sha, "bad", j, describe(j))
            if self.not_a_regression(j) or attempt + 1 == attempts:
                break
            self.log(f"{sha[:10]}: too noisy to tell ({describe(j)}); measuring it {self.again}")
            why = self.measure_again(sha)
            if why:
                return Step(sha, "skip", j, why)
        if not self.not_a_regression(j):
            return Step(sha, "skip", j, f"still too noisy to tell: {describe(j)}")
        if j.verdict is Verdict.NOISY:
            return Step(
                sha, "good", j, f"not a regression, the interval is below the threshold: {describe(j)}"
            )
        return Step(sha, "good", j, describe(j))


@dataclass
class _SeparateRuns(_Bisecting):
    """Bisect measurements as separate runs: each commit's own `elbolab run` (or its stored runs,
    with `reuse`), judged on the per-call samples pooled over its runs against GOOD's."""

    reuse: bool
    backend_names: tuple[str, ...]
    samples: dict[str, list[np.ndarray]] = field(default_factory=dict)
    again = "and GOOD again"

    def measure(self, sha: str) -> str | None:
        """Add one measurement of the case at sha; None, or why it could not."""
        case, store = self.case, self.store
        if self.reuse and sha not in self.samples:
            rows = [r for r in store.rows(self.machine.machine_id, [case_id(case)])
                    if r.commit == sha and r.status == "ok"]  # fmt: skip
            if rows:
                self.samples[sha] = [r.per_call_ns for r in rows]
                self.log(f"{sha[:10]}: {len(rows)} stored run(s) reused")
                return None
        got = measure_commit(self.repo, sha, self.config, self.needed, self.backend_names, self.tmp, self.log,
                             self.extra_env)  # fmt: skip
        if isinstance(got, Failure):
            return self.skipped(sha, got)
        (run,) = got.runs
        store.ingest(run, source=f"history find {sha}", machine_name=self.machine_name, origin=self.origin,
                     commit_info=commit_info(self.repo, sha))  # fmt: skip
        ms = [m for m in run.measurements if m.case.key() == case.key()]
        if not ms:
            return f"the run did not measure {case.label()}"
        if not ms[0].timed_ok:
            return f"{ms[0].status}: {ms[0].reason or ''}".strip()
        self.samples.setdefault(sha, []).append(ms[0].per_call_ns)
        return None

    def measure_again(self, sha: str) -> str | None:
        return self.measure(self.good) or self.measure(sha)

    def verdict(self, sha: str) -> Judgement:
        good, mine = self.samples[self.good], self.samples[sha]
        return judge(np.concatenate(good), np.concatenate(mine), self.rule, self.case.workload,
                     [float(np.median(s)) for s in good], [float(np.median(s)) for s in mine])  # fmt: skip


@dataclass
class _PairedWithGood(_Bisecting):
    """Bisect measurements paired with GOOD: the commit and GOOD (installed once for the whole
    bisect) timed together by interleaved worker pairs, as the gate does; each such session stores
    a run of either side; a commit's sessions are pooled pair by pair and judged as the gate judges
    (elbolab.analyse.compare, on the paired interval over the worker pairs)."""

    good_side: Side
    backends: dict
    sessions: dict[str, list[tuple[Run, Run]]] = field(default_factory=dict)  # (GOOD's run, the commit's)
    again = "paired with GOOD again"

    def measure(self, sha: str) -> str | None:
        case, store = self.case, self.store
        with commit_side(self.repo, sha, self.needed, self.tmp, self.log, self.extra_env, "head") as side:
            if isinstance(side, Failure):
                return self.skipped(sha, side)
            leave, notes = left_out(side, self.needed)
            if case.backend in leave:
                return self.skipped(sha, Failure("build", "; ".join(notes)))
            if not side.serves_stdio():
                return "it predates the interleaved A/B workers, so it cannot be paired with GOOD"
            cases = [c for c in plan_for(self.config, self.backends, set()) if c.key() == case.key()]
            if not cases:
                return f"{case.label()} is not a case of this lab's plan"
            runs = measure_interleaved(self.config, self.rule, {"base": self.good_side, "head": side}, cases,
                                       self.log)  # fmt: skip
        pair = (
            as_commit(runs["base"], self.good, paired_with=sha),
            as_commit(runs["head"], sha, paired_with=self.good),
        )
        for commit, run in ((self.good, pair[0]), (sha, pair[1])):
            store.ingest(run, source=f"history find {sha} paired with GOOD", machine_name=self.machine_name,
                         origin=self.origin, commit_info=commit_info(self.repo, commit))  # fmt: skip
        for run in pair:
            (m,) = [m for m in run.measurements if m.case.key() == case.key()]
            if not m.timed_ok:
                return f"{m.status}: {m.reason or ''}".strip()
        self.sessions.setdefault(sha, []).append(pair)
        return None

    def measure_again(self, sha: str) -> str | None:
        return self.measure(sha)

    def verdict(self, sha: str) -> Judgement:
        sessions = self.sessions[sha]
        report = compare(
            pool_rounds([g for g, _ in sessions]), pool_rounds([m for _, m in sessions]), rule=self.rule
        )
        (c,) = [c for c in report.comparisons if c.case.key() == self.case.key()]
        return c.judgement


def describe(j: Judgement) -> str:
    lo, hi = j.ci95
    hi_text = "inf" if math.isinf(hi) else f"{hi:.3f}"
    tail = ", a regression" if j.regression else ""
    return f"{j.verdict.value} {j.ratio:.3f}x [{lo:.3f}, {hi_text}]{tail}"
