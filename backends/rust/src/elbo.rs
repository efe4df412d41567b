//! `elbo` and `elbo_grad`: one fused pass over the rows, no temporaries.
//!
//! Per row b: the D loop reads x and x_recon once (16 independent accumulator lanes, so LLVM keeps
//! them in vector registers; with `elbo_grad` it also writes grad_x_recon in the same pass); the L
//! loop computes s = exp(logvar/2), z = mu + s*eps, the KL term with exp(logvar) = s*s, and the
//! latent gradients. Each row's lanes are summed in f64 and rows are accumulated in f64.

use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;

use crate::par::{Par, row_ranges, take_mut, ELBO_PAR_MIN_ELEMS, RNG_BLOCK};
use crate::real::{lanes_to_f64, Real, Simd, LANES};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElboDims {
    pub batch: usize,
    pub input_dim: usize,
    pub latent_dim: usize,
}

/// Where eps comes from: the caller's [B, L] array, or drawn inside the call.
#[derive(Clone, Copy, Debug)]
pub enum Eps<'a, T> {
    Given(&'a [T]),
    /// Standard normals from Xoshiro256++ (rand_xoshiro) through rand_distr's ziggurat
    /// StandardNormal; rows [k*64, (k+1)*64) use a generator seeded with `call_seed ^ k*φ`.
    Sampled { call_seed: u64 },
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
        if let Eps::Given(e) = self.eps {
            check_len("eps", e.len(), b * l)?;
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
    z: &'a mut [T],
    gx: &'a mut [T],
    gmu: &'a mut [T],
    glv: &'a mut [T],
}

/// Σ over the chunk's rows of Σ_d (x - x_recon)² and of Σ_l (1 + logvar - mu² - exp(logvar)).
#[inline(always)]
fn rows_impl<T: Real, const GRAD: bool>(c: &mut Chunk<'_, T>, simd: Simd) -> (f64, f64) {
    let (d, l) = (c.d, c.l);
    let two_inv_b = T::from_f64(2.0 * c.inv_b);
    let neg_inv_b = T::from_f64(-c.inv_b);
    let half_inv_b = T::from_f64(0.5 * c.inv_b);
    let mut sq_total = 0.0f64;
    let mut kl_total = 0.0f64;
    let mut rng: Option<Xoshiro256PlusPlus> = None;
    for r in 0..c.rows {
        // ---- the D loop: the memory-bound part (a separate function, see row_sq)
        let x = &c.x[r * d..(r + 1) * d];
        let xr = &c.xr[r * d..(r + 1) * d];
        let gx: &mut [T] = if GRAD { &mut c.gx[r * d..(r + 1) * d] } else { &mut [] };
        sq_total += row_sq_sel::<T, GRAD>(simd, x, xr, gx, two_inv_b);

        // ---- the L loop: z, KL, latent gradients, 8 lanes at a time with the branch-free exp
        let lat = r * l..(r + 1) * l;
        let row = c.first_row + r;
        if c.eps.is_none() && (rng.is_none() || row % RNG_BLOCK == 0) {
            rng = Some(block_rng(c.call_seed, row / RNG_BLOCK));
        }
        let eps_row = c.eps.map(|e| &e[lat.clone()]);
        let kl_row = latent_row::<T, GRAD>(
            &c.mu[lat.clone()],
            &c.lv[lat.clone()],
            eps_row,
            rng.as_mut(),
            &mut c.z[lat.clone()],
            if GRAD { &mut c.gmu[lat.clone()] } else { &mut [] },
            if GRAD { &mut c.glv[lat] } else { &mut [] },
            neg_inv_b,
            half_inv_b,
        );
        kl_total += kl_row;
    }
    (sq_total, kl_total)
}

const LL: usize = 8;

/// One row's latent part; returns Σ_l (1 + logvar - mu² - exp(logvar)) in f64.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn latent_row<T: Real, const GRAD: bool>(
    mu: &[T],
    lv: &[T],
    eps: Option<&[T]>,
    mut rng: Option<&mut Xoshiro256PlusPlus>,
    z: &mut [T],
    gmu: &mut [T],
    glv: &mut [T],
    neg_inv_b: T,
    half_inv_b: T,
) -> f64 {
    let half = T::from_f64(0.5);
    let (mu_c, mu_t) = mu.as_chunks::<LL>();
    let (lv_c, lv_t) = lv.as_chunks::<LL>();
    let (z_c, z_t) = z.as_chunks_mut::<LL>();
    let (gmu_c, gmu_t) = gmu.as_chunks_mut::<LL>();
    let (glv_c, glv_t) = glv.as_chunks_mut::<LL>();
    let (eps_c, eps_t): (&[[T; LL]], &[T]) = match eps {
        Some(e) => e.as_chunks::<LL>(),
        None => (&[], &[]),
    };
    let draw = |rng: &mut Option<&mut Xoshiro256PlusPlus>| match rng.as_deref_mut() {
        Some(g) => sample_normal::<T>(g),
        None => T::ZERO,
    };
    let mut acc = [T::ZERO; LL];
    for (i, (m, v)) in mu_c.iter().zip(lv_c).enumerate() {
        let e: [T; LL] = match eps_c.get(i) {
            Some(e) => *e,
            None => std::array::from_fn(|_| draw(&mut rng)),
        };
        let zr = &mut z_c[i];
        for j in 0..LL {
            let s = (half * v[j]).vexp();
            zr[j] = m[j] + s * e[j];
            acc[j] += T::ONE + v[j] - m[j] * m[j] - s * s;
        }
        if GRAD {
            let (gm, gl) = (&mut gmu_c[i], &mut glv_c[i]);
            for j in 0..LL {
                gm[j] = neg_inv_b * m[j];
                gl[j] = (T::ONE - v[j].vexp()) * half_inv_b;
            }
        }
    }
    let mut kl = lanes_to_f64(&acc);
    for j in 0..mu_t.len() {
        let (m, v) = (mu_t[j], lv_t[j]);
        let e = match eps_t.get(j) {
            Some(e) => *e,
            None => draw(&mut rng),
        };
        let s = (half * v).vexp();
        z_t[j] = m + s * e;
        kl += (T::ONE + v - m * m - s * s).to_f64();
        if GRAD {
            gmu_t[j] = neg_inv_b * m;
            glv_t[j] = (T::ONE - v.vexp()) * half_inv_b;
        }
    }
    kl
}

