"""The results store: every run ever measured, in a real database, for history across commits.

One code path (SQLAlchemy Core) for two databases, chosen by a URL (`--store URL`, else the
environment variable ELBOLAB_STORE, else DEFAULT_URL):

- SQLite, the zero-set-up default: a file (results/history.sqlite), in WAL mode so readers never
  wait for a writer; every write transaction starts with BEGIN IMMEDIATE (it takes the write lock
  first, so two writers queue instead of failing half-way) and waits up to BUSY_TIMEOUT_S for it.
- PostgreSQL, for a team or a fleet of CI jobs: `postgresql://user@host/db` (psycopg 3). Concurrent
  writers are made safe by INSERT ... ON CONFLICT DO NOTHING on every natural key, rows inserted in
  key order (so two transactions never wait on each other in a cycle), and table creation under an
  advisory lock.

Ingest is idempotent and transactional: a run is stored once, keyed by its run_id; ingesting it
again is a no-op that says so (the content digest tells a true repeat from a different run that
reuses an id, which is refused unless replaced on purpose); a run goes in whole in one transaction
or not at all.

What is kept: the raw samples (JSON arrays of the timer's sample times, with the loop count), so
every statistic can be recomputed, plus everything else of each measurement and of the run's
header; `Store.load_run` rebuilds the very Run that was ingested (elbolab.store.results.validate).

Tables (schema 'elbolab.store/1'; see docs/history.md):

    meta          key (PK) -> value                      the schema version
    machines      machine_id (PK), label, fingerprint    hardware identity of a series
    commits       sha (PK), committed, parents, subject  what git said at ingest (when it knew)
    cases         case_id (PK), the Case's fields, label, spec (its canonical JSON)
    runs          run_id (PK), machine_id -> machines, commit, dirty, started, finished, hostname,
                  origin, source, digest, header (JSON), n_measurements, ingested
    measurements  (run_id -> runs, seq) PK, case_id -> cases, status, reason, loops, n_samples,
                  median_ns (derived), samples_ns (JSON), record (JSON: the rest)
    skips         id (PK), commit, machine_id, origin, stage, reason, at   commits a backfill could
                                                                             not measure, and why

This module never prints.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from elbolab.model.case import Case
from elbolab.model.errors import UsageError
from elbolab.store.results import Run, now, validate

STORE_SCHEMA = "elbolab.store/1"
ENV = "ELBOLAB_STORE"
MACHINE_ENV = "ELBOLAB_MACHINE"
DEFAULT_PATH = Path("results") / "history.sqlite"
DEFAULT_URL = f"sqlite:///{DEFAULT_PATH}"
# How long any wait on the database may last (SQLite's busy timeout, PostgreSQL's lock_timeout and
# its connection): a lock held by another session, or an ingest stuck in an open transaction, ends
# in one line after this long, never in a wait without end
BUSY_TIMEOUT_S = 120.0
TIMEOUT_ENV = "ELBOLAB_STORE_TIMEOUT"
CONNECT_TIMEOUT_S = 15
SQLITE_HEADER = b"SQLite format 3\x00"
_ADVISORY_LOCK = 0x656C626F  # 'elbo': serialises table creation on PostgreSQL

# ------------------------------------------------------------------------------------ schema

metadata = MetaData()

meta = Table(
    "meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)  # fmt: skip

machines = Table(
    "machines", metadata,
    Column("machine_id", String(32), primary_key=True),
    Column("label", String(300), nullable=False),
    Column("cpu", Text),
    Column("cores", Integer),
    Column("logical_cpus", Integer),
    Column("memory_gib", Integer),
    Column("gpus", Text),  # JSON list of GPU names
    Column("fingerprint", Text, nullable=False),  # canonical JSON of what identifies the machine
)  # fmt: skip

commits = Table(
    "commits", metadata,
    Column("sha", String(64), primary_key=True),
    Column("committed", String(40)),  # committer date, ISO 8601
    Column("parents", Text),  # space-separated
    Column("subject", Text),
)  # fmt: skip

cases = Table(
    "cases", metadata,
    Column("case_id", String(32), primary_key=True),
    Column("workload", String(200), nullable=False),
    Column("backend", String(200), nullable=False),
    Column("device", String(200), nullable=False),
    Column("dtype", String(200), nullable=False),
    Column("batch", BigInteger, nullable=False),
    Column("threads", Integer, nullable=False),
    Column("variant", String(200), nullable=False),
    Column("input_dim", BigInteger, nullable=False),
    Column("latent_dim", BigInteger, nullable=False),
    Column("hidden_dim", BigInteger, nullable=False),
    Column("importance_samples", BigInteger, nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("label", Text, nullable=False),
    Column("spec", Text, nullable=False),  # Case.to_json() as canonical JSON
)  # fmt: skip

runs = Table(
    "runs", metadata,
    Column("run_id", String(200), primary_key=True),
    Column("machine_id", String(32), ForeignKey("machines.machine_id"), nullable=False),
    Column("commit", String(64)),
    Column("dirty", Boolean),
    Column("started", String(40), nullable=False),
    Column("finished", String(40)),
    Column("hostname", Text),
    Column("origin", String(300), nullable=False),  # 'ingest', 'backfill ...', 'find ...'
    Column("source", Text),  # the file it was read from
    Column("digest", String(64), nullable=False),  # sha256 of the run's canonical JSON
    Column("header", Text, nullable=False),  # the run less its measurements, as JSON
    Column("n_measurements", Integer, nullable=False),
    Column("ingested", String(40), nullable=False),
    Index("runs_by_machine_commit", "machine_id", "commit"),
)  # fmt: skip

measurements = Table(
    "measurements", metadata,
    Column("run_id", String(200), ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),  # position in the run
    Column("case_id", String(32), ForeignKey("cases.case_id"), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text),
    Column("loops", BigInteger, nullable=False),
    Column("n_samples", Integer, nullable=False),
    Column("median_ns", Float),  # derived (per call), for queries; recomputable from samples_ns
    Column("samples_ns", Text, nullable=False),  # JSON array: the raw samples, each `loops` calls
    Column("record", Text, nullable=False),  # JSON: the rest of Measurement.to_json()
    Index("measurements_by_case", "case_id"),
)  # fmt: skip

skips = Table(
    "skips", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("commit", String(64), nullable=False),
    Column("machine_id", String(32), nullable=False),
    Column("origin", String(300), nullable=False),
    Column("stage", String(16), nullable=False),  # install, build, run
    Column("reason", Text, nullable=False),
    Column("at", String(40), nullable=False),
    Index("skips_by_commit", "machine_id", "commit"),
)  # fmt: skip


# ---------------------------------------------------------------------------------- identities


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(text: str, n: int = 64) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def case_id(case: Case) -> str:
    return _digest(canonical(case.to_json()), 24)


def run_digest(run: Run) -> str:
    """The content of a run, independent of how its file was formatted (every field of every
    measurement, none of the statistics derived from them, so it is cheap to compute)."""
    doc = dict(run.header_json(), training=[t.to_json() for t in run.training],
               measurements=[asdict(m) for m in run.measurements])  # fmt: skip
    return _digest(canonical(_prune(doc)))


def _prune(value):
    """Without the keys whose value is None or empty: a field a later elbolab adds with such a
    default leaves the digest of an old run as it was."""
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v is not None and v != [] and v != {}}
    if isinstance(value, (list, tuple)):
        return [_prune(v) for v in value]
    return value


@dataclass(frozen=True)
class Machine:
    """What makes two runs comparable: the hardware (and a name, when one is given), not the host
    name (CI runners get a new one every job)."""

    machine_id: str
    label: str
    fingerprint: dict

    @classmethod
    def of(cls, info: dict, name: str | None = None) -> Machine:
        mem = info.get("memory_bytes")
        gpus = sorted(str(g.get("name")) if isinstance(g, dict) else str(g) for g in info.get("gpus") or [])
        fingerprint = {
            "cpu": info.get("cpu"),
            "cores": info.get("cores"),
            "logical_cpus": info.get("logical_cpus"),
            "cpu_affinity": info.get("cpu_affinity"),
            "memory_gib": round(mem / 2**30) if isinstance(mem, (int, float)) and mem > 0 else None,
            "gpus": gpus,
        }
        if name:
            fingerprint["name"] = name
        label = name or default_label(fingerprint)
        return cls(_digest(canonical(fingerprint), 16), label[:300], fingerprint)


def default_label(fp: dict) -> str:
    parts = [str(fp.get("cpu") or "unknown CPU")]
    if fp.get("cores"):
        parts.append(f"{fp['cores']} cores")
    if fp.get("memory_gib"):
        parts.append(f"{fp['memory_gib']} GiB")
    gpus = fp.get("gpus") or []
    if gpus:
        names = sorted(set(gpus))
        parts.append(", ".join(f"{gpus.count(n)}x {n}" for n in names))
    return " · ".join(parts)


# ------------------------------------------------------------------------------------ the store


def resolve_url(url: str | None) -> str:
    return url or os.environ.get(ENV) or DEFAULT_URL


def display_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def store_timeout() -> float:
    """Seconds a database wait may last: ELBOLAB_STORE_TIMEOUT, else BUSY_TIMEOUT_S."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return BUSY_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 86_400):
        raise UsageError(f"{TIMEOUT_ENV}={text[:40]!r}: expected seconds between 0 and 86400")
    return value


