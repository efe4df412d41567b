"""History across commits: the series of one case on one machine, its change points, and the
measuring of past commits (backfill) and bisecting a regression to its first bad commit.

Series. A series is one case on one machine (elbolab.store.Machine: the hardware, and a name when
one was given), its points the commits in git-ancestry order (`git rev-list --topo-order` of a ref,
by default HEAD, never wall-clock), each point pooling the per-call samples of every run of that
commit (runs of dirty trees are left out unless asked for). Machines are never mixed in a series.

Change points. Each series is segmented on the log of its per-commit medians by PELT (ruptures,
l2 cost on the series scaled by a robust estimate of its commit-to-commit noise, floored at the
verdict's noise band, minimum segment `min_size` commits). PELT only proposes where a series
steps; whether it did is decided by the shared verdict (elbolab.verdict.judge) on the raw per-call
samples pooled from up to `window` commits on either side, each run a round, so that a change must
show in every pairing of runs before and after it. A proposed step the verdict does not confirm
('same' or 'too noisy to tell') is dropped and the segmentation's neighbours are judged again.

Backfill and bisect. A past commit is measured in a temporary git worktree with the A/B machinery
of elbolab.ab (install_side, build_side, run_side: that revision's own code, installed and built,
run by its own `elbolab run`), and stored. A commit that does not install or build, or whose run
fails, is skipped with the reason recorded in the store. `find` bisects GOOD..BAD (first-parent
line) by measurement: a commit is bad when the shared verdict against GOOD is a regression, each
commit timed paired with GOOD by the gate's interleaved worker pairs (see find).

This module never prints: progress goes to `log`.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from elbolab.ab import Side
from elbolab.case import SIZE_FIELDS, Case
from elbolab.errors import UsageError
from elbolab.results import Git, Run
from elbolab.stats import summarize
from elbolab.store import MACHINE_ENV, Machine, MachineRow, Row, Store, canonical, case_id
from elbolab.verdict import DEFAULT_RULE, Judgement, Rule, Verdict, judge

Log = Callable[[str], None]
MIN_SIZE = 2  # a change must hold for this many measured commits before PELT proposes it
WINDOW = 5  # measured commits pooled on either side of a change for the verdict
PENALTY = 2.0  # PELT penalty per change, times log(n), on the noise-scaled series


# ------------------------------------------------------------------------------------------ git


def fast_median(x: np.ndarray) -> float:
    """np.median of a small 1-d array, without its overhead (it is called once per run and point)."""
    y = np.sort(x)
    n = y.size
    return float(y[n // 2]) if n % 2 else float((y[n // 2 - 1] + y[n // 2]) / 2)


def _git(repo: Path, *argv: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True)
    except FileNotFoundError:
        raise UsageError("git is not installed; history needs git to order commits") from None


def find_repo(path: Path | None = None) -> Path | None:
    """The top of the git checkout holding `path` (default: the working directory), or None."""
    try:
        out = subprocess.run(["git", "-C", str(path or Path.cwd()), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True)  # fmt: skip
    except FileNotFoundError:
        return None
    if out.returncode != 0:
        if path is not None:
            raise UsageError(f"--repo {path}: not a git checkout")
        return None
    return Path(out.stdout.strip())


def need_repo(repo: Path | None, what: str) -> Path:
    if repo is None:
        raise UsageError(f"{what} needs a git checkout: run it inside one or pass --repo PATH")
    return repo


def rev(repo: Path, ref: str) -> str:
    """The full sha of a revision, or a UsageError naming it."""
    if not ref or ref.startswith("-"):
        raise UsageError(f"{ref!r} is not a git revision")
    out = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if out.returncode != 0:
        raise UsageError(f"{ref!r} is not a git revision of {repo}")
    return out.stdout.strip()


def commit_info(repo: Path | None, sha: str | None) -> dict | None:
    """Committer date, parents and subject of a commit, if the repository knows it."""
    if repo is None or not sha:
        return None
    out = _git(repo, "show", "-s", "--format=%cI%x00%P%x00%s", sha, "--")
    if out.returncode != 0:
        return None
    committed, parents, subject = (out.stdout.rstrip("\n").split("\x00") + ["", "", ""])[:3]
    return {"committed": committed or None, "parents": parents or None, "subject": subject[:500] or None}


def commit_range(repo: Path, spec: str) -> list[str]:
    """The commits of `A..B` (git's meaning: reachable from B, not from A; `A^..B` includes A),
    oldest first, along B's first-parent line; a single revision is just that commit."""
    if ".." in spec:
        if "..." in spec:
            raise UsageError(f"{spec!r}: use A..B (two dots), the commits after A up to B")
        a, b = spec.split("..", 1)
        if not a or not b:
            raise UsageError(f"{spec!r}: give both ends, A..B")
        sa, sb = rev(repo, a), rev(repo, b)
        out = _git(repo, "rev-list", "--first-parent", "--topo-order", "--reverse", f"{sa}..{sb}")
        if out.returncode != 0:
            raise UsageError(f"git rev-list {spec} failed: {out.stderr.strip()[:200]}")
        commits = out.stdout.split()
        if not commits:
            raise UsageError(f"{spec!r} holds no commits (is {a} an ancestor of {b}?)")
        return commits
    return [rev(repo, spec)]


# ----------------------------------------------------------------------------------- ordering


@dataclass(frozen=True)
class Order:
    """Measured commits in history order, and the ones that could not be placed, with why."""

    commits: tuple[str, ...]
    how: str
    left_out: dict[str, str] = field(default_factory=dict)
    repo: Path | None = None

    @property
    def position(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.commits)}

    def between(self, good: str, bad: str) -> int | None:
        """Commits strictly between good and bad on bad's history (None without a repository)."""
        if self.repo is None:
            return None
        out = _git(self.repo, "rev-list", "--count", f"{good}..{bad}")
        return max(0, int(out.stdout.strip()) - 1) if out.returncode == 0 else None


