"""The claims check: each published claim (../shared/CLAIMS.md, C1-C9) beside what this machine measured.

For every claim: the as-published setting (the tutorial's own comparison, unlike work included), the
like-for-like setting (same dtype, same work, same calling convention on both sides), a verdict and a
physical-plausibility line (the bandwidth a claimed time implies, against the limits measured in the run).

Verdict rules (stated in the report):
- an absolute time holds when this machine's median is within 2x of it (machines differ; an order of
  magnitude does not come from hardware alone);
- a ratio holds when its 95% CI overlaps [claim / 1.5, claim x 1.5];
- "holds only when ..." names the condition under which it holds (as published only, some batch sizes);
- a case the run lacks is "not measured in this run", with the elbolab command that would measure it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from harness.case import Case
from harness.limits import bandwidth_limit_for
from harness.report.tables import fmt_ns, fmt_x
from harness.results import per_call_samples
from harness.stats import ratio_of_medians
from harness.workloads import WORKLOADS

SETTING = {"batch": 128, "input_dim": 784, "latent_dim": 20}
TIME_FACTOR = 2.0
RATIO_FACTOR = 1.5
SHARE_POINTS = 0.15  # a profile share holds within 15 percentage points
NOT_MEASURED = "not measured in this run"


@dataclass(frozen=True)
class Spec:
    """A case the claims check looks up: backend, workload, variant, dtype, device (batch 128, 784, 20)."""

    backend: str
    workload: str
    variant: str
    dtype: str
    device: str = "cpu"

    def label(self) -> str:
        parts = [self.backend if self.device == "cpu" else f"{self.backend} {self.device}", self.workload]
        if self.variant != "eps=given":
            parts.append(self.variant)
        return " ".join(parts + [self.dtype])

    def command(self, batch: int = 128) -> str:
        cmd = (
            f"elbolab run --backend {self.backend} --workload {self.workload} --batch {batch} "
            f"--dtype {self.dtype} --threads 1 --device {self.device}"
        )
        if self.variant != "eps=given":
            cmd += f" --variant {self.variant}"
        return cmd

    def cost_bytes(self, batch: int = 128) -> int:
        case = Case(self.workload, self.backend, self.device, self.dtype, batch, variant=self.variant)
        return WORKLOADS[self.workload].cost(case).bytes


@dataclass
class ClaimCheck:
    id: str
    claim: str
    figure: str
    as_published: str
    like_for_like: str
    verdict: str
    plausibility: str
    commands: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


# ------------------------------------------------------------------------------------- lookups


class Lookup:
    """Measurements of one run at the claims' setting, found by Spec; remembers what was missing."""

    def __init__(self, df: pd.DataFrame, doc: dict):
        self.df, self.doc = df, doc
        self.missing: list[str] = []

    def row(self, spec: Spec, batch: int = 128, note_missing: bool = True):
        df = self.df
        if df.empty:
            if note_missing:
                self.missing.append(spec.command(batch))
            return None
        sel = df[
            (df.backend == spec.backend)
            & (df.workload == spec.workload)
            & (df.variant == spec.variant)
            & (df.dtype == spec.dtype)
            & (df.device == spec.device)
            & (df.batch == batch)
            & (df.input_dim == SETTING["input_dim"])
            & (df.latent_dim == SETTING["latent_dim"])
        ]
        if sel.empty:
            if note_missing:
                self.missing.append(spec.command(batch))
            return None
        return sel.sort_values("threads").iloc[0]  # the fewest threads: the tutorial's setting

    def has(self, spec: Spec, batch: int = 128) -> bool:
        """Whether the run measured `spec` (without noting it as missing)."""
        return self.row(spec, batch, note_missing=False) is not None

    def samples(self, row) -> list[float]:
        return per_call_samples(self.doc["measurements"][int(row["index"])])

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

    def ratio(self, slow: Spec, fast: Spec, batch: int = 128):
        """Speed-up of `fast` over `slow` (median slow / median fast) with its CI, or None."""
        a, b = self.row(slow, batch), self.row(fast, batch)
        if a is None or b is None or not a["timed_ok"] or not b["timed_ok"]:
            return None
        return ratio_of_medians(self.samples(b), self.samples(a))

    def ratio_text(self, slow: Spec, fast: Spec, batch: int = 128) -> str:
        r = self.ratio(slow, fast, batch)
        if r is None:
            bad = [s for s in (slow, fast) if (x := self.row(s, batch)) is None or not x["timed_ok"]]
            why = "; ".join(self._why(s, batch) for s in bad)
            return f"{fast.label()} over {slow.label()}: {why}"
        return f"{fast.label()} over {slow.label()}: {fmt_x(r.value, *r.ci95)}"

    def _why(self, spec: Spec, batch: int) -> str:
        row = self.row(spec, batch)
        return f"{spec.label()} {NOT_MEASURED}" if row is None else f"{spec.label()} {row['status']}"

    def batches(self) -> list[int]:
        return sorted(set(self.df.batch)) if not self.df.empty else []


