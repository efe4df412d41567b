//! `elbo` and `elbo_grad`: one fused pass over the rows, no temporaries.
//!
//! Per row b: the D loop reads x and x_recon once (independent accumulator lanes; with
//! `elbo_grad` it also writes grad_x_recon in the same pass); the latent pass computes
//! s = exp(logvar/2), z = mu + s*eps, the KL summand and the latent gradients. Sums are kept in
//! f64 lanes across rows.
//!
//! grad_logvar = -(e^logvar - 1)/(2B), with e^logvar - 1 from the same polynomial as s and the KL
//! summand, accurate to a few ulps relative however close logvar is to 0 (`real::exph_kl_em1_f64_k`,
//! `simd::latent_f64`). The form (1 - s²)/(2B) is the same number but cancels near logvar = 0:
//! relative error ~u/|logvar| (~1e-10 at logvar = 1e-6 in f64, every digit in f32).
//!
//! KL = (1/2B)·Σ (mu² + (e^logvar - 1 - logvar)): every summand is ≥ 0, so the sum cannot cancel,
//! and e^v - 1 - v comes out of the same polynomial as s with full relative accuracy near v = 0
//! (`real::exph_kl_f64_k`, `simd::latent_f64`). The textbook form -(1/2B)·Σ (1 + logvar - mu² -
//! e^logvar) is the same number, but its summands are O(1) while their sum can be O(1e-13): it
//! loses ~8 digits of a small KL to cancellation.

use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

use crate::par::{Par, row_ranges, take_mut, ELBO_PAR_MIN_ELEMS, RNG_BLOCK};
use crate::real::{lanes_to_f64, Real, Simd};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElboDims {
    pub batch: usize,
    pub input_dim: usize,
    pub latent_dim: usize,
}

/// Where eps comes from: the caller's [B, L] array, or drawn inside the call.
#[derive(Debug)]
pub enum Eps<'a, T> {
    Given(&'a [T]),
    /// Standard normals from Xoshiro256++ (rand_xoshiro) through rand_distr's ziggurat
    /// StandardNormal; rows [k*64, (k+1)*64) use a generator seeded with `call_seed ^ k*φ`.
    /// `out` ([B, L]) receives every eps drawn: they are drawn straight into it (instead of a
    /// stack buffer), so it costs one [B, L] write stream and nothing else.
    Sampled { call_seed: u64, out: Option<&'a mut [T]> },
}

/// The seed of the `counter`-th sampled call of a plan seeded with `seed` (SplitMix64 of both):
/// successive calls draw different eps, and a case's eps are reproducible from its seed.
pub fn call_seed(seed: u64, counter: u64) -> u64 {
    let mut z = seed ^ counter.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub struct ElboGrads<'a, T> {
    pub x_recon: &'a mut [T],
    pub mu: &'a mut [T],
    pub logvar: &'a mut [T],
}

pub struct ElboArgs<'a, T> {
    pub x: &'a [T],
    pub x_recon: &'a [T],
    pub mu: &'a [T],
    pub logvar: &'a [T],
    pub eps: Eps<'a, T>,
    pub z: &'a mut [T],
    pub grads: Option<ElboGrads<'a, T>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ElboResult {
    pub recon: f64,
    pub kl: f64,
    pub elbo: f64,
}

/// The generator of one RNG block of rows.
#[inline]
pub fn block_rng(call_seed: u64, block: usize) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(call_seed ^ (block as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn check_len(name: &str, got: usize, want: usize) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{name} has {got} elements, expected {want}"))
    }
}

impl<T> ElboArgs<'_, T> {
    pub fn validate(&self, dims: ElboDims) -> Result<(), String> {
        let ElboDims { batch: b, input_dim: d, latent_dim: l } = dims;
        if b == 0 || d == 0 || l == 0 {
            return Err(format!("empty dimensions (batch={b}, input_dim={d}, latent_dim={l})"));
        }
        check_len("x", self.x.len(), b * d)?;
        check_len("x_recon", self.x_recon.len(), b * d)?;
        check_len("mu", self.mu.len(), b * l)?;
        check_len("logvar", self.logvar.len(), b * l)?;
        match &self.eps {
            Eps::Given(e) => check_len("eps", e.len(), b * l)?,
            Eps::Sampled { out: Some(o), .. } => check_len("eps_out", o.len(), b * l)?,
            Eps::Sampled { out: None, .. } => {}
        }
        check_len("z", self.z.len(), b * l)?;
        if let Some(g) = &self.grads {
            check_len("grad_x_recon", g.x_recon.len(), b * d)?;
            check_len("grad_mu", g.mu.len(), b * l)?;
            check_len("grad_logvar", g.logvar.len(), b * l)?;
        }
        Ok(())
    }
}

/// One chunk of rows [first_row, first_row + rows); slices are the chunk's own rows.
struct Chunk<'a, T> {
    first_row: usize,
    rows: usize,
    d: usize,
    l: usize,
    inv_b: f64,
    x: &'a [T],
    xr: &'a [T],
    mu: &'a [T],
    lv: &'a [T],
    eps: Option<&'a [T]>,
    call_seed: u64,
    /// sampled eps are drawn into this (the chunk's rows of eps_out), or empty
    eps_out: &'a mut [T],
    z: &'a mut [T],
    gx: &'a mut [T],
    gmu: &'a mut [T],
    glv: &'a mut [T],
}

