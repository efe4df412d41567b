"""The claims check: each published claim (../shared/CLAIMS.md, C1-C9) beside what this machine measured.

The claims are data (CLAIMS: one record each, with the published figure and the cases that test it
as published and like for like); a few small functions evaluate them against one run's measurement
table. For every claim: the as-published setting (the tutorial's own comparison, unlike work
included), the like-for-like setting (same dtype, same work, same calling convention on both
sides), a verdict and a physical-plausibility line (the bandwidth a claimed time implies, against
the limits measured in the run).

Verdict rules (stated in the report):
- an absolute time holds when this machine's median is within 2x of it (machines differ; an order of
  magnitude does not come from hardware alone);
- a ratio holds when its 95% interval overlaps [claim / 1.5, claim x 1.5];
- "holds only when ..." names the condition under which it holds (as published only, some batch sizes);
- a case the run lacks is "not measured in this run", with the elbolab command that would measure it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum

import pandas as pd

from elbolab.analyse.control import ControlNoise, cell_of, control_noise
from elbolab.analyse.verdict import judge_in_run
from elbolab.model.claims import (
    CLAIMS,
    NUMPY_PUB,
    RUST_INNER,
    RUST_PUB,
    RUST_TUTORIAL,
    SETTING,
    Claim,
    Spec,
)
from elbolab.model.roofline import bandwidth_limit_for
from elbolab.model.stats import RatioEstimate
from elbolab.report.format import fmt_ns, fmt_x
from elbolab.store.results import Run

TIME_FACTOR = 2.0
RATIO_FACTOR = 1.5
SHARE_POINTS = 0.15  # a profile share holds within 15 percentage points
NOT_MEASURED = "not measured in this run"


class Outcome(str, Enum):
    HOLDS = "holds"
    HOLDS_ONLY_WHEN = "holds_only_when"
    DOES_NOT_HOLD = "does_not_hold"
    NOT_MEASURED = "not_measured"


@dataclass
class ClaimCheck:
    id: str
    claim: str
    figure: str
    as_published: str
    like_for_like: str
    verdict: str  # in words
    outcome: Outcome
    plausibility: str
    commands: list[str] = field(default_factory=list)
    summary: str = ""  # the verdict in one line, with the figure it rests on (the report's first screen)

    def to_json(self) -> dict:
        return dict(self.__dict__, outcome=self.outcome.value)


# ------------------------------------------------------------------------------------- lookups


class Lookup:
    """Measurements of one run at the claims' setting, found by Spec; remembers what was missing."""

    def __init__(
        self, df: pd.DataFrame, run: Run, noise: ControlNoise | None = None, index: dict | None = None
    ):
        self.df, self.run = df, run
        self.index = index if index is not None else self.build_index(df)
        self.noise = noise if noise is not None else control_noise(list(run.measurements))
        self.missing: list[str] = []
        self.headline = ""  # the figure the verdict rests on, set by the claim's evaluator
        self.summary = ""  # or the whole one-line verdict, where the evaluator words it itself

    def row(self, spec: Spec, batch: int = 128, note_missing: bool = True):
        key = (spec.backend, spec.workload, spec.variant, spec.dtype, spec.device, batch)
        found = self.index.get(key)
        if found is None:
            if note_missing:
                self.missing.append(spec.command(batch))
            return None
        return self.df.iloc[found]  # the fewest threads: the tutorial's setting

    @staticmethod
    def build_index(df: pd.DataFrame) -> dict[tuple, int]:
        """Each case at the claims' sizes by (backend, workload, variant, dtype, device, batch): its
        row with the fewest threads (one pass, so a run of many thousands of cases is looked up fast)."""
        if df.empty:
            return {}
        at = df[(df.input_dim == SETTING["input_dim"]) & (df.latent_dim == SETTING["latent_dim"])]
        out: dict[tuple, tuple[int, int]] = {}
        cols = [
            at[c].to_numpy()
            for c in ("backend", "workload", "variant", "dtype", "device", "batch", "threads")
        ]
        positions = df.index.get_indexer(at.index)
        for pos, *vals in zip(positions, *cols, strict=True):
            key, threads = (*vals[:5], int(vals[5])), int(vals[6])
            if key not in out or threads < out[key][0]:
                out[key] = (threads, int(pos))
        return {k: pos for k, (_, pos) in out.items()}

    def has(self, spec: Spec) -> bool:
        return self.row(spec, note_missing=False) is not None

    def time(self, spec: Spec, batch: int = 128) -> tuple[float | None, str]:
        """(median ns or None, text) of a case."""
        row = self.row(spec, batch)
        if row is None:
            return None, f"{spec.label()}: {NOT_MEASURED}"
        if not row["timed_ok"]:
            return None, f"{spec.label()}: {row['status']} ({row['reason']})"
        ci = f"[{fmt_ns(row['ci_lo_ns'])}, {fmt_ns(row['ci_hi_ns'])}]"
        flag = " — IMPLAUSIBLE: " + row["plausibility"] if row["implausible"] else ""
        return float(
            row["median_ns"]
        ), f"{spec.label()}: {fmt_ns(row['median_ns'])} {ci} (t={row['threads']}){flag}"

    def speedup(
        self, slow: Spec, fast: Spec, batch: int = 128, note_missing: bool = True
    ) -> RatioEstimate | None:
        """How many times faster `fast` is than `slow`, with its interval: the estimate the grid shows
        (elbolab.analyse.verdict.judge_in_run, on paired rounds where the two share a cell), widened
        by the run's null control as every speed-up is."""
        a, b = self.row(slow, batch, note_missing), self.row(fast, batch, note_missing)
        if a is None or b is None or not a["timed_ok"] or not b["timed_ok"]:
            return None
        base, head = a["m"], b["m"]
        noise = self.noise.for_case(base.case)
        if cell_of(base.case) != cell_of(head.case):  # unlike work: different cells, rounds do not pair
            base, head = replace(base, rounds=()), replace(head, rounds=())
        return judge_in_run(base, head, workload=fast.workload, noise=noise).speedup

    def speedup_text(self, slow: Spec, fast: Spec, batch: int = 128) -> str:
        r = self.speedup(slow, fast, batch)
        if r is None:
            why = "; ".join(self._why(s, batch) for s in (slow, fast) if not self._ok(s, batch))
            return f"{fast.label()} over {slow.label()}: {why}"
        return f"{fast.label()} over {slow.label()}: {fmt_x(r.value, *r.ci95)}"

    def _ok(self, spec: Spec, batch: int) -> bool:
        row = self.row(spec, batch, note_missing=False)
        return row is not None and bool(row["timed_ok"])

    def _why(self, spec: Spec, batch: int) -> str:
        row = self.row(spec, batch)
        return f"{spec.label()} {NOT_MEASURED}" if row is None else f"{spec.label()} {row['status']}"

    def batches(self) -> list[int]:
        return sorted(set(self.df.batch)) if not self.df.empty else []


