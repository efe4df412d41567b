"""Compare two runs case by case: a pure function from two Runs to a frozen `Comparison`.

Nothing here reads files, touches a clock or prints; renderers (elbolab.cli.render for the terminal,
elbolab.report.markdown for Markdown) turn a report into text afterwards: compare, then render.
What a ratio means is decided by elbolab.analyse.verdict, the one rule every consumer shares.

Broken cases: a case measured ok in base but failed, incorrect or timed out in head is *broken*;
the gate fails on it (a kernel that stopped working is not faster).

Different machines: absolute times from two machines (different `machine.cpu`) are not compared;
`compare` raises CompareError unless a normalization `Reference` is given, which divides every case's
times by the reference case measured in the same run (by default the NumPy `elbo` case, eps given,
on the CPU, at the same batch, dtype and dimensions; one thread if there is a choice). Why a
measured case and not the run's bandwidth limit: the reference then has raw samples and an interval
of its own, it runs the same kind of memory-and-ufunc work at the same size (so it sits in the same
cache level), and it is measured by the same timer in the same run. The normalized ratio is
(head/head_ref) / (base/base_ref); its interval combines the two rank intervals in quadrature on the
log scale (independent samples). The reference case itself cannot be compared that way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from elbolab.analyse.control import cell_of, control_noise
from elbolab.analyse.verdict import (
    DEFAULT_RULE,
    INSTRUCTIONS_RULE,
    Judgement,
    Rule,
    Verdict,
    count_estimate,
    decide,
    widened,
)
from elbolab.model.case import Case
from elbolab.model.errors import UsageError
from elbolab.model.measurement import BROKEN_STATUSES, Measurement
from elbolab.model.stats import RatioEstimate, paired_ratio_interval, ratio_interval
from elbolab.model.workloads import WORKLOADS
from elbolab.store.results import Run

REPORT_SCHEMA = "elbolab.compare/1"


class CompareError(UsageError):
    """Two runs that cannot be compared as asked; the message is one line for the user."""


@dataclass(frozen=True)
class Reference:
    """The case each run's times are divided by when comparing runs from different machines."""

    backend: str = "numpy"
    workload: str = "elbo"
    variant: str = "eps=given"
    device: str = "cpu"

    @classmethod
    def parse(cls, text: str) -> Reference:
        """BACKEND[:WORKLOAD[:VARIANT]], e.g. 'numpy' or 'rust:elbo'."""
        parts = [p.strip() for p in text.split(":")]
        if not parts[0] or len(parts) > 3 or any(not p for p in parts):
            raise CompareError(f"a reference is BACKEND[:WORKLOAD[:VARIANT]], e.g. numpy:elbo; got {text!r}")
        return cls(*parts)

    def matches(self, m: Measurement, case: Case) -> bool:
        r = m.case
        return (
            m.timed_ok
            and (r.backend, r.workload, r.variant, r.device)
            == (self.backend, self.workload, self.variant, self.device)
            and (r.dtype, r.batch, r.input_dim, r.latent_dim, r.seed)
            == (case.dtype, case.batch, case.input_dim, case.latent_dim, case.seed)
        )

    def label(self, case: Case) -> str:
        return f"{self.backend} {self.workload} {case.dtype} B={case.batch}"