/// Rows per block: the D loop runs over a block's rows, then the latent pass over the block's
/// `rows*L` latents as one flat stream (mu, logvar, eps, z, grad_mu, grad_logvar are [B, L]
/// C-contiguous, so a block of rows is one contiguous run of each). Equal to RNG_BLOCK, so a
/// block is exactly one sampled-eps generator.
const ROW_BLOCK: usize = RNG_BLOCK;
/// Latents per call of the flat latent pass (the stack buffer sampled eps are drawn into; float32
/// KL lanes are summed to f64 after at most this many latents).
const LAT_PIECE: usize = 256;
/// Lanes of the D loop: 32 = eight ymm accumulators of f64 (four of f32), enough independent
/// chains to hide the 4-cycle FMA latency on two FMA ports.
const DL: usize = 32;
/// Lanes of the latent pass: 16 = four ymm of f64 per exp polynomial, so the 12 dependent FMAs
/// of four vectors overlap.
const LL: usize = 16;
/// The latent pass catches up with the rows in steps of this many latents (whole LL vectors).
const LAT_STEP: usize = 4 * LL;

/// Σ over the chunk's rows of Σ_d (x - x_recon)² and of Σ_l (mu² + (e^logvar - 1 - logvar)).
/// The whole row loop sits inside the dispatched (target_feature) function: no per-row dispatch
/// or call. FMA selects fused multiply-adds (only true when compiled with the `fma` feature).
///
/// Rows go in blocks of ROW_BLOCK (one sampled-eps generator each). After each row's D loop the
/// latent pass advances over the block's flat latents to the last whole LL-vector the rows so far
/// cover, so the compute-heavy latent work (exp) is interleaved with the memory-bound stream at a
/// fine grain and stays vectorised whatever L is (the remainder is done at the block's end).
#[inline(always)]
fn rows_impl<T: Real, const GRAD: bool, const FMA: bool>(c: &mut Chunk<'_, T>) -> (f64, f64) {
    let (d, l) = (c.d, c.l);
    let two_inv_b = T::from_f64(2.0 * c.inv_b);
    let neg_inv_b = T::from_f64(-c.inv_b);
    let neg_half_inv_b = T::from_f64(-0.5 * c.inv_b);
    // f64 lane totals: each row's (or latent piece's) T lanes are added lane-wise (vectorised),
    // and the lanes are reduced to one number once per chunk, not once per row
    let mut sq = SqAcc::default();
    let mut kl = [0.0f64; LL];
    let mut lat = Latents { buf: [T::ZERO; LAT_PIECE], rng: None, neg_inv_b, neg_half_inv_b };
    let mut io = LatIo { mu: c.mu, lv: c.lv, eps: c.eps, eps_out: &mut *c.eps_out, z: &mut *c.z, gmu: &mut *c.gmu, glv: &mut *c.glv };
    let mut r0 = 0;
    while r0 < c.rows {
        // blocks end at absolute multiples of ROW_BLOCK (= RNG_BLOCK), so each block is one
        // generator's rows whatever the chunk's first row
        let row = c.first_row + r0;
        let r1 = (r0 + ROW_BLOCK - row % ROW_BLOCK).min(c.rows);
        if c.eps.is_none() {
            lat.rng = Some(block_rng(c.call_seed, row / RNG_BLOCK));
        }
        let x = &c.x[r0 * d..r1 * d];
        let xr = &c.xr[r0 * d..r1 * d];
        let (lo, hi) = (r0 * l, r1 * l);
        let mut cur = lo;
        let gx: &mut [T] = if GRAD { &mut c.gx[r0 * d..r1 * d] } else { &mut [] };
        for i in 0..r1 - r0 {
            let g: &mut [T] = if GRAD { &mut gx[i * d..(i + 1) * d] } else { &mut [] };
            sq.row::<T, GRAD, FMA>(&x[i * d..(i + 1) * d], &xr[i * d..(i + 1) * d], g, two_inv_b);
            let to = lo + ((i + 1) * l) / LAT_STEP * LAT_STEP;
            if to > cur {
                lat.range::<GRAD, FMA>(&mut io, cur, to, &mut kl);
                cur = to;
            }
        }
        if hi > cur {
            lat.range::<GRAD, FMA>(&mut io, cur, hi, &mut kl);
        }
        r0 = r1;
    }
    (sq.total(), kl.iter().sum())
}

/// The chunk's latent arrays (eps_out: empty unless sampled eps are to be kept).
struct LatIo<'a, T> {
    mu: &'a [T],
    lv: &'a [T],
    eps: Option<&'a [T]>,
    eps_out: &'a mut [T],
    z: &'a mut [T],
    gmu: &'a mut [T],
    glv: &'a mut [T],
}

/// The latent pass's state within a chunk: the buffer sampled eps are drawn into (when they are
/// not kept in eps_out), and the current block's generator (None when eps is given).
struct Latents<T> {
    buf: [T; LAT_PIECE],
    rng: Option<Xoshiro256PlusPlus>,
    neg_inv_b: T,
    neg_half_inv_b: T,
}

impl<T: Real> Latents<T> {
    /// Latents [p0, p1) of the chunk, LAT_PIECE at a time; KL lanes added into `kl`.
    #[inline(always)]
    fn range<const GRAD: bool, const FMA: bool>(&mut self, c: &mut LatIo<'_, T>, p0: usize, p1: usize, kl: &mut [f64; LL]) {
        let mut a = p0;
        while a < p1 {
            let b = (a + LAT_PIECE).min(p1);
            let eps: &[T] = match (c.eps, self.rng.as_mut()) {
                (Some(e), _) => &e[a..b],
                (None, Some(g)) => {
                    let v: &mut [T] = if c.eps_out.is_empty() { &mut self.buf[..b - a] } else { &mut c.eps_out[a..b] };
                    for e in v.iter_mut() {
                        *e = sample_normal::<T>(g);
                    }
                    v
                }
                (None, None) => &[],
            };
            let (gmu, glv): (&mut [T], &mut [T]) =
                if GRAD { (&mut c.gmu[a..b], &mut c.glv[a..b]) } else { (&mut [], &mut []) };
            latent_flat::<T, GRAD, FMA>(&c.mu[a..b], &c.lv[a..b], eps, &mut c.z[a..b], gmu, glv, self.neg_inv_b, self.neg_half_inv_b, kl);
            a = b;
        }
    }
}

