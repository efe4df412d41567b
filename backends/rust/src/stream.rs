//! STREAM-like bandwidth probes, to put the kernels' GB/s next to what the machine can do at the
//! same working-set size (so an in-cache working set is compared with in-cache bandwidth).
//!
//! kinds (f64 arrays, the working set `bytes` split evenly between them; best of `reps`):
//!   read2  s += (a[i] - b[i])²   2 arrays read, nothing written: the elbo kernel's access pattern
//!   copy   c[i] = a[i]           counted as 2 × 8 bytes per element (STREAM's convention)
//!   triad  a[i] = b[i] + q*c[i]  counted as 3 × 8 bytes per element
//! With threads > 1 the arrays are split into contiguous pieces, one per thread of a dedicated pool.

use std::hint::black_box;
use std::time::Instant;

use rayon::prelude::*;

use crate::real::{Simd, LANES};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Read2,
    Copy,
    Triad,
}

impl Probe {
    pub fn parse(s: &str) -> Option<Probe> {
        match s {
            "read2" => Some(Probe::Read2),
            "copy" => Some(Probe::Copy),
            "triad" => Some(Probe::Triad),
            _ => None,
        }
    }
    fn arrays(self) -> usize {
        match self {
            Probe::Read2 | Probe::Copy => 2,
            Probe::Triad => 3,
        }
    }
}

#[inline(always)]
fn read2_impl(a: &[f64], b: &[f64]) -> f64 {
    let (ac, at) = a.as_chunks::<LANES>();
    let (bc, bt) = b.as_chunks::<LANES>();
    let mut acc = [0.0f64; LANES];
    for (x, y) in ac.iter().zip(bc) {
        for i in 0..LANES {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let mut s: f64 = acc.iter().sum();
    for (x, y) in at.iter().zip(bt) {
        s += (x - y) * (x - y);
    }
    s
}

#[inline(always)]
fn copy_impl(a: &[f64], c: &mut [f64]) {
    c.copy_from_slice(a);
}

#[inline(always)]
fn triad_impl(a: &mut [f64], b: &[f64], c: &[f64], q: f64) {
    for ((x, y), z) in a.iter_mut().zip(b).zip(c) {
        *x = *y + q * *z;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn read2_avx2(a: &[f64], b: &[f64]) -> f64 {
    read2_impl(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn triad_avx2(a: &mut [f64], b: &[f64], c: &[f64], q: f64) {
    triad_impl(a, b, c, q)
}

fn piece(kind: Probe, simd: Simd, a: &mut [f64], b: &mut [f64], c: &mut [f64]) -> f64 {
    match (kind, simd) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Simd::Avx2 only when the CPU has avx2 and fma
        (Probe::Read2, Simd::Avx2) => unsafe { read2_avx2(a, b) },
        (Probe::Read2, _) => read2_impl(a, b),
        (Probe::Copy, _) => {
            copy_impl(a, b);
            0.0
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above
        (Probe::Triad, Simd::Avx2) => {
            unsafe { triad_avx2(a, b, c, 1.5) };
            0.0
        }
        (Probe::Triad, _) => {
            triad_impl(a, b, c, 1.5);
            0.0
        }
    }
}

/// Best bandwidth over `reps` repetitions, in bytes per second.
pub fn probe(kind: Probe, bytes: usize, reps: usize, threads: usize) -> Result<f64, String> {
    let n = bytes / (8 * kind.arrays());
    if n < 16 {
        return Err(format!("working set of {bytes} bytes is too small"));
    }
    if reps == 0 || threads == 0 {
        return Err("reps and threads must be >= 1".into());
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?;
    let simd = Simd::detect();
    let mut a = vec![1.0f64; n];
    let mut b = vec![2.0f64; n];
    let mut c = if kind == Probe::Triad { vec![0.5f64; n] } else { Vec::new() };
    let per = n.div_ceil(threads);
    let moved = (n * 8 * kind.arrays()) as f64;
    let mut best = 0.0f64;
    for rep in 0..reps + 1 {
        // rep 0 warms caches and pages and is not counted
        let t0 = Instant::now();
        if threads == 1 {
            black_box(piece(kind, simd, &mut a, &mut b, &mut c));
        } else {
            let cparts: Vec<&mut [f64]> = if c.is_empty() { (0..threads).map(|_| &mut [][..]).collect() } else { c.chunks_mut(per).collect() };
            let parts: Vec<_> = a.chunks_mut(per).zip(b.chunks_mut(per)).zip(cparts).collect();
            let s: f64 = pool.install(|| parts.into_par_iter().map(|((x, y), z)| piece(kind, simd, x, y, z)).sum());
            black_box(s);
        }
        let dt = t0.elapsed().as_secs_f64();
        black_box(&a);
        if rep > 0 && dt > 0.0 {
            best = best.max(moved / dt);
        }
    }
    Ok(best)
}
