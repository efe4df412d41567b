"""The results store (elbolab.store.database) on SQLite and on a real PostgreSQL server started here.

The PostgreSQL tests start their own server (initdb into a temporary folder, a free port on
127.0.0.1, as the user `nobody` when run as root, since postgres refuses root) and skip with the
reason where one cannot be started (PostgreSQL or psycopg not installed).
"""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from elbolab.model.case import Case
from elbolab.model.errors import UsageError
from elbolab.model.measurement import not_measured
from elbolab.store.database import STORE_SCHEMA, Machine, Store, case_id, run_digest
from elbolab.store.results import TrainingCurve, load, save
from tests.builders import make_run, noisy, ok

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "results" / "reference-2core.json"


# ------------------------------------------------------------------------- a PostgreSQL server


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return versions[-1] if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for this test session: yields its base URL (no database)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip(
            "psycopg is not installed (pip install 'psycopg[binary]'): the PostgreSQL store is not tested"
        )
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip(
            "PostgreSQL is not installed (apt-get install postgresql): the PostgreSQL store is not tested"
        )
    base = Path(tempfile.mkdtemp(prefix="elbolab-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as nobody
        import pwd

        runuser = shutil.which("runuser")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            nobody = None
        if not runuser or nobody is None:
            shutil.rmtree(base, ignore_errors=True)
            pytest.skip("running as root without runuser or a 'nobody' user: cannot start PostgreSQL")
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
        prefix = [runuser, "-u", "nobody", "--"]
    data, port = base / "data", _free_port()

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, *argv], cwd=base, capture_output=True, text=True, timeout=120)

    init = run(initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"initdb failed: {(init.stderr or init.stdout).strip().splitlines()[-1:]}")
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off -c max_connections=40 -c shared_buffers=32MB")  # fmt: skip
    start = run(pg_ctl, "-D", str(data), "-l", str(base / "log"), "-w", "-t", "60", "-o", options, "start")
    if start.returncode != 0:
        log = (base / "log").read_text(errors="replace") if (base / "log").exists() else start.stderr
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {log.strip().splitlines()[-1:] or start.returncode}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh database on the session's server."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"{postgres_server}/{name}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.sqlite'}"
    return request.getfixturevalue("postgres_url")


# ------------------------------------------------------------------------------------ helpers

ELBO = Case("elbo", "numpy", batch=128)
RUST = Case("elbo", "rust", batch=128)


def a_run(
    run_id: str = "run-1", commit: str = "c1", cpu: str = "Test CPU 9000", seed: int = 0, n_cases: int = 3
):
    rng = np.random.default_rng(seed)
    ms = [ok(Case("elbo", "numpy", batch=b), noisy(rng, 1e5 + b)) for b in (1, 128, 8192)[:n_cases]]
    ms.append(not_measured(RUST, "skipped", "rust: the extension is not built"))
    curve = TrainingCurve("numpy", "cpu", "float64", "ok", losses=(3.0, 2.5, 2.25), steps=3, batch=16)
    run = make_run(ms, cpu=cpu, run_id=run_id, commit=commit)
    return replace(run, training=(curve,), finished="2026-01-01T00:01:00+00:00",
                   machine=dict(run.machine, memory_bytes=8 * 2**30, hostname="box-1"))  # fmt: skip


def table_counts(store: Store) -> dict[str, int]:
    from sqlalchemy import func, select

    from elbolab.store import database as st

    with store.engine.connect() as conn:
        return {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar()
            for t in (st.machines, st.commits, st.cases, st.runs, st.measurements, st.skips)
        }


# --------------------------------------------------------------------------------- behaviour


def test_a_run_comes_back_exactly_as_it_went_in(store_url):
    run = a_run()
    with Store.open(store_url) as store:
        res = store.ingest(run, source="r.json")
        assert res.stored and "4 measurements" in res.message
        back = store.load_run(run.run_id)
    assert back.to_json() == run.to_json()
    assert run_digest(back) == run_digest(run)


def test_a_second_ingest_is_a_no_op_that_says_so(store_url):
    run = a_run()
    with Store.open(store_url) as store:
        assert store.ingest(run).stored
        before = table_counts(store)
        again = store.ingest(run)
        assert not again.stored and "already stored" in again.message
        assert table_counts(store) == before
        assert [r.run_id for r in store.runs()] == [run.run_id]


def test_a_different_run_under_a_stored_id_is_refused_unless_replaced(store_url):
    run = a_run()
    other = a_run(seed=1)  # same run_id, other samples
    with Store.open(store_url) as store:
        store.ingest(run)
        with pytest.raises(UsageError, match="different content.*--replace"):
            store.ingest(other)
        assert store.load_run(run.run_id).to_json() == run.to_json()
        assert "replaced" in store.ingest(other, replace=True).message
        assert store.load_run(run.run_id).to_json() == other.to_json()
        assert table_counts(store)["measurements"] == 4


