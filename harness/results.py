"""The results file: schema 'elbolab.run/1', one run per JSON document.

A run is written incrementally: after every measurement the whole document is written to a
temporary file beside the target and renamed over it (os.replace is atomic on POSIX), so the file
on disk is always complete, valid JSON, and a run killed at any moment keeps every finished case.

Raw samples are the record; the summary stored beside them is a convenience that `summary_of`
recomputes from the samples, so any statistic can be recomputed later.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.case import Case
from harness.errors import UsageError
from harness.stats import Summary, summarize

SCHEMA = "elbolab.run/1"
STATUSES = ("ok", "incorrect", "failed", "timeout", "skipped")
RUN_KEYS = ("schema", "run_id", "started", "machine", "software", "config", "measurements")
MEASUREMENT_KEYS = ("case", "status", "reason")


class ResultsError(UsageError):
    """A results file that cannot be used; the message is one line for the user."""


def measurement(
    case: Case,
    status: str,
    reason: str | None = None,
    *,
    loops: int = 0,
    samples_ns: Iterable[int] = (),
    first_call_ns: int | None = None,
    check: dict | None = None,
    memory: dict | None = None,
    cost: dict | None = None,
    notes: dict | None = None,
    calibration: Iterable[tuple[int, int]] = (),
) -> dict:
    """One measurement record, as stored in the results file."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    samples = [int(s) for s in samples_ns]
    record = {
        "case": case.to_json(),
        "status": status,
        "reason": reason,
        "loops": loops,
        "samples_ns": samples,  # each sample is the wall time of `loops` consecutive calls
        "first_call_ns": first_call_ns,
        "per_call_ns": summarize([s / loops for s in samples]).to_json() if samples and loops else None,
        "check": check,
        "memory": memory or {"peak_rss_bytes": None, "device_peak_bytes": None},
        "cost": cost,
        "notes": notes or {},
        "calibration": [list(c) for c in calibration],
    }
    return record


def per_call_samples(m: dict) -> list[float]:
    """Per-call times (ns) of a measurement, from its raw samples."""
    loops = m.get("loops") or 0
    return [s / loops for s in m.get("samples_ns", [])] if loops else []


def summary_of(m: dict) -> Summary | None:
    samples = per_call_samples(m)
    return summarize(samples) if samples else None


def case_of(m: dict) -> Case:
    return Case.from_json(m["case"])


@dataclass
class RunFile:
    """A run document on disk, rewritten atomically whenever it changes."""

    path: Path
    doc: dict

    def add(self, record: dict) -> None:
        self.doc["measurements"].append(record)
        save(self.path, self.doc)

    def finish(self, finished: str) -> None:
        self.doc["finished"] = finished
        save(self.path, self.doc, pretty=True)

    def done_keys(self) -> set[tuple]:
        """Cases already measured with a final status (what --resume skips)."""
        return {case_of(m).key() for m in self.doc["measurements"]}


def new_run(run_id: str, started: str, machine: dict, software: dict, git: dict, config: dict) -> dict:
    return {
        "schema": SCHEMA,
        "run_id": run_id,
        "started": started,
        "finished": None,
        "machine": machine,
        "software": software,
        "git": git,
        "config": config,
        "limits": {},
        "measurements": [],
        "training": [],
    }


def save(path: Path, doc: dict, pretty: bool = False) -> None:
    """Write `doc` to `path` atomically. Compact while a run is in flight (the whole document is
    rewritten after every case, and indenting costs 3x the time); indented when it is finished."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a results file is for sharing
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=1) if pretty else json.dumps(doc, separators=(",", ":")))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load(path: str | os.PathLike) -> dict:
    """Load and validate a run; any problem is a ResultsError with a one-line message."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(
            f"{path}: not valid JSON, truncated or corrupt ({exc.msg} at line {exc.lineno})"
        ) from None
    validate(doc, str(path))
    return doc


def validate(doc: object, where: str = "results") -> None:
    if not isinstance(doc, dict):
        raise ResultsError(f"{where}: not an elbolab run (top level is not an object)")
    schema = doc.get("schema")
    if not isinstance(schema, str) or not schema.startswith("elbolab.run/"):
        raise ResultsError(f"{where}: not an elbolab run (schema is {schema!r})")
    if schema != SCHEMA:
        version = schema.rsplit("/", 1)[-1]
        if version.isdigit() and int(version) > int(SCHEMA.rsplit("/", 1)[-1]):
            raise ResultsError(
                f"{where}: schema {schema} is newer than this elbolab reads ({SCHEMA}); upgrade elbolab"
            )
        raise ResultsError(f"{where}: unknown schema {schema!r} (this elbolab reads {SCHEMA})")
    missing = [k for k in RUN_KEYS if k not in doc]
    if missing:
        raise ResultsError(f"{where}: missing fields {missing}")
    if not isinstance(doc["measurements"], list):
        raise ResultsError(f"{where}: 'measurements' is not a list")
    for i, m in enumerate(doc["measurements"]):
        _validate_measurement(m, f"{where}: measurement {i}")


def _validate_measurement(m: object, where: str) -> None:
    if not isinstance(m, dict) or any(k not in m for k in MEASUREMENT_KEYS):
        raise ResultsError(f"{where}: needs fields {list(MEASUREMENT_KEYS)}")
    try:
        case_of(m)
    except (TypeError, ValueError) as exc:
        raise ResultsError(f"{where}: bad case ({exc})") from None
    if m["status"] not in STATUSES:
        raise ResultsError(f"{where}: unknown status {m['status']!r}")
    samples = m.get("samples_ns", [])
    if not isinstance(samples, list) or not all(isinstance(s, (int, float)) and s > 0 for s in samples):
        raise ResultsError(f"{where}: samples_ns must be a list of positive numbers")
    if m["status"] == "ok" and (not samples or not m.get("loops")):
        raise ResultsError(f"{where}: status ok without samples")