def order_commits(
    shas: Iterable[str], repo: Path | None, ref: str = "HEAD", dates: dict | None = None
) -> Order:
    """Order measured commits by git ancestry: their positions in `git rev-list --topo-order` of
    `ref`. Commits not on ref's history are left out (with the reason). Without a repository the
    commit dates recorded at ingest order them, and `how` says so."""
    shas = {s for s in shas if s}
    if repo is None:
        dates = dates or {}
        ordered = sorted(shas, key=lambda s: (dates.get(s) or "~", s))
        return Order(
            tuple(ordered), "by commit date (no git checkout here to order by ancestry; --repo PATH)"
        )
    head = rev(repo, ref)
    out = _git(repo, "rev-list", "--topo-order", "--reverse", head)
    if out.returncode != 0:
        raise UsageError(f"git rev-list {ref} failed: {out.stderr.strip()[:200]}")
    pos = {c: i for i, c in enumerate(out.stdout.split())}
    placed = sorted((s for s in shas if s in pos), key=pos.__getitem__)
    left_out = {}
    for s in sorted(shas - set(placed)):
        known = _git(repo, "cat-file", "-e", f"{s}^{{commit}}").returncode == 0
        left_out[s] = f"not on the history of {ref}" if known else "not in this repository"
    return Order(tuple(placed), f"by git ancestry of {ref} ({head[:10]})", left_out, repo)


# ------------------------------------------------------------------------------------- series


@dataclass(frozen=True, eq=False)
class Point:
    """One commit of a series: every run of it on the machine, its samples pooled."""

    commit: str
    run_ids: tuple[str, ...]
    statuses: tuple[str, ...]
    reasons: tuple[str, ...]
    per_call_ns: np.ndarray  # pooled over the runs that measured the case ok
    run_medians: tuple[float, ...]  # median per call of each ok run
    median: float = math.nan  # of the pooled samples

    def __post_init__(self) -> None:
        if self.per_call_ns.size and math.isnan(self.median):
            object.__setattr__(self, "median", fast_median(self.per_call_ns))

    @property
    def ok(self) -> bool:
        return self.per_call_ns.size > 0

    @property
    def ci95(self) -> tuple[float, float]:
        return summarize(self.per_call_ns).ci95 if self.ok else (math.nan, math.nan)

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        bad = [st for st in self.statuses if st != "ok"]
        return bad[0] if bad else "no timing samples" if self.statuses else "missing"


@dataclass(frozen=True, eq=False)
class Series:
    machine: MachineRow
    case: Case
    case_id: str
    points: tuple[Point, ...]

    @property
    def measured(self) -> list[Point]:
        return [p for p in self.points if p.ok]

    @property
    def key(self) -> tuple[str, str]:
        return (self.machine.machine_id, self.case_id)


def build_series(rows: Sequence[Row], order: Order, machines: dict[str, MachineRow],
                 cases: dict[str, Case]) -> list[Series]:  # fmt: skip
    """One series per (machine, case) from stored rows, its points in `order`."""
    pos = order.position
    grouped: dict[tuple[str, str], dict[str, list[Row]]] = {}
    for r in rows:
        if r.commit in pos:
            grouped.setdefault((r.machine_id, r.case_id), {}).setdefault(r.commit, []).append(r)
    out = []
    for (mid, cid), by_commit in grouped.items():
        points = []
        for commit in sorted(by_commit, key=pos.__getitem__):
            rs = by_commit[commit]
            ok = [r for r in rs if r.status == "ok" and r.samples_ns and r.loops >= 1]
            per_run = [r.per_call_ns for r in ok]
            medians = tuple(fast_median(x) for x in per_run)
            pooled = np.concatenate(per_run) if len(per_run) > 1 else per_run[0] if per_run else np.empty(0)
            points.append(Point(
                commit, tuple(r.run_id for r in rs), tuple(r.status for r in rs),
                tuple(r.reason or "" for r in rs if r.status != "ok"), pooled, medians,
                medians[0] if len(medians) == 1 else math.nan,
            ))  # fmt: skip
        out.append(Series(machines[mid], cases[cid], cid, tuple(points)))
    out.sort(key=lambda s: (s.machine.label, s.machine.machine_id, s.case.key()))
    return out


