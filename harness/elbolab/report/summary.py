"""What a run found, in the few lines the first screen, the Markdown summary and the console share:
the run and the machine in one line each, the run's resolution (its null control), the problems
ranked by how much they matter, and the compile time that is not a problem.

One module, so the three say the same thing in the same words (issue 26: "one answer per question").

Problems, worst first: answers wrong for their inputs (incorrect), times the case cannot have
(implausible), cases that failed or timed out, then the anomalies of elbolab.analyse.anomalies by
their size (a 110x slow-down with more threads before a 1.2x one), then valid but less accurate
answers. A slow first call is compilation or lazy initialisation, timed apart and in no sample: it
is reported in seconds (`first_calls`), never as a problem.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, replace

from elbolab.analyse.anomalies import Anomaly
from elbolab.analyse.control import ControlNoise
from elbolab.analyse.verdict import Verdict
from elbolab.model.case import Case
from elbolab.model.measurement import Measurement
from elbolab.model.roofline import bandwidth_share
from elbolab.report.format import fmt_ns, fmt_ratio
from elbolab.store.results import Run

SLOW_FIRST_CALL = "slow first call"  # elbolab.analyse.anomalies' kind for a compile: not a problem
STATUS_ORDER = ("incorrect", "implausible", "failed", "timeout", "ok", "skipped")
PROBLEM_STATUSES = ("incorrect", "implausible", "failed", "timeout")
DTYPE_SHORT = {"float64": "f64", "float32": "f32"}


def short_case(c: Case) -> str:
    """A case in a few words, the workload first: 'elbo f64 B=128 t=2 torch' (the variant when eps is
    sampled, the device when it is not the CPU, a size when it is not the default)."""
    label = c.label()  # elbolab's own order: workload backend device dtype B t sizes variant
    sizes = " ".join(p for p in label.split() if re.fullmatch(r"[DLHK]=\d+", p))
    parts = [c.workload, DTYPE_SHORT.get(c.dtype, c.dtype), f"B={c.batch}", f"t={c.threads}", sizes,
             c.backend if c.device == "cpu" else f"{c.backend} ({c.device})",
             "" if c.variant == "eps=given" else c.variant.replace("=", " ")]  # fmt: skip
    return " ".join(p for p in parts if p)


# ------------------------------------------------------------------------------ run and machine


def _gib(n) -> str:
    return f"{n / 2**30:.3g} GiB" if isinstance(n, (int, float)) and n > 0 else ""


def _cpu_name(cpu: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\((R|TM|tm|r)\)", "", cpu)).strip()


def _load(value) -> float | None:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (int, float)):
        return float(value[0])
    return None


def machine_line(run: Run, short: bool = False) -> str:
    """The machine in one line: CPU model, cores, caches, memory, virtualised or not, load, GPUs
    (short: in fewer words, for a terminal line)."""
    m, limits = run.machine or {}, run.limits or {}
    health = run.health if isinstance(run.health, dict) else {}
    start = health.get("start") if isinstance(health.get("start"), dict) else {}
    end = health.get("end") if isinstance(health.get("end"), dict) else {}
    facts = start.get("facts") if isinstance(start.get("facts"), dict) else {}
    cpu = _cpu_name(run.cpu or "CPU not recorded")
    parts = [re.sub(r" (Processor|CPU)\b", "", cpu) if short else cpu]
    cores, logical = m.get("cores"), m.get("logical_cpus")
    usable = facts.get("cores_available") or m.get("cpu_affinity")
    if cores:
        text = f"{cores} core{'s' if cores != 1 else ''}"
        extra = [f"{logical} logical"] if logical and logical != cores else []
        extra += [f"{usable} usable"] if usable and usable != (logical or cores) else []
        parts.append(text + (f" ({', '.join(extra)})" if extra else ""))
    mhz = m.get("cpu_max_mhz")
    if isinstance(mhz, (int, float)) and mhz > 0:
        parts.append(f"up to {mhz / 1000:.2g} GHz")
    llc = limits.get("last_level_cache_bytes")
    if llc:
        guess = "guess" in str(limits.get("last_level_cache_source") or "")
        parts.append(
            f"{'LLC' if short else 'last-level cache'} {llc / 2**20:.3g} MiB{' (a guess)' if guess else ''}"
        )
    else:
        parts.append("cache sizes not recorded")
    if _gib(m.get("memory_bytes")):
        parts.append(f"{_gib(m.get('memory_bytes'))}{'' if short else ' memory'}")
    if "virtualisation" in facts:
        virt = facts.get("virtualisation")
        parts.append((f"{virt} VM" if short else f"virtualised ({virt})") if virt else "not virtualised")
    else:
        parts.append("virtualisation not recorded")
    load_start = _load(facts.get("load_average"))
    load_end = _load(end.get("load_average") or (end.get("facts") or {}).get("load_average"))
    if load_start is not None or load_end is not None:
        if short:
            parts.append("load " + "→".join(f"{x:.1f}" for x in (load_start, load_end) if x is not None))
        else:
            loads = [f"{load_start:.1f} at the start" if load_start is not None else "",
                     f"{load_end:.1f} at the end" if load_end is not None else ""]  # fmt: skip
            parts.append(
                "load " + ", ".join(x for x in loads if x) + (f" on {usable} cores" if usable else "")
            )
    gpus = [g.get("name") for g in m.get("gpus") or [] if isinstance(g, dict) and g.get("name")]
    parts.append(", ".join(Counter(gpus)) if gpus else "no GPU")
    return " · ".join(parts)


def status_counts(run: Run) -> list[tuple[str, int]]:
    """(status, count), problems first, only the statuses present."""
    counts = Counter(m.status for m in run.measurements)
    order = [*STATUS_ORDER, *sorted(set(counts) - set(STATUS_ORDER))]
    return [(s, counts[s]) for s in order if counts[s]]


def run_line(run: Run) -> str:
    commit = run.git.commit[:12] if run.git.commit else "commit unknown"
    dirty = " (uncommitted changes)" if run.git.dirty else ""
    when = f"{(run.started or '')[:16].replace('T', ' ')}"
    counts = ", ".join(f"{n} {s}" for s, n in status_counts(run))
    return (
        f"{run.run_id} · commit {commit}{dirty} · {when} · {len(run.measurements)} cases: {counts or 'none'}"
    )


# ------------------------------------------------------------------------------ the null control


def control_sentence(control: ControlNoise, baseline: str) -> str | None:
    """The run's resolution in words, from its null control (None when the run has no control)."""
    j = control.run
    if j is None:
        return None
    lo, hi = j.ci95
    noise = math.expm1(control.run_noise) if math.isfinite(control.run_noise) else math.inf
    band = (f"±{noise:.0%}" if noise >= 0.01 else f"±{noise:.1%}") if math.isfinite(noise) else "any size"
    text = (f"Null control ({len(control.cells)} cells): {baseline} again, in its own worker, ran at "
            f"{j.speedup.value:.3g}x [{1 / hi:.3g}, {1 / lo if lo > 0 else math.inf:.3g}] {baseline}'s speed, "
            f"{j.verdict.value}: ")  # fmt: skip
    if j.verdict is Verdict.SAME:
        return (
            text
            + f"{band} is this run's noise, and widens every speed-up's interval (by its cell's control)."
        )
    return (
        text
        + f"this run cannot tell differences within {band}; every speed-up's interval is widened by that."
    )


