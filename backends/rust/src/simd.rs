//! The elbo's D loop written with explicit AVX2/FMA intrinsics (x86-64 only), so its shape does
//! not depend on LLVM's SLP vectoriser (which turned the same loop, written portably, into 2-wide
//! pieces and spilled accumulators after an unrelated change in the row loop).
//!
//! Per row: 8 independent ymm accumulators (32 f64 or 64 f32 per iteration: 8 × vsubp? + 8 ×
//! vfmadd231p?; FMA latency 4 × 2 ports needs ≥ 8 chains), then 4-wide (8-wide f32) vectors,
//! then a scalar remainder. The row's lanes are added lane-wise into 4 f64 lanes (`tot`), kept
//! by the caller over all its rows (float32: f32 lanes within a row, f64 across rows).
//!
//! Every function here is `unsafe` and `#[target_feature(enable = "avx2,fma")]`: call them only
//! after `Simd::detect()` returned `Simd::Avx2`. They read/write only within the given slices
//! (n = the shortest length).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// Σ (x - y)² of one f64 row into `tot` (4 lanes) and `tail` (the scalar remainder); with GRAD
/// also g = c·(x - y).
///
/// # Safety
/// Only when the CPU has avx2 and fma.
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
pub unsafe fn row_sq_f64<const GRAD: bool>(x: &[f64], y: &[f64], g: &mut [f64], c: f64, tot: &mut __m256d, tail: &mut f64) {
    let n = if GRAD { x.len().min(y.len()).min(g.len()) } else { x.len().min(y.len()) };
    let (px, py, pg) = (x.as_ptr(), y.as_ptr(), g.as_mut_ptr());
    let cv = _mm256_set1_pd(c);
    let mut a = [_mm256_setzero_pd(); 8];
    let mut i = 0;
    // SAFETY (all loads/stores): i + 32 <= n, resp. i + 4 <= n, resp. i < n, and n is within
    // every slice used.
    while i + 32 <= n {
        for k in 0..8 {
            let d = _mm256_sub_pd(_mm256_loadu_pd(px.add(i + 4 * k)), _mm256_loadu_pd(py.add(i + 4 * k)));
            a[k] = _mm256_fmadd_pd(d, d, a[k]);
            if GRAD {
                _mm256_storeu_pd(pg.add(i + 4 * k), _mm256_mul_pd(cv, d));
            }
        }
        i += 32;
    }
    while i + 4 <= n {
        let d = _mm256_sub_pd(_mm256_loadu_pd(px.add(i)), _mm256_loadu_pd(py.add(i)));
        a[0] = _mm256_fmadd_pd(d, d, a[0]);
        if GRAD {
            _mm256_storeu_pd(pg.add(i), _mm256_mul_pd(cv, d));
        }
        i += 4;
    }
    while i < n {
        let d = *px.add(i) - *py.add(i);
        *tail += d * d;
        if GRAD {
            *pg.add(i) = c * d;
        }
        i += 1;
    }
    let s = _mm256_add_pd(
        _mm256_add_pd(_mm256_add_pd(a[0], a[1]), _mm256_add_pd(a[2], a[3])),
        _mm256_add_pd(_mm256_add_pd(a[4], a[5]), _mm256_add_pd(a[6], a[7])),
    );
    *tot = _mm256_add_pd(*tot, s);
}

