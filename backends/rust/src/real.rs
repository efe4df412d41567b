//! The float trait the kernels are generic over (f32 and f64), and the SIMD level picked at run time.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Mul, Neg, Sub};

/// The arithmetic the kernels need. Row accumulators run in `Self` lanes; rows are summed in f64.
pub trait Real:
    Copy
    + Debug
    + Default
    + PartialOrd
    + Send
    + Sync
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Neg<Output = Self>
    + AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    /// (exp(self/2), e^self - 1 - self) without a libm call, branch-free, so a loop of it
    /// vectorises: the elbo's s = exp(logvar/2) (≤ 2 ulp) and its KL summand (see exph_kl_f64_k).
    /// FMA: polynomial and range reduction in fused multiply-adds (same rule as `madd`: true
    /// only inside `fma` target-feature code).
    fn exph_kl<const FMA: bool>(self) -> (Self, Self);
    /// exph_kl and e^self - 1 (expm1) from the same polynomial: (s, e^v - 1 - v, e^v - 1), each
    /// with a few ulps of relative error however close v is to 0 (the elbo's grad_logvar; see
    /// exph_kl_em1_f64_k). 1 - s² instead would lose all digits of a gradient near v = 0.
    fn exph_kl_em1<const FMA: bool>(self) -> (Self, Self, Self);
    /// e^self - 1 without cancellation near 0 (libm's expm1).
    fn exp_m1(self) -> Self;
    fn ln_1p(self) -> Self;
    fn abs(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn recip(self) -> Self;
    /// self * a + b: one fused instruction when FMA (only pass true inside code compiled with
    /// the `fma` target feature; elsewhere `mul_add` would be a libm call), else mul then add.
    fn madd<const FMA: bool>(self, a: Self, b: Self) -> Self;
    /// The elbo's D loop for one row with AVX2/FMA intrinsics (`crate::simd`): Σ (x - y)² added
    /// lane-wise into the f64 lanes `tot` and the scalar remainder into `tail`; with GRAD also
    /// g = c·(x - y).
    ///
    /// # Safety
    /// Only when the CPU has avx2 and fma (`Simd::detect() == Simd::Avx2`).
    #[cfg(target_arch = "x86_64")]
    unsafe fn row_sq_avx2<const GRAD: bool>(
        x: &[Self],
        y: &[Self],
        g: &mut [Self],
        c: Self,
        tot: &mut std::arch::x86_64::__m256d,
        tail: &mut f64,
    );
    /// The elbo's latent pass over a flat run with AVX2/FMA intrinsics (`crate::simd::latent_f64`);
    /// false when this type has none (f32) or the run holds a logvar out of the fast exp's range
    /// (then nothing was added to `kl` and the caller runs the portable pass).
    ///
    /// # Safety
    /// Only when the CPU has avx2 and fma (`Simd::detect() == Simd::Avx2`).
    #[cfg(target_arch = "x86_64")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn latent_avx2<const GRAD: bool>(
        mu: &[Self],
        lv: &[Self],
        eps: &[Self],
        z: &mut [Self],
        gmu: &mut [Self],
        glv: &mut [Self],
        neg_inv_b: Self,
        neg_half_inv_b: Self,
        kl: &mut [f64; 16],
    ) -> bool;
}

