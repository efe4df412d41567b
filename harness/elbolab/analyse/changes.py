"""History across commits: the series of one case on one machine, and its change points.

Series. A series is one case on one machine (elbolab.store.database.Machine: the hardware, and a
name when one was given), its points the commits in git-ancestry order (elbolab.store.commits, by
default HEAD's history, never wall-clock), each point pooling the per-call samples of every run of
that commit (runs of dirty trees are left out unless asked for). Machines are never mixed in a series.

Drift. Each run's times are divided by how much slower the machine was in it, read from the run
as a whole and, where the run measured the reference in the same cell, from the reference there
(build_series).

Change points. Each series is segmented on the log of its per-commit medians by PELT (ruptures,
l2 cost on the series scaled by a robust estimate of its commit-to-commit noise, floored at the
verdict's noise band, minimum segment `min_size` commits). PELT only proposes where a series
steps; whether it did is decided by the shared verdict (elbolab.analyse.verdict.decide) on the runs
of up to `window` commits on either side, each run's median a unit, so the interval holds what
differs between separate runs. A proposed step the verdict does not confirm ('same' or 'too noisy
to tell') is dropped and the segmentation's neighbours are judged again.

Measuring past commits into the store is the gate's (elbolab.gate.backfill, elbolab.gate.bisect).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from elbolab.analyse.verdict import DEFAULT_RULE, Judgement, Rule, Verdict, decide
from elbolab.model.backend import is_control
from elbolab.model.case import Case
from elbolab.model.errors import UsageError
from elbolab.model.query import CaseQuery
from elbolab.model.stats import ratio_interval, summarize
from elbolab.store.commits import Order, order_commits
from elbolab.store.database import MachineRow, Row, Store

MIN_SIZE = 2  # a change must hold for this many measured commits before PELT proposes it
WINDOW = 5  # measured commits pooled on either side of a change for the verdict
PENALTY = 2.0  # PELT penalty per change, times log(n), on the noise-scaled series


def fast_median(x: np.ndarray) -> float:
    """np.median of a small 1-d array, without its overhead (it is called once per run and point)."""
    y = np.sort(x)
    n = y.size
    return float(y[n // 2]) if n % 2 else float((y[n // 2 - 1] + y[n // 2]) / 2)


# ------------------------------------------------------------------------------------- series


@dataclass(frozen=True, eq=False)
class Point:
    """One commit of a series: every run of it on the machine, its samples pooled."""

    commit: str
    run_ids: tuple[str, ...]
    statuses: tuple[str, ...]
    reasons: tuple[str, ...]
    per_call_ns: np.ndarray  # pooled over the runs that measured the case ok
    run_medians: tuple[float, ...]  # median per call of each ok run
    median: float = math.nan  # of the pooled samples

    def __post_init__(self) -> None:
        if self.per_call_ns.size and math.isnan(self.median):
            object.__setattr__(self, "median", fast_median(self.per_call_ns))

    @property
    def ok(self) -> bool:
        return self.per_call_ns.size > 0

    @property
    def ci95(self) -> tuple[float, float]:
        return summarize(self.per_call_ns).ci95 if self.ok else (math.nan, math.nan)

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        bad = [st for st in self.statuses if st != "ok"]
        return bad[0] if bad else "no timing samples" if self.statuses else "missing"


@dataclass(frozen=True, eq=False)
class Series:
    machine: MachineRow
    case: Case
    case_id: str
    points: tuple[Point, ...]
    # its runs' drift read from the reference in the same cell (build_series, step 2), not only from
    # the run as a whole
    by_cell: bool = False

    @property
    def measured(self) -> list[Point]:
        return [p for p in self.points if p.ok]

    @property
    def key(self) -> tuple[str, str]:
        return (self.machine.machine_id, self.case_id)


def build_series(rows: Sequence[Row], order: Order, machines: dict[str, MachineRow],
                 cases: dict[str, Case], rule: Rule = DEFAULT_RULE) -> list[Series]:  # fmt: skip
    """One series per (machine, case) from stored rows, its points in `order`, each run's times
    divided by how much slower the machine was in that run (drift taken out, in two steps):

    1. The run's own factor (run_factors): the median over its cases of how far each case sits from
       that case's median over all runs. A run measured while the machine was 20% slower has every
       case ~20% slower; a change of code moves the few cases it touches, not the median.
    2. Where the run measured the reference (NumPy) in the same cell (workload, dtype, sizes,
       threads, variant), the reference's own deviation there: a cell's backends are measured in
       interleaved rounds (elbolab.measure.cells), so what the machine did to the cell it did to all
       of them alike, and the run-to-run swings of one case, 10-15% in a quick run on a shared
       2-core VM, drop to a few percent. The reference's deviation is taken from the level of its
       own segment (between its confirmed changes, found with step 1 alone), so a change of the
       reference's code is its own change and not every other backend's.
    """
    pos = order.position
    factors = run_factors(rows)
    grouped: dict[tuple[str, str], dict[str, list[Row]]] = {}
    for r in rows:
        if r.commit in pos and not is_control(cases[r.case_id].backend):
            grouped.setdefault((r.machine_id, r.case_id), {}).setdefault(r.commit, []).append(r)

    def series(mid: str, cid: str, scale: Callable[[Row], float], by_cell: bool = False) -> Series:
        by_commit = grouped[(mid, cid)]
        points = []
        for commit in sorted(by_commit, key=pos.__getitem__):
            rs = by_commit[commit]
            per_run = [r.per_call_ns / scale(r) for r in rs if _usable(r)]
            medians = tuple(fast_median(x) for x in per_run)
            pooled = np.concatenate(per_run) if len(per_run) > 1 else per_run[0] if per_run else np.empty(0)
            points.append(Point(
                commit, tuple(r.run_id for r in rs), tuple(r.status for r in rs),
                tuple(r.reason or "" for r in rs if r.status != "ok"), pooled, medians,
                medians[0] if len(medians) == 1 else math.nan,
            ))  # fmt: skip
        return Series(machines[mid], cases[cid], cid, tuple(points), by_cell)

    def by_run(r: Row) -> float:
        return factors.get(r.run_id, 1.0)

    cell_factors: dict[tuple[str, str, tuple], float] = {}  # (machine, run, cell) -> divisor
    for mid, cid in grouped:
        case = cases[cid]
        if case.backend == REFERENCE and case.device == "cpu":
            cell_factors.update(_reference_factors(series(mid, cid, by_run), grouped[(mid, cid)], rule))

    out = []
    for mid, cid in grouped:
        case = cases[cid]
        if case.backend == REFERENCE or case.device != "cpu":
            out.append(series(mid, cid, by_run))
            continue
        cell = _cell(case)
        paired = any((mid, r.run_id, cell) in cell_factors for rs in grouped[(mid, cid)].values() for r in rs)

        def by_cell(r: Row, cell: tuple = cell) -> float:
            return cell_factors.get((r.machine_id, r.run_id, cell)) or by_run(r)

        out.append(series(mid, cid, by_cell, paired))
    out.sort(key=lambda s: (s.machine.label, s.machine.machine_id, s.case.key()))
    return out


def _reference_factors(ref: Series, by_commit: dict[str, list[Row]], rule: Rule) -> dict[tuple, float]:
    """(machine, run, cell) -> how much slower the reference ran in that run and cell than the level
    of its segment (the median of its run medians between its confirmed changes)."""
    pts = ref.measured
    cuts = [c.index for c in change_points(ref, rule) if c.confirmed]
    bounds = [0, *cuts, len(pts)]
    cell = _cell(ref.case)
    out = {}
    for lo, hi in itertools.pairwise(bounds):
        level = float(np.median([m for p in pts[lo:hi] for m in p.run_medians]))
        for p in pts[lo:hi]:
            for r in by_commit[p.commit]:
                if _usable(r):
                    out[(r.machine_id, r.run_id, cell)] = fast_median(r.per_call_ns) / level
    return out


REFERENCE = "numpy"  # the backend whose deviation in a cell is every other backend's there
MIN_CASES_FOR_DRIFT = 3  # fewer cases in a run: no factor (the median would follow a changed case)
DRIFT_FLOOR = math.log(1.02)  # a shift below 2% is not told apart from the cases' own noise


def _usable(r: Row) -> bool:
    return r.status == "ok" and bool(r.samples_ns) and r.loops >= 1


def _cell(case: Case) -> tuple:
    return (case.workload, case.variant, case.dtype, case.batch, case.input_dim, case.latent_dim,
            case.hidden_dim, case.importance_samples, case.threads, case.seed)  # fmt: skip


def run_factors(rows: Sequence[Row]) -> dict[str, float]:
    """run -> how much slower the machine was in that run than usual: exp of the median over the
    run's cases of log(case median in the run / the case's median over every run), where the
    cases agree on it (runs without a clear shift are left out: factor 1)."""
    logs: dict[tuple[str, str], float] = {}
    for r in rows:
        if _usable(r):
            logs[(r.run_id, r.case_id)] = math.log(fast_median(r.per_call_ns))
    by_case: dict[str, list[float]] = {}
    for (_, cid), v in logs.items():
        by_case.setdefault(cid, []).append(v)
    typical = {cid: float(np.median(v)) for cid, v in by_case.items() if len(v) >= 2}
    by_run: dict[str, list[float]] = {}
    for (rid, cid), v in logs.items():
        if cid in typical:
            by_run.setdefault(rid, []).append(v - typical[cid])
    factors = {}
    for rid, d in by_run.items():
        if len(d) < MIN_CASES_FOR_DRIFT:
            continue
        shift = float(np.median(d))
        spread = 1.4826 * float(np.median(np.abs(np.asarray(d) - shift)))
        # only a shift the run's cases agree on is the machine's: one that their own scatter
        # explains is left alone (dividing by it would add the other cases' noise to each)
        if abs(shift) > max(3 * spread / math.sqrt(len(d)), DRIFT_FLOOR):
            factors[rid] = math.exp(shift)
    return factors


# ---------------------------------------------------------------------------------- machines


def select_machines(rows: list[MachineRow], text: str | None) -> list[MachineRow]:
    """Machines named by an id prefix or a part of their name (case-insensitive); all without one."""
    if not text:
        return rows
    by_id = [m for m in rows if m.machine_id.startswith(text.lower())]
    found = by_id or [m for m in rows if text.lower() in m.label.lower()]
    if not found:
        known = ", ".join(f"{m.label} ({m.machine_id[:8]})" for m in rows) or "none"
        raise UsageError(f"--machine {text!r} names no stored machine (machines: {known})")
    return found


# ------------------------------------------------------------------------------- change points


@dataclass(frozen=True)
class ChangePoint:
    """A step in a series: between `good` (the last commit before) and `bad` (the first after)."""

    machine: MachineRow
    case: Case
    good: str
    bad: str
    index: int  # of `bad` among the series' measured points
    judgement: Judgement  # after vs before, the shared verdict
    before_ns: float  # pooled medians of the judged windows
    after_ns: float
    runs_before: int
    runs_after: int
    confirmed: bool  # the verdict says faster or slower
    between: int | None = None  # commits between good and bad that were not measured

    @property
    def regression(self) -> bool:
        return self.judgement.regression

    @property
    def direction(self) -> str:
        return self.judgement.verdict.value

    def to_json(self) -> dict:
        return {
            "machine": self.machine.machine_id, "machine_label": self.machine.label, "case": self.case.to_json(),
            "label": self.case.label(), "good": self.good, "bad": self.bad, "range": f"{self.good}..{self.bad}",
            "unmeasured_between": self.between, "before_ns": self.before_ns, "after_ns": self.after_ns,
            "runs_before": self.runs_before, "runs_after": self.runs_after, "confirmed": self.confirmed,
            **self.judgement.to_json(),
        }  # fmt: skip


def candidates(
    log_medians: np.ndarray, min_size: int = MIN_SIZE, noise_band: float = DEFAULT_RULE.noise_band
) -> list[int]:
    """Where PELT would cut the series (indices of the first point of each new segment)."""
    import ruptures as rpt  # ~1 s to import: only the history's change points need it

    x = np.asarray(log_medians, dtype=np.float64)
    n = x.size
    if n < 2 * min_size:
        return []
    d = np.diff(x)
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2)
    sigma = max(sigma, math.log1p(noise_band) / 2, 1e-9)
    y = ((x - np.median(x)) / sigma).reshape(-1, 1)
    # PELT on the l2 cost, as ruptures' C implementation (KernelCPD with the linear kernel is the
    # l2 cost; rpt.Pelt(model="l2") gives the same cuts, 400x slower in pure Python)
    cuts = rpt.KernelCPD(kernel="linear", min_size=min_size, jump=1).fit(y).predict(pen=PENALTY * math.log(n))
    return [int(b) for b in cuts if 0 < b < n]


def _judge(
    series: Series, pts: list[Point], b: int, lo: int, hi: int, rule: Rule, window: int, between=None
) -> ChangePoint:
    left = pts[max(lo, b - window) : b]
    right = pts[b : min(hi, b + window)]
    base = np.concatenate([p.per_call_ns for p in left])
    head = np.concatenate([p.per_call_ns for p in right])
    # The runs are the units: their medians differ by what differs between separate runs (drift
    # left over, the process's memory layout), which no run's own samples can show. A series whose
    # drift was read only from its runs as a whole (the reference's own, a GPU's) keeps what a
    # swing of one cell's speed does to it; there every run after must also be beyond every run
    # before (the shared rule's round agreement), as a step of the code's makes them.
    base_rounds = [m for p in left for m in p.run_medians]
    head_rounds = [m for p in right for m in p.run_medians]
    rounds = (None, None) if series.by_cell else (base_rounds, head_rounds)
    j = decide(ratio_interval(base_rounds, head_rounds), rule, series.case.workload, *rounds)
    confirmed = j.verdict in (Verdict.SLOWER, Verdict.FASTER)
    return ChangePoint(
        series.machine, series.case, left[-1].commit, right[0].commit, b, j, float(np.median(base)),
        float(np.median(head)), len(base_rounds), len(head_rounds), confirmed,
        between(left[-1].commit, right[0].commit) if between and confirmed else None,
    )  # fmt: skip


def change_points(series: Series, rule: Rule = DEFAULT_RULE, min_size: int = MIN_SIZE, window: int = WINDOW,
                  between: Callable[[str, str], int | None] | None = None,
                  keep_unconfirmed: bool = False) -> list[ChangePoint]:  # fmt: skip
    """The confirmed changes of a series (with keep_unconfirmed, also the proposals the verdict
    did not confirm, as they were judged before being dropped)."""
    pts = series.measured
    if len(pts) < 2:
        return []
    cuts = candidates(np.log([p.median for p in pts]), min_size, rule.noise_band)
    dropped: dict[int, ChangePoint] = {}
    while True:
        judged = []
        for i, b in enumerate(cuts):
            lo = cuts[i - 1] if i else 0
            hi = cuts[i + 1] if i + 1 < len(cuts) else len(pts)
            judged.append(_judge(series, pts, b, lo, hi, rule, window))
        keep = [c for c in judged if c.confirmed]
        for c in judged:
            if not c.confirmed:
                dropped.setdefault(c.index, c)
        if len(keep) == len(judged):
            break
        cuts = [c.index for c in keep]
    if between is not None:
        judged = [replace(c, between=between(c.good, c.bad)) for c in judged]
    return sorted(judged + (list(dropped.values()) if keep_unconfirmed else []), key=lambda c: c.index)


def all_changes(series: Iterable[Series], rule: Rule = DEFAULT_RULE, order: Order | None = None,
                **kw) -> dict[tuple[str, str], list[ChangePoint]]:  # fmt: skip
    between = order.between if order is not None and order.repo is not None else None
    return {s.key: change_points(s, rule, between=between, **kw) for s in series}


# ----------------------------------------------------------------------------- loading history


@dataclass(frozen=True, eq=False)
class History:
    order: Order
    series: list[Series]
    machines: list[MachineRow]
    dirty_left_out: int = 0
    unknown_commit: int = 0


def load_history(store: Store, repo: Path | None, ref: str = "HEAD", machine: str | None = None,
                 query: CaseQuery | None = None, include_dirty: bool = False,
                 rule: Rule = DEFAULT_RULE) -> History:  # fmt: skip
    """Every series of the store (of the machines and cases asked for), in history order (`rule`
    judges the reference's own changes, from which the other backends' drift is read)."""
    machines = select_machines(store.machines(), machine)
    all_cases = store.cases()
    chosen = query.select(all_cases) if query is not None else all_cases
    rows: list[Row] = []
    for m in machines:  # every case of the runs, also where a query chose some: a run's drift is their median
        rows += store.rows(m.machine_id, None, include_dirty=True)
    dirty_runs = len({r.run_id for r in rows if r.dirty})
    if not include_dirty:
        rows = [r for r in rows if not r.dirty]
    unknown = len({r.run_id for r in rows if not r.commit})
    shas = {r.commit for r in rows if r.commit}
    dates = {s: c.get("committed") for s, c in store.commits(shas).items()} if repo is None else None
    order = order_commits(shas, repo, ref, dates)
    series = [s for s in build_series(rows, order, {m.machine_id: m for m in machines}, all_cases, rule)
              if s.case_id in chosen]  # fmt: skip
    return History(order, series, machines, 0 if include_dirty else dirty_runs, unknown)
