"""Numbers as people read them: times with units, ratios with intervals, shares as percents.

The one set of formatters for the console, the report, Markdown and the claims check.
"""

from __future__ import annotations

import math

from elbolab.model.measurement import Check, correct_digits


def missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt_ns(ns: float | None) -> str:
    """A time in ns with the unit that keeps three significant digits: '22.6 µs'."""
    return _scaled(ns, (("s", 1e9), ("ms", 1e6), ("µs", 1e3), ("ns", 1)))


def _scaled(v: float | None, units: tuple[tuple[str, float], ...], digits: int = 3) -> str:
    """v in the first unit it reaches (the last one below all), to `digits` significant digits."""
    if missing(v):
        return ""
    unit, scale = next(((u, s) for u, s in units if abs(v) >= s), units[-1])
    return f"{v / scale:.{digits}g} {unit}".rstrip()


def fmt_ratio(v: float) -> str:
    """A ratio to three significant digits, never in exponent notation: '2.61', '1240', '∞'."""
    if math.isinf(v):
        return "∞"
    return f"{v:.0f}" if abs(v) >= 999.5 else f"{v:.3g}"


def fmt_x(v: float | None, lo: float = math.nan, hi: float = math.nan) -> str:
    """A ratio with its interval: '2.6x [2.5, 2.7]'."""
    if missing(v):
        return ""
    text = f"{fmt_ratio(v)}x"
    if not (missing(lo) or missing(hi)):
        text += f" [{fmt_ratio(lo)}, {fmt_ratio(hi)}]"
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
        return fmt_count(value, 4) + " instr"
    return f"{value:.3g}× ref" if normalized else fmt_ns(value)


def fmt_count(v: float | None, digits: int = 3) -> str:
    """A count per call with an SI prefix: '1.23 M'."""
    return _scaled(v, (("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1)), digits)


def accuracy_text(check: Check | None) -> str:
    """'15.7 (elbo)': correct digits of the worst output; the error and bounds in roundoff units
    where it is less accurate than careful arithmetic, or wrong."""
    digits = correct_digits(check)
    if digits is None:
        return ""
    text = "exact" if digits >= 17 else f"{digits:.1f}"
    if check.worst_output:
        text += f" ({check.worst_output})"
    if check.less_accurate or not check.ok:
        units = ""
        if check.error_units is not None and check.bound_units is not None:
            careful = f"careful ≤ {check.expected_units:.3g} u, " if check.expected_units is not None else ""
            units = f": {check.error_units:.3g} u; {careful}bound {check.bound_units:.3g} u"
        text = (
            ("⚠ " if check.ok else "✗ ")
            + text
            + (" less accurate" if check.ok else " beyond the bound")
            + units
        )
    return text