def test_a_failure_half_way_leaves_the_store_as_it_was(store_url, monkeypatch):
    """A real database error after the machine, the cases and the run row were inserted."""
    from elbolab.store import database as st

    with Store.open(store_url) as store:
        store.ingest(a_run("kept", seed=3, n_cases=1))
        before = table_counts(store)
        real = st._measurement_rows

        def broken(run):
            cases, rows = real(run)
            rows[-1] = dict(rows[-1], status=None)  # NOT NULL: the last insert fails
            return cases, rows

        monkeypatch.setattr(st, "_measurement_rows", broken)
        with pytest.raises(UsageError) as info:
            store.ingest(a_run("lost", commit="c2", cpu="Another CPU"))
        assert "\n" not in str(info.value)
        assert table_counts(store) == before  # no machine, commit, case, run or measurement left
        monkeypatch.setattr(st, "_measurement_rows", real)
        assert store.ingest(a_run("lost", commit="c2", cpu="Another CPU")).stored


def _ingest_many(url: str, paths: list[str], barrier, errors) -> None:
    try:
        store = Store.open(url)
        barrier.wait(60)
        for p in paths:
            store.ingest(load(p), source=p)
        store.close()
    except BaseException as exc:  # reported to the parent
        errors.put(f"{type(exc).__name__}: {exc}")
        raise


def test_concurrent_writers_store_each_run_once(store_url, tmp_path):
    """Four processes at once (as CI jobs would), overlapping runs and shared cases and machines."""
    paths = []
    for i in range(6):
        p = tmp_path / f"run{i}.json"
        save(p, a_run(f"run-{i}", commit=f"c{i % 3}", seed=i, cpu=f"CPU {i % 2}"))
        paths.append(str(p))
    plans = [[paths[0], *paths[k::4], paths[5]] for k in range(4)]  # run-0 and run-5 by all four
    Store.open(store_url).close()
    ctx = multiprocessing.get_context("fork")
    barrier, errors = ctx.Barrier(len(plans)), ctx.Queue()
    procs = [ctx.Process(target=_ingest_many, args=(store_url, plan, barrier, errors)) for plan in plans]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    assert not messages, messages
    assert all(p.exitcode == 0 for p in procs)
    with Store.open(store_url) as store:
        assert sorted(r.run_id for r in store.runs()) == [f"run-{i}" for i in range(6)]
        counts = table_counts(store)
        assert counts["measurements"] == 6 * 4 and counts["machines"] == 2 and counts["cases"] == 4
        assert counts["commits"] == 3
        for i in range(6):
            assert store.load_run(f"run-{i}").to_json() == load(paths[i]).to_json()


def test_sqlite_writers_wait_for_each_other(tmp_path):
    """BEGIN IMMEDIATE and a busy timeout: a writer waits for the lock instead of failing."""
    path = tmp_path / "h.sqlite"
    store = Store.open(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    done: list = []
    t = threading.Thread(target=lambda: done.append(store.ingest(a_run())))
    t.start()
    time.sleep(1.0)
    assert t.is_alive() and not done  # waiting, not failed
    other.execute("ROLLBACK")
    t.join(30)
    assert done and done[0].stored
    other.close()
    store.close()


def test_ingest_of_the_big_reference_run(store_url):
    run = load(REFERENCE)
    with Store.open(store_url) as store:
        res = store.ingest(run, source=str(REFERENCE))
        assert res.stored and f"{len(run.measurements)} measurements" in res.message
        assert not store.ingest(run).stored
        back = store.load_run(run.run_id)
        rows = store.rows()
    assert back.to_json() == run.to_json()
    ok_rows = [r for r in rows if r.status == "ok"]
    m = next(m for m in run.measurements if m.timed_ok)
    r = next(r for r in ok_rows if r.case_id == case_id(m.case))
    assert np.array_equal(r.per_call_ns, m.per_call_ns)  # raw samples: statistics recomputable


def test_machines_are_hardware_not_host_names():
    a = Machine.of(
        {"cpu": "EPYC", "cores": 2, "memory_bytes": 16 * 2**30, "hostname": "runner-1", "gpus": []}
    )
    b = Machine.of(
        {"cpu": "EPYC", "cores": 2, "memory_bytes": 16 * 2**30 - 5e7, "hostname": "runner-2", "gpus": []}
    )
    c = Machine.of({"cpu": "EPYC", "cores": 4, "memory_bytes": 16 * 2**30, "gpus": []})
    named = Machine.of({"cpu": "EPYC", "cores": 2, "memory_bytes": 16 * 2**30}, "ci-small")
    gpu = Machine.of({"cpu": "Xeon", "cores": 16, "gpus": [{"name": "NVIDIA H200", "memory_bytes": 1}]})
    assert a.machine_id == b.machine_id != c.machine_id
    assert named.machine_id != a.machine_id and named.label == "ci-small"
    assert "1x NVIDIA H200" in gpu.label and "16 cores" in gpu.label


def test_a_newer_store_schema_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    Store.open(url).close()
    conn = sqlite3.connect(tmp_path / "h.sqlite")
    conn.execute("UPDATE meta SET value = 'elbolab.store/99' WHERE key = 'schema'")
    conn.commit()
    conn.close()
    with pytest.raises(UsageError, match="elbolab.store/99.*upgrade"):
        Store.open(url)
    assert STORE_SCHEMA == "elbolab.store/1"


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://u@h/db", "unsupported database"),
        ("sqlite://", "needs a file"),
        ("not a url", "not a database URL"),
        ("postgresql://nobody@127.0.0.1:1/none", "store postgresql"),
    ],
)
def test_a_bad_store_is_one_line(url, message):
    with pytest.raises(UsageError) as info:
        Store.open(url)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_folder_is_not_a_store(tmp_path):
    with pytest.raises(UsageError, match="not a regular file"):
        Store.open(f"sqlite:///{tmp_path}")


