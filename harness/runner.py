"""Plans the case matrix, runs it in worker processes, and keeps the results file current.

Cases are grouped by (backend, threads): one worker serves a group so a library is imported once,
and its thread environment is set before that import. A backend that sets its thread count per case
at run time (numba, torch) has one worker for all its counts, started with the largest: its JIT
compiles once a run and torch is imported once. Measured in fresh processes, alternating, a
one-thread case ran as fast in a pool sized for two as in a pool of one (numba-parallel elbo at
batch 1 and 1024, vae_step at 128; torch the same; the spread between processes, up to 1.7x at
batch 1, was larger than any difference). A case that crashes or hangs its worker loses
only itself (recorded as failed/timeout); a fresh worker takes the rest of the group. Every result
is written to disk (atomically) as soon as it arrives.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from elbolab.backend import Backend, discover
from elbolab.case import DTYPES, Case
from elbolab.errors import UsageError
from elbolab.measurement import Measurement, not_measured
from elbolab.results import FileLock, Run, RunFile, TrainingCurve, load, new_run, remove_stale_temporaries
from elbolab.timer import TimerConfig
from elbolab.worker import WorkerSpec, serve, thread_env
from elbolab.workloads import REFERENCE_CACHE_ENV, WORKLOADS

# The default matrix of `make bench`: every workload over the batch sizes where it is interesting
# (the elbo family from overhead-bound batch 1 to DRAM-bound 8192; vae_step is compute-bound and
# ~50 ms a step at 1024, so it stops there), both dtypes, one thread and all cores.
DEFAULT_BATCHES = {
    "elbo": (1, 128, 1024, 8192),
    "elbo_grad": (1, 128, 1024, 8192),
    "iwae": (1, 128, 1024),
    "vae_step": (1, 128, 1024),
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

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def default_threads() -> tuple[int, ...]:
    """1, 2, 4, ... up to the cores this process may use, and that count itself: a scaling sweep on
    a many-core machine, (1, 2) on two cores."""
    from elbolab.machine import usable_cores

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
    if not cases:
        raise UsageError("the filters select no case (check --backend/--workload/--device/--variant)")
    _check_memory(cases)
    return cases


def claims_cases() -> Callable[[Case], bool]:
    """Whether the claims check (elbolab.report.claims) reads a case: one of its specs, on one
    thread, at the claims' sizes, at any batch (a ratio that fails at the tutorial's batch is looked
    for at the others: "holds only when batch is ...")."""
    from elbolab.report.claims import CLAIMS, SETTING, Spec

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


def check_writable(path: Path) -> None:
    """The results file can be written: a regular file or nothing, in a folder made if missing."""
    if not str(path) or str(path) == ".":
        raise UsageError("--out needs a file name")
    if path.exists() and not path.is_file():
        raise UsageError(f"cannot write {path}: not a regular file")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: cannot create {parent} ({exc.strerror or exc})") from None
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied")


# what makes two runs' measurements the same kind of thing: the machine they ran on ...
MACHINE_KEYS = ("cpu", "logical_cpus", "memory_bytes", "hostname")


def machine_differences(file_machine: dict, here: dict) -> list[str]:
    return [
        f"machine {k}: file {file_machine.get(k)!r}, here {here.get(k)!r}"
        for k in MACHINE_KEYS
        if file_machine.get(k) != here.get(k)
    ]


def config_differences(file_config: dict, config: dict) -> list[str]:
    """... and how they were measured (the plan and the timer)."""
    out = []
    for section in ("plan", "timer"):
        a, b = file_config.get(section) or {}, config.get(section) or {}
        out += [
            f"{section} {k}: file {a.get(k)!r}, now {b.get(k)!r}"
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)
        ]
    return out


# --------------------------------------------------------------------------------------- execution


@dataclass
class _Worker:
    spec: WorkerSpec
    process: multiprocessing.Process
    conn: object
    hello: dict = field(default_factory=dict)


_CTX = multiprocessing.get_context("spawn")
# a child takes its thread environment from os.environ at start: one start at a time (training
# starts workers from several threads)
_START_LOCK = threading.Lock()


def _start_worker(spec: WorkerSpec, start_timeout: float, env: dict[str, str] | None = None) -> _Worker:
    parent, child = _CTX.Pipe()
    with _START_LOCK:
        saved = dict(os.environ)
        # the child reads its thread environment at start-up, before it imports any library
        os.environ.update(thread_env(spec.threads), **(env or {}))
        try:
            process = _CTX.Process(target=serve, args=(child, spec), daemon=True)
            process.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)
    child.close()
    worker = _Worker(spec, process, parent)
    if not parent.poll(start_timeout):
        _kill(worker)
        raise RuntimeError(f"worker for {spec.backend} did not start within {start_timeout:.0f} s")
    try:
        worker.hello = parent.recv()[1]
    except EOFError:
        _kill(worker)
        raise RuntimeError(f"worker for {spec.backend} died at start ({_exit_reason(process)})") from None
    return worker


def _kill(worker: _Worker) -> None:
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join(5)
    worker.conn.close()


def _exit_reason(process: multiprocessing.Process) -> str:
    process.join(5)
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _stop(worker: _Worker) -> None:
    try:
        worker.conn.send(("stop",))
    except (OSError, BrokenPipeError):
        pass
    worker.process.join(10)
    _kill(worker)


# called with each measurement as it is recorded (the CLI draws progress with it)
OnResult = Callable[[Measurement], None]


def execute(
    cases: Sequence[Case],
    run: RunFile,
    timer: TimerConfig,
    backends: dict[str, Backend],
    *,
    case_timeout: float,
    on_result: OnResult | None = None,
) -> None:
    """Measure every case (of `backends`, as discovered by the plan), appending each measurement to
    `run` as it arrives."""
    groups: dict[WorkerSpec, list[Case]] = {}
    for spec, case in zip(worker_specs(cases, backends), cases, strict=True):
        groups.setdefault(spec, []).append(case)
    software = run.software.setdefault("backends", {})

    def record(m: Measurement) -> None:
        run.add(m)
        if on_result:
            on_result(m)

    with _reference_folder() as references:
        for spec, group in groups.items():
            pending = list(group)
            while pending:
                try:
                    worker = _start_worker(
                        spec, start_timeout=case_timeout, env={REFERENCE_CACHE_ENV: references}
                    )
                except RuntimeError as exc:
                    for case in pending:
                        record(not_measured(case, "failed", str(exc)))
                    break
                software[spec.backend] = worker.hello.get("versions", {})
                pending = _serve_group(worker, pending, timer, case_timeout, record)


def worker_specs(cases: Sequence[Case], backends: dict[str, Backend]) -> list[WorkerSpec]:
    """The worker that measures each case: one per backend and thread count (thread variables are
    read when a library is imported), except for a backend that sets its threads per case, whose
    one worker starts with the largest count among its cases."""
    shared = {name for name, backend in backends.items() if backend.threads_per_case}
    widest: dict[str, int] = {}
    for case in cases:
        widest[case.backend] = max(widest.get(case.backend, 1), case.threads)
    return [WorkerSpec(c.backend, widest[c.backend] if c.backend in shared else c.threads) for c in cases]


@contextlib.contextmanager
def _reference_folder():
    """A folder for the run's shared references (elbolab.workloads.cached_reference), removed at
    the end; folders of runs that were killed (their process is gone) are removed first."""
    prefix = "elbolab-references-"
    for stale in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        pid = stale.name[len(prefix) :].split("-")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _serve_group(
    worker: _Worker, pending: list[Case], timer: TimerConfig, timeout: float, record
) -> list[Case]:
    """Send cases to one worker until done or until it dies; return the cases still to run."""
    for i, case in enumerate(pending):
        try:
            worker.conn.send(("case", case.to_json(), timer.to_json()))
            if not worker.conn.poll(timeout):
                _kill(worker)
                record(not_measured(case, "timeout", f"no result within {timeout:.0f} s; worker killed"))
                return pending[i + 1 :]
            _, rec = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            reason = f"worker died during the case ({_exit_reason(worker.process)})"
            _kill(worker)
            record(not_measured(case, "failed", reason))
            return pending[i + 1 :]
        record(_validated(case, rec))
    _stop(worker)
    return []


def count(
    cases: Sequence[Case], run: RunFile, *, jobs: int, case_timeout: float, on_result: OnResult | None
) -> None:
    """Count each case's instructions under Valgrind (elbolab.instructions), `jobs` at a time: counts
    do not depend on the machine's load, so cases may run side by side. Interrupted, every counting
    process is killed (each leads its own session)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from elbolab.instructions import count_case, end_all_counts

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(count_case, case, timeout=case_timeout) for case in cases]
        for future in as_completed(futures):
            m = future.result()
            run.add(m)
            if on_result:
                on_result(m)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        end_all_counts()
        raise
    pool.shutdown()


