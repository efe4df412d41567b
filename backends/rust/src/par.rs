//! Splitting a batch into row chunks for a per-case rayon pool, and the serial/parallel thresholds.

use rayon::ThreadPool;

/// Rows of a sampled-eps stream: eps for rows [k*RNG_BLOCK, (k+1)*RNG_BLOCK) comes from one
/// generator seeded by (call seed, k). Parallel chunks are whole blocks, so the eps a case draws
/// does not depend on the thread count.
pub const RNG_BLOCK: usize = 64;

/// elbo / elbo_grad go parallel only when a call touches at least this many elements of the
/// [B, D] arrays (B*D). Re-measured after the kernel rewrite (explicit-AVX2 D loop, vectorised
/// latents) on the 2-core dev machine (AMD EPYC Zen 4, KVM, shared with other jobs) with
/// `python backends/rust/bench.py crossover` (Pool(2, always_parallel=True) vs serial) plus repeats
/// at B = 256..448: forced 2-thread lost at B <= 96 (elbo) / <= 192 (elbo_grad), lost once at
/// B=336 (a 192+144-row split, 0.88x), and won at every B >= 384 (1.3-1.6x). So the fallback is at
/// B=384 for D=784 (was 768K elements = B~1000 when the serial kernel was 1.7x slower).
pub const ELBO_PAR_MIN_ELEMS: usize = 384 * 784;

/// iwae goes parallel above this many multiply-adds (K*B*L*D); its work per row is ~L*K times
/// the elbo's, so the crossover is at a few rows.
pub const IWAE_PAR_MIN_MACS: usize = 256 * 1024;

/// A matrix product in vae_step is split over the pool above this many multiply-adds (m*n*k).
pub const GEMM_PAR_MIN_MACS: usize = 512 * 1024;

/// How a kernel may run: serially, or on a pool when the work is above its threshold
/// (`always`: at any size, which is how the crossover is measured).
#[derive(Clone, Copy, Default)]
pub struct Par<'a> {
    pub pool: Option<&'a ThreadPool>,
    pub always: bool,
}

impl<'a> Par<'a> {
    pub fn serial() -> Par<'a> {
        Par { pool: None, always: false }
    }

    pub fn on(pool: &'a ThreadPool) -> Par<'a> {
        Par { pool: Some(pool), always: false }
    }

    /// The pool to use for `work` units, or None for plain serial code (threads=1 or too little work).
    #[inline]
    pub fn pool_for(self, work: usize, min_work: usize) -> Option<&'a ThreadPool> {
        match self.pool {
            Some(p) if p.current_num_threads() > 1 && (self.always || work >= min_work) => Some(p),
            _ => None,
        }
    }
}

/// Row ranges [start, end) splitting `rows` into at most `parts` chunks of whole `align`-row blocks.
pub fn row_ranges(rows: usize, parts: usize, align: usize) -> Vec<(usize, usize)> {
    let parts = parts.max(1);
    let align = align.max(1);
    let blocks = rows.div_ceil(align);
    let per = blocks.div_ceil(parts).max(1) * align;
    let mut out = Vec::with_capacity(parts);
    let mut start = 0;
    while start < rows {
        let end = (start + per).min(rows);
        out.push((start, end));
        start = end;
    }
    out
}

/// Takes the first `n` elements off the front of a mutable slice cursor.
#[inline]
pub fn take_mut<'a, T>(rest: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    let slice = std::mem::take(rest);
    let n = n.min(slice.len());
    let (head, tail) = slice.split_at_mut(n);
    *rest = tail;
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_rows_in_aligned_blocks() {
        for rows in [1usize, 7, 63, 64, 65, 128, 1000, 8193] {
            for parts in [1usize, 2, 3, 8] {
                let r = row_ranges(rows, parts, 64);
                assert!(r.len() <= parts);
                assert_eq!(r.first().map(|x| x.0), Some(0));
                assert_eq!(r.last().map(|x| x.1), Some(rows));
                for w in r.windows(2) {
                    assert_eq!(w[0].1, w[1].0);
                    assert_eq!(w[0].1 % 64, 0);
                }
            }
        }
    }
}
