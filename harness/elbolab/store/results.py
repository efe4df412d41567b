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
import re
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic_core
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


def unique_run_id(prefix: str = "") -> str:
    """A run id no other run has: random, not a time (two gates started in the same second would
    otherwise share one, and the store keeps one run per id)."""
    token = uuid.uuid4().hex[:12]
    return f"{prefix}-{token}" if prefix else token


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
    version = schema_version(doc, where)
    doc = migrate(doc, where)  # type: ignore[arg-type]
    for key in ("run_id", "started", "machine", "software", "git", "config"):
        if key not in doc:
            raise ResultsError(f"{where}: missing field {key!r}")
    for m in doc.get("measurements") or []:
        if isinstance(m, dict):
            m.pop(SUMMARY_KEY, None)
    try:
        # pydantic_core's encoder: the same JSON as json.dumps, 6x faster (a 20,000-case file)
        data = pydantic_core.to_json(doc, inf_nan_mode="constants")
        if version >= 2 and (b"Infinity" in data or b"NaN" in data):  # a fast look; then exactly
            at = _nonfinite_at(doc)
            if at:  # a number beyond the largest float (1e400): strict JSON output has no infinity
                raise ResultsError(f"{where}: {at}: not a finite number")
        run = _RUN.validate_json(data)
    except ValidationError as exc:
        raise ResultsError(one_line(exc, where)) from None
    problem = out_of_bounds(run)
    if problem:
        raise ResultsError(f"{where}: {problem}")
    return run


# Numbers a run can hold. JSON has no limit on an integer or on how close to 0 or to the largest
# float a number is; beyond these, a database column overflows (a 64-bit integer), a statistic does
# (a mean of 1e308s, a rate over a 5e-324 ns sample is infinite, and strict JSON has no infinity),
# or the number is no measurement of this lab (a batch of 1e30, more threads than any machine has).
MAX_SIZE = 2**31  # a batch or a dimension (the command line's own limit)
MAX_THREADS = 2**16
MAX_SEED = 2**63 - 1
MAX_LOOPS = 2**53  # every loop count is exact as a float: per-call times divide by it
MAX_INT = 2**63 - 1  # any other count (a 64-bit column)
SAMPLE_NS = (1e-3, 1e15)  # a picosecond to 11.6 days: what a sample of calls can last
_COUNTS = ("first_call_ns", "cpu_ns", "wall_ns")


def out_of_bounds(run: Run) -> str | None:
    """The first number of `run` beyond what the lab can hold or compute with, as 'FIELD: why'."""
    for i, m in enumerate(run.measurements):
        problem = _measurement_out_of_bounds(m)
        if problem:
            return f"measurements[{i}].{problem}"
    return None


def _measurement_out_of_bounds(m: Measurement) -> str | None:
    # one cheap test a group (a 20,000-case file is loaded in the 2 s `show` has), then the field
    c = m.case
    sizes = {"batch": c.batch, "input_dim": c.input_dim, "latent_dim": c.latent_dim,
             "hidden_dim": c.hidden_dim, "importance_samples": c.importance_samples}  # fmt: skip
    if max(sizes.values()) > MAX_SIZE:
        name = next(k for k, v in sizes.items() if v > MAX_SIZE)
        return f"case.{name}: {_big(sizes[name])} is beyond {MAX_SIZE} (2^31)"
    if c.threads > MAX_THREADS:
        return f"case.threads: {_big(c.threads)} is beyond {MAX_THREADS}"
    if c.seed > MAX_SEED:
        return f"case.seed: {_big(c.seed)} is beyond 2^63 - 1"
    if m.loops > MAX_LOOPS:
        return f"loops: {_big(m.loops)} is beyond 2^53"
    for name, samples in (("samples_ns", m.samples_ns), ("device_samples_ns", m.device_samples_ns)):
        if samples and (min(samples) < SAMPLE_NS[0] or max(samples) > SAMPLE_NS[1]):
            bad = min(samples) if min(samples) < SAMPLE_NS[0] else max(samples)
            return f"{name}: a sample of {bad:.3g} ns is outside {SAMPLE_NS[0]:g} to {SAMPLE_NS[1]:g} ns"
    mem, cost = m.memory, m.cost
    largest = max(m.first_call_ns or 0, m.cpu_ns or 0, m.wall_ns or 0, mem.peak_rss_bytes or 0,
                  mem.baseline_rss_bytes or 0, mem.device_peak_bytes or 0, cost.bytes if cost else 0,
                  cost.flops if cost else 0, max((max(p, default=0) for p in m.calibration), default=0))  # fmt: skip
    if largest <= MAX_INT and m.counts is None:
        return None
    counts = {name: getattr(m, name) for name in _COUNTS}
    if m.cost is not None:
        counts.update({"cost.bytes": m.cost.bytes, "cost.flops": m.cost.flops})
    counts.update({f"memory.{k}": v for k, v in m.memory.__dict__.items() if isinstance(v, int)})
    counts.update({f"calibration[{j}]": max(pair, default=0) for j, pair in enumerate(m.calibration)})
    if m.counts is not None:
        counts["counts.calls"] = m.counts.calls
        counts.update(
            {f"counts.segments[{j}]": max(seg.values(), default=0) for j, seg in enumerate(m.counts.segments)}
        )
    for name, value in counts.items():
        if value is not None and value > MAX_INT:
            return f"{name}: {_big(value)} is beyond 2^63 - 1"
    return None


