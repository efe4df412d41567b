"""One measurement as a frozen, typed, validated value: what was measured, the raw samples, and what
became of it. Everything else (per-call times, the summary, pooled rounds) is derived here, once.

As in pyperf's `Run` and torch.utils.benchmark's `Measurement`: the raw per-sample times and the
loop count are the record; statistics are computed from them, never stored instead of them. The
summary written beside the samples in a results file is for a person reading the JSON; it is
recomputed, not read back.

The models are pydantic dataclasses in strict mode, so a results file is validated field by field
on load (a "loops": "3", a negative sample, a NaN, an unknown status or key is refused with the
path of the field) and construction in code is checked the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import field, replace
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, TypeAdapter, model_validator
from pydantic.dataclasses import dataclass

from elbolab.model.case import STRICT, Case
from elbolab.model.stats import Summary, summarize

# ok           correct, and the timed calls did the checked work within what physics allows
# incorrect    an output is wrong for the inputs its call was given (a bug, or work not done)
# implausible  correct outputs, but the time is not what the case asked for: faster than the
#              machine's ceiling at its working set, or more threads or processes than asked did
#              the work, or the work happens outside the timed call
# failed, timeout, skipped  no measurement, with the reason
Status = Literal["ok", "incorrect", "implausible", "failed", "timeout", "skipped"]
STATUSES: tuple[str, ...] = Status.__args__  # type: ignore[attr-defined]
BROKEN_STATUSES = ("failed", "incorrect", "implausible", "timeout")

NonNegInt = Annotated[int, Field(ge=0)]
PositiveTime = Annotated[float, Field(gt=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Text = Annotated[str, Field(max_length=20_000)]


@dataclass(frozen=True, config=STRICT)
class Cost:
    """What one call must do at least: bytes moved to/from memory and floating-point operations."""

    bytes: NonNegInt
    flops: NonNegInt


@dataclass(frozen=True, config=STRICT)
class Check:
    """The outputs against the float64 reference (elbolab.model.accuracy): the error of the worst output
    in roundoff units, the bound it was held to, what careful arithmetic achieves, the verdict."""

    ok: bool
    worst_output: Text | None = None
    detail: Text | None = None
    rel_err: NonNegFloat | None = None  # max |got - ref| / max |ref| of the worst output
    error_units: NonNegFloat | None = None  # max |got - ref| / (u * magnitude of the terms)
    bound_units: NonNegFloat | None = None  # beyond this the arithmetic cannot explain it: incorrect
    expected_units: NonNegFloat | None = None  # careful summation stays within this
    digits: NonNegFloat | None = None  # correct decimal digits of the worst output
    rel_tolerance: NonNegFloat | None = None  # schema 1 only: the flat relative tolerance of old
    # valid, but less accurate than careful arithmetic gets (a naive float32 running sum; a formula
    # that cancels, like 1 + lv - e^lv near lv = 0)
    less_accurate: bool = False

    def describe(self) -> str:
        if self.error_units is None or self.bound_units is None:
            return "" if self.rel_err is None else f"relative error {self.rel_err:.2g}"
        text = f"{self.error_units:.3g} u (bound {self.bound_units:.3g} u) in {self.worst_output}"
        return text + (", less accurate than careful summation" if self.less_accurate else "")


@dataclass(frozen=True, config=STRICT)
class Evidence:
    """What the harness saw the timed calls do, beside the one answer it checked (elbolab.measure):
    the inputs rotated between samples from a pool of distinct sets the harness wrote, the outputs
    of single calls and of whole samples checked against the reference for the inputs each was
    given (outside the process that ran them), the time outputs() takes, and a census of the
    threads and processes that did work while the case was sampled."""

    input_sets: NonNegInt = 0  # distinct input sets the timed calls were given
    rotations: NonNegInt = 0  # times the harness rewrote the inputs between samples
    checked_calls: NonNegInt = 0  # single timed calls whose outputs were checked for their inputs
    checked_samples: NonNegInt = 0  # samples whose last call's outputs were checked for their inputs
    outputs_ns: NonNegFloat | None = None  # outputs() after a call, the fastest of the checks
    draws_checked: NonNegInt = 0  # eps drawn inside consecutive calls, tested as normal draws
    call_n_ratio: NonNegFloat | None = None  # per call: call_n(n) over a loop of call(), where measured
    busy_threads: NonNegInt | None = None  # threads of the worker that did work while sampling
    children: NonNegInt | None = None  # child processes the case started
    children_cpu_ns: NonNegInt | None = None
    pinned_cpus: tuple[NonNegInt, ...] | None = None  # the cores the case was measured on
    ceiling_share: NonNegFloat | None = None  # of the bandwidth ceiling at its working set
    flops_share: NonNegFloat | None = None  # of the machine's peak flop rate in its dtype
    notes: tuple[Text, ...] = ()  # what could not be verified, and why


@dataclass(frozen=True, config=STRICT)
class Memory:
    # the process's peak RSS during the case ('case') or the worker's so far ('worker')
    peak_rss_bytes: NonNegInt | None = None
    peak_scope: Literal["case", "worker"] | None = None
    # RSS when the case started: what the interpreter and the backend's libraries hold
    baseline_rss_bytes: NonNegInt | None = None
    device_peak_bytes: NonNegInt | None = None


@dataclass(frozen=True, config=STRICT)
class InstructionCounts:
    """A case measured by counting (Valgrind's callgrind with its cache simulation) instead of timing.

    segments: the raw record, one dict of callgrind events (Ir, Dr, Dw, I1mr, D1mr, D1mw, ILmr, DLmr,
    DLmw) per measured segment; segment 0 runs no call (the cost of starting and stopping a
    segment), every later one `calls` calls. Per call = (segment - segment 0) / calls.
    """

    tool: Text
    calls: Annotated[int, Field(ge=1)]
    segments: tuple[dict[str, NonNegInt], ...]

    def per_call(self, event: str = "Ir") -> tuple[float, ...]:
        base = self.segments[0].get(event, 0)
        return tuple((s.get(event, 0) - base) / self.calls for s in self.segments[1:])

    @property
    def instructions(self) -> float:
        """Instructions per call (the median over the repeated segments)."""
        return float(np.median(self.per_call("Ir")))

    @property
    def spread(self) -> float:
        """Relative spread of instructions per call between repeated segments (0 = identical)."""
        values = self.per_call("Ir")
        return (max(values) - min(values)) / max(np.median(values), 1.0) if len(values) > 1 else 0.0

    def _event(self, event: str) -> float:
        # a miss segment 0 had and the later ones did not can make a per-call count slightly negative
        return max(0.0, float(np.median(self.per_call(event))))

    @property
    def l1_misses(self) -> float:
        return sum(self._event(e) for e in ("I1mr", "D1mr", "D1mw"))

    @property
    def ll_misses(self) -> float:
        return sum(self._event(e) for e in ("ILmr", "DLmr", "DLmw"))

    @property
    def estimated_cycles(self) -> float:
        """Itamar Turner-Trauring's estimate (as iai-callgrind reports it): L1 hits + 5 x LL hits +
        35 x RAM hits, where accesses = Ir + Dr + Dw, L1 hits = accesses - L1 misses, LL hits = L1
        misses - LL misses, RAM hits = LL misses."""
        accesses = sum(self._event(e) for e in ("Ir", "Dr", "Dw"))
        l1, ll = self.l1_misses, self.ll_misses
        return (accesses - l1) + 5 * (l1 - ll) + 35 * ll


@dataclass(frozen=True, config=STRICT)
class Measurement:
    case: Case
    status: Status
    reason: Text | None = None
    loops: NonNegInt = 0
    # raw: each sample is the wall time of `loops` consecutive calls
    samples_ns: tuple[PositiveTime, ...] = ()
    first_call_ns: NonNegInt | None = None
    check: Check | None = None
    memory: Memory = field(default_factory=Memory)
    cost: Cost | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    # (loops, ns) tried while calibrating
    calibration: tuple[tuple[NonNegInt, NonNegInt], ...] = ()
    # samples per round when pooled from interleaved rounds (the A/B gate); () for one run
    rounds: tuple[Annotated[int, Field(ge=1)], ...] = ()
    # set when the case was measured by counting instructions (--measure instructions), not timing
    counts: InstructionCounts | None = None
    # CPU time of the whole worker process (every thread) and wall time over the timed samples: far
    # more CPU than wall x threads means more threads ran than were asked for
    cpu_ns: NonNegInt | None = None
    wall_ns: NonNegInt | None = None
    # each sample also timed on the device, between CUDA events around its calls (host clock:
    # samples_ns, which stop after a device sync); empty where the backend has no device events
    device_samples_ns: tuple[PositiveTime, ...] = ()
    # the evidence that the timed calls did the checked work (schema 3; None in older files)
    evidence: Evidence | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Measurement:
        if self.samples_ns and self.loops < 1:
            raise ValueError("samples_ns given with loops < 1")
        if self.status == "ok":
            if not self.samples_ns and self.counts is None:
                raise ValueError("status ok without samples")
            if self.check is not None and not self.check.ok:
                raise ValueError("status ok but the check failed")
        if self.rounds and sum(self.rounds) != len(self.samples_ns):
            raise ValueError(f"rounds {list(self.rounds)} do not add up to {len(self.samples_ns)} samples")
        return self

    # ------------------------------------------------------------------------------ derived

    @cached_property
    def per_call_ns(self) -> np.ndarray:
        """Per-call times (ns) from the raw samples."""
        if not self.samples_ns:
            return np.empty(0)
        return np.asarray(self.samples_ns, dtype=np.float64) / self.loops

    @cached_property
    def summary(self) -> Summary | None:
        return summarize(self.per_call_ns) if self.samples_ns else None

    @property
    def median_ns(self) -> float:
        return self.summary.median if self.summary else math.nan

    @property
    def timed_ok(self) -> bool:
        """Correct and timed: the only measurements that may enter a speed-up or a comparison."""
        return self.status == "ok" and bool(self.samples_ns)

    @property
    def counted_ok(self) -> bool:
        """Correct and counted (instruction mode): comparable with other counts, never with times."""
        return self.status == "ok" and self.counts is not None

    @cached_property
    def round_medians(self) -> tuple[float, ...] | None:
        """Median per-call time of each pooled round, or None for a single run."""
        if len(self.rounds) < 2:
            return None
        x = self.per_call_ns
        if len(set(self.rounds)) == 1:  # rounds of one size (a run's cells): one call, not one per round
            return tuple(float(v) for v in np.median(x.reshape(len(self.rounds), -1), axis=1))
        bounds = np.cumsum([0, *self.rounds])
        return tuple(float(np.median(x[i:j])) for i, j in zip(bounds[:-1], bounds[1:], strict=True))

    # ------------------------------------------------------------------------------ pooling

    @classmethod
    def pool(cls, rounds: Sequence[Measurement]) -> Measurement:
        """One measurement pooling the per-call samples of one case over several runs.

        Each run calibrates its own loop count, so the pooled record stores per-call times with
        loops = 1 and the sample count of each round in `rounds`. It is ok only if every round was
        ok; otherwise its first non-ok round stands (named in the reason), so a flaky failure is
        seen, not averaged away.
        """
        if not rounds:
            raise ValueError("nothing to pool")
        keys = {m.case.key() for m in rounds}
        if len(keys) != 1:
            raise ValueError("can only pool rounds of one case")
        for i, m in enumerate(rounds):
            if not m.timed_ok:
                return replace(m, reason=f"round {i + 1} of {len(rounds)}: {m.reason or m.status}")
        first = rounds[0]
        return replace(
            first,
            loops=1,
            samples_ns=tuple(float(s) for m in rounds for s in m.per_call_ns),
            rounds=tuple(n for m in rounds for n in (m.rounds or (len(m.samples_ns),))),
            notes=dict(first.notes, loops_per_round=[m.loops for m in rounds]),
        )

    # --------------------------------------------------------------------------------- JSON

    def to_json(self) -> dict:
        # by hand, not dataclasses.asdict: that deep-copies every note and costs 10x (the whole
        # file is rewritten after every case)
        return {
            "case": self.case.to_json(),
            "status": self.status,
            "reason": self.reason,
            "loops": self.loops,
            "samples_ns": [_plain_number(s) for s in self.samples_ns],
            "rounds": list(self.rounds),
            "first_call_ns": self.first_call_ns,
            "check": _fields(self.check),
            "memory": _fields(self.memory),
            "cost": _fields(self.cost),
            "notes": self.notes,
            "cpu_ns": self.cpu_ns,
            "wall_ns": self.wall_ns,
            "device_samples_ns": [float(x) for x in self.device_samples_ns],
            "calibration": [list(c) for c in self.calibration],
            "evidence": None if self.evidence is None else _evidence_json(self.evidence),
            "counts": None
            if self.counts is None
            else {
                "tool": self.counts.tool,
                "calls": self.counts.calls,
                "segments": [dict(x) for x in self.counts.segments],
            },
            # derived, for a person reading the file; ignored on load
            SUMMARY_KEY: self.summary.to_json() if self.summary else None,
        }

    @classmethod
    def from_json(cls, data: dict) -> Measurement:
        """Validate one record (raises pydantic.ValidationError, a ValueError)."""
        data = {k: v for k, v in data.items() if k != SUMMARY_KEY}
        return _MEASUREMENT.validate_json(json.dumps(data, allow_nan=True))


SUMMARY_KEY = "per_call_summary_ns"
_MEASUREMENT = TypeAdapter(Measurement)


def _fields(value: object) -> dict | None:
    """A flat dataclass of scalars as a dict."""
    return None if value is None else dict(value.__dict__)


def _evidence_json(e: Evidence) -> dict:
    d = dict(e.__dict__)
    d["pinned_cpus"] = None if e.pinned_cpus is None else list(e.pinned_cpus)
    d["notes"] = list(e.notes)
    return d


def _plain_number(x: float) -> int | float:
    """Whole nanoseconds as ints (the timer's samples), fractions as floats (pooled per-call times)."""
    return int(x) if float(x).is_integer() else float(x)


def not_measured(case: Case, status: str, reason: str, cost: Cost | None = None) -> Measurement:
    """A case that produced no samples: failed, timed out or skipped, with the reason."""
    return Measurement(case, status, reason, cost=cost)


def correct_digits(check: Check | None) -> float | None:
    """Correct decimal digits of the worst output (17: exact), also for results that recorded only
    a relative error (schema 1), computed as elbolab.model.accuracy does."""
    if check is None:
        return None
    if check.digits is not None:
        return check.digits
    if check.rel_err is None or not math.isfinite(check.rel_err):
        return None
    return 17.0 if check.rel_err == 0 else min(17.0, max(0.0, -math.log10(check.rel_err)))
