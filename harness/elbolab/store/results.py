"""The results file: one run per JSON document, schema 'elbolab.run/3', validated, versioned.

A run is written incrementally: after every measurement the whole document is written to a
temporary file beside the target and renamed over it (os.replace is atomic on POSIX), so the file
on disk is always complete, valid JSON, and a run killed at any moment keeps every finished case.
Files are strict JSON (no NaN or Infinity tokens): any JSON parser reads them.

Versions (as asv does with its api_version): a file states its schema; an older version is migrated
on load (MIGRATIONS), a newer one is refused with a message saying to upgrade elbolab. Loading
validates every field (types, ranges, known statuses, no unknown keys in a measurement); a
violation is one line naming the file and the field.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import math
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from elbolab.model.case import STRICT
from elbolab.model.errors import UsageError
from elbolab.model.measurement import SUMMARY_KEY, FiniteFloat, Measurement, Text

SCHEMA_PREFIX = "elbolab.run/"
SCHEMA_VERSION = 3
SCHEMA = f"{SCHEMA_PREFIX}{SCHEMA_VERSION}"


class ResultsError(UsageError):
    """A results file that cannot be used; the message is one line for the user."""


@dataclass(frozen=True, config=STRICT)
class Git:
    commit: str | None = None
    dirty: bool | None = None


@dataclass(frozen=True, config=STRICT)
class TrainingCurve:
    """The digits VAE trained through one backend's vae_step (elbolab.measure.training)."""

    backend: Text
    device: Text
    dtype: Text
    status: Literal["ok", "incorrect", "failed", "timeout", "skipped"]
    threads: Annotated[int, Field(ge=1)] = 1
    reason: Text | None = None
    losses: tuple[FiniteFloat, ...] = ()
    wall_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    dataset: Text | None = None
    steps: Annotated[int, Field(ge=0)] | None = None
    batch: Annotated[int, Field(ge=1)] | None = None
    hidden_dim: Annotated[int, Field(ge=1)] | None = None
    latent_dim: Annotated[int, Field(ge=1)] | None = None
    lr: FiniteFloat | None = None
    seed: Annotated[int, Field(ge=0)] | None = None
    # every step checked against the reference: the largest share of its bound any output used,
    # and how many steps were valid but less accurate than careful arithmetic
    max_bound_used: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    less_accurate_steps: Annotated[int, Field(ge=0)] | None = None
    # learning: the final loss against the best model that ignores its input
    bias_only_loss: FiniteFloat | None = None
    learned: bool | None = None
    # for the record: how far the curve is from NumPy's in the same dtype (and NumPy float64)
    max_rel_diff_vs_numpy: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    max_rel_diff_vs_numpy_float64: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    # schema 1 only: agreement with NumPy's curve within a flat tolerance
    curve_tolerance: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    curve_agrees: bool | None = None

    def key(self) -> tuple[str, str, str]:
        return (self.backend, self.device, self.dtype)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, config=STRICT)
class Run:
    """A results document: what ran where, and every measurement of it."""

    schema: Literal["elbolab.run/3"]
    run_id: Annotated[str, Field(min_length=1, max_length=200)]
    started: Text
    machine: dict[str, Any]
    software: dict[str, Any]
    git: Git
    config: dict[str, Any]
    finished: Text | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    # what could distort the measurements, seen at the start and the end (elbolab.measure.health)
    health: dict[str, Any] = field(default_factory=dict)
    measurements: tuple[Measurement, ...] = ()
    training: tuple[TrainingCurve, ...] = ()

    @property
    def cpu(self) -> str | None:
        cpu = self.machine.get("cpu")
        return cpu if isinstance(cpu, str) else None

    def header_json(self) -> dict:
        """Everything but the measurements and training curves."""
        return {
            "schema": self.schema, "run_id": self.run_id, "started": self.started, "finished": self.finished,
            "machine": self.machine, "software": self.software, "git": asdict(self.git),
            "config": self.config, "limits": self.limits, "health": self.health,
        }  # fmt: skip

    def to_json(self) -> dict:
        return dict(
            self.header_json(),
            measurements=[m.to_json() for m in self.measurements],
            training=[t.to_json() for t in self.training],
        )


_RUN = TypeAdapter(Run)


def new_run(run_id: str, started: str, machine: dict, software: dict, git: dict, config: dict) -> Run:
    return Run(SCHEMA, run_id, started, machine, software, Git(**git), config)