/// The latent part of a flat run of latents (any number of rows, or part of one): z = mu + s·eps
/// with s = exp(logvar/2), Σ (mu² + (e^logvar - 1 - logvar)) added into `kl` (f64 lanes), and with
/// GRAD grad_mu = -mu/B, grad_logvar = -(e^logvar - 1)/(2B) (one exp polynomial per latent gives
/// s, the KL summand and e^logvar - 1, each accurate near logvar = 0: `Real::exph_kl_em1`).
/// All slices have the same length (eps is never empty here).
///
/// Every path is a call, never inlined into the row loop (`latent_avx2`, `latent_portable_fma`,
/// `latent_portable_base`): inlined, the portable pass's loop-invariant constants were hoisted
/// into the row loop and stayed live across the D loop, which then spilled an accumulator to the
/// stack every iteration (+7% float32, +20% float64 at B=128, L=1). One call per latent piece
/// (≥ 64 latents but at block ends) costs nothing measurable.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn latent_flat<T: Real, const GRAD: bool, const FMA: bool>(
    mu: &[T],
    lv: &[T],
    eps: &[T],
    z: &mut [T],
    gmu: &mut [T],
    glv: &mut [T],
    neg_inv_b: T,
    neg_half_inv_b: T,
    kl: &mut [f64; LL],
) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: FMA is true only in rows_avx2, which runs only when Simd::detect() saw avx2
        // and fma. False (nothing added to kl): f32, or a logvar out of the fast exp's range.
        unsafe {
            if !T::latent_avx2::<GRAD>(mu, lv, eps, z, gmu, glv, neg_inv_b, neg_half_inv_b, kl) {
                latent_portable_fma::<T, GRAD>(mu, lv, eps, z, gmu, glv, neg_inv_b, neg_half_inv_b, kl);
            }
        }
        return;
    }
    latent_portable_base::<T, GRAD>(mu, lv, eps, z, gmu, glv, neg_inv_b, neg_half_inv_b, kl);
}

/// latent_portable with fused multiply-adds, compiled for avx2+fma (auto-vectorised).
///
/// # Safety
/// Only when the CPU has avx2 and fma.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
#[allow(clippy::too_many_arguments)]
unsafe fn latent_portable_fma<T: Real, const GRAD: bool>(
    mu: &[T],
    lv: &[T],
    eps: &[T],
    z: &mut [T],
    gmu: &mut [T],
    glv: &mut [T],
    neg_inv_b: T,
    neg_half_inv_b: T,
    kl: &mut [f64; LL],
) {
    latent_portable::<T, GRAD, true>(mu, lv, eps, z, gmu, glv, neg_inv_b, neg_half_inv_b, kl);
}

/// latent_portable on the target's baseline instruction set.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn latent_portable_base<T: Real, const GRAD: bool>(
    mu: &[T],
    lv: &[T],
    eps: &[T],
    z: &mut [T],
    gmu: &mut [T],
    glv: &mut [T],
    neg_inv_b: T,
    neg_half_inv_b: T,
    kl: &mut [f64; LL],
) {
    latent_portable::<T, GRAD, false>(mu, lv, eps, z, gmu, glv, neg_inv_b, neg_half_inv_b, kl);
}

/// The portable latent pass (as latent_flat): LL independent lanes, auto-vectorised.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn latent_portable<T: Real, const GRAD: bool, const FMA: bool>(
    mu: &[T],
    lv: &[T],
    eps: &[T],
    z: &mut [T],
    gmu: &mut [T],
    glv: &mut [T],
    neg_inv_b: T,
    neg_half_inv_b: T,
    kl: &mut [f64; LL],
) {
    let (mu_c, mu_t) = mu.as_chunks::<LL>();
    let (lv_c, lv_t) = lv.as_chunks::<LL>();
    let (e_c, e_t) = eps.as_chunks::<LL>();
    let (z_c, z_t) = z.as_chunks_mut::<LL>();
    let mut acc = [T::ZERO; LL];
    if GRAD {
        let (gmu_c, gmu_t) = gmu.as_chunks_mut::<LL>();
        let (glv_c, glv_t) = glv.as_chunks_mut::<LL>();
        for ((((m, v), e), zr), (gm, gl)) in
            mu_c.iter().zip(lv_c).zip(e_c).zip(z_c.iter_mut()).zip(gmu_c.iter_mut().zip(glv_c.iter_mut()))
        {
            for j in 0..LL {
                let (s, f, em1) = v[j].exph_kl_em1::<FMA>();
                zr[j] = s.madd::<FMA>(e[j], m[j]);
                acc[j] += m[j].madd::<FMA>(m[j], f);
                gm[j] = neg_inv_b * m[j];
                gl[j] = em1 * neg_half_inv_b;
            }
        }
        add_lanes(kl, &acc);
        for (((((m, v), e), zr), gm), gl) in
            mu_t.iter().zip(lv_t).zip(e_t).zip(z_t.iter_mut()).zip(gmu_t.iter_mut()).zip(glv_t.iter_mut())
        {
            let (s, f, em1) = v.exph_kl_em1::<FMA>();
            *zr = s.madd::<FMA>(*e, *m);
            kl[0] += m.madd::<FMA>(*m, f).to_f64();
            *gm = neg_inv_b * *m;
            *gl = em1 * neg_half_inv_b;
        }
    } else {
        for (((m, v), e), zr) in mu_c.iter().zip(lv_c).zip(e_c).zip(z_c.iter_mut()) {
            for j in 0..LL {
                let (s, f) = v[j].exph_kl::<FMA>();
                zr[j] = s.madd::<FMA>(e[j], m[j]);
                acc[j] += m[j].madd::<FMA>(m[j], f);
            }
        }
        add_lanes(kl, &acc);
        for (((m, v), e), zr) in mu_t.iter().zip(lv_t).zip(e_t).zip(z_t.iter_mut()) {
            let (s, f) = v.exph_kl::<FMA>();
            *zr = s.madd::<FMA>(*e, *m);
            kl[0] += m.madd::<FMA>(*m, f).to_f64();
        }
    }
}