def _big(n: int) -> str:
    """An integer of any size, short (a float cannot hold 10^400)."""
    digits = len(str(n))
    return str(n) if digits <= 12 else f"{str(n)[0]}.{str(n)[1:3]}e{digits - 1}"


def _strerror(exc: BaseException) -> str:
    """An OSError's reason without the file name it repeats (the message names the file once)."""
    return getattr(exc, "strerror", None) or str(exc)


def load(path: str | os.PathLike) -> Run:
    """Load and validate a run; any problem is a ResultsError with a one-line message."""
    path = Path(path)
    try:
        if path.exists() and not path.is_file():
            raise ResultsError(f"{path}: not a regular file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except (OSError, UnicodeDecodeError) as exc:  # a name over NAME_MAX fails in exists() already
        raise ResultsError(f"{path}: cannot read ({exc.__class__.__name__}: {_strerror(exc)})") from None
    run = _load_current(text)
    if run is not None:
        problem = out_of_bounds(run)
        if problem:
            raise ResultsError(f"{path}: {problem}")
        return run
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


# The summary elbolab writes as the last key of each measurement (derived, ignored on load): a
# flat object (its interval is a list), so it can be cut from the text without parsing it
_SUMMARY_TEXT = re.compile(r',\s*"' + SUMMARY_KEY + r'":\s*(?:null|\{[^{}]*\})(?=\s*\})')


def _load_current(text: str) -> Run | None:
    """A file of the current schema as elbolab writes it, validated straight from its text: a
    20,000-case file loads in a third of the time json.loads and a second encoding take (what the
    2 s `show` has). None whenever this cannot decide, and the full path decides, with its
    message: another schema, a NaN or Infinity anywhere (even in a string), a summary elsewhere
    than last in each measurement, any validation error."""
    if "NaN" in text or "Infinity" in text:
        return None
    stripped, summaries = _SUMMARY_TEXT.subn("", text)
    try:
        run = _RUN.validate_json(stripped)
    except (ValidationError, ValueError):
        return None
    if summaries != len(run.measurements) and summaries != 0:
        return None
    # a number like 1e400 parses to infinity where any JSON is allowed (notes, the header)
    loose = pydantic_core.to_json(
        [run.header_json(), [m.notes for m in run.measurements]], inf_nan_mode="constants"
    )
    if b"Infinity" in loose or b"NaN" in loose:
        return None
    return run


def _nonfinite_at(value: Any, where: str = "") -> str | None:
    """Where in a parsed document a float is not finite (a number like 1e400 parses to infinity),
    or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "document"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _nonfinite_at(
            item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
        )
        if found:
            return found
    return None


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

    Only a regular file (or nothing) is replaced: a FIFO, a device, a directory or a symbolic link
    at `path` is refused, so `--out /dev/null` cannot replace a device node and a link planted
    where a file is written is never replaced or followed (a caller that accepts a link the user
    named resolves it first, once: output_path). A full disk or a read-only folder is one line (a
    UsageError) and leaves the old file as it was.
    """
    path = Path(path)
    kind = _kind(path)
    if kind not in ("missing", "file"):
        raise UsageError(f"{path}: {kind}; refusing to replace it")
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {_strerror(exc)}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a results file is for sharing
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        what = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else _strerror(exc)
        kept = "; the previous version is kept" if path.exists() else ""
        raise UsageError(f"cannot write {path}: {what}{kept}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# A temporary beside the file it becomes: '.NAME.elbolab-PID-XXXXXXXX.tmp' (mkstemp's 8 random
# characters). Only names of exactly this form are ever removed as stale, so a user's own
# '.NAME.keep.tmp' is never touched.
TMP_MARK = "elbolab"
_TMP_TAIL = 8 + len(".tmp")
_MKSTEMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{TMP_MARK}-{os.getpid()}-"


def _is_our_temporary(path: Path, name: str) -> bool:
    head = f".{path.name}.{TMP_MARK}-"
    if not (name.startswith(head) and name.endswith(".tmp")):
        return False
    pid, sep, rand = name[len(head) : -len(".tmp")].partition("-")
    return bool(sep) and pid.isdigit() and len(rand) == 8 and all(ch in _MKSTEMP_CHARS for ch in rand)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporaries a writer of `path` left when it was killed mid-save (only call with the
    file's lock held: a live writer's temporary is never stale then). Only regular files of this
    user named as elbolab names them (never a link, nor a user's file that looks like one)."""
    path = Path(path)
    removed = []
    try:
        names = os.listdir(path.parent if str(path.parent) else ".")
    except OSError:
        return removed
    for name in names:
        if not _is_our_temporary(path, name):
            continue
        tmp = path.parent / name
        try:
            st = os.lstat(tmp)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass
    return removed


class FileLock:
    """An exclusive lock on the sidecar file '.NAME.lock' beside a results file, held while a run or
    a training writes it, so a second writer gets one clear line instead of losing cases.

    flock locks belong to the open file and die with the process, so a killed run leaves no lock
    behind. The sidecar is opened without following a link (O_NOFOLLOW) and without blocking on a
    FIFO, and used only when it is a regular file of this user with one name: a link or a FIFO
    planted there is refused, never written through (a link to another file would have that file
    cut down to a process id). It is removed on release only while it is still the file locked;
    a writer that locked a sidecar just removed (its inode is no longer the one at the path) tries
    again.
    """

    def __init__(self, target: Path):
        self.target = Path(target)
        self.path = self.target.with_name(f".{self.target.name}.lock")
        self.fd: int | None = None

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o666 & ~_umask())
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UsageError(
                    f"cannot lock {self.target}: {self.path} is a symbolic link; remove it"
                ) from None
            raise UsageError(f"cannot write {self.target}: {_strerror(exc)}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.geteuid():
            os.close(fd)
            what = "not a regular file" if not stat.S_ISREG(st.st_mode) else (
                "a file with other names (hard links)" if st.st_nlink != 1 else "another user's file")  # fmt: skip
            raise UsageError(f"cannot lock {self.target}: {self.path} is {what}; remove it")
        return fd

    def acquire(self) -> FileLock:
        for _ in range(10):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise UsageError(
                    f"{self.target} is being written by another elbolab (pid {holder[:20]}); wait for it or use another --out"
                ) from None
            if self._still_at_path(fd):
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self.fd = fd
                return self
            os.close(fd)
        raise UsageError(f"cannot lock {self.target}: its lock file keeps changing")

    def _still_at_path(self, fd: int) -> bool:
        try:
            st, now_there = os.fstat(fd), os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (now_there.st_dev, now_there.st_ino)

    def release(self) -> None:
        if self.fd is not None:
            if self._still_at_path(self.fd):  # never a file someone put in its place
                self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def writer_of(path: Path) -> str | None:
    """The process id written in the lock of a results file that a live elbolab holds, else None
    (reading only: the sidecar is not created, followed or changed)."""
    sidecar = Path(path).with_name(f".{Path(path).name}.lock")
    try:
        fd = os.open(sidecar, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 64).decode(errors="replace").strip()[:20] or "?"
        return None  # nobody holds it: a sidecar a killed run left
    finally:
        os.close(fd)


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


def _kind(path: Path) -> str:
    """What is at `path`, not following a link: 'missing', 'file', or what it is instead."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {_strerror(exc)}") from None
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))  # fmt: skip
    return "not a regular file (" + next((name for test, name in kinds if test(st.st_mode)), "special") + ")"


# The longest name elbolab makes beside a file it writes is its temporary, '.NAME.elbolab-PID-
# XXXXXXXX.tmp': 30 bytes more than NAME (a pid has at most 7 digits on Linux)
_BESIDE = 30


def _name_max(path: Path) -> int:
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def output_path(path: Path, follow_link: bool = True) -> Path:
    """The file a write of `path` replaces, checked before any work starts: a regular file or
    nothing, in a folder that is made if missing and can be written, with a name short enough for
    the temporary written beside it. A symbolic link the user named is resolved here, once,
    explicitly: its target is what is locked and replaced, and the link stays (with
    follow_link=False a link is refused). A FIFO, a device, a directory or a link to nothing is
    refused."""
    path = Path(path)
    if not path.name or str(path) == ".":
        raise UsageError(f"{path}: needs a file name")
    limit = _name_max(path) - _BESIDE
    if len(os.fsencode(path.name)) > limit:
        raise UsageError(f"cannot write {str(path)[:80]}...: the file name is {len(os.fsencode(path.name))} bytes; "
                         f"at most {limit} here (the file system's limit less what elbolab adds beside it)")  # fmt: skip
    kind = _kind(path)
    if kind == "a symbolic link":
        if not follow_link:
            raise UsageError(f"{path}: a symbolic link; refusing to write through it")
        target = Path(os.path.realpath(path))
        if _kind(target) != "file":
            what = (
                "nothing" if _kind(target) == "missing" else _kind(target).removeprefix("not a regular file ")
            )
            raise UsageError(f"cannot write {path}: a symbolic link to {what} ({target})")
        return output_path(target)
    if kind != "missing" and kind != "file":
        raise UsageError(f"cannot write {path}: {kind}")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: cannot create {parent} ({_strerror(exc)})") from None
    if not os.access(parent, os.W_OK) or (kind == "file" and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied")
    return path


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
    if not str(out) or str(out) == ".":
        raise UsageError("--out needs a file name")
    # a link named as --out is resolved once, here: the run it points to is locked, resumed and
    # replaced where it is, and the link stays a link
    out = output_path(out)
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
        rf = RunFile(out, new_run(unique_run_id(), now(), machine, software, git, config), lock)
        rf.save()
        return rf
    except BaseException:
        lock.release()
        raise
