"""Settings from `[tool.elbolab]` in pyproject.toml, or from elbolab.toml, and the environment.

    [tool.elbolab]                      # in elbolab.toml: the same keys at the top level
    store = "sqlite:///results/history.sqlite"
    threshold = 0.10                    # a regression between two runs (compare, gate FILES, history)
    ab-threshold = 0.05                 # ... in the interleaved A/B gate (gate --base)
    noise-band = 0.03
    count-threshold = 0.01              # instruction counts
    threshold-for = { vae_step = 0.2 }

    [tool.elbolab.run]                  # the default matrix of `elbolab run`
    backend = ["numpy", "rust"]
    batch = [128, 8192]
    k = "not sampled"                   # a -k expression

    [tool.elbolab.report]
    baseline = "numpy"

The file is found as pytest finds its configuration: from the working directory upwards, the first
folder with an elbolab.toml, or a pyproject.toml that has a [tool.elbolab] table. A flag on the
command line overrides the file; the environment (ELBOLAB_STORE) overrides the file for the store.
An unknown key or a value of the wrong type is one line and exit code 2. `elbolab config` prints
every setting in force and where it came from.

This module only reads and checks: each setting's built-in default stays with the code that owns it
(elbolab.analyse.verdict for the thresholds, the plan for the matrix), which the CLI passes in.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from elbolab.model.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency there only)
    import tomli as tomllib


def _number(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return float(value)


def _positive(value, key: str) -> float:
    number = _number(value, key)
    if number <= 0:
        raise ValueError(f"{key} must be positive, got {value!r}")
    return number


def _text(value, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} must be a non-empty string, got {value!r}")
    return value


def _names(value, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f'{key} must be a list of names such as ["numpy", "rust"], got {value!r}')
    return tuple(value)


def _counts(value, key: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise ValueError(f"{key} must be a list of positive integers such as [1, 128], got {value!r}")
    return tuple(value)


def _per_workload(value, key: str) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{key} must be a table such as {{ vae_step = 0.2 }}, got {value!r}")
    return tuple((str(w), _number(t, f"{key}.{w}")) for w, t in value.items())


@dataclass(frozen=True)
class Key:
    name: str  # as written in the file: 'threshold', 'run.batch'
    check: object  # (value, name) -> the value as the lab uses it; ValueError if wrong
    help: str
    env: str | None = None  # an environment variable that overrides the file


KEYS = {k.name: k for k in (
    Key("store", _text, "the history store's URL (--store)", env="ELBOLAB_STORE"),
    Key("threshold", _number, "slowdown that is a regression between two runs (--threshold)"),
    Key("ab-threshold", _number, "the same in the interleaved A/B gate, gate --base (--threshold)"),
    Key("noise-band", _number, "a confident change smaller than this is noise (--noise-band)"),
    Key("count-threshold", _number, "a regression in instruction counts (--count-threshold)"),
    Key("threshold-for", _per_workload, "a threshold per workload (--threshold-for W=T)"),
    Key("run.backend", _names, "backends of `elbolab run` (--backend)"),
    Key("run.workload", _names, "workloads (--workload)"),
    Key("run.batch", _counts, "batch sizes (--batch)"),
    Key("run.dtype", _names, "dtypes (--dtype)"),
    Key("run.threads", _counts, "thread counts (--threads)"),
    Key("run.device", _names, "devices (--device)"),
    Key("run.variant", _names, "variants (--variant)"),
    Key("run.k", _text, "a -k expression choosing the cases (-k)"),
    Key("run.timeout", _positive, "seconds per case (--timeout)"),
    Key("report.baseline", _text, "the backend speed-ups are over (--baseline)"),
    Key("report.title", _text, "the report's title (--title)"),
)}  # fmt: skip
SECTIONS = {name.partition(".")[0] for name in KEYS if "." in name}


@dataclass(frozen=True)
class Config:
    """The settings found (checked), each with where it came from; a key not set is not here."""

    values: dict[str, object] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    file: Path | None = None

    def get(self, key: str, default=None):
        if key not in KEYS:
            raise KeyError(key)  # a typo in the lab's code, not the user's
        return self.values.get(key, default)

    def pick(self, flag, key: str, default=None):
        """The value in force: the flag if given, else the setting, else the built-in default."""
        return flag if flag is not None else self.get(key, default)


def find_file(start: Path | None = None) -> tuple[Path, dict] | None:
    """The configuration file for `start` (default: the working directory) and its elbolab table."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        own = folder / "elbolab.toml"
        if own.is_file():
            return own, _read(own)
        pyproject = folder / "pyproject.toml"
        # a pyproject.toml that never names [tool.elbolab] is another tool's business: not parsed,
        # so a project's broken or unusual pyproject cannot stop elbolab
        if pyproject.is_file() and "tool.elbolab" in pyproject.read_text(encoding="utf-8", errors="replace"):
            table = _read(pyproject).get("tool", {}).get("elbolab")
            if table is not None:
                if not isinstance(table, dict):
                    raise UsageError(f"{pyproject}: [tool.elbolab] must be a table")
                return pyproject, table
    return None


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None


def load_config(start: Path | None = None, environ: dict | None = None) -> Config:
    """The settings of the file found from `start` upwards, then of the environment; checked."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    found = find_file(start)
    path = None
    if found is not None:
        path, table = found
        where = f"{path} [tool.elbolab]" if path.name == "pyproject.toml" else str(path)
        for name, raw in _flatten(table, where):
            key = KEYS.get(name)
            if key is None:
                known = ", ".join(KEYS)
                raise UsageError(f"{where}: unknown key {name!r} (known: {known})")
            try:
                values[name] = key.check(raw, name)
            except ValueError as exc:
                raise UsageError(f"{where}: {exc}") from None
            sources[name] = where
    for key in KEYS.values():
        if key.env and environ.get(key.env):
            try:
                values[key.name] = key.check(environ[key.env], key.name)
            except ValueError as exc:
                raise UsageError(f"environment {key.env}: {exc}") from None
            sources[key.name] = f"environment {key.env}"
    return Config(values, sources, path)


def _flatten(table: dict, where: str):
    """('threshold', 0.1), ('run.batch', [1, 128]), ...: the sections' keys prefixed."""
    for name, value in table.items():
        if name in SECTIONS:
            if not isinstance(value, dict):
                raise UsageError(f"{where}: {name} must be a table ([tool.elbolab.{name}])")
            for sub, inner in value.items():
                yield f"{name}.{sub}", inner
        else:
            yield name, value