# ---------------------------------------------------------------------------------- verdict words


def time_holds(measured: float | None, claimed_ns: float) -> bool | None:
    return None if measured is None else claimed_ns / TIME_FACTOR <= measured <= claimed_ns * TIME_FACTOR


def ratio_holds(r: RatioEstimate | None, claimed: float) -> bool | None:
    return None if r is None else r.ci95[1] >= claimed / RATIO_FACTOR and r.ci95[0] <= claimed * RATIO_FACTOR


def time_words(measured: float | None, claimed_ns: float) -> str:
    if measured is None:
        return NOT_MEASURED
    f = measured / claimed_ns
    if time_holds(measured, claimed_ns):
        return f"holds (measured {fmt_ns(measured)}, {f:.2g}x the claim)"
    direction = "slower" if f > 1 else "faster"
    return f"does not hold (measured {fmt_ns(measured)}: {max(f, 1 / f):.3g}x {direction} than claimed)"


def combine(c: Claim, pub: bool | None, like: bool | None, extra: str = "") -> tuple[Outcome, str]:
    """The verdict from the as-published and like-for-like outcomes."""
    if not c.judge_like:
        like = pub
    if pub is None and like is None:
        return Outcome.NOT_MEASURED, NOT_MEASURED
    if pub and (like or like is None):
        return Outcome.HOLDS, "holds" + (" (like-for-like not measured)" if like is None else "")
    if pub and like is False:
        return Outcome.HOLDS_ONLY_WHEN, f"holds only when {c.pub_condition}"
    if pub is False and like:
        return Outcome.HOLDS_ONLY_WHEN, f"holds only when {c.like_condition}"
    if extra:
        return Outcome.HOLDS_ONLY_WHEN, extra
    return (Outcome.DOES_NOT_HOLD, "does not hold") if (pub is False or like is False) else (
        Outcome.NOT_MEASURED, NOT_MEASURED)  # fmt: skip


