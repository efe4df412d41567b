"""Data safety under faults: two writers, SIGTERM, SIGKILL at random points, a full disk, and an A/B
gate cancelled midway. Each run is a real `elbolab` process; the results file must stay valid and
keep every finished case, and nothing (workers, worktrees, temporary files) may be left behind.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from elbolab.store.results import load

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
MANY = ",".join(str(b) for b in range(1, 41))  # 40 quick elbo cases: several seconds of measuring


def elbolab(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "elbolab.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, **kw)  # fmt: skip


def run_args(out: Path, batches: str = MANY) -> list[str]:
    return ["run", "--backend", "numpy", "--workload", "elbo", "--batch", batches, "--dtype", "float64",
            "--threads", "1", "--variant", "eps=given", "--quick", "--no-limits", "--no-control", "--out", str(out)]  # fmt: skip


def wait_for(predicate, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def cases_in(path: Path) -> int:
    try:
        return len(json.loads(path.read_text())["measurements"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def test_a_second_writer_is_refused_and_the_first_keeps_every_case(tmp_path):
    out = tmp_path / "run.json"
    first = elbolab(*run_args(out))
    wait_for(lambda: cases_in(out) >= 1)
    second = elbolab(*run_args(out, "1,2"), "--overwrite")
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2 and "being written by another elbolab" in err
    assert len(err.strip().splitlines()) == 1
    assert first.wait(timeout=300) == 0
    run = load(out)
    assert len(run.measurements) == 40 and run.finished
    assert not list(tmp_path.glob(".*"))  # no lock or temporary file left


def test_sigterm_stops_the_workers_and_leaves_a_valid_file(tmp_path):
    out = tmp_path / "run.json"
    proc = elbolab(*run_args(out))
    wait_for(lambda: cases_in(out) >= 3)
    workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert workers, "expected a worker process"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    run = load(out)  # valid, with the cases finished before the signal
    assert 3 <= len(run.measurements) < 40 and run.finished is None
    time.sleep(0.5)
    assert not [
        p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    # and the run can be finished
    done = elbolab(*run_args(out), "--resume")
    assert done.wait(timeout=300) == 0 and len(load(out).measurements) == 40


def test_sigkill_at_random_moments_never_leaves_an_invalid_file(tmp_path):
    rng = random.Random(7)
    out = tmp_path / "run.json"
    finished_before = 0
    for _ in range(4):
        proc = elbolab(*run_args(out), *(["--resume"] if out.exists() else []))
        time.sleep(rng.uniform(0.5, 4.0))
        proc.kill()  # SIGKILL: no handler runs, no cleanup
        proc.wait()
        if out.exists():
            run = load(out)  # complete, valid JSON at every moment
            n = len(run.measurements)
            assert n >= finished_before  # no finished case lost
            assert len({m.case for m in run.measurements}) == n  # and none measured twice
            finished_before = n
    proc = elbolab(*run_args(out), *(["--resume"] if out.exists() else []))
    assert proc.wait(timeout=300) == 0
    assert len(load(out).measurements) == 40
    assert not list(tmp_path.glob(".*.tmp"))  # a resumed run cleans what a killed one left


def _limit_file_size(limit: int):
    def limit_it():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_it


def test_a_full_disk_mid_run_is_one_line_exit_2_and_a_valid_file(tmp_path):
    """The results file grows with every case until the file system (here a file-size limit, the
    same failure to the writer) refuses it: the previous version must survive, whole."""
    out = tmp_path / "run.json"
    proc = elbolab(*run_args(out), preexec_fn=_limit_file_size(40_000))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert "cannot write" in lines[-1] and "previous version is kept" in lines[-1] and "Traceback" not in err
    run = load(out)
    assert 1 <= len(run.measurements) < 40
    assert not list(tmp_path.glob(".*"))


def test_a_full_tmpfs_mid_run(tmp_path):
    """The same on a real full file system where one can be mounted (root in a container)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("cannot mount a small tmpfs here (needs root); the file-size limit test covers it")
    try:
        out = mnt / "run.json"
        proc = elbolab(*run_args(out))
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and "the disk is full" in err.strip().splitlines()[-1]
        assert 1 <= len(load(out).measurements) < 40
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _worktrees() -> str:
    return subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout


def test_sigterm_during_an_ab_gate_removes_its_worktree_and_runs(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    before = {p.name for p in Path("/tmp").glob("elbolab-gate-*")}
    proc = elbolab("gate", "--base", "HEAD", "--backend", "numpy", "--workload", "elbo", "--batch", MANY,
                   "--dtype", "float64", "--threads", "1", "--quick", "--rounds", "3")  # fmt: skip
    wait_for(lambda: "elbolab-gate-" in _worktrees(), timeout=120)
    time.sleep(3)  # into the measuring
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "elbolab-gate-" not in _worktrees()
    assert {p.name for p in Path("/tmp").glob("elbolab-gate-*")} <= before
    time.sleep(1)
    alive = [
        p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert not alive, "processes of the gate outlived it"
