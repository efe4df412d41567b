"""How far a backend's answer may be from the float64 reference, derived from the arithmetic.

A tolerance is not one constant per dtype. The references (elbolab.model.workloads) are written with
`Tracked` values, which carry beside each float64 value a running error bound (Wilkinson's running
error analysis; Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., sec. 3.3): how far,
in units of the case dtype's unit roundoff u (2^-53 for float64, 2^-24 for float32), any evaluation
of the same formula in that dtype may land from the exact value. Inputs are exact (every backend gets
the same arrays in the case dtype). Each operation adds its own rounding, relative to its result, to
the errors it inherits:

  a ± b        w_a + w_b + |a ± b|
  a * b        |a| w_b + |b| w_a + |ab|
  exp(a)       e^a (w_a + T)                       T = 4: libm and SIMD polynomials of a few ulps
  sum of m     sum w_i + (m - 1) sum |t_i|         recursive summation, the worst order (gamma_{m-1})
  A @ B        w_A |B| + |A| w_B + m |A||B|        a dot product of m terms (gamma_m)

Two bounds are carried:

- `worst`: the classical worst case above, for the plain formula (e^x - 1 as exp(x) - 1). An
  answer beyond worst * u (+ c u |value| for the elementwise work, c = 10, + the float64
  reference's own error) cannot come from rounding: it is a bug, and the case is `incorrect`.
- `careful`: the probabilistic bound of Higham and Mary (SIAM J. Sci. Comput. 41(5), 2019), where a
  sum of m terms adds lambda sqrt(m) sum |t_i| (lambda = 6) instead of (m - 1) sum |t_i|, for the
  accurate formulation (e^x - 1 as expm1(x)). Careful summation (pairwise, blocked, many
  accumulators) stays within it with overwhelming probability. An answer between the two is valid
  but less accurate than it could be (a naive float32 running sum over millions of terms; the KL
  term as 1 + lv - e^lv, which cancels near lv = 0): it is timed, flagged, and its accuracy shown.

The check is componentwise: every element of every output is held to its own bound. What is
recorded is the error relative to the output's largest element, in units of u, with the bounds in
the same units, and as correct decimal digits.

Non-finite values: a non-finite output matches only the same non-finite reference value (inf with
the same sign, or nan); a finite output against a non-finite reference, or the reverse, is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from elbolab.model.measurement import Check

ELEMENTWISE_ROUNDINGS = 10  # c: slack for the elementwise work each output element has
LAMBDA = 6.0  # Higham-Mary: sqrt(m) u grows with probability 1 - O(exp(-lambda^2 / 2))
TRANSCENDENTAL = 4  # ulps charged to exp, log, expm1, softplus, sigmoid
U64 = 2.0**-53


def unit_roundoff(dtype: str | np.dtype) -> float:
    return float(np.finfo(np.dtype(dtype)).eps) / 2


# --------------------------------------------------------------------------------- tracked values


class Tracked:
    """A float64 array with running error bounds, in units of the case dtype's roundoff `u`.

    worst    first-order bound on |computed - exact| / u for the plain formula, worst-case sums
    careful  the same for the accurate formula with probabilistic (lambda sqrt(m)) sums
    u        the unit roundoff of the dtype the backend computes in (decides where a ReLU may flip)
    """

    __slots__ = ("value", "worst", "careful", "u")
    __array_priority__ = 100  # numpy scalars and arrays defer to Tracked's operators

    def __init__(self, value, worst=None, careful=None, u: float = U64):
        self.value = np.asarray(value, dtype=np.float64)
        self.worst = np.zeros_like(self.value) if worst is None else np.asarray(worst, dtype=np.float64)
        self.careful = self.worst if careful is None else np.asarray(careful, dtype=np.float64)
        self.u = u

    def of(self, x) -> Tracked:
        """An exact constant or input in the same arithmetic as self."""
        return x if isinstance(x, Tracked) else Tracked(x, u=self.u)

    def _new(self, value, worst, careful) -> Tracked:
        return Tracked(value, worst, careful, self.u)

    def __add__(self, other) -> Tracked:
        o = self.of(other)
        v = self.value + o.value
        return self._new(v, self.worst + o.worst + np.abs(v), self.careful + o.careful + np.abs(v))

    __radd__ = __add__

    def __sub__(self, other) -> Tracked:
        return self + (-self.of(other))

    def __rsub__(self, other) -> Tracked:
        return self.of(other) - self

    def __mul__(self, other) -> Tracked:
        o = self.of(other)
        v = self.value * o.value
        a, b = np.abs(self.value), np.abs(o.value)
        return self._new(
            v, a * o.worst + b * self.worst + np.abs(v), a * o.careful + b * self.careful + np.abs(v)
        )

    __rmul__ = __mul__

    def __neg__(self) -> Tracked:
        return self._new(-self.value, self.worst, self.careful)

    def __matmul__(self, other) -> Tracked:
        o = self.of(other)
        m = self.value.shape[-1]
        a, b = np.abs(self.value), np.abs(o.value)
        ab = a @ b
        propagated_w = self.worst @ b + a @ o.worst
        propagated_c = self.careful @ b + a @ o.careful
        return self._new(self.value @ o.value, propagated_w + m * ab, propagated_c + careful_sum(m) * ab)

    def __rmatmul__(self, other) -> Tracked:
        return self.of(other) @ self

    @property
    def T(self) -> Tracked:  # noqa: N802 (numpy's name)
        return self._new(self.value.T, self.worst.T, self.careful.T)

    def __getitem__(self, index) -> Tracked:
        return self._new(self.value[index], self.worst[index], self.careful[index])

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    def sum(self, axis=None) -> Tracked:
        """Recursive summation of m terms, worst order: (m - 1) sum |t| (gamma_{m-1})."""
        m = self.value.size if axis is None else self.value.shape[axis]
        mag = np.abs(self.value).sum(axis=axis)
        return self._new(
            self.value.sum(axis=axis),
            self.worst.sum(axis=axis) + max(m - 1, 0) * mag,
            self.careful.sum(axis=axis) + careful_sum(m) * mag,
        )

    def mean(self, axis=None) -> Tracked:
        m = self.value.size if axis is None else self.value.shape[axis]
        return self.sum(axis) * (1.0 / m)


def careful_sum(m: int) -> float:
    """Roundings per unit of sum |t| that careful summation of m terms stays within."""
    return min(max(m - 1, 0), LAMBDA * math.sqrt(m))


def _unary(x: Tracked, value, slope, own: float) -> Tracked:
    """f(x) with |f'| <= slope: inherited errors times the slope, plus `own` ulps of the result."""
    v = np.asarray(value, dtype=np.float64)
    return x._new(v, slope * x.worst + own * np.abs(v), slope * x.careful + own * np.abs(v))