def plausibility(limits: dict, spec: Spec, claimed_ns: float, what: str = "") -> str:
    nbytes = spec.cost_bytes()
    implied = nbytes / (claimed_ns * 1e-9)
    # every claim is about one thread (the tutorial's setting), so is the limit it is held to
    lim = bandwidth_limit_for(limits, nbytes, threads=1) if limits else None
    head = (f"{what or fmt_ns(claimed_ns)} for {nbytes / 1e6:.3g} MB ({spec.workload}, {spec.dtype}) "
            f"implies {implied / 1e9:.3g} GB/s")  # fmt: skip
    if not lim:
        return head + "; no limits measured in this run"
    if spec.device != "cpu":
        return head + f" (device memory; the CPU limit here is {lim[0] / 1e9:.3g} GB/s)"
    share = implied / lim[0]
    if share > 1.5:
        verdict = "physically implausible on this machine: a measurement error, not a speed-up"
    elif share > 1.0:
        verdict = "at or beyond the limit: suspicious"
    else:
        verdict = "plausible"
    return (
        head
        + f", {share:.2g}x the measured one-thread {lim[0] / 1e9:.3g} GB/s ({lim[1]} working set): {verdict}"
    )


# ------------------------------------------------------------------------------------- evaluators

Evaluated = tuple[str, str, Outcome, str, str]  # as published, like for like, outcome, verdict, plausibility


def _time(c: Claim, look: Lookup, limits: dict) -> Evaluated:
    pub_spec, like_spec = c.specs
    t_pub, pub = look.time(pub_spec)
    t_like, like = look.time(like_spec)
    outcome, verdict = combine(c, time_holds(t_pub, c.published), time_holds(t_like, c.published))
    if outcome is not Outcome.NOT_MEASURED:
        verdict += f" — as published: {time_words(t_pub, c.published)}"
        verdict += f"; like for like: {time_words(t_like, c.published)}" if c.judge_like else ""
    if c.id == "C2":
        like += "; " + look.speedup_text(NUMPY_PUB, like_spec)
    if c.id == "C4":
        pub += (" (the tutorial's ndarray code, loop inside Rust, as published)" if pub_spec is RUST_TUTORIAL
                else " (elbolab's fused kernel looped inside Rust; rust-tutorial not in this run)")  # fmt: skip
    pub += f" ({c.pub_note})" if c.pub_note else ""
    like += f" ({c.like_note})" if c.like_note else ""
    figures = [f"{fmt_ns(t_pub)} as published" if t_pub is not None else "",
               f"{fmt_ns(t_like)} like for like" if t_like is not None else ""]  # fmt: skip
    look.headline = ", ".join(x for x in figures if x)
    return pub, like, outcome, verdict, plausibility(limits, pub_spec, c.published)


# The Rust calling conventions a published ratio is looked for in, with what each one is
RUST_FORMS = (
    ("rust-tutorial", "the tutorial's ndarray code, looped inside Rust"),
    ("rust-inner", "the n calls looped inside Rust, no Python per call"),
    ("rust", "called from Python once per call"),
)


def _reached(c: Claim, look: Lookup, slow: Spec, fast: Spec) -> tuple[list[tuple], tuple | None]:
    """Where the published ratio is reached in this run: every Rust calling convention (eps drawn as
    published) at every batch measured, as (backend, what it is, batch, ratio); and the largest ratio
    measured. Reached means the estimate itself is within the claim's band (not merely a wide
    interval touching it)."""
    out, best = [], None
    for backend, what in RUST_FORMS:
        spec = replace(fast, backend=backend)
        for b in look.batches():
            r = look.speedup(slow, spec, b, note_missing=False)
            if r is None:
                continue
            if best is None or r.value > best[3].value:
                best = (backend, what, b, r)
            if c.published / RATIO_FACTOR <= r.value <= c.published * RATIO_FACTOR:
                out.append((backend, what, b, r))
    return out, best