#[inline(always)]
fn sample_normal<T: Real>(g: &mut Xoshiro256PlusPlus) -> T {
    // f64 ziggurat for both dtypes: one code path, and float32 eps are exactly rounded normals
    let v: f64 = StandardNormal.sample(g);
    T::from_f64(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_avx2<T: Real, const GRAD: bool>(c: &mut Chunk<'_, T>) -> (f64, f64) {
    rows_impl::<T, GRAD>(c, Simd::Avx2)
}

/// Σ_d (x - x_recon)² of one row (and grad_x_recon = 2/B·(x - x_recon) when GRAD), in LANES
/// independent accumulators summed in f64 at the end of the row. Kept out of line in its own
/// target_feature function: inlined into the row loop, LLVM's SLP vectoriser gave up on it
/// (scalar vsubsd/vsubss in the disassembly); on its own it becomes 4 ymm accumulators
/// (vsubpd/vmulpd/vaddpd on ymm, checked with objdump on the release .so, see README).
#[inline(always)]
fn row_sq<T: Real, const GRAD: bool>(x: &[T], y: &[T], g: &mut [T], c: T) -> f64 {
    let (xc, xt) = x.as_chunks::<LANES>();
    let (yc, yt) = y.as_chunks::<LANES>();
    let mut acc = [T::ZERO; LANES];
    let mut tail = 0.0f64;
    if GRAD {
        let (gc, gt) = g.as_chunks_mut::<LANES>();
        for ((a, b), o) in xc.iter().zip(yc).zip(gc.iter_mut()) {
            let mut dd = [T::ZERO; LANES];
            for i in 0..LANES {
                dd[i] = a[i] - b[i];
            }
            for i in 0..LANES {
                acc[i] += dd[i] * dd[i];
            }
            for i in 0..LANES {
                o[i] = c * dd[i];
            }
        }
        for ((a, b), o) in xt.iter().zip(yt).zip(gt.iter_mut()) {
            let diff = *a - *b;
            tail += (diff * diff).to_f64();
            *o = c * diff;
        }
    } else {
        for (a, b) in xc.iter().zip(yc) {
            for i in 0..LANES {
                let diff = a[i] - b[i];
                acc[i] += diff * diff;
            }
        }
        for (a, b) in xt.iter().zip(yt) {
            let diff = *a - *b;
            tail += (diff * diff).to_f64();
        }
    }
    lanes_to_f64(&acc) + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
fn row_sq_avx2<T: Real, const GRAD: bool>(x: &[T], y: &[T], g: &mut [T], c: T) -> f64 {
    row_sq::<T, GRAD>(x, y, g, c)
}

#[inline(never)]
fn row_sq_base<T: Real, const GRAD: bool>(x: &[T], y: &[T], g: &mut [T], c: T) -> f64 {
    row_sq::<T, GRAD>(x, y, g, c)
}

#[inline(always)]
fn row_sq_sel<T: Real, const GRAD: bool>(simd: Simd, x: &[T], y: &[T], g: &mut [T], c: T) -> f64 {
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Simd::Avx2 is only returned when the CPU reports avx2 and fma.
        Simd::Avx2 => unsafe { row_sq_avx2::<T, GRAD>(x, y, g, c) },
        _ => row_sq_base::<T, GRAD>(x, y, g, c),
    }
}

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
                rows_impl::<T, true>(c, simd)
            } else {
                rows_impl::<T, false>(c, simd)
            }
        }
    }
}

/// The elbo (and with `grads`, elbo_grad) of one batch. Serial when `pool` is None, has one
/// thread, or the batch is below ELBO_PAR_MIN_ELEMS; otherwise rows are split over the pool.
pub fn elbo<T: Real>(
    par: Par<'_>,
    dims: ElboDims,
    args: ElboArgs<'_, T>,
) -> Result<ElboResult, String> {
    args.validate(dims)?;
    let ElboDims { batch: b, input_dim: d, latent_dim: l } = dims;
    let simd = Simd::detect();
    let inv_b = 1.0 / b as f64;
    let (eps, call_seed) = match args.eps {
        Eps::Given(e) => (Some(e), 0),
        Eps::Sampled { call_seed } => (None, call_seed),
    };
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
    let kl = -0.5 * klsum * inv_b;
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
            let args = ElboArgs { x: &dt.x, x_recon: &dt.xr, mu: &dt.mu, logvar: &dt.lv, eps: Eps::Sampled { call_seed: 7 }, z: &mut z, grads: None };
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
}
