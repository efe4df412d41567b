"""`elbolab compare` and `elbolab gate`: turn two runs into a verdict and an exit code.

    elbolab compare BASE.json HEAD.json [--markdown PATH]
    elbolab gate BASE.json HEAD.json [--threshold 0.10] [--threshold-for WORKLOAD=0.2 ...]
                 [--allow-missing] [--normalize] [--markdown PATH]
    elbolab gate --base GIT_REF [run filters: --backend numpy --workload elbo --batch 128 --quick ...]
                 [--rounds 3]

`gate` exits 1 on a confident regression (or a case that broke), 0 otherwise, 2 on bad input.
The statistics and rules live in harness.compare; this module reads files, runs revisions and
renders.

Same-machine A/B (`--base GIT_REF`), the mode CI uses: the base revision is checked out into a
temporary git worktree and the working tree is used as it is. Each side runs in its own environment:
the same interpreter, with that side's source tree first on PYTHONPATH (and as the working
directory), and, when the tree has backends/rust/Cargo.toml and Rust backends are asked for, that
side's Rust extension built with maturin into a temporary directory also on PYTHONPATH. A side whose
Rust build fails is reported and its Rust cases are left out; the other backends are still gated.
The two sides then run `python -m harness.cli run <filters>` alternately, in balanced order
(A B, B A, A B, ...) so slow machine drift hits both alike; each side's samples are pooled over the
rounds and the pooled runs are compared. Entry points come from the installed elbolab metadata, so
a backend registered only by the base revision is not seen (its modules are).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.compare import (
    DEFAULT_NOISE_BAND,
    DEFAULT_THRESHOLD,
    Report,
    compare,
    render_markdown,
    render_terminal,
)
from harness.errors import UsageError
from harness.results import case_of, load, per_call_samples, save, validate
from harness.stats import summarize

RUST_MANIFEST = Path("backends/rust/Cargo.toml")
RUST_MODULE = "backends.rust"
# the filters of `elbolab run` forwarded to both sides in A/B mode (flag, attribute)
RUN_FILTERS = ("backend", "workload", "batch", "dtype", "threads", "device", "variant")


# ---------------------------------------------------------------------------------- commands


def _threshold_for(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WORKLOAD=FRACTION such as vae_step=0.2, got {text!r}"
        ) from None


def _add_compare_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="slowdown that counts as a regression, as a fraction (default 0.10 = 10%%)",
    )
    p.add_argument(
        "--threshold-for",
        type=_threshold_for,
        action="append",
        default=[],
        metavar="WORKLOAD=T",
        help="a different threshold for one workload, e.g. vae_step=0.2 (repeatable)",
    )
    p.add_argument(
        "--noise-band",
        type=float,
        default=DEFAULT_NOISE_BAND,
        help="a confident change smaller than this is noise (default 0.03)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="compare the cases in common when the case sets differ (others are listed)",
    )
    p.add_argument(
        "--normalize",
        action="store_true",
        help="divide each time by the numpy elbo case of the same run (runs from different machines)",
    )
    p.add_argument("--markdown", type=Path, metavar="PATH",
                   help="also append the report as Markdown to PATH (e.g. $GITHUB_STEP_SUMMARY)")  # fmt: skip


def add_commands(sub) -> None:
    p = sub.add_parser("compare", help="compare two results files case by case (ratios with 95%% CI)")
    p.add_argument("base", type=Path, metavar="BASE.json")
    p.add_argument("head", type=Path, metavar="HEAD.json")
    _add_compare_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "gate",
        help="fail (exit 1) when HEAD is confidently slower than BASE; or A/B against a git ref with --base",
    )
    p.add_argument("files", nargs="*", type=Path, metavar="BASE.json HEAD.json")
    _add_compare_options(p)
    ab = p.add_argument_group("same-machine A/B (measure a git revision against the working tree)")
    ab.add_argument("--base", metavar="GIT_REF", help="revision to measure against the working tree")
    ab.add_argument("--rounds", type=int, default=3, help="interleaved runs per side (default 3)")
    ab.add_argument(
        "--save-runs", type=Path, metavar="DIR", help="keep the pooled base.json and head.json here"
    )
    ab.add_argument("--timeout", type=float, help="seconds per case (passed to each run)")
    from harness.commands import add_run_filters

    add_run_filters(ab)
    p.set_defaults(func=cmd_gate)


def _options(args: argparse.Namespace) -> dict:
    return {
        "threshold": args.threshold,
        "per_workload_thresholds": dict(args.threshold_for),
        "allow_missing": args.allow_missing,
        "normalize": args.normalize,
        "noise_band": args.noise_band,
    }


def _write_markdown(path: Path | None, text: str) -> None:
    if path is None:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text.rstrip("\n") + "\n\n")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the Markdown report ({exc.strerror or exc})") from None


def _report_files(args: argparse.Namespace, base: Path, head: Path) -> Report:
    base_doc, head_doc = load(base), load(head)
    return compare(base_doc, head_doc, base_label="base", head_label="head", **_options(args))


def cmd_compare(args: argparse.Namespace) -> int:
    report = _report_files(args, args.base, args.head)
    render_terminal(report)
    _write_markdown(args.markdown, render_markdown(report, title="elbolab compare"))
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    try:
        if args.base is not None:
            if args.files:
                raise UsageError("give either BASE.json HEAD.json or --base GIT_REF, not both")
            report = ab_gate(args)
        else:
            if len(args.files) != 2:
                raise UsageError(
                    f"gate needs BASE.json and HEAD.json (or --base GIT_REF), got {len(args.files)} file(s)"
                )
            _no_run_filters(args)
            report = _report_files(args, *args.files)
    except UsageError as exc:
        _write_markdown(args.markdown, f"### ⚠️ elbolab gate could not compare\n\n{exc}")
        raise
    render_terminal(report)
    _write_markdown(args.markdown, render_markdown(report))
    return report.exit_code


def _no_run_filters(args: argparse.Namespace) -> None:
    given = [f"--{name}" for name in RUN_FILTERS if getattr(args, name, None)]
    given += ["--quick"] if args.quick else []
    if given:
        raise UsageError(f"{', '.join(given)} only apply with --base GIT_REF (they choose what to measure)")


# ------------------------------------------------------------------------------- A/B rounds


def merge_rounds(docs: Sequence[dict]) -> dict:
    """One run document pooling the per-call samples of each case over several runs of one side.

    The loop count can differ between runs (each calibrates), so the pooled record stores per-call
    times with loops = 1. A case is ok only if it was ok in every round; otherwise its first non-ok
    record stands (with the round named), so a flaky failure is seen, not averaged away.
    """
    if not docs:
        raise ValueError("nothing to merge")
    merged = {k: v for k, v in docs[0].items() if k != "measurements"}
    merged["run_id"] = "+".join(str(d.get("run_id")) for d in docs)
    merged["finished"] = docs[-1].get("finished")
    merged["config"] = dict(docs[0].get("config") or {}, rounds=len(docs))
    order: dict[tuple, list[tuple[int, dict]]] = {}
    for i, doc in enumerate(docs):
        for m in doc["measurements"]:
            order.setdefault(case_of(m).key(), []).append((i, m))
    measurements = []
    for records in order.values():
        bad = [(i, m) for i, m in records if m["status"] != "ok"]
        if bad:
            i, m = bad[0]
            measurements.append(
                dict(m, reason=f"round {i + 1} of {len(docs)}: {m.get('reason') or m['status']}")
            )
            continue
        samples = [s for _, m in records for s in per_call_samples(m)]
        first = records[0][1]
        measurements.append(
            dict(
                first,
                loops=1,
                samples_ns=samples,
                per_call_ns=summarize(samples).to_json(),
                notes=dict(
                    first.get("notes") or {},
                    rounds=len(records),
                    loops_per_round=[m["loops"] for _, m in records],
                    samples_per_round=[len(per_call_samples(m)) for _, m in records],
                ),
            )
        )
    merged["measurements"] = measurements
    validate(merged, "pooled run")
    return merged


def balanced_order(rounds: int) -> list[str]:
    """A B, B A, A B, ...: linear drift falls on both sides alike."""
    order: list[str] = []
    for r in range(rounds):
        order += ["base", "head"] if r % 2 == 0 else ["head", "base"]
    return order


# ---------------------------------------------------------------------------- environments


@dataclass
class Side:
    name: str  # base / head
    tree: Path  # source tree on PYTHONPATH and working directory
    extra_path: list[Path]
    rust_error: str | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(self.tree), *(str(p) for p in self.extra_path)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.pop("PYTHONSAFEPATH", None)
        return env


def _git(repo: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True, check=check)
    except FileNotFoundError:
        raise UsageError("git is not installed; --base needs git") from None
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise UsageError(f"git {' '.join(argv[:2])} failed: {last[-1] if last else exc.returncode}") from None


def _repo_root() -> Path:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
        )
    except (FileNotFoundError, subprocess.CalledProcessError):
        raise UsageError("--base needs to run inside a git checkout of elbolab") from None
    return Path(out.stdout.strip())


def _wants_rust(backends: Sequence[str] | None) -> bool:
    return backends is None or any(name in rust_backend_names() or "rust" in name for name in backends)


def rust_backend_names() -> set[str]:
    """Names registered from the Rust backend package (by entry point), plus any named rust*."""
    from importlib.metadata import entry_points

    from harness.backend import ENTRY_POINT_GROUP

    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.value.startswith(RUST_MODULE)}
    return names | {"rust"}


def _is_rust_case(backend: str) -> bool:
    return backend in rust_backend_names() or backend.startswith("rust")


def build_rust(tree: Path, dest: Path, log: Callable[[str], None], target_dir: Path) -> str | None:
    """Build the tree's Rust extension with maturin and unpack the wheel into `dest`.

    Returns None on success, else one line saying why it failed.
    """
    manifest = tree / RUST_MANIFEST
    maturin = shutil.which("maturin") or str(Path(sys.executable).with_name("maturin"))
    if not Path(maturin).exists() and not shutil.which(maturin):
        return "maturin is not installed (pip install maturin)"
    wheels = dest.with_name(dest.name + "-wheels")
    env = dict(os.environ)
    env.setdefault("CARGO_TARGET_DIR", str(target_dir))  # shared by both sides: deps compile once
    cmd = [maturin, "build", "--release", "--manifest-path", str(manifest), "--out", str(wheels),
           "--interpreter", sys.executable]  # fmt: skip
    log(f"building the Rust extension of {tree} ...")
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


def _run_argv(args: argparse.Namespace, out: Path, skip_rust: bool) -> list[str]:
    argv = [sys.executable, "-m", "harness.cli", "run", "--out", str(out), "--no-limits"]
    for name in RUN_FILTERS:
        values = getattr(args, name, None)
        if name == "backend" and skip_rust and values:
            values = tuple(v for v in values if not _is_rust_case(v))
        if values:
            argv += [f"--{name}", ",".join(str(v) for v in values)]
    if args.quick:
        argv.append("--quick")
    if getattr(args, "seed", 0):
        argv += ["--seed", str(args.seed)]
    if getattr(args, "timeout", None):
        argv += ["--timeout", str(args.timeout)]
    return argv


def run_side(side: Side, argv: list[str], out: Path) -> dict:
    """Run one side's `elbolab run`; a results file that loads is kept even if the run exited non-zero."""
    proc = subprocess.run(argv, cwd=side.tree, env=side.env(), capture_output=True, text=True)
    if out.exists():
        try:
            return load(out)
        except UsageError:
            pass
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    raise UsageError(
        f"the {side.name} run failed (exit {proc.returncode}): {lines[-1].strip() if lines else 'no output'}"
    )


