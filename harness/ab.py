"""Same-machine A/B: measure a git revision (base) against the working tree (head), interleaved.

The base revision is checked out into a temporary git worktree; the working tree is used as it is.
Each side runs in its own environment: the same interpreter, with that side's tree installed
(`pip install --no-deps --target`, a real install of what that revision's pyproject declares,
its entry points included) into a temporary folder first on PYTHONPATH, and its tree as the working
directory; plus whatever its backends declare they need built (`Backend.build`, e.g. the Rust
extension, built with maturin per side into a temporary folder also on PYTHONPATH; the cargo target
directory is shared and persistent, so unchanged crates compile once). A side whose build fails is
reported and the backends needing that build are left out on both sides; the rest is still gated.
Revisions from before the package was called `elbolab` (top-level `harness`) run as `harness.cli`.

Timing (measure_interleaved): case by case, a pair of workers (one per side, alive together) is
sampled in alternating blocks (base, head, head, base, ...) so drift hits both alike, then closed,
and a fresh pair started: a worker process carries an offset of its own on a shared machine, so the
pairs are the units of replication and the case is judged on their paired medians (99% interval), from 8 pairs
on, until decided (a regression, or an interval wholly below the threshold) or its time budget is
spent (reported undecided). Instructions
(measure_counted): each case counted once a side under callgrind. A base revision older than the
interleaved workers is measured the old way (measure_rounds): whole `elbolab run`s alternately in
balanced order (A B, B A, ...), pooled per side (elbolab.compare.pool_rounds).
The caller compares the two runs with the shared verdict rule (elbolab.compare).

This module never prints: progress goes to `log`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent import futures as cf
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from elbolab.backend import Backend, Build, discover
from elbolab.compare import INTERLEAVED_PAIRS, PAIRED_CONFIDENCE, pool_rounds
from elbolab.errors import UsageError
from elbolab.results import Run, load
from elbolab.verdict import DEFAULT_RULE, Rule

# the filters of `elbolab run` forwarded to both sides (Plan attribute, CLI flag)
RUN_FILTERS = ("backend", "workload", "batch", "dtype", "threads", "device", "variant")

Log = Callable[[str], None]


@dataclass(frozen=True)
class ABConfig:
    base_ref: str
    rounds: int = 3
    run_filters: tuple[tuple[str, tuple], ...] = ()  # (flag, values) forwarded to `elbolab run`
    quick: bool = False
    seed: int = 0
    case_timeout: float | None = None
    sizes: tuple[tuple[str, int], ...] = ()  # (flag, value) sizes other than the defaults
    # interleaved mode: samples per block, samples a side from each pair of workers, the pairs
    # before a case is judged (8: the fewest a 99% signed-rank interval can be made of) and at
    # most, and the time a case may take before it is reported undecided
    interleave: bool = True
    block: int = 3
    pair_samples: int = 12
    min_pairs: int = 8
    max_pairs: int = 20
    case_budget_s: float = 40.0
    fixed_samples: int | None = None  # this many samples a side from each of max_pairs pairs, no early stop
    measure: str = "time"  # or "instructions": each side's cases counted under Valgrind, once

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise UsageError(f"--rounds must be at least 1, got {self.rounds}")

    def filter(self, name: str) -> tuple | None:
        return dict(self.run_filters).get(name)


@dataclass
class Side:
    name: str  # base / head
    tree: Path  # source tree, the working directory of its runs
    extra_path: list[Path] = field(default_factory=list)  # its install and builds, first on PYTHONPATH
    cli: str = "elbolab.cli"  # the module its runs are started with
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. a test's injected slowdown
    build_errors: dict[Build, str] = field(default_factory=dict)

    def serves_stdio(self) -> bool:
        """Whether this revision's workers speak the interleaved A/B protocol."""
        installs = [p / "elbolab" / "worker.py" for p in self.extra_path if (p / "elbolab").is_dir()]
        if not installs:
            return True  # no install of its own: this environment's elbolab, which does
        return "def serve_stdio" in installs[0].read_text()

    def counts_instructions(self) -> bool:
        """Whether this revision can count instructions (elbolab.instructions, added in 2026-11)."""
        installs = [p / "elbolab" for p in self.extra_path if (p / "elbolab").is_dir()]
        return not installs or (installs[0] / "instructions.py").exists()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(p) for p in self.extra_path]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.pop("PYTHONSAFEPATH", None)
        env.update(self.extra_env)
        return env