macro_rules! impl_real {
    ($t:ty, $exphkl:ident, $exphklem1:ident, $rowsq:ident, $latent:ident) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn exph_kl<const FMA: bool>(self) -> (Self, Self) {
                $exphkl::<FMA>(self)
            }
            #[inline(always)]
            fn exph_kl_em1<const FMA: bool>(self) -> (Self, Self, Self) {
                $exphklem1::<FMA>(self)
            }
            #[inline(always)]
            fn exp_m1(self) -> Self {
                <$t>::exp_m1(self)
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn recip(self) -> Self {
                1.0 / self
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[inline]
            unsafe fn row_sq_avx2<const GRAD: bool>(
                x: &[Self],
                y: &[Self],
                g: &mut [Self],
                c: Self,
                tot: &mut std::arch::x86_64::__m256d,
                tail: &mut f64,
            ) {
                // SAFETY: the caller guarantees avx2 and fma
                unsafe { crate::simd::$rowsq::<GRAD>(x, y, g, c, tot, tail) }
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[inline]
            unsafe fn latent_avx2<const GRAD: bool>(
                mu: &[Self],
                lv: &[Self],
                eps: &[Self],
                z: &mut [Self],
                gmu: &mut [Self],
                glv: &mut [Self],
                neg_inv_b: Self,
                neg_half_inv_b: Self,
                kl: &mut [f64; 16],
            ) -> bool {
                // SAFETY: the caller guarantees avx2 and fma
                unsafe { crate::simd::$latent::<GRAD>(mu, lv, eps, z, gmu, glv, neg_inv_b, neg_half_inv_b, kl) }
            }
            #[inline(always)]
            fn madd<const FMA: bool>(self, a: Self, b: Self) -> Self {
                if FMA {
                    <$t>::mul_add(self, a, b)
                } else {
                    self * a + b
                }
            }
        }
    };
}

impl_real!(f64, exph_kl_f64_k, exph_kl_em1_f64_k, row_sq_f64, latent_f64);
impl_real!(f32, exph_kl_f32_k, exph_kl_em1_f32_k, row_sq_f32, latent_f32);

/// Lanes of the multiple-accumulator loops (independent accumulators, so LLVM can keep them in
/// vector registers without reassociating floating-point sums): 16 = four AVX2 registers of f64,
/// two of f32.
pub const LANES: usize = 16;

/// Which instruction set the hot loops were dispatched to (decided once per call, cached by std).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// x86-64 with AVX2 and FMA: the loops compiled with `#[target_feature(enable = "avx2,fma")]`
    Avx2,
    /// whatever the target's baseline is (SSE2 on x86-64, NEON on aarch64)
    Baseline,
}

impl Simd {
    #[inline]
    pub fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Simd::Avx2;
            }
        }
        Simd::Baseline
    }

    pub fn name(self) -> &'static str {
        match self {
            Simd::Avx2 => "avx2+fma (runtime dispatch)",
            Simd::Baseline => "baseline (sse2 on x86-64)",
        }
    }
}

/// Sum of lane accumulators in f64 (so float32 rows lose nothing when they are combined).
#[inline(always)]
pub fn lanes_to_f64<T: Real, const N: usize>(acc: &[T; N]) -> f64 {
    let mut s = 0.0f64;
    for v in acc {
        s += v.to_f64();
    }
    s
}

/// exp(x) in f64, branch-free: x = n·ln2 + r with |r| ≤ ln2/2 (Cody–Waite, n by the 1.5·2^52
/// rounding trick, so no round() call), e^r by its degree-13 Taylor polynomial (truncation error
/// < 2e-18 relative), times 2^n built in the exponent bits. Overflow gives +inf, x < -708 gives 0
/// (a flushed subnormal), NaN stays NaN. Every step is a select or an arithmetic op, so LLVM
/// vectorises loops of it (the libm call does not).
#[inline(always)]
pub fn exp_f64(x: f64) -> f64 {
    exp_parts_f64::<false>(x).0
}

/// exp_f64, with every multiply-add fused when FMA (only inside `fma` target-feature code).
#[inline(always)]
pub fn exp_f64_k<const FMA: bool>(x: f64) -> f64 {
    exp_parts_f64::<FMA>(x).0
}