# -------------------------------------------------------------------------------- case queries


_SHORT = {"B": "batch", "t": "threads", "D": "input_dim", "L": "latent_dim", "H": "hidden_dim",
          "K": "importance_samples", "seed": "seed"}  # fmt: skip
_INT_FIELDS = {"batch", "threads", "seed", *SIZE_FIELDS}
_FIELDS = tuple(Case.__dataclass_fields__)


@dataclass(frozen=True)
class CaseQuery:
    """A case named the way elbolab prints it ('elbo numpy cpu float64 B=128 t=1'), or part of it:
    bare words match the workload, backend, device or dtype; B= t= D= L= H= K= seed= the numbers;
    field=value any field; any other a=b the variant ('eps=sampled')."""

    text: str
    words: tuple[str, ...]
    fields: tuple[tuple[str, object], ...]

    @classmethod
    def parse(cls, text: str) -> CaseQuery:
        tokens = text.replace(",", " ").split()
        if not tokens:
            raise UsageError("--case is empty; name a case such as 'elbo numpy cpu float64 B=128 t=1'")
        words, fields = [], {}
        for tok in tokens:
            key, sep, value = tok.partition("=")
            if not sep:
                words.append(tok)
                continue
            name = _SHORT.get(key, key if key in _FIELDS else None)
            if name is None:
                name, value = "variant", tok
            if name in _INT_FIELDS:
                try:
                    value = int(value)
                except ValueError:
                    raise UsageError(f"--case {text!r}: {tok!r} needs an integer") from None
            if name in fields and fields[name] != value:
                raise UsageError(f"--case {text!r}: {name} is given twice")
            fields[name] = value
        return cls(text, tuple(words), tuple(sorted(fields.items())))

    def matches(self, case: Case) -> bool:
        named = (case.workload, case.backend, case.device, case.dtype)
        return all(w in named for w in self.words) and all(getattr(case, k) == v for k, v in self.fields)

    def select(self, cases: dict[str, Case]) -> dict[str, Case]:
        """The stored cases it names; an exact label wins over the cases it merely matches."""
        found = {cid: c for cid, c in cases.items() if self.matches(c)}
        exact = {cid: c for cid, c in found.items() if c.label() == " ".join(self.text.split())}
        if len(exact) == 1:
            return exact
        if not found:
            raise UsageError(f"--case {self.text!r} matches no stored case{_hint(cases)}")
        return found

    def to_case(self) -> Case:
        """The one case it names, defaults filling what it does not say (workload and backend needed)."""
        from elbolab.workloads import WORKLOADS

        spec: dict = dict(self.fields)
        for w in self.words:
            if w in WORKLOADS:
                slot = "workload"
            elif w in ("float64", "float32"):
                slot = "dtype"
            elif w == "cpu" or w.startswith(("cuda", "mps", "xpu")):
                slot = "device"
            else:
                slot = "backend"
            if slot in spec and spec[slot] != w:
                raise UsageError(f"--case {self.text!r}: two values for {slot} ({spec[slot]}, {w})")
            spec[slot] = w
        for need in ("workload", "backend"):
            if need not in spec:
                raise UsageError(
                    f"--case {self.text!r} names no {need}; e.g. 'elbo numpy cpu float64 B=128 t=1'"
                )
        try:
            return Case(**spec)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--case {self.text!r}: {str(exc).splitlines()[0]}") from None


def _hint(cases: dict[str, Case]) -> str:
    if not cases:
        return " (the store holds no measurements yet)"
    some = sorted({c.label() for c in cases.values()})[:3]
    return f"; stored cases look like {', '.join(repr(s) for s in some)}"


def select_machines(rows: list[MachineRow], text: str | None) -> list[MachineRow]:
    """Machines named by an id prefix or a part of their name (case-insensitive); all without one."""
    if not text:
        return rows
    by_id = [m for m in rows if m.machine_id.startswith(text.lower())]
    found = by_id or [m for m in rows if text.lower() in m.label.lower()]
    if not found:
        known = ", ".join(f"{m.label} ({m.machine_id[:8]})" for m in rows) or "none"
        raise UsageError(f"--machine {text!r} names no stored machine (machines: {known})")
    return found


# ------------------------------------------------------------------------------- change points


