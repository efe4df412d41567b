"""Same-machine A/B: measure a git revision (base) against the working tree (head), interleaved.

Both sides are revisions made runnable by elbolab.gate.revisions (the base checked out into a
temporary worktree; each side installed and built in its own folder). A side whose build fails is
reported and the backends needing that build are left out on both sides; the rest is still gated.

Timing (measure_interleaved): case by case, a pair of workers (one per side, alive together) is
sampled in alternating blocks (base, head, head, base, ...) so drift hits both alike, then closed,
and a fresh pair started: a worker process carries an offset of its own on a shared machine, so the
pairs are the units of replication and the case is judged on their paired medians (99% interval),
from 8 pairs on, until decided (a regression, or an interval wholly below the threshold) or its
time budget is spent (reported undecided). Instructions (measure_counted): each case counted once
a side under callgrind. A base revision older than the interleaved workers is measured the old way
(measure_rounds): whole `elbolab run`s alternately in balanced order (A B, B A, ...), pooled per
side (elbolab.analyse.compare.pool_rounds). The caller compares the two runs with the shared
verdict rule (elbolab.analyse.compare).

This module never prints: progress goes to `log`.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from concurrent import futures as cf
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from elbolab.analyse.compare import INTERLEAVED_PAIRS, PAIRED_CONFIDENCE, pool_rounds
from elbolab.analyse.verdict import DEFAULT_RULE, Rule, decide
from elbolab.gate.revisions import (
    ABConfig,
    Log,
    Side,
    build_side,
    builds_needed,
    cargo_target_dir,
    install_side,
    repo_root,
    run_argv,
    run_side,
)
from elbolab.measure.cells import cell_cpus
from elbolab.measure.instructions import count_case, end_all_counts, unavailable_reason
from elbolab.measure.machine import git_info, machine_info, software_info, thread_env, usable_cores
from elbolab.measure.plan import Plan, plan_cases
from elbolab.measure.timer import TimerConfig
from elbolab.measure.worker import StdioWorker
from elbolab.model.backend import discover
from elbolab.model.errors import UsageError
from elbolab.model.measurement import Check, Cost, Measurement, Memory, not_measured
from elbolab.model.stats import paired_ratio_interval
from elbolab.store.commits import git, rev
from elbolab.store.results import Run, new_run, now, unique_run_id


@dataclass(frozen=True)
class ABResult:
    base: Run  # pooled over the rounds
    head: Run
    notices: tuple[str, ...]
    base_label: str
    head_label: str


def balanced_order(rounds: int) -> list[str]:
    """A B, B A, A B, ...: linear drift falls on both sides alike."""
    order: list[str] = []
    for r in range(rounds):
        order += ["base", "head"] if r % 2 == 0 else ["head", "base"]
    return order


def measure_ab(config: ABConfig, rule: Rule = DEFAULT_RULE, log: Log = lambda _: None) -> ABResult:
    """Measure config.base_ref and the working tree interleaved on this machine; pool each side."""
    repo = repo_root()
    sha = rev(repo, config.base_ref)
    backends = discover()
    selected = config.filter("backend")
    needed = builds_needed(backends, selected)
    t_start = time.perf_counter()
    notices: list[str] = []
    with tempfile.TemporaryDirectory(prefix="elbolab-gate-") as tmpdir:
        tmp = Path(tmpdir)
        base_tree = tmp / "base-src"
        git(repo, "worktree", "add", "--detach", "--force", str(base_tree), sha, check=True)
        try:
            sides = {"base": Side("base", base_tree), "head": Side("head", repo)}
            for side in sides.values():
                install_side(side, tmp / f"{side.name}-install", log)
                build_side(side, needed, tmp, cargo_target_dir(repo), log)
            leave_out: set[str] = set()
            for side in sides.values():
                for build, error in side.build_errors.items():
                    leave_out.update(needed[build])
                    notices.append(f"{side.name}: {build.module} failed to build, "
                                   f"{', '.join(needed[build])} not gated: {error}")  # fmt: skip
            if config.measure == "instructions":
                notices.insert(0, f"A/B on one machine: base {config.base_ref} ({sha[:10]}) vs the working tree, "
                               "instructions per call counted under callgrind (deterministic: one count a side)")  # fmt: skip
                runs = measure_counted(config, sides, plan_for(config, backends, leave_out), log)
                base, head = runs["base"], runs["head"]
            elif config.interleave and all(s.serves_stdio() for s in sides.values()):
                notices.insert(0, f"A/B on one machine: base {config.base_ref} ({sha[:10]}) vs the working tree, "
                               "samples interleaved case by case (B H H B blocks) until decided or out of budget")  # fmt: skip
                runs = measure_interleaved(config, rule, sides, plan_for(config, backends, leave_out), log)
                base, head = runs["base"], runs["head"]
            else:
                if config.interleave:
                    notices.append(
                        "the base revision predates interleaved A/B workers: measured in whole runs"
                    )
                notices.insert(0, f"A/B on one machine: base {config.base_ref} ({sha[:10]}) vs the working tree, "
                               f"{config.rounds} alternating whole run(s) per side")  # fmt: skip
                base, head = measure_rounds(config, sides, leave_out, list(backends), tmp, log)
        finally:
            git(repo, "worktree", "remove", "--force", str(base_tree))
            git(repo, "worktree", "prune")
    notices.append(f"A/B measuring took {time.perf_counter() - t_start:.0f} s")
    return ABResult(base=base, head=head, notices=tuple(notices), base_label=f"base {config.base_ref}",
                    head_label="head (working tree)")  # fmt: skip


def measure_rounds(config, sides, leave_out, backends, tmp: Path, log: Log) -> tuple[Run, Run]:
    """Whole `elbolab run`s of each side in balanced order, pooled per side (for old revisions)."""
    runs: dict[str, list[Run]] = {"base": [], "head": []}
    order = balanced_order(config.rounds)
    for i, name in enumerate(order):
        out = tmp / f"{name}_{len(runs[name]) + 1}.json"
        t0 = time.perf_counter()
        side = sides[name]
        run = run_side(side, run_argv(config, out, leave_out, backends, side.cli), out)
        runs[name].append(run)
        log(
            f"run {i + 1}/{len(order)} ({name}): {len(run.measurements)} cases, {time.perf_counter() - t0:.1f} s"
        )
    return pool_rounds(runs["base"]), pool_rounds(runs["head"])


# ----------------------------------------------------------------------------------- interleaved


def plan_for(config: ABConfig, backends: dict, leave_out: set[str]) -> list:
    sizes = {flag.replace("-", "_"): value for flag, value in config.sizes}
    names = config.filter("backend")
    if leave_out:
        names = tuple(b for b in (names or backends) if b not in leave_out)
    plan = Plan(backends=names, workloads=config.filter("workload"), batches=config.filter("batch"),
                dtypes=config.filter("dtype"), threads=config.filter("threads"), devices=config.filter("device"),
                variants=config.filter("variant"), quick=config.quick, seed=config.seed, measure=config.measure,
                keyword=config.keyword, **sizes)  # fmt: skip
    return plan_cases(plan, backends)


@dataclass
class _SideSamples:
    """One side's samples of one case, per worker pair (round)."""

    reply: dict | None = None  # the worker's answer to "open" in the first round
    rounds: list[tuple[int, list[int]]] = field(default_factory=list)  # (loops, samples) per round

    def per_call(self) -> list[float]:
        return [t / loops for loops, samples in self.rounds for t in samples]

    def round_medians(self) -> list[float]:
        return [float(np.median([t / loops for t in samples])) for loops, samples in self.rounds if samples]


