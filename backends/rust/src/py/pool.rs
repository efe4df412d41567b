//! `Pool`: the per-case rayon thread pool a plan runs its kernel on.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rayon::ThreadPool;

use crate::par::Par;

/// A rayon thread pool of exactly `threads` threads, owned by one prepared case (never rayon's
/// global pool). threads=1 holds no pool at all: the kernels run as plain serial code.
#[pyclass(module = "elbolab_rust", frozen)]
pub struct Pool {
    threads: usize,
    pool: Option<Arc<ThreadPool>>,
    always_parallel: bool,
}

/// What a plan keeps of its Pool: the pool (shared, so the plan outlives a dropped Pool object)
/// and whether the serial fallback is off.
pub(crate) struct Threads {
    pool: Option<Arc<ThreadPool>>,
    always: bool,
}

impl Threads {
    pub(crate) fn of(pool: &Bound<'_, Pool>) -> Threads {
        let p = pool.get();
        Threads { pool: p.pool.clone(), always: p.always_parallel }
    }

    pub(crate) fn par(&self) -> Par<'_> {
        Par { pool: self.pool.as_deref(), always: self.always }
    }
}

#[pymethods]
impl Pool {
    /// always_parallel=True skips the serial fallback below the thresholds (to measure them).
    #[new]
    #[pyo3(signature = (threads, always_parallel=false))]
    fn new(threads: i64, always_parallel: bool) -> PyResult<Self> {
        if !(1..=1024).contains(&threads) {
            return Err(PyValueError::new_err(format!("threads must be between 1 and 1024, got {threads}")));
        }
        let threads = threads as usize;
        let pool = if threads == 1 {
            None
        } else {
            let p = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("elbolab-rust-{i}"))
                .build()
                .map_err(|e| PyValueError::new_err(format!("cannot start a pool of {threads} threads: {e}")))?;
            Some(Arc::new(p))
        };
        Ok(Pool { threads, pool, always_parallel })
    }

    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }

    fn __repr__(&self) -> String {
        format!("Pool(threads={}, always_parallel={})", self.threads, self.always_parallel)
    }
}
