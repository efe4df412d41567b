"""What in a run looks wrong, with its likely cause: never silent.

- slower with more threads than with one (the shared verdict says so): oversubscription or a
  parallel overhead bigger than the work;
- far below the roofline its peers reach: a memory-bound kernel at a fraction of the bandwidth that
  another backend reaches on the same case;
- a first call orders of magnitude above the steady state: compilation or lazy initialisation (it
  is reported apart, never in the samples, but a reader should know it is there);
- CPU time far above wall time x threads: more threads ran than were asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from elbolab.analyse.verdict import judge
from elbolab.model.case import Case
from elbolab.model.measurement import Measurement
from elbolab.model.roofline import bandwidth_share
from elbolab.store.results import Run

FIRST_CALL_FACTOR = 1000.0  # a first call this many times the median is flagged
OVERSUBSCRIBED = 1.5  # CPU time above this multiple of wall x threads
ROOFLINE_GAP = 4.0  # a fifth of the share a peer reaches ...
ROOFLINE_PEER = 0.5  # ... when that peer reaches at least half the limit
MEMORY_BOUND = ("elbo", "elbo_grad")
# call_n(n) per call below this share of a loop of call()'s (where a call is long enough that the
# loop's overhead cannot explain it): shown, not judged. Timing alone cannot tell a call_n that does
# half its calls (0.5) from honest code that is faster in its own loop: the tutorial's Rust, which
# allocates its temporaries every call, measured 0.60 at batch 1024, and load alone gave 0.40 once
# (elbolab.measure.evidence judges call_n by checking call_n(1) like a call instead)
CALL_N_ANOMALY = 0.7


@dataclass(frozen=True)
class Anomaly:
    case: Case
    kind: str
    detail: str
    likely_cause: str

    def to_json(self) -> dict:
        return {
            "case": self.case.to_json(),
            "kind": self.kind,
            "detail": self.detail,
            "likely_cause": self.likely_cause,
        }


def scan(run: Run) -> list[Anomaly]:
    out: list[Anomaly] = []
    ok = [m for m in run.measurements if m.timed_ok]
    one_thread = {m.case.key()[:9] + m.case.key()[10:]: m for m in ok if m.case.threads == 1}
    for m in ok:
        c = m.case
        if c.threads > 1:
            single = one_thread.get(c.key()[:9] + c.key()[10:])
            if single is not None:
                j = judge(single.per_call_ns, m.per_call_ns, workload=c.workload)
                if j.regression:  # slower with confidence, and by more than the threshold
                    out.append(Anomaly(c, "slower with more threads",
                        f"{j.ratio:.2f}x the time at 1 thread",
                        "oversubscription (threads competing for the cores, e.g. parallel loops calling a threaded "
                        "BLAS) or a parallel overhead bigger than the work at this size"))  # fmt: skip
        if m.first_call_ns and m.summary and m.first_call_ns > FIRST_CALL_FACTOR * m.summary.median:
            out.append(Anomaly(c, "slow first call",
                f"first call {m.first_call_ns / m.summary.median:,.0f}x the steady state",
                "compilation (JIT) or lazy initialisation in the first call; it is reported apart, not in the samples"))  # fmt: skip
        if m.cpu_ns and m.wall_ns and m.cpu_ns > OVERSUBSCRIBED * m.wall_ns * c.threads:
            out.append(Anomaly(c, "oversubscribed",
                f"CPU time {m.cpu_ns / m.wall_ns:.1f}x wall time with {c.threads} thread(s) asked",
                "more threads ran than were asked for (a library's own pool, or spinning workers)"))  # fmt: skip
    for m in ok:
        e, c = m.evidence, m.case
        if e is None:
            continue
        if e.call_n_ratio is not None and e.call_n_ratio < CALL_N_ANOMALY:
            out.append(Anomaly(c, "call_n faster per call than call()",
                f"call_n(n) takes {e.call_n_ratio:.2f} of a loop of call()'s time per call",
                "the backend's own loop avoids work a single call does (allocations, dispatch), or it does fewer "
                "than n calls; call_n(1) was checked like a call"))  # fmt: skip
        if c.threads > 1 and e.busy_threads is not None and e.busy_threads > c.threads:
            out.append(Anomaly(c, "more threads did work than asked",
                f"{e.busy_threads} threads did work with {c.threads} asked (its CPU time stayed within {c.threads} cores)",
                "serial parts on the calling thread, parallel parts on a pool of the size asked"))  # fmt: skip
    out += _below_roofline(run, ok)
    return out


def _below_roofline(run: Run, ok: list[Measurement]) -> list[Anomaly]:
    """Memory-bound cases (eps given: drawing normals is arithmetic, not memory traffic) far below
    the share of the bandwidth limit that another backend reaches on the same case."""
    groups: dict[tuple, list[tuple[Measurement, float]]] = {}
    for m in ok:
        c = m.case
        if c.workload not in MEMORY_BOUND or c.device != "cpu" or c.batch < 1024 or c.variant != "eps=given":
            continue
        share = bandwidth_share(m, run.limits or {})
        if share is not None:
            groups.setdefault((c.workload, c.variant, c.dtype, c.batch, c.threads), []).append((m, share))
    out = []
    for key in sorted(groups):
        group = groups[key]
        peer, best = max(group, key=lambda ms: ms[1])
        if not best >= ROOFLINE_PEER:
            continue
        for m, share in group:
            if share < best / ROOFLINE_GAP:
                out.append(Anomaly(m.case, "far below the roofline",
                    f"{share:.0%} of the bandwidth limit where {peer.case.backend} reaches {best:.0%}",
                    "temporaries allocated and filled every call, or passes not fused"))  # fmt: skip
    return out