def decided(base: _SideSamples, head: _SideSamples, rule: Rule, workload: str) -> str | None:
    """Why this case needs no more worker pairs, or None: judged by the shared rule on the paired
    interval over the pairs so far (elbolab.model.stats.paired_ratio_interval, as compare will judge it),
    it is a regression, or its interval is wholly below the threshold (no regression of that size)."""
    estimate = paired_ratio_interval(base.round_medians(), head.round_medians(), PAIRED_CONFIDENCE)
    judgement, (lo, hi) = decide(estimate, rule, workload), estimate.ci95
    where = f"the interval {lo:.3f}-{hi:.3f} over {len(head.rounds)} worker pairs"
    if judgement.regression:
        return f"decided: a regression, {judgement.ratio:.3f}x with {where}"
    if hi < 1 + judgement.threshold:
        return f"decided: {where} is below +{judgement.threshold:.0%}"
    return None


def _start_pair(sides: dict, case, timeout: float) -> dict:
    """One worker per side, started together: they import on separate cores at once (the pair is
    pinned to its cores once both have opened the case)."""
    workers = {}
    try:
        for name, side in sides.items():
            env = dict(side.env(), **thread_env(case.threads), PYTHONHASHSEED="0")
            argv = [sys.executable, "-m", side.module("worker"), case.backend, str(case.threads)]
            workers[name] = StdioWorker(argv, env, side.tree, timeout=timeout, greet=False)
        for w in workers.values():
            w.greet()
    except BaseException:
        _close_pair(workers)
        raise
    return workers


