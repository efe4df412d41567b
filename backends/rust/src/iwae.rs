//! `iwae`: the importance-weighted bound with K samples and a linear-Gaussian decoder.
//!
//! Per row b and sample k: z = mu + exp(logvar/2)*eps_k; the decoder mean m = z W + b is never
//! stored: for each block of 16 columns the mean is built in registers (L multiply-adds per lane)
//! and its squared residual against x is accumulated at once. log w_k is assembled in f64 and the
//! K weights of a row are combined with an online (streaming) log-sum-exp, so weights far below
//! exp's range (log w ~ -1e5) are exact.

use rayon::prelude::*;

use crate::par::{Par, row_ranges, IWAE_PAR_MIN_MACS};
use crate::real::{lanes_to_f64, Real, Simd, LANES};

pub const LOG_2PI: f64 = 1.837_877_066_409_345_5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IwaeDims {
    pub batch: usize,
    pub input_dim: usize,
    pub latent_dim: usize,
    pub samples: usize,
}

pub struct IwaeArgs<'a, T> {
    /// [B, D]
    pub x: &'a [T],
    /// [B, L]
    pub mu: &'a [T],
    /// [B, L]
    pub logvar: &'a [T],
    /// [K, B, L]
    pub eps: &'a [T],
    /// [L, D]
    pub dec_w: &'a [T],
    /// [D]
    pub dec_b: &'a [T],
}

impl<T> IwaeArgs<'_, T> {
    pub fn validate(&self, dims: IwaeDims) -> Result<(), String> {
        let IwaeDims { batch: b, input_dim: d, latent_dim: l, samples: k } = dims;
        if b == 0 || d == 0 || l == 0 || k == 0 {
            return Err(format!("empty dimensions (batch={b}, input_dim={d}, latent_dim={l}, samples={k})"));
        }
        for (name, got, want) in [
            ("x", self.x.len(), b * d),
            ("mu", self.mu.len(), b * l),
            ("logvar", self.logvar.len(), b * l),
            ("eps", self.eps.len(), k * b * l),
            ("dec_w", self.dec_w.len(), l * d),
            ("dec_b", self.dec_b.len(), d),
        ] {
            if got != want {
                return Err(format!("{name} has {got} elements, expected {want}"));
            }
        }
        Ok(())
    }
}

/// Online log-sum-exp: the running max and the sum of exp(v - max).
#[derive(Clone, Copy, Debug)]
pub struct LogSumExp {
    max: f64,
    sum: f64,
}

impl Default for LogSumExp {
    fn default() -> Self {
        LogSumExp { max: f64::NEG_INFINITY, sum: 0.0 }
    }
}

impl LogSumExp {
    #[inline]
    pub fn push(&mut self, v: f64) {
        if v > self.max {
            // first value: exp(-inf - v) = 0, so sum becomes 1
            self.sum = self.sum * (self.max - v).exp() + 1.0;
            self.max = v;
        } else {
            self.sum += (v - self.max).exp();
        }
    }
    #[inline]
    pub fn value(&self) -> f64 {
        self.max + self.sum.ln()
    }
}