/// e^x and the pieces of its evaluation: (e^x, n, r, q, t1) with x = n·ln2 + r and
/// e^r = 1 + r·t1, t1 = 1 + r·q, q = Σ_{k≥2} r^(k-2)/k! (Taylor, to r^11/13!): the constant and
/// linear terms are exact, so r·t1 = e^r - 1 and r²·q = e^r - 1 - r keep full relative accuracy
/// however small r is (q's truncation is < 1e-16 relative at |r| = ln2/2).
#[inline(always)]
#[allow(clippy::excessive_precision, clippy::manual_clamp)]
fn exp_parts_f64<const FMA: bool>(x: f64) -> (f64, f64, f64, f64, f64) {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    const LN2_HI: f64 = 6.931_471_803_691_238_164_9e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
    const SHIFT: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
    const SHIFT_BITS: i64 = 0x4338_0000_0000_0000;
    let xc = if x > 709.0 { 709.0 } else if x < -708.0 { -708.0 } else { x };
    let t = xc.madd::<FMA>(LOG2E, SHIFT);
    let n = t - SHIFT;
    let r = (-n).madd::<FMA>(LN2_LO, (-n).madd::<FMA>(LN2_HI, xc));
    let mut q = 1.0 / 6_227_020_800.0;
    for c in [479_001_600.0, 39_916_800.0, 3_628_800.0, 362_880.0, 40_320.0, 5_040.0, 720.0, 120.0, 24.0, 6.0, 2.0] {
        q = q.madd::<FMA>(r, 1.0 / c);
    }
    let t1 = q.madd::<FMA>(r, 1.0);
    let p = t1.madd::<FMA>(r, 1.0);
    let k = (t.to_bits() as i64).wrapping_sub(SHIFT_BITS);
    let scale = f64::from_bits((k.wrapping_add(1023) as u64) << 52);
    let y = p * scale;
    let y = if x > 709.782_712_893_384 { f64::INFINITY } else { y };
    let y = if x < -708.0 { 0.0 } else { y };
    (if x.is_nan() { x } else { y }, n, r, q, t1)
}

/// (exp(v/2), e^v - 1 - v) in f64, branch-free (selects only). With h = v/2 = n·ln2 + r: where
/// n = 0 (|v| < ln2), r = h exactly and e^v - 1 - v = (e^h - 1)² + 2(e^h - 1 - h) = r²·(t1² + 2q),
/// a product of positive factors, so it is accurate to a few ulps however close v is to 0 (the
/// form 1 + v - e^v loses all its digits there); elsewhere s² - 1 - v, which cancels by at most a
/// factor e^|v|/(e^v - 1 - v) < 7. v = ±inf and NaN give what e^v - 1 - v gives in IEEE
/// arithmetic (NaN, +inf, NaN).
#[inline(always)]
pub fn exph_kl_f64_k<const FMA: bool>(v: f64) -> (f64, f64) {
    let (s, f, _) = exph_kl_em1_f64_k::<FMA>(v);
    (s, f)
}

/// exph_kl_f64_k and e^v - 1 (the elbo's grad_logvar is -(e^v - 1)/(2B)): where n = 0
/// (|v| < ln2), e^v - 1 = f + v, two accurate parts of which |f| ≤ 0.35|v|, so the sum cancels by
/// at most a factor ~2 (1 - s² would lose all digits near v = 0: relative error ~u/|v|);
/// elsewhere s² - 1 (= fma(s, s, -1)), where |e^v - 1| ≥ e^v/2 (v ≥ ln2) or ≥ 1/2 (v ≤ -ln2):
/// cancellation by at most 2. (f + v there would not do: for v = -700, f ≈ 699 and e^v - 1 ≈ -1.)
/// v = -inf gives -1, +inf gives +inf, NaN NaN.
#[inline(always)]
pub fn exph_kl_em1_f64_k<const FMA: bool>(v: f64) -> (f64, f64, f64) {
    let (s, n, r, q, t1) = exp_parts_f64::<FMA>(0.5 * v);
    let small = (r * r) * t1.madd::<FMA>(t1, q + q);
    let large = s.madd::<FMA>(s, -1.0 - v);
    let small_em1 = small + v;
    let large_em1 = s.madd::<FMA>(s, -1.0);
    if n == 0.0 { (s, small, small_em1) } else { (s, large, large_em1) }
}

/// exp(x) in f32, as exp_f64 with a degree-7 polynomial (truncation < 6e-9 relative).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    exp_parts_f32::<false>(x).0
}