def _close_pair(workers: dict) -> None:
    """Unpinned first, so the two exit on separate cores, at once."""
    for w in workers.values():
        w.pin(None)
        w.stop()
    for w in workers.values():
        w.close()


def _one_pair(sides: dict, case, pair: int, timer: TimerConfig, config: ABConfig, data: dict,
              versions: dict) -> tuple[str, str, str] | None:  # fmt: skip
    """One pair of workers for `case`: started, opened, pinned, sampled in A B B A blocks into
    `data` (a round per side), closed. None, or the failure (side, status, reason)."""
    # who goes first alternates from pair to pair: any effect of order (who opens first, whose
    # block starts a cycle) falls on each side in half the pairs
    first, second = ("base", "head") if pair % 2 == 0 else ("head", "base")
    name = first
    try:
        workers = _start_pair(sides, case, config.case_timeout or 300)
    except RuntimeError as exc:
        return (name, "failed", f"a worker could not start: {exc}")
    try:
        for name in (first, second):
            if "error" in workers[name].hello:
                return (name, "skipped", workers[name].hello["error"])
            versions[name].setdefault(case.backend, workers[name].hello["hello"]["versions"])
        # both open the case at once (inputs, calibration, first call), each on a core of its
        # own; the pair is pinned to its cores for the sampling only
        for name in (first, second):
            workers[name].send({"op": "open", "case": case.to_json(), "timer": timer.to_json()})
        for name in (first, second):
            reply = workers[name].receive()
            if data[name].reply is None:
                data[name].reply = reply
            if reply["status"] != "ok":
                return (name, reply["status"], reply["reason"])
            data[name].rounds.append((reply["loops"], []))
        cpus = cell_cpus(pair, case.threads)  # the cell's rule: one pair at a time on the same cores
        for w in workers.values():
            w.pin(cpus)
        # A B B A repeated is balanced only in steady state: each side's blocks follow its own
        # block once and the other side's once a cycle. A discarded block of the first side makes
        # the first counted block follow that side too, as in every later cycle (else it follows
        # the other side's open: an A/A measured the second side ~2% faster).
        per_pair = config.fixed_samples or config.pair_samples
        workers[first].ask({"op": "sample", "count": config.block})
        while len(data["head"].rounds[-1][1]) < per_pair:
            for name in (first, second, second, first):
                got = workers[name].ask({"op": "sample", "count": config.block})["samples_ns"]
                data[name].rounds[-1][1].extend(got)
    except RuntimeError as exc:  # the worker of side `name` died or hung
        return (name, "failed", f"{exc} during {case.label()}")
    finally:
        _close_pair(workers)
    return None


