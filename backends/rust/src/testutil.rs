//! Test helpers: a seeded generator, a compensated sum, and a high-precision e^v - 1 - v.

/// A 64-bit LCG: deterministic test data without a dependency.
pub struct Lcg(pub u64);

impl Lcg {
    /// Uniform in [0, 1).
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64) / ((1u64 << 53) as f64)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
    /// ±[lo, hi): magnitude bounded away from 0, random sign.
    pub fn signed(&mut self, lo: f64, hi: f64) -> f64 {
        let m = self.uniform(lo, hi);
        if self.next() < 0.5 { -m } else { m }
    }
    /// n values from f.
    pub fn vec(&mut self, n: usize, mut f: impl FnMut(&mut Lcg) -> f64) -> Vec<f64> {
        (0..n).map(|_| f(self)).collect()
    }
}

/// Neumaier's compensated sum: exact to about one rounding of the result.
pub fn sum_comp(v: impl IntoIterator<Item = f64>) -> f64 {
    let (mut s, mut c) = (0.0f64, 0.0f64);
    for x in v {
        let t = s + x;
        c += if s.abs() >= x.abs() { (s - t) + x } else { (x - t) + s };
        s = t;
    }
    s + c
}

/// e^v - 1 - v to about an ulp, independently of the kernels' polynomials: for -1 < v < 2 the
/// Taylor series Σ_{k≥2} v^k/k! summed smallest term first with a compensated sum (all terms ≥ 0
/// for v ≥ 0; for -1 < v < 0 they alternate with a sum at least half the largest term), for
/// v ≤ -1 the sum of the two nonnegative numbers (-1 - v) and e^v, for v ≥ 2 libm's expm1(v) - v.
pub fn expm1mx_ref(v: f64) -> f64 {
    if v.is_nan() {
        return f64::NAN;
    }
    if v <= -1.0 {
        return (-1.0 - v) + v.exp();
    }
    if v >= 2.0 {
        // expm1(v) ≥ 1.46·(e^v - 1 - v) here: the subtraction costs under an ulp and a half
        return v.exp_m1() - v;
    }
    let mut terms = Vec::new();
    let mut t = v * v / 2.0;
    let mut k = 2.0;
    while t != 0.0 && (terms.is_empty() || t.abs() > 1e-40 * terms[0]) && terms.len() < 200 {
        terms.push(t);
        k += 1.0;
        t *= v / k;
    }
    sum_comp(terms.into_iter().rev())
}

/// Relative error of `got` against `want` (0 when both are 0).
pub fn rel(got: f64, want: f64) -> f64 {
    if got == want { 0.0 } else { ((got - want) / want).abs() }
}
