//! What every plan class shares, written once: `Plan<K>` holds the arrays and a `Kernel`, and
//! `run`/`run_n`/`result` re-check every array, release the GIL and run the kernel n times;
//! `plan_class!` generates the `#[pyclass]` and its `#[pymethods]` around a constructor.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::arrays::{check_overlaps, Arr, Bufs, MAX_ARRAYS};

/// The part of a plan that differs between workloads: the kernel call on the plan's arrays.
pub(crate) trait Kernel: Send {
    /// What one call returns to Python (and `result()` returns afterwards).
    type Out: Copy + Send;
    /// `result()` before the first call.
    const BEFORE_FIRST_CALL: Self::Out;
    /// Runs the kernel `n` (≥ 1) times; returns the last call's result. Runs with the GIL
    /// released: it must touch nothing of Python's, only `bufs` and its own state.
    fn run(&mut self, bufs: Bufs<'_>, n: usize) -> Result<Self::Out, String>;
}

/// A prepared call: every array of the case (validated, read-only guard on the inputs) and the
/// kernel that reads and writes them.
pub(crate) struct Plan<K: Kernel> {
    arrays: Vec<Arr>,
    kernel: K,
    last: K::Out,
}

impl<K: Kernel> Plan<K> {
    /// `arrays` were each validated by `Arr::new`; here outputs are checked not to overlap
    /// anything and the inputs are made read-only for the plan's lifetime.
    pub(crate) fn new(py: Python<'_>, mut arrays: Vec<Arr>, kernel: K) -> PyResult<Self> {
        if arrays.len() > MAX_ARRAYS {
            return Err(PyValueError::new_err(format!("a plan holds at most {MAX_ARRAYS} arrays")));
        }
        check_overlaps(&arrays)?;
        for a in &mut arrays {
            a.guard(py);
        }
        Ok(Plan { arrays, kernel, last: K::BEFORE_FIRST_CALL })
    }

    /// n calls: re-check every array (GIL held), then run the kernel n times with the GIL
    /// released once. A kernel error (it has none for a valid plan) is a ValueError.
    pub(crate) fn run_checked(&mut self, py: Python<'_>, n: usize) -> PyResult<K::Out> {
        for a in &self.arrays {
            a.check(py)?;
        }
        // SAFETY: every array passed its check just now with the GIL held; the Bufs lives only
        // for this call (moved into the closure and dropped when it returns).
        let bufs = unsafe { Bufs::new(&self.arrays) };
        let kernel = &mut self.kernel;
        let r = py.detach(move || kernel.run(bufs, n)).map_err(PyValueError::new_err)?;
        self.last = r;
        Ok(r)
    }

    pub(crate) fn last(&self) -> K::Out {
        self.last
    }
}

/// n as given to `run_n`: at least 1.
pub(crate) fn check_n(n: i64) -> PyResult<usize> {
    if n < 1 {
        return Err(PyValueError::new_err(format!("n must be >= 1, got {n}")));
    }
    usize::try_from(n).map_err(|_| PyValueError::new_err(format!("n too large: {n}")))
}

/// `plan_class!(#[doc] Name(Kernel) -> Out { constructor })`: the `#[pyclass]` wrapping a
/// `Plan<Kernel>` and one `#[pymethods]` block with the given `#[new]` constructor (and any other
/// methods passed in the braces) plus the shared `run`, `run_n` and `result`.
macro_rules! plan_class {
    ($(#[$meta:meta])* $name:ident($kernel:ty) -> $out:ty { $($methods:tt)* }) => {
        $(#[$meta])*
        #[pyclass(module = "elbolab_rust")]
        pub struct $name($crate::py::plan::Plan<$kernel>);

        #[pymethods]
        impl $name {
            $($methods)*

            /// One call: re-checks the arrays, releases the GIL, runs the kernel once, fills the
            /// outputs and returns the result.
            fn run(&mut self, py: Python<'_>) -> PyResult<$out> {
                self.0.run_checked(py, 1)
            }

            /// n calls in a loop inside Rust (the GIL released once); returns the last result.
            fn run_n(&mut self, py: Python<'_>, n: i64) -> PyResult<$out> {
                let n = $crate::py::plan::check_n(n)?;
                self.0.run_checked(py, n)
            }

            /// The result of the last call (NaN before the first).
            fn result(&self) -> $out {
                self.0.last()
            }
        }
    };
}

pub(crate) use plan_class;
