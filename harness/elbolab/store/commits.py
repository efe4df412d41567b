"""The commit graph, read from git: revisions resolved, ranges listed, measured commits put in
history order (git ancestry, never wall-clock), commit facts for the store.

One `git` helper for the lab: a missing git or a bad revision is a UsageError (one line, exit 2).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from elbolab.model.errors import UsageError


def git(repo: Path, *argv: str, check: bool = False) -> subprocess.CompletedProcess:
    """`git -C repo ARGV`; with `check`, a failure is a UsageError naming the command."""
    try:
        proc = subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True)
    except FileNotFoundError:
        raise UsageError("git is not installed; comparing revisions and ordering commits need git") from None
    if check and proc.returncode != 0:
        last = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise UsageError(f"git {' '.join(argv[:2])} failed: {last[-1] if last else proc.returncode}")
    return proc


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
    out = git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if out.returncode != 0:
        raise UsageError(f"{ref!r} is not a git revision of {repo}")
    return out.stdout.strip()


def commit_info(repo: Path | None, sha: str | None) -> dict | None:
    """Committer date, parents and subject of a commit, if the repository knows it."""
    if repo is None or not sha:
        return None
    out = git(repo, "show", "-s", "--format=%cI%x00%P%x00%s", sha, "--")
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
        out = git(repo, "rev-list", "--first-parent", "--topo-order", "--reverse", f"{sa}..{sb}")
        if out.returncode != 0:
            raise UsageError(f"git rev-list {spec} failed: {out.stderr.strip()[:200]}")
        commits = out.stdout.split()
        if not commits:
            raise UsageError(f"{spec!r} holds no commits (is {a} an ancestor of {b}?)")
        return commits
    return [rev(repo, spec)]


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
        out = git(self.repo, "rev-list", "--count", f"{good}..{bad}")
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
    out = git(repo, "rev-list", "--topo-order", "--reverse", head)
    if out.returncode != 0:
        raise UsageError(f"git rev-list {ref} failed: {out.stderr.strip()[:200]}")
    pos = {c: i for i, c in enumerate(out.stdout.split())}
    placed = sorted((s for s in shas if s in pos), key=pos.__getitem__)
    left_out = {}
    for s in sorted(shas - set(placed)):
        known = git(repo, "cat-file", "-e", f"{s}^{{commit}}").returncode == 0
        left_out[s] = f"not on the history of {ref}" if known else "not in this repository"
    return Order(tuple(placed), f"by git ancestry of {ref} ({head[:10]})", left_out, repo)
