"""The runner's judgement of a case, made in the parent from what its worker sent, where no code of
the backend can reach it: are the outputs of the checked calls right for the inputs each was given
(elbolab.model.workloads.check_outputs against the float64 reference of that input set), are eps
drawn inside the call fresh standard normal draws, did the work happen inside the timed call
(outputs() is cheap, call_n(n) does n calls), on the threads and processes asked for (the census),
and is the time physically possible (its rate below the machine's ceiling at its working set,
re-probed before anything is called implausible).

status: incorrect when an output is wrong for its inputs (a bug, or work not done); implausible
when the answers are right but the time is not a time of the case as asked; else ok.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from elbolab.model.accuracy import Tracked, compare_outputs
from elbolab.model.case import Case
from elbolab.model.measurement import Check, Cost, Evidence, Measurement, Memory, not_measured
from elbolab.model.roofline import bandwidth_limit_for, flops_limit_for
from elbolab.model.workloads import WORKLOADS, check_draws, check_outputs, expected_outputs, input_set

# outputs() after a call: slower than this many calls (and than OUTPUTS_FLOOR_NS) is work that is
# not in the timed call. CPU only: a device backend's outputs() copies its results to the host.
OUTPUTS_CALLS = 2.0
OUTPUTS_FLOOR_NS = 50_000
# CPU time of the process and its children beyond this multiple of wall x threads asked
CPU_MARGIN = 1.25

Reprobe = Callable[[float, int], float | None]  # (working set bytes, threads) -> bytes/s now


@dataclass
class CaseRecord:
    """Everything the parent gathered for one case while its cell was measured."""

    case: Case
    opened: dict | None = None  # the worker's answer to "open"
    not_opened: Measurement | None = None  # skipped, or failed to open
    lost: tuple[str, str] | None = None  # (status, reason): the worker died, hung or raised
    samples: list[list[int]] = field(default_factory=list)  # per round
    sets: list[int] = field(default_factory=list)  # the input set of each round
    checks: list[dict] = field(default_factory=list)
    draws: list[np.ndarray] = field(default_factory=list)
    census: dict = field(default_factory=dict)
    device_ns: list[float] = field(default_factory=list)


class References:
    """The float64 references of a run's input sets, each computed once and shared by every backend
    and thread count that checks the same inputs (the tracked reference costs ~10x the plain
    computation: 1.6 s for elbo_grad at batch 8192)."""

    def __init__(self, size: int = 8):
        self._inputs: dict[tuple, dict[str, np.ndarray]] = {}
        self.size = size

    def inputs(self, case: Case, k: int) -> dict[str, np.ndarray]:
        key = (*_data_key(case), k)
        if key not in self._inputs:
            if len(self._inputs) >= self.size:
                self._inputs.pop(next(iter(self._inputs)))
            made = input_set(case, k)
            for value in made.values():
                value.flags.writeable = False  # never changed here: their checksums are remembered
            self._inputs[key] = made
        return self._inputs[key]


def _data_key(case: Case) -> tuple:
    """What a case's inputs are made from: never the backend, device or thread count."""
    return (case.workload, case.variant, case.dtype, case.batch, case.input_dim, case.latent_dim,
            case.hidden_dim, case.importance_samples, case.seed)  # fmt: skip