# ------------------------------------------------------------------------------ problems


@dataclass(frozen=True)
class Problem:
    """One thing that is wrong or suspicious, with how much it matters."""

    order: int  # its class: 0 incorrect, 1 implausible, 2 failed, 3 timed out, 4 anomaly, 5 less accurate
    size: float  # within its class, larger first (a factor; nan when it has none)
    kind: str
    case: Case
    index: int  # the measurement's position in its run (its detail's anchor)
    what: str  # the headline, its size first
    why: str  # the reason, or the likely cause

    @property
    def key(self) -> tuple:
        return (self.order, -self.size if not math.isnan(self.size) else math.inf, short_case(self.case))

    def line(self) -> str:
        return f"{self.what}: {short_case(self.case)}"


def _times(a: float, b: float) -> str:
    return f"{fmt_ns(a)} vs {fmt_ns(b)}"


def _anomaly_problem(a: Anomaly, by_key: dict, index: dict, limits: dict, peak_share: dict) -> Problem | None:
    m = by_key.get(a.case.key())
    i = index.get(a.case.key(), -1)
    if a.kind == SLOW_FIRST_CALL:
        return None
    size, what = math.nan, a.kind
    if a.kind == "slower with more threads" and m is not None:
        one = by_key.get(replace(a.case, threads=1).key())
        if one is not None and one.summary and m.summary:
            size = m.median_ns / one.median_ns
            what = (f"{fmt_ratio(size)}x slower with {a.case.threads} threads than with 1 "
                    f"({_times(m.median_ns, one.median_ns)})")  # fmt: skip
    elif a.kind == "oversubscribed" and m is not None and m.cpu_ns and m.wall_ns:
        size = m.cpu_ns / (m.wall_ns * a.case.threads)
        what = f"{fmt_ratio(size)}x more CPU time than wall time x {a.case.threads} thread(s): oversubscribed"
    elif a.kind == "far below the roofline" and m is not None:
        mine = bandwidth_share(m, limits)
        best = peak_share.get(_roofline_group(a.case))
        if mine and best:
            size = best / mine
            what = f"{fmt_ratio(size)}x below the roofline a peer reaches ({a.detail})"
    return Problem(4, size, a.kind, a.case, i, what, a.likely_cause)