# ------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class RunInfo:
    """What identifies one side of a comparison."""

    label: str
    run_id: str
    commit: str | None
    dirty: bool | None
    cpu: str | None
    started: str | None = None

    @classmethod
    def of(cls, run: Run, label: str) -> RunInfo:
        return cls(label, run.run_id, run.git.commit, run.git.dirty, run.cpu, run.started)

    def describe(self) -> str:
        commit = (self.commit or "unknown commit")[:10]
        if self.dirty:
            commit += " (dirty)"
        return f"{self.label}: {commit}, run {self.run_id}"

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CaseComparison:
    case: Case
    base_median: float  # ns per call (a multiple of the reference when normalized), or instructions
    head_median: float
    base_n: int
    head_n: int
    judgement: Judgement
    unit: str = "ns"  # "ns" (timed) or "instructions" (counted under Valgrind)

    @property
    def ratio(self) -> float:
        return self.judgement.ratio

    @property
    def ci95(self) -> tuple[float, float]:
        return self.judgement.ci95

    @property
    def verdict(self) -> Verdict:
        return self.judgement.verdict

    @property
    def regression(self) -> bool:
        return self.judgement.regression

    @property
    def word(self) -> str:
        """The verdict, or REGRESSION when it fails the gate."""
        return "REGRESSION" if self.regression else self.verdict.value

    def to_json(self) -> dict:
        return {
            "case": self.case.to_json(),
            "base_median": self.base_median,
            "head_median": self.head_median,
            "base_n": self.base_n,
            "head_n": self.head_n,
            "unit": self.unit,
            **self.judgement.to_json(),
        }


@dataclass(frozen=True)
class NotCompared:
    case: Case
    base_status: str | None  # None: the case is not in that run
    head_status: str | None
    reason: str
    broken: bool = False  # ok in base, failed/incorrect/timeout in head

    def to_json(self) -> dict:
        return {"case": self.case.to_json(), "base_status": self.base_status, "head_status": self.head_status,
                "reason": self.reason, "broken": self.broken}  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    base: RunInfo
    head: RunInfo
    comparisons: tuple[CaseComparison, ...]
    not_compared: tuple[NotCompared, ...]
    rule: Rule
    reference: Reference | None  # normalization reference, or None for absolute times
    notices: tuple[str, ...] = field(default=())
    # the rule for instruction counts, which are deterministic: a far smaller change is real
    count_rule: Rule = INSTRUCTIONS_RULE

    def describe_rules(self) -> list[str]:
        """The rule(s) that decided this report's verdicts, one line per kind of measurement."""
        units = list(dict.fromkeys(c.unit for c in self.comparisons)) or ["ns"]
        return [(self.rule if u == "ns" else self.count_rule).describe(u) for u in units]

    @property
    def normalized(self) -> bool:
        return self.reference is not None

    @property
    def regressions(self) -> tuple[CaseComparison, ...]:
        return tuple(c for c in self.comparisons if c.regression)

    @property
    def broken(self) -> tuple[NotCompared, ...]:
        return tuple(n for n in self.not_compared if n.broken)

    @property
    def unmeasured(self) -> tuple[NotCompared, ...]:
        """Cases measured ok in base that head did not measure (skipped there, or absent)."""
        return tuple(
            n for n in self.not_compared if n.base_status == "ok" and n.head_status in (None, "skipped")
        )

    @property
    def noisy(self) -> tuple[CaseComparison, ...]:
        return tuple(c for c in self.comparisons if c.verdict is Verdict.NOISY)

    @property
    def failed(self) -> bool:
        return bool(self.regressions or self.broken)

    def gate(self, allow_missing: bool = False, fail_on_noisy: bool = False) -> tuple[int, str]:
        """The gate's exit code and its one-line outcome. A gate that compared nothing, or could
        not measure in head what base measured, has not passed (2, unless missing cases are allowed)."""
        if self.failed:
            return 1, self.headline()
        if not self.comparisons:
            return 2, "NOT PASSED: nothing was compared (no case measured ok on both sides)"
        if self.unmeasured and not allow_missing:
            n = len(self.unmeasured)
            return 2, (f"NOT PASSED: {n} case(s) measured in base were not measured in head "
                       f"(e.g. {self.unmeasured[0].case.label()}); --allow-missing to gate the rest")  # fmt: skip
        if self.noisy and fail_on_noisy:
            return 1, f"FAIL: {len(self.noisy)} case(s) too noisy to tell (--fail-on-noisy)"
        return 0, self.headline()

    def count(self, verdict: Verdict) -> int:
        return sum(1 for c in self.comparisons if c.verdict is verdict)

    def headline(self) -> str:
        n = len(self.comparisons)
        if self.failed:
            parts = []
            if self.regressions:
                parts.append(f"{len(self.regressions)} regression(s)")
            if self.broken:
                parts.append(f"{len(self.broken)} broken case(s)")
            return f"FAIL: {' and '.join(parts)} in {n} compared case(s)"
        counts = ", ".join(f"{self.count(v)} {v}" for v in Verdict if self.count(v))
        return f"PASS: no regression in {n} compared case(s) ({counts})" if n else "nothing compared"

    def to_json(self) -> dict:
        return {
            "schema": REPORT_SCHEMA,
            "base": self.base.to_json(),
            "head": self.head.to_json(),
            "rule": self.rule.to_json(),
            "count_rule": self.count_rule.to_json(),
            "normalized_by": None if self.reference is None else self.reference.__dict__,
            "headline": self.headline(),
            "failed": self.failed,
            "counts": {v.value: self.count(v) for v in Verdict},
            "comparisons": [c.to_json() for c in self.comparisons],
            "not_compared": [n.to_json() for n in self.not_compared],
            "notices": list(self.notices),
        }