@dataclass(frozen=True)
class Change:
    """A step in a series: between `good` (the last commit before) and `bad` (the first after)."""

    machine: MachineRow
    case: Case
    good: str
    bad: str
    index: int  # of `bad` among the series' measured points
    judgement: Judgement  # after vs before, the shared verdict
    before_ns: float  # pooled medians of the judged windows
    after_ns: float
    runs_before: int
    runs_after: int
    confirmed: bool  # the verdict says faster or slower
    between: int | None = None  # commits between good and bad that were not measured

    @property
    def regression(self) -> bool:
        return self.judgement.regression

    @property
    def direction(self) -> str:
        return self.judgement.verdict.value

    def to_json(self) -> dict:
        return {
            "machine": self.machine.machine_id, "machine_label": self.machine.label, "case": self.case.to_json(),
            "label": self.case.label(), "good": self.good, "bad": self.bad, "range": f"{self.good}..{self.bad}",
            "unmeasured_between": self.between, "before_ns": self.before_ns, "after_ns": self.after_ns,
            "runs_before": self.runs_before, "runs_after": self.runs_after, "confirmed": self.confirmed,
            **self.judgement.to_json(),
        }  # fmt: skip


def candidates(
    log_medians: np.ndarray, min_size: int = MIN_SIZE, noise_band: float = DEFAULT_RULE.noise_band
) -> list[int]:
    """Where PELT would cut the series (indices of the first point of each new segment)."""
    import ruptures as rpt

    x = np.asarray(log_medians, dtype=np.float64)
    n = x.size
    if n < 2 * min_size:
        return []
    d = np.diff(x)
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2)
    sigma = max(sigma, math.log1p(noise_band) / 2, 1e-9)
    y = ((x - np.median(x)) / sigma).reshape(-1, 1)
    # PELT on the l2 cost, as ruptures' C implementation (KernelCPD with the linear kernel is the
    # l2 cost; rpt.Pelt(model="l2") gives the same cuts, 400x slower in pure Python)
    cuts = rpt.KernelCPD(kernel="linear", min_size=min_size, jump=1).fit(y).predict(pen=PENALTY * math.log(n))
    return [int(b) for b in cuts if 0 < b < n]


def _judge(
    series: Series, pts: list[Point], b: int, lo: int, hi: int, rule: Rule, window: int, between=None
) -> Change:
    left = pts[max(lo, b - window) : b]
    right = pts[b : min(hi, b + window)]
    base = np.concatenate([p.per_call_ns for p in left])
    head = np.concatenate([p.per_call_ns for p in right])
    base_rounds = [m for p in left for m in p.run_medians]
    head_rounds = [m for p in right for m in p.run_medians]
    j = judge(base, head, rule, series.case.workload, base_rounds, head_rounds)
    confirmed = j.verdict in (Verdict.SLOWER, Verdict.FASTER)
    return Change(
        series.machine, series.case, left[-1].commit, right[0].commit, b, j, float(np.median(base)),
        float(np.median(head)), len(base_rounds), len(head_rounds), confirmed,
        between(left[-1].commit, right[0].commit) if between and confirmed else None,
    )  # fmt: skip


def change_points(series: Series, rule: Rule = DEFAULT_RULE, min_size: int = MIN_SIZE, window: int = WINDOW,
                  between: Callable[[str, str], int | None] | None = None,
                  keep_unconfirmed: bool = False) -> list[Change]:  # fmt: skip
    """The confirmed changes of a series (with keep_unconfirmed, also the proposals the verdict
    did not confirm, as they were judged before being dropped)."""
    pts = series.measured
    if len(pts) < 2:
        return []
    cuts = candidates(np.log([p.median for p in pts]), min_size, rule.noise_band)
    dropped: dict[int, Change] = {}
    while True:
        judged = []
        for i, b in enumerate(cuts):
            lo = cuts[i - 1] if i else 0
            hi = cuts[i + 1] if i + 1 < len(cuts) else len(pts)
            judged.append(_judge(series, pts, b, lo, hi, rule, window))
        keep = [c for c in judged if c.confirmed]
        for c in judged:
            if not c.confirmed:
                dropped.setdefault(c.index, c)
        if len(keep) == len(judged):
            break
        cuts = [c.index for c in keep]
    if between is not None:
        judged = [replace(c, between=between(c.good, c.bad)) for c in judged]
    return sorted(judged + (list(dropped.values()) if keep_unconfirmed else []), key=lambda c: c.index)


def all_changes(series: Iterable[Series], rule: Rule = DEFAULT_RULE, order: Order | None = None,
                **kw) -> dict[tuple[str, str], list[Change]]:  # fmt: skip
    between = order.between if order is not None and order.repo is not None else None
    return {s.key: change_points(s, rule, between=between, **kw) for s in series}


# ----------------------------------------------------------------------------- loading history


@dataclass(frozen=True, eq=False)
class History:
    order: Order
    series: list[Series]
    machines: list[MachineRow]
    dirty_left_out: int = 0
    unknown_commit: int = 0