def _where(reached: list[tuple[str, str, int, RatioEstimate]], slow: Spec) -> str:
    """'at batch 1, by rust-inner (...): 56x [50, 61]', and why a small batch reaches it."""
    parts = [
        f"at batch {b}, by {backend} ({what}): {fmt_x(r.value, *r.ci95)}" for backend, what, b, r in reached
    ]
    text = "; ".join(parts)
    if all(b < SETTING["batch"] for _, _, b, _ in reached):
        text += (f" — where {slow.backend}'s own per-call overhead (Python dispatch, temporaries), not the "
                 "arithmetic, sets its time")  # fmt: skip
    return text


def _ratio(c: Claim, look: Lookup, limits: dict) -> Evaluated:
    slow_pub, fast_pub, slow_like, fast_like = c.specs
    r_pub, r_like = look.speedup(slow_pub, fast_pub), look.speedup(slow_like, fast_like)
    v_pub, v_like = ratio_holds(r_pub, c.published), ratio_holds(r_like, c.published)
    extra, reached, best = "", [], None
    if (
        v_pub is False
    ):  # the README's promise: a claim failing at the published size is looked for at the others
        reached, best = _reached(c, look, slow_pub, fast_pub)
        if reached:
            pub_figure = f": {fmt_x(r_pub.value, *r_pub.ci95)}" if r_pub is not None else ""
            extra = (f"holds only {_where(reached, slow_pub)}; not as published ({fast_pub.backend} at batch 128"
                     f"{pub_figure})")  # fmt: skip
    outcome, verdict = combine(c, v_pub, v_like, extra)
    largest = ""
    if outcome is Outcome.DOES_NOT_HOLD and best is not None:
        largest = f"at most {fmt_x(best[3].value)} ({best[0]}, batch {best[2]})"
        verdict += (
            f" at any batch or Rust calling convention measured: the largest is {best[0]} ({best[1]}) at "
            f"batch {best[2]}, {fmt_x(best[3].value, *best[3].ci95)}"
        )
    t_slow, _ = look.time(slow_pub)
    if t_slow is not None:
        implied = t_slow / c.published
        what = (f"at batch 128, {c.published}x over this machine's {slow_pub.label()} ({fmt_ns(t_slow)}) means "
                f"Rust in {fmt_ns(implied)}, which")  # fmt: skip
        plaus = plausibility(limits, fast_pub, implied, what)
    else:
        plaus = plausibility(limits, fast_pub, 3.6e3, "the claimed Rust time 0.0036 ms")
    like = look.speedup_text(slow_like, fast_like) + (f" ({c.like_note})" if c.like_note else "")
    figures = [f"{fast_pub.backend} {fmt_x(r_pub.value)}" if r_pub else "",
               f"{fast_like.backend} {fmt_x(r_like.value)}" if r_like and fast_like != fast_pub else ""]  # fmt: skip
    at128 = "at batch 128: " + ", ".join(x for x in figures if x) if any(figures) else ""
    if reached:
        backend, what, b, r = max(reached, key=lambda x: x[3].value)
        look.summary = f"holds only at batch {b}, by {backend} ({what}): {fmt_x(r.value)}; {at128}"
    elif outcome is not Outcome.NOT_MEASURED:
        look.summary = f"{verdict.split(' at any')[0]}: {at128}" + (f"; {largest}" if largest else "")
    return look.speedup_text(slow_pub, fast_pub), like, outcome, verdict, plaus


def _cuda(c: Claim, look: Lookup, limits: dict) -> Evaluated:
    cuda_pub, cpu_pub, cuda_like, numpy_pub = c.specs
    t_pub, pub = look.time(cuda_pub)
    r_pub = look.speedup(cpu_pub, cuda_pub)
    _, like = look.time(cuda_like)
    holds_t, holds_r = time_holds(t_pub, c.published), ratio_holds(r_pub, 2.75)
    if t_pub is None and r_pub is None:
        outcome, verdict = Outcome.NOT_MEASURED, NOT_MEASURED
    elif holds_t and holds_r:
        outcome, verdict = Outcome.HOLDS, "holds"
    elif holds_r:
        outcome, verdict = (
            Outcome.HOLDS_ONLY_WHEN,
            f"holds only for the ratio (2.75x); time: {time_words(t_pub, c.published)}",
        )
    elif holds_t:
        ratio = fmt_x(r_pub.value, *r_pub.ci95) if r_pub else NOT_MEASURED
        outcome, verdict = Outcome.HOLDS_ONLY_WHEN, f"holds only for the time; ratio over CPU {ratio}"
    else:
        outcome, verdict = Outcome.DOES_NOT_HOLD, "does not hold"
    pub += "; " + look.speedup_text(cpu_pub, cuda_pub)
    like += " (forward only, float64: the work NumPy did); " + look.speedup_text(numpy_pub, cuda_like)
    figures = [
        fmt_ns(t_pub) if t_pub is not None else "",
        f"{fmt_x(r_pub.value, *r_pub.ci95)} over the CPU" if r_pub else "",
    ]
    look.headline = ", ".join(x for x in figures if x)
    return pub, like, outcome, verdict, plausibility(limits, cuda_pub, c.published)


