//! The tutorial's timing as a standalone program (no Python): 100 warm-up calls, then a loop of
//! 10,000 calls of the tutorial's ndarray ELBO (`tutorial.rs`), and the same for the fused kernel.
//!     cargo run --release --example tutorial_loop -- [B] [sampled 0|1] [iters]
use std::time::Instant;

use elbolab_rust::elbo::{elbo, ElboArgs, ElboDims, Eps};
use elbolab_rust::par::Par;
use elbolab_rust::tutorial::{elbo_f64, tutorial_rng};

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("integer arguments")).collect();
    let get = |i: usize, d: usize| a.get(i).copied().unwrap_or(d);
    let (b, sampled, iters) = (get(0, 128), get(1, 1) == 1, get(2, 10_000));
    let (d, l) = (784, 20);
    let f = |n: usize, k: f64| (0..n).map(|i| (i as f64 * k).sin() * 0.5).collect::<Vec<f64>>();
    let (x, xr, mu, lv, eps) = (f(b * d, 0.37), f(b * d, 0.71), f(b * l, 0.13), f(b * l, 0.29), f(b * l, 0.53));
    let dims = ElboDims { batch: b, input_dim: d, latent_dim: l };
    let mut z = vec![0.0; b * l];
    let mut rng = tutorial_rng(1);
    let e = if sampled { None } else { Some(&eps[..]) };
    for _ in 0..100 {
        std::hint::black_box(elbo_f64(dims, &x, &xr, &mu, &lv, e, &mut rng, &mut z, None).unwrap());
    }
    let t0 = Instant::now();
    for _ in 0..iters {
        std::hint::black_box(elbo_f64(dims, &x, &xr, &mu, &lv, e, &mut rng, &mut z, None).unwrap());
    }
    let tut = t0.elapsed().as_secs_f64() / iters as f64;
    let run = |z: &mut Vec<f64>, k: u64| {
        let eps = if sampled { Eps::Sampled { call_seed: k, out: None } } else { Eps::Given(&eps) };
        let args = ElboArgs { x: &x, x_recon: &xr, mu: &mu, logvar: &lv, eps, z, grads: None };
        std::hint::black_box(elbo(Par::serial(), dims, args).unwrap());
    };
    for k in 0..100 {
        run(&mut z, k);
    }
    let t0 = Instant::now();
    for k in 0..iters as u64 {
        run(&mut z, k);
    }
    let fused = t0.elapsed().as_secs_f64() / iters as f64;
    println!(
        "B={b} sampled={sampled}: tutorial {:.2} us/call, fused {:.2} us/call, ratio {:.2}x ({iters} iterations after 100 warm-up)",
        tut * 1e6,
        fused * 1e6,
        tut / fused
    );
}