def measure_interleaved(config: ABConfig, rule: Rule, sides: dict, cases: list, log: Log) -> dict[str, Run]:
    """Each case: a pair of workers (one per side, alive together, pinned to the same cores) sampled
    in alternating blocks (A B B A ..., the first side alternating from pair to pair) for
    `pair_samples` samples a side, then closed; then a fresh pair, and so on.
    The pairs are the units of replication (a process carries an offset of its own on a shared
    machine), so after `min_pairs` the case is judged on the pairs' medians, paired, and stops
    once decided(), or once its budget is spent (undecided), or at `max_pairs`."""
    timer = TimerConfig.quick() if config.quick else TimerConfig()
    per_pair = config.fixed_samples or config.pair_samples
    started = now()
    measured: dict[str, list] = {"base": [], "head": []}
    versions: dict[str, dict] = {"base": {}, "head": {}}
    for i, case in enumerate(cases):
        t0 = time.perf_counter()
        data = {"base": _SideSamples(), "head": _SideSamples()}
        stopped, failure = "", None
        for pair in range(config.max_pairs):
            failure = _one_pair(sides, case, pair, timer, config, data, versions)
            if failure:
                break
            pairs = len(data["head"].rounds)
            if config.fixed_samples is not None:
                stopped = f"a fixed {pairs} worker pairs of {per_pair} samples a side"
                continue
            if pairs >= config.min_pairs:
                stopped = decided(data["base"], data["head"], rule, case.workload) or ""
                if stopped:
                    break
            if time.perf_counter() - t0 > config.case_budget_s:
                break
        if not stopped and failure is None:
            why = "budget" if len(data["head"].rounds) < config.max_pairs else "limit of worker pairs"
            stopped = (f"undecided: the {why} ({config.case_budget_s:g} s, {config.max_pairs} pairs) is spent "
                       f"after {len(data['head'].rounds)} pairs")  # fmt: skip
        for name in ("base", "head"):
            d = data[name]
            if failure and failure[0] == name:
                measured[name].append(not_measured(case, failure[1], failure[2]))
                continue
            if failure or not d.rounds:
                measured[name].append(not_measured(case, "skipped", "not measured: the other side failed"))
                continue
            measured[name].append(_interleaved_measurement(case, d, stopped))
        log(f"case {i + 1}/{len(cases)} {case.label()}: {stopped or failure[2]} "
            f"({sum(len(s) for _, s in data['head'].rounds)} samples a side, {time.perf_counter() - t0:.0f} s)")  # fmt: skip
    out = {}
    for name, side in sides.items():
        software = dict(software_info(), backends=versions[name])
        git = {"commit": rev(side.tree, "HEAD"), "dirty": git_info(side.tree).get("dirty")}
        run = new_run(unique_run_id(f"ab-{name}-{started}"), started, machine_info(), software, git,
                      {"ab": {"mode": INTERLEAVED_PAIRS, "block": config.block, "pair_samples": per_pair,
                              "min_pairs": config.min_pairs, "max_pairs": config.max_pairs,
                              "case_budget_s": config.case_budget_s},
                       "timer": timer.to_json()})  # fmt: skip
        out[name] = replace(run, measurements=tuple(measured[name]), finished=now())
    return out