def _time_holds(measured: float | None, claimed_ns: float) -> bool | None:
    if measured is None:
        return None
    return claimed_ns / TIME_FACTOR <= measured <= claimed_ns * TIME_FACTOR


def _ratio_holds(r, claimed: float) -> bool | None:
    if r is None:
        return None
    lo, hi = r.ci95
    return hi >= claimed / RATIO_FACTOR and lo <= claimed * RATIO_FACTOR


def _time_words(measured: float | None, claimed_ns: float) -> str:
    if measured is None:
        return NOT_MEASURED
    f = measured / claimed_ns
    if _time_holds(measured, claimed_ns):
        return f"holds (measured {fmt_ns(measured)}, {f:.2g}x the claim)"
    direction = "slower" if f > 1 else "faster"
    return f"does not hold (measured {fmt_ns(measured)}: {max(f, 1 / f):.3g}x {direction} than claimed)"


def _plausibility(limits: dict, spec: Spec, claimed_ns: float, what: str = "") -> str:
    nbytes = spec.cost_bytes()
    implied = nbytes / (claimed_ns * 1e-9)
    # every claim is about one thread (the tutorial's setting), so is the limit it is held to
    lim = bandwidth_limit_for(limits, nbytes, threads=1) if limits else None
    head = (
        f"{what or fmt_ns(claimed_ns)} for {nbytes / 1e6:.3g} MB ({spec.workload}, {spec.dtype}) "
        f"implies {implied / 1e9:.3g} GB/s"
    )
    if not lim:
        return head + "; no limits measured in this run"
    share = implied / lim[0]
    if spec.device != "cpu":
        return head + f" (device memory; the CPU limit here is {lim[0] / 1e9:.3g} GB/s)"
    if share > 1.5:
        verdict = "physically implausible on this machine: a measurement error, not a speed-up"
    elif share > 1.0:
        verdict = "at or beyond the limit: suspicious"
    else:
        verdict = "plausible"
    return head + (
        f", {share:.2g}x the measured one-thread {lim[0] / 1e9:.3g} GB/s ({lim[1]} working set): {verdict}"
    )


def _combine(pub: bool | None, like: bool | None, cond_like: str, extra: str = "") -> str:
    if pub is None and like is None:
        return NOT_MEASURED
    if pub and (like or like is None):
        return "holds" + (" (like-for-like not measured)" if like is None else "")
    if pub and like is False:
        return f"holds only when {cond_like}"
    if pub is False and like:
        return "holds only when like for like (the published setting does not reproduce)"
    if extra:
        return extra
    return "does not hold" if pub is False or like is False else NOT_MEASURED


def _batches_where(look: Lookup, fn: Callable[[int], bool | None]) -> list[int]:
    return [b for b in look.batches() if fn(b)]


# -------------------------------------------------------------------------------------- claims

NUMPY_PUB = Spec("numpy", "elbo", "eps=sampled", "float64")
NUMPY_GIVEN = Spec("numpy", "elbo", "eps=given", "float64")
# the tutorial's PyTorch: float32, forward + elbo.backward(), eps drawn inside the timed call
TORCH_PUB = Spec("torch", "elbo_grad", "eps=sampled", "float32")
TORCH_LIKE = Spec("torch", "elbo", "eps=sampled", "float64")
CUDA_PUB = Spec("torch", "elbo_grad", "eps=sampled", "float32", "cuda")
CUDA_LIKE = Spec("torch", "elbo", "eps=sampled", "float64", "cuda")
# the tutorial's Rust: ndarray expressions with temporaries, a loop of iterations inside Rust
RUST_TUTORIAL = Spec("rust-tutorial", "elbo", "eps=sampled", "float64")
# elbolab's fused, hand-vectorised Rust, looped inside Rust (the stand-in when rust-tutorial is absent)
RUST_INNER = Spec("rust-inner", "elbo", "eps=sampled", "float64")
RUST_LIKE = Spec("rust", "elbo", "eps=sampled", "float64")
RUST_GIVEN = Spec("rust", "elbo", "eps=given", "float64")