# ------------------------------------------------------------------------------------- migration


def _v1_to_v2(doc: dict) -> dict:
    """v1 -> v2: Case.samples became importance_samples; the stored summary 'per_call_ns' became
    'per_call_summary_ns' (derived, ignored); pooled rounds moved from notes to 'rounds'; the check's
    max_rel_err became rel_err (null where v1 wrote Infinity) and its flat tolerance rel_tolerance
    (v2 checks hold errors to bounds derived from the arithmetic: error_units, bound_units)."""
    for m in doc.get("measurements") or []:
        if not isinstance(m, dict):
            continue
        case = m.get("case")
        if isinstance(case, dict) and "samples" in case:
            case["importance_samples"] = case.pop("samples")
        m.pop("per_call_ns", None)
        notes = m.get("notes")
        if isinstance(notes, dict) and "samples_per_round" in notes:
            m["rounds"] = notes.pop("samples_per_round")
            notes.pop("rounds", None)
        check = m.get("check")
        if isinstance(check, dict):
            err = check.pop("max_rel_err", None)
            check["rel_err"] = err if not (isinstance(err, float) and not math.isfinite(err)) else None
            check["rel_tolerance"] = check.pop("tolerance", None)
    doc["schema"] = f"{SCHEMA_PREFIX}2"
    return doc


def _v2_to_v3(doc: dict) -> dict:
    """v2 -> v3: a new status, 'implausible' (a time the case cannot have), and a measurement's
    'evidence' that its timed calls did the checked work; a v2 file has neither, so it reads as is."""
    doc["schema"] = f"{SCHEMA_PREFIX}3"
    return doc


# version -> function migrating a document of that version to the next one
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2, 2: _v2_to_v3}


def schema_version(doc: object, where: str) -> int:
    if not isinstance(doc, dict):
        raise ResultsError(f"{where}: not an elbolab run (top level is not an object)")
    schema = doc.get("schema")
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_PREFIX):
        raise ResultsError(f"{where}: not an elbolab run (schema is {str(schema)[:60]!r})")
    version = schema[len(SCHEMA_PREFIX) :]
    if not version.isdigit() or int(version) < 1:
        raise ResultsError(f"{where}: unknown schema {schema[:60]!r} (this elbolab reads {SCHEMA})")
    if int(version) > SCHEMA_VERSION:
        raise ResultsError(
            f"{where}: schema {schema} is newer than this elbolab reads ({SCHEMA}); upgrade elbolab"
        )
    return int(version)


def migrate(doc: dict, where: str) -> dict:
    """Bring a document of any older schema version to the current one."""
    version = schema_version(doc, where)
    while version < SCHEMA_VERSION:
        doc = MIGRATIONS[version](doc)
        version += 1
    return doc


# ---------------------------------------------------------------------------------- validation


def _field_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-after[_consistent()]",) or str(part).startswith(
            ("function-", "json-or-python")
        ):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or "document"


def one_line(exc: ValidationError, where: str) -> str:
    """The first error of a validation failure, as 'WHERE: FIELD: message'."""
    err = exc.errors(include_url=False)[0]
    msg = err["msg"].replace("\n", " ")
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {str(value)[:60]!r})"
    more = len(exc.errors()) - 1
    tail = f"; and {more} more problem(s)" if more > 0 else ""
    return f"{where}: {_field_path(err['loc'])}: {msg}{shown}{tail}"


def validate(doc: object, where: str = "results") -> Run:
    """A Run from a JSON-like document of any supported version; ResultsError on any problem."""
    doc = migrate(doc, where)  # type: ignore[arg-type]
    for key in ("run_id", "started", "machine", "software", "git", "config"):
        if key not in doc:
            raise ResultsError(f"{where}: missing field {key!r}")
    for m in doc.get("measurements") or []:
        if isinstance(m, dict):
            m.pop(SUMMARY_KEY, None)
    try:
        return _RUN.validate_json(json.dumps(doc, allow_nan=True))
    except ValidationError as exc:
        raise ResultsError(one_line(exc, where)) from None