def load_history(store: Store, repo: Path | None, ref: str = "HEAD", machine: str | None = None,
                 query: CaseQuery | None = None, include_dirty: bool = False) -> History:  # fmt: skip
    """Every series of the store (of the machines and cases asked for), in history order."""
    machines = select_machines(store.machines(), machine)
    all_cases = store.cases()
    chosen = query.select(all_cases) if query is not None else all_cases
    rows: list[Row] = []
    for m in machines:
        rows += store.rows(m.machine_id, list(chosen) if query is not None else None, include_dirty=True)
    dirty_runs = len({r.run_id for r in rows if r.dirty})
    if not include_dirty:
        rows = [r for r in rows if not r.dirty]
    unknown = len({r.run_id for r in rows if not r.commit})
    shas = {r.commit for r in rows if r.commit}
    dates = {s: c.get("committed") for s, c in store.commits(shas).items()} if repo is None else None
    order = order_commits(shas, repo, ref, dates)
    series = build_series(rows, order, {m.machine_id: m for m in machines}, all_cases)
    return History(order, series, machines, 0 if include_dirty else dirty_runs, unknown)


# ------------------------------------------------------------------------------- measuring past


@dataclass(frozen=True)
class Failure:
    stage: str  # install, build, run
    reason: str


@dataclass(frozen=True)
class Measured:
    run: Run
    notes: tuple[str, ...] = ()


@contextmanager
def commit_side(repo: Path, sha: str, needed: dict, tmp: Path, log: Log, extra_env: dict[str, str] | None = None,
                name: str | None = None) -> Iterator[Side | Failure]:  # fmt: skip
    """A commit checked out in a temporary worktree, its own code installed and its builds built:
    an elbolab.ab.Side (with build_errors for the builds that failed), or the Failure to install.
    The worktree is removed on exit."""
    from elbolab.ab import build_side, cargo_target_dir, git, install_side

    short = sha[:12]
    work = Path(tempfile.mkdtemp(prefix=f"{short}-", dir=tmp))  # a commit may be checked out twice
    tree = work / "src"
    git(repo, "worktree", "add", "--detach", "--force", str(tree), sha)
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


def as_commit(run: Run, sha: str, **history) -> Run:
    """A run made in a temporary install, described as the commit it measured (its own git facts
    describe the install, not the commit)."""
    return replace(run, git=Git(commit=sha, dirty=False),
                   config=dict(run.config, history={"commit": sha, "worktree": True, **history}))  # fmt: skip


def measure_commit(repo: Path, sha: str, config, needed: dict, backend_names: Sequence[str], tmp: Path,
                   log: Log, extra_env: dict[str, str] | None = None) -> Measured | Failure:  # fmt: skip
    """Measure one commit in a temporary worktree: its own code installed, its builds built, its
    own `elbolab run` with the filters of `config` (an elbolab.ab.ABConfig)."""
    from elbolab.ab import run_argv, run_side

    with commit_side(repo, sha, needed, tmp, log, extra_env) as side:
        if isinstance(side, Failure):
            return side
        leave, notes = left_out(side, needed)
        selected = config.filter("backend") or tuple(backend_names)
        if leave and set(selected) <= leave:
            return Failure("build", "; ".join(notes))
        out = side.tree.parent / "run.json"
        try:
            run = run_side(side, run_argv(config, out, leave, backend_names, side.cli), out)
        except UsageError as exc:
            return Failure("run", str(exc))
        return Measured(as_commit(run, sha, notes=notes), tuple(notes))


def origin_of(kind: str, config) -> str:
    """What a measuring session asked for, as stored with its runs and skips."""
    spec = {name: list(values) for name, values in config.run_filters}
    spec.update(quick=config.quick, seed=config.seed, sizes=dict(config.sizes))
    return f"{kind} {canonical(spec)}"


@dataclass(frozen=True)
class BackfillResult:
    measured: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (commit, why)
    already: tuple[str, ...]