def _validated(case: Case, rec: object) -> Measurement:
    """The worker's record, validated: a backend that returns garbage becomes a failed case."""
    try:
        m = Measurement.from_json(rec)  # type: ignore[arg-type]
    except (ValueError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()
        return not_measured(case, "failed", f"the worker sent an invalid record: {' '.join(first[:3])[:300]}")
    if m.case != case:
        return not_measured(case, "failed", f"the worker answered for another case ({m.case.label()})")
    return m


def run_training(
    run: RunFile,
    backend_names: Sequence[str],
    dtypes: Sequence[str],
    config,
    *,
    timeout: float = 600,
    jobs: int | None = None,
    on_result: Callable[[TrainingCurve], None] | None = None,
) -> None:
    """Train the digits VAE on every backend (one worker a backend, for each of its devices and
    dtypes; `jobs` workers at once, by default one per core: nothing in training is timed, and
    each trains on one thread); put the curves into `run`, replacing earlier curves of the same
    backend, device and dtype only."""
    from concurrent.futures import ThreadPoolExecutor

    from elbolab.train import DATASET, bias_only_loss, curve_difference, digits, final_loss

    backends = discover()
    check_names(backend_names, backends, "backend")
    check_names(dtypes, DTYPES, "dtype")
    if jobs is None:
        from elbolab.machine import usable_cores

        jobs = usable_cores()
    todo = {
        name: [(device, dtype) for device in backends[name].devices for dtype in dtypes]
        for name in backend_names
    }
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {
            name: pool.submit(_train_in_worker, name, runs, config, timeout) for name, runs in todo.items()
        }
        done = {name: f.result() for name, f in futures.items()}
    entries = []
    for name, runs in todo.items():
        for (device, dtype), result in zip(runs, done[name], strict=True):
            entry = {"backend": name, "device": device, "dtype": dtype, "threads": 1,
                     "dataset": DATASET, **config.to_json()}  # fmt: skip
            entry.update(result)
            entries.append(entry)
    baseline = bias_only_loss(digits())
    # for the record, each curve beside NumPy's in the same dtype and in float64
    reference = {e["dtype"]: e["losses"] for e in entries if e["backend"] == "numpy" and e.get("losses")}
    curves = []
    for e in entries:
        losses = e.get("losses") or []
        if losses:
            e["bias_only_loss"] = baseline
            e["learned"] = final_loss(losses) < baseline
            if e["dtype"] in reference:
                e["max_rel_diff_vs_numpy"] = curve_difference(losses, reference[e["dtype"]])
            if "float64" in reference:
                e["max_rel_diff_vs_numpy_float64"] = curve_difference(losses, reference["float64"])
        e["losses"] = tuple(losses)
        curve = TrainingCurve(**e)
        curves.append(curve)
        if on_result:
            on_result(curve)
    run.put_training(curves)


def _train_in_worker(backend: str, runs: list[tuple[str, str]], config, timeout: float) -> list[dict]:
    """Each (device, dtype) of `runs` trained in one worker of the backend, in turn; a worker that
    dies or hangs loses only the training it was doing: a fresh one takes the rest."""
    results: list[dict] = []
    worker = None
    for device, dtype in runs:
        if worker is None:
            try:
                worker = _start_worker(WorkerSpec(backend, 1), start_timeout=timeout)
            except RuntimeError as exc:
                results.append({"status": "failed", "reason": str(exc)})
                continue
        try:
            worker.conn.send(("train", device, dtype, 1, config.to_json()))
            if not worker.conn.poll(timeout):
                _kill(worker)
                worker = None
                results.append({"status": "timeout", "reason": f"no result within {timeout:.0f} s"})
                continue
            results.append(worker.conn.recv()[1])
        except (EOFError, OSError):
            reason = f"worker died during training ({_exit_reason(worker.process)})"
            results.append({"status": "failed", "reason": reason})
            _kill(worker)
            worker = None
    if worker is not None:
        _stop(worker)
    return results


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def open_run(out: Path, plan: Plan, timer: TimerConfig, mode: str = "new") -> RunFile:
    """The run document at `out`, locked for writing.

    mode  new        `out` must not exist (a results file is never replaced by accident)
          overwrite  replace whatever results file is there
          resume     finish the run in `out`: same machine, same plan and timer
          append     add to the run in `out` (training curves): same machine
    """
    from elbolab.machine import git_info, machine_info, software_info

    check_writable(out)
    exists = out.exists()
    if mode == "new" and exists:
        raise UsageError(
            f"{out} exists; pass --resume to finish its missing cases or --overwrite to replace it"
        )
    if mode == "resume" and not exists:
        raise UsageError(f"--resume: {out} does not exist")
    lock = FileLock(out).acquire()
    try:
        remove_stale_temporaries(out)
        config = {"plan": plan.to_json(), "timer": timer.to_json()}
        if mode in ("resume", "append") and exists:
            run = load(out)
            different = machine_differences(run.machine, machine_info())
            if mode == "resume":
                different += config_differences(run.config, config)
            if different:
                raise UsageError(
                    f"{out} was measured differently ({'; '.join(different[:3])}); use a new --out"
                )
            rf = RunFile(out, run, lock)
            if mode == "resume":
                rf.unfinish()
            return rf
        if exists:
            load(out)  # --overwrite replaces a results file, never some other file
        rf = RunFile(
            out,
            new_run(uuid.uuid4().hex[:12], now(), machine_info(), software_info(), git_info(), config),
            lock,
        )
        rf.save()
        return rf
    except BaseException:
        lock.release()
        raise


def run_plan(
    plan: Plan,
    out: Path,
    *,
    mode: str = "new",
    case_timeout: float | None = None,
    measure_limits: bool = True,
    on_result: OnResult | None = None,
    on_plan: Callable[[int], None] | None = None,
    jobs: int = 1,
) -> Run:
    backends = discover()
    cases = plan_cases(plan, backends)
    if plan.measure == "instructions":
        from elbolab.instructions import unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise UsageError(f"--measure instructions: {reason}")
    timer = TimerConfig.quick() if plan.quick else TimerConfig()
    with open_run(out, plan, timer, mode) as run:
        done = run.done_keys()
        todo = [c for c in cases if c.key() not in done]
        if on_plan:
            on_plan(len(todo))
        from elbolab.health import check as check_health

        run.set_health("start", check_health(threads_asked=None).to_json())
        if measure_limits and not run.has_limits() and plan.measure == "time":
            run.set_limits(_measure_limits(plan))
        if plan.measure == "instructions":
            count(todo, run, jobs=jobs, case_timeout=case_timeout or 900, on_result=on_result)
        else:
            execute(
                todo,
                run,
                timer,
                backends,
                case_timeout=case_timeout or (120 if plan.quick else 300),
                on_result=on_result,
            )
        run.set_health("end", {"load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None})
        run.finish(now())
        return run.run


def _measure_limits(plan: Plan) -> dict:
    from elbolab.limits import measure_limits

    return measure_limits(sorted(set(plan.threads or default_threads())), quick=plan.quick)
