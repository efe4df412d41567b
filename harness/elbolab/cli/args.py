"""Argument types: every value is checked where it is parsed, so bad input is one line and exit 2
(argparse reports an ArgumentTypeError as `elbolab <cmd>: error: argument --x: ...`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

MAX_STEPS = 1_000_000
MAX_SIZE = 1 << 31


MAX_ITEMS = 1000  # items in one comma-separated list: more is a mistake, not a matrix
MAX_SECONDS = 7 * 86_400  # a timeout or a budget beyond a week is a typo (and overflows a wait)


def shown(text: str, limit: int = 60) -> str:
    """The user's text quoted in an error line, cut to `limit` characters."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _plain(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _items(text: str, what: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated {what} without empty items, got {shown(text)}"
        )
    if len(parts) > MAX_ITEMS:
        raise argparse.ArgumentTypeError(f"{len(parts)} {what} in one list; at most {MAX_ITEMS}")
    seen: set[str] = set()
    for p in parts:
        if p in seen:
            raise argparse.ArgumentTypeError(f"{shown(p)} is listed twice in {shown(text)}")
        seen.add(p)
    return parts


def names(text: str) -> tuple[str, ...]:
    return tuple(_items(text, "names"))


def _number(text: str, convert, expected: str, valid, invalid: str):
    """text converted by `convert` (int or float), else 'expected ...'; then `valid(value)`, else
    `invalid` (formatted with the value)."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {shown(text)}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(invalid.format(value=_plain(str(value)), text=shown(text)))
    return value


def _positive(text: str, what: str, limit: int = MAX_SIZE) -> int:
    return _number(
        text, int, what, lambda v: 1 <= v <= limit, f"{what} must be between 1 and {limit}, got {{value}}"
    )


def positive_int(text: str) -> int:
    return _positive(text, "a positive integer")


def ints(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers (batch sizes)."""
    return tuple(_positive(p, "a positive integer") for p in _items(text, "integers"))


def max_threads() -> int:
    """Thread counts beyond this many times the cores are a typo, not an experiment."""
    from elbolab.measure.machine import usable_cores

    cores = usable_cores()
    return max(64, 8 * cores)


def thread_counts(text: str) -> tuple[int, ...]:
    limit = max_threads()
    return tuple(_positive(p, f"a thread count (1 to {limit})", limit) for p in _items(text, "thread counts"))


def steps(text: str) -> int:
    return _positive(text, "a number of steps", MAX_STEPS)


def seconds(text: str) -> float:
    value = _number(text, float, "a number of seconds", lambda v: math.isfinite(v) and v > 0,
                    "expected a positive number of seconds, got {text}")  # fmt: skip
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"at most {MAX_SECONDS} seconds (a week), got {shown(text)}")
    return value


def seed(text: str) -> int:
    return _number(text, int, "a seed (an integer >= 0)", lambda v: 0 <= v < 2**63,
                   "a seed must be an integer from 0 to 2^63 - 1, got {value}")  # fmt: skip


def fraction(text: str) -> float:
    """A threshold or noise band, e.g. 0.1; range checks are elbolab.analyse.verdict.Rule's."""
    return _number(text, float, "a fraction such as 0.1", math.isfinite,
                   "expected a finite fraction such as 0.1, got {text}")  # fmt: skip


def path(text: str):

    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    if "\0" in text:
        raise argparse.ArgumentTypeError("a path cannot contain a NUL character")
    return Path(text)