def judge(rec: CaseRecord, refs: References, limits: dict, reprobe: Reprobe | None) -> Measurement:
    """The case's Measurement: its samples, the check of its outputs, its evidence and its status."""
    case = rec.case
    workload = WORKLOADS[case.workload]
    cost = workload.cost(case)
    if rec.not_opened is not None:
        return rec.not_opened
    if rec.opened is None:
        return not_measured(case, *(rec.lost or ("failed", "the case was not opened")), cost)
    o = rec.opened
    samples = [s for block in rec.samples for s in block]
    base = dict(loops=o["loops"], first_call_ns=o["first_call_ns"], memory=Memory(**o["memory"]),
                cost=Cost(**o["cost"]), calibration=tuple(tuple(c) for c in o["calibration"]))  # fmt: skip
    if rec.lost is not None or not samples:
        status, reason = rec.lost or ("failed", "no samples were taken")
        return Measurement(case, status, reason, notes=o["notes"], **base)
    check, wrong, counts = _checked_outputs(rec, refs)
    notes = []
    if rec.draws:
        shapes = {np.shape(d) for d in rec.draws}
        expected = (case.batch, case.latent_dim)
        problem = (f"eps of shape {sorted(shapes)}, expected {expected}" if shapes != {expected}
                   else check_draws(rec.draws))  # fmt: skip
        if problem:
            wrong = wrong or f"eps drawn in {len(rec.draws)} consecutive calls: {problem}"
    per_call = float(np.median(samples)) / o["loops"]
    evidence = _evidence(rec, per_call, cost, limits, reprobe, counts, notes)
    if wrong:
        status, reason = "incorrect", wrong
    else:
        implausible = _implausible(rec, evidence, per_call)
        status, reason = ("implausible", implausible) if implausible else ("ok", None)
    census = rec.census
    return Measurement(
        case, status, reason, samples_ns=tuple(float(s) for s in samples),
        rounds=tuple(len(b) for b in rec.samples) if len(rec.samples) > 1 else (), check=check,
        notes=dict(o["notes"], input_sets=rec.sets), evidence=evidence,
        cpu_ns=census.get("cpu_ns"), wall_ns=census.get("wall_ns"), device_samples_ns=tuple(rec.device_ns),
        **base,
    )  # fmt: skip


def _checked_outputs(rec: CaseRecord, refs: References) -> tuple[Check | None, str | None, dict]:
    """Every checked call against the reference for the input set it was given: the Check to keep
    (the first full check of set 0), the first wrong answer (or None), and the counts."""
    case, workload = rec.case, WORKLOADS[rec.case.workload]
    rng = np.random.default_rng()
    kept: Check | None = None
    kept_set = -1
    first_ok: dict[int, dict] = {}  # set -> the check verified for it (a repeat must match it)
    counts = {"checked_calls": 0, "checked_samples": 0}
    for i, c in enumerate(rec.checks):
        counts["checked_calls" if c["calls"] else "checked_samples"] += 1
        got, k = c["outputs"], c["set"]
        what = (f"a single call on input set {k}" if c["calls"] == 1 else
                f"the last call of a timed sample on input set {k}" if c["calls"] == 0 else
                f"call_n({c['calls']}) on input set {k}")  # fmt: skip
        problem = outputs_problem(got, case)
        if problem:
            return None, f"check {i + 1} of {len(rec.checks)}, {what}: {problem}", counts
        if k in first_ok and _same(c, first_ok[k]):
            continue  # the same answer as a verified call on the same inputs
        # every element of the case's own inputs' answer is checked once (its first check of set 0);
        # the other checks hold large outputs at a random sample of their elements: picked by the
        # runner where the worker kept them (elbolab.measure.cells), else drawn here
        whole = k == 0 and 0 not in first_ok
        check = _check(workload, case, refs.inputs(case, k), got, rng=None if whole else rng,
                       picked=c.get("picked") or {}, shapes=c.get("held") or {})  # fmt: skip
        if not check.ok:
            stale = ""
            other = first_ok.get(1 - k)
            if other is not None and _same(c, other):
                stale = " (the outputs of the other input set: work done before the inputs changed)"
            return check, f"check {i + 1} of {len(rec.checks)}, {what}: {check.detail}{stale}", counts
        first_ok.setdefault(k, c)
        if kept is None or (k == 0 and kept_set != 0):  # the check of the case's own inputs, if any
            kept, kept_set = check, k
    return kept, None, counts


def outputs_problem(got: object, case: Case) -> str | None:
    """Why `got` is no answer at all, or None: outputs() must give a mapping of names to real
    arrays, of the case's dtype (a scalar may be a wider float: a Python float is float64). A
    complex answer is refused here: its real part could pass the check, the imaginary part
    being dropped without a word."""
    if isinstance(got, str):  # the worker's description of what outputs() returned instead
        return got
    if not isinstance(got, dict):
        return f"outputs() returned {type(got).__name__}, not a mapping of output names to arrays"
    for name, value in got.items():
        a = np.asarray(value)
        if a.dtype.kind != "f":
            return f"output {name!r} is {a.dtype} ({_KINDS.get(a.dtype.kind, 'not a number')}), not real floating point"
        if a.ndim and a.dtype != np.dtype(case.dtype):
            return f"output {name!r} is an array of {a.dtype}; the case is {case.dtype}"
    return None


