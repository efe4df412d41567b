"""How far a backend's answer may be from the float64 reference, derived from the arithmetic.

A tolerance is not one constant per dtype. The references (elbolab.model.workloads) are written with
`Tracked` values, which carry beside each float64 value two running error bounds (Wilkinson's running
error analysis; Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., sec. 3.3), in units
of the case dtype's unit roundoff u (2^-53 for float64, 2^-24 for float32). Inputs are exact (every
backend gets the same arrays in the case dtype).

`worst`: how far ANY evaluation of the plain formula in that dtype may land from the exact value,
the classical first-order worst case. Each operation adds its rounding, relative to its result, to
the errors it inherits, all with the same sign:

  a ± b        w_a + w_b + |a ± b|
  a * b        |a| w_b + |b| w_a + |ab|
  exp(a)       e^a (w_a + T)                       T = 4: libm and SIMD polynomials of a few ulps
  sum of m     sum w_i + (m - 1) sum |t_i|         recursive summation, the worst order (gamma_{m-1})
  A @ B        w_A |B| + |A| w_B + m |A||B|        a dot product of m terms (gamma_m)
  relu, x>0    every element rounding could put on the other side of 0 counted as flipped

An answer beyond worst * u (+ c u |value| for the elementwise work, c = 10, + the float64
reference's own error) cannot come from rounding.

`careful`: what a careful implementation in that dtype stays within: the line of `ok`. In float32
the worst case is far too wide to judge by (a sum of 6.4 M terms may be off by 38%, and through the
five matrix products of vae_step the bound grows to many times the gradients: median 8-72x), so whole
pieces of missing work would hide under it. The careful bound is probabilistic (Higham and Mary,
SIAM J. Sci. Comput. 41(5), 2019: rounding errors behave as independent, mean-zero random
variables) and calibrated on honest implementations:

- elementwise work keeps its first-order bound (a few roundings; e^x - 1 as expm1(x), rounded
  relative to |e^x - 1|, the accurate formulation);
- a sum or dot product of m terms along one axis adds RUNNING_SUM * sqrt(m) * sum |t| roundings
  (a running sum in the dtype, as naive loops and BLAS do, errs by about sqrt(m) sum |t| / 4);
- a reduction over a whole array (several axes) adds WHOLE_SUM * sqrt(m) * sum |t|: the workload
  contract (elbolab.model.workloads) has each row summed in the dtype and the rows in float64, or
  pairwise, never one running float32 sum over everything, and honest code stays far inside it;
- errors inherited from distinct terms of a sum or product come from distinct roundings and add in
  quadrature, sqrt(sum (a_i c_i)^2), not in absolute value: through vae_step's chain of products
  the absolute sum lost every cancellation and grew by ~sqrt(width) per layer;
- a ReLU mask counts its slack (the element may be g or 0) only at elements that careful arithmetic
  can flip (|x| within x's careful bound), each on its own, added in quadrature where summed.

The calibration (tests/test_calibration.py holds it): NumPy's pairwise sums, its BLAS dot, running
sums per row (the rows in float64, or in a running sum too) and every backend of the lab, in both
dtypes at the sizes of the default matrix, use at most 0.19 of the careful bound where the
calibrated sums act (NumPy's dot of recon at batch 8192), 0.23 over the 300 checked steps of the
training run, and at most 0.58 of the first-order bound of elementwise outputs (as before); the
bugs of the mutation suite (tests/mutants.py: recon from a subset of its terms, a zeroed layer,
...) land past it. The one honest answer outside: the tutorial's Rust in float32 at batch 8192,
whose 8 running float32 sums over all 6.4 M terms of recon lose 3.5 of its 7 digits, as many as
summing half the rows does; no bound on recon can tell the two apart.

An answer beyond the careful bound is `incorrect`: "less accurate than careful arithmetic" where it
is within the worst case (missing work hides there), "beyond what the arithmetic can give" past it.
The check is componentwise: every element of every output is held to its own bound. Outputs built
by matrix products (vae_step's gradients and updated weights) are also checked along random
directions: |<got - ref, v>| against sqrt(sum v_i^2 b_i^2) for the componentwise bounds b, a
norm-wise test that a zeroed or partial layer, whose error is the size of the gradient itself,
fails along every direction not nearly orthogonal to that error.
What is recorded is the error relative to the output's largest element, in units of u, with both
bounds in the same units, and as correct decimal digits.

Non-finite values: a non-finite output matches only the same non-finite reference value (inf with
the same sign, or nan); a finite output against a non-finite reference, or the reverse, is wrong.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from elbolab.model.measurement import Check

ELEMENTWISE_ROUNDINGS = 10  # c: slack for the elementwise work each output element has
# Careful summation, in roundings per sqrt(m) sum |t| (calibrated: tests/test_calibration.py).
# Along one axis: a running sum of m terms of one sign errs by about sqrt(m) sum |t| / 4 (its partial
# sums grow linearly, each rounded by up to half an ulp); 1.5 is six of those, so naive loops and
# BLAS's dot products stay inside it over the 10^5-10^6 elements of an output.
RUNNING_SUM = 1.5
# Over a whole array: blocked by the workload contract; NumPy's BLAS dot (its SIMD lanes, each a
# running float32 sum over a share of the 6.4 M terms of elbo's recon at batch 8192) errs by 0.093,
# the most of any honest code here; 0.5 is 5x that, and a quarter of the error of summing half the
# rows and doubling (1.9 with the seeded data).
WHOLE_SUM = 0.5
TRANSCENDENTAL = 4  # ulps charged to exp, log, expm1, softplus, sigmoid
U64 = 2.0**-53


def unit_roundoff(dtype: str | np.dtype) -> float:
    return float(np.finfo(np.dtype(dtype)).eps) / 2


# --------------------------------------------------------------------------------- tracked values


class Tracked:
    """A float64 array with running error bounds, in units of the case dtype's roundoff `u`.

    worst    first-order bound on |computed - exact| / u for the plain formula, worst-case sums
    careful  what careful arithmetic stays within: the accurate formula, calibrated sums, inherited
             errors of distinct terms in quadrature (the module's docstring)
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
        # errors inherited from distinct terms come from distinct roundings: they add in quadrature
        propagated_c = np.sqrt(self.careful**2 @ b**2 + a**2 @ o.careful**2)
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
        """worst: recursive summation of m terms in the worst order, (m - 1) sum |t| (gamma_{m-1});
        careful: careful_sum, the inherited errors in quadrature."""
        m = self.value.size if axis is None else self.value.shape[axis]
        # the whole array: its rows are the last axis longer than 1 (the contract's rows)
        row = next((n for n in reversed(self.value.shape) if n > 1), 1) if axis is None else m
        mag = np.abs(self.value).sum(axis=axis)
        return self._new(
            self.value.sum(axis=axis),
            self.worst.sum(axis=axis) + max(m - 1, 0) * mag,
            np.sqrt((self.careful**2).sum(axis=axis)) + careful_sum(m, row) * mag,
        )

    def mean(self, axis=None) -> Tracked:
        m = self.value.size if axis is None else self.value.shape[axis]
        return self.sum(axis) * (1.0 / m)


def careful_sum(m: int, row: int | None = None) -> float:
    """Roundings per unit of sum |t| that careful summation of m terms stays within: along one axis
    (a dot product, a column sum: `row` is None or m), or over a whole array whose rows have `row`
    terms (never less than one row's running sum)."""
    row = m if row is None else row
    roundings = RUNNING_SUM * math.sqrt(row)
    if row < m:
        roundings = max(roundings, WHOLE_SUM * math.sqrt(m))
    return min(max(m - 1, 0), roundings)


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


def _may_flip(x: Tracked, bound: np.ndarray) -> np.ndarray:
    """Elements so close to 0 that an error within `bound` (worst or careful) could put them on
    the other side of it."""
    return np.abs(x.value) <= (bound + ELEMENTWISE_ROUNDINGS * np.abs(x.value)) * x.u


def relu(x: Tracked) -> Tracked:
    """max(x, 0). worst: where the sign may flip, up to 2 w_x (as the classical analysis counts it);
    careful: relu is 1-Lipschitz, so a flipped element errs by no more than x itself did."""
    flip_w, flip_c = _may_flip(x, x.worst), _may_flip(x, x.careful)
    return x._new(np.maximum(x.value, 0.0), np.where((x.value > 0) | flip_w, x.worst, 0.0) * (1 + flip_w),
                  np.where((x.value > 0) | flip_c, x.careful, 0.0))  # fmt: skip


def masked(g: Tracked, x: Tracked) -> Tracked:
    """g * (x > 0), the ReLU derivative; where x may flip, the element may be g or 0: error |g|.
    Each bound counts the elements that an error within x's bound of the same kind can flip, so
    the careful slack sits only where careful arithmetic can actually flip the sign."""
    bounds = []
    for g_bound, x_bound in ((g.worst, x.worst), (g.careful, x.careful)):
        flip = _may_flip(x, x_bound)
        keep = (x.value > 0) | flip
        bounds.append(np.where(keep, g_bound, 0.0) + np.where(flip, np.abs(g.value) / g.u, 0.0))
    return g._new(g.value * (x.value > 0), *bounds)


def logsumexp(x: Tracked, axis: int) -> Tracked:
    """max + log(sum(exp(x - max))): a convex combination of the inputs' errors, plus the K-term
    sum of weights in (0, 1] (relative error (K - 1) u) and the log and exp roundings."""
    top = x.value.max(axis=axis)
    v = top + np.log(np.exp(x.value - np.expand_dims(top, axis)).sum(axis=axis))
    k = x.value.shape[axis]
    own = np.abs(v) + (k + 2 * TRANSCENDENTAL) + np.abs(top)
    return x._new(v, x.worst.max(axis=axis) + own, x.careful.max(axis=axis) + own)


# ------------------------------------------------------------------------------------- checking

# Random directions each output of a matrix-product workload is also checked along. With the
# componentwise bounds b, |<e, v>| <= sqrt(sum v_i^2 b_i^2) ~ ||b||: an honest error e, whose every
# element stays within its bound with room for the largest of ~10^5 (so ||e|| <~ ||b|| / 5, and
# measured <= ||b|| / 50), fails it with probability < 1e-6; a zeroed or partial layer, with
# ||e|| ~ ||value|| >> ||b||, passes it only if all the directions are nearly orthogonal to its error.
DIRECTIONS = 4


@dataclass(frozen=True)
class OutputError:
    name: str
    used: float  # max over elements of |got - ref| / careful bound (> 1: incorrect)
    worst_used: float  # max of |got - ref| / worst-case bound (> 1: beyond what rounding can do)
    rel_err: float  # max |got - ref| / max |ref|
    bound_rel: float  # the largest worst-case bound / max |ref|
    careful_rel: float  # the largest careful bound / max |ref|
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _wrong(name: str, problem: str) -> OutputError:
    return OutputError(name, math.inf, math.inf, math.inf, 0.0, 0.0, problem)


def compare_output(name: str, got, want: Tracked, dtype: str, directions: int = 0) -> OutputError:
    """One output against its tracked reference, element by element, and (with `directions`) along
    that many random directions."""
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
    # the finite elements, flat (all of them, without a copy, in the usual case)
    finite = slice(None) if finite_ref.all() else finite_ref.ravel()
    with np.errstate(invalid="ignore"):
        signed = (value - ref).ravel()[finite]
    diff = np.abs(signed)
    v = np.abs(ref).ravel()[finite]
    worst, careful = (b.ravel()[finite] for b in element_bounds(want, dtype))
    scale = float(v.max()) or 1.0
    ratio = diff / careful
    used, worst_used = float(np.max(ratio)), float(np.max(diff / worst))
    out = OutputError(
        name,
        used,
        worst_used,
        float(diff.max()) / scale,
        float(worst.max()) / scale,
        float(careful.max()) / scale,
    )
    if used > 1.0:
        i = int(np.argmax(ratio))
        at = np.unravel_index(np.arange(ref.size)[finite][i], ref.shape)
        where = f" at element {tuple(int(j) for j in at)}" if ref.ndim else ""
        if worst_used > 1.0:
            problem = (f"{name}: error {diff[i]:.3g}{where} is {diff[i] / worst[i]:.3g}x what the arithmetic "
                       f"can give (bound {worst[i]:.3g}; relative error {out.rel_err:.2g})")  # fmt: skip
        else:
            problem = (f"{name}: error {diff[i]:.3g}{where} is {used:.3g}x what careful {dtype} arithmetic "
                       f"gives ({careful[i]:.3g}; its worst case, {worst[i]:.3g}, admits it; relative "
                       f"error {out.rel_err:.2g}): less accurate than careful code, or work missing")  # fmt: skip
        return replace(out, problem=problem)
    if not directions or ref.size < 2:
        return out
    ratio = float(direction_ratios(name, signed, careful, directions).max())
    if ratio > 1.0:
        problem = (f"{name}: along a random direction its error is {ratio:.3g}x what careful {dtype} arithmetic "
                   f"gives, though every element is within its own bound (relative error {out.rel_err:.2g})")  # fmt: skip
        return replace(out, used=ratio, problem=problem)
    return out


def element_bounds(want: Tracked, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The absolute bounds of each element of an output, (worst case, careful): its rounding in the
    case dtype plus c = 10 roundings of elementwise work, plus the float64 reference's own error
    (the same formula in u64), plus subnormal noise around exact zeros. The arithmetic is in place:
    an elbo_grad output at batch 8192 has 6.4 M elements, checked ~100 times in a make bench."""
    v = np.abs(np.asarray(want.value, dtype=np.float64))
    u, floor = unit_roundoff(dtype), 4 * float(np.finfo(np.dtype(dtype)).tiny)
    bounds = []
    for rounding in (want.worst, want.careful):
        # in place from here (0-d too): one pass an array, no temporaries
        b = np.multiply(v, ELEMENTWISE_ROUNDINGS, out=np.empty_like(v))
        b += rounding
        b *= u + U64
        b += floor
        bounds.append(b)
    v *= u  # v is ours: nothing is more accurate than its own rounding
    return bounds[0], np.maximum(bounds[1], v, out=bounds[1])


def random_directions(name: str, size: int, n: int) -> np.ndarray:
    """n Gaussian directions in the space of an output of `size` elements, seeded by its name: the
    same for every backend and case (they need not be secret: an honest error is independent of
    any fixed direction, and a bug that tuned its error to them would be a strange bug). Small ones
    are made once (read-only): a training run checks 20 outputs at each of its 300 steps, and
    drawing their directions was a fifth of its time."""
    if n * size <= CACHED_DIRECTION_VALUES:
        return _cached_directions(name, size, n)
    return np.random.default_rng(zlib.crc32(name.encode())).standard_normal((n, size))


CACHED_DIRECTION_VALUES = 1 << 18  # 2 MB a set of directions; at most 128 sets kept


@functools.lru_cache(maxsize=128)
def _cached_directions(name: str, size: int, n: int) -> np.ndarray:
    v = np.random.default_rng(zlib.crc32(name.encode())).standard_normal((n, size))
    v.flags.writeable = False
    return v


def direction_ratios(name: str, error: np.ndarray, bound: np.ndarray, n: int) -> np.ndarray:
    """|<error, v>| / sqrt(sum v_i^2 bound_i^2) along n random directions v of the output `name`."""
    v = random_directions(name, error.size, n)
    scale = float(np.max(bound))  # bounds near the subnormal floor would square to 0
    return np.abs(v @ (error.ravel() / scale)) / np.sqrt((v * v) @ ((bound.ravel() / scale) ** 2))


def compare_outputs(
    outputs: Mapping[str, object],
    expected: Mapping[str, Tracked],
    dtype: str,
    extra: list[str],
    directions: int = 0,
) -> Check:
    """Every output against its tracked reference (non-scalar ones also along `directions` random
    directions); `extra` holds problems found elsewhere (a missing output, a bad eps draw)."""
    u = unit_roundoff(dtype)
    results = []
    problems = list(extra)
    for name, want in expected.items():
        if name not in outputs:
            problems.append(f"backend returned no output {name!r}")
            continue
        results.append(compare_output(name, outputs[name], want, dtype, directions))
    problems += [r.problem for r in results if r.problem]
    ok = not problems
    # the output to show: the one that used most of its careful bound (the one furthest past it)
    worst = max(results, key=lambda r: r.used, default=None)
    if worst is None:
        return Check(ok=ok, detail=None if ok else "; ".join(problems)[:2000])
    return Check(
        ok=ok,
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