/// exp_f32, with every multiply-add fused when FMA (only inside `fma` target-feature code).
#[inline(always)]
pub fn exp_f32_k<const FMA: bool>(x: f32) -> f32 {
    exp_parts_f32::<FMA>(x).0
}

/// exp_parts_f64 in f32 (q to r^5/7!: its truncation, < 8e-8 relative at |r| = ln2/2, is
/// under one f32 ulp).
#[inline(always)]
#[allow(clippy::excessive_precision, clippy::manual_clamp)]
fn exp_parts_f32<const FMA: bool>(x: f32) -> (f32, f32, f32, f32, f32) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23
    const SHIFT_BITS: i32 = 0x4B40_0000;
    let xc = if x > 88.0 { 88.0 } else if x < -87.0 { -87.0 } else { x };
    let t = xc.madd::<FMA>(LOG2E, SHIFT);
    let n = t - SHIFT;
    let r = (-n).madd::<FMA>(LN2_LO, (-n).madd::<FMA>(LN2_HI, xc));
    let mut q = 1.0 / 5_040.0;
    for c in [720.0, 120.0, 24.0, 6.0, 2.0] {
        q = q.madd::<FMA>(r, 1.0 / c);
    }
    let t1 = q.madd::<FMA>(r, 1.0);
    let p = t1.madd::<FMA>(r, 1.0);
    let k = (t.to_bits() as i32).wrapping_sub(SHIFT_BITS);
    let scale = f32::from_bits((k.wrapping_add(127) as u32) << 23);
    let y = p * scale;
    let y = if x > 88.722_83 { f32::INFINITY } else { y };
    let y = if x < -87.0 { 0.0 } else { y };
    (if x.is_nan() { x } else { y }, n, r, q, t1)
}

/// exph_kl_f64_k in f32.
#[inline(always)]
pub fn exph_kl_f32_k<const FMA: bool>(v: f32) -> (f32, f32) {
    let (s, f, _) = exph_kl_em1_f32_k::<FMA>(v);
    (s, f)
}

