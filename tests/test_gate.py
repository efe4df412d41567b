"""`elbolab compare` / `elbolab gate`: exit codes, Markdown output, pooling rounds, A/B end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from elbolab.analyse.compare import pool_rounds
from elbolab.cli import main
from elbolab.gate.ab import balanced_order
from elbolab.gate.revisions import build_maturin
from elbolab.model.backend import Build
from elbolab.model.case import Case
from elbolab.model.measurement import Measurement
from elbolab.store.results import save
from tests.builders import make_run, noisy, ok
from tests.test_compare import ELBO, GRAD

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, name: str, run) -> str:
    path = tmp_path / name
    save(path, run)
    return str(path)


@pytest.fixture
def pair(tmp_path):
    """base, an equal head, a 30%-slower head and a head from another machine, as files."""
    rng = np.random.default_rng(0)
    base = make_run([ok(ELBO, noisy(rng, 1e5)), ok(GRAD, noisy(rng, 2e5))])
    same = make_run([ok(ELBO, noisy(rng, 1e5)), ok(GRAD, noisy(rng, 2e5))])
    slow = make_run([ok(ELBO, noisy(rng, 1.3e5)), ok(GRAD, noisy(rng, 2e5))])
    other = make_run([ok(ELBO, noisy(rng, 1e5)), ok(GRAD, noisy(rng, 2e5))], cpu="Another CPU")
    return {
        k: write(tmp_path, f"{k}.json", v)
        for k, v in dict(base=base, same=same, slow=slow, other=other).items()
    }


def run_main(argv, capsys):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------- exit codes


def test_gate_passes_on_equal_runs(pair, capsys):
    code, out, err = run_main(["gate", pair["base"], pair["same"]], capsys)
    assert code == 0 and "PASS" in out


def test_gate_fails_with_1_on_a_confident_regression(pair, capsys):
    code, out, _ = run_main(["gate", pair["base"], pair["slow"]], capsys)
    assert code == 1 and "REGRESSION" in out and "FAIL: 1 regression(s)" in out


def test_a_higher_threshold_lets_it_pass(pair, capsys):
    assert run_main(["gate", pair["base"], pair["slow"], "--threshold", "0.5"], capsys)[0] == 0
    assert run_main(["gate", pair["base"], pair["slow"], "--threshold-for", "elbo=0.5"], capsys)[0] == 0


def test_compare_reports_but_exits_0_on_a_regression(pair, capsys):
    code, out, _ = run_main(["compare", pair["base"], pair["slow"]], capsys)
    assert code == 0 and "REGRESSION" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["gate", "{tmp}/missing.json", "{base}"], "no such results file"),
        (["gate", "{tmp}/corrupt.json", "{base}"], "not valid JSON"),
        (["compare", "{base}", "{tmp}/corrupt.json"], "not valid JSON"),
        (["gate", "{base}", "{tmp}/disjoint.json"], "no cases in common"),
        (["gate", "{base}", "{tmp}/subset.json"], "case sets differ"),
        (["gate", "{base}", "{other}"], "different machines"),
        (["gate", "{base}"], "gate needs BASE and HEAD"),
        (["gate", "{base}", "{same}", "--base", "HEAD"], "not both"),
        (["gate", "{base}", "{same}", "--quick"], "only apply with --base"),
        (["gate", "{base}", "{same}", "--threshold-for", "elbo"], "expected WORKLOAD=FRACTION"),
        (["gate", "{base}", "{same}", "--threshold-for", "elbow=0.2"], "unknown workload 'elbow'"),
        (["gate", "{base}", "{same}", "--threshold", "-1"], "threshold must be a positive"),
        (["gate", "--base", "no-such-ref-xyz"], "is not a git revision"),
        (["gate", "--base", "HEAD", "--rounds", "0"], "between 1 and"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, pair, tmp_path, capsys):
    (tmp_path / "corrupt.json").write_text('{"schema": "elbolab.run/2", "measurements": [')
    rng = np.random.default_rng(1)
    save(tmp_path / "disjoint.json", make_run([ok(Case("iwae", "numpy"), noisy(rng, 1e5))]))
    save(tmp_path / "subset.json", make_run([ok(ELBO, noisy(rng, 1e5))]))
    argv = [a.format(tmp=tmp_path, **pair) for a in argv]
    with pytest.raises(SystemExit) as info:  # argparse errors exit from inside main
        raise SystemExit(main(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_allow_missing_compares_the_common_cases(pair, tmp_path, capsys):
    rng = np.random.default_rng(2)
    subset = write(tmp_path, "subset.json", make_run([ok(ELBO, noisy(rng, 1.3e5))]))
    code, out, _ = run_main(["gate", pair["base"], subset, "--allow-missing"], capsys)
    assert code == 1 and "only in base" in out


def test_normalize_compares_runs_from_different_machines(tmp_path, capsys):
    rng = np.random.default_rng(3)
    rust = Case("elbo", "rust")
    base = write(
        tmp_path, "b.json", make_run([ok(ELBO, noisy(rng, 1e5)), ok(rust, noisy(rng, 5e4))], cpu="A")
    )
    head = write(
        tmp_path, "h.json", make_run([ok(ELBO, noisy(rng, 2e5)), ok(rust, noisy(rng, 1e5))], cpu="B")
    )
    code, out, _ = run_main(["gate", base, head, "--normalize"], capsys)
    assert code == 0 and "normalization reference itself" in out


def test_a_case_that_broke_fails_the_gate(pair, tmp_path, capsys):
    rng = np.random.default_rng(4)
    head = make_run([ok(ELBO, noisy(rng, 1e5)), Measurement(GRAD, "timeout", "killed after 300 s")])
    code, out, _ = run_main(["gate", pair["base"], write(tmp_path, "h.json", head)], capsys)
    assert code == 1 and "BROKEN" in out


# ------------------------------------------------------------------------------------ markdown


def test_markdown_is_appended_for_the_job_summary(pair, tmp_path, capsys):
    summary = tmp_path / "summary.md"
    summary.write_text("# CI\n")
    assert run_main(["gate", pair["base"], pair["slow"], "--markdown", summary], capsys)[0] == 1
    assert run_main(["compare", pair["base"], pair["same"], "--markdown", summary], capsys)[0] == 0
    text = summary.read_text()
    assert text.startswith("# CI\n")
    assert "### ❌ elbolab gate: FAIL" in text
    assert "### ✅ elbolab compare: compare only (exit 0); the gate would exit 0: PASS" in text
    assert text.count("| case | base | head | ratio (95% CI) | change | verdict |") == 2


def test_markdown_says_why_the_gate_could_not_run(pair, tmp_path, capsys):
    summary = tmp_path / "summary.md"
    assert run_main(["gate", pair["base"], pair["other"], "--markdown", summary], capsys)[0] == 2
    assert "could not compare" in summary.read_text() and "different machines" in summary.read_text()


# ----------------------------------------------------------------------------------- A/B parts


def test_balanced_order_alternates_who_goes_first():
    assert balanced_order(1) == ["base", "head"]
    assert balanced_order(3) == ["base", "head", "head", "base", "base", "head"]


def test_pool_rounds_pools_per_call_samples_across_loop_counts():
    r1 = make_run([ok(ELBO, [100.0, 110.0], loops=10), ok(GRAD, [5.0, 6.0], loops=3)], run_id="a")
    r2 = make_run([ok(ELBO, [120.0], loops=40), Measurement(GRAD, "timeout", "killed")], run_id="b")
    merged = pool_rounds([r1, r2])
    assert merged.run_id == "a+b" and merged.config["rounds"] == 2
    elbo, grad = merged.measurements
    assert elbo.loops == 1 and list(elbo.per_call_ns) == pytest.approx([100.0, 110.0, 120.0])
    assert elbo.notes["loops_per_round"] == [10, 40] and elbo.summary.median == 110.0
    assert elbo.rounds == (2, 1)
    assert grad.status == "timeout" and grad.reason == "round 2 of 2: killed"


def test_slow_backend_does_extra_work_and_stays_correct(monkeypatch):
    from elbolab.measure.opening import check_case
    from tests import slow_backend

    case = Case("elbo", slow_backend.backend.name, batch=16)
    for extra in ("0", "0.25", "1.5"):
        monkeypatch.setenv(slow_backend.EXTRA_WORK_ENV, extra)
        assert check_case(slow_backend.backend, case).ok
        from elbolab.model.workloads import WORKLOADS

        prepared = slow_backend.backend.prepare(case, WORKLOADS["elbo"].make_inputs(case))
        assert prepared.notes["extra_work"] == float(extra)
    monkeypatch.setenv(slow_backend.EXTRA_WORK_ENV, "lots")
    with pytest.raises(ValueError, match="ELBOLAB_EXTRA_WORK"):
        slow_backend.extra_work()


# -------------------------------------------------------------------------------- A/B for real


GATE = [sys.executable, "-m", "elbolab.cli", "gate", "--base", "HEAD"]
ONE_CASE = (
    "--workload elbo --batch 128 --dtype float64 --threads 1 --variant eps=given --quick --rounds 2".split()
)


def _head_has(*paths: str) -> bool:
    return all(
        subprocess.run(
            ["git", "-C", str(ROOT), "cat-file", "-e", f"HEAD:{p}"], capture_output=True
        ).returncode
        == 0
        for p in paths
    )


@pytest.mark.slow
def test_ab_gate_against_head_in_this_repo(tmp_path):
    if not (ROOT / "harness" / "runner.py").exists():
        pytest.skip("harness/runner.py does not exist yet: nothing can run `elbolab run`")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    if not _head_has("harness/runner.py", "harness/cli/__init__.py", "harness/ab.py"):
        pytest.skip(
            "HEAD does not have the runner and CLI yet, so the base revision cannot run `elbolab run`"
        )
    summary = tmp_path / "summary.md"
    proc = subprocess.run(
        [*GATE, "--backend", "numpy", *ONE_CASE, "--markdown", summary, "--save-runs", tmp_path / "runs"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    assert "elbo numpy cpu float64 B=128 t=1" in proc.stdout
    assert "elbolab gate" in summary.read_text()
    base = json.loads((tmp_path / "runs" / "base.json").read_text())
    # interleaved: each side's samples come from at least 8 worker pairs (rounds), all kept
    assert base["config"]["ab"]["mode"] == "interleaved-pairs"
    m = base["measurements"][0]
    assert m["status"] == "ok" and len(m["rounds"]) >= 8 and sum(m["rounds"]) == len(m["samples_ns"])
    assert "pairs" in m["notes"]["ab_stopped"]
    worktrees = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True
    ).stdout
    assert "elbolab-gate-" not in worktrees  # the temporary worktree is gone


def _scratch_repo(tmp_path: Path) -> Path:
    """A throwaway git repository holding a copy of this working tree's Python code."""
    repo = tmp_path / "repo"
    for part in (
        "harness",
        "backends",
        "pyproject.toml",
        "README.md",
        "tests/__init__.py",
        "tests/slow_backend.py",
    ):
        src, dst = ROOT / part, repo / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "target", "*.so"))
        else:
            shutil.copy2(src, dst)
    git = ["git", "-C", str(repo), "-c", "user.name=elbolab test", "-c", "user.email=test@elbolab"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "base"], check=True)
    return repo