def _memory(c: Claim, look: Lookup, limits: dict) -> Evaluated:
    rows = {spec.backend: look.row(spec) for spec in c.specs}
    mem = {k: (r["m"].memory if r is not None else None) for k, r in rows.items()}
    npm, rsm = mem.get("numpy"), mem.get("rust")
    note = (f"the kernel's own data is {c.specs[0].cost_bytes() / 1e6:.2g} MB; a 38 MB difference is an "
            "interpreter and its libraries (a standalone Rust binary has none), not the ELBO")  # fmt: skip
    if not (npm and rsm and npm.peak_rss_bytes and rsm.peak_rss_bytes):
        return f"peak RSS: {NOT_MEASURED}", NOT_MEASURED, Outcome.NOT_MEASURED, NOT_MEASURED, note
    ratio = npm.peak_rss_bytes / rsm.peak_rss_bytes
    pub = (f"peak RSS of the worker process: numpy {npm.peak_rss_bytes / 1e6:.3g} MB, "
           f"rust {rsm.peak_rss_bytes / 1e6:.3g} MB ({ratio:.2g}x)")  # fmt: skip
    if c.published / RATIO_FACTOR <= ratio <= c.published * RATIO_FACTOR:
        outcome, verdict = Outcome.HOLDS, "holds"
    else:
        outcome = Outcome.DOES_NOT_HOLD
        verdict = (
            f"does not hold: {ratio:.2g}x — both are Python processes (the Rust kernel is called from Python)"
        )
    if npm.baseline_rss_bytes and rsm.baseline_rss_bytes:
        own_np = (npm.peak_rss_bytes - npm.baseline_rss_bytes) / 1e6
        own_rs = (rsm.peak_rss_bytes - rsm.baseline_rss_bytes) / 1e6
        like = (f"above the process's RSS at the case's start: numpy {own_np:.2g} MB (its temporaries), "
                f"rust {own_rs:.2g} MB; the interpreter and libraries hold "
                f"{npm.baseline_rss_bytes / 1e6:.3g} MB either way")  # fmt: skip
    else:
        like = "per-case baseline not recorded in this run"
    look.summary = (f"{outcome_word(outcome)}: peak RSS numpy {npm.peak_rss_bytes / 1e6:.3g} MB, rust "
                    f"{rsm.peak_rss_bytes / 1e6:.3g} MB ({ratio:.2g}x), both Python processes")  # fmt: skip
    return pub, like, outcome, verdict, note


def _profile(c: Claim, look: Lookup, limits: dict) -> Evaluated:
    sampled, given, rust_sampled, rust_given = c.specs
    t_s, _ = look.time(sampled)
    t_g, _ = look.time(given)
    t_rs, _ = look.time(rust_sampled)
    t_rg, _ = look.time(rust_given)
    like = (f"Rust: eps sampled {fmt_ns(t_rs)} vs given {fmt_ns(t_rg)} (RNG share {100 * (t_rs - t_rg) / t_rs:.0f}%)"
            if t_rs and t_rg else f"Rust RNG share: {NOT_MEASURED}")  # fmt: skip
    if not (t_s and t_g):
        return f"randn share: {NOT_MEASURED}", like, Outcome.NOT_MEASURED, NOT_MEASURED, "n/a"
    share = (t_s - t_g) / t_s
    pub = (f"randn share of the NumPy call: {100 * share:.0f}% (eps sampled {fmt_ns(t_s)} vs given "
           f"{fmt_ns(t_g)}); sum/mean and exp shares are not separated by the lab")  # fmt: skip
    if abs(share - c.published) <= SHARE_POINTS:
        outcome, verdict = Outcome.HOLDS, "holds for randn"
    else:
        outcome, verdict = (
            Outcome.DOES_NOT_HOLD,
            f"does not hold: randn is {100 * share:.0f}% here, not 45.6%",
        )
    look.summary = (
        f"{outcome_word(outcome)}: randn is {100 * share:.0f}% of the NumPy call here (published 45.6%)"
    )
    plaus = f"randn of 2,560 normals costs {fmt_ns(t_s - t_g)} here ({(t_s - t_g) / (128 * 20):.3g} ns per normal)"
    return pub, like, outcome, verdict, plaus