_KINDS = {"c": "complex", "i": "integer", "u": "integer", "b": "boolean", "O": "Python objects",
          "U": "text", "S": "bytes", "M": "dates", "m": "time spans", "V": "raw bytes"}  # fmt: skip


SAMPLED_ELEMENTS = 1 << 16  # of an output larger than this, the elements a sampled check holds


def _check(workload, case: Case, inputs: dict, got: dict, rng: np.random.Generator | None,
           picked: dict[str, np.ndarray] | None = None, shapes: dict[str, list[int]] | None = None) -> Check:  # fmt: skip
    """check_outputs, or (with `rng` or `picked`) the same on a random sample of each large
    output's elements: `picked` names the flat indices the values in `got` were taken at (of an
    output of the shape in `shapes`, which must be the reference's); `rng`
    draws them here for a large output sent whole. A missing row or a stale answer moves a sum and
    a great many elements; a full check of every element costs ~0.6 s for elbo_grad at batch 8192.
    With eps drawn inside the call, the backend's draw comes whole (the outputs it decides are made
    from it) and the rest is sampled like any other output."""
    picked = picked or {}
    if rng is None and not picked:
        return check_outputs(workload, case, inputs, got)
    expected, got, problems = expected_outputs(workload, case, inputs, got)
    got_s, want_s = dict(got), {}
    for name, want in expected.items():
        value = got.get(name)
        if name in picked:
            idx = np.asarray(picked[name])
            shape = tuple((shapes or {}).get(name, ()))
            if shape != want.value.shape or np.size(value) != idx.size:
                # held in another shape than the reference's: compare_output says which (no copy made)
                want_s[name], got_s[name] = want, np.broadcast_to(np.float64(np.nan), shape)
                continue
        elif rng is not None and value is not None and want.value.size > SAMPLED_ELEMENTS \
                and np.size(value) == want.value.size:  # fmt: skip
            idx = np.sort(rng.choice(want.value.size, SAMPLED_ELEMENTS, replace=False))
            got_s[name] = np.asarray(value).reshape(-1)[idx]
        else:
            want_s[name] = want  # small, or not comparable element by element: as a whole
            continue
        want_s[name] = Tracked(want.value.reshape(-1)[idx], want.worst.reshape(-1)[idx],
                               want.careful.reshape(-1)[idx], want.u)  # fmt: skip
    return compare_outputs(got_s, want_s, case.dtype, problems, workload.directions)


def _same(a: dict, b: dict) -> bool:
    """Whether two checks' outputs are the same answer, element for element where both have the
    element (a picked output against a whole one at its indices; two picked at other indices are
    not known to be the same)."""
    oa, ob = a["outputs"], b["outputs"]
    if oa.keys() != ob.keys():
        return False
    pa, pb = a.get("picked") or {}, b.get("picked") or {}
    for k in oa:
        if k == "eps":
            continue
        x, y = np.asarray(oa[k]), np.asarray(ob[k])
        if k in pa and k in pb:
            if not np.array_equal(pa[k], pb[k]) or a["held"][k] != b["held"][k]:
                return False
        elif k in pa or k in pb:
            (picked, shape), whole = ((pa[k], a["held"][k]), y) if k in pa else ((pb[k], b["held"][k]), x)
            if list(whole.shape) != list(shape):
                return False
            if k in pa:
                y = whole.reshape(-1)[picked]
            else:
                x = whole.reshape(-1)[picked]
        if not np.array_equal(x, y, equal_nan=True):
            return False
    return True


def _floor_size(limits: dict, working_set_bytes: float) -> list[float]:
    """The largest swept working set not above the case's (where its ceiling is read), if any."""
    sizes = [
        r["working_set_bytes"] for r in limits.get("bandwidth_sweep") or [] if r.get("working_set_bytes")
    ]
    below = [s for s in sizes if s <= working_set_bytes]
    return [max(below)] if below and max(below) != working_set_bytes else []