def exp(x: Tracked) -> Tracked:
    e = np.exp(x.value)
    return _unary(x, e, e, TRANSCENDENTAL)


def expm1(x: Tracked) -> Tracked:
    """e^x - 1: worst as exp(x) - 1 (rounded relative to e^x, then the subtraction), careful as
    expm1(x), rounded relative to |e^x - 1|, which keeps every digit near x = 0."""
    e, v = np.exp(x.value), np.expm1(x.value)
    worst = e * x.worst + TRANSCENDENTAL * e + np.abs(v)
    careful = e * x.careful + TRANSCENDENTAL * np.abs(v)
    return x._new(v, worst, careful)


def softplus(x: Tracked) -> Tracked:
    """log(1 + e^x) without overflow; its slope is at most 1."""
    return _unary(x, np.logaddexp(0.0, x.value), 1.0, TRANSCENDENTAL)


def sigmoid(x: Tracked) -> Tracked:
    """1 / (1 + e^-x); its slope is at most 1/4."""
    return _unary(x, 0.5 * (1.0 + np.tanh(0.5 * x.value)), 0.25, TRANSCENDENTAL)


def log(x: Tracked) -> Tracked:
    return _unary(x, np.log(x.value), 1.0 / np.abs(x.value), TRANSCENDENTAL)


def _may_flip(x: Tracked) -> np.ndarray:
    """Elements so close to 0 that rounding could put them on the other side of it."""
    return np.abs(x.value) <= (x.worst + ELEMENTWISE_ROUNDINGS * np.abs(x.value)) * x.u


def relu(x: Tracked) -> Tracked:
    """max(x, 0); where rounding may flip the sign the result may be 0 or x: error up to 2 w_x."""
    flip = _may_flip(x)
    keep = (x.value > 0) | flip
    return x._new(np.maximum(x.value, 0.0), np.where(keep, x.worst, 0.0) * (1 + flip),
                  np.where(keep, x.careful, 0.0) * (1 + flip))  # fmt: skip


def masked(g: Tracked, x: Tracked) -> Tracked:
    """g * (x > 0), the ReLU derivative; where x may flip, the element may be g or 0: error |g|."""
    flip = _may_flip(x)
    value = g.value * (x.value > 0)
    slack = np.where(flip, np.abs(g.value) / g.u, 0.0)
    keep = (x.value > 0) | flip
    return g._new(value, np.where(keep, g.worst, 0.0) + slack, np.where(keep, g.careful, 0.0) + slack)


def logsumexp(x: Tracked, axis: int) -> Tracked:
    """max + log(sum(exp(x - max))): a convex combination of the inputs' errors, plus the K-term
    sum of weights in (0, 1] (relative error (K - 1) u) and the log and exp roundings."""
    top = x.value.max(axis=axis)
    v = top + np.log(np.exp(x.value - np.expand_dims(top, axis)).sum(axis=axis))
    k = x.value.shape[axis]
    own = np.abs(v) + (k + 2 * TRANSCENDENTAL) + np.abs(top)
    return x._new(v, x.worst.max(axis=axis) + own, x.careful.max(axis=axis) + own)


