//! `vae_step`: one SGD step of the MLP VAE (encoder D→H ReLU →(mu, logvar), decoder L→H ReLU →D
//! logits, Bernoulli likelihood), forward, hand-written backward, update into new_* buffers.
//!
//! Matrix products go through ndarray's `general_mat_mul`, i.e. the `matrixmultiply` crate's
//! sgemm/dgemm (pure Rust, its own runtime AVX2/FMA dispatch, no BLAS). With a pool, products above
//! GEMM_PAR_MIN_MACS are split by rows of the output over the pool's threads. Element-wise work
//! is fused into one pass per layer; reductions (loss, bias gradients) accumulate in f64.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Axis, LinalgScalar};
use rayon::prelude::*;

use crate::par::{Par, GEMM_PAR_MIN_MACS};
use crate::real::{exph_kl_f64_k, Real};

/// The order of the ten parameters (as harness.workloads.VAE_PARAMS).
pub const VAE_PARAMS: [&str; 10] =
    ["enc_w", "enc_b", "mu_w", "mu_b", "logvar_w", "logvar_b", "dec_w", "dec_b", "out_w", "out_b"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VaeDims {
    pub batch: usize,
    pub input_dim: usize,
    pub hidden_dim: usize,
    pub latent_dim: usize,
}

impl VaeDims {
    /// Shapes of the ten parameters, in VAE_PARAMS order.
    pub fn param_shapes(&self) -> [Vec<usize>; 10] {
        let (d, h, l) = (self.input_dim, self.hidden_dim, self.latent_dim);
        [vec![d, h], vec![h], vec![h, l], vec![l], vec![h, l], vec![l], vec![l, h], vec![h], vec![h, d], vec![d]]
    }
}

pub trait VaeReal: Real + LinalgScalar {}
impl VaeReal for f32 {}
impl VaeReal for f64 {}

/// Activations and their gradients, allocated once per prepared case.
pub struct VaeScratch<T> {
    dims: VaeDims,
    h1: Vec<T>,
    mu: Vec<T>,
    lv: Vec<T>,
    std: Vec<T>,
    z: Vec<T>,
    h3: Vec<T>,
    logits: Vec<T>,
    d_h3: Vec<T>,
    d_z: Vec<T>,
    d_mu: Vec<T>,
    d_lv: Vec<T>,
    d_h1: Vec<T>,
    colsum: Vec<f64>,
}

impl<T: VaeReal> VaeScratch<T> {
    pub fn new(dims: VaeDims) -> Self {
        let VaeDims { batch: b, input_dim: d, hidden_dim: h, latent_dim: l } = dims;
        let v = |n: usize| vec![T::ZERO; n];
        VaeScratch {
            dims,
            h1: v(b * h),
            mu: v(b * l),
            lv: v(b * l),
            std: v(b * l),
            z: v(b * l),
            h3: v(b * h),
            logits: v(b * d),
            d_h3: v(b * h),
            d_z: v(b * l),
            d_mu: v(b * l),
            d_lv: v(b * l),
            d_h1: v(b * h),
            colsum: vec![0.0; d.max(h).max(l)],
        }
    }
}

pub struct VaeArgs<'a, T> {
    pub x: &'a [T],
    pub eps: &'a [T],
    pub params: [&'a [T]; 10],
    pub lr: T,
    pub grads: [&'a mut [T]; 10],
    pub new_params: [&'a mut [T]; 10],
}

fn view<'a, T>(s: &'a [T], r: usize, c: usize, name: &str) -> Result<ArrayView2<'a, T>, String> {
    ArrayView2::from_shape((r, c), s).map_err(|e| format!("{name}: {e}"))
}

fn view_mut<'a, T>(s: &'a mut [T], r: usize, c: usize, name: &str) -> Result<ArrayViewMut2<'a, T>, String> {
    ArrayViewMut2::from_shape((r, c), s).map_err(|e| format!("{name}: {e}"))
}