def backfill(store: Store, repo: Path, commits: Sequence[str], config, machine_name: str | None = None,
             log: Log = lambda _: None, force: bool = False, extra_env: dict[str, str] | None = None,
             ) -> BackfillResult:  # fmt: skip
    """Measure each commit (oldest first) on this machine and store it; commits measured (or found
    unmeasurable) before with the same filters on this machine are passed over unless `force`."""
    from elbolab.ab import builds_needed
    from elbolab.backend import discover
    from elbolab.machine import machine_info

    machine = Machine.of(machine_info(), machine_name or os.environ.get(MACHINE_ENV) or None)
    origin = origin_of("backfill", config)
    backends = discover()
    needed = builds_needed(backends, config.filter("backend"))
    done = {r.commit for r in store.runs(machine.machine_id, origin=origin)}
    failed = {s.commit: f"{s.stage}: {s.reason}" for s in store.skips(machine.machine_id, origin=origin)}
    measured, skipped, already = [], [], []
    with tempfile.TemporaryDirectory(prefix="elbolab-history-") as tmpdir:
        tmp = Path(tmpdir)
        for i, sha in enumerate(commits):
            head = f"[{i + 1}/{len(commits)}] {sha[:10]}"
            if not force and sha in done:
                log(f"{head}: already measured on this machine")
                already.append(sha)
                continue
            if not force and sha in failed:
                log(f"{head}: skipped before ({failed[sha]}); --force to try again")
                skipped.append((sha, failed[sha]))
                continue
            t0 = time.perf_counter()
            got = measure_commit(repo, sha, config, needed, tuple(backends), tmp, log, extra_env)
            if isinstance(got, Failure):
                log(f"{head}: SKIPPED, {got.stage} failed: {got.reason}")
                store.record_skip(sha, machine.machine_id, origin, got.stage, got.reason)
                skipped.append((sha, f"{got.stage}: {got.reason}"))
                continue
            for note in got.notes:
                store.record_skip(sha, machine.machine_id, origin, "build", note)
            res = store.ingest(got.run, source=f"history run {sha}", machine_name=machine_name, origin=origin,
                               commit_info=commit_info(repo, sha))  # fmt: skip
            ok = sum(1 for m in got.run.measurements if m.status == "ok")
            log(
                f"{head}: {ok}/{len(got.run.measurements)} cases ok in {time.perf_counter() - t0:.0f} s; {res.message}"
            )
            measured.append(sha)
    return BackfillResult(tuple(measured), tuple(skipped), tuple(already))


# ------------------------------------------------------------------------------------ bisect


@dataclass(frozen=True)
class Step:
    commit: str
    outcome: str  # good, bad, skip
    judgement: Judgement | None
    detail: str


@dataclass(frozen=True)
class FindResult:
    good: str
    bad: str
    first_bad: str | None
    last_good: str | None
    judgement: Judgement | None  # first_bad vs GOOD
    steps: tuple[Step, ...]
    message: str


