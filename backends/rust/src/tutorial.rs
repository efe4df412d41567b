//! The tutorial's own Rust (backend `rust-tutorial`): the ELBO written as its author plausibly
//! wrote it, with idiomatic ndarray expressions that allocate a temporary array per operation. It
//! is here to test claims C4 ("Rust (ndarray) 0.0036 ms per call") and C9 ("hand-written SIMD a
//! further 2x over ndarray") against the fused kernels of `crate::elbo`, not to be fast.
//!
//! Deliberately kept as written: no fusion, no reuse of buffers, libm `exp` through `mapv`, two
//! exps per latent (`exp(logvar/2)` for z, `exp(logvar)` for the KL), single thread. What it
//! allocates per call (B×D twice, B×L five or six times):
//!   std = exp(logvar/2)           [B,L]     eps (sampled)            [B,L]
//!   std * eps                     [B,L]     mu + (std * eps) = z     [B,L]
//!   x - x_recon                   [B,D]     (x - x_recon)²           [B,D]
//!   1 + logvar                    [B,L]     mu²                      [B,L]    exp(logvar) [B,L]
//! z is then copied into the caller's output buffer (`assign`): the caller owns z (NumPy array),
//! so the temporary has to be copied in; that copy is part of what the idiom costs.
//!
//! eps=sampled: a fresh [B,L] array of standard normals each call, drawn the way
//! ndarray-rand's `Array::random_using(shape, StandardNormal, &mut rng)` draws it (that function
//! is exactly `Array::from_shape_simple_fn(shape, || dist.sample(rng))`; ndarray-rand 0.16 pins
//! rand 0.9, so it is written out here rather than pulling in a second rand), with rand_distr's
//! StandardNormal (ziggurat) in the case dtype and rand's `StdRng` (ChaCha12, the generator
//! behind `rand::rng()` / `thread_rng()`, which `Array::random` uses), seeded once per case.
//! The lab adds one thing outside the tutorial's code: with `eps_out`, the drawn array is copied
//! out (one [B,L] copy per call) so the lab can check z exactly.
//!
//! The KL term is the tutorial's `-0.5 * (1 + logvar - mu² - exp(logvar)).sum() / B`, kept as
//! written although it cancels: near KL = 0 its summands are O(1) and their sum O(KL), so it loses
//! ~8 digits there (the fused kernels use the nonnegative form, see `crate::elbo`). That is the
//! tutorial code's own accuracy, which the lab records, not a bug of the lab's.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::elbo::{ElboDims, ElboResult};

/// The generator of a `rust-tutorial` case (one per prepared case, advanced by every call).
pub fn tutorial_rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn views<'a, T>(
    dims: ElboDims,
    x: &'a [T],
    x_recon: &'a [T],
    mu: &'a [T],
    logvar: &'a [T],
) -> Result<[ArrayView2<'a, T>; 4], String> {
    let ElboDims { batch: b, input_dim: d, latent_dim: l } = dims;
    let v = |name: &str, s: &'a [T], shape: (usize, usize)| {
        ArrayView2::from_shape(shape, s).map_err(|e| format!("{name}: {e} (expected {shape:?}, got {} elements)", s.len()))
    };
    Ok([v("x", x, (b, d))?, v("x_recon", x_recon, (b, d))?, v("mu", mu, (b, l))?, v("logvar", logvar, (b, l))?])
}

macro_rules! tutorial_elbo {
    ($name:ident, $t:ty) => {
        /// The tutorial's ELBO in
        #[doc = stringify!($t)]
        /// : eps given (`Some`) or drawn from `rng` into a fresh array (`None`, then copied into
        /// `eps_out` when given); z is written into `z_out`. Errors (never panics) on
        /// inconsistent lengths.
        #[allow(clippy::too_many_arguments)]
        pub fn $name(
            dims: ElboDims,
            x: &[$t],
            x_recon: &[$t],
            mu: &[$t],
            logvar: &[$t],
            eps: Option<&[$t]>,
            rng: &mut StdRng,
            z_out: &mut [$t],
            eps_out: Option<&mut [$t]>,
        ) -> Result<ElboResult, String> {
            let ElboDims { batch: b, latent_dim: l, .. } = dims;
            if b == 0 || dims.input_dim == 0 || l == 0 {
                return Err(format!("empty dimensions {dims:?}"));
            }
            let [x, x_recon, mu, logvar] = views(dims, x, x_recon, mu, logvar)?;
            let mut z_out = ArrayViewMut2::from_shape((b, l), z_out).map_err(|e| format!("z: {e}"))?;
            let mut eps_out = match eps_out {
                Some(o) => Some(ArrayViewMut2::from_shape((b, l), o).map_err(|e| format!("eps_out: {e}"))?),
                None => None,
            };
            let batch = b as $t;

            // --- the tutorial's kernel, as written ---
            let std = logvar.mapv(|v| (0.5 * v).exp());
            let z = match eps {
                Some(e) => {
                    let eps = ArrayView2::from_shape((b, l), e).map_err(|e| format!("eps: {e}"))?;
                    &mu + &(&std * &eps)
                }
                None => {
                    let eps: Array2<$t> = Array2::from_shape_simple_fn((b, l), || StandardNormal.sample(&mut *rng));
                    if let Some(o) = eps_out.as_mut() {
                        o.assign(&eps); // the lab's addition: expose the eps drawn
                    }
                    &mu + &(&std * &eps)
                }
            };
            let recon = -((&x - &x_recon).mapv(|v| v * v).sum()) / batch;
            let kl = -0.5 * (1.0 + &logvar - &mu.mapv(|m| m * m) - &logvar.mapv(<$t>::exp)).sum() / batch;
            let elbo = recon - kl;
            // --- end ---

            z_out.assign(&z);
            Ok(ElboResult { recon: recon as f64, kl: kl as f64, elbo: elbo as f64 })
        }
    };
}