# ------------------------------------------------------------------------------------ compare


def _by_key(run: Run, side: str, notices: list[str]) -> dict[tuple, Measurement]:
    found: dict[tuple, Measurement] = {}
    for m in run.measurements:
        key = m.case.key()
        if key in found:
            notices.append(f"{side} measures {m.case.label()} more than once; the last one is used")
        found[key] = m
    return found


def _reference_of(case: Case, ref: Reference, run: dict[tuple, Measurement]) -> Measurement | None:
    """The normalization reference of `case` among a run's ok measurements (fewest threads first)."""
    found = [m for m in run.values() if ref.matches(m, case)]
    return min(found, key=lambda m: (m.case.threads != 1, m.case.threads)) if found else None


def _machine_notices(base: Run, head: Run, reference: Reference | None) -> list[str]:
    notices = []
    if base.cpu and head.cpu and base.cpu != head.cpu:
        if reference is None:
            raise CompareError(
                f"base and head ran on different machines ({base.cpu!r} vs {head.cpu!r}): absolute times are "
                "not comparable; measure both on one machine (elbolab gate --base REF) or pass --normalize"
            )
        notices.append(
            f"different machines ({base.cpu} vs {head.cpu}): times normalized by the {reference.backend} "
            f"{reference.workload} reference"
        )
    else:
        for k in ("cores", "logical_cpus", "cpu_affinity", "memory_bytes"):
            if k in base.machine and k in head.machine and base.machine[k] != head.machine[k]:
                notices.append(f"machine {k} differs: base {base.machine[k]}, head {head.machine[k]}")
    for k in sorted(set(base.software) & set(head.software)):
        sb, sh = base.software[k], head.software[k]
        if isinstance(sb, str) and sb != sh:
            notices.append(f"{k} differs: base {sb}, head {sh}")
    return notices