/// The f32 row: 8 f32 lanes per register, the row's lanes summed in f32, then widened and added
/// into the f64 lanes `tot`; the scalar remainder's squares are added to `tail` in f64.
///
/// # Safety
/// Only when the CPU has avx2 and fma.
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
pub unsafe fn row_sq_f32<const GRAD: bool>(x: &[f32], y: &[f32], g: &mut [f32], c: f32, tot: &mut __m256d, tail: &mut f64) {
    let n = if GRAD { x.len().min(y.len()).min(g.len()) } else { x.len().min(y.len()) };
    let (px, py, pg) = (x.as_ptr(), y.as_ptr(), g.as_mut_ptr());
    let cv = _mm256_set1_ps(c);
    let mut a = [_mm256_setzero_ps(); 8];
    let mut i = 0;
    // SAFETY: as in row_sq_f64
    while i + 64 <= n {
        for k in 0..8 {
            let d = _mm256_sub_ps(_mm256_loadu_ps(px.add(i + 8 * k)), _mm256_loadu_ps(py.add(i + 8 * k)));
            a[k] = _mm256_fmadd_ps(d, d, a[k]);
            if GRAD {
                _mm256_storeu_ps(pg.add(i + 8 * k), _mm256_mul_ps(cv, d));
            }
        }
        i += 64;
    }
    while i + 8 <= n {
        let d = _mm256_sub_ps(_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
        a[0] = _mm256_fmadd_ps(d, d, a[0]);
        if GRAD {
            _mm256_storeu_ps(pg.add(i), _mm256_mul_ps(cv, d));
        }
        i += 8;
    }
    while i < n {
        let d = *px.add(i) - *py.add(i);
        *tail += (d * d) as f64;
        if GRAD {
            *pg.add(i) = c * d;
        }
        i += 1;
    }
    let s = _mm256_add_ps(
        _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])),
        _mm256_add_ps(_mm256_add_ps(a[4], a[5]), _mm256_add_ps(a[6], a[7])),
    );
    let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(s));
    let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(s));
    *tot = _mm256_add_pd(*tot, _mm256_add_pd(lo, hi));
}

/// The 4 f64 lanes summed.
///
/// # Safety
/// Only when the CPU has avx2 and fma.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn hsum(v: __m256d) -> f64 {
    let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
    _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
}

/// e^h = 1 + h + h²·G(h) on |h| ≤ ln2/2, with G(h) = (e^h - 1 - h)/h² = 1/2 + h/6 + h²/24 + ...
/// fitted by a degree-9 polynomial (Chebyshev fit of G itself, by mpmath.chebyfit in 60-digit
/// arithmetic on |h| ≤ 1.0005·ln2/2: max error 1.1e-16 absolute, 2.4e-16 relative to G). Fitting G
/// rather than e^h keeps the constant and linear terms exact (1 and 1), so the same Horner chain
/// also gives e^h - 1 - h = h²·G and e^h - 1 = h·(1 + h·G) with small *relative* error near 0,
/// which the KL term needs (`latent_f64`). The polynomial is evaluated in r' = 2h = logvar -
/// 2n·ln2 (exp(logvar/2) needs no multiply by 1/2), so G's coefficient of h^j is stored divided
/// by 2^(j+2) (exact scalings): Q(r') = Σ EXP_HALF_C[9-j]·r'^j = G(h)/4, t1 = Q·r' + 1/2,
/// p = t1·r' + 1 = e^h. Highest degree first; the same number of FMAs as a degree-11 fit of e^h.
#[allow(clippy::excessive_precision)]
const EXP_HALF_C: [f64; 12] = [
    2.510042415700506678761872e-8 / 2048.0,
    2.762013871973399556875513e-7 / 1024.0,
    2.755726837868419287266893e-6 / 512.0,
    2.480152119021772765081745e-5 / 256.0,
    1.984126986310596874839245e-4 / 128.0,
    1.388888891728179330750049e-3 / 64.0,
    8.333333333330051346371714e-3 / 32.0,
    4.166666666662399151588709e-2 / 16.0,
    0.1666666666666666745588458 / 8.0,
    0.500000000000000102620922 / 4.0,
    0.5,
    1.0,
];

/// |logvar| up to which `exp_half` is exact to ≤ 2 ulp with no special cases: n = round(logvar/2
/// · log2 e) stays in [-1021, 1021], so p·2^n (p in [0.7, 1.42]) is a normal double, built by an
/// integer add to p's exponent. Anything else (|logvar| larger, inf, NaN) sends the whole piece
/// back to the portable path, which handles them as libm does.
pub const EXP_HALF_MAX: f64 = 1416.0;