/// Σ over rows [r0, r1) of (logsumexp_k log w_bk − log K).
#[inline(always)]
fn rows_impl<T: Real>(a: &IwaeArgs<'_, T>, dims: IwaeDims, r0: usize, r1: usize, z: &mut [T]) -> f64 {
    let IwaeDims { batch: b, input_dim: d, latent_dim: l, samples: k } = dims;
    let half = T::from_f64(0.5);
    let const_term = d as f64 * LOG_2PI;
    let log_k = (k as f64).ln();
    let mut total = 0.0f64;
    let (bias_c, bias_t) = a.dec_b.as_chunks::<LANES>();
    let full = bias_c.len() * LANES;
    for row in r0..r1 {
        let x = &a.x[row * d..(row + 1) * d];
        let (x_c, x_t) = x.as_chunks::<LANES>();
        let mu = &a.mu[row * l..(row + 1) * l];
        let lv = &a.logvar[row * l..(row + 1) * l];
        let sum_lv: f64 = lv.iter().map(|v| v.to_f64()).sum();
        let mut lse = LogSumExp::default();
        for s in 0..k {
            let eps = &a.eps[(s * b + row) * l..(s * b + row + 1) * l];
            let (mut zz, mut ee) = (0.0f64, 0.0f64);
            for j in 0..l {
                let e = eps[j];
                let zj = mu[j] + (half * lv[j]).exp() * e;
                z[j] = zj;
                zz += (zj * zj).to_f64();
                ee += (e * e).to_f64();
            }
            // residual sum of squares of x against z W + b, 16 columns at a time
            let mut acc = [T::ZERO; LANES];
            for (c, (xb, bb)) in x_c.iter().zip(bias_c).enumerate() {
                let mut m = *bb;
                for j in 0..l {
                    let zj = z[j];
                    let w = &a.dec_w[j * d + c * LANES..j * d + c * LANES + LANES];
                    for i in 0..LANES {
                        m[i] += zj * w[i];
                    }
                }
                for i in 0..LANES {
                    let r = xb[i] - m[i];
                    acc[i] += r * r;
                }
            }
            let mut tail = T::ZERO;
            for (t, (xv, bv)) in x_t.iter().zip(bias_t).enumerate() {
                let col = full + t;
                let mut m = *bv;
                for j in 0..l {
                    m += z[j] * a.dec_w[j * d + col];
                }
                let r = *xv - m;
                tail += r * r;
            }
            let rss = lanes_to_f64(&acc) + tail.to_f64();
            // log N(x; m, I) + log N(z; 0, I) - log N(z; mu, σ²) with (z-mu)/σ = eps
            let log_w = -0.5 * (rss + zz - ee - sum_lv + const_term);
            lse.push(log_w);
        }
        total += lse.value() - log_k;
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn rows_avx2<T: Real>(a: &IwaeArgs<'_, T>, dims: IwaeDims, r0: usize, r1: usize, z: &mut [T]) -> f64 {
    rows_impl(a, dims, r0, r1, z)
}

fn run_rows<T: Real>(a: &IwaeArgs<'_, T>, dims: IwaeDims, r0: usize, r1: usize, simd: Simd) -> f64 {
    let mut z = vec![T::ZERO; dims.latent_dim];
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Simd::Avx2 is only returned when the CPU reports avx2 and fma.
        Simd::Avx2 => unsafe { rows_avx2(a, dims, r0, r1, &mut z) },
        _ => rows_impl(a, dims, r0, r1, &mut z),
    }
}

/// The IWAE bound of one batch (serial below IWAE_PAR_MIN_MACS or with one thread).
pub fn iwae<T: Real>(par: Par<'_>, dims: IwaeDims, args: IwaeArgs<'_, T>) -> Result<f64, String> {
    iwae_on(par, dims, args, Simd::detect())
}

/// `iwae` on a given instruction set (tests run both; `Simd::Avx2` only where the CPU has it).
pub(crate) fn iwae_on<T: Real>(par: Par<'_>, dims: IwaeDims, args: IwaeArgs<'_, T>, simd: Simd) -> Result<f64, String> {
    args.validate(dims)?;
    if simd == Simd::Avx2 && Simd::detect() != Simd::Avx2 {
        return Err("this CPU has no avx2+fma".into());
    }
    let b = dims.batch;
    let work = dims.samples * b * dims.latent_dim * dims.input_dim;
    let total = match par.pool_for(work, IWAE_PAR_MIN_MACS) {
        None => run_rows(&args, dims, 0, b, simd),
        Some(p) => {
            // more chunks than threads: rows near the end of the batch cost the same, but a
            // shared 2-core VM is rarely fair, so let rayon balance a few pieces
            let ranges = row_ranges(b, 4 * p.current_num_threads(), 1);
            p.install(|| ranges.par_iter().map(|&(r0, r1)| run_rows(&args, dims, r0, r1, simd)).sum())
        }
    };
    Ok(total / b as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &IwaeArgs<'_, f64>, dims: IwaeDims) -> f64 {
        let IwaeDims { batch: b, input_dim: d, latent_dim: l, samples: k } = dims;
        let mut total = 0.0;
        for row in 0..b {
            let mut lw = vec![];
            for s in 0..k {
                let z: Vec<f64> = (0..l)
                    .map(|j| a.mu[row * l + j] + (0.5 * a.logvar[row * l + j]).exp() * a.eps[(s * b + row) * l + j])
                    .collect();
                let mut rss = 0.0;
                for c in 0..d {
                    let m: f64 = a.dec_b[c] + (0..l).map(|j| z[j] * a.dec_w[j * d + c]).sum::<f64>();
                    rss += (a.x[row * d + c] - m).powi(2);
                }
                let log_px = -0.5 * rss - 0.5 * d as f64 * LOG_2PI;
                let log_pz = -0.5 * z.iter().map(|v| v * v).sum::<f64>() - 0.5 * l as f64 * LOG_2PI;
                let e2: f64 = (0..l).map(|j| a.eps[(s * b + row) * l + j].powi(2)).sum();
                let slv: f64 = (0..l).map(|j| a.logvar[row * l + j]).sum();
                let log_qz = -0.5 * e2 - 0.5 * slv - 0.5 * l as f64 * LOG_2PI;
                lw.push(log_px + log_pz - log_qz);
            }
            let m = lw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            total += m + lw.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - (k as f64).ln();
        }
        total / b as f64
    }

    fn gen(n: usize, seed: &mut u64, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                scale * (((*seed >> 11) as f64) / ((1u64 << 53) as f64) - 0.5)
            })
            .collect()
    }

    #[test]
    fn matches_naive_and_is_stable() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for &(b, d, l, k, xscale) in &[(1usize, 37usize, 3usize, 1usize, 1.0), (7, 50, 4, 8, 1.0), (64, 100, 6, 5, 1.0), (9, 40, 3, 4, 400.0)] {
            let mut s = 1u64;
            let x = gen(b * d, &mut s, xscale);
            let (mu, lv, eps) = (gen(b * l, &mut s, 2.0), gen(b * l, &mut s, 1.0), gen(k * b * l, &mut s, 3.0));
            let (w, bias) = (gen(l * d, &mut s, 1.0), gen(d, &mut s, 1.0));
            let dims = IwaeDims { batch: b, input_dim: d, latent_dim: l, samples: k };
            let args = IwaeArgs { x: &x, mu: &mu, logvar: &lv, eps: &eps, dec_w: &w, dec_b: &bias };
            let want = naive(&args, dims);
            for p in [Par::serial(), Par::on(&pool), Par { pool: Some(&pool), always: true }] {
                let got = iwae(p, dims, IwaeArgs { ..args }).unwrap();
                assert!(got.is_finite(), "{got}");
                assert!((got - want).abs() <= 1e-10 * want.abs().max(1.0), "{got} vs {want}");
            }
            if xscale > 1.0 {
                assert!(want < -1000.0, "the stability case must overflow a naive exp: {want}");
            }
        }
    }

    #[test]
    fn lse_handles_extremes() {
        let mut l = LogSumExp::default();
        for v in [-1e6, -1e6 + 1.0, -1e6 - 3.0] {
            l.push(v);
        }
        let want = -1e6 + 1.0 + (1.0 + (-1.0f64).exp() + (-4.0f64).exp()).ln();
        assert!((l.value() - want).abs() < 1e-9);
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let v = vec![0.0f64; 10];
        let dims = IwaeDims { batch: 2, input_dim: 5, latent_dim: 1, samples: 1 };
        let args = IwaeArgs { x: &v, mu: &v, logvar: &v, eps: &v, dec_w: &v, dec_b: &v };
        assert!(iwae(Par::serial(), dims, args).is_err());
    }
}