def load(path: str | os.PathLike) -> Run:
    """Load and validate a run; any problem is a ResultsError with a one-line message."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ResultsError(f"{path}: not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    nonfinite: list[str] = []

    def constant(token: str) -> float:
        nonfinite.append(token)
        return float(token.replace("Infinity", "inf"))

    try:
        doc = json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise ResultsError(
            f"{path}: not valid JSON, truncated or corrupt ({exc.msg} at line {exc.lineno})"
        ) from None
    except RecursionError:
        raise ResultsError(f"{path}: not valid JSON (nested too deeply)") from None
    if nonfinite and schema_version(doc, str(path)) >= 2:
        raise ResultsError(f"{path}: not strict JSON ({nonfinite[0]} is not a JSON number)")
    return validate(doc, str(path))


# ------------------------------------------------------------------------------------- writing


def _strict(value: Any) -> Any:
    """JSON-able with every non-finite float (a limit that could not be measured) as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def _compact(value) -> str:
    """Strict JSON text of an already strict value, as save_json writes it while a run is in flight."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def save_json(path: Path, doc: dict, pretty: bool = False, strict: bool = False) -> None:
    """Write a JSON document to `path` atomically (temporary file + rename), as strict JSON.

    Compact while a run is in flight (the whole document is rewritten after every case, and
    indenting costs 3x the time); indented when it is finished. `strict=True`: the caller has
    already made every value strict (RunFile does, once per measurement, not once per save).
    """
    doc = doc if strict else _strict(doc)
    text = json.dumps(doc, indent=1, allow_nan=False) if pretty else _compact(doc)
    write_text_atomic(Path(path), text)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old file or the new one, never a part.

    Only a regular file (or nothing) is replaced: a FIFO, a device or a directory at `path` is
    refused, so `--out /dev/null` cannot replace a device node. A full disk or a read-only folder
    is one line (a UsageError) and leaves the old file as it was.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UsageError(f"{path}: not a regular file; refusing to replace it")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a results file is for sharing
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        what = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        kept = "; the previous version is kept" if path.exists() else ""
        raise UsageError(f"cannot write {path}: {what}{kept}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete '.NAME.*.tmp' files beside `path` left by a writer that was killed mid-save (only call
    with the file's lock held: a live writer's temporary is never stale then)."""
    removed = []
    for tmp in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