@dataclass(frozen=True)
class ABResult:
    base: Run  # pooled over the rounds
    head: Run
    notices: tuple[str, ...]
    base_label: str
    head_label: str


# ------------------------------------------------------------------------------------------ git


def git(repo: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True, check=check)
    except FileNotFoundError:
        raise UsageError("git is not installed; --base needs git") from None
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise UsageError(f"git {' '.join(argv[:2])} failed: {last[-1] if last else exc.returncode}") from None


def repo_root() -> Path:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
        )
    except (FileNotFoundError, subprocess.CalledProcessError):
        raise UsageError("--base needs to run inside a git checkout of elbolab") from None
    return Path(out.stdout.strip())


def resolve(repo: Path, ref: str) -> str:
    commit = git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    if commit.returncode != 0:
        raise UsageError(f"--base {ref!r} is not a git revision of {repo}")
    return commit.stdout.strip()


# --------------------------------------------------------------------------------------- builds


def builds_needed(backends: dict[str, Backend], names: Sequence[str] | None) -> dict[Build, list[str]]:
    """Each build the selected backends declare, with the names of the backends that need it."""
    needed: dict[Build, list[str]] = {}
    for name, backend in backends.items():
        if (names is None or name in names) and backend.build is not None:
            needed.setdefault(backend.build, []).append(name)
    return needed


def cargo_target_dir(repo: Path) -> Path:
    """A persistent cargo target directory for A/B builds (git-ignored), so dependencies and
    unchanged crates are compiled once, not at every gate."""
    return Path(os.environ.get("ELBOLAB_AB_TARGET_DIR") or repo / "target" / "ab")


def build_maturin(tree: Path, build: Build, dest: Path, log: Log, target_dir: Path) -> str | None:
    """Build a PyO3 crate with maturin and unpack the wheel into `dest` (put on PYTHONPATH).

    Returns None on success, else one line saying why it failed.
    """
    manifest = tree / build.manifest
    if not manifest.exists():
        return f"{build.manifest} does not exist in this revision"
    maturin = shutil.which("maturin") or str(Path(sys.executable).with_name("maturin"))
    if not Path(maturin).exists() and not shutil.which(maturin):
        return "maturin is not installed (pip install maturin)"
    # wheels are kept by the hash of the crate's sources: a revision whose crate is unchanged (the
    # usual case: base and head of a Python-only change) reuses the wheel instead of rebuilding it
    wheels = target_dir / "wheels" / crate_hash(manifest.parent)
    built = sorted(wheels.glob("*.whl"))
    t0 = time.perf_counter()
    if built:
        log(f"reusing {built[-1].name} (same crate sources)")
    else:
        env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
        partial = wheels.with_name(wheels.name + f".{os.getpid()}.partial")
        cmd = [maturin, "build", "--release", "--manifest-path", str(manifest), "--out", str(partial),
               "--interpreter", sys.executable]  # fmt: skip
        log(f"building {build.module} of {tree} ...")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"maturin could not run ({exc})"
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
            errors = [ln for ln in lines if "error" in ln.lower()]
            return f"maturin build failed: {(errors or lines or ['no output'])[0].strip()[:300]}"
        if not list(partial.glob("*.whl")):
            return "maturin build produced no wheel"
        try:
            partial.rename(wheels)
        except OSError:  # another gate finished the same build first
            shutil.rmtree(partial, ignore_errors=True)
        built = sorted(wheels.glob("*.whl"))
        log(f"built {built[-1].name} in {time.perf_counter() - t0:.0f} s")
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(built[-1]) as wheel:
        wheel.extractall(dest)
    return None


