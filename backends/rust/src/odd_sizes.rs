//! Every kernel at sizes that exercise every vector tail and block remainder (D = 784 is a
//! multiple of every SIMD width, so the lab's default sizes never do), against plain scalar f64
//! references: elbo, elbo_grad (also with sampled eps and eps_out), iwae, vae_step; float32 and
//! float64; serial, rayon above the threshold, rayon forced below it; the AVX2 and the baseline
//! instruction paths.
//!
//! Inputs are chosen so every element matters:
//! - elbo "exact" cases use values on a 1/4 grid with logvar = 0, so every sum is exact in both
//!   dtypes and compared with `==`: one skipped element or row changes recon/kl by at least 1/16
//!   of a unit. Outputs start as NaN, so an element never written fails too.
//! - the other cases use values bounded away from 0 (|x - x_recon| ≥ 0.1, |mu| ≥ 0.1,
//!   |logvar| ≥ 0.2, ...), so each element's share of a sum is far above the tolerance in
//!   float64 (≥ 1e-7 relative vs 1e-11) and every output element is compared on its own.

use rayon::ThreadPool;

use crate::elbo::{elbo_on, ElboArgs, ElboDims, ElboGrads, Eps};
use crate::iwae::{iwae_on, IwaeArgs, IwaeDims, LOG_2PI};
use crate::par::Par;
use crate::real::{Real, Simd};
use crate::testutil::{expm1mx_ref, sum_comp, Lcg};
use crate::vae::{vae_step, VaeArgs, VaeDims, VaeReal, VaeScratch};

const DS: [usize; 7] = [1, 3, 7, 9, 15, 17, 783];
const LS: [usize; 3] = [1, 5, 33];
const BS: [usize; 3] = [1, 7, 1000];
const KS: [usize; 2] = [1, 3];
const HS: [usize; 3] = [1, 5, 33];

fn simds() -> Vec<Simd> {
    let mut v = vec![Simd::Baseline];
    if Simd::detect() == Simd::Avx2 {
        v.push(Simd::Avx2);
    }
    v
}

fn pool() -> ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("a 2-thread pool")
}

/// serial; the pool above its threshold (B=1000, D=783 is above ELBO_PAR_MIN_ELEMS, and the
/// largest iwae/vae cases above theirs); the pool at any size.
fn pars(pool: &ThreadPool) -> [(&'static str, Par<'_>); 3] {
    [("serial", Par::serial()), ("pool", Par::on(pool)), ("forced", Par { pool: Some(pool), always: true })]
}

fn cast<T: Real>(v: &[f64]) -> Vec<T> {
    v.iter().map(|&a| T::from_f64(a)).collect()
}

fn wide<T: Real>(v: &[T]) -> Vec<f64> {
    v.iter().map(|a| a.to_f64()).collect()
}

fn seed(parts: &[usize]) -> Lcg {
    Lcg(parts.iter().fold(0x5EED_u64, |a, &p| a.wrapping_mul(1_000_003).wrapping_add(p as u64)))
}

/// Max over elements of |got - want|, relative to max(|want|) of the whole output (and 1e-300);
/// NaN (an element never written) is infinitely wrong.
fn max_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-300f64, |m, v| m.max(v.abs()));
    got.iter().zip(want).map(|(g, w)| if g.is_nan() { f64::INFINITY } else { (g - w).abs() / scale }).fold(0.0, f64::max)
}

fn is_f32<T: Real>() -> bool {
    std::mem::size_of::<T>() == 4
}

// ------------------------------------------------------------------------------------ elbo

/// Grid values: exact in float32 and float64, and so are their differences, squares and sums.
fn grid(g: &mut Lcg, lo: f64, n: usize) -> Vec<f64> {
    g.vec(n, |g| lo + (g.next() * 16.0).floor() / 4.0)
}