def test_the_environment_chooses_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("ELBOLAB_STORE", f"sqlite:///{tmp_path / 'env.sqlite'}")
    with Store.open() as store:
        store.ingest(a_run())
    assert (tmp_path / "env.sqlite").exists()


# --------------------------------------------------------------------------------------- CLI


def history_cli(argv, capsys):
    from elbolab.cli.history import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_ingest_twice_then_list(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    f = tmp_path / "r.json"
    save(f, a_run())
    code, out, _ = history_cli(["ingest", f, "--store", url], capsys)
    assert code == 0 and "stored run run-1" in out
    code, out, _ = history_cli(["ingest", f, "--store", url], capsys)
    assert code == 0 and "already stored" in out and "nothing to do" in out
    code, out, _ = history_cli(["runs", "--store", url], capsys)
    assert code == 0 and "run-1" in out and "Test CPU 9000" in out


def test_cli_bad_files_are_one_line_and_exit_2_with_nothing_stored(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    save(good, a_run())
    bad.write_text('{"schema": "elbolab.run/2", "measurements": [')
    code, out, err = history_cli(["ingest", good, bad, "--store", url], capsys)
    assert code == 2 and err.count("\n") == 1 and "bad.json" in err
    with Store.open(url) as store:
        assert store.runs() == []  # every file is checked before anything is stored
    code, _, err = history_cli(["ingest", good, "--store", "mysql://x/y"], capsys)
    assert code == 2 and err.count("\n") == 1


def test_cli_ingest_of_a_json_document_that_is_no_run(tmp_path, capsys):
    f = tmp_path / "x.json"
    f.write_text(json.dumps({"hello": 1}))
    code, _, err = history_cli(["ingest", f, "--store", f"sqlite:///{tmp_path / 'h.sqlite'}"], capsys)
    assert code == 2 and "not an elbolab run" in err


# ---------------------------------------------------------------------- round two: reads, waits


def elbolab_history(*argv, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run([sys.executable, "-m", "elbolab.cli", "history", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))  # fmt: skip


def test_a_read_never_makes_a_store(tmp_path):
    missing = tmp_path / "typo" / "h.sqlite"
    with pytest.raises(UsageError, match="no such store"):
        Store.open(f"sqlite:///{missing}", create=False)
    assert not missing.parent.exists()
    for name, content, message in (
        ("empty.sqlite", b"", "an empty file"),
        ("one.sqlite", b"\0", "not a SQLite"),
    ):
        f = tmp_path / name
        f.write_bytes(content)
        proc = elbolab_history("runs", "--store", f"sqlite:///{f}")
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
        assert f.read_bytes() == content  # a read left it as it was
    # a SQLite file that holds something else: not made into a store either
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    proc = elbolab_history("changes", "--fail-on-regression", "--store", f"sqlite:///{other}")
    assert proc.returncode == 2 and "no elbolab store there" in proc.stderr, proc.stderr
    assert other.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "empty.sqlite", "one.sqlite", "other.sqlite"]  # fmt: skip


def test_a_read_leaves_the_store_byte_identical(tmp_path):
    f = tmp_path / "h.sqlite"
    with Store.open(f"sqlite:///{f}") as store:
        store.ingest(a_run())
    before = f.read_bytes()
    page = tmp_path.parent / f"{tmp_path.name}-trends.html"
    for argv in (["runs"], ["changes"], ["changes", "--json"], ["page", "-o", page]):
        proc = elbolab_history(*argv, "--store", f"sqlite:///{f}")
        assert proc.returncode == 0, proc.stderr
        assert "Warning" not in proc.stderr, proc.stderr
    assert f.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["h.sqlite"]


def test_a_postgresql_database_without_a_store_is_not_made_one_by_a_read(postgres_url):
    import psycopg

    proc = elbolab_history("runs", "--store", postgres_url)
    assert proc.returncode == 2 and "no elbolab store there" in proc.stderr, proc.stderr
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
    assert tables == 0
    proc = elbolab_history("runs", "--store", postgres_url + "?connect_timeout=abc")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, (
        proc.stderr
    )


def test_a_lock_held_by_another_session_is_a_one_line_wait_that_ends(postgres_url, tmp_path):
    import psycopg

    f = tmp_path / "r.json"
    save(f, a_run())
    with Store.open(postgres_url) as store:
        store.ingest(a_run("run-0"))
    env = {"ELBOLAB_STORE_TIMEOUT": "2"}
    with psycopg.connect(postgres_url) as holder:  # a client that locked the table and went to lunch
        holder.execute("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        for argv in (["runs"], ["ingest", f]):
            t0 = time.monotonic()
            proc = elbolab_history(*argv, "--store", postgres_url, env=env)
            took = time.monotonic() - t0
            print(f"\nhistory {argv[0]} with the table locked: exit {proc.returncode} after {took:.1f} s")
            assert proc.returncode == 2 and "waited 2 s for a lock another session holds" in proc.stderr, (
                proc.stderr
            )
            assert proc.stderr.count("\n") == 1 and took < 30
        holder.rollback()
    proc = elbolab_history("ingest", f, "--store", postgres_url, env=env)
    assert proc.returncode == 0 and "stored run run-1" in proc.stdout, proc.stderr


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_ingest_stuck_mid_transaction_blocks_no_one_for_ever(kind, tmp_path, request, monkeypatch):
    """An ingest that stops half-way (here: held after its run row is written) keeps its locks: a
    second ingest of the same run waits ELBOLAB_STORE_TIMEOUT and says so in one line; a read does
    not wait at all."""
    from elbolab.store import database as st

    url = (
        f"sqlite:///{tmp_path / 'h.sqlite'}" if kind == "sqlite" else request.getfixturevalue("postgres_url")
    )
    with Store.open(url) as store:
        store.ingest(a_run("run-0"))
    f = tmp_path / "r.json"
    save(f, a_run())
    inside, release = threading.Event(), threading.Event()
    real = st._insert_ignore

    def stuck(conn, table, rows, returning=None):
        got = real(conn, table, rows, returning)
        if table is st.runs:
            inside.set()
            release.wait(60)
        return got

    monkeypatch.setattr(st, "_insert_ignore", stuck)
    stuck_store = Store.open(url)
    thread = threading.Thread(target=lambda: stuck_store.ingest(load(f)))
    thread.start()
    try:
        assert inside.wait(60)
        env = {"ELBOLAB_STORE_TIMEOUT": "2"}
        t0 = time.monotonic()
        proc = elbolab_history("ingest", f, "--store", url, env=env)
        took = time.monotonic() - t0
        print(f"\n{kind}: a second ingest exited {proc.returncode} after {took:.1f} s")
        assert proc.returncode == 2 and "waited 2 s for a lock" in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and took < 30
        t0 = time.monotonic()
        proc = elbolab_history("runs", "--store", url, env=env)
        assert proc.returncode == 0 and "run-0" in proc.stdout, proc.stderr  # readers never wait
        print(f"{kind}: history runs took {time.monotonic() - t0:.1f} s beside it")
    finally:
        release.set()
        thread.join(60)
        stuck_store.close()


def test_store_commands_that_succeed_print_nothing_else(store_url, tmp_path):
    """Exit 0 means the output is the answer: no RuntimeWarning or SAWarning lines beside it."""
    f = tmp_path / "r.json"
    save(f, a_run())
    page = tmp_path / "t.html"
    for argv in (
        ["ingest", f],
        ["ingest", f],
        ["runs"],
        ["changes"],
        ["changes", "--json"],
        ["page", "-o", page],
    ):
        proc = elbolab_history(*argv, "--store", store_url)
        assert proc.returncode == 0, proc.stderr
        assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