def compare(
    base_run: Run,
    head_run: Run,
    *,
    rule: Rule = DEFAULT_RULE,
    count_rule: Rule = INSTRUCTIONS_RULE,
    allow_missing: bool = False,
    reference: Reference | None = None,
    base_label: str = "base",
    head_label: str = "head",
    notices: Sequence[str] = (),
) -> Comparison:
    """Compare two validated runs (see the module docstring for the rules).

    Raises CompareError when they cannot be compared: no case in common, different case sets
    without `allow_missing`, different machines without a normalization reference.
    """
    for w, _ in rule.per_workload + count_rule.per_workload:
        if w not in WORKLOADS:
            raise CompareError(
                f"unknown workload {w!r} in per-workload thresholds (known: {', '.join(WORKLOADS)})"
            )
    all_notices = list(notices) + _machine_notices(base_run, head_run, reference)
    base, head = _by_key(base_run, base_label, all_notices), _by_key(head_run, head_label, all_notices)

    common = [k for k in base if k in head]
    only_base = [k for k in base if k not in head]
    only_head = [k for k in head if k not in base]
    if not common:
        raise CompareError(f"{base_label} and {head_label} have no cases in common")
    if (only_base or only_head) and not allow_missing:
        parts = []
        if only_base:
            parts.append(f"{len(only_base)} only in {base_label} (e.g. {base[only_base[0]].case.label()})")
        if only_head:
            parts.append(f"{len(only_head)} only in {head_label} (e.g. {head[only_head[0]].case.label()})")
        raise CompareError(
            f"case sets differ: {'; '.join(parts)}; pass --allow-missing to compare the {len(common)} in common"
        )

    comparisons: list[CaseComparison] = []
    skipped = [NotCompared(base[k].case, base[k].status, None, f"only in {base_label}") for k in only_base]
    skipped += [NotCompared(head[k].case, None, head[k].status, f"only in {head_label}") for k in only_head]
    unstable: list[Case] = []
    paired = _paired_design(base_run) and _paired_design(head_run)
    noise = {} if paired else between_runs_noise(base, head, common, all_notices)
    for key in common:
        got = _compare_case(base[key], head[key], rule, count_rule, reference, (base, head),
                            (base_label, head_label), paired, noise.get(key, 0.0))  # fmt: skip
        if isinstance(got, NotCompared):
            skipped.append(got)
            continue
        if got.judgement.rounds_agree is False:
            unstable.append(got.case)
        comparisons.append(got)

    if (
        reference is not None
        and not comparisons
        and any(n.reason.startswith("no reference") for n in skipped)
    ):
        raise CompareError(
            f"--normalize needs the {reference.backend} {reference.workload} case ({reference.variant}, "
            f"{reference.device}) at the same batch and dtype in both runs; none was found"
        )
    if unstable:
        all_notices.append(
            f"{len(unstable)} case(s) changed within the rounds but not consistently across them "
            f"(e.g. {unstable[0].label()}): the machine's speed moved between runs; not counted"
        )
    noisy = [c for c in comparisons if c.verdict is Verdict.NOISY and c.ratio > 1 + c.judgement.threshold]
    if noisy:
        all_notices.append(
            f"{len(noisy)} case(s) look slower than the threshold but are too noisy to tell "
            f"(e.g. {noisy[0].case.label()}); measure more samples or rounds to decide"
        )
    comparisons.sort(key=lambda c: (not c.regression, -c.ratio))
    return Comparison(
        base=RunInfo.of(base_run, base_label),
        head=RunInfo.of(head_run, head_label),
        comparisons=tuple(comparisons),
        not_compared=tuple(sorted(skipped, key=lambda n: (not n.broken, n.case))),
        rule=rule,
        reference=reference,
        notices=tuple(dict.fromkeys(all_notices)),
        count_rule=count_rule,
    )