def measure_counted(config: ABConfig, sides: dict, cases: list, log: Log) -> dict[str, Run]:
    """Each case counted once per side under callgrind, in that side's environment and tree, with
    the same calls per segment on both sides (head's choice), so the two counts differ only by code."""
    reason = unavailable_reason()
    if reason:
        raise UsageError(f"--measure instructions: {reason}")
    old = [name for name, side in sides.items() if not side.counts_instructions()]
    if old:
        raise UsageError(f"--measure instructions: the {' and '.join(old)} revision cannot count instructions "
                         "(it has no elbolab.measure.instructions); gate on time, or pick a newer base")  # fmt: skip
    started = now()
    timeout = config.case_timeout or 900

    stopping = threading.Event()

    def count_both(i: int, case) -> tuple:
        t0 = time.perf_counter()
        if stopping.is_set():
            raise InterruptedError
        head = count_case(
            case,
            env=sides["head"].env(),
            cwd=sides["head"].tree,
            timeout=timeout,
            module=sides["head"].module("instructions"),
        )
        calls = head.counts.calls if head.counts is not None else None
        if stopping.is_set():
            raise InterruptedError
        base = count_case(
            case,
            env=sides["base"].env(),
            cwd=sides["base"].tree,
            timeout=timeout,
            calls=calls,
            module=sides["base"].module("instructions"),
        )
        what = (f"{base.counts.instructions:,.0f} -> {head.counts.instructions:,.0f} instructions a call"
                if base.counts and head.counts else f"base {base.status}, head {head.status}")  # fmt: skip
        log(f"case {i + 1}/{len(cases)} {case.label()}: {what} ({time.perf_counter() - t0:.0f} s)")
        return base, head

    # Counts do not depend on what else runs (Valgrind runs each program on a simulated CPU), so
    # the cases are counted in parallel, one per core: a 4-case gate takes half the time on 2 cores.
    cores = usable_cores()
    pool = ThreadPoolExecutor(max_workers=max(1, min(cores, len(cases))))
    futures = [pool.submit(count_both, i, case) for i, case in enumerate(cases)]
    try:
        counted = [f.result() for f in futures]
    except BaseException:  # interrupted (Ctrl-C and SIGTERM reach this thread only): end every count
        stopping.set()
        for f in futures:
            f.cancel()
        while not all(f.done() for f in futures):
            end_all_counts()
            cf.wait(futures, timeout=0.2)
        raise
    finally:
        pool.shutdown(wait=True)
    measured = {"base": [b for b, _ in counted], "head": [h for _, h in counted]}
    out = {}
    for name, side in sides.items():
        git = {"commit": rev(side.tree, "HEAD"), "dirty": git_info(side.tree).get("dirty")}
        run = new_run(unique_run_id(f"ab-{name}-{started}"), started, machine_info(), software_info(), git,
                      {"ab": {"mode": "instructions"}, "measure": "instructions"})  # fmt: skip
        out[name] = replace(run, measurements=tuple(measured[name]), finished=now())
    return out


def _interleaved_measurement(case, d: _SideSamples, stopped: str) -> Measurement:
    """One side's samples of a case over its worker pairs, as a Measurement: per-call times (loops 1,
    since the pairs' loop counts may differ), the pairs as rounds, and the first pair's open reply:
    first call, calibration, the check, the memory and the cost the worker sent. (A revision older
    than the layered lab sends no memory or calibration: they are left out.)"""
    reply = d.reply
    check, memory = _record(Check, reply.get("check")), _record(Memory, reply.get("memory"))
    calibration = tuple(tuple(c) for c in reply.get("calibration") or ())
    notes = dict(reply.get("notes") or {}, ab_stopped=stopped, ab_pairs=len(d.rounds),
                 loops_per_round=[lp for lp, _ in d.rounds], first_loops=d.rounds[0][0])  # fmt: skip
    return Measurement(
        case, "ok", None, loops=1, samples_ns=tuple(d.per_call()), rounds=tuple(len(s) for _, s in d.rounds),
        first_call_ns=reply["first_call_ns"], check=check, memory=memory, calibration=calibration,
        cost=Cost(**reply["cost"]) if reply.get("cost") else None, notes=notes,
    )  # fmt: skip


def _record(kind, fields: dict | None):
    """A record the worker sent, or None where another revision's fields do not make one."""
    try:
        return kind(**fields) if fields else None
    except (TypeError, ValueError):
        return None