def check_claims(df: pd.DataFrame, doc: dict) -> list[ClaimCheck]:
    """Every claim for one run (df: tables.measurement_table of that run)."""
    limits = doc.get("limits") or {}
    out: list[ClaimCheck] = []
    RUST_PUB = RUST_TUTORIAL if Lookup(df, doc).has(RUST_TUTORIAL) else RUST_INNER  # noqa: N806

    def add(cid, claim, figure, pub, like, verdict, plaus, look):
        cmds = list(dict.fromkeys(look.missing))
        out.append(ClaimCheck(cid, claim, figure, pub, like, verdict, plaus, cmds))

    # C1
    look = Lookup(df, doc)
    t_pub, pub = look.time(NUMPY_PUB)
    t_like, like = look.time(NUMPY_GIVEN)
    verdict = _time_words(t_pub, 0.182e6)
    if t_pub is not None and not _time_holds(t_pub, 0.182e6) and _time_holds(t_like, 0.182e6):
        verdict = "holds only when eps is given (no RNG in the timed call); " + verdict
    add(
        "C1",
        "NumPy ELBO per call",
        "0.182 ms (5,494 iter/s)",
        pub,
        like + " (eps drawn outside the call)",
        verdict,
        _plausibility(limits, NUMPY_PUB, 0.182e6),
        look,
    )

    # C2
    look = Lookup(df, doc)
    t_pub, pub = look.time(TORCH_PUB)
    t_like, like = look.time(TORCH_LIKE)
    r_like = look.ratio_text(NUMPY_PUB, TORCH_LIKE)
    verdict = _time_words(t_pub, 0.245e6)
    add(
        "C2",
        "PyTorch CPU, forward + backward",
        "0.245 ms (4,082 iter/s)",
        pub + " (float32, forward + backward, as published)",
        like + f" (forward only, float64: the work NumPy did); {r_like}",
        verdict,
        _plausibility(limits, TORCH_PUB, 0.245e6),
        look,
    )

    # C3
    look = Lookup(df, doc)
    t_pub, pub = look.time(CUDA_PUB)
    r_pub = look.ratio(TORCH_PUB, CUDA_PUB)
    _, like = look.time(CUDA_LIKE)
    holds_t, holds_r = _time_holds(t_pub, 0.089e6), _ratio_holds(r_pub, 2.75)
    if t_pub is None and r_pub is None:
        verdict = NOT_MEASURED
    elif holds_t and holds_r:
        verdict = "holds"
    elif holds_r:
        verdict = f"holds only for the ratio (2.75x); time: {_time_words(t_pub, 0.089e6)}"
    elif holds_t:
        verdict = "holds only for the time; ratio over CPU " + (
            fmt_x(r_pub.value, *r_pub.ci95) if r_pub else NOT_MEASURED
        )
    else:
        verdict = "does not hold"
    add(
        "C3",
        "PyTorch CUDA, forward + backward; 2.75x over CPU",
        "0.089 ms (11,236 iter/s); 2.75x",
        pub + "; " + look.ratio_text(TORCH_PUB, CUDA_PUB),
        like + " (forward only, float64: the work NumPy did); " + look.ratio_text(NUMPY_PUB, CUDA_LIKE),
        verdict,
        _plausibility(limits, CUDA_PUB, 0.089e6),
        look,
    )

    # C4
    look = Lookup(df, doc)
    t_pub, pub = look.time(RUST_PUB)
    t_like, like = look.time(RUST_LIKE)
    v_pub, v_like = _time_holds(t_pub, 3.6e3), _time_holds(t_like, 3.6e3)
    verdict = _combine(v_pub, v_like, "the loop runs inside Rust (no per-call Python/FFI crossing)")
    if verdict != NOT_MEASURED:
        verdict += (
            f" — as published: {_time_words(t_pub, 3.6e3)}; like for like: {_time_words(t_like, 3.6e3)}"
        )
    add(
        "C4",
        "Rust (ndarray) per call",
        "0.0036 ms (277,778 iter/s)",
        pub
        + (
            " (the tutorial's ndarray code, loop inside Rust, as published)"
            if RUST_PUB is RUST_TUTORIAL
            else " (elbolab's fused kernel looped inside Rust; rust-tutorial not in this run)"
        ),
        like + " (called from Python per call, like NumPy)",
        verdict,
        _plausibility(limits, RUST_PUB, 3.6e3),
        look,
    )

    # C5, C6: ratios
    for cid, claim, figure, slow_pub, slow_like, fast_pub, fast_like, claimed, note in (
        (
            "C5",
            "Rust vs NumPy",
            "50.6x faster",
            NUMPY_PUB,
            NUMPY_PUB,
            RUST_PUB,
            RUST_LIKE,
            50.6,
            "both called from Python, same work",
        ),
        (
            "C6a",
            "Rust vs PyTorch CPU",
            "68.1x faster",
            TORCH_PUB,
            TORCH_LIKE,
            RUST_PUB,
            RUST_LIKE,
            68.1,
            "same work (forward, float64, eps sampled), both called from Python",
        ),
        (
            "C6b",
            "Rust vs PyTorch CUDA",
            "24.7x faster",
            CUDA_PUB,
            CUDA_LIKE,
            RUST_PUB,
            RUST_LIKE,
            24.7,
            "same work (forward, float64, eps sampled), both called from Python",
        ),
    ):
        look = Lookup(df, doc)
        r_pub, r_like = look.ratio(slow_pub, fast_pub), look.ratio(slow_like, fast_like)
        v_pub, v_like = _ratio_holds(r_pub, claimed), _ratio_holds(r_like, claimed)
        extra = ""
        if v_pub is False:
            where = _batches_where(
                look, lambda b, s=slow_pub, f=fast_pub, c=claimed, lk=look: _ratio_holds(lk.ratio(s, f, b), c)
            )
            if where:
                extra = f"holds only when batch is {', '.join(map(str, where))} (not at 128)"
        verdict = _combine(v_pub, v_like, "comparing unlike work as published", extra)
        implied_rust = None
        t_slow, _ = look.time(slow_pub)
        if t_slow is not None:
            implied_rust = t_slow / claimed
        plaus = (
            _plausibility(
                limits,
                fast_pub,
                implied_rust,
                f"{claimed}x over this machine's {slow_pub.label()} "
                f"({fmt_ns(t_slow)}) means Rust in {fmt_ns(implied_rust)}, which",
            )
            if implied_rust
            else _plausibility(limits, fast_pub, 3.6e3, "the claimed Rust time 0.0036 ms")
        )
        add(
            cid,
            claim,
            figure,
            look.ratio_text(slow_pub, fast_pub),
            look.ratio_text(slow_like, fast_like) + f" ({note})",
            verdict,
            plaus,
            look,
        )

    # C7 memory: peak RSS of the case's worker process, and what the kernel itself added to it
    look = Lookup(df, doc)
    mem = {}
    for spec in (NUMPY_PUB, RUST_LIKE):
        row = look.row(spec)
        mem[spec.backend] = (
            (doc["measurements"][int(row["index"])].get("memory") or {}) if row is not None else {}
        )
    npm, rsm = mem.get("numpy", {}), mem.get("rust", {})
    if npm.get("peak_rss_bytes") and rsm.get("peak_rss_bytes"):
        ratio = npm["peak_rss_bytes"] / rsm["peak_rss_bytes"]
        pub = (
            f"peak RSS of the worker process: numpy {npm['peak_rss_bytes'] / 1e6:.3g} MB, "
            f"rust {rsm['peak_rss_bytes'] / 1e6:.3g} MB ({ratio:.2g}x)"
        )
        verdict = (
            "holds"
            if 4.2 / RATIO_FACTOR <= ratio <= 4.2 * RATIO_FACTOR
            else f"does not hold: {ratio:.2g}x — both are Python processes (the Rust kernel is called from Python)"
        )
        if npm.get("baseline_rss_bytes") and rsm.get("baseline_rss_bytes"):
            own = {
                k: (m["peak_rss_bytes"] - m["baseline_rss_bytes"]) / 1e6
                for k, m in (("numpy", npm), ("rust", rsm))
            }
            like = (
                f"above the process's RSS at the case's start: numpy {own['numpy']:.2g} MB (its temporaries), "
                f"rust {own['rust']:.2g} MB; the interpreter and libraries hold "
                f"{npm['baseline_rss_bytes'] / 1e6:.3g} MB either way"
            )
        else:
            like = "per-case baseline not recorded in this run"
    else:
        pub, like, verdict = f"peak RSS: {NOT_MEASURED}", NOT_MEASURED, NOT_MEASURED
    inputs = NUMPY_PUB.cost_bytes()
    add(
        "C7",
        "memory in use",
        "Python ~50 MB vs Rust ~12 MB (4.2x less)",
        pub,
        like,
        verdict,
        f"the kernel's own data is {inputs / 1e6:.2g} MB; a 38 MB difference is an interpreter and its "
        "libraries (a standalone Rust binary has none), not the ELBO",
        look,
    )

    # C8 profile: randn share = (t sampled - t given) / t sampled
    look = Lookup(df, doc)
    t_s, _ = look.time(NUMPY_PUB)
    t_g, _ = look.time(NUMPY_GIVEN)
    t_rs, _ = look.time(RUST_LIKE)
    t_rg, _ = look.time(RUST_GIVEN)
    if t_s and t_g:
        share = (t_s - t_g) / t_s
        pub = (
            f"randn share of the NumPy call: {100 * share:.0f}% (eps sampled {fmt_ns(t_s)} vs given "
            f"{fmt_ns(t_g)}); sum/mean and exp shares are not separated by the lab"
        )
        verdict = (
            "holds for randn"
            if abs(share - 0.456) <= SHARE_POINTS
            else f"does not hold: randn is {100 * share:.0f}% here, not 45.6%"
        )
        per_normal = (t_s - t_g) / (128 * 20)
        plaus = f"randn of 2,560 normals costs {fmt_ns(t_s - t_g)} here ({per_normal:.3g} ns per normal)"
    else:
        pub, verdict, plaus = f"randn share: {NOT_MEASURED}", NOT_MEASURED, "n/a"
    like = (
        f"Rust: eps sampled {fmt_ns(t_rs)} vs given {fmt_ns(t_rg)} "
        f"(RNG share {100 * (t_rs - t_rg) / t_rs:.0f}%)"
        if t_rs and t_rg
        else f"Rust RNG share: {NOT_MEASURED}"
    )
    add(
        "C8",
        "profile of the NumPy kernel",
        "randn 45.6%, sum/mean 35.8%, exp 13.0%",
        pub,
        like,
        verdict,
        plaus,
        look,
    )

    # C9: elbolab's fused, hand-vectorised Rust (AVX2 intrinsics) over the tutorial's ndarray Rust,
    # both looped inside Rust as the tutorial timed
    look = Lookup(df, doc)
    tut_given = Spec("rust-tutorial", "elbo", "eps=given", "float64")
    inner_given = Spec("rust-inner", "elbo", "eps=given", "float64")
    t_simd, simd_text = look.time(RUST_INNER)
    r = look.ratio(RUST_TUTORIAL, RUST_INNER)
    pub = f"{simd_text}; {look.ratio_text(RUST_TUTORIAL, RUST_INNER)}"
    like = look.ratio_text(tut_given, inner_given) + " (eps given: no RNG in either)"
    if r is None:
        verdict = NOT_MEASURED
    else:
        verdict = (
            "holds" if _ratio_holds(r, 2.0) else "does not hold"
        ) + f" (measured {fmt_x(r.value, *r.ci95)})"
    row = look.row(RUST_INNER)
    if row is not None and row["timed_ok"] and not math.isnan(row["bw_share"]):
        verdict += (
            f"; the SIMD kernel runs at {100 * row['bw_share']:.0f}% of the bandwidth limit for its working "
            "set, so no further 2x is left for SIMD to find"
            if row["bw_share"] > 0.5
            else f"; the SIMD kernel is at {100 * row['bw_share']:.0f}% of the bandwidth limit"
        )
    add(
        "C9",
        "hand-written SIMD Rust",
        "a further 2x over ndarray (0.0018 ms), 'expected'",
        pub,
        like,
        verdict,
        _plausibility(limits, RUST_INNER, 1.8e3),
        look,
    )
    return out


def claims_table(checks: list[ClaimCheck]) -> pd.DataFrame:
    return pd.DataFrame([c.to_json() for c in checks])