def crate_hash(crate: Path) -> str:
    """A hash of every source file of a crate (its target folder aside), and of the interpreter."""
    import hashlib

    h = hashlib.sha256(sys.version.encode())
    for path in sorted(
        p for p in crate.rglob("*") if p.is_file() and "target" not in p.relative_to(crate).parts
    ):
        h.update(str(path.relative_to(crate)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:20]


BUILDERS = {"maturin": build_maturin}


def clean_copy(tree: Path, dest: Path) -> Path:
    """The sources of `tree` copied to `dest`: a build writes its metadata (*.egg-info, build/) into
    the folder it builds, and in the working tree a stale copy would shadow the real install."""
    skip = shutil.ignore_patterns(".git", ".venv", "target", "results", "reports", "build", "*.egg-info",
                                  "__pycache__", ".pytest_cache", ".ruff_cache", "*.so")  # fmt: skip
    shutil.copytree(tree, dest, ignore=skip, symlinks=True)
    return dest


def install_side(side: Side, dest: Path, log: Log) -> None:
    """pip-install the side's tree (no dependencies: the interpreter has them) into `dest`."""
    log(f"installing {side.name} ({side.tree}) ...")
    source = clean_copy(side.tree, dest.with_name(dest.name + "-src"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--target", str(dest), str(source)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot install the {side.name} revision: {exc}") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise UsageError(
            f"cannot install the {side.name} revision: {lines[-1].strip() if lines else proc.returncode}"
        )
    side.extra_path.insert(0, dest)
    side.cli = "elbolab.cli" if (dest / "elbolab").is_dir() else "harness.cli"


def build_side(side: Side, needed: dict[Build, list[str]], tmp: Path, target_dir: Path, log: Log) -> None:
    for i, build in enumerate(needed):
        builder = BUILDERS.get(build.kind)
        if builder is None:
            side.build_errors[build] = f"unknown build kind {build.kind!r}"
            continue
        site = tmp / f"{side.name}-site-{i}"
        error = builder(side.tree, build, site, log, target_dir)
        if error is None:
            side.extra_path.append(site)
        else:
            side.build_errors[build] = error
            log(f"{side.name}: {build.module} NOT built: {error}")


# ------------------------------------------------------------------------------------------ runs


def run_argv(
    config: ABConfig, out: Path, leave_out: set[str], backends: Sequence[str], cli: str
) -> list[str]:
    argv = [sys.executable, "-m", cli, "run", "--out", str(out), "--no-limits"]
    for name in RUN_FILTERS:
        values = config.filter(name)
        if name == "backend":
            values = tuple(b for b in (values or backends) if b not in leave_out) if leave_out else values
        if values:
            argv += [f"--{name}", ",".join(str(v) for v in values)]
    if config.quick:
        argv.append("--quick")
    if config.seed:
        argv += ["--seed", str(config.seed)]
    for flag, value in config.sizes:
        argv += [f"--{flag}", str(value)]
    if config.case_timeout:
        argv += ["--timeout", str(config.case_timeout)]
    return argv


def run_side(side: Side, argv: list[str], out: Path) -> Run:
    """Run one side's `elbolab run`; a results file that loads is kept even if the run exited non-zero.

    The run gets its own process group: if the gate is interrupted (Ctrl-C, SIGTERM) the run is
    sent SIGTERM too, so it stops its workers and leaves a valid file, instead of being SIGKILLed
    and orphaning them."""
    proc = subprocess.Popen(argv, cwd=side.tree, env=side.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate()
    except BaseException:
        _stop_group(proc)
        raise
    proc = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    if out.exists():
        try:
            return load(out)
        except UsageError:
            pass
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    raise UsageError(
        f"the {side.name} run failed (exit {proc.returncode}): {lines[-1].strip() if lines else 'no output'}"
    )


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def balanced_order(rounds: int) -> list[str]:
    """A B, B A, A B, ...: linear drift falls on both sides alike."""
    order: list[str] = []
    for r in range(rounds):
        order += ["base", "head"] if r % 2 == 0 else ["head", "base"]
    return order


def measure_ab(config: ABConfig, rule: Rule = DEFAULT_RULE, log: Log = lambda _: None) -> ABResult:
    """Measure config.base_ref and the working tree interleaved on this machine; pool each side."""
    repo = repo_root()
    sha = resolve(repo, config.base_ref)
    backends = discover()
    selected = config.filter("backend")
    needed = builds_needed(backends, selected)
    t_start = time.perf_counter()
    notices: list[str] = []
    with tempfile.TemporaryDirectory(prefix="elbolab-gate-") as tmpdir:
        tmp = Path(tmpdir)
        base_tree = tmp / "base-src"
        git(repo, "worktree", "add", "--detach", "--force", str(base_tree), sha)
        try:
            sides = {"base": Side("base", base_tree), "head": Side("head", repo)}
            for side in sides.values():
                install_side(side, tmp / f"{side.name}-install", log)
                build_side(side, needed, tmp, cargo_target_dir(repo), log)
            leave_out: set[str] = set()
            for side in sides.values():
                for build, error in side.build_errors.items():
                    leave_out.update(needed[build])
                    notices.append(f"{side.name}: {build.module} failed to build, "
                                   f"{', '.join(needed[build])} not gated: {error}")  # fmt: skip
            if config.measure == "instructions":
                notices.insert(0, f"A/B on one machine: base {config.base_ref} ({sha[:10]}) vs the working tree, "
                               "instructions per call counted under callgrind (deterministic: one count a side)")  # fmt: skip
                runs = measure_counted(config, sides, plan_for(config, backends, leave_out), log)
                base, head = runs["base"], runs["head"]
            elif config.interleave and all(s.serves_stdio() for s in sides.values()):
                notices.insert(0, f"A/B on one machine: base {config.base_ref} ({sha[:10]}) vs the working tree, "
                               "samples interleaved case by case (B H H B blocks) until decided or out of budget")  # fmt: skip
                runs = measure_interleaved(config, rule, sides, plan_for(config, backends, leave_out), log)
                base, head = runs["base"], runs["head"]
            else:
                if config.interleave:
                    notices.append(
                        "the base revision predates interleaved A/B workers: measured in whole runs"
                    )
                notices.insert(0, f"A/B on one machine: base {config.base_ref} ({sha[:10]}) vs the working tree, "
                               f"{config.rounds} alternating whole run(s) per side")  # fmt: skip
                base, head = measure_rounds(config, sides, leave_out, list(backends), tmp, log)
        finally:
            git(repo, "worktree", "remove", "--force", str(base_tree), check=False)
            git(repo, "worktree", "prune", check=False)
    notices.append(f"A/B measuring took {time.perf_counter() - t_start:.0f} s")
    return ABResult(base=base, head=head, notices=tuple(notices), base_label=f"base {config.base_ref}",
                    head_label="head (working tree)")  # fmt: skip


def measure_rounds(config, sides, leave_out, backends, tmp: Path, log: Log) -> tuple[Run, Run]:
    """Whole `elbolab run`s of each side in balanced order, pooled per side (for old revisions)."""
    runs: dict[str, list[Run]] = {"base": [], "head": []}
    order = balanced_order(config.rounds)
    for i, name in enumerate(order):
        out = tmp / f"{name}_{len(runs[name]) + 1}.json"
        t0 = time.perf_counter()
        side = sides[name]
        run = run_side(side, run_argv(config, out, leave_out, backends, side.cli), out)
        runs[name].append(run)
        log(
            f"run {i + 1}/{len(order)} ({name}): {len(run.measurements)} cases, {time.perf_counter() - t0:.1f} s"
        )
    return pool_rounds(runs["base"]), pool_rounds(runs["head"])


# ----------------------------------------------------------------------------------- interleaved


def plan_for(config: ABConfig, backends: dict, leave_out: set[str]) -> list:
    from elbolab.runner import Plan, plan_cases

    sizes = {flag.replace("-", "_"): value for flag, value in config.sizes}
    names = config.filter("backend")
    if leave_out:
        names = tuple(b for b in (names or backends) if b not in leave_out)
    plan = Plan(backends=names, workloads=config.filter("workload"), batches=config.filter("batch"),
                dtypes=config.filter("dtype"), threads=config.filter("threads"), devices=config.filter("device"),
                variants=config.filter("variant"), quick=config.quick, seed=config.seed, measure=config.measure,
                **sizes)  # fmt: skip
    return plan_cases(plan, backends)


@dataclass
class _SideSamples:
    """One side's samples of one case, per worker pair (round)."""

    reply: dict | None = None  # the worker's answer to "open" in the first round
    rounds: list[tuple[int, list[int]]] = field(default_factory=list)  # (loops, samples) per round

    def per_call(self) -> list[float]:
        return [t / loops for loops, samples in self.rounds for t in samples]

    def round_medians(self) -> list[float]:
        import numpy as np

        return [float(np.median([t / loops for t in samples])) for loops, samples in self.rounds if samples]


def decided(base: _SideSamples, head: _SideSamples, rule: Rule, workload: str) -> str | None:
    """Why this case needs no more worker pairs, or None: judged by the shared rule on the paired
    interval over the pairs so far (elbolab.stats.paired_ratio_interval, as compare will judge it),
    it is a regression, or its interval is wholly below the threshold (no regression of that size)."""
    from elbolab.stats import paired_ratio_interval
    from elbolab.verdict import decide

    estimate = paired_ratio_interval(base.round_medians(), head.round_medians(), PAIRED_CONFIDENCE)
    judgement, (lo, hi) = decide(estimate, rule, workload), estimate.ci95
    where = f"the interval {lo:.3f}-{hi:.3f} over {len(head.rounds)} worker pairs"
    if judgement.regression:
        return f"decided: a regression, {judgement.ratio:.3f}x with {where}"
    if hi < 1 + judgement.threshold:
        return f"decided: {where} is below +{judgement.threshold:.0%}"
    return None


def _pair_cpus(pair: int, threads: int) -> set[int] | None:
    """The cores both workers of a pair run on: the same ones for both sides (a core that is slower,
    or busier with interrupts, cannot favour one side), moving round the machine from pair to pair;
    None when the case needs every core."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not allowed or threads >= len(allowed):
        return None
    start = pair * threads
    return {allowed[(start + j) % len(allowed)] for j in range(threads)}


def _start_pair(sides: dict, case, timeout: float) -> dict:
    """One worker per side, started together: they import on separate cores at once (the pair is
    pinned to its cores once both have opened the case)."""
    from elbolab.worker import StdioWorker, thread_env

    workers = {}
    try:
        for name, side in sides.items():
            env = dict(side.env(), **thread_env(case.threads), PYTHONHASHSEED="0")
            argv = [sys.executable, "-m", "elbolab.worker", case.backend, str(case.threads)]
            workers[name] = StdioWorker(argv, env, side.tree, timeout=timeout, greet=False)
        for w in workers.values():
            w.greet()
    except BaseException:
        _close_pair(workers)
        raise
    return workers


def _close_pair(workers: dict) -> None:
    """Unpinned first, so the two exit on separate cores, at once."""
    for w in workers.values():
        w.pin(None)
        w.stop()
    for w in workers.values():
        w.close()


def measure_interleaved(config: ABConfig, rule: Rule, sides: dict, cases: list, log: Log) -> dict[str, Run]:
    """Each case: a pair of workers (one per side, alive together, pinned to the same cores) sampled
    in alternating blocks (A B B A ..., the first side alternating from pair to pair) for
    `pair_samples` samples a side, then closed; then a fresh pair, and so on.
    The pairs are the units of replication (a process carries an offset of its own on a shared
    machine), so after `min_pairs` the case is judged on the pairs' medians, paired, and stops
    once decided(), or once its budget is spent (undecided), or at `max_pairs`."""
    from elbolab.machine import git_info, machine_info, software_info
    from elbolab.measurement import Measurement, not_measured
    from elbolab.results import new_run
    from elbolab.runner import now
    from elbolab.timer import TimerConfig

    timer = TimerConfig.quick() if config.quick else TimerConfig()
    per_pair = config.fixed_samples or config.pair_samples
    started = now()
    measured: dict[str, list] = {"base": [], "head": []}
    versions: dict[str, dict] = {"base": {}, "head": {}}
    for i, case in enumerate(cases):
        t0 = time.perf_counter()
        data = {"base": _SideSamples(), "head": _SideSamples()}
        stopped, failure = "", None
        for pair in range(config.max_pairs):
            # who goes first alternates from pair to pair: any effect of order (who opens first,
            # whose block starts a cycle) falls on each side in half the pairs
            first, second = ("base", "head") if pair % 2 == 0 else ("head", "base")
            name = first
            try:
                workers = _start_pair(sides, case, config.case_timeout or 300)
            except RuntimeError as exc:
                failure = (name, "failed", f"a worker could not start: {exc}")
                break
            try:
                for name in (first, second):
                    if "error" in workers[name].hello:
                        failure = (name, "skipped", workers[name].hello["error"])
                        break
                    versions[name].setdefault(case.backend, workers[name].hello["hello"]["versions"])
                if failure:
                    break
                # both open the case at once (inputs, calibration, first call), each on a core of
                # its own; the pair is pinned to its cores for the sampling only
                for name in (first, second):
                    workers[name].send({"op": "open", "case": case.to_json(), "timer": timer.to_json()})
                for name in (first, second):
                    reply = workers[name].receive()
                    if data[name].reply is None:
                        data[name].reply = reply
                    if reply["status"] != "ok":
                        failure = (name, reply["status"], reply["reason"])
                        break
                    data[name].rounds.append((reply["loops"], []))
                if failure:
                    break
                cpus = _pair_cpus(pair, case.threads)
                for w in workers.values():
                    w.pin(cpus)
                # A B B A repeated is balanced only in steady state: each side's blocks follow its own
                # block once and the other side's once a cycle. A discarded block of the first side
                # makes the first counted block follow that side too, as in every later cycle (else
                # it follows the other side's open: an A/A measured the second side ~2% faster).
                workers[first].ask({"op": "sample", "count": config.block})
                while len(data["head"].rounds[-1][1]) < per_pair:
                    for name in (first, second, second, first):
                        got = workers[name].ask({"op": "sample", "count": config.block})["samples_ns"]
                        data[name].rounds[-1][1].extend(got)
            except RuntimeError as exc:  # the worker of side `name` died or hung
                failure = (name, "failed", f"{exc} during {case.label()}")
                break
            finally:
                _close_pair(workers)
            pairs = len(data["head"].rounds)
            if config.fixed_samples is not None:
                stopped = f"a fixed {pairs} worker pairs of {per_pair} samples a side"
                continue
            if pairs >= config.min_pairs:
                stopped = decided(data["base"], data["head"], rule, case.workload) or ""
                if stopped:
                    break
            if time.perf_counter() - t0 > config.case_budget_s:
                break
        if not stopped and failure is None:
            why = "budget" if len(data["head"].rounds) < config.max_pairs else "limit of worker pairs"
            stopped = (f"undecided: the {why} ({config.case_budget_s:g} s, {config.max_pairs} pairs) is spent "
                       f"after {len(data['head'].rounds)} pairs")  # fmt: skip
        for name in ("base", "head"):
            d = data[name]
            if failure and failure[0] == name:
                measured[name].append(not_measured(case, failure[1], failure[2]))
                continue
            if failure or not d.rounds:
                measured[name].append(not_measured(case, "skipped", "not measured: the other side failed"))
                continue
            loops = d.rounds[0][0]
            per_call = d.per_call()
            reply = d.reply
            measured[name].append(Measurement(
                case, "ok", None, loops=1, samples_ns=tuple(per_call), rounds=tuple(len(s) for _, s in d.rounds),
                first_call_ns=reply["first_call_ns"], cost=_cost(reply), notes=dict(
                    reply["notes"], ab_stopped=stopped, ab_pairs=len(d.rounds), loops_per_round=[lp for lp, _ in d.rounds],
                    first_loops=loops),
            ))  # fmt: skip
        log(f"case {i + 1}/{len(cases)} {case.label()}: {stopped or failure[2]} "
            f"({sum(len(s) for _, s in data['head'].rounds)} samples a side, {time.perf_counter() - t0:.0f} s)")  # fmt: skip
    out = {}
    for name, side in sides.items():
        software = dict(software_info(), backends=versions[name])
        git = {"commit": resolve(side.tree, "HEAD"), "dirty": git_info(side.tree).get("dirty")}
        run = new_run(f"ab-{name}-{started}", started, machine_info(), software, git,
                      {"ab": {"mode": INTERLEAVED_PAIRS, "block": config.block, "pair_samples": per_pair,
                              "min_pairs": config.min_pairs, "max_pairs": config.max_pairs,
                              "case_budget_s": config.case_budget_s},
                       "timer": timer.to_json()})  # fmt: skip
        out[name] = replace(run, measurements=tuple(measured[name]), finished=now())
    return out


def measure_counted(config: ABConfig, sides: dict, cases: list, log: Log) -> dict[str, Run]:
    """Each case counted once per side under callgrind, in that side's environment and tree, with
    the same calls per segment on both sides (head's choice), so the two counts differ only by code."""
    from elbolab.instructions import count_case, end_all_counts, unavailable_reason
    from elbolab.machine import git_info, machine_info, software_info
    from elbolab.results import new_run
    from elbolab.runner import now

    reason = unavailable_reason()
    if reason:
        raise UsageError(f"--measure instructions: {reason}")
    old = [name for name, side in sides.items() if not side.counts_instructions()]
    if old:
        raise UsageError(f"--measure instructions: the {' and '.join(old)} revision cannot count instructions "
                         "(it has no elbolab.instructions); gate on time, or pick a newer base")  # fmt: skip
    started = now()
    timeout = config.case_timeout or 900

    stopping = threading.Event()

    def count_both(i: int, case) -> tuple:
        t0 = time.perf_counter()
        if stopping.is_set():
            raise InterruptedError
        head = count_case(case, env=sides["head"].env(), cwd=sides["head"].tree, timeout=timeout)
        calls = head.counts.calls if head.counts is not None else None
        if stopping.is_set():
            raise InterruptedError
        base = count_case(case, env=sides["base"].env(), cwd=sides["base"].tree, timeout=timeout, calls=calls)
        what = (f"{base.counts.instructions:,.0f} -> {head.counts.instructions:,.0f} instructions a call"
                if base.counts and head.counts else f"base {base.status}, head {head.status}")  # fmt: skip
        log(f"case {i + 1}/{len(cases)} {case.label()}: {what} ({time.perf_counter() - t0:.0f} s)")
        return base, head

    # Counts do not depend on what else runs (Valgrind runs each program on a simulated CPU), so
    # the cases are counted in parallel, one per core: a 4-case gate takes half the time on 2 cores.
    from elbolab.machine import usable_cores

    cores = usable_cores()
    pool = ThreadPoolExecutor(max_workers=max(1, min(cores, len(cases))))
    futures = [pool.submit(count_both, i, case) for i, case in enumerate(cases)]
    try:
        counted = [f.result() for f in futures]
    except BaseException:  # interrupted (Ctrl-C and SIGTERM reach this thread only): end every count
        stopping.set()
        for f in futures:
            f.cancel()
        while not all(f.done() for f in futures):
            end_all_counts()
            cf.wait(futures, timeout=0.2)
        raise
    finally:
        pool.shutdown(wait=True)
    measured = {"base": [b for b, _ in counted], "head": [h for _, h in counted]}
    out = {}
    for name, side in sides.items():
        git = {"commit": resolve(side.tree, "HEAD"), "dirty": git_info(side.tree).get("dirty")}
        run = new_run(f"ab-{name}-{started}", started, machine_info(), software_info(), git,
                      {"ab": {"mode": "instructions"}, "measure": "instructions"})  # fmt: skip
        out[name] = replace(run, measurements=tuple(measured[name]), finished=now())
    return out


def _cost(reply: dict):
    from elbolab.measurement import Cost

    return Cost(**reply["cost"]) if reply.get("cost") else None