@pytest.mark.slow
def test_ab_gate_catches_a_slowed_kernel_in_the_working_tree(tmp_path):
    """End to end in a scratch repository: the working tree triples the kernel's work; base is HEAD."""
    repo = _scratch_repo(tmp_path)
    slow = repo / "tests" / "slow_backend.py"
    slow.write_text(
        slow.read_text().replace('os.environ.get(EXTRA_WORK_ENV, "0")', 'os.environ.get(EXTRA_WORK_ENV, "2")')
    )
    env = dict(os.environ, ELBOLAB_BACKENDS="tests.slow_backend:backend")
    env.pop("ELBOLAB_EXTRA_WORK", None)
    proc = subprocess.run(
        [*GATE, "--backend", "numpy-slow", *ONE_CASE],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "REGRESSION" in proc.stdout


def test_a_rust_build_that_fails_is_one_line_not_an_exception(tmp_path):
    (tmp_path / "backends" / "rust").mkdir(parents=True)
    (tmp_path / "backends" / "rust" / "Cargo.toml").write_text("this is not toml [")
    build = Build("maturin", "backends/rust/Cargo.toml", "elbolab_rust")
    error = build_maturin(tmp_path, build, tmp_path / "site", lambda msg: None, tmp_path / "target")
    assert error and "\n" not in error
    assert not (tmp_path / "site").exists()


def test_both_workers_of_a_pair_share_cores_that_move_from_pair_to_pair(monkeypatch):
    from elbolab.gate import ab
    from elbolab.measure import cells

    # the gate's pairs take their cores as a run's cells do (elbolab.measure.cells.cell_cpus)
    monkeypatch.setattr(cells, "usable_cpus", lambda: [0, 1, 2, 3])
    assert [ab.cell_cpus(p, 1) for p in range(5)] == [{0}, {1}, {2}, {3}, {0}]
    assert [ab.cell_cpus(p, 2) for p in range(3)] == [{0, 1}, {2, 3}, {0, 1}]
    assert ab.cell_cpus(0, 4) is None  # the case needs every core


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux's sched_setaffinity")
def test_pinning_a_worker_pins_the_threads_it_has_already_started():
    """A pair is pinned after both workers have opened the case, when a backend may have started
    a thread pool: every thread must move, not only the main one."""
    from elbolab.measure.worker import StdioWorker

    script = ("import json, sys, threading, time\n"
              "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
              "print(json.dumps({'hello': {}}), flush=True)\n"
              "sys.stdin.readline()\n")  # fmt: skip
    worker = StdioWorker([sys.executable, "-c", script], dict(os.environ), ".", timeout=30)
    try:
        tasks = Path(f"/proc/{worker.proc.pid}/task")
        assert len(list(tasks.iterdir())) == 2
        one = min(os.sched_getaffinity(0))
        worker.pin({one})
        assert all(os.sched_getaffinity(int(t.name)) == {one} for t in tasks.iterdir())
        worker.pin(None)
        assert all(os.sched_getaffinity(int(t.name)) == os.sched_getaffinity(0) for t in tasks.iterdir())
    finally:
        worker.close()
    assert worker.proc.returncode is not None


def test_the_slowed_backend_adds_the_same_work_to_every_batch_of_calls():
    """call_n(loops) does loops * (1 + f) calls' work: int(loops * f) more whole calls, then the
    fraction left as one call on that share of the rows; the same in every batch of calls."""
    from elbolab.model.backend import Prepared
    from tests.slow_backend import with_extra_work

    rows_called: list[int] = []

    def prepare_rows(rows):
        return Prepared(call=lambda: rows_called.append(rows), outputs=dict)

    prepared = Prepared(call=lambda: rows_called.append(100), outputs=dict)
    slowed = with_extra_work(prepared, 0.25, 100, prepare_rows)
    for _ in range(3):
        rows_called.clear()
        slowed.call_n(10)  # 10 calls and 2.5 more: 12 whole calls, then half the rows once
        assert rows_called == [100] * 12 + [50]
    rows_called.clear()
    with_extra_work(prepared, 0.0, 100, prepare_rows).call_n(7)
    assert rows_called == [100] * 7