def _evidence(rec: CaseRecord, per_call: float, cost: Cost, limits: dict, reprobe: Reprobe | None,
              counts: dict, notes: list[str]) -> Evidence:  # fmt: skip
    o, census, case = rec.opened, rec.census, rec.case
    outputs_ns = min((c["outputs_ns"] for c in rec.checks), default=None)
    share = None
    if case.device == "cpu" and limits and per_call > 0:
        bw = bandwidth_limit_for(limits, cost.bytes, case.threads)
        if bw:
            rate = cost.bytes / (per_call / 1e9)
            share = rate / bw[0]
            if share > 1.0 and reprobe is not None:
                # at the case's working set, and again at the swept size its ceiling was read at:
                # near a cache's edge that probe is the noisiest of the sweep (2 MiB, this VM's L2,
                # read 37 GB/s in one make bench and 29 in the next, where an honest Rust case ran
                # at 28.7)
                sizes = [cost.bytes, *_floor_size(limits, cost.bytes)]
                probed = [(size, reprobe(size, case.threads) or 0.0) for size in sizes]
                now = max(rate_now for _, rate_now in probed)
                if now:
                    share = rate / max(bw[0], now)
                    notes.append("re-probed the bandwidth at " + ", ".join(
                        f"{size / 2**20:.3g} MiB: {rate_now / 1e9:.3g} GB/s" for size, rate_now in probed))  # fmt: skip
    flops_share = None
    if case.device == "cpu" and limits and per_call > 0 and cost.flops:
        peak = flops_limit_for(limits, case.dtype, case.threads)
        if peak:
            flops_share = cost.flops / (per_call / 1e9) / peak
    if o.get("loads"):
        notes.append("inputs rotated through the backend's load(): a copy the harness cannot see")
    return Evidence(
        input_sets=len(set(rec.sets) | {c["set"] for c in rec.checks}),
        rotations=sum(1 for a, b in zip(rec.sets, rec.sets[1:], strict=False) if a != b),
        outputs_ns=float(outputs_ns) if outputs_ns is not None else None,
        draws_checked=len(rec.draws),
        call_n_ratio=o.get("call_n_ratio"),
        busy_threads=census.get("busy_threads"),
        children=census.get("children"),
        children_cpu_ns=census.get("children_cpu_ns"),
        pinned_cpus=tuple(census["pinned"]) if census.get("pinned") else None,
        ceiling_share=share,
        flops_share=flops_share,
        notes=tuple(notes),
        **counts,
    )


def _implausible(rec: CaseRecord, e: Evidence, per_call: float) -> str | None:
    """Why the time is not a time of the case as asked, or None."""
    case, census = rec.case, rec.census
    if e.ceiling_share is not None and e.ceiling_share > 1.0:
        return (f"{e.ceiling_share:.0%} of the bandwidth this machine reaches at the case's working set "
                "(re-probed): faster than physics allows, a measurement error, not a speed-up")  # fmt: skip
    if e.flops_share is not None and e.flops_share > 1.0:
        return (f"{e.flops_share:.0%} of this machine's peak flop rate (its matrix products): faster than the "
                "arithmetic the case must do allows")  # fmt: skip
    if e.children:
        return f"started {e.children} child process(es): work done outside the measured process"
    # one thread asked: any other thread that did work is work the case did not ask for (pinned to
    # one core it gains nothing, but it is not a one-thread time); with more threads asked a backend
    # may spread serial and parallel parts over more threads than run at once, so there the CPU
    # time is what counts (below), and the pinning bounds it
    if case.threads == 1 and e.busy_threads is not None and e.busy_threads > 1:
        return f"{e.busy_threads} threads did work with 1 asked (/proc census)"
    wall, cpu = census.get("wall_ns") or 0, (census.get("cpu_ns") or 0) + (census.get("children_cpu_ns") or 0)
    if wall and cpu > CPU_MARGIN * wall * case.threads:
        return f"CPU time {cpu / wall:.2f}x the wall time with {case.threads} thread(s) asked"
    if (case.device == "cpu" and e.outputs_ns is not None
            and e.outputs_ns > max(OUTPUTS_CALLS * per_call, OUTPUTS_FLOOR_NS)):  # fmt: skip
        return (f"outputs() takes {e.outputs_ns / 1e3:.3g} µs after a call of {per_call / 1e3:.3g} µs: the work "
                "is not in the timed call")  # fmt: skip
    if not math.isfinite(per_call):
        return "no finite time per call"
    return None