def _normalise(url: str, create: bool = True):
    """A SQLAlchemy URL object: postgres:// and postgresql:// mean psycopg 3. With create=False a
    SQLite store must be there already: its file is never made, nor its folder."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(
            f"--store {url[:200]!r} is not a database URL (use sqlite:///PATH or postgresql://USER@HOST/DB)"
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise UsageError(
            f"--store {display_url(url)}: unsupported database {backend!r} (use sqlite or postgresql)"
        )
    if backend == "sqlite":
        db = parsed.database
        if not db or db == ":memory:":
            raise UsageError("--store sqlite:// needs a file (sqlite:///results/history.sqlite)")
        path = Path(db)
        try:
            exists = path.exists()
        except OSError as exc:  # a name over NAME_MAX
            raise UsageError(f"--store {db[:200]}: {exc.strerror or exc}") from None
        if exists and not path.is_file():
            raise UsageError(f"--store {path}: not a regular file")
        if not create:
            _existing_sqlite(path)
            return parsed
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--store {path}: cannot create its folder ({exc.strerror or exc})") from None
    return parsed


def _existing_sqlite(path: Path) -> None:
    """A store to read must be a SQLite file already (an empty file is none: SQLite would make it
    one, and a read must leave it as it was)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        raise UsageError(
            f"--store {path}: no such store (elbolab history ingest RUN.json makes one)"
        ) from None
    except OSError as exc:
        raise UsageError(f"--store {path}: cannot read ({exc.strerror or exc})") from None
    if head != SQLITE_HEADER:
        what = "an empty file" if not head else "not a SQLite database"
        raise UsageError(f"--store {path}: {what}, not an elbolab store")


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    return lines[0][:300] if lines else exc.__class__.__name__