/// tot[i] += acc[i] as f64, lane-wise (vectorises: vcvtps2pd/vaddpd).
#[inline(always)]
fn add_lanes<T: Real, const N: usize>(tot: &mut [f64; N], acc: &[T; N]) {
    for i in 0..N {
        tot[i] += acc[i].to_f64();
    }
}

#[inline(always)]
fn sample_normal<T: Real>(g: &mut Xoshiro256PlusPlus) -> T {
    // f64 ziggurat for both dtypes: one code path, and float32 eps are exactly rounded normals
    let v: f64 = StandardNormal.sample(g);
    T::from_f64(v)
}

/// The D loop's running Σ (x - x_recon)² over a chunk's rows: with AVX2 four f64 lanes (a ymm,
/// see `crate::simd`), kept across rows and reduced once per chunk; otherwise one f64 per row.
#[derive(Default)]
struct SqAcc {
    lanes: [f64; 4],
    tail: f64,
}

impl SqAcc {
    /// One row: Σ_d (x - x_recon)², and with GRAD grad_x_recon = c·(x - x_recon).
    #[inline(always)]
    fn row<T: Real, const GRAD: bool, const FMA: bool>(&mut self, x: &[T], y: &[T], g: &mut [T], c: T) {
        #[cfg(target_arch = "x86_64")]
        if FMA {
            // SAFETY: FMA is true only in rows_avx2, which runs only when Simd::detect() saw
            // avx2 and fma; `lanes` is 4 f64 (one unaligned ymm load/store).
            unsafe {
                use std::arch::x86_64::{_mm256_loadu_pd, _mm256_storeu_pd};
                let mut t = _mm256_loadu_pd(self.lanes.as_ptr());
                T::row_sq_avx2::<GRAD>(x, y, g, c, &mut t, &mut self.tail);
                _mm256_storeu_pd(self.lanes.as_mut_ptr(), t);
            }
            return;
        }
        self.tail += if GRAD { row_sq_grad::<T>(x, y, g, c) } else { row_sq::<T>(x, y) };
    }

    fn total(&self) -> f64 {
        (self.lanes[0] + self.lanes[1]) + (self.lanes[2] + self.lanes[3]) + self.tail
    }
}

/// Portable Σ_d (x - x_recon)² of one row (the baseline path) in DL independent accumulator
/// lanes, summed in f64 at the end of the row (float32 rows: f32 lanes, rows in f64).
#[inline(always)]
fn row_sq<T: Real>(x: &[T], y: &[T]) -> f64 {
    let (xc, xt) = x.as_chunks::<DL>();
    let (yc, yt) = y.as_chunks::<DL>();
    let mut acc = [T::ZERO; DL];
    for (a, b) in xc.iter().zip(yc) {
        for i in 0..DL {
            let diff = a[i] - b[i];
            acc[i] += diff * diff;
        }
    }
    let mut tail = 0.0f64;
    for (a, b) in xt.iter().zip(yt) {
        let diff = *a - *b;
        tail += (diff * diff).to_f64();
    }
    lanes_to_f64(&acc) + tail
}

/// row_sq, also writing grad_x_recon = 2/B·(x - x_recon) in the same pass.
#[inline(always)]
fn row_sq_grad<T: Real>(x: &[T], y: &[T], g: &mut [T], c: T) -> f64 {
    let (xc, xt) = x.as_chunks::<DL>();
    let (yc, yt) = y.as_chunks::<DL>();
    let (gc, gt) = g.as_chunks_mut::<DL>();
    let mut acc = [T::ZERO; DL];
    for ((a, b), o) in xc.iter().zip(yc).zip(gc.iter_mut()) {
        for i in 0..DL {
            let diff = a[i] - b[i];
            acc[i] += diff * diff;
            o[i] = c * diff;
        }
    }
    let mut tail = 0.0f64;
    for ((a, b), o) in xt.iter().zip(yt).zip(gt.iter_mut()) {
        let diff = *a - *b;
        tail += (diff * diff).to_f64();
        *o = c * diff;
    }
    lanes_to_f64(&acc) + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
fn rows_avx2<T: Real, const GRAD: bool>(c: &mut Chunk<'_, T>) -> (f64, f64) {
    rows_impl::<T, GRAD, true>(c)
}

#[inline(never)]
fn rows_base<T: Real, const GRAD: bool>(c: &mut Chunk<'_, T>) -> (f64, f64) {
    rows_impl::<T, GRAD, false>(c)
}

/// Dispatch once per chunk (not per row): the whole row loop runs in the chosen function.
fn run_chunk<T: Real>(c: &mut Chunk<'_, T>, simd: Simd) -> (f64, f64) {
    let grad = !c.gx.is_empty();
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => {
            // SAFETY: Simd::Avx2 is only returned when the CPU reports avx2 and fma.
            unsafe {
                if grad {
                    rows_avx2::<T, true>(c)
                } else {
                    rows_avx2::<T, false>(c)
                }
            }
        }
        _ => {
            if grad {
                rows_base::<T, true>(c)
            } else {
                rows_base::<T, false>(c)
            }
        }
    }
}