def find(store: Store, repo: Path, good_ref: str, bad_ref: str, case: Case, config, rule: Rule = DEFAULT_RULE,
         machine_name: str | None = None, log: Log = lambda _: None, reuse: bool = False, attempts: int = 2,
         extra_env: dict[str, str] | None = None) -> FindResult:  # fmt: skip
    """Bisect GOOD..BAD (first-parent line) to the first commit whose `case` is a regression
    against GOOD by the shared verdict. Every measurement is stored. A commit that cannot be
    measured, or stays 'too noisy to tell' after `attempts` measurements, is skipped (as `git
    bisect skip` does) and a neighbour is tried.

    Each commit is measured paired with GOOD: both installed side by side and timed by the gate's
    interleaved worker pairs (elbolab.ab.measure_interleaved), judged on the paired interval over
    the worker pairs, so that a shared machine's load, which can double a time between two separate
    runs, falls on both alike. Separate runs, judged on their pooled samples, are the fallback: with
    `reuse` (stored runs of this machine stand in for measuring), or a GOOD that predates the
    interleaved workers."""
    from elbolab.ab import builds_needed
    from elbolab.backend import discover
    from elbolab.machine import machine_info

    good, bad = rev(repo, good_ref), rev(repo, bad_ref)
    if good == bad:
        raise UsageError("GOOD and BAD are the same commit")
    if _git(repo, "merge-base", "--is-ancestor", good, bad).returncode != 0:
        raise UsageError(f"{good_ref} is not an ancestor of {bad_ref}: nothing to bisect between them")
    line = commit_range(repo, f"{good}..{bad}")
    if line[-1] != bad:
        raise UsageError(f"{bad_ref} is not on the first-parent line after {good_ref}")
    log(
        f"bisecting {len(line)} commits after {good[:10]} up to {bad[:10]} on {case.label()} ({rule.describe()})"
    )
    machine = Machine.of(machine_info(), machine_name or os.environ.get(MACHINE_ENV) or None)
    origin = origin_of("find", config)
    backends = discover()
    needed = builds_needed(backends, config.filter("backend"))
    steps: list[Step] = []

    with tempfile.TemporaryDirectory(prefix="elbolab-find-") as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        good_side = None
        if not reuse:
            good_side = stack.enter_context(commit_side(repo, good, needed, tmp, log, extra_env, "base"))
            if isinstance(good_side, Failure):
                raise UsageError(f"cannot measure GOOD ({good_ref}, {good[:10]}): {good_side.stage} failed: "
                                 f"{good_side.reason}")  # fmt: skip
            leave, notes = left_out(good_side, needed)
            if case.backend in leave:
                raise UsageError(f"cannot measure GOOD ({good_ref}, {good[:10]}): {'; '.join(notes)}")
            if not good_side.serves_stdio():
                log("GOOD predates the interleaved A/B workers: each commit is measured in a run of its own")
                good_side = None
        common = dict(store=store, repo=repo, good=good, case=case, config=config, rule=rule, needed=needed, tmp=tmp,
                      log=log, extra_env=extra_env, machine=machine, machine_name=machine_name, origin=origin)  # fmt: skip
        if good_side is not None:
            log(f"each commit is measured paired with GOOD {good[:10]} (interleaved worker pairs)")
            session = _PairedWithGood(**common, good_side=good_side, backends=backends)
        else:
            session = _SeparateRuns(**common, reuse=reuse, backend_names=tuple(backends))
            log(f"GOOD {good[:10]}: measuring {case.label()}")
            why = session.measure(good)
            if why:
                raise UsageError(f"cannot measure GOOD ({good_ref}, {good[:10]}): {why}")

        def not_a_regression(j: Judgement) -> bool:
            # the question a bisect asks is "a regression or not", the gate's stopping rule: an
            # interval wholly below the threshold answers "not", even where the verdict is noisy
            return j.verdict is not Verdict.NOISY or j.ci95[1] < 1 + rule.threshold_for(case.workload)

        def classify(sha: str) -> Step:
            why = session.measure(sha)
            if why:
                return Step(sha, "skip", None, why)
            for attempt in range(attempts):
                j = session.verdict(sha)
                if j.regression:
                    return Step(sha, "bad", j, _describe(j))
                if not_a_regression(j) or attempt + 1 == attempts:
                    break
                log(f"{sha[:10]}: too noisy to tell ({_describe(j)}); measuring it {session.again}")
                why = session.measure_again(sha)
                if why:
                    return Step(sha, "skip", j, why)
            if not not_a_regression(j):
                return Step(sha, "skip", j, f"still too noisy to tell: {_describe(j)}")
            if j.verdict is Verdict.NOISY:
                return Step(
                    sha, "good", j, f"not a regression, the interval is below the threshold: {_describe(j)}"
                )
            return Step(sha, "good", j, _describe(j))

        log(f"BAD {bad[:10]}: measuring")
        first = classify(bad)
        steps.append(first)
        log(f"BAD {bad[:10]}: {first.outcome}, {first.detail}")
        if first.outcome != "bad":
            msg = (f"{bad_ref} is not a regression against {good_ref} by the rule ({first.detail}): nothing to find"
                   if first.outcome == "good" else f"cannot judge {bad_ref}: {first.detail}")  # fmt: skip
            return FindResult(good, bad, None, None, first.judgement, tuple(steps), msg)
        lo, hi = -1, len(line) - 1  # line[lo] is good (-1: GOOD itself), line[hi] is bad
        skipped: set[int] = set()
        judgements = {bad: first.judgement}
        while hi - lo > 1:
            mid = (lo + hi) // 2
            order = sorted(
                (i for i in range(lo + 1, hi) if i not in skipped), key=lambda i: (abs(i - mid), i)
            )
            if not order:
                break
            i = order[0]
            step = classify(line[i])
            steps.append(step)
            log(f"{line[i][:10]} ({i + 1}/{len(line)}): {step.outcome}, {step.detail}")
            if step.outcome == "bad":
                hi = i
                judgements[line[i]] = step.judgement
            elif step.outcome == "good":
                lo = i
            else:
                skipped.add(i)
        last_good = good if lo < 0 else line[lo]
        first_bad = line[hi]
        unsure = [line[i] for i in range(lo + 1, hi)]
        if unsure:
            msg = (f"the first bad commit is one of {len(unsure) + 1}: {', '.join(c[:10] for c in [*unsure, first_bad])} "
                   f"(the others could not be judged)")  # fmt: skip
        else:
            msg = f"first bad commit: {first_bad} ({_describe(judgements[first_bad])} against GOOD)"
        return FindResult(good, bad, first_bad, last_good, judgements[first_bad], tuple(steps), msg)


@dataclass
class _Bisecting:
    """What every bisect measurement needs: where to store it, the commits, the case and rule, how
    to build a commit, and the machine it is stored under."""

    store: Store
    repo: Path
    good: str
    case: Case
    config: object
    rule: Rule
    needed: dict
    tmp: Path
    log: Log
    extra_env: dict[str, str] | None
    machine: Machine
    machine_name: str | None
    origin: str

    def skipped(self, sha: str, failure: Failure) -> str:
        """Store why sha could not be measured; the reason, for the bisect's log."""
        self.store.record_skip(sha, self.machine.machine_id, self.origin, failure.stage, failure.reason)
        return f"{failure.stage} failed: {failure.reason}"