/// exph_kl_em1_f64_k in f32.
#[inline(always)]
pub fn exph_kl_em1_f32_k<const FMA: bool>(v: f32) -> (f32, f32, f32) {
    let (s, n, r, q, t1) = exp_parts_f32::<FMA>(0.5 * v);
    let small = (r * r) * t1.madd::<FMA>(t1, q + q);
    let large = s.madd::<FMA>(s, -1.0 - v);
    let small_em1 = small + v;
    let large_em1 = s.madd::<FMA>(s, -1.0);
    if n == 0.0 { (s, small, small_em1) } else { (s, large, large_em1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vexp_is_accurate() {
        let mut worst64 = 0.0f64;
        let mut worst32 = 0.0f64;
        let mut x = -700.0f64;
        while x < 709.0 {
            let e = x.exp();
            worst64 = worst64.max(((exp_f64(x) - e) / e).abs());
            x += 0.0137;
        }
        let mut x = -80.0f32;
        while x < 88.0 {
            let e = (x as f64).exp();
            worst32 = worst32.max(((exp_f32(x) as f64 - e) / e).abs());
            x += 0.00731;
        }
        assert!(worst64 < 5e-16, "f64 rel err {worst64}");
        assert!(worst32 < 3e-7, "f32 rel err {worst32}");
        assert_eq!(exp_f64(0.0), 1.0);
        assert_eq!(exp_f64(1000.0), f64::INFINITY);
        assert_eq!(exp_f64(-1000.0), 0.0);
        assert!(exp_f64(f64::NAN).is_nan());
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert_eq!(exp_f32(-100.0), 0.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn worst_fma() -> (f64, f64, [f64; 3], [f32; 2]) {
        let (mut w64, mut w32) = (0.0f64, 0.0f64);
        let mut x = -700.0f64;
        while x < 709.0 {
            let e = x.exp();
            w64 = w64.max(((exp_f64_k::<true>(x) - e) / e).abs());
            x += 0.0137;
        }
        let mut x = -80.0f32;
        while x < 88.0 {
            let e = (x as f64).exp();
            w32 = w32.max(((exp_f32_k::<true>(x) as f64 - e) / e).abs());
            x += 0.00731;
        }
        let sp64 = [exp_f64_k::<true>(0.0), exp_f64_k::<true>(1000.0), exp_f64_k::<true>(-1000.0)];
        (w64, w32, sp64, [exp_f32_k::<true>(100.0), exp_f32_k::<true>(-100.0)])
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vexp_fma_is_accurate() {
        if Simd::detect() != Simd::Avx2 {
            return;
        }
        // SAFETY: the CPU has avx2 and fma (checked above)
        let (w64, w32, sp64, sp32) = unsafe { worst_fma() };
        assert!(w64 < 5e-16, "f64 fma rel err {w64}");
        assert!(w32 < 3e-7, "f32 fma rel err {w32}");
        assert_eq!(sp64, [1.0, f64::INFINITY, 0.0]);
        assert_eq!(sp32, [f32::INFINITY, 0.0]);
    }

    /// The portable KL summand e^v - 1 - v (and s = exp(v/2)) against the high-precision
    /// reference: worst relative error for |v| < ln2 (no cancellation at all) and overall.
    fn kl_worst<const FMA: bool>() -> (f64, f64, f64, f64) {
        use crate::testutil::{expm1mx_ref, rel};
        let mut v: Vec<f64> = Vec::new();
        for e in -150..=2 {
            for m in [1.0, 1.234567, 3.3, 5.9, 9.99] {
                v.push(m * 10f64.powi(e));
                v.push(-m * 10f64.powi(e));
            }
        }
        v.extend((0..100_001).map(|i| -5.0 + 10.0 * i as f64 / 100_000.0));
        v.extend((0..10_001).map(|i| -700.0 + 1400.0 * i as f64 / 10_000.0));
        let (mut small, mut all, mut s32, mut a32) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for x in v {
            let (s, f) = exph_kl_f64_k::<FMA>(x);
            let e = rel(f, expm1mx_ref(x));
            all = all.max(e);
            assert!(rel(s, (0.5 * x).exp()) < 5e-16, "s at {x}");
            if x.abs() < std::f64::consts::LN_2 {
                small = small.max(e);
            }
            // f32: inputs representable as f32 and results in f32's normal range
            let xf = x as f32;
            if (xf as f64).abs() > 1e-18 && xf.abs() < 80.0 {
                let (_, f32v) = exph_kl_f32_k::<FMA>(xf);
                let e = rel(f32v as f64, expm1mx_ref(xf as f64));
                a32 = a32.max(e);
                if xf.abs() < 0.69 {
                    s32 = s32.max(e);
                }
            }
        }
        (small, all, s32, a32)
    }

    #[test]
    fn kl_summand_is_accurate() {
        let (small, all, s32, a32) = kl_worst::<false>();
        eprintln!("portable e^v-1-v: f64 {small:e} (|v| < ln2) / {all:e}; f32 {s32:e} / {a32:e}");
        assert!(small < 1e-15 && all < 4e-15, "{small} {all}");
        assert!(s32 < 5e-7 && a32 < 2e-6, "{s32} {a32}");
        assert_eq!(exph_kl_f64_k::<false>(0.0), (1.0, 0.0));
        assert_eq!(exph_kl_f64_k::<false>(f64::NEG_INFINITY), (0.0, f64::INFINITY));
        assert!(exph_kl_f64_k::<false>(f64::NAN).1.is_nan());
    }

    /// e^v - 1 from exph_kl_em1 against libm's expm1 (f64: < 1 ulp; f32: expm1 in f64): worst
    /// relative error (f64 for |v| < ln2 and overall, then f32 likewise), and that the other two
    /// results are exactly exph_kl's.
    fn em1_worst<const FMA: bool>() -> (f64, f64, f64, f64) {
        use crate::testutil::rel;
        let mut v: Vec<f64> = Vec::new();
        for e in -300..=2 {
            for m in [1.0, 1.234567, 3.3, 5.9, 9.99] {
                v.push(m * 10f64.powi(e));
                v.push(-m * 10f64.powi(e));
            }
        }
        v.extend((0..100_001).map(|i| -5.0 + 10.0 * i as f64 / 100_000.0));
        v.extend((0..10_001).map(|i| 0.68 + 0.02 * i as f64 / 10_000.0));
        v.extend((0..10_001).map(|i| -0.70 + 0.02 * i as f64 / 10_000.0));
        v.extend((0..10_001).map(|i| -700.0 + 1400.0 * i as f64 / 10_000.0));
        let (mut small, mut all, mut s32, mut a32) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for x in v {
            let (s, f, m) = exph_kl_em1_f64_k::<FMA>(x);
            assert_eq!((s.to_bits(), f.to_bits()), { let (a, b) = exph_kl_f64_k::<FMA>(x); (a.to_bits(), b.to_bits()) });
            let e = rel(m, x.exp_m1());
            all = all.max(e);
            if x.abs() < std::f64::consts::LN_2 {
                small = small.max(e);
            }
            let xf = x as f32;
            if xf.abs() < 80.0 {
                let (_, _, m32) = exph_kl_em1_f32_k::<FMA>(xf);
                let e = rel(m32 as f64, (xf as f64).exp_m1());
                a32 = a32.max(e);
                if xf.abs() < 0.69 {
                    s32 = s32.max(e);
                }
            }
        }
        (small, all, s32, a32)
    }

    #[test]
    fn em1_is_accurate() {
        let (small, all, s32, a32) = em1_worst::<false>();
        eprintln!("portable e^v-1: f64 {small:e} (|v| < ln2) / {all:e}; f32 {s32:e} / {a32:e}");
        assert!(small < 4.5e-16 && all < 1e-15, "{small} {all}");
        assert!(s32 < 2.4e-7 && a32 < 5e-7, "{s32} {a32}");
        assert_eq!(exph_kl_em1_f64_k::<false>(0.0), (1.0, 0.0, 0.0));
        assert_eq!(exph_kl_em1_f64_k::<false>(1e-300).2, 1e-300);
        assert_eq!(exph_kl_em1_f64_k::<false>(f64::NEG_INFINITY).2, -1.0);
        assert_eq!(exph_kl_em1_f64_k::<false>(f64::INFINITY).2, f64::INFINITY);
        assert!(exph_kl_em1_f64_k::<false>(f64::NAN).2.is_nan());
        assert_eq!(exph_kl_em1_f32_k::<false>(f32::NEG_INFINITY).2, -1.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn em1_worst_fma() -> (f64, f64, f64, f64) {
        em1_worst::<true>()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn em1_fma_is_accurate() {
        if Simd::detect() != Simd::Avx2 {
            return;
        }
        // SAFETY: the CPU has avx2 and fma (checked above)
        let (small, all, s32, a32) = unsafe { em1_worst_fma() };
        eprintln!("portable+fma e^v-1: f64 {small:e} (|v| < ln2) / {all:e}; f32 {s32:e} / {a32:e}");
        assert!(small < 4.5e-16 && all < 1e-15, "{small} {all}");
        assert!(s32 < 2.4e-7 && a32 < 5e-7, "{s32} {a32}");
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn kl_worst_fma() -> (f64, f64, f64, f64) {
        kl_worst::<true>()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn kl_summand_fma_is_accurate() {
        if Simd::detect() != Simd::Avx2 {
            return;
        }
        // SAFETY: the CPU has avx2 and fma (checked above)
        let (small, all, s32, a32) = unsafe { kl_worst_fma() };
        eprintln!("portable+fma e^v-1-v: f64 {small:e} (|v| < ln2) / {all:e}; f32 {s32:e} / {a32:e}");
        assert!(small < 1e-15 && all < 4e-15, "{small} {all}");
        assert!(s32 < 5e-7 && a32 < 2e-6, "{s32} {a32}");
    }
}