def _sqlite_setup(engine: Engine, read_only: bool, wait_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # pysqlite must not BEGIN on its own: we do, below
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
        if read_only:
            # a read changes nothing: no journal mode written into the file's header, and any
            # write SQLite is asked for fails
            cur.execute("PRAGMA query_only = ON")
        else:
            cur.execute("PRAGMA foreign_keys = ON")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # noqa: ANN001
        # a writer takes the write lock when it begins, not at its first write: two writers queue
        # (busy_timeout) instead of one failing with 'database is locked' half-way
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")


def _waited(exc: BaseException) -> bool:
    """A wait for a lock that ran out of time (PostgreSQL's lock_timeout, SQLite's busy timeout)."""
    orig = getattr(exc, "orig", None) or exc
    return getattr(orig, "sqlstate", None) == "55P03" or "database is locked" in str(orig)


@dataclass(frozen=True)
class Ingested:
    run_id: str
    stored: bool  # False: it was already there, nothing changed
    message: str
    seconds: float
    machine: Machine


@dataclass(frozen=True)
class StoredRun:
    run_id: str
    machine_id: str
    commit: str | None
    dirty: bool | None
    started: str
    finished: str | None
    hostname: str | None
    origin: str
    source: str | None
    n_measurements: int
    ingested: str


@dataclass(frozen=True)
class MachineRow:
    machine_id: str
    label: str
    fingerprint: dict
    runs: int = 0
    commits: int = 0


@dataclass(frozen=True)
class Row:
    """One stored measurement with the run facts a series needs."""

    run_id: str
    machine_id: str
    commit: str | None
    dirty: bool | None
    started: str
    case_id: str
    status: str
    reason: str | None
    loops: int
    samples_ns: tuple[float, ...]

    @property
    def per_call_ns(self) -> np.ndarray:
        if not self.samples_ns or self.loops < 1:
            return np.empty(0)
        return np.asarray(self.samples_ns, dtype=np.float64) / self.loops


@dataclass(frozen=True)
class Skip:
    commit: str
    machine_id: str
    origin: str
    stage: str
    reason: str
    at: str


class Store:
    """A results database. `Store.open(url)` creates its tables on first use."""

    def __init__(self, engine: Engine, url: str, wait_s: float = BUSY_TIMEOUT_S):
        self.engine = engine
        self.url = url
        self.wait_s = wait_s

    # --------------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, url: str | None = None, create: bool = True) -> Store:
        """The store at `url`, its tables made on first use. create=False, for what only reads: the
        store must exist, and nothing is made or changed (a missing SQLite file, a file that is no
        SQLite database, a database without elbolab's tables: one line, never a new store)."""
        url = resolve_url(url)
        parsed = _normalise(url, create)
        shown = display_url(url)
        wait = store_timeout()
        try:
            if parsed.get_backend_name() == "sqlite":
                engine = create_engine(parsed, connect_args={"timeout": wait})
                _sqlite_setup(engine, read_only=not create, wait_s=wait)
            else:
                # every lock this session waits for (a row another ingest holds, a table a client
                # locked, the advisory lock of table creation) is given up after `wait`
                options = f"-c lock_timeout={int(wait * 1000)}"
                engine = create_engine(parsed, pool_pre_ping=True,
                                       connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "options": options})  # fmt: skip
        except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
            raise UsageError(
                f"--store {shown}: no driver ({_one_line(exc)}); pip install 'psycopg[binary]' for PostgreSQL"
            ) from None
        except (ValueError, TypeError, ArgumentError) as exc:  # a bad URL parameter (?timeout=abc)
            raise UsageError(f"--store {shown}: {_one_line(exc)}") from None
        store = cls(engine, shown, wait)
        try:
            store._init(create)
        except (ValueError, TypeError) as exc:  # a URL parameter the driver refuses at connection
            store.close()
            raise UsageError(f"--store {shown}: {_one_line(exc)}") from None
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction: committed on success, rolled back (store unchanged) on any error."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(write=True)
                with conn.begin():
                    yield conn
        except _Rollback:
            raise
        except UsageError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise UsageError(self._failed(exc)) from None

    def _failed(self, exc: BaseException) -> str:
        if _waited(exc):
            return (f"store {self.url}: waited {self.wait_s:g} s for a lock another session holds (an ingest "
                    f"in progress, or a client holding a lock); try again later, or set {TIMEOUT_ENV}")  # fmt: skip
        return f"store {self.url}: {_one_line(exc)}"

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                with conn.begin():
                    yield conn
        except UsageError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise UsageError(self._failed(exc)) from None

    def _init(self, create: bool = True) -> None:
        with self._read() as conn:  # the usual case, without taking a write lock
            found = None
            if inspect(conn).has_table("meta"):
                found = conn.execute(select(meta.c.value).where(meta.c.key == "schema")).scalar()
                if found == STORE_SCHEMA and all(inspect(conn).has_table(t) for t in metadata.tables):
                    return
        if not create:  # a read never makes a store, nor finishes one
            if found is not None and found != STORE_SCHEMA:
                raise UsageError(
                    f"store {self.url} has schema {found!r}; this elbolab reads {STORE_SCHEMA} (upgrade elbolab)"
                )
            raise UsageError(
                f"store {self.url}: no elbolab store there (elbolab history ingest RUN.json makes one)"
            )
        with self._write() as conn:
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})
            metadata.create_all(conn, checkfirst=True)
            found = conn.execute(select(meta.c.value).where(meta.c.key == "schema")).scalar()
            if found is None:
                _insert_ignore(conn, meta, [{"key": "schema", "value": STORE_SCHEMA}])
            elif found != STORE_SCHEMA:
                raise UsageError(
                    f"store {self.url} has schema {found!r}; this elbolab reads {STORE_SCHEMA} (upgrade elbolab)"
                )

    # ---------------------------------------------------------------------------------- ingest

    def ingest(
        self,
        run: Run,
        source: str | None = None,
        machine_name: str | None = None,
        origin: str = "ingest",
        replace: bool = False,
        commit_info: dict | None = None,
    ) -> Ingested:
        """Store a run once. A run already stored with the same content is a no-op (stored=False);
        one stored with different content under the same run_id is refused unless `replace`."""
        t0 = time.perf_counter()
        machine = Machine.of(run.machine, machine_name or os.environ.get(MACHINE_ENV) or None)
        digest = run_digest(run)
        with self._read() as conn:  # the common repeat, answered without building any row
            old = conn.execute(
                select(runs.c.digest, runs.c.ingested).where(runs.c.run_id == run.run_id)
            ).first()
        if old is not None and old.digest == digest:
            return Ingested(run.run_id, False, f"run {run.run_id} is already stored (ingested {old.ingested}): "
                            "nothing to do", time.perf_counter() - t0, machine)  # fmt: skip
        case_rows, meas_rows = _measurement_rows(run)
        header = dict(run.header_json(), training=[t.to_json() for t in run.training])
        run_row = {
            "run_id": run.run_id, "machine_id": machine.machine_id, "commit": run.git.commit,
            "dirty": run.git.dirty, "started": run.started, "finished": run.finished,
            "hostname": str(run.machine.get("hostname") or "")[:300] or None, "origin": origin[:300],
            "source": source, "digest": digest, "header": canonical(header),
            "n_measurements": len(meas_rows), "ingested": now(),
        }  # fmt: skip
        fp = machine.fingerprint
        machine_row = {
            "machine_id": machine.machine_id, "label": machine.label, "cpu": fp.get("cpu"),
            "cores": fp.get("cores") if isinstance(fp.get("cores"), int) else None,
            "logical_cpus": fp.get("logical_cpus") if isinstance(fp.get("logical_cpus"), int) else None,
            "memory_gib": fp.get("memory_gib"), "gpus": canonical(fp.get("gpus") or []),
            "fingerprint": canonical(fp),
        }  # fmt: skip
        commit_row = None
        if run.git.commit:
            info = commit_info or {}
            commit_row = {"sha": run.git.commit, "committed": info.get("committed"),
                          "parents": info.get("parents"), "subject": info.get("subject")}  # fmt: skip

        def done(stored: bool, message: str) -> Ingested:
            return Ingested(run.run_id, stored, message, time.perf_counter() - t0, machine)

        try:
            with self._write() as conn:
                old = conn.execute(
                    select(runs.c.digest, runs.c.source, runs.c.ingested).where(runs.c.run_id == run.run_id)
                ).first()
                if old is not None:
                    if old.digest == digest:
                        raise _Rollback(
                            f"run {run.run_id} is already stored (ingested {old.ingested}): nothing to do"
                        )
                    if not replace:
                        raise UsageError(
                            f"run {run.run_id} is already stored with different content (from {old.source or '?'}, "
                            f"{old.ingested}); pass --replace to replace it"
                        )
                    conn.execute(delete(measurements).where(measurements.c.run_id == run.run_id))
                    conn.execute(delete(runs).where(runs.c.run_id == run.run_id))
                _insert_ignore(conn, machines, [machine_row])
                if commit_row:
                    _insert_ignore(conn, commits, [commit_row])
                    if any(commit_row[k] for k in ("committed", "parents", "subject")):
                        conn.execute(
                            commits.update()
                            .where(commits.c.sha == commit_row["sha"], commits.c.committed.is_(None))
                            .values(
                                committed=commit_row["committed"],
                                parents=commit_row["parents"],
                                subject=commit_row["subject"],
                            )  # fmt: skip
                        )
                _insert_ignore(conn, cases, sorted(case_rows.values(), key=lambda r: r["case_id"]))
                inserted = _insert_ignore(conn, runs, [run_row], returning=runs.c.run_id)
                if not inserted:  # PostgreSQL: a concurrent ingest of the same run committed first
                    raise _Rollback(
                        f"run {run.run_id} is already stored (by a concurrent ingest): nothing to do"
                    )
                if meas_rows:
                    conn.execute(measurements.insert(), meas_rows)
        except _Rollback as skip:
            return done(False, str(skip))
        what = "replaced" if old is not None else "stored"
        return done(True, f"{what} run {run.run_id}: {len(meas_rows)} measurements, machine {machine.label}, "
                          f"commit {(run.git.commit or 'unknown')[:10]}{' (dirty)' if run.git.dirty else ''}")  # fmt: skip

    def record_skip(self, commit: str, machine_id: str, origin: str, stage: str, reason: str) -> None:
        with self._write() as conn:
            conn.execute(skips.insert(), [{"commit": commit, "machine_id": machine_id, "origin": origin[:300],
                                           "stage": stage, "reason": reason[:2000], "at": now()}])  # fmt: skip

    # ----------------------------------------------------------------------------------- reads

    def machines(self) -> list[MachineRow]:
        with self._read() as conn:
            counts = {
                r.machine_id: (r.n, r.c)
                for r in conn.execute(
                    select(
                        runs.c.machine_id,
                        func.count().label("n"),
                        func.count(runs.c.commit.distinct()).label("c"),
                    ).group_by(runs.c.machine_id)  # fmt: skip
                )
            }
            rows = conn.execute(select(machines).order_by(machines.c.label, machines.c.machine_id)).all()
        return [
            MachineRow(r.machine_id, r.label, json.loads(r.fingerprint), *counts.get(r.machine_id, (0, 0)))
            for r in rows
        ]

    def runs(
        self, machine_id: str | None = None, commit: str | None = None, origin: str | None = None
    ) -> list[StoredRun]:
        q = select(*(runs.c[f] for f in StoredRun.__dataclass_fields__))
        if machine_id:
            q = q.where(runs.c.machine_id == machine_id)
        if commit:
            q = q.where(runs.c.commit == commit)
        if origin:
            q = q.where(runs.c.origin == origin)
        with self._read() as conn:
            rows = conn.execute(q.order_by(runs.c.machine_id, runs.c.started, runs.c.run_id)).all()
        return [StoredRun(**r._mapping) for r in rows]

    def commits(self, shas: Iterable[str] | None = None) -> dict[str, dict]:
        q = select(commits)
        if shas is not None:
            shas = list(shas)
            if not shas:
                return {}
            q = q.where(commits.c.sha.in_(shas))
        with self._read() as conn:
            return {r.sha: dict(r._mapping) for r in conn.execute(q)}

    def cases(self) -> dict[str, Case]:
        with self._read() as conn:
            return {r.case_id: Case.from_json(json.loads(r.spec)) for r in conn.execute(select(cases))}

    def rows(self, machine_id: str | None = None, case_ids: Sequence[str] | None = None,
             include_dirty: bool = False) -> list[Row]:  # fmt: skip
        """Every stored measurement (of these cases, on this machine), with its run's facts."""
        q = select(
            runs.c.run_id, runs.c.machine_id, runs.c.commit, runs.c.dirty, runs.c.started,
            measurements.c.case_id, measurements.c.status, measurements.c.reason, measurements.c.loops,
            measurements.c.samples_ns,
        ).join(measurements, measurements.c.run_id == runs.c.run_id)  # fmt: skip
        if machine_id:
            q = q.where(runs.c.machine_id == machine_id)
        if case_ids is not None:
            q = q.where(measurements.c.case_id.in_(list(case_ids)))
        if not include_dirty:
            q = q.where(runs.c.dirty.is_not(True))
        with self._read() as conn:
            result = conn.execute(q.order_by(runs.c.started, runs.c.run_id, measurements.c.seq)).all()
        return [
            Row(
                r.run_id,
                r.machine_id,
                r.commit,
                r.dirty,
                r.started,
                r.case_id,
                r.status,
                r.reason,
                r.loops,
                tuple(json.loads(r.samples_ns)),
            )  # fmt: skip
            for r in result
        ]

    def skips(self, machine_id: str | None = None, origin: str | None = None) -> list[Skip]:
        q = select(
            skips.c.commit, skips.c.machine_id, skips.c.origin, skips.c.stage, skips.c.reason, skips.c.at
        )
        if machine_id:
            q = q.where(skips.c.machine_id == machine_id)
        if origin:
            q = q.where(skips.c.origin == origin)
        with self._read() as conn:
            return [Skip(**r._mapping) for r in conn.execute(q.order_by(skips.c.id))]

    def load_run(self, run_id: str) -> Run:
        """The run as it was ingested (validated like a results file)."""
        with self._read() as conn:
            head = conn.execute(select(runs.c.header).where(runs.c.run_id == run_id)).scalar()
            if head is None:
                raise UsageError(f"store {self.url}: no run {run_id!r}")
            rows = conn.execute(
                select(measurements, cases.c.spec)
                .join(cases, cases.c.case_id == measurements.c.case_id)
                .where(measurements.c.run_id == run_id)
                .order_by(measurements.c.seq)
            ).all()
        doc = json.loads(head)
        doc["measurements"] = [
            dict(
                json.loads(r.record),
                case=json.loads(r.spec),
                status=r.status,
                reason=r.reason,
                loops=r.loops,
                samples_ns=json.loads(r.samples_ns),
            )  # fmt: skip
            for r in rows
        ]
        return validate(doc, f"store run {run_id}")


