"""The plan: which cases a run measures. The default matrix (`make bench`), the CI-sized one
(--quick), the user's filters, and the checks on them (unknown names, bad sizes, a case that cannot
fit in memory) that turn bad input into one clear line.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import psutil

from elbolab.measure.machine import usable_cores
from elbolab.model.backend import Backend
from elbolab.model.case import DTYPES, Case
from elbolab.model.claims import CLAIMS, SETTING, Spec
from elbolab.model.errors import UsageError
from elbolab.model.selection import Selection
from elbolab.model.workloads import WORKLOADS

# The default matrix of `make bench`: every workload over the batch sizes where it is interesting
# (the elbo family from overhead-bound batch 1 to DRAM-bound 8192; vae_step is compute-bound from
# batch 128 on, ~50 ms a step at 512 in NumPy float64 and ~100 ms at 1024, so it stops at 512: at
# 1024 its three cells were 51 s of a 5-minute make bench on the 2-core VM),
# both dtypes, one thread, and all cores where a call can be split (float64 above batch 1: see
# plan_cases).
DEFAULT_BATCHES = {
    "elbo": (1, 128, 1024, 8192),
    "elbo_grad": (1, 128, 1024, 8192),
    "iwae": (1, 128, 1024),
    "vae_step": (1, 128, 512),
}
# --quick (CI): the overhead-bound and a DRAM-bound elbo, the rest at the tutorial's batch; one
# thread and float64 (every JIT compile counts: a CI machine starts cold)
QUICK_BATCHES = {"elbo": (1, 128, 4096), "elbo_grad": (128,), "iwae": (128,), "vae_step": (128,)}
# Variants: unless asked for (--variant, or --full for the whole matrix), a workload is measured in
# its first variant (eps given: the like-for-like comparison), and in the others only where the
# claims check reads them (the tutorial's eps drawn inside the call: its backends and dtypes, one
# thread, every batch). Every variant everywhere was 712 cases a make bench instead of 480.


@dataclass(frozen=True)
class Plan:
    """What to run: the filters the user gave (None = default)."""

    backends: tuple[str, ...] | None = None
    workloads: tuple[str, ...] | None = None
    batches: tuple[int, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    threads: tuple[int, ...] | None = None
    devices: tuple[str, ...] | None = None
    variants: tuple[str, ...] | None = None
    quick: bool = False
    full: bool = False  # every variant at every size, not only where the claims check reads them
    input_dim: int = 784
    latent_dim: int = 20
    hidden_dim: int = 400
    importance_samples: int = 8
    seed: int = 0
    measure: str = "time"  # or "instructions": counted under Valgrind instead of timed
    control: bool = True  # the reference backend measured again as a null control (elbolab.measure.cells)
    keyword: str | None = None  # -k EXPR (elbolab.model.selection): the cases of the matrix it selects

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def default_threads() -> tuple[int, ...]:
    """1, 2, 4, ... up to the cores this process may use, and that count itself: a scaling sweep on
    a many-core machine, (1, 2) on two cores."""
    cores = usable_cores()
    counts = {1, cores}
    t = 2
    while t < cores:
        counts.add(t)
        t *= 2
    return tuple(sorted(counts))


def check_names(given: Iterable[str] | None, known: Iterable[str], what: str) -> None:
    known = list(known)
    for name in given or ():
        if name not in known:
            raise UsageError(f"unknown {what} {name!r} (known: {', '.join(known)})")


def plan_cases(plan: Plan, backends: dict[str, Backend]) -> list[Case]:
    """The case matrix of a plan, validated; raises UsageError on bad input."""
    check_names(plan.backends, backends, "backend")
    check_names(plan.workloads, WORKLOADS, "workload")
    check_names(plan.dtypes, DTYPES, "dtype")
    all_devices = sorted({d for b in backends.values() for d in b.devices})
    check_names(plan.devices, all_devices, "device")
    all_variants = sorted({v for w in WORKLOADS.values() for v in w.variants})
    check_names(plan.variants, all_variants, "variant")
    for value, what in [(b, "batch") for b in plan.batches or ()] + [
        (t, "thread count") for t in plan.threads or ()
    ]:
        if value < 1:
            raise UsageError(f"{what} must be a positive integer, got {value}")
    for value, what in ((plan.input_dim, "input_dim"), (plan.latent_dim, "latent_dim"),
                        (plan.hidden_dim, "hidden_dim"), (plan.importance_samples, "importance_samples")):  # fmt: skip
        if value < 1:
            raise UsageError(f"{what} must be a positive integer, got {value}")

    backend_names = plan.backends or tuple(backends)
    workloads = plan.workloads or tuple(WORKLOADS)
    cases = []
    for wname in workloads:
        workload = WORKLOADS[wname]
        batches = plan.batches or (QUICK_BATCHES if plan.quick else DEFAULT_BATCHES)[wname]
        variants = [v for v in (plan.variants or workload.variants) if v in workload.variants]
        for bname in backend_names:
            backend = backends[bname]
            scope = backend.default_scope or {}
            # unless asked for by name, a workload a backend does not implement is not a case
            if plan.workloads is None and (
                wname not in backend.workloads or wname not in scope.get("workloads", (wname,))
            ):
                continue
            counting = (
                plan.measure == "instructions"
            )  # counted cases: one thread on the CPU (see instructions)
            devices = plan.devices or (("cpu",) if counting else backend.devices)
            for device, dtype, batch, threads, variant in itertools.product(
                devices,
                plan.dtypes or scope.get("dtypes", ("float64",) if plan.quick else DTYPES),
                plan.batches or [b for b in batches if b in scope.get("batches", (b,))],
                # a backend that runs on one thread whatever it is asked is measured at 1 by default
                plan.threads
                or scope.get(
                    "threads", (1,) if plan.quick or counting or not backend.threaded else default_threads()
                ),
                plan.variants and variants or [v for v in variants if v in scope.get("variants", (v,))],
            ):
                if device not in backend.devices:
                    continue
                cases.append(
                    Case(
                        wname,
                        bname,
                        device,
                        dtype,
                        batch,
                        plan.input_dim,
                        plan.latent_dim,
                        plan.hidden_dim,
                        plan.importance_samples,
                        threads,
                        variant,
                        plan.seed,
                    )  # fmt: skip
                )
    if plan.variants is None and not plan.full:
        claimed = claims_cases()
        cases = [c for c in cases if c.variant == WORKLOADS[c.workload].variants[0] or claimed(c)]
    if plan.threads is None and not plan.full:
        # More than one thread where a call is long enough to split, in the headline dtype: at
        # batch 1 a call is microseconds (a second thread only adds its hand-off), and float32's
        # scaling follows float64's. This took make bench from 480 planned cases to 354 (a
        # fifth of its time); --threads or --full measure every count everywhere.
        cases = [c for c in cases if c.threads == 1 or (c.batch > 1 and c.dtype == "float64")]
    if not cases:
        raise UsageError("the filters select no case (check --backend/--workload/--device/--variant)")
    if plan.keyword is not None:
        chosen = Selection.parse(plan.keyword).select(cases)
        if not chosen:
            raise UsageError(f"-k {plan.keyword!r} selects none of the {len(cases)} cases of the matrix")
        cases = chosen
    _check_memory(cases)
    return cases


def claims_cases() -> Callable[[Case], bool]:
    """Whether the claims check (elbolab.report.claims) reads a case: one of its specs, on one
    thread, at the claims' sizes, at any batch (a ratio that fails at the tutorial's batch is looked
    for at the others: "holds only when batch is ...")."""
    specs = {spec for claim in CLAIMS for spec in claim.specs if isinstance(spec, Spec)}
    return lambda c: (
        Spec(c.backend, c.workload, c.variant, c.dtype, c.device) in specs
        and c.threads == 1
        and (c.input_dim, c.latent_dim) == (SETTING["input_dim"], SETTING["latent_dim"])
    )


def _check_memory(cases: Sequence[Case]) -> None:
    available = psutil.virtual_memory().available
    for case in cases:
        need = WORKLOADS[case.workload].peak_bytes(case)
        if need > available:
            raise UsageError(
                f"{case.label()}: needs about {need / 2**30:.1f} GiB, only {available / 2**30:.1f} GiB available"
            )