tutorial_elbo!(elbo_f64, f64);
tutorial_elbo!(elbo_f32, f32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_formula_and_samples_normals() {
        let (b, d, l) = (9, 13, 5);
        let dims = ElboDims { batch: b, input_dim: d, latent_dim: l };
        let f = |n: usize, k: f64| (0..n).map(|i| (i as f64 * k).sin()).collect::<Vec<f64>>();
        let (x, xr, mu, lv, eps) = (f(b * d, 0.3), f(b * d, 0.7), f(b * l, 0.1), f(b * l, 0.2), f(b * l, 0.5));
        let mut rng = tutorial_rng(1);
        let mut z = vec![0.0; b * l];
        let r = elbo_f64(dims, &x, &xr, &mu, &lv, Some(&eps), &mut rng, &mut z, None).unwrap();
        let sq: f64 = x.iter().zip(&xr).map(|(a, c)| (a - c) * (a - c)).sum();
        let kl: f64 = mu.iter().zip(&lv).map(|(m, v)| 1.0 + v - m * m - v.exp()).sum();
        assert!((r.recon + sq / b as f64).abs() < 1e-12);
        assert!((r.kl + 0.5 * kl / b as f64).abs() < 1e-12);
        assert_eq!(r.elbo, r.recon - r.kl);
        for i in 0..b * l {
            assert!((z[i] - (mu[i] + (0.5 * lv[i]).exp() * eps[i])).abs() < 1e-14);
        }
        // f32, sampled: z differs between calls, eps = (z - mu)/std looks standard normal
        let (b, l) = (400, 20);
        let dims = ElboDims { batch: b, input_dim: 3, latent_dim: l };
        let g = |n: usize, k: f64| (0..n).map(|i| ((i as f64 * k).sin() * 0.5) as f32).collect::<Vec<f32>>();
        let (x, xr, mu, lv) = (g(b * 3, 0.3), g(b * 3, 0.7), g(b * l, 0.1), g(b * l, 0.2));
        let mut z1 = vec![0f32; b * l];
        let mut z2 = vec![0f32; b * l];
        elbo_f32(dims, &x, &xr, &mu, &lv, None, &mut rng, &mut z1, None).unwrap();
        elbo_f32(dims, &x, &xr, &mu, &lv, None, &mut rng, &mut z2, None).unwrap();
        assert_ne!(z1, z2);
        let e: Vec<f64> = (0..b * l).map(|i| ((z1[i] - mu[i]) / (0.5 * lv[i]).exp()) as f64).collect();
        let n = e.len() as f64;
        let mean = e.iter().sum::<f64>() / n;
        let var = e.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        assert!(mean.abs() < 6.0 / n.sqrt() && (var - 1.0).abs() < 6.0 * (2.0 / n).sqrt(), "{mean} {var}");
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let dims = ElboDims { batch: 2, input_dim: 3, latent_dim: 2 };
        let mut rng = tutorial_rng(0);
        let mut z = vec![0.0; 4];
        let e = elbo_f64(dims, &[0.0; 5], &[0.0; 6], &[0.0; 4], &[0.0; 4], None, &mut rng, &mut z, None).unwrap_err();
        assert!(e.contains("x"), "{e}");
        let mut z = vec![0.0; 3];
        assert!(elbo_f64(dims, &[0.0; 6], &[0.0; 6], &[0.0; 4], &[0.0; 4], Some(&[0.0; 4]), &mut rng, &mut z, None).is_err());
    }
}