/// The elbo (and with `grads`, elbo_grad) of one batch. Serial when `pool` is None, has one
/// thread, or the batch is below ELBO_PAR_MIN_ELEMS; otherwise rows are split over the pool.
pub fn elbo<T: Real>(par: Par<'_>, dims: ElboDims, args: ElboArgs<'_, T>) -> Result<ElboResult, String> {
    elbo_on(par, dims, args, Simd::detect())
}

/// `elbo` on a given instruction set (tests run both; `Simd::Avx2` only where the CPU has it).
pub(crate) fn elbo_on<T: Real>(par: Par<'_>, dims: ElboDims, args: ElboArgs<'_, T>, simd: Simd) -> Result<ElboResult, String> {
    args.validate(dims)?;
    #[cfg(target_arch = "x86_64")]
    if simd == Simd::Avx2 && Simd::detect() != Simd::Avx2 {
        return Err("this CPU has no avx2+fma".into());
    }
    let ElboDims { batch: b, input_dim: d, latent_dim: l } = dims;
    let inv_b = 1.0 / b as f64;
    let (eps, call_seed, mut eps_out): (_, _, &mut [T]) = match args.eps {
        Eps::Given(e) => (Some(e), 0, &mut []),
        Eps::Sampled { call_seed, out } => (None, call_seed, out.unwrap_or_default()),
    };
    let keep_eps = !eps_out.is_empty();
    let (mut gx, mut gmu, mut glv): (&mut [T], &mut [T], &mut [T]) = match args.grads {
        Some(g) => (g.x_recon, g.mu, g.logvar),
        None => (&mut [], &mut [], &mut []),
    };
    let mut z = args.z;
    let grad = !gx.is_empty();

    let (sq, klsum) = match par.pool_for(b * d, ELBO_PAR_MIN_ELEMS) {
        None => {
            let mut c = Chunk {
                first_row: 0,
                rows: b,
                d,
                l,
                inv_b,
                x: args.x,
                xr: args.x_recon,
                mu: args.mu,
                lv: args.logvar,
                eps,
                call_seed,
                eps_out,
                z,
                gx,
                gmu,
                glv,
            };
            run_chunk(&mut c, simd)
        }
        Some(p) => {
            let ranges = row_ranges(b, p.current_num_threads(), RNG_BLOCK);
            let mut chunks = Vec::with_capacity(ranges.len());
            for &(r0, r1) in &ranges {
                let n = r1 - r0;
                chunks.push(Chunk {
                    first_row: r0,
                    rows: n,
                    d,
                    l,
                    inv_b,
                    x: &args.x[r0 * d..r1 * d],
                    xr: &args.x_recon[r0 * d..r1 * d],
                    mu: &args.mu[r0 * l..r1 * l],
                    lv: &args.logvar[r0 * l..r1 * l],
                    eps: eps.map(|e| &e[r0 * l..r1 * l]),
                    call_seed,
                    eps_out: if keep_eps { take_mut(&mut eps_out, n * l) } else { &mut [] },
                    z: take_mut(&mut z, n * l),
                    gx: if grad { take_mut(&mut gx, n * d) } else { &mut [] },
                    gmu: if grad { take_mut(&mut gmu, n * l) } else { &mut [] },
                    glv: if grad { take_mut(&mut glv, n * l) } else { &mut [] },
                });
            }
            p.install(|| {
                chunks
                    .into_par_iter()
                    .map(|mut c| run_chunk(&mut c, simd))
                    .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
            })
        }
    };
    let recon = -sq * inv_b;
    let kl = 0.5 * klsum * inv_b;
    Ok(ElboResult { recon, kl, elbo: recon - kl })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64)
    }

    struct Data {
        x: Vec<f64>,
        xr: Vec<f64>,
        mu: Vec<f64>,
        lv: Vec<f64>,
        eps: Vec<f64>,
    }

    fn data(b: usize, d: usize, l: usize) -> Data {
        let mut s = 42u64;
        let mut v = |n: usize, scale: f64, off: f64| (0..n).map(|_| off + scale * lcg(&mut s)).collect::<Vec<_>>();
        Data { x: v(b * d, 1.0, 0.0), xr: v(b * d, 1.0, 0.0), mu: v(b * l, 2.0, -1.0), lv: v(b * l, 1.0, -0.5), eps: v(b * l, 2.0, -1.0) }
    }

    fn naive(dt: &Data, b: usize) -> (f64, f64, Vec<f64>) {
        let sq: f64 = dt.x.iter().zip(&dt.xr).map(|(a, c)| (a - c) * (a - c)).sum();
        let kl: f64 = dt.mu.iter().zip(&dt.lv).map(|(m, v)| 1.0 + v - m * m - v.exp()).sum();
        let z = dt.mu.iter().zip(&dt.lv).zip(&dt.eps).map(|((m, v), e)| m + (0.5 * v).exp() * e).collect();
        (-sq / b as f64, -0.5 * kl / b as f64, z)
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1.0)
    }

    #[test]
    fn matches_naive_f64_serial_and_parallel() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for &b in &[1usize, 7, 128, 333] {
            let (d, l) = (37, 5); // D not a multiple of the lane count
            let dt = data(b, d, l);
            let (recon, kl, zref) = naive(&dt, b);
            for p in [Par::serial(), Par::on(&pool), Par { pool: Some(&pool), always: true }] {
                let mut z = vec![0.0; b * l];
                let mut gx = vec![0.0; b * d];
                let mut gmu = vec![0.0; b * l];
                let mut glv = vec![0.0; b * l];
                let dims = ElboDims { batch: b, input_dim: d, latent_dim: l };
                let args = ElboArgs {
                    x: &dt.x,
                    x_recon: &dt.xr,
                    mu: &dt.mu,
                    logvar: &dt.lv,
                    eps: Eps::Given(&dt.eps),
                    z: &mut z,
                    grads: Some(ElboGrads { x_recon: &mut gx, mu: &mut gmu, logvar: &mut glv }),
                };
                let r = elbo(p, dims, args).unwrap();
                assert!(close(r.recon, recon, 1e-12), "{} {}", r.recon, recon);
                assert!(close(r.kl, kl, 1e-12));
                assert!(close(r.elbo, recon - kl, 1e-12));
                for (a, c) in z.iter().zip(&zref) {
                    assert!(close(*a, *c, 1e-14));
                }
                let bf = b as f64;
                for i in 0..b * d {
                    assert!(close(gx[i], 2.0 / bf * (dt.x[i] - dt.xr[i]), 1e-14));
                }
                for i in 0..b * l {
                    assert!(close(gmu[i], -dt.mu[i] / bf, 1e-14));
                    assert!(close(glv[i], (1.0 - dt.lv[i].exp()) / (2.0 * bf), 1e-12));
                }
            }
        }
    }

    #[test]
    fn parallel_path_with_large_batch_f32() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let (b, d, l) = (300, 784, 20); // forced parallel
        let dt = data(b, d, l);
        let (recon, kl, _) = naive(&dt, b);
        let f = |v: &Vec<f64>| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (x, xr, mu, lv, eps) = (f(&dt.x), f(&dt.xr), f(&dt.mu), f(&dt.lv), f(&dt.eps));
        let mut z = vec![0f32; b * l];
        let args = ElboArgs { x: &x, x_recon: &xr, mu: &mu, logvar: &lv, eps: Eps::Given(&eps), z: &mut z, grads: None };
        let r = elbo(Par { pool: Some(&pool), always: true }, ElboDims { batch: b, input_dim: d, latent_dim: l }, args).unwrap();
        assert!(close(r.recon, recon, 1e-5));
        assert!(close(r.kl, kl, 1e-5));
    }

    #[test]
    fn sampled_eps_is_standard_normal_and_thread_count_independent() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let (b, d, l) = (1000, 200, 20);
        let dt = data(b, d, l);
        let dims = ElboDims { batch: b, input_dim: d, latent_dim: l };
        let mut zs = Vec::new();
        for p in [Par::serial(), Par::on(&pool), Par { pool: Some(&pool), always: true }] {
            let mut z = vec![0.0; b * l];
            let args = ElboArgs { x: &dt.x, x_recon: &dt.xr, mu: &dt.mu, logvar: &dt.lv, eps: Eps::Sampled { call_seed: 7, out: None }, z: &mut z, grads: None };
            elbo(p, dims, args).unwrap();
            zs.push(z);
        }
        assert_eq!(zs[0], zs[1]);
        let eps: Vec<f64> = zs[0].iter().zip(&dt.mu).zip(&dt.lv).map(|((z, m), v)| (z - m) / (0.5 * v).exp()).collect();
        let n = eps.len() as f64;
        let mean = eps.iter().sum::<f64>() / n;
        let var = eps.iter().map(|e| (e - mean) * (e - mean)).sum::<f64>() / n;
        assert!(mean.abs() < 6.0 / n.sqrt(), "mean {mean}");
        assert!((var - 1.0).abs() < 6.0 * (2.0 / n).sqrt(), "var {var}");
    }

    #[test]
    fn wrong_lengths_are_errors_not_panics() {
        let dt = data(4, 10, 3);
        let mut z = vec![0.0; 4 * 3 - 1];
        let args = ElboArgs { x: &dt.x, x_recon: &dt.xr, mu: &dt.mu, logvar: &dt.lv, eps: Eps::Given(&dt.eps), z: &mut z, grads: None };
        let e = elbo(Par::serial(), ElboDims { batch: 4, input_dim: 10, latent_dim: 3 }, args).unwrap_err();
        assert!(e.contains("z has 11 elements"), "{e}");
        let mut z = vec![0.0; 12];
        let args = ElboArgs { x: &dt.x, x_recon: &dt.xr, mu: &dt.mu, logvar: &dt.lv, eps: Eps::Given(&dt.eps), z: &mut z, grads: None };
        assert!(elbo(Par::serial(), ElboDims { batch: 0, input_dim: 10, latent_dim: 3 }, args).is_err());
    }

    fn simds() -> Vec<Simd> {
        let mut v = vec![Simd::Baseline];
        if Simd::detect() == Simd::Avx2 {
            v.push(Simd::Avx2);
        }
        v
    }

    /// mu ≈ ±1e-7, logvar ≈ ±1e-6: KL ~ 1e-13, where the textbook form's O(1) summands cancel.
    /// The kernel's nonnegative form must keep ≥ 12 correct digits (float64) against a compensated
    /// sum of a series evaluation; the textbook form, evaluated the plain way in float64 on the
    /// same data, must not (so the test data do exercise the cancellation).
    #[test]
    fn kl_near_zero_keeps_12_digits() {
        use crate::testutil::{expm1mx_ref, rel, sum_comp, Lcg};
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for &(b, d, l) in &[(128usize, 7usize, 20usize), (1000, 3, 33), (1, 1, 1), (5, 9, 3)] {
            let mut g = Lcg(b as u64 * 31 + l as u64);
            let x = g.vec(b * d, |g| g.next());
            let xr = g.vec(b * d, |g| g.next());
            let mu = g.vec(b * l, |g| g.signed(0.0, 1e-7));
            let lv = g.vec(b * l, |g| g.signed(1e-8, 1e-6));
            let eps = g.vec(b * l, |g| g.signed(0.5, 2.0));
            let want = 0.5 * sum_comp(mu.iter().zip(&lv).map(|(m, v)| m * m + expm1mx_ref(*v))) / b as f64;
            assert!(want > 0.0 && want < 1e-11, "{want}");
            let textbook = -0.5 * mu.iter().zip(&lv).map(|(m, v)| 1.0 + v - m * m - v.exp()).sum::<f64>() / b as f64;
            if b * l >= 20 {
                assert!(rel(textbook, want) > 1e-9, "the textbook form should lose digits here: {textbook} vs {want}");
            }
            let dims = ElboDims { batch: b, input_dim: d, latent_dim: l };
            for simd in simds() {
                for p in [Par::serial(), Par { pool: Some(&pool), always: true }] {
                    let mut z = vec![0.0; b * l];
                    let (mut gx, mut gm, mut gl) = (vec![0.0; b * d], vec![0.0; b * l], vec![0.0; b * l]);
                    for grad in [false, true] {
                        let grads = grad.then(|| ElboGrads { x_recon: &mut gx[..], mu: &mut gm[..], logvar: &mut gl[..] });
                        let args = ElboArgs { x: &x, x_recon: &xr, mu: &mu, logvar: &lv, eps: Eps::Given(&eps), z: &mut z, grads };
                        let r = elbo_on(p, dims, args, simd).unwrap();
                        let e = rel(r.kl, want);
                        eprintln!("KL near 0, B={b} L={l} {simd:?} grad={grad}: {:.17e} vs {want:.17e}, relative error {e:.1e} (textbook form: {:.1e})", r.kl, rel(textbook, want));
                        assert!(e < 1e-12, "{simd:?} grad={grad}: kl {} vs {want} ({e:e})", r.kl);
                    }
                }
            }
            // float32: the same data rounded to f32, against the reference on those values
            let f = |v: &Vec<f64>| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let (x32, xr32, mu32, lv32, eps32) = (f(&x), f(&xr), f(&mu), f(&lv), f(&eps));
            let want32 = 0.5 * sum_comp(mu32.iter().zip(&lv32).map(|(m, v)| (*m as f64).powi(2) + expm1mx_ref(*v as f64))) / b as f64;
            for simd in simds() {
                let mut z = vec![0f32; b * l];
                let args = ElboArgs { x: &x32, x_recon: &xr32, mu: &mu32, logvar: &lv32, eps: Eps::Given(&eps32), z: &mut z, grads: None };
                let r = elbo_on(Par::serial(), dims, args, simd).unwrap();
                assert!(rel(r.kl, want32) < 2e-6, "f32 {simd:?}: kl {} vs {want32}", r.kl);
            }
        }
    }

    /// logvar near 0 (±[1e-8, 1e-6)) mixed with exact 0, -0, ±0.3, tiny, boundary (|v| ≈ ln2) and
    /// large values: grad_logvar = -(e^logvar - 1)/(2B) must be within a few ulps (relative, per
    /// element) of -expm1(logvar)/(2B) computed in f64 (float32: of that value rounded to f32), on
    /// both instruction paths, serial and rayon, every vector tail (B·L not a multiple of 4 or 16).
    /// The form (1 - e^logvar)/(2B), evaluated in f64 on the same data, must miss that bound by far
    /// (the data do exercise the cancellation).
    /// `ulps` (units of T::EPSILON, relative): the bound for |logvar| < 0.69 (n = 0: e^v - 1 = f + v,
    /// cancelling by ≤ ~2) and elsewhere (s² - 1, cancelling by ≤ 2 but s carries its own ~1 ulp,
    /// doubled in s²); returns the worst seen in each range.
    fn grad_logvar_near_zero<T: Real>(ulps: (f64, f64)) -> (f64, f64) {
        use crate::testutil::Lcg;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let is_f32 = std::mem::size_of::<T>() == 4;
        let big = if is_f32 { 20.0 } else { 700.0 };
        let ln2 = std::f64::consts::LN_2;
        let fixed = [0.0, -0.0, 0.3, -0.3, 1e-300, -1e-300, 1e-30, 0.69, -0.69, ln2 * (1.0 - 1e-6), -ln2 * (1.0 + 1e-6), ln2, -ln2, 0.7, -0.7, 2.0, -2.0, 20.0, -20.0, big, -big];
        let eps_t = if is_f32 { f32::EPSILON as f64 } else { f64::EPSILON };
        let mut worst = (0.0f64, 0.0f64);
        for &(b, d, l) in &[(128usize, 3usize, 20usize), (5, 9, 7), (1, 1, 1), (333, 2, 3), (64, 1, 33)] {
            let mut g = Lcg(b as u64 * 131 + l as u64);
            let mut lv: Vec<f64> = (0..b * l)
                .map(|i| match i % 5 {
                    0..=2 => g.signed(1e-8, 1e-6),
                    3 => fixed[(i / 5) % fixed.len()],
                    _ => g.signed(0.0, 1.0),
                })
                .collect();
            lv[0] = 1e-6;
            let cast = |v: &[f64]| v.iter().map(|&a| T::from_f64(a)).collect::<Vec<T>>();
            let x = cast(&g.vec(b * d, |g| g.next()));
            let xr = cast(&g.vec(b * d, |g| g.next()));
            let mu = cast(&g.vec(b * l, |g| g.signed(0.0, 1.0)));
            let eps = cast(&g.vec(b * l, |g| g.signed(0.5, 2.0)));
            let lvt = cast(&lv);
            let k = -0.5 / b as f64;
            // exact to ~1.5 f64 ulps: libm's expm1 (< 1 ulp) times 0.5/B; f32: rounded once more
            let want: Vec<f64> = lvt.iter().map(|v| v.to_f64().exp_m1() * k).map(|w| T::from_f64(w).to_f64()).collect();
            let textbook: Vec<f64> = lvt.iter().map(|v| (1.0 - v.to_f64().exp()) * -k).collect();
            let rel_err = |got: f64, want: f64| if got == want { 0.0 } else { ((got - want) / want).abs() };
            let textbook_worst = textbook.iter().zip(&want).map(|(t, w)| rel_err(*t, *w)).fold(0.0, f64::max);
            assert!(textbook_worst > 1e-11, "B={b} L={l}: 1 - e^lv should lose digits here ({textbook_worst:e})");
            let dims = ElboDims { batch: b, input_dim: d, latent_dim: l };
            for simd in simds() {
                for p in [Par::serial(), Par { pool: Some(&pool), always: true }] {
                    let mut z = vec![T::ZERO; b * l];
                    let (mut gx, mut gm, mut gl) = (vec![T::ZERO; b * d], vec![T::ZERO; b * l], vec![T::ZERO; b * l]);
                    let grads = Some(ElboGrads { x_recon: &mut gx[..], mu: &mut gm[..], logvar: &mut gl[..] });
                    let args = ElboArgs { x: &x, x_recon: &xr, mu: &mu, logvar: &lvt, eps: Eps::Given(&eps), z: &mut z, grads };
                    elbo_on(p, dims, args, simd).unwrap();
                    for i in 0..b * l {
                        let (got, w) = (gl[i].to_f64(), want[i]);
                        let e = rel_err(got, w) / eps_t;
                        let v = lvt[i].to_f64();
                        if v.abs() < 0.69 {
                            worst.0 = worst.0.max(e);
                        } else {
                            worst.1 = worst.1.max(e);
                        }
                        assert!(e <= if v.abs() < 0.69 { ulps.0 } else { ulps.1 }, "{simd:?} B={b} L={l}: grad_logvar[{i}] at logvar {:e}: {got:e} vs {w:e} ({e:.1} ulps)", lvt[i].to_f64());
                    }
                }
            }
        }
        worst
    }

    #[test]
    fn grad_logvar_near_zero_is_accurate_f64() {
        let w = grad_logvar_near_zero::<f64>((2.0, 4.0));
        eprintln!("grad_logvar f64: worst {:.2} ulps (|logvar| < 0.69), {:.2} ulps elsewhere", w.0, w.1);
    }

    #[test]
    fn grad_logvar_near_zero_is_accurate_f32() {
        let w = grad_logvar_near_zero::<f32>((2.0, 4.0));
        eprintln!("grad_logvar f32: worst {:.2} ulps (|logvar| < 0.69), {:.2} ulps elsewhere", w.0, w.1);
    }

    /// eps_out receives exactly the eps behind z, the same on every path and thread count, and
    /// keeping them changes nothing else.
    #[test]
    fn sampled_eps_out_is_the_eps_of_z() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let (b, d, l) = (300, 9, 7); // 5 RNG blocks, the last partial; odd L
        let dt = data(b, d, l);
        let dims = ElboDims { batch: b, input_dim: d, latent_dim: l };
        let mut first: Option<Vec<f64>> = None;
        for simd in simds() {
            for p in [Par::serial(), Par::on(&pool), Par { pool: Some(&pool), always: true }] {
                let mut z = vec![f64::NAN; b * l];
                let mut eps = vec![f64::NAN; b * l];
                let args = ElboArgs { x: &dt.x, x_recon: &dt.xr, mu: &dt.mu, logvar: &dt.lv, eps: Eps::Sampled { call_seed: 9, out: Some(&mut eps) }, z: &mut z, grads: None };
                let r1 = elbo_on(p, dims, args, simd).unwrap();
                for i in 0..b * l {
                    let want = dt.mu[i] + (0.5 * dt.lv[i]).exp() * eps[i];
                    assert!((z[i] - want).abs() <= 4.0 * f64::EPSILON * (dt.mu[i].abs() + (want - dt.mu[i]).abs()), "z[{i}] {} vs {want}", z[i]);
                }
                match &first {
                    None => first = Some(eps.clone()),
                    Some(f) => assert_eq!(f, &eps, "eps depend on the path"),
                }
                let mut z2 = vec![0.0; b * l];
                let args = ElboArgs { x: &dt.x, x_recon: &dt.xr, mu: &dt.mu, logvar: &dt.lv, eps: Eps::Sampled { call_seed: 9, out: None }, z: &mut z2, grads: None };
                let r2 = elbo_on(p, dims, args, simd).unwrap();
                assert_eq!((z2, r2), (z, r1));
            }
        }
        let mut other = vec![0.0; b * l];
        let mut z = vec![0.0; b * l];
        let args = ElboArgs { x: &dt.x, x_recon: &dt.xr, mu: &dt.mu, logvar: &dt.lv, eps: Eps::Sampled { call_seed: 10, out: Some(&mut other) }, z: &mut z, grads: None };
        elbo(Par::serial(), dims, args).unwrap();
        let same = first.unwrap().iter().zip(&other).filter(|(a, c)| a == c).count();
        assert_eq!(same, 0, "another call seed must draw other eps");
        let mut short = vec![0.0; b * l - 1];
        let args = ElboArgs { x: &dt.x, x_recon: &dt.xr, mu: &dt.mu, logvar: &dt.lv, eps: Eps::Sampled { call_seed: 1, out: Some(&mut short) }, z: &mut z, grads: None };
        assert!(elbo(Par::serial(), dims, args).unwrap_err().contains("eps_out"));
    }

    #[test]
    fn call_seeds_differ_between_calls_and_seeds() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in [0u64, 1, 2, 12345] {
            for k in 1..=1000u64 {
                assert!(seen.insert(call_seed(seed, k)), "repeated call seed at seed {seed}, call {k}");
            }
        }
    }
}