/// exp(v/2) for |v| ≤ EXP_HALF_MAX, KL's e^v - 1 - v and the gradient's e^v - 1, 4 lanes.
///
/// s = exp(v/2): n = round(v/2·log2 e) by the 1.5·2^52 shift trick, r' = v - 2n·ln2 in two FMAs
/// (Cody–Waite; ln2_hi has 21 trailing zero bits, so n·ln2_hi is exact), p = e^(r'/2) by the
/// polynomial (EXP_HALF_C: Q, t1, p), then 2^n added into p's exponent bits (vpsllq + vpaddq: t's
/// low bits are n, and the shift constant's bits vanish in the shift by 52). No selects, no clamp.
///
/// f = e^v - 1 - v ≥ 0 (the KL summand without mu²): where n = 0 (|v| < ln2), r' = v exactly
/// and with h = v/2, e^h - 1 = r'·t1 and e^h - 1 - h = Q·r'², so f = (e^h - 1)² + 2(e^h - 1 - h)
/// = r'²·(t1² + 2Q), a product of positive factors: no cancellation however small v is. Elsewhere
/// f = s² - 1 - v (= fma(s, s, -1 - v)), which cancels by at most a factor e^|v|/f(v) < 7 there.
///
/// m = e^v - 1: where n = 0, f + v (|f| ≤ 0.35|v|: cancels by at most ~2, so m keeps f's and v's
/// relative accuracy however small v is; 1 - s² would keep ~u/|v|); elsewhere fma(s, s, -1),
/// which cancels by at most 2 there (|v| ≥ ln2). Unused results cost nothing (inlined).
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::excessive_precision)]
unsafe fn exp_half_kl(v: __m256d) -> (__m256d, __m256d, __m256d) {
    const HALF_LOG2E: f64 = 0.5 * std::f64::consts::LOG2_E;
    const SHIFT: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
    const TWO_LN2_HI: f64 = 2.0 * 6.931_471_803_691_238_164_9e-1;
    const TWO_LN2_LO: f64 = 2.0 * 1.908_214_929_270_587_700_02e-10;
    let t = _mm256_fmadd_pd(v, _mm256_set1_pd(HALF_LOG2E), _mm256_set1_pd(SHIFT));
    let n = _mm256_sub_pd(t, _mm256_set1_pd(SHIFT));
    let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(TWO_LN2_HI), v);
    let r = _mm256_fnmadd_pd(n, _mm256_set1_pd(TWO_LN2_LO), r);
    let mut q = _mm256_set1_pd(EXP_HALF_C[0]);
    for c in &EXP_HALF_C[1..10] {
        q = _mm256_fmadd_pd(q, r, _mm256_set1_pd(*c));
    }
    let t1 = _mm256_fmadd_pd(q, r, _mm256_set1_pd(EXP_HALF_C[10]));
    let p = _mm256_fmadd_pd(t1, r, _mm256_set1_pd(EXP_HALF_C[11]));
    let k = _mm256_slli_epi64::<52>(_mm256_castpd_si256(t));
    let s = _mm256_castsi256_pd(_mm256_add_epi64(_mm256_castpd_si256(p), k));
    let small = _mm256_mul_pd(_mm256_mul_pd(r, r), _mm256_fmadd_pd(t1, t1, _mm256_add_pd(q, q)));
    let large = _mm256_fmadd_pd(s, s, _mm256_sub_pd(_mm256_set1_pd(-1.0), v));
    let n0 = _mm256_cmp_pd::<_CMP_EQ_OQ>(n, _mm256_setzero_pd());
    let f = _mm256_blendv_pd(large, small, n0);
    let m = _mm256_blendv_pd(_mm256_fmadd_pd(s, s, _mm256_set1_pd(-1.0)), _mm256_add_pd(small, v), n0);
    (s, f, m)
}