def ab_gate(args: argparse.Namespace, log: Callable[[str], None] | None = None) -> Report:
    """Measure GIT_REF and the working tree interleaved on this machine, then compare."""
    log = log or (lambda msg: print(f"gate: {msg}", file=sys.stderr, flush=True))
    if args.rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {args.rounds}")
    repo = _repo_root()
    commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}", check=False)
    if commit.returncode != 0:
        raise UsageError(f"--base {args.base!r} is not a git revision of {repo}")
    sha = commit.stdout.strip()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="elbolab-gate-") as tmpdir:
        tmp = Path(tmpdir)
        base_tree = tmp / "base-src"
        _git(repo, "worktree", "add", "--detach", "--force", str(base_tree), sha)
        try:
            sides = {"base": Side("base", base_tree, []), "head": Side("head", repo, [])}
            notices = [f"A/B on one machine: base {args.base} ({sha[:10]}) vs the working tree, "
                       f"{args.rounds} interleaved round(s) per side"]  # fmt: skip
            if _wants_rust(args.backend):
                for side in sides.values():
                    if (side.tree / RUST_MANIFEST).exists():
                        site = tmp / f"{side.name}-site"
                        side.rust_error = build_rust(side.tree, site, log, tmp / "cargo-target")
                        if side.rust_error is None:
                            side.extra_path.append(site)
                        else:
                            log(f"{side.name}: Rust extension NOT built: {side.rust_error}")
                            notices.append(
                                f"{side.name} Rust extension failed to build, Rust cases not gated: "
                                f"{side.rust_error}"
                            )
                    elif side.name == "base":
                        notices.append("base has no Rust crate (backends/rust/Cargo.toml)")
            skip_rust = any(s.rust_error for s in sides.values())
            runs: dict[str, list[dict]] = {"base": [], "head": []}
            order = balanced_order(args.rounds)
            for i, name in enumerate(order):
                out = tmp / f"{name}_{len(runs[name]) + 1}.json"
                t0 = time.perf_counter()
                doc = run_side(sides[name], _run_argv(args, out, skip_rust), out)
                runs[name].append(doc)
                log(f"run {i + 1}/{len(order)} ({name}): {len(doc['measurements'])} cases, "
                    f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        finally:
            _git(repo, "worktree", "remove", "--force", str(base_tree), check=False)
            _git(repo, "worktree", "prune", check=False)
        pooled = {name: merge_rounds(docs) for name, docs in runs.items()}
    if skip_rust:
        for doc in pooled.values():
            doc["measurements"] = [m for m in doc["measurements"] if not _is_rust_case(case_of(m).backend)]
    if args.save_runs:
        args.save_runs.mkdir(parents=True, exist_ok=True)
        for name, doc in pooled.items():
            save(args.save_runs / f"{name}.json", doc, pretty=True)
    notices.append(f"A/B measuring took {time.perf_counter() - t_start:.0f} s")
    return compare(
        pooled["base"],
        pooled["head"],
        base_label=f"base {args.base}",
        head_label="head (working tree)",
        notices=notices,
        **_options(args),
    )
