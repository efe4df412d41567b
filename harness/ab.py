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

The two sides then run `python -m elbolab.cli run <filters>` alternately in balanced order
(A B, B A, A B, ...) so slow machine drift hits both alike; each side's samples are pooled over the
rounds (elbolab.compare.pool_rounds) and the pooled runs are compared by the caller.

This module never prints: progress goes to `log`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from elbolab.backend import Backend, Build, discover
from elbolab.compare import pool_rounds
from elbolab.errors import UsageError
from elbolab.results import Run, load

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
    build_errors: dict[Build, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(p) for p in self.extra_path]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.pop("PYTHONSAFEPATH", None)
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
    wheels = dest.with_name(dest.name + "-wheels")
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
    cmd = [maturin, "build", "--release", "--manifest-path", str(manifest), "--out", str(wheels),
           "--interpreter", sys.executable]  # fmt: skip
    log(f"building {build.module} of {tree} ...")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"maturin could not run ({exc})"
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        return f"maturin build failed: {(errors or lines or ['no output'])[0].strip()[:300]}"
    built = sorted(wheels.glob("*.whl"))
    if not built:
        return "maturin build produced no wheel"
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(built[-1]) as wheel:
        wheel.extractall(dest)
    log(f"built {built[-1].name} in {time.perf_counter() - t0:.0f} s")
    return None


BUILDERS = {"maturin": build_maturin}


def install_side(side: Side, dest: Path, log: Log) -> None:
    """pip-install the side's tree (no dependencies: the interpreter has them) into `dest`."""
    log(f"installing {side.name} ({side.tree}) ...")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--target", str(dest), str(side.tree)]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"cannot install the {side.name} revision: {exc}") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise UsageError(f"cannot install the {side.name} revision: {lines[-1].strip() if lines else proc.returncode}")
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


def run_argv(config: ABConfig, out: Path, leave_out: set[str], backends: Sequence[str], cli: str) -> list[str]:
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


def measure_ab(config: ABConfig, log: Log = lambda _: None) -> ABResult:
    """Measure config.base_ref and the working tree interleaved on this machine; pool each side."""
    repo = repo_root()
    sha = resolve(repo, config.base_ref)
    backends = discover()
    selected = config.filter("backend")
    needed = builds_needed(backends, selected)
    t_start = time.perf_counter()
    notices = [f"A/B on one machine: base {config.base_ref} ({sha[:10]}) vs the working tree, "
               f"{config.rounds} interleaved round(s) per side"]  # fmt: skip
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
            runs: dict[str, list[Run]] = {"base": [], "head": []}
            order = balanced_order(config.rounds)
            for i, name in enumerate(order):
                out = tmp / f"{name}_{len(runs[name]) + 1}.json"
                t0 = time.perf_counter()
                side = sides[name]
                run = run_side(side, run_argv(config, out, leave_out, list(backends), side.cli), out)
                runs[name].append(run)
                log(f"run {i + 1}/{len(order)} ({name}): {len(run.measurements)} cases, "
                    f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        finally:
            git(repo, "worktree", "remove", "--force", str(base_tree), check=False)
            git(repo, "worktree", "prune", check=False)
    notices.append(f"A/B measuring took {time.perf_counter() - t_start:.0f} s")
    return ABResult(
        base=pool_rounds(runs["base"]),
        head=pool_rounds(runs["head"]),
        notices=tuple(notices),
        base_label=f"base {config.base_ref}",
        head_label="head (working tree)",
    )