def _simd(c: Claim, look: Lookup, limits: dict) -> Evaluated:
    """elbolab's fused, hand-vectorised Rust over the tutorial's ndarray Rust, both looped in Rust."""
    tutorial, simd, tutorial_given, simd_given = c.specs
    _, simd_text = look.time(simd)
    r = look.speedup(tutorial, simd)
    pub = f"{simd_text}; {look.speedup_text(tutorial, simd)}"
    like = look.speedup_text(tutorial_given, simd_given) + " (eps given: no RNG in either)"
    if r is None:
        outcome, verdict = Outcome.NOT_MEASURED, NOT_MEASURED
    else:
        holds = ratio_holds(r, c.published)
        outcome = Outcome.HOLDS if holds else Outcome.DOES_NOT_HOLD
        verdict = ("holds" if holds else "does not hold") + f" (measured {fmt_x(r.value, *r.ci95)})"
    row = look.row(simd)
    if row is not None and row["timed_ok"] and not math.isnan(row["bw_share"]):
        verdict += (
            f"; the SIMD kernel runs at {100 * row['bw_share']:.0f}% of the bandwidth limit for its working "
            "set, so no further 2x is left for SIMD to find"
            if row["bw_share"] > 0.5
            else f"; the SIMD kernel is at {100 * row['bw_share']:.0f}% of the bandwidth limit"
        )
    if r is not None:
        look.summary = (
            f"{outcome_word(outcome)}: {simd.backend} {fmt_x(r.value)} over {tutorial.backend} (published 2x)"
        )
        if row is not None and row["timed_ok"] and not math.isnan(row["bw_share"]):
            look.summary += f", at {100 * row['bw_share']:.0f}% of the bandwidth limit"
    return pub, like, outcome, verdict, plausibility(limits, simd, 1.8e3)


EVALUATORS: dict[str, Callable[[Claim, Lookup, dict], Evaluated]] = {
    "time": _time, "ratio": _ratio, "cuda": _cuda, "memory": _memory, "profile": _profile, "simd": _simd,
}  # fmt: skip


def outcome_word(outcome: Outcome) -> str:
    return {Outcome.HOLDS: "holds", Outcome.HOLDS_ONLY_WHEN: "holds only partly",
            Outcome.DOES_NOT_HOLD: "does not hold", Outcome.NOT_MEASURED: NOT_MEASURED}[outcome]  # fmt: skip


def summary_line(verdict: str, look: Lookup) -> str:
    """One line for the first screen: the evaluator's own, or the verdict's first clause and the
    figure it rests on."""
    if look.summary:
        return look.summary
    head = re.sub(r" \([^()]*\)", "", verdict.split(" — ")[0])  # the condition without its gloss
    return f"{head}: {look.headline}" if look.headline and look.headline not in head else head


def check_claims(df: pd.DataFrame, run: Run, noise: ControlNoise | None = None) -> list[ClaimCheck]:
    """Every claim for one run (df: tables.measurement_table of that run; noise: its null control,
    computed here when not given)."""
    noise = noise if noise is not None else control_noise(list(run.measurements))
    index = Lookup.build_index(df)
    rust_pub = RUST_TUTORIAL if Lookup(df, run, noise, index).has(RUST_TUTORIAL) else RUST_INNER
    out = []
    for claim in CLAIMS:
        specs = tuple(rust_pub if s == RUST_PUB else s for s in claim.specs)
        claim = Claim(**{**claim.__dict__, "specs": specs})
        look = Lookup(df, run, noise, index)
        pub, like, outcome, verdict, plaus = EVALUATORS[claim.kind](claim, look, run.limits or {})
        out.append(ClaimCheck(claim.id, claim.claim, claim.figure, pub, like, verdict, outcome, plaus,
                              list(dict.fromkeys(look.missing)), summary_line(verdict, look)))  # fmt: skip
    return out
