"""The versions the lab was tested with (elbolab/constraints.txt) against the versions installed, for
the record of every run: a time measured with another NumPy or BLAS is another measurement."""

from __future__ import annotations

import hashlib
import re
from importlib import metadata
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parent.parent / "constraints.txt"


def _name(text: str) -> str:
    """A distribution name as PEP 503 compares them: 'Py_CPUInfo' and 'py-cpuinfo' are one."""
    return re.sub(r"[-_.]+", "-", text).lower()


def pinned(path: Path = CONSTRAINTS) -> dict[str, str]:
    """name -> version of every `name==version` line of a constraints file."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            out[_name(name)] = version.strip()
    return out


def installed() -> dict[str, str]:
    return {_name(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def constraints_record(path: Path = CONSTRAINTS, have: dict[str, str] | None = None) -> dict:
    """How the installed versions differ from the tested ones. A package pinned but not installed
    (torch in an install that only gates) is no difference; one installed at another version is."""
    if not path.is_file():
        return {"file": None, "note": f"{path.name} not found beside the installed elbolab"}
    have = installed() if have is None else have
    tested = pinned(path)
    differs = {
        n: {"installed": have[n], "tested": v}
        for n, v in sorted(tested.items())
        if n in have and have[n] != v
    }
    return {
        "file": "elbolab/constraints.txt",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "checked": sum(1 for n in tested if n in have),
        "matches": not differs,
        "differs": differs,
    }
