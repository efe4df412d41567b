"""Numbers as people read them: times with units, ratios with intervals, shares as percents.

The one set of formatters for the console, the report, Markdown and the claims check.
"""

from __future__ import annotations

import math


def missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt_ns(ns: float | None) -> str:
    """A time in ns with the unit that keeps three significant digits: '22.6 µs'."""
    if missing(ns):
        return ""
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if abs(ns) >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def fmt_x(v: float | None, lo: float = math.nan, hi: float = math.nan) -> str:
    """A ratio with its interval: '2.6x [2.5, 2.7]'."""
    if missing(v):
        return ""
    text = f"{v:.3g}x"
    if not (missing(lo) or missing(hi)):
        text += f" [{lo:.3g}, {'∞' if math.isinf(hi) else f'{hi:.3g}'}]"
    return text


def fmt_num(v: float | None, digits: int = 3) -> str:
    return "" if missing(v) else f"{v:.{digits}g}"


def fmt_pct(v: float | None) -> str:
    return "" if missing(v) else f"{100 * v:.0f}%"


def fmt_change(ratio: float) -> str:
    """A time ratio as a change: 1.12 -> '+12.0%'."""
    return f"{(ratio - 1) * 100:+.1f}%"


def fmt_interval(ci: tuple[float, float], digits: int = 3) -> str:
    lo, hi = ci
    return f"{lo:.{digits}f}–{'∞' if math.isinf(hi) else f'{hi:.{digits}f}'}"


def fmt_time(value: float, normalized: bool = False, unit: str = "ns") -> str:
    """A time per call, a multiple of a normalization reference, or instructions per call."""
    if unit == "instructions":
        return fmt_count(value) + " instr"
    return f"{value:.3g}× ref" if normalized else fmt_ns(value)


def fmt_count(value: float) -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"
