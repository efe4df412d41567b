"""A revision made runnable: checked out into a temporary git worktree, its own code installed
(`pip install --no-deps --target`, a real install of what that revision's pyproject declares, its
entry points included) into a temporary folder first on PYTHONPATH, its tree as the working
directory, and whatever its backends declare they need built (`Backend.build`, e.g. the Rust
extension, built with maturin into a temporary folder also on PYTHONPATH; the cargo target directory
is shared and persistent, so unchanged crates compile once). A revision is a `Side`; the A/B gate
measures two, backfill and bisect one commit at a time.

Revisions from before the package was called `elbolab` (top-level `harness`) run as `harness.cli`;
revisions from before the lab had layers start their workers from `elbolab.worker` (Side.module).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from elbolab.model.backend import Backend, Build
from elbolab.model.errors import UsageError
from elbolab.store.commits import find_repo, git
from elbolab.store.results import Run, load

# the filters of `elbolab run` forwarded to both sides (Plan attribute, CLI flag)
RUN_FILTERS = ("backend", "workload", "batch", "dtype", "threads", "device", "variant")

Log = Callable[[str], None]


@dataclass(frozen=True)
class ABConfig:
    base_ref: str
    rounds: int = 3
    run_filters: tuple[tuple[str, tuple], ...] = ()  # (flag, values) forwarded to `elbolab run`
    keyword: str | None = None  # -k: chooses the cases measured interleaved (not forwarded: old runs lack it)
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

    def _install(self) -> Path | None:
        """This revision's installed `elbolab` package, or None (this environment's own elbolab)."""
        return next((p / "elbolab" for p in self.extra_path if (p / "elbolab").is_dir()), None)

    def module(self, name: str) -> str:
        """The import path of one of the lab's modules in this revision: `worker` is
        elbolab.measure.worker since the layout has layers (2026-12), elbolab.worker before."""
        install = self._install()
        for layer in LAYERED_MODULES.get(name, ()):
            if install is None or (install / layer / f"{name}.py").is_file():
                return f"elbolab.{layer}.{name}"
        return f"elbolab.{name}"

    def serves_stdio(self) -> bool:
        """Whether this revision's workers speak the interleaved A/B protocol."""
        install = self._install()
        if install is None:
            return True  # no install of its own: this environment's elbolab, which does
        worker = install / (self.module("worker").removeprefix("elbolab.").replace(".", "/") + ".py")
        return worker.is_file() and "def serve_stdio" in worker.read_text()

    def counts_instructions(self) -> bool:
        """Whether this revision can count instructions (elbolab.instructions, added in 2026-11)."""
        install = self._install()
        path = self.module("instructions").removeprefix("elbolab.").replace(".", "/") + ".py"
        return install is None or (install / path).is_file()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(p) for p in self.extra_path]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.pop("PYTHONSAFEPATH", None)
        env.update(self.extra_env)
        return env


# the modules another revision's processes are started from, by the layer they moved to
LAYERED_MODULES = {"worker": ("measure",), "instructions": ("measure",)}


# ------------------------------------------------------------------------------------------ git


def repo_root() -> Path:
    """The top of the git checkout the gate runs in."""
    root = find_repo()
    if root is None:
        raise UsageError("--base needs to run inside a git checkout of elbolab")
    return root


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
            proc = run_grouped(cmd, timeout=1800, env=env)
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
        proc = run_grouped(cmd, timeout=900)
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
    proc = run_grouped(argv, timeout=None, env=side.env(), cwd=side.tree)
    if out.exists():
        try:
            return load(out)
        except UsageError:
            pass
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    raise UsageError(
        f"the {side.name} run failed (exit {proc.returncode}): {lines[-1].strip() if lines else 'no output'}"
    )


def run_grouped(cmd: list[str], timeout: float | None, env: dict | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess:  # fmt: skip
    """subprocess.run in a process group of its own, which is stopped whole on a timeout or an
    interrupt. subprocess.run kills only its child: pip's build-hook process and cargo's rustc
    outlived it and went on writing into the gate's temporary folder after it was removed."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        _stop_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the group (a run then stops its workers and leaves a valid file), SIGKILL after
    20 s; then SIGKILL to whatever of the group outlived its leader."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


# ------------------------------------------------------------------------------------ commits


@dataclass(frozen=True)
class Failure:
    stage: str  # install, build, run
    reason: str


@contextmanager
def commit_side(repo: Path, sha: str, needed: dict, tmp: Path, log: Log, extra_env: dict[str, str] | None = None,
                name: str | None = None) -> Iterator[Side | Failure]:  # fmt: skip
    """A commit checked out in a temporary worktree, its own code installed and its builds built:
    a Side (with build_errors for the builds that failed), or the Failure to install.
    The worktree is removed on exit."""
    short = sha[:12]
    work = Path(tempfile.mkdtemp(prefix=f"{short}-", dir=tmp))  # a commit may be checked out twice
    tree = work / "src"
    git(repo, "worktree", "add", "--detach", "--force", str(tree), sha, check=True)
    try:
        side = Side(name or short, tree, extra_env=dict(extra_env or {}))
        try:
            install_side(side, work / "install", log)
        except UsageError as exc:
            yield Failure("install", str(exc))
            return
        build_side(side, needed, work, cargo_target_dir(repo), log)
        yield side
    finally:
        git(repo, "worktree", "remove", "--force", str(tree), check=False)
        shutil.rmtree(work, ignore_errors=True)
        git(repo, "worktree", "prune", check=False)


def left_out(side: Side, needed: dict) -> tuple[set[str], list[str]]:
    """The backends a side cannot run (their build failed), and a note on each failed build."""
    names: set[str] = set()
    notes = []
    for build, error in side.build_errors.items():
        names.update(needed[build])
        notes.append(f"{build.module} did not build ({', '.join(needed[build])} not measured): {error}")
    return names, notes