class _Rollback(Exception):
    """Leave the transaction without changing anything, with a message."""


def _insert_ignore(conn: Connection, table: Table, rows: list[dict], returning=None) -> list:
    """INSERT ... ON CONFLICT DO NOTHING (the same statement on SQLite and PostgreSQL)."""
    if not rows:
        return []
    insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(table).on_conflict_do_nothing()
    if returning is not None:
        return conn.execute(stmt.returning(returning), rows[0]).all()
    conn.execute(stmt, rows)
    return []


def _measurement_rows(run: Run) -> tuple[dict[str, dict], list[dict]]:
    case_rows: dict[str, dict] = {}
    rows = []
    for seq, m in enumerate(run.measurements):
        cid = case_id(m.case)
        if cid not in case_rows:
            spec = m.case.to_json()
            case_rows[cid] = dict(spec, case_id=cid, label=m.case.label(), spec=canonical(spec))
        # every field but the ones with columns (asdict, not to_json: that computes the summary)
        record = asdict(m)
        for key in ("case", "status", "reason", "loops", "samples_ns"):
            record.pop(key, None)
        samples = [int(x) if float(x).is_integer() else float(x) for x in m.samples_ns]
        median = float(np.median(samples)) / m.loops if samples and m.loops >= 1 else None
        rows.append({
            "run_id": run.run_id, "seq": seq, "case_id": cid, "status": m.status, "reason": m.reason,
            "loops": m.loops, "n_samples": len(m.samples_ns),
            "median_ns": median if isinstance(median, float) and math.isfinite(median) else None,
            "samples_ns": canonical(samples), "record": canonical(record),
        })  # fmt: skip
    return case_rows, rows