# ------------------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class OutputError:
    name: str
    used: float  # max over elements of |got - ref| / bound (> 1: incorrect)
    careful_used: float  # max of |got - ref| / careful bound (> 1: less accurate than it could be)
    rel_err: float  # max |got - ref| / max |ref|
    bound_rel: float  # the largest bound / max |ref|
    careful_rel: float  # the largest careful bound / max |ref|
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _wrong(name: str, problem: str) -> OutputError:
    return OutputError(name, math.inf, math.inf, math.inf, 0.0, 0.0, problem)


def compare_output(name: str, got, want: Tracked, dtype: str) -> OutputError:
    u = unit_roundoff(dtype)
    ref = want.value
    try:
        value = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return _wrong(name, f"{name}: not numeric ({exc})")
    if value.shape != ref.shape:
        return _wrong(name, f"{name}: shape {value.shape}, expected {ref.shape}")
    finite_ref, finite_got = np.isfinite(ref), np.isfinite(value)
    same_nonfinite = (value == ref) | (np.isnan(value) & np.isnan(ref))
    mismatch = (finite_ref != finite_got) | (~finite_ref & ~same_nonfinite)
    if mismatch.any():
        i = int(np.flatnonzero(mismatch.ravel())[0])
        where = f"element {tuple(int(j) for j in np.unravel_index(i, ref.shape))}" if ref.ndim else "value"
        return _wrong(name, f"{name}: {where} is {value.ravel()[i]}, the reference {ref.ravel()[i]}")
    if not finite_ref.any():
        return OutputError(name, 0.0, 0.0, 0.0, 0.0, 0.0)
    # the finite elements, flat (all of them, without a copy, in the usual case); the arithmetic
    # below is in place: an elbo_grad output at batch 8192 has 6.4 M elements, checked ~100 times
    # in a make bench
    finite = slice(None) if finite_ref.all() else finite_ref.ravel()
    with np.errstate(invalid="ignore"):
        diff = np.abs(value - ref).ravel()[finite]
    v = np.abs(ref).ravel()[finite]
    floor = 4 * float(np.finfo(np.dtype(dtype)).tiny)  # exact zeros: allow subnormal noise

    def bound(rounding: np.ndarray) -> np.ndarray:
        # the backend's rounding in its dtype, plus the float64 reference's own (same formula, u64)
        out = np.broadcast_to(rounding, ref.shape).ravel()[finite] + ELEMENTWISE_ROUNDINGS * v
        out *= u + U64
        out += floor
        return out

    worst = bound(want.worst)
    careful = np.maximum(bound(want.careful), u * v)  # nothing is more accurate than its own rounding
    scale = float(v.max()) or 1.0
    used = float(np.max(diff / worst))
    out = OutputError(
        name, used, float(np.max(diff / careful)), float(diff.max()) / scale,
        float(worst.max()) / scale, float(careful.max()) / scale,
    )  # fmt: skip
    if used > 1.0:
        i = int(np.argmax(diff / worst))
        at = np.unravel_index(np.arange(ref.size)[finite][i], ref.shape)
        where = f" at element {tuple(int(j) for j in at)}" if ref.ndim else ""
        problem = (f"{name}: error {diff[i]:.3g}{where} is {used:.3g}x what the arithmetic can give "
                   f"(bound {worst[i]:.3g}; relative error {out.rel_err:.2g})")  # fmt: skip
        return replace(out, problem=problem)
    return out


def compare_outputs(
    outputs: Mapping[str, object], expected: Mapping[str, Tracked], dtype: str, extra: list[str]
) -> Check:
    """Every output against its tracked reference; `extra` holds problems found elsewhere (a missing
    output, a bad eps draw)."""
    u = unit_roundoff(dtype)
    results = []
    problems = list(extra)
    for name, want in expected.items():
        if name not in outputs:
            problems.append(f"backend returned no output {name!r}")
            continue
        results.append(compare_output(name, outputs[name], want, dtype))
    problems += [r.problem for r in results if r.problem]
    ok = not problems
    loose = ok and any(r.careful_used > 1.0 for r in results)
    # the output to show: the one furthest past its bound, or past the careful figure when loose
    worst = max(results, key=lambda r: r.careful_used if loose else r.used, default=None)
    if worst is None:
        return Check(ok=ok, detail=None if ok else "; ".join(problems)[:2000])
    return Check(
        ok=ok,
        less_accurate=loose,
        worst_output=worst.name,
        detail=None if ok else "; ".join(problems)[:2000],
        rel_err=_finite(worst.rel_err),
        error_units=_finite(worst.rel_err / u),
        bound_units=_finite(worst.bound_rel / u),
        expected_units=_finite(worst.careful_rel / u),
        digits=_digits(worst.rel_err),
    )


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _digits(rel_err: float) -> float | None:
    """Correct decimal digits of an output with this relative error (17 for an exact float64)."""
    if not math.isfinite(rel_err):
        return None
    return float(min(17.0, max(0.0, -math.log10(rel_err)))) if rel_err > 0 else 17.0