def _roofline_group(c: Case) -> tuple:
    return (c.workload, c.variant, c.dtype, c.batch, c.threads, c.input_dim, c.latent_dim, c.device)


def problems(run: Run, found: list[Anomaly]) -> list[Problem]:
    """Every problem of a run, worst first (see the module docstring)."""
    ms = run.measurements
    by_key = {m.case.key(): m for m in ms}
    index = {m.case.key(): i for i, m in enumerate(ms)}
    out: list[Problem] = []
    for i, m in enumerate(ms):
        reason = m.reason or m.status
        if m.status == "incorrect":
            c = m.check
            size = (c.error_units / c.bound_units) if c and c.error_units and c.bound_units else math.inf
            out.append(Problem(0, size, "incorrect", m.case, i, "✗ incorrect answer", reason))
        elif m.status == "implausible":
            share = m.evidence.ceiling_share if m.evidence is not None else None
            out.append(Problem(1, share or math.nan, "implausible", m.case, i, "⚠ implausible time", reason))
        elif m.status in ("failed", "timeout"):
            out.append(Problem(2 if m.status == "failed" else 3, math.nan, m.status, m.case, i,
                               "✗ failed" if m.status == "failed" else "✗ timed out", reason))  # fmt: skip
        elif m.timed_ok and m.check is not None and m.check.less_accurate:
            c = m.check
            size = c.error_units / c.expected_units if c.error_units and c.expected_units else math.nan
            out.append(Problem(5, size, "less accurate", m.case, i, "valid but less accurate than careful arithmetic",
                               c.describe() or ""))  # fmt: skip
    peak_share: dict[tuple, float] = {}  # the best share of its bandwidth ceiling in each group
    if any(a.kind == "far below the roofline" for a in found):
        for m in ms:
            share = bandwidth_share(m, run.limits or {}) if m.timed_ok else None
            if share is not None:
                g = _roofline_group(m.case)
                peak_share[g] = max(peak_share.get(g, 0.0), share)
    for a in found:
        p = _anomaly_problem(a, by_key, index, run.limits or {}, peak_share)
        if p is not None:
            out.append(p)
    return sorted(out, key=lambda p: p.key)


def problem_counts(ps: list[Problem]) -> list[tuple[str, int]]:
    """(kind, count) in the order of the ranking."""
    return list(Counter(p.kind for p in ps).items())


# ------------------------------------------------------------------------------ first calls


@dataclass(frozen=True)
class FirstCalls:
    backend: str
    cases: int
    longest_ns: float
    median_ns: float


def first_calls(ms: list[Measurement] | tuple[Measurement, ...], found: list[Anomaly]) -> list[FirstCalls]:
    """Per backend, the first calls that were compiles (elbolab.analyse.anomalies' slow first calls):
    how many, the longest and the typical, in time (not as a multiple of a microsecond kernel)."""
    slow = {a.case.key() for a in found if a.kind == SLOW_FIRST_CALL}
    per: dict[str, list[float]] = defaultdict(list)
    for m in ms:
        if m.case.key() in slow and m.first_call_ns:
            per[m.case.backend].append(float(m.first_call_ns))
    out = [FirstCalls(b, len(v), max(v), sorted(v)[len(v) // 2]) for b, v in per.items()]
    return sorted(out, key=lambda f: -f.longest_ns)


def first_calls_line(fc: list[FirstCalls]) -> str:
    if not fc:
        return ""
    each = "; ".join(f"{f.backend} {f.cases} case{'s' if f.cases != 1 else ''}, typically {fmt_ns(f.median_ns)}, "
                     f"up to {fmt_ns(f.longest_ns)}" for f in fc)  # fmt: skip
    return f"Compile and first-call time (timed apart, in no sample; not a problem): {each}."