/// c = a·b + beta·c, split by rows of c over the pool when the product is large enough.
fn gemm<T: VaeReal>(par: Par<'_>, a: ArrayView2<'_, T>, b: ArrayView2<'_, T>, beta: T, mut c: ArrayViewMut2<'_, T>) {
    let (m, k) = a.dim();
    let n = b.ncols();
    match par.pool_for(m * n * k, GEMM_PAR_MIN_MACS) {
        Some(p) if m >= 2 => {
            let rows = m.div_ceil(p.current_num_threads());
            let parts: Vec<_> = a.axis_chunks_iter(Axis(0), rows).zip(c.axis_chunks_iter_mut(Axis(0), rows)).collect();
            p.install(|| {
                parts.into_par_iter().for_each(|(a_part, mut c_part)| general_mat_mul(T::ONE, &a_part, &b, beta, &mut c_part));
            });
        }
        _ => general_mat_mul(T::ONE, &a, &b, beta, &mut c),
    }
}

/// Column sums of a [rows, cols] matrix into `out`, accumulated in f64.
fn col_sums<T: Real>(m: &[T], cols: usize, acc: &mut [f64], out: &mut [T]) {
    let acc = &mut acc[..cols];
    acc.iter_mut().for_each(|a| *a = 0.0);
    for row in m.chunks_exact(cols) {
        for (a, v) in acc.iter_mut().zip(row) {
            *a += v.to_f64();
        }
    }
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = T::from_f64(*a);
    }
}

/// Adds the bias to every row and applies ReLU (when `relu`).
fn bias_act<T: Real>(m: &mut [T], bias: &[T], relu: bool) {
    let cols = bias.len();
    for row in m.chunks_exact_mut(cols) {
        for (v, bv) in row.iter_mut().zip(bias) {
            let s = *v + *bv;
            *v = if relu { s.max(T::ZERO) } else { s };
        }
    }
}

#[inline(always)]
fn softplus<T: Real>(v: T) -> T {
    // log(1 + e^v) = max(v, 0) + log1p(e^-|v|), no overflow
    v.max(T::ZERO) + (-v.abs()).exp().ln_1p()
}

#[inline(always)]
fn sigmoid<T: Real>(v: T) -> T {
    if v >= T::ZERO {
        (T::ONE + (-v).exp()).recip()
    } else {
        let e = v.exp();
        e * (T::ONE + e).recip()
    }
}

