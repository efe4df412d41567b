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
#[target_feature(enable = "avx2,fma")]
#[inline]
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
#[target_feature(enable = "avx2,fma")]
#[inline]
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
#[target_feature(enable = "avx2,fma")]
#[inline]
pub unsafe fn hsum(v: __m256d) -> f64 {
    let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
    _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
}