/// The elbo's latent pass over a flat run of f64 latents, 4 lanes per step: s = exp(logvar/2)
/// and f = e^logvar - 1 - logvar (`exp_half_kl`), z = mu + s·eps, and the KL sum Σ (mu² + f)
/// (every summand ≥ 0, so nothing cancels) kept as two lane sums (Σ mu², Σ f) added into `kl` at
/// the end; with GRAD also grad_mu = -mu/B and grad_logvar = -(e^logvar - 1)/(2B) (e^logvar - 1
/// from `exp_half_kl`, accurate near logvar = 0). Remainder (< 4 latents) in scalars
/// (`real::exph_kl_em1_f64_k`).
///
/// Returns false, having added nothing to `kl`, when some |logvar| exceeds EXP_HALF_MAX or is
/// NaN (an and + an unsigned 32-bit max of |logvar|'s bits per step, tested once at the end; the
/// high 32 bits decide, so |logvar| up to ~1e-3 above EXP_HALF_MAX may pass, still in range):
/// the caller then redoes the
/// run with the portable code, overwriting the outputs written here.
///
/// # Safety
/// Only when the CPU has avx2 and fma.
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
pub unsafe fn latent_f64<const GRAD: bool>(
    mu: &[f64],
    lv: &[f64],
    eps: &[f64],
    z: &mut [f64],
    gmu: &mut [f64],
    glv: &mut [f64],
    neg_inv_b: f64,
    neg_half_inv_b: f64,
    kl: &mut [f64; 16],
) -> bool {
    let mut n = mu.len().min(lv.len()).min(eps.len()).min(z.len());
    if GRAD {
        n = n.min(gmu.len()).min(glv.len());
    }
    let (pm, pv, pe, pz, pgm, pgl) = (mu.as_ptr(), lv.as_ptr(), eps.as_ptr(), z.as_mut_ptr(), gmu.as_mut_ptr(), glv.as_mut_ptr());
    let abs = _mm256_castsi256_pd(_mm256_set1_epi64x(i64::MAX));
    let (nib, nhib) = (_mm256_set1_pd(neg_inv_b), _mm256_set1_pd(neg_half_inv_b));
    let (mut sm, mut sf) = (_mm256_setzero_pd(), _mm256_setzero_pd());
    // the largest high 32 bits of |logvar| seen (unsigned max per 32-bit lane; only the odd,
    // high lanes are read): above EXP_HALF_MAX's, |logvar| > EXP_HALF_MAX (by at most 1e-3, still
    // in the polynomial's range) or inf or NaN
    let mut top = _mm256_setzero_si256();
    let mut i = 0;
    // SAFETY (all loads/stores): i + 4 <= n, resp. i < n, and n is within every slice used.
    while i + 4 <= n {
        let v = _mm256_loadu_pd(pv.add(i));
        let m = _mm256_loadu_pd(pm.add(i));
        top = _mm256_max_epu32(top, _mm256_castpd_si256(_mm256_and_pd(v, abs)));
        let (s, f, em1) = exp_half_kl(v);
        _mm256_storeu_pd(pz.add(i), _mm256_fmadd_pd(s, _mm256_loadu_pd(pe.add(i)), m));
        sm = _mm256_fmadd_pd(m, m, sm);
        sf = _mm256_add_pd(sf, f);
        if GRAD {
            _mm256_storeu_pd(pgm.add(i), _mm256_mul_pd(nib, m));
            _mm256_storeu_pd(pgl.add(i), _mm256_mul_pd(em1, nhib));
        }
        i += 4;
    }
    let mut tops = [0u32; 8];
    _mm256_storeu_si256(tops.as_mut_ptr().cast(), top);
    let lim = (EXP_HALF_MAX.to_bits() >> 32) as u32;
    if tops[1] > lim || tops[3] > lim || tops[5] > lim || tops[7] > lim {
        return false;
    }
    let mut tail = 0.0;
    while i < n {
        let (m, v) = (*pm.add(i), *pv.add(i));
        let (s, f, em1) = crate::real::exph_kl_em1_f64_k::<true>(v);
        *pz.add(i) = s.mul_add(*pe.add(i), m);
        tail += m.mul_add(m, f);
        if GRAD {
            *pgm.add(i) = neg_inv_b * m;
            *pgl.add(i) = em1 * neg_half_inv_b;
        }
        i += 1;
    }
    let mut lanes = [0.0f64; 4];
    _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(sm, sf));
    for (k, v) in kl.iter_mut().zip(lanes) {
        *k += v;
    }
    kl[4] += tail;
    true
}