/// One training step; returns the loss (negative ELBO averaged over the batch).
pub fn vae_step<T: VaeReal>(par: Par<'_>, s: &mut VaeScratch<T>, args: VaeArgs<'_, T>) -> Result<f64, String> {
    let dims = s.dims;
    let VaeDims { batch: b, input_dim: d, hidden_dim: h, latent_dim: l } = dims;
    if b == 0 || d == 0 || h == 0 || l == 0 {
        return Err(format!("empty dimensions {dims:?}"));
    }
    if args.x.len() != b * d || args.eps.len() != b * l {
        return Err(format!("x/eps have {}/{} elements, expected {}/{}", args.x.len(), args.eps.len(), b * d, b * l));
    }
    for (i, shape) in dims.param_shapes().iter().enumerate() {
        let n: usize = shape.iter().product();
        let name = VAE_PARAMS[i];
        if args.params[i].len() != n || args.grads[i].len() != n || args.new_params[i].len() != n {
            return Err(format!("{name}, grad_{name} or new_{name} does not have {n} elements"));
        }
    }
    let [enc_w, enc_b, mu_w, mu_b, lv_w, lv_b, dec_w, dec_b, out_w, out_b] = args.params;
    let [g_enc_w, g_enc_b, g_mu_w, g_mu_b, g_lv_w, g_lv_b, g_dec_w, g_dec_b, g_out_w, g_out_b] = args.grads;
    let inv_b = T::from_f64(1.0 / b as f64);
    let half = T::from_f64(0.5);
    let zero = T::ZERO;

    let x = view(args.x, b, d, "x")?;
    // ---- forward
    gemm(par, x, view(enc_w, d, h, "enc_w")?, zero, view_mut(&mut s.h1, b, h, "h1")?);
    bias_act(&mut s.h1, enc_b, true);
    let h1 = view(&s.h1, b, h, "h1")?;
    gemm(par, h1, view(mu_w, h, l, "mu_w")?, zero, view_mut(&mut s.mu, b, l, "mu")?);
    bias_act(&mut s.mu, mu_b, false);
    gemm(par, h1, view(lv_w, h, l, "logvar_w")?, zero, view_mut(&mut s.lv, b, l, "logvar")?);
    bias_act(&mut s.lv, lv_b, false);
    // KL = (1/2)·Σ (mu² + (e^logvar - 1 - logvar)): nonnegative summands, e^v - 1 - v in f64
    // without cancellation (real::exph_kl_f64_k), instead of -(1/2)·Σ (1 + logvar - mu² - std²),
    // which loses ~8 digits of a KL near 0
    let mut kl = 0.0f64;
    for i in 0..b * l {
        let (m, v) = (s.mu[i], s.lv[i]);
        let sd = (half * v).exp();
        s.std[i] = sd;
        s.z[i] = m + sd * args.eps[i];
        let m64 = m.to_f64();
        kl += m64 * m64 + exph_kl_f64_k::<false>(v.to_f64()).1;
    }
    kl *= 0.5;
    gemm(par, view(&s.z, b, l, "z")?, view(dec_w, l, h, "dec_w")?, zero, view_mut(&mut s.h3, b, h, "h3")?);
    bias_act(&mut s.h3, dec_b, true);
    gemm(par, view(&s.h3, b, h, "h3")?, view(out_w, h, d, "out_w")?, zero, view_mut(&mut s.logits, b, d, "logits")?);
    // logits + bias, the likelihood and d_logits in one pass (d_logits overwrites logits)
    let mut rec = 0.0f64;
    for (lrow, xrow) in s.logits.chunks_exact_mut(d).zip(args.x.chunks_exact(d)) {
        let mut row = zero;
        for ((lg, xv), bv) in lrow.iter_mut().zip(xrow).zip(out_b) {
            let v = *lg + *bv;
            row += *xv * v - softplus(v);
            *lg = (sigmoid(v) - *xv) * inv_b;
        }
        rec += row.to_f64();
    }
    let loss = (kl - rec) / b as f64;

    // ---- backward
    let d_logits = view(&s.logits, b, d, "d_logits")?;
    let h3 = view(&s.h3, b, h, "h3")?;
    gemm(par, h3.t(), d_logits, zero, view_mut(g_out_w, h, d, "grad_out_w")?);
    col_sums(&s.logits, d, &mut s.colsum, g_out_b);
    gemm(par, d_logits, view(out_w, h, d, "out_w")?.t(), zero, view_mut(&mut s.d_h3, b, h, "d_h3")?);
    for (g, a) in s.d_h3.iter_mut().zip(&s.h3) {
        if *a <= zero {
            *g = zero;
        }
    }
    let d_h3 = view(&s.d_h3, b, h, "d_h3")?;
    gemm(par, view(&s.z, b, l, "z")?.t(), d_h3, zero, view_mut(g_dec_w, l, h, "grad_dec_w")?);
    col_sums(&s.d_h3, h, &mut s.colsum, g_dec_b);
    gemm(par, d_h3, view(dec_w, l, h, "dec_w")?.t(), zero, view_mut(&mut s.d_z, b, l, "d_z")?);
    // d(KL)/d(logvar) = (e^logvar - 1)/2 by expm1: sd² - 1 would cancel near logvar = 0
    // (relative error ~u/|logvar|)
    for i in 0..b * l {
        let (dz, sd, e) = (s.d_z[i], s.std[i], args.eps[i]);
        s.d_mu[i] = dz + s.mu[i] * inv_b;
        s.d_lv[i] = dz * (half * sd * e) + half * s.lv[i].exp_m1() * inv_b;
    }
    let d_mu = view(&s.d_mu, b, l, "d_mu")?;
    let d_lv = view(&s.d_lv, b, l, "d_logvar")?;
    gemm(par, h1.t(), d_mu, zero, view_mut(g_mu_w, h, l, "grad_mu_w")?);
    col_sums(&s.d_mu, l, &mut s.colsum, g_mu_b);
    gemm(par, h1.t(), d_lv, zero, view_mut(g_lv_w, h, l, "grad_logvar_w")?);
    col_sums(&s.d_lv, l, &mut s.colsum, g_lv_b);
    gemm(par, d_mu, view(mu_w, h, l, "mu_w")?.t(), zero, view_mut(&mut s.d_h1, b, h, "d_h1")?);
    gemm(par, d_lv, view(lv_w, h, l, "logvar_w")?.t(), T::ONE, view_mut(&mut s.d_h1, b, h, "d_h1")?);
    for (g, a) in s.d_h1.iter_mut().zip(&s.h1) {
        if *a <= zero {
            *g = zero;
        }
    }
    gemm(par, x.t(), view(&s.d_h1, b, h, "d_h1")?, zero, view_mut(g_enc_w, d, h, "grad_enc_w")?);
    col_sums(&s.d_h1, h, &mut s.colsum, g_enc_b);

    // ---- SGD update
    let grads: [&[T]; 10] = [g_enc_w, g_enc_b, g_mu_w, g_mu_b, g_lv_w, g_lv_b, g_dec_w, g_dec_b, g_out_w, g_out_b];
    for ((p, g), new) in args.params.iter().zip(grads).zip(args.new_params) {
        for ((nv, pv), gv) in new.iter_mut().zip(p.iter()).zip(g) {
            *nv = *pv - args.lr * *gv;
        }
    }
    Ok(loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gen(n: usize, seed: &mut u64, scale: f64, off: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                off + scale * (((*seed >> 11) as f64) / ((1u64 << 53) as f64) - 0.5)
            })
            .collect()
    }

    fn setup(dims: VaeDims) -> (Vec<f64>, Vec<f64>, Vec<Vec<f64>>) {
        let mut s = 3u64;
        let x = gen(dims.batch * dims.input_dim, &mut s, 1.0, 0.5);
        let eps = gen(dims.batch * dims.latent_dim, &mut s, 2.0, 0.0);
        let params = dims.param_shapes().iter().map(|sh| gen(sh.iter().product(), &mut s, 1.0, 0.0)).collect();
        (x, eps, params)
    }

    fn run(dims: VaeDims, x: &[f64], eps: &[f64], params: &[Vec<f64>], par: Par<'_>) -> (f64, Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let mut grads: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        let mut news: Vec<Vec<f64>> = grads.clone();
        let mut scratch = VaeScratch::new(dims);
        let p: [&[f64]; 10] = std::array::from_fn(|i| params[i].as_slice());
        let mut gi = grads.iter_mut();
        let g: [&mut [f64]; 10] = std::array::from_fn(|_| gi.next().unwrap().as_mut_slice());
        let mut ni = news.iter_mut();
        let n: [&mut [f64]; 10] = std::array::from_fn(|_| ni.next().unwrap().as_mut_slice());
        let loss = vae_step(par, &mut scratch, VaeArgs { x, eps, params: p, lr: 0.1, grads: g, new_params: n }).unwrap();
        (loss, grads, news)
    }

    #[test]
    fn gradients_match_finite_differences() {
        let dims = VaeDims { batch: 3, input_dim: 5, hidden_dim: 4, latent_dim: 2 };
        let (x, eps, params) = setup(dims);
        let (_, grads, news) = run(dims, &x, &eps, &params, Par::serial());
        for (i, p) in params.iter().enumerate() {
            for j in 0..p.len() {
                let h = 1e-6;
                let mut up = params.clone();
                up[i][j] += h;
                let mut dn = params.clone();
                dn[i][j] -= h;
                let fd = (run(dims, &x, &eps, &up, Par::serial()).0 - run(dims, &x, &eps, &dn, Par::serial()).0) / (2.0 * h);
                assert!((fd - grads[i][j]).abs() < 1e-6 * fd.abs().max(1.0), "{} [{j}]: fd {fd} vs {}", VAE_PARAMS[i], grads[i][j]);
                assert!((news[i][j] - (p[j] - 0.1 * grads[i][j])).abs() < 1e-15);
            }
        }
    }

    /// logvar_w = 0 and dec_w = 0, so logvar = logvar_b exactly (±[1e-8, 1e-6), 0, ±0.3) and
    /// d_z = 0: grad_logvar_b[j] = Σ_b (e^logvar_j - 1)/(2B) = expm1(logvar_j)/2, which must come
    /// out within a few ulps (relative) of libm's expm1 in f64 (float32: of the f32-rounded value),
    /// and the new logvar_b is logvar_b - lr·grad. sd² - 1 instead loses ~u/|logvar|.
    fn d_logvar_bias_near_zero<T: VaeReal>() -> f64 {
        let is_f32 = std::mem::size_of::<T>() == 4;
        let eps_t = if is_f32 { f32::EPSILON as f64 } else { f64::EPSILON };
        let dims = VaeDims { batch: 8, input_dim: 6, hidden_dim: 5, latent_dim: 9 };
        let (x, eps, mut params) = setup(dims);
        params[4].iter_mut().for_each(|w| *w = 0.0); // logvar_w
        params[6].iter_mut().for_each(|w| *w = 0.0); // dec_w
        params[5] = vec![1e-6, -1e-6, 3.7e-7, -2.1e-8, 0.0, 0.3, -0.3, 5e-7, -9.9e-7];
        let cast = |v: &[f64]| v.iter().map(|&a| T::from_f64(a)).collect::<Vec<T>>();
        let (xt, et) = (cast(&x), cast(&eps));
        let pt: Vec<Vec<T>> = params.iter().map(|p| cast(p)).collect();
        let mut grads: Vec<Vec<T>> = pt.iter().map(|p| vec![T::ZERO; p.len()]).collect();
        let mut news = grads.clone();
        let mut scratch = VaeScratch::new(dims);
        let p: [&[T]; 10] = std::array::from_fn(|i| pt[i].as_slice());
        let mut gi = grads.iter_mut();
        let g: [&mut [T]; 10] = std::array::from_fn(|_| gi.next().unwrap().as_mut_slice());
        let mut ni = news.iter_mut();
        let n: [&mut [T]; 10] = std::array::from_fn(|_| ni.next().unwrap().as_mut_slice());
        let lr = T::from_f64(0.1);
        vae_step(Par::serial(), &mut scratch, VaeArgs { x: &xt, eps: &et, params: p, lr, grads: g, new_params: n }).unwrap();
        let mut worst = 0.0f64;
        let mut textbook_worst = 0.0f64;
        for (j, v) in pt[5].iter().enumerate() {
            let v = v.to_f64();
            let want = T::from_f64(0.5 * v.exp_m1()).to_f64();
            let got = grads[5][j].to_f64();
            let e = if got == want { 0.0 } else { ((got - want) / want).abs() / eps_t };
            worst = worst.max(e);
            assert!(e <= 4.0, "grad_logvar_b[{j}] at logvar {v:e}: {got:e} vs {want:e} ({e:.1} ulps)");
            let new_want = pt[5][j] - lr * grads[5][j];
            assert_eq!(news[5][j].to_f64(), new_want.to_f64(), "new_logvar_b[{j}]");
            let sd = (0.5 * v).exp();
            if want != 0.0 {
                textbook_worst = textbook_worst.max(((0.5 * (sd * sd - 1.0) - want) / want).abs());
            }
        }
        assert!(textbook_worst > 1e-11, "sd² - 1 should lose digits on these data ({textbook_worst:e})");
        worst
    }

    #[test]
    fn d_logvar_bias_near_zero_is_accurate() {
        let w64 = d_logvar_bias_near_zero::<f64>();
        let w32 = d_logvar_bias_near_zero::<f32>();
        eprintln!("grad_logvar_b near logvar = 0: worst {w64:.2} ulps (f64), {w32:.2} ulps (f32)");
    }

    #[test]
    fn parallel_gemm_matches_serial() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let dims = VaeDims { batch: 65, input_dim: 120, hidden_dim: 90, latent_dim: 7 };
        let (x, eps, params) = setup(dims);
        let (l1, g1, n1) = run(dims, &x, &eps, &params, Par::serial());
        let (l2, g2, n2) = run(dims, &x, &eps, &params, Par { pool: Some(&pool), always: true });
        assert!((l1 - l2).abs() < 1e-12 * l1.abs());
        for (a, b) in g1.iter().flatten().zip(g2.iter().flatten()).chain(n1.iter().flatten().zip(n2.iter().flatten())) {
            assert!((a - b).abs() < 1e-12 * a.abs().max(1.0));
        }
    }
}
