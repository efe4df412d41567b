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
import tempfile
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_during_an_ab_gate_removes_its_worktree_and_runs(tmp_path, sig):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    before = {p.name for p in Path("/tmp").glob("elbolab-gate-*")}
    proc = elbolab("gate", "--base", "HEAD", "--backend", "numpy", "--workload", "elbo", "--batch", MANY,
                   "--dtype", "float64", "--threads", "1", "--quick", "--rounds", "3")  # fmt: skip
    wait_for(lambda: "elbolab-gate-" in _worktrees(), timeout=120)
    time.sleep(3)  # into the measuring
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    took, _, err = signal_and_time(proc, sig, timeout=120)
    assert_quick_exit(took, f"gate --base, {signal.Signals(sig).name}")
    assert proc.returncode == 130 and "Traceback" not in err
    assert "elbolab-gate-" not in _worktrees()
    assert {p.name for p in Path("/tmp").glob("elbolab-gate-*")} <= before
    time.sleep(1)
    alive = [
        p for p in children if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert not alive, "processes of the gate outlived it"


# ------------------------------------------------------------------------------------ round two
#
# Signals in every command, links where a results file is, plugins that fork, interrupt, write to
# stdout or answer with no arrays, and pipes closed early. Each is a real `elbolab` process.

# The bound on the time from a signal to the exit; asserted with a margin for this shared
# 2-core VM (other sessions' work runs beside the tests), the times measured printed
SIGNAL_EXIT_S = 5.0
MARGIN = 2.0
HOSTILE = "tests.hostile_backends"


def hostile_env(tmp_path: Path, *names: str) -> dict:
    return dict(os.environ, ELBOLAB_BACKENDS=",".join(f"{HOSTILE}:{n.replace('-', '_')}" for n in names),
                ELBOLAB_TEST_PIDS=str(tmp_path / "child-pids"))  # fmt: skip


def gone(pids, within: float = 2.0) -> bool:
    """Every process of `pids` ended within `within` s (multiprocessing's resource tracker ends
    when it reads the end of its pipe, a moment after the command)."""
    t0 = time.monotonic()
    while alive(pids):
        if time.monotonic() - t0 > within:
            return False
        time.sleep(0.05)
    return True


def alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def child_pids(tmp_path: Path) -> list[int]:
    f = tmp_path / "child-pids"
    return [int(x) for x in f.read_text().split()] if f.exists() else []


def descendants(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signal_and_time(proc: subprocess.Popen, sig: int, timeout: float = 60) -> tuple[float, str, str]:
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return time.monotonic() - t0, out, err


def assert_quick_exit(took: float, what: str) -> None:
    print(f"\n{what}: exited {took:.2f} s after the signal")
    assert took <= SIGNAL_EXIT_S * MARGIN, f"{what}: {took:.1f} s after the signal"


def leftovers(folder: Path) -> list[str]:
    """What a run leaves beside its file when it ends badly: locks and temporaries."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".lock", ".tmp")))


def _references_of(pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"elbolab-references-{pid}-*"))


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_a_signal_during_run_ends_it_within_5_s_and_leaves_nothing(tmp_path, sig):
    out = tmp_path / "run.json"
    proc = elbolab(*run_args(out))
    wait_for(lambda: cases_in(out) >= 2)
    workers = descendants(proc.pid)
    assert workers and _references_of(proc.pid)
    took, _, err = signal_and_time(proc, sig)
    assert_quick_exit(took, f"run, {signal.Signals(sig).name}")
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "elbolab: interrupted", err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert not leftovers(tmp_path) and not _references_of(proc.pid)
    assert gone(workers)
    run = load(out)
    assert 2 <= len(run.measurements) < 40 and run.finished is None  # finished work kept


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_train_ends_it_within_5_s(tmp_path, sig):
    out = tmp_path / "t.json"
    proc = elbolab("train", "--backend", "numpy", "--steps", "1000000", "--out", str(out))
    wait_for(lambda: len(descendants(proc.pid)) >= 2, timeout=120)  # both dtypes training
    time.sleep(1)
    workers = descendants(proc.pid)
    took, _, err = signal_and_time(proc, sig)
    assert_quick_exit(took, f"train, {signal.Signals(sig).name}")
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert not leftovers(tmp_path) and gone(workers)


def test_a_signal_during_report_leaves_no_page_and_no_temporary(tmp_path):
    page = tmp_path / "r.html"
    proc = elbolab("report", str(ROOT / "results" / "reference-2core.json"), "-o", str(page))
    time.sleep(2.5)  # into loading and building (a 720-case report takes several seconds here)
    took, _, err = signal_and_time(proc, signal.SIGTERM)
    assert_quick_exit(took, "report, SIGTERM")
    if proc.returncode == 0:
        pytest.skip("the report finished before the signal: nothing was interrupted")
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert not page.exists() and not leftovers(tmp_path)


def test_a_signal_during_ingest_stores_the_run_whole_or_not_at_all(tmp_path):
    from elbolab.store.database import Store

    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    Store.open(url).close()
    runs = []
    for i in range(6):  # several big runs: the signal lands while one of them is going in
        doc = json.loads((ROOT / "results" / "reference-2core.json").read_text())
        doc["run_id"] = f"big-{i}"
        (tmp_path / f"big-{i}.json").write_text(json.dumps(doc))
        runs.append(str(tmp_path / f"big-{i}.json"))
    proc = elbolab("history", "ingest", *runs, "--store", url)
    wait_for(lambda: (tmp_path / "h.sqlite-wal").exists(), timeout=60)
    time.sleep(0.3)
    took, _, err = signal_and_time(proc, signal.SIGINT)
    assert_quick_exit(took, "history ingest, SIGINT")
    assert proc.returncode in (0, 130) and "Traceback" not in err, err
    with Store.open(url, create=False) as store:
        for r in store.runs():  # every stored run is whole
            assert r.n_measurements == len(store.load_run(r.run_id).measurements) == 720


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_a_signal_during_a_backfill_removes_its_worktree(tmp_path, sig):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    proc = elbolab("history", "run", "HEAD~1..HEAD", "--store", url, "--backend", "numpy", "--workload", "elbo",
                   "--batch", MANY, "--dtype", "float64", "--threads", "1", "--quick")  # fmt: skip
    wait_for(lambda: "elbolab-" in _worktrees() and len(descendants(proc.pid)) >= 2, timeout=180)
    time.sleep(2)
    children = descendants(proc.pid)
    took, _, err = signal_and_time(proc, sig, timeout=120)
    assert_quick_exit(took, f"history run, {signal.Signals(sig).name}")
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "elbolab-" not in _worktrees().replace(str(ROOT), "")
    assert gone(children)


def hostile_run(tmp_path: Path, backend: str, batches: str = "1,7", *extra: str, timeout: float = 300):
    out = tmp_path / "run.json"
    proc = elbolab(*run_args(out, batches), "--backend", backend, *extra, env=hostile_env(tmp_path, backend))
    t0 = time.monotonic()
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr, time.monotonic() - t0, load(out) if out.exists() else None


def by_batch(run) -> dict:
    return {m.case.batch: m for m in run.measurements if m.case.backend != "numpy"}


def run_args_for(out: Path, backend: str, batches: str) -> list[str]:
    args = run_args(out, batches)
    args[args.index("--backend") + 1] = backend
    return args


def run_hostile(tmp_path: Path, backend: str, batches: str, *extra: str) -> tuple[dict, str, float]:
    """Run a hostile plugin backend beside NumPy: its cases by batch, stderr, and the seconds taken;
    the run itself must succeed whatever the backend did."""
    out = tmp_path / "run.json"
    proc = elbolab(*run_args_for(out, backend, batches), *extra, env=hostile_env(tmp_path, backend))
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=300)
    took = time.monotonic() - t0
    assert proc.returncode == 0, err
    return by_batch(load(out)), err, took


def test_a_backend_whose_child_outlives_its_call_is_implausible_and_its_child_ended(tmp_path):
    m, _, _ = run_hostile(tmp_path, "forking", "1,7")
    assert m[1].status == "ok"
    assert m[7].status == "implausible" and "child process" in m[7].reason
    assert child_pids(tmp_path) and gone(child_pids(tmp_path))  # ended with its case


def test_a_backend_that_forks_then_dies_is_failed_at_once_and_its_child_ended(tmp_path):
    m, _, took = run_hostile(tmp_path, "forking-dies", "1,7", "--timeout", "120")
    assert m[1].status == "ok"
    assert m[7].status == "failed" and "worker died" in m[7].reason and "exit code 3" in m[7].reason, m[
        7
    ].reason
    assert took < 120  # not the whole timeout: the child holding the pipe does not hide the death
    assert child_pids(tmp_path) and gone(child_pids(tmp_path))


def test_keyboard_interrupt_inside_a_backend_is_its_case_failing_not_the_run(tmp_path):
    m, err, _ = run_hostile(tmp_path, "interrupting", "1,7,8")
    assert "Traceback" not in err, err
    assert m[1].status == m[8].status == "ok"
    assert m[7].status == "failed" and "raised KeyboardInterrupt" in m[7].reason


@pytest.mark.parametrize(
    "backend, reason",
    [
        ("outputs-none", "outputs() returned NoneType, not a mapping of output names to arrays"),
        ("outputs-list", "outputs() returned list, not a mapping"),
        ("outputs-str", "outputs() returned str, not a mapping"),
        ("complex-outputs", "is complex128 (complex), not real floating point"),
    ],
)
def test_outputs_that_are_no_real_arrays_are_incorrect_with_the_reason(tmp_path, backend, reason):
    m, err, _ = run_hostile(tmp_path, backend, "1,7")
    assert "Traceback" not in err and "Warning" not in err, err
    assert m[1].status == "ok"
    assert m[7].status == "incorrect" and reason in m[7].reason, m[7].reason


def test_an_exception_in_outputs_is_named_as_such(tmp_path):
    m, _, _ = run_hostile(tmp_path, "outputs-raising", "1,7")
    assert m[1].status == "ok"
    assert m[7].status == "failed" and m[7].reason.startswith(
        "reading outputs raised ValueError: no outputs today"
    )


def test_the_timeout_bounds_a_case_not_the_start_of_its_worker(tmp_path):
    """slow-start takes 4 s to start (its library's import), twice the case timeout."""
    out = tmp_path / "run.json"
    proc = elbolab(
        *run_args_for(out, "slow-start", "1"), "--timeout", "2", env=hostile_env(tmp_path, "slow-start")
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    (m,) = by_batch(load(out)).values()
    assert m.status == "ok", m.reason


def test_a_backend_writing_to_stdout_cannot_reach_the_output_of_run(tmp_path):
    out = tmp_path / "run.json"
    proc = elbolab(*run_args_for(out, "stdout-writer", "1"), env=hostile_env(tmp_path, "stdout-writer"))
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "kernel says hello" not in stdout and "kernel says hello" in err
    assert all(m.status == "ok" for m in load(out).measurements)


def test_a_backend_writing_to_fd_1_cannot_corrupt_the_gate_protocol(tmp_path):
    """The A/B gate's worker speaks JSON lines on its stdout: a backend's own writes to fd 1 go to
    stderr, and a worker of an older revision that lets them through is a failed case, not a
    traceback."""
    from elbolab.measure.timer import TimerConfig
    from elbolab.measure.worker import StdioWorker
    from elbolab.model.case import Case

    env = hostile_env(tmp_path, "stdout-writer")
    worker = StdioWorker(
        [sys.executable, "-m", "elbolab.measure.worker", "stdout-writer", "1"], env, ROOT, timeout=120
    )
    try:
        assert "hello" in worker.hello
        case = Case("elbo", "stdout-writer", batch=8)
        reply = worker.ask({"op": "open", "case": case.to_json(), "timer": TimerConfig.quick().to_json()})
        assert reply["status"] == "ok", reply
        assert len(worker.ask({"op": "sample", "count": 3})["samples_ns"]) == 3
    finally:
        worker.close()
    garbage = StdioWorker(
        [sys.executable, "-c", "print('kernel says hello')"], env, ROOT, timeout=60, greet=False
    )
    with pytest.raises(RuntimeError, match="where its protocol goes"):
        garbage.greet()
    garbage.close()


def test_a_plugin_under_a_built_in_name_is_refused_said_and_recorded(tmp_path):
    env = hostile_env(tmp_path, "impostor")
    listing = subprocess.run([sys.executable, "-m", "elbolab.cli", "list"], env=env, capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert listing.returncode == 0
    assert (
        "'tests.hostile_backends:impostor' not loaded: its name 'numpy' is taken by 'backends.numpy:backend'"
        in listing.stdout
    )
    out = tmp_path / "run.json"
    proc = elbolab(*run_args_for(out, "numpy", "1"), env=env)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "elbolab: warning: backend 'tests.hostile_backends:impostor' not loaded" in err
    run = load(out)
    assert any("impostor" in e for e in run.software["backends_not_loaded"])
    assert all("impostor" not in m.notes for m in run.measurements)  # NumPy's times are NumPy's


@pytest.mark.parametrize(
    "plugin, problem",
    [
        ("unnamed", "an empty name"),
        ("long_named", "a name of 300 characters (at most 64)"),
        ("escape_named", "a name with '\\x1b' in it"),
        ("comma_named", "a name with ',' in it"),
    ],
)
def test_a_plugin_with_a_name_no_one_can_type_or_print_is_refused(tmp_path, plugin, problem):
    env = hostile_env(tmp_path, plugin)
    listing = subprocess.run([sys.executable, "-m", "elbolab.cli", "list"], env=env, capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert listing.returncode == 0 and "Traceback" not in listing.stderr
    assert problem in listing.stdout, listing.stdout
    assert "\x1b" not in listing.stdout  # an escape sequence from a plugin never reaches the terminal
    assert max(len(line) for line in listing.stdout.splitlines()) <= 300


def test_an_escape_sequence_in_a_results_file_prints_as_text(tmp_path):
    from elbolab.model.case import Case
    from elbolab.store.results import save
    from tests.builders import make_run, ok

    f = tmp_path / "ansi.json"
    save(f, make_run([ok(Case("elbo", "red\x1b[31malert"), [1e5] * 9), ok(Case("elbo", "numpy"), [1e5] * 9)]))
    for argv in (["show", str(f)], ["compare", str(f), str(f)], ["claims", str(f)]):
        proc = subprocess.run(
            [sys.executable, "-m", "elbolab.cli", *argv], capture_output=True, text=True, cwd=ROOT
        )
        assert proc.returncode == 0, proc.stderr
        assert "\x1b" not in proc.stdout, argv
        assert argv[0] == "claims" or "red\\x1b[31malert" in proc.stdout, argv  # shown, not obeyed


def test_resume_through_a_link_finishes_the_run_where_it_is_and_keeps_the_link(tmp_path):
    real = tmp_path / "elsewhere" / "run.json"
    real.parent.mkdir()
    proc = elbolab(*run_args(real))
    wait_for(lambda: cases_in(real) >= 2)
    proc.kill()  # an unfinished run, as a crash leaves it
    proc.wait()
    link = tmp_path / "link.json"
    link.symlink_to(real)
    mine = real.parent / ".run.json.keep.tmp"  # the user's own file, named like a temporary
    mine.write_text("keep me\n")
    done = elbolab(*run_args(link), "--resume")
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err
    assert link.is_symlink() and os.readlink(link) == str(real)
    run = load(real)
    assert len(run.measurements) == 40 and run.finished
    assert mine.read_text() == "keep me\n"
    assert not leftovers(tmp_path) and leftovers(real.parent) == [mine.name]


def test_ingest_refuses_a_run_still_being_written_and_takes_it_once_finished(tmp_path):
    out = tmp_path / "run.json"
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    proc = elbolab(*run_args(out))
    wait_for(lambda: cases_in(out) >= 1)
    ingest = elbolab("history", "ingest", str(out), "--store", url)
    _, err = ingest.communicate(timeout=120)
    assert ingest.returncode == 2 and f"is unfinished (being written by pid {proc.pid})" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "h.sqlite").exists()  # nothing stored
    assert proc.wait(timeout=300) == 0
    ingest = elbolab("history", "ingest", str(out), "--store", url)
    stdout, err = ingest.communicate(timeout=120)
    assert ingest.returncode == 0 and "stored run" in stdout, err


def test_gate_output_paths_are_checked_before_anything_is_measured(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    existing = tmp_path / "existing"
    existing.write_text("not a folder\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "base.json").write_text("{}")
    os.mkfifo(tmp_path / "fifo")
    for extra, message in (
        (["--save-runs", str(existing)], "not a folder"),
        (["--save-runs", str(tmp_path / "runs")], "base.json is there already"),
        (
            ["--markdown", str(tmp_path / "fifo")],
            "cannot write the Markdown report (not a regular file (a FIFO))",
        ),
    ):
        before = _gate_worktrees()
        t0 = time.monotonic()
        proc = elbolab("gate", "--base", "HEAD", "--backend", "numpy", "--workload", "elbo", "--batch", "128",
                       "--quick", *extra)  # fmt: skip
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert "gate:" not in err and _gate_worktrees() == before  # nothing was installed or measured
        print(f"\ngate refused {extra[0]} in {time.monotonic() - t0:.2f} s")
    assert existing.read_text() == "not a folder\n" and (tmp_path / "runs" / "base.json").read_text() == "{}"


def _gate_worktrees() -> list[str]:
    """The gate's temporary worktrees (the list also shows other worktrees' commits, which move)."""
    return [line for line in _worktrees().splitlines() if "elbolab-" in line]


def _big_results(tmp_path: Path, n: int) -> Path:
    from elbolab.model.case import Case
    from elbolab.store.results import save
    from tests.builders import make_run, ok

    f = tmp_path / f"big-{n}.json"
    save(f, make_run([ok(Case("elbo", "numpy", batch=b), [1e5 + b] * 9) for b in range(1, n + 1)]))
    return f


@pytest.mark.parametrize("command", ["compare", "gate", "show", "claims --json"])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, command):
    f = _big_results(tmp_path, 2000)
    files = f"{f}" if command.split()[0] in ("show", "claims") else f"{f} {f}"
    line = f"{sys.executable} -m elbolab.cli {command.split()[0]} {files} {' '.join(command.split()[1:])} | head -1"
    proc = subprocess.run(["bash", "-c", line + "; echo \"status ${PIPESTATUS[0]}\" >&2"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)  # fmt: skip
    status = int(proc.stderr.strip().splitlines()[-1].split()[-1])
    assert status in (0, 141), proc.stderr
    assert (
        "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr and "Exception" not in proc.stderr
    )


def test_show_of_a_20000_case_run_takes_under_2_s(tmp_path):
    """A thread sweep on a 64-core machine, or a month of nightly runs read together: 20,000
    cases of real measurements (the reference run's, repeated under other seeds), as elbolab writes
    them. The bound is the issue's 2 s; it is held to the command's CPU time (the wall time on
    this shared VM also counts other sessions' work), with the margin the signal tests have."""
    from dataclasses import replace

    from elbolab.store.results import save

    ref = load(ROOT / "results" / "reference-2core.json")
    ms = [replace(m, case=replace(m.case, seed=k)) for k in range(28) for m in ref.measurements][:20_000]
    f = tmp_path / "big.json"
    save(f, replace(ref, measurements=tuple(ms)))
    size_mb = f.stat().st_size / 1e6
    for extra in ([], ["--json"]):
        # measured by a parent of its own, so that its CPU time and peak memory are show's alone
        measure = ("import resource, subprocess, sys, time; t0 = time.monotonic(); "
                   "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); wall = time.monotonic() - t0; "
                   "u = resource.getrusage(resource.RUSAGE_CHILDREN); sys.stderr.write(p.stderr); "
                   "sys.stdout.write(p.stdout); sys.stderr.write(f'\\n{u.ru_utime + u.ru_stime} {wall} {u.ru_maxrss}\\n'); "
                   "sys.exit(p.returncode)")  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "elbolab.cli", "show", str(f), *extra],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        cpu, wall, peak_kb = map(float, proc.stderr.strip().splitlines()[-1].split())
        rows = len(json.loads(proc.stdout)["cases"]) if extra else proc.stdout.count("\n") - 3
        print(f"\nshow {' '.join(extra)} of {rows} cases ({size_mb:.0f} MB): {cpu:.2f} s CPU, {wall:.2f} s wall, "
              f"peak {peak_kb / 1024:.0f} MB")  # fmt: skip
        assert rows == 20_000
        assert cpu <= 2.0 * MARGIN