fn elbo_exact<T: Real>() {
    let pool = pool();
    let nan = T::from_f64(f64::NAN);
    for &b in &BS {
        for &d in &DS {
            for &l in &LS {
                let mut g = seed(&[b, d, l, 1]);
                let (x, xr) = (grid(&mut g, 0.0, b * d), grid(&mut g, 0.0, b * d));
                let (mu, eps) = (grid(&mut g, -2.0, b * l), grid(&mut g, -2.0, b * l));
                let lv = vec![0.0; b * l]; // e^0 - 1 - 0 = 0 and exp(0/2) = 1 exactly
                let inv_b = 1.0 / b as f64;
                let sq: f64 = x.iter().zip(&xr).map(|(a, c)| (a - c) * (a - c)).sum();
                let klsum: f64 = mu.iter().map(|m| m * m).sum();
                let (recon, kl) = (-sq * inv_b, 0.5 * klsum * inv_b);
                let (xt, xrt, mut_, lvt, et) = (cast::<T>(&x), cast::<T>(&xr), cast::<T>(&mu), cast::<T>(&lv), cast::<T>(&eps));
                let (two_inv_b, neg_inv_b) = (T::from_f64(2.0 * inv_b), T::from_f64(-inv_b));
                let dims = ElboDims { batch: b, input_dim: d, latent_dim: l };
                for simd in simds() {
                    for (pname, par) in pars(&pool) {
                        for grad in [false, true] {
                            for sampled in [false, true] {
                                let what = format!("elbo exact {} B={b} D={d} L={l} {simd:?} {pname} grad={grad} sampled={sampled}", if is_f32::<T>() { "f32" } else { "f64" });
                                let mut z = vec![nan; b * l];
                                let mut eps_out = vec![nan; b * l];
                                let (mut gx, mut gmu, mut glv) = (vec![nan; b * d], vec![nan; b * l], vec![nan; b * l]);
                                let grads = grad.then(|| ElboGrads { x_recon: &mut gx[..], mu: &mut gmu[..], logvar: &mut glv[..] });
                                let e = if sampled { Eps::Sampled { call_seed: 3, out: Some(&mut eps_out[..]) } } else { Eps::Given(&et[..]) };
                                let args = ElboArgs { x: &xt, x_recon: &xrt, mu: &mut_, logvar: &lvt, eps: e, z: &mut z, grads };
                                let r = elbo_on(par, dims, args, simd).unwrap_or_else(|e| panic!("{what}: {e}"));
                                assert_eq!((r.recon, r.kl, r.elbo), (recon, kl, recon - kl), "{what}");
                                let e_used: &[T] = if sampled { &eps_out } else { &et };
                                for i in 0..b * l {
                                    assert!(!e_used[i].to_f64().is_nan(), "{what}: eps_out[{i}] not written");
                                    assert_eq!(z[i], mut_[i] + e_used[i], "{what}: z[{i}]");
                                }
                                if grad {
                                    for i in 0..b * d {
                                        assert_eq!(gx[i], two_inv_b * (xt[i] - xrt[i]), "{what}: grad_x_recon[{i}]");
                                    }
                                    for i in 0..b * l {
                                        assert_eq!(gmu[i], neg_inv_b * mut_[i], "{what}: grad_mu[{i}]");
                                        assert_eq!(glv[i].to_f64(), 0.0, "{what}: grad_logvar[{i}]");
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn elbo_exact_sums_at_odd_sizes_f64() {
    elbo_exact::<f64>();
}

#[test]
fn elbo_exact_sums_at_odd_sizes_f32() {
    elbo_exact::<f32>();
}

fn elbo_random<T: Real>() {
    let pool = pool();
    let nan = T::from_f64(f64::NAN);
    let (tol_sum, tol_el) = if is_f32::<T>() { (3e-6, 1e-6) } else { (1e-11, 2e-15) };
    let mut worst = (0.0f64, 0.0f64);
    for &b in &BS {
        for &d in &DS {
            for &l in &LS {
                let mut g = seed(&[b, d, l, 2]);
                let x = g.vec(b * d, |g| g.next());
                let xr: Vec<f64> = x.iter().map(|v| v + g.signed(0.1, 1.0)).collect();
                let mu = g.vec(b * l, |g| g.signed(0.1, 1.0));
                let lv = g.vec(b * l, |g| g.signed(0.2, 1.5));
                let eps = g.vec(b * l, |g| g.signed(0.5, 2.0));
                let (xt, xrt, mut_, lvt, et) = (cast::<T>(&x), cast::<T>(&xr), cast::<T>(&mu), cast::<T>(&lv), cast::<T>(&eps));
                // the reference on the values the kernel sees, in f64
                let (x, xr, mu, lv, eps) = (wide(&xt), wide(&xrt), wide(&mut_), wide(&lvt), wide(&et));
                let inv_b = 1.0 / b as f64;
                let recon = -sum_comp(x.iter().zip(&xr).map(|(a, c)| (a - c) * (a - c))) * inv_b;
                let kl = 0.5 * sum_comp(mu.iter().zip(&lv).map(|(m, v)| m * m + expm1mx_ref(*v))) * inv_b;
                let zr: Vec<f64> = (0..b * l).map(|i| mu[i] + (0.5 * lv[i]).exp() * eps[i]).collect();
                let gxr: Vec<f64> = x.iter().zip(&xr).map(|(a, c)| 2.0 * inv_b * (a - c)).collect();
                let gmur: Vec<f64> = mu.iter().map(|m| -m * inv_b).collect();
                let glvr: Vec<f64> = lv.iter().map(|v| -v.exp_m1() * 0.5 * inv_b).collect();
                let dims = ElboDims { batch: b, input_dim: d, latent_dim: l };
                for simd in simds() {
                    for (pname, par) in pars(&pool) {
                        let what = format!("elbo random {} B={b} D={d} L={l} {simd:?} {pname}", if is_f32::<T>() { "f32" } else { "f64" });
                        let mut z = vec![nan; b * l];
                        let (mut gx, mut gmu, mut glv) = (vec![nan; b * d], vec![nan; b * l], vec![nan; b * l]);
                        let grads = Some(ElboGrads { x_recon: &mut gx[..], mu: &mut gmu[..], logvar: &mut glv[..] });
                        let args = ElboArgs { x: &xt, x_recon: &xrt, mu: &mut_, logvar: &lvt, eps: Eps::Given(&et), z: &mut z, grads };
                        let r = elbo_on(par, dims, args, simd).unwrap_or_else(|e| panic!("{what}: {e}"));
                        let es = [(r.recon - recon) / recon, (r.kl - kl) / kl, (r.elbo - (recon - kl)) / (recon.abs() + kl)].map(f64::abs);
                        worst.0 = worst.0.max(es.iter().cloned().fold(0.0, f64::max));
                        assert!(es.iter().all(|e| *e <= tol_sum), "{what}: recon/kl/elbo errors {es:?} (recon {}, want {recon}; kl {}, want {kl})", r.recon, r.kl);
                        // z: relative to |mu| + |s·eps| (what the rounding of mu + s·eps is relative to)
                        for i in 0..b * l {
                            let scale = mu[i].abs() + (zr[i] - mu[i]).abs();
                            let e = (z[i].to_f64() - zr[i]).abs() / scale;
                            assert!(e <= 2.0 * tol_el, "{what}: z[{i}] = {:?}, want {} ({e:e})", z[i], zr[i]);
                        }
                        let el = [max_err(&wide(&gx), &gxr), max_err(&wide(&gmu), &gmur), max_err(&wide(&glv), &glvr)];
                        worst.1 = worst.1.max(el.iter().cloned().fold(0.0, f64::max));
                        assert!(el.iter().all(|e| *e <= tol_el), "{what}: grad errors {el:?}");
                        // the elbo (no grad) path gives the same numbers
                        let mut z2 = vec![nan; b * l];
                        let args = ElboArgs { x: &xt, x_recon: &xrt, mu: &mut_, logvar: &lvt, eps: Eps::Given(&et), z: &mut z2, grads: None };
                        let r2 = elbo_on(par, dims, args, simd).unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert!((r2.recon - r.recon).abs() <= tol_sum * recon.abs() && (r2.kl - r.kl).abs() <= tol_sum * kl, "{what}: no-grad path {r2:?} vs {r:?}");
                        assert_eq!(wide(&z2), wide(&z), "{what}: no-grad z");
                    }
                }
            }
        }
    }
    eprintln!("elbo random {}: worst relative error of sums {:e}, of gradients {:e}", if is_f32::<T>() { "f32" } else { "f64" }, worst.0, worst.1);
}

#[test]
fn elbo_random_at_odd_sizes_f64() {
    elbo_random::<f64>();
}

#[test]
fn elbo_random_at_odd_sizes_f32() {
    elbo_random::<f32>();
}

// ------------------------------------------------------------------------------------ iwae

fn iwae_ref(dims: IwaeDims, x: &[f64], mu: &[f64], lv: &[f64], eps: &[f64], w: &[f64], bias: &[f64]) -> f64 {
    let IwaeDims { batch: b, input_dim: d, latent_dim: l, samples: k } = dims;
    let mut rows = Vec::with_capacity(b);
    for row in 0..b {
        let mut lw = Vec::with_capacity(k);
        for s in 0..k {
            let e = &eps[(s * b + row) * l..(s * b + row + 1) * l];
            let z: Vec<f64> = (0..l).map(|j| mu[row * l + j] + (0.5 * lv[row * l + j]).exp() * e[j]).collect();
            let rss = sum_comp((0..d).map(|c| {
                let m = bias[c] + sum_comp((0..l).map(|j| z[j] * w[j * d + c]));
                (x[row * d + c] - m).powi(2)
            }));
            let log_px = -0.5 * rss - 0.5 * d as f64 * LOG_2PI;
            let log_pz = -0.5 * sum_comp(z.iter().map(|v| v * v)) - 0.5 * l as f64 * LOG_2PI;
            let log_qz = -0.5 * sum_comp(e.iter().map(|v| v * v)) - 0.5 * sum_comp(lv[row * l..(row + 1) * l].iter().cloned()) - 0.5 * l as f64 * LOG_2PI;
            lw.push(log_px + log_pz - log_qz);
        }
        let m = lw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        rows.push(m + lw.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - (k as f64).ln());
    }
    sum_comp(rows) / b as f64
}

fn iwae_odd<T: Real>() {
    let pool = pool();
    let tol = if is_f32::<T>() { 2e-5 } else { 1e-11 };
    let mut worst = 0.0f64;
    for &b in &BS {
        for &d in &DS {
            for &l in &LS {
                for &k in &KS {
                    let mut g = seed(&[b, d, l, k, 3]);
                    let x = g.vec(b * d, |g| g.next());
                    let mu = g.vec(b * l, |g| g.signed(0.1, 1.0));
                    let lv = g.vec(b * l, |g| g.signed(0.1, 1.0));
                    let eps = g.vec(k * b * l, |g| g.signed(0.2, 2.0));
                    let w = g.vec(l * d, |g| g.signed(0.1, 1.0) / (l as f64).sqrt());
                    let bias = g.vec(d, |g| g.uniform(0.3, 0.7));
                    let t = [cast::<T>(&x), cast::<T>(&mu), cast::<T>(&lv), cast::<T>(&eps), cast::<T>(&w), cast::<T>(&bias)];
                    let dims = IwaeDims { batch: b, input_dim: d, latent_dim: l, samples: k };
                    let want = iwae_ref(dims, &wide(&t[0]), &wide(&t[1]), &wide(&t[2]), &wide(&t[3]), &wide(&t[4]), &wide(&t[5]));
                    for simd in simds() {
                        for (pname, par) in pars(&pool) {
                            let args = IwaeArgs { x: &t[0], mu: &t[1], logvar: &t[2], eps: &t[3], dec_w: &t[4], dec_b: &t[5] };
                            let got = iwae_on(par, dims, args, simd).unwrap_or_else(|e| panic!("iwae: {e}"));
                            let e = ((got - want) / want).abs();
                            worst = worst.max(e);
                            assert!(e <= tol, "iwae {} B={b} D={d} L={l} K={k} {simd:?} {pname}: {got} vs {want} ({e:e})", if is_f32::<T>() { "f32" } else { "f64" });
                        }
                    }
                }
            }
        }
    }
    eprintln!("iwae {}: worst relative error {worst:e}", if is_f32::<T>() { "f32" } else { "f64" });
}

#[test]
fn iwae_at_odd_sizes_f64() {
    iwae_odd::<f64>();
}

#[test]
fn iwae_at_odd_sizes_f32() {
    iwae_odd::<f32>();
}

// -------------------------------------------------------------------------------- vae_step

/// c[m,n] = a[m,k]·b[k,n] (row-major), compensated sums.
fn mm(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = sum_comp((0..k).map(|p| a[i * k + p] * b[p * n + j]));
        }
    }
    c
}

fn tr(a: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut t = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = a[i * c + j];
        }
    }
    t
}

fn add_bias(m: &mut [f64], bias: &[f64]) {
    for row in m.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

fn colsum(m: &[f64], cols: usize) -> Vec<f64> {
    (0..cols).map(|j| sum_comp(m.chunks_exact(cols).map(|r| r[j]))).collect()
}

/// harness.workloads.vae_forward_backward in scalar f64: (loss, grads, new params).
fn vae_ref(dims: VaeDims, x: &[f64], eps: &[f64], p: &[Vec<f64>], lr: f64) -> (f64, Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let VaeDims { batch: b, input_dim: d, hidden_dim: h, latent_dim: l } = dims;
    let bf = b as f64;
    let relu = |v: &[f64]| v.iter().map(|a| a.max(0.0)).collect::<Vec<f64>>();
    let mask = |g: &mut [f64], pre: &[f64]| g.iter_mut().zip(pre).for_each(|(gv, a)| if *a <= 0.0 { *gv = 0.0 });
    let mut h1_pre = mm(x, &p[0], b, d, h);
    add_bias(&mut h1_pre, &p[1]);
    let h1 = relu(&h1_pre);
    let mut mu = mm(&h1, &p[2], b, h, l);
    add_bias(&mut mu, &p[3]);
    let mut lv = mm(&h1, &p[4], b, h, l);
    add_bias(&mut lv, &p[5]);
    let std: Vec<f64> = lv.iter().map(|v| (0.5 * v).exp()).collect();
    let z: Vec<f64> = (0..b * l).map(|i| mu[i] + std[i] * eps[i]).collect();
    let mut h3_pre = mm(&z, &p[6], b, l, h);
    add_bias(&mut h3_pre, &p[7]);
    let h3 = relu(&h3_pre);
    let mut logits = mm(&h3, &p[8], b, h, d);
    add_bias(&mut logits, &p[9]);
    let softplus = |v: f64| v.max(0.0) + (-v.abs()).exp().ln_1p();
    let rec = sum_comp((0..b * d).map(|i| x[i] * logits[i] - softplus(logits[i])));
    let kl = 0.5 * sum_comp((0..b * l).map(|i| mu[i] * mu[i] + expm1mx_ref(lv[i])));
    let loss = (kl - rec) / bf;
    let d_logits: Vec<f64> = (0..b * d).map(|i| (1.0 / (1.0 + (-logits[i]).exp()) - x[i]) / bf).collect();
    let g_out_w = mm(&tr(&h3, b, h), &d_logits, h, b, d);
    let g_out_b = colsum(&d_logits, d);
    let mut d_h3 = mm(&d_logits, &tr(&p[8], h, d), b, d, h);
    mask(&mut d_h3, &h3_pre);
    let g_dec_w = mm(&tr(&z, b, l), &d_h3, l, b, h);
    let g_dec_b = colsum(&d_h3, h);
    let d_z = mm(&d_h3, &tr(&p[6], l, h), b, h, l);
    let d_mu: Vec<f64> = (0..b * l).map(|i| d_z[i] + mu[i] / bf).collect();
    let d_lv: Vec<f64> = (0..b * l).map(|i| d_z[i] * (0.5 * std[i] * eps[i]) + 0.5 * (std[i] * std[i] - 1.0) / bf).collect();
    let g_mu_w = mm(&tr(&h1, b, h), &d_mu, h, b, l);
    let g_mu_b = colsum(&d_mu, l);
    let g_lv_w = mm(&tr(&h1, b, h), &d_lv, h, b, l);
    let g_lv_b = colsum(&d_lv, l);
    let a = mm(&d_mu, &tr(&p[2], h, l), b, l, h);
    let c = mm(&d_lv, &tr(&p[4], h, l), b, l, h);
    let mut d_h1: Vec<f64> = a.iter().zip(&c).map(|(u, v)| u + v).collect();
    mask(&mut d_h1, &h1_pre);
    let g_enc_w = mm(&tr(x, b, d), &d_h1, d, b, h);
    let g_enc_b = colsum(&d_h1, h);
    let grads = vec![g_enc_w, g_enc_b, g_mu_w, g_mu_b, g_lv_w, g_lv_b, g_dec_w, g_dec_b, g_out_w, g_out_b];
    let news = p.iter().zip(&grads).map(|(pv, gv)| pv.iter().zip(gv).map(|(a, g)| a - lr * g).collect()).collect();
    (loss, grads, news)
}

fn vae_odd<T: VaeReal>() {
    let pool = pool();
    let f32 = is_f32::<T>();
    let tol = if f32 { 1e-4 } else { 1e-11 };
    let nan = T::from_f64(f64::NAN);
    let mut worst = 0.0f64;
    for &b in &BS {
        for &d in &DS {
            for &h in &HS {
                for &l in &LS {
                    let dims = VaeDims { batch: b, input_dim: d, hidden_dim: h, latent_dim: l };
                    let mut g = seed(&[b, d, h, l, 4]);
                    let x = g.vec(b * d, |g| g.next());
                    let eps = g.vec(b * l, |g| g.signed(0.2, 2.0));
                    // float32 keeps every ReLU clearly on (biases ≥ 2, pre-activations far from
                    // 0), so f32 rounding cannot flip one against the f64 reference; float64
                    // exercises both sides of each ReLU
                    let (wd, wh, wl) = (1.0 / (d as f64).sqrt(), 1.0 / (h as f64).sqrt(), 1.0 / (l as f64).sqrt());
                    let bias = |g: &mut Lcg, n: usize| if f32 { g.vec(n, |g| g.uniform(4.0, 5.0)) } else { g.vec(n, |g| g.signed(0.05, 0.5)) };
                    let enc_w = g.vec(d * h, |g| g.signed(0.1, 1.0) * wd);
                    let enc_b = bias(&mut g, h);
                    let mu_w = g.vec(h * l, |g| g.signed(0.1, 1.0) * wh * 0.5);
                    let mu_b = g.vec(l, |g| g.signed(0.05, 0.5));
                    let lv_w = g.vec(h * l, |g| g.signed(0.1, 1.0) * wh * 0.1);
                    let lv_b = g.vec(l, |g| g.signed(0.05, 0.5));
                    let dec_w = g.vec(l * h, |g| g.signed(0.1, 1.0) * wl * 0.3);
                    let dec_b = bias(&mut g, h);
                    let out_w = g.vec(h * d, |g| g.signed(0.1, 1.0) * wh);
                    let out_b = g.vec(d, |g| g.signed(0.05, 0.5));
                    let params = [enc_w, enc_b, mu_w, mu_b, lv_w, lv_b, dec_w, dec_b, out_w, out_b];
                    let (xt, et) = (cast::<T>(&x), cast::<T>(&eps));
                    let pt: Vec<Vec<T>> = params.iter().map(|p| cast::<T>(p)).collect();
                    let lr = 0.1;
                    let (loss, grads, news) = vae_ref(dims, &wide(&xt), &wide(&et), &pt.iter().map(|p| wide(p)).collect::<Vec<_>>(), lr);
                    for (pname, par) in pars(&pool) {
                        let what = format!("vae {} B={b} D={d} H={h} L={l} {pname}", if f32 { "f32" } else { "f64" });
                        let mut gt: Vec<Vec<T>> = pt.iter().map(|p| vec![nan; p.len()]).collect();
                        let mut nt: Vec<Vec<T>> = gt.clone();
                        let mut scratch = VaeScratch::<T>::new(dims);
                        let p: [&[T]; 10] = std::array::from_fn(|i| pt[i].as_slice());
                        let mut gi = gt.iter_mut();
                        let gs: [&mut [T]; 10] = std::array::from_fn(|_| gi.next().map(|v| v.as_mut_slice()).unwrap_or_default());
                        let mut ni = nt.iter_mut();
                        let ns: [&mut [T]; 10] = std::array::from_fn(|_| ni.next().map(|v| v.as_mut_slice()).unwrap_or_default());
                        let args = VaeArgs { x: &xt, eps: &et, params: p, lr: T::from_f64(lr), grads: gs, new_params: ns };
                        let got = vae_step(par, &mut scratch, args).unwrap_or_else(|e| panic!("{what}: {e}"));
                        let e = ((got - loss) / loss).abs();
                        worst = worst.max(e);
                        assert!(e <= tol, "{what}: loss {got} vs {loss} ({e:e})");
                        for i in 0..10 {
                            let (eg, en) = (max_err(&wide(&gt[i]), &grads[i]), max_err(&wide(&nt[i]), &news[i]));
                            worst = worst.max(eg).max(en);
                            assert!(eg <= tol && en <= tol, "{what}: {} grad err {eg:e}, new err {en:e}", crate::vae::VAE_PARAMS[i]);
                        }
                    }
                }
            }
        }
    }
    eprintln!("vae_step {}: worst relative error {worst:e}", if f32 { "f32" } else { "f64" });
}

#[test]
fn vae_step_at_odd_sizes_f64() {
    vae_odd::<f64>();
}

#[test]
fn vae_step_at_odd_sizes_f32() {
    vae_odd::<f32>();
}