def between_runs_noise(base: dict, head: dict, common: list, notices: list[str]) -> dict[tuple, float]:
    """What two separate runs of identical code can differ by, per case, as a log factor: the larger
    of the two runs' null controls (the noise between worker processes, which every case of a
    separate run meets afresh) plus the drift of the case's cell between the runs (the median shift
    of the ratios of every backend the cell measured: a cell is measured in one stretch of seconds,
    so load that came and went moves all of it together; on the 2-core VM two make bench runs of one
    commit had cells 30% slower and others 25% faster, every backend alike, while the run-wide median
    moved 3%). A change to one backend barely moves its cell's median; a cell that moved as a whole
    cannot be told from load by two runs. Empty where either run has no control (files from before
    the control: judged as they always were)."""
    noises = [control_noise(list(side.values())) for side in (base, head)]
    if any(n.run is None for n in noises):
        return {}
    control = max(n.run_noise for n in noises)
    shifts: dict[tuple, list[float]] = {}
    for k in common:
        if base[k].timed_ok and head[k].timed_ok:
            shifts.setdefault(cell_of(base[k].case), []).append(
                math.log(head[k].median_ns / base[k].median_ns)
            )
    drift = {cell: abs(float(np.median(v))) for cell, v in shifts.items()}
    # how far a cell's backends strayed from its drift, each its own way (a robust sigma of their
    # shifts, from four backends up): torch's iwae at batch 1024 moved 3.25x between two make bench
    # runs while its cell moved 1.35x. One changed backend barely moves it.
    spread = {
        cell: 1.4826 * float(np.median(np.abs(np.asarray(v) - np.median(v)))) if len(v) >= SPREAD_MIN else 0.0
        for cell, v in shifts.items()
    }
    noise = {
        k: control
        + drift.get(cell_of(base[k].case), 0.0)
        + SPREAD_SIGMAS * spread.get(cell_of(base[k].case), 0.0)
        for k in common
    }
    moved = sorted(drift.values())
    typical, largest = (math.expm1(moved[len(moved) // 2]), math.expm1(moved[-1])) if moved else (0.0, 0.0)
    strays = sorted(spread.values())
    stray = math.expm1(SPREAD_SIGMAS * strays[len(strays) // 2]) if strays else 0.0
    notices.append(
        f"separate runs: every interval is widened by the runs' null controls (±{math.expm1(control):.1%}), "
        f"the drift of its cell between the runs (median ±{typical:.1%}, at most ±{largest:.0%}) and how far "
        f"the cell's backends strayed from it (median ±{stray:.1%}); changes smaller than that cannot be "
        "decided from two runs: measure both revisions together with `elbolab gate --base REF`"
    )
    return noise


SPREAD_MIN = 4  # backends a cell needs before their spread is read
SPREAD_SIGMAS = 2.5  # robust sigmas of a cell's spread each interval is widened by


def _compare_case(mb: Measurement, mh: Measurement, rule: Rule, count_rule: Rule, reference: Reference | None,
                  runs: tuple[dict, dict], labels: tuple[str, str], paired: bool,
                  noise: float = 0.0) -> CaseComparison | NotCompared:  # fmt: skip
    """One case of both runs: its comparison, or why it was not compared."""
    case = mb.case
    base_label, head_label = labels
    if mb.counted_ok and mh.counted_ok:  # instruction counts: deterministic, one rule all the same
        cb, ch = mb.counts, mh.counts
        estimate = count_estimate(cb.instructions, ch.instructions, cb.spread, ch.spread)
        return CaseComparison(case, cb.instructions, ch.instructions, len(cb.segments) - 1, len(ch.segments) - 1,
                              decide(estimate, count_rule, case.workload), unit="instructions")  # fmt: skip
    if (mb.counted_ok and mh.timed_ok) or (mb.timed_ok and mh.counted_ok):
        return NotCompared(case, mb.status, mh.status, "one side was timed, the other counted")
    if not (mb.timed_ok and mh.timed_ok):
        return _not_ok(case, mb, mh, base_label, head_label)
    by_pairs = paired and len(mb.rounds) == len(mh.rounds) >= 2
    estimate = _estimate(mb, mh, by_pairs)
    base_med, head_med = mb.median_ns, mh.median_ns
    if reference is not None:
        refs = (_reference_of(case, reference, runs[0]), _reference_of(case, reference, runs[1]))
        if mb in refs or mh in refs:
            return NotCompared(case, "ok", "ok", "the normalization reference itself")
        if refs[0] is None or refs[1] is None:
            where = base_label if refs[0] is None else head_label
            return NotCompared(case, "ok", "ok", f"no reference ({reference.label(case)}) in {where}")
        ref_estimate = _estimate(refs[0], refs[1], by_pairs and len(refs[0].rounds) == len(refs[1].rounds))
        estimate = _normalized(estimate, ref_estimate)
        base_med, head_med = base_med / refs[0].median_ns, head_med / refs[1].median_ns
    # paired pairs need no agreement test of their rounds: their interval is made of the rounds
    rounds = () if by_pairs or noise else (mb.round_medians, mh.round_medians)
    judgement = decide(widened(estimate, noise), rule, case.workload, *rounds)
    return CaseComparison(case, base_med, head_med, mb.per_call_ns.size, mh.per_call_ns.size, judgement)


def _not_ok(case: Case, mb: Measurement, mh: Measurement, base_label: str, head_label: str) -> NotCompared:
    parts = [
        f"{label} {m.status}" + (f": {m.reason}" if m.reason else "")
        for label, m in ((base_label, mb), (head_label, mh))
        if not (m.timed_ok or m.counted_ok)
    ]
    broken = (mb.timed_ok or mb.counted_ok) and mh.status in BROKEN_STATUSES
    return NotCompared(case, mb.status, mh.status, "; ".join(parts), broken=broken)


def _normalized(case: RatioEstimate, ref: RatioEstimate) -> RatioEstimate:
    """(case ratio / reference ratio) with the two log-scale half-widths added in quadrature."""
    value = case.value / ref.value
    (lo, hi), (rlo, rhi) = case.ci95, ref.ci95
    if not (lo > 0 and rlo > 0 and math.isfinite(hi) and math.isfinite(rhi)):
        return RatioEstimate(value, (0.0, math.inf))
    down = math.hypot(math.log(case.value / lo), math.log(rhi / ref.value))
    up = math.hypot(math.log(hi / case.value), math.log(ref.value / rlo))
    return RatioEstimate(value, (value * math.exp(-down), value * math.exp(up)))


# The runs of an interleaved A/B gate say so in their config: their cases are judged by the
# paired medians of their worker pairs (elbolab.gate.ab.measure_interleaved), not by pooled samples.
INTERLEAVED_PAIRS = "interleaved-pairs"
# ... at 99%, not 95%: the gate looks at a case after every pair from the 8th on (up to 20), and
# a 95% interval looked at that often fired on A/A gates (1 in 3 in a first experiment)
PAIRED_CONFIDENCE = 0.99


def _paired_design(run: Run) -> bool:
    return (run.config.get("ab") or {}).get("mode") == INTERLEAVED_PAIRS


def _estimate(mb: Measurement, mh: Measurement, by_pairs: bool) -> RatioEstimate:
    """The ratio interval of the design: over paired worker pairs for an interleaved A/B (the
    processes are the units of replication); over the rounds of each side where both were measured
    in interleaved rounds (the rounds are the units, unpaired: they were not measured together);
    else over the pooled per-call samples."""
    if by_pairs:
        return paired_ratio_interval(mb.round_medians, mh.round_medians, PAIRED_CONFIDENCE)
    if mb.evidence is not None and mh.evidence is not None and mb.round_medians and mh.round_medians:
        return ratio_interval(mb.round_medians, mh.round_medians)
    return ratio_interval(mb.per_call_ns, mh.per_call_ns)


def pool_rounds(runs: Sequence[Run]) -> Run:
    """One run pooling each case's samples over several runs of one side (elbolab.gate.ab)."""
    if not runs:
        raise ValueError("nothing to pool")
    by_case: dict[tuple, list[Measurement]] = {}
    for run in runs:
        for m in run.measurements:
            by_case.setdefault(m.case.key(), []).append(m)
    first = runs[0]
    return replace(
        first,
        run_id="+".join(r.run_id for r in runs)[:200],
        finished=runs[-1].finished,
        config=dict(first.config, rounds=len(runs)),
        measurements=tuple(Measurement.pool(ms) for ms in by_case.values()),
    )