/// float32 has no intrinsics latent pass (yet): the portable, auto-vectorised one runs.
///
/// # Safety
/// Only when the CPU has avx2 and fma.
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
pub unsafe fn latent_f32<const GRAD: bool>(
    _mu: &[f32],
    _lv: &[f32],
    _eps: &[f32],
    _z: &mut [f32],
    _gmu: &mut [f32],
    _glv: &mut [f32],
    _neg_inv_b: f32,
    _neg_half_inv_b: f32,
    _kl: &mut [f64; 16],
) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::real::Simd;
    use crate::testutil::{expm1mx_ref, rel};

    /// z = 0 + exp(v/2)·1 through latent_f64, over a grid of v (a multiple of 4 long).
    fn exp_half_via_latent(v: &[f64]) -> Option<(Vec<f64>, f64)> {
        let n = v.len();
        let (mu, eps) = (vec![0.0; n], vec![1.0; n]);
        let mut z = vec![0.0; n];
        let mut kl = [0.0; 16];
        // SAFETY: the caller checked avx2 and fma
        let ok = unsafe { latent_f64::<false>(&mu, v, &eps, &mut z, &mut [], &mut [], 0.0, 0.0, &mut kl) };
        ok.then(|| (z, kl.iter().sum()))
    }

    /// (exp(v/2), e^v - 1 - v) of each v, 4 lanes at a time (v.len() a multiple of 4).
    #[target_feature(enable = "avx2,fma")]
    fn exp_half_kl_each(v: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (s, f, _) = exp_half_kl_em1_each(v);
        (s, f)
    }

    /// (exp(v/2), e^v - 1 - v, e^v - 1) of each v, 4 lanes at a time (v.len() a multiple of 4).
    #[target_feature(enable = "avx2,fma")]
    fn exp_half_kl_em1_each(v: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut s, mut f, mut m) = (vec![0.0; v.len()], vec![0.0; v.len()], vec![0.0; v.len()]);
        for (((vc, sc), fc), mc) in v.chunks_exact(4).zip(s.chunks_exact_mut(4)).zip(f.chunks_exact_mut(4)).zip(m.chunks_exact_mut(4)) {
            // SAFETY: 4-element chunks; avx2+fma enabled on this function, checked by the caller
            unsafe {
                let (a, b, c) = exp_half_kl(_mm256_loadu_pd(vc.as_ptr()));
                _mm256_storeu_pd(sc.as_mut_ptr(), a);
                _mm256_storeu_pd(fc.as_mut_ptr(), b);
                _mm256_storeu_pd(mc.as_mut_ptr(), c);
            }
        }
        (s, f, m)
    }

    /// The gradient's e^v - 1 from the vector polynomial against libm's expm1 (< 1 ulp): near 0
    /// (down to 1e-300, where 1 - e^v is all cancellation), across |v| = ln2, out to ±700.
    #[test]
    fn em1_is_accurate_everywhere() {
        if Simd::detect() != Simd::Avx2 {
            return;
        }
        let mut v: Vec<f64> = Vec::new();
        for e in -300..=2 {
            for m in [1.0, 1.234567, 3.3, 5.9, 9.99] {
                v.push(m * 10f64.powi(e));
                v.push(-m * 10f64.powi(e));
            }
        }
        v.extend((0..200_000).map(|i| -5.0 + 10.0 * i as f64 / 199_999.0));
        v.extend((0..20_000).map(|i| 0.68 + 0.02 * i as f64 / 19_999.0));
        v.extend((0..20_000).map(|i| -0.70 + 0.02 * i as f64 / 19_999.0));
        v.extend((0..20_000).map(|i| -700.0 + 1400.0 * i as f64 / 19_999.0));
        v.extend([0.0, -0.0, EXP_HALF_MAX / 2.0 - 1.0]);
        while !v.len().is_multiple_of(4) {
            v.push(0.5);
        }
        // SAFETY: avx2 and fma checked above
        let (_, _, m) = unsafe { exp_half_kl_em1_each(&v) };
        let (mut worst_small, mut worst_all) = (0.0f64, 0.0f64);
        for (x, got) in v.iter().zip(&m) {
            let e = rel(*got, x.exp_m1());
            worst_all = worst_all.max(e);
            if x.abs() < std::f64::consts::LN_2 {
                worst_small = worst_small.max(e);
            }
        }
        eprintln!("vector e^v-1: worst relative error {worst_small:e} for |v| < ln2, {worst_all:e} overall");
        assert!(worst_small < 4.5e-16, "{worst_small}");
        assert!(worst_all < 1e-15, "{worst_all}");
    }

    #[test]
    fn exp_half_is_accurate_to_the_edges_and_refuses_out_of_range() {
        if Simd::detect() != Simd::Avx2 {
            return;
        }
        let mut v: Vec<f64> = (0..400_000).map(|i| -EXP_HALF_MAX + 2.0 * EXP_HALF_MAX * i as f64 / 399_999.0).collect();
        v.extend([-1e-300, 0.0, 1e-300, 1.0, -1.0, 0.5 * std::f64::consts::LN_2, -EXP_HALF_MAX, EXP_HALF_MAX, 1e-3, 2.0, 3.0]);
        v.truncate(v.len() / 4 * 4);
        let (z, kl) = exp_half_via_latent(&v).expect("all in range");
        let mut worst = 0.0f64;
        for (x, s) in v.iter().zip(&z) {
            let e = (0.5 * x).exp();
            worst = worst.max(((s - e) / e).abs());
        }
        eprintln!("exp_half worst relative error {worst:e}");
        assert!(worst < 4.5e-16, "rel err {worst}");
        assert!(kl.is_infinite()); // s² overflows at the top of the range, as exp(logvar) does
        // kl = Σ (0 + e^v - 1 - v) on a moderate range, against the high-precision reference
        let v: Vec<f64> = (0..4000).map(|i| -20.0 + 0.01 * i as f64).collect();
        let (_, kl) = exp_half_via_latent(&v).expect("all in range");
        let want: f64 = v.iter().map(|x| expm1mx_ref(*x)).sum();
        assert!(rel(kl, want) <= 1e-14, "{kl} {want}");
        for bad in [EXP_HALF_MAX * 1.0001, -2000.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(exp_half_via_latent(&[0.0, 1.0, bad, 2.0]).is_none(), "{bad}");
        }
    }

    /// The KL summand e^v - 1 - v from the vector polynomial, element by element, against a
    /// series/compensated reference: near 0 (down to 1e-150, below which v²/2 is subnormal; where the textbook 1 + v - e^v is
    /// all cancellation), across the n = 0 / n ≠ 0 boundary at |v| = ln2, and out to ±700.
    #[test]
    fn kl_summand_is_accurate_everywhere() {
        if Simd::detect() != Simd::Avx2 {
            return;
        }
        let mut v: Vec<f64> = Vec::new();
        for e in -150..=2 {
            for m in [1.0, 1.234567, 3.3, 5.9, 9.99] {
                v.push(m * 10f64.powi(e));
                v.push(-m * 10f64.powi(e));
            }
        }
        v.extend((0..200_000).map(|i| -5.0 + 10.0 * i as f64 / 199_999.0));
        v.extend((0..20_000).map(|i| 0.69 + 0.01 * i as f64 / 19_999.0));
        v.extend((0..20_000).map(|i| -0.70 + 0.01 * i as f64 / 19_999.0));
        v.extend((0..20_000).map(|i| -700.0 + 1400.0 * i as f64 / 19_999.0));
        while !v.len().is_multiple_of(4) {
            v.push(0.5);
        }
        // SAFETY: avx2 and fma checked above
        let (_, f) = unsafe { exp_half_kl_each(&v) };
        let (mut worst_small, mut worst_all) = (0.0f64, 0.0f64);
        for (x, got) in v.iter().zip(&f) {
            let e = rel(*got, expm1mx_ref(*x));
            worst_all = worst_all.max(e);
            if x.abs() < std::f64::consts::LN_2 {
                worst_small = worst_small.max(e);
            }
        }
        eprintln!("vector e^v-1-v: worst relative error {worst_small:e} for |v| < ln2, {worst_all:e} overall");
        assert!(worst_small < 1e-15, "{worst_small}");
        assert!(worst_all < 4e-15, "{worst_all}");
        // SAFETY: as above
        let (s, f) = unsafe { exp_half_kl_each(&[1e-300, -1e-300, 0.0, -0.0]) };
        assert_eq!((s, f), (vec![1.0; 4], vec![0.0; 4])); // v²/2 underflows to 0, as it should
    }
}