@dataclass
class _SeparateRuns(_Bisecting):
    """Bisect measurements as separate runs: each commit's own `elbolab run` (or its stored runs,
    with `reuse`), judged on the per-call samples pooled over its runs against GOOD's."""

    reuse: bool
    backend_names: tuple[str, ...]
    samples: dict[str, list[np.ndarray]] = field(default_factory=dict)
    again = "and GOOD again"

    def measure(self, sha: str) -> str | None:
        """Add one measurement of the case at sha; None, or why it could not."""
        case, store = self.case, self.store
        if self.reuse and sha not in self.samples:
            rows = [r for r in store.rows(self.machine.machine_id, [case_id(case)])
                    if r.commit == sha and r.status == "ok"]  # fmt: skip
            if rows:
                self.samples[sha] = [r.per_call_ns for r in rows]
                self.log(f"{sha[:10]}: {len(rows)} stored run(s) reused")
                return None
        got = measure_commit(self.repo, sha, self.config, self.needed, self.backend_names, self.tmp, self.log,
                             self.extra_env)  # fmt: skip
        if isinstance(got, Failure):
            return self.skipped(sha, got)
        store.ingest(got.run, source=f"history find {sha}", machine_name=self.machine_name, origin=self.origin,
                     commit_info=commit_info(self.repo, sha))  # fmt: skip
        ms = [m for m in got.run.measurements if m.case.key() == case.key()]
        if not ms:
            return f"the run did not measure {case.label()}"
        if not ms[0].timed_ok:
            return f"{ms[0].status}: {ms[0].reason or ''}".strip()
        self.samples.setdefault(sha, []).append(ms[0].per_call_ns)
        return None

    def measure_again(self, sha: str) -> str | None:
        return self.measure(self.good) or self.measure(sha)

    def verdict(self, sha: str) -> Judgement:
        good, mine = self.samples[self.good], self.samples[sha]
        return judge(np.concatenate(good), np.concatenate(mine), self.rule, self.case.workload,
                     [float(np.median(s)) for s in good], [float(np.median(s)) for s in mine])  # fmt: skip


@dataclass
class _PairedWithGood(_Bisecting):
    """Bisect measurements paired with GOOD: the commit and GOOD (installed once for the whole
    bisect) timed together by interleaved worker pairs, as the gate does; each such session stores
    a run of either side; a commit's sessions are pooled pair by pair and judged as the gate judges
    (elbolab.compare, on the paired interval over the worker pairs)."""

    good_side: Side
    backends: dict
    sessions: dict[str, list[tuple[Run, Run]]] = field(default_factory=dict)  # (GOOD's run, the commit's)
    again = "paired with GOOD again"

    def measure(self, sha: str) -> str | None:
        from elbolab.ab import measure_interleaved, plan_for

        case, store = self.case, self.store
        with commit_side(self.repo, sha, self.needed, self.tmp, self.log, self.extra_env, "head") as side:
            if isinstance(side, Failure):
                return self.skipped(sha, side)
            leave, notes = left_out(side, self.needed)
            if case.backend in leave:
                return self.skipped(sha, Failure("build", "; ".join(notes)))
            if not side.serves_stdio():
                return "it predates the interleaved A/B workers, so it cannot be paired with GOOD"
            cases = [c for c in plan_for(self.config, self.backends, set()) if c.key() == case.key()]
            if not cases:
                return f"{case.label()} is not a case of this lab's plan"
            runs = measure_interleaved(self.config, self.rule, {"base": self.good_side, "head": side}, cases,
                                       self.log)  # fmt: skip
        pair = (
            as_commit(runs["base"], self.good, paired_with=sha),
            as_commit(runs["head"], sha, paired_with=self.good),
        )
        for commit, run in ((self.good, pair[0]), (sha, pair[1])):
            store.ingest(run, source=f"history find {sha} paired with GOOD", machine_name=self.machine_name,
                         origin=self.origin, commit_info=commit_info(self.repo, commit))  # fmt: skip
        for run in pair:
            (m,) = [m for m in run.measurements if m.case.key() == case.key()]
            if not m.timed_ok:
                return f"{m.status}: {m.reason or ''}".strip()
        self.sessions.setdefault(sha, []).append(pair)
        return None

    def measure_again(self, sha: str) -> str | None:
        return self.measure(sha)

    def verdict(self, sha: str) -> Judgement:
        from elbolab.compare import compare, pool_rounds

        sessions = self.sessions[sha]
        report = compare(
            pool_rounds([g for g, _ in sessions]), pool_rounds([m for _, m in sessions]), rule=self.rule
        )
        (c,) = [c for c in report.comparisons if c.case.key() == self.case.key()]
        return c.judgement


def _describe(j: Judgement) -> str:
    lo, hi = j.ci95
    hi_text = "inf" if math.isinf(hi) else f"{hi:.3f}"
    tail = ", a regression" if j.regression else ""
    return f"{j.verdict.value} {j.ratio:.3f}x [{lo:.3f}, {hi_text}]{tail}"


describe = _describe