class FileLock:
    """An exclusive lock on the sidecar file '.NAME.lock' beside a results file, held while a run or
    a training writes it, so a second writer gets one clear line instead of losing cases.

    flock locks belong to the open file and die with the process, so a killed run leaves no lock
    behind. The sidecar is removed on release; a writer that locked a sidecar just removed (its
    inode is no longer the one at the path) tries again.
    """

    def __init__(self, target: Path):
        self.target = Path(target)
        self.path = self.target.with_name(f".{self.target.name}.lock")
        self.fd: int | None = None

    def acquire(self) -> FileLock:
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            except OSError as exc:
                raise UsageError(f"cannot write {self.target}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise UsageError(
                    f"{self.target} is being written by another elbolab (pid {holder}); wait for it or use another --out"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self.fd = fd
                return self
            os.close(fd)
        raise UsageError(f"cannot lock {self.target}: its lock file keeps changing")

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def save(path: Path, run: Run, pretty: bool = True) -> None:
    save_json(path, run.to_json(), pretty=pretty)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class RunFile:
    """A run being written: the document on disk is rewritten atomically whenever it changes.

    Each measurement is turned into JSON text once, when it is added, so rewriting the file after
    every case joins the texts instead of encoding every record again: json.dumps of a 480-case
    run took 47 ms a save, paid after every case (~11 s of a make bench).
    """

    def __init__(self, path: Path, run: Run, lock: FileLock | None = None):
        self.path = Path(path)
        self.lock = lock
        self._header = run.header_json()
        self._measurements = list(run.measurements)
        self._measurement_text = [_compact(_strict(m.to_json())) for m in run.measurements]
        self._training = list(run.training)

    @property
    def run(self) -> Run:
        return Run(**{k: v for k, v in self._header.items() if k != "git"}, git=Git(**self._header["git"]),
                   measurements=tuple(self._measurements), training=tuple(self._training))  # fmt: skip

    @property
    def software(self) -> dict:
        return self._header["software"]

    def save(self, pretty: bool = False) -> None:
        training = _strict([t.to_json() for t in self._training])
        if pretty:  # once, when the run is finished
            measurements = [json.loads(t) for t in self._measurement_text]
            doc = dict(_strict(self._header), measurements=measurements, training=training)
            save_json(self.path, doc, pretty=True, strict=True)
            return
        # the document save_json would write compact, with the measurements' texts joined in
        header = _compact(_strict(self._header))
        text = (f'{header[:-1]},"measurements":[{",".join(self._measurement_text)}],'
                f'"training":{_compact(training)}}}')  # fmt: skip
        write_text_atomic(self.path, text)

    def add(self, m: Measurement) -> None:
        self._measurements.append(m)
        self._measurement_text.append(_compact(_strict(m.to_json())))
        self.save()

    def set_limits(self, limits: dict) -> None:
        self._header["limits"] = limits
        self.save()

    @property
    def limits(self) -> dict:
        return self._header.get("limits") or {}

    def has_limits(self) -> bool:
        return bool(self._header.get("limits"))

    def put_training(self, curves: Iterable) -> None:
        """Add training curves, replacing any earlier curve of the same backend, device and dtype."""
        curves = list(curves)
        new = {c.key() for c in curves}
        self._training = [t for t in self._training if t.key() not in new] + curves
        self.save()

    def set_health(self, moment: str, health: dict) -> None:
        self._header.setdefault("health", {})[moment] = health

    def unfinish(self) -> None:
        self._header["finished"] = None

    def finish(self, finished: str) -> None:
        self._header["finished"] = finished
        self.save(pretty=True)

    def done_keys(self) -> set[tuple]:
        """Cases already measured with a final status (what --resume skips)."""
        return {m.case.key() for m in self._measurements}

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RunFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def replace_measurements(run: Run, measurements: Iterable[Measurement]) -> Run:
    return replace(run, measurements=tuple(measurements))


def now() -> str:
    """The time a run starts or ends, as its results file records it (UTC, to the second)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------- opening a run's file


def check_writable(path: Path) -> None:
    """The results file can be written: a regular file or nothing, in a folder made if missing."""
    if not str(path) or str(path) == ".":
        raise UsageError("--out needs a file name")
    if path.exists() and not path.is_file():
        raise UsageError(f"cannot write {path}: not a regular file")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: cannot create {parent} ({exc.strerror or exc})") from None
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied")


# what makes two runs' measurements the same kind of thing: the machine they ran on ...
MACHINE_KEYS = ("cpu", "logical_cpus", "memory_bytes", "hostname")


def machine_differences(file_machine: dict, here: dict) -> list[str]:
    return [
        f"machine {k}: file {file_machine.get(k)!r}, here {here.get(k)!r}"
        for k in MACHINE_KEYS
        if file_machine.get(k) != here.get(k)
    ]


def config_differences(file_config: dict, config: dict) -> list[str]:
    """... and how they were measured (the plan and the timer)."""
    out = []
    for section in ("plan", "timer", "cells"):
        a, b = file_config.get(section) or {}, config.get(section) or {}
        out += [
            f"{section} {k}: file {a.get(k)!r}, now {b.get(k)!r}"
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)
        ]
    return out


def open_results(
    out: Path, config: dict, machine: dict, software: dict, git: dict, mode: str = "new"
) -> RunFile:
    """The run document at `out`, locked for writing.

    mode  new        `out` must not exist (a results file is never replaced by accident)
          overwrite  replace whatever results file is there
          resume     finish the run in `out`: same machine, same plan and timer (`config`)
          append     add to the run in `out` (training curves): same machine
    """
    check_writable(out)
    exists = out.exists()
    if mode == "new" and exists:
        raise UsageError(
            f"{out} exists; pass --resume to finish its missing cases or --overwrite to replace it"
        )
    if mode == "resume" and not exists:
        raise UsageError(f"--resume: {out} does not exist")
    lock = FileLock(out).acquire()
    try:
        remove_stale_temporaries(out)
        if mode in ("resume", "append") and exists:
            run = load(out)
            different = machine_differences(run.machine, machine)
            if mode == "resume":
                different += config_differences(run.config, config)
            if different:
                raise UsageError(
                    f"{out} was measured differently ({'; '.join(different[:3])}); use a new --out"
                )
            rf = RunFile(out, run, lock)
            if mode == "resume":
                rf.unfinish()
            return rf
        if exists:
            load(out)  # --overwrite replaces a results file, never some other file
        rf = RunFile(out, new_run(uuid.uuid4().hex[:12], now(), machine, software, git, config), lock)
        rf.save()
        return rf
    except BaseException:
        lock.release()
        raise
