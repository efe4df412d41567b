//! elbolab_rust: the lab's Rust backend, a thin PyO3 layer over plain-Rust kernels.
//!
//! Kernels (elbo.rs, iwae.rs, vae.rs, stream.rs) are ordinary Rust functions over slices and
//! ndarray views, tested by `cargo test` without Python. This file turns NumPy arrays into those
//! slices without copying.
//!
//! Calls are made through *plans*: `ElboPlan(pool, x, x_recon, ...)` validates every array once
//! (type, dtype, shape, C-contiguity, alignment, writability of outputs, outputs not overlapping
//! anything) and keeps references to them; `plan.run()` then only re-checks, with a few pointer
//! reads per array, that no array was changed in place since (data pointer, dtype, shape, flags),
//! releases the GIL and runs the kernel. `plan.run_n(n)` runs n iterations inside Rust (the
//! tutorial's timing loop). This keeps the per-call cost from Python to well under a microsecond of
//! argument handling. Errors are Python exceptions (TypeError for a wrong type or dtype, ValueError
//! for a wrong shape, layout, read-only or overlapping output); nothing a caller passes can panic.

use std::sync::Arc;

use numpy::npyffi::{self, NPY_ARRAY_ALIGNED, NPY_ARRAY_C_CONTIGUOUS, NPY_ARRAY_WRITEABLE};
use numpy::{Element, PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rayon::ThreadPool;

pub mod elbo;
pub mod iwae;
pub mod par;
pub mod real;
pub mod simd;
pub mod stream;
pub mod tutorial;
pub mod vae;

use elbo::{ElboArgs, ElboDims, ElboGrads, ElboResult, Eps};
use iwae::{IwaeArgs, IwaeDims};
use par::Par;
use real::Real;
use vae::{VaeArgs, VaeDims, VaeScratch, VAE_PARAMS};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const RUSTC_VERSION: &str = env!("ELBOLAB_RUSTC_VERSION");

// ------------------------------------------------------------------------------------ the pool

/// A rayon thread pool of exactly `threads` threads, owned by one prepared case (never rayon's
/// global pool). threads=1 holds no pool at all: the kernels run as plain serial code.
#[pyclass(module = "elbolab_rust", frozen)]
pub struct Pool {
    threads: usize,
    pool: Option<Arc<ThreadPool>>,
    always_parallel: bool,
}

impl Pool {
    fn par_parts(&self) -> (Option<Arc<ThreadPool>>, bool) {
        (self.pool.clone(), self.always_parallel)
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

// ------------------------------------------------------------------------------ array handling

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dt {
    F32,
    F64,
}

impl Dt {
    fn name(self) -> &'static str {
        match self {
            Dt::F32 => "float32",
            Dt::F64 => "float64",
        }
    }
    fn size(self) -> usize {
        match self {
            Dt::F32 => 4,
            Dt::F64 => 8,
        }
    }
}

fn shape_str(s: &[usize]) -> String {
    match s.len() {
        1 => format!("({},)", s[0]),
        _ => format!("({})", s.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// A validated reference to a NumPy array the plan reads (or, for outputs, writes).
struct Arr {
    name: String,
    obj: Py<PyUntypedArray>,
    data: usize,
    descr: usize,
    shape: Vec<usize>,
    len: usize,
    nbytes: usize,
    out: bool,
}

fn fields(a: &Bound<'_, PyUntypedArray>) -> (usize, usize, i32) {
    // SAFETY: `a` is a live ndarray (checked by the cast); these are plain field reads under the GIL.
    unsafe {
        let f = npyffi::_PyArray_GET_ITEM_DATA(a.as_array_ptr());
        ((*f).data as usize, (*f).descr as usize, (*f).flags)
    }
}

fn required_flags(out: bool) -> i32 {
    NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | if out { NPY_ARRAY_WRITEABLE } else { 0 }
}

fn dtype_of(py: Python<'_>, a: &Bound<'_, PyUntypedArray>) -> Option<Dt> {
    let d = a.dtype();
    if d.is_equiv_to(&numpy::dtype::<f64>(py)) {
        Some(Dt::F64)
    } else if d.is_equiv_to(&numpy::dtype::<f32>(py)) {
        Some(Dt::F32)
    } else {
        None
    }
}

fn as_ndarray<'a, 'py>(name: &str, obj: &'a Bound<'py, PyAny>) -> PyResult<&'a Bound<'py, PyUntypedArray>> {
    obj.cast::<PyUntypedArray>().map_err(|_| {
        let t = obj.get_type().name().map(|s| s.to_string()).unwrap_or_else(|_| "?".into());
        PyTypeError::new_err(format!("{name} must be a numpy.ndarray, got {t}"))
    })
}

impl Arr {
    /// Validates `obj` as a C-contiguous, aligned array of dtype `dt` and shape `shape` (an
    /// output must also be writeable).
    fn new(py: Python<'_>, name: &str, obj: &Bound<'_, PyAny>, dt: Dt, shape: &[usize], out: bool) -> PyResult<Arr> {
        let a = as_ndarray(name, obj)?;
        match dtype_of(py, a) {
            Some(got) if got == dt => {}
            _ => {
                let d = a.dtype().str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into());
                return Err(PyTypeError::new_err(format!("{name} has dtype {d}, expected {} (like x)", dt.name())));
            }
        }
        if a.shape() != shape {
            return Err(PyValueError::new_err(format!(
                "{name} has shape {}, expected {}",
                shape_str(a.shape()),
                shape_str(shape)
            )));
        }
        let (data, descr, flags) = fields(a);
        if flags & NPY_ARRAY_C_CONTIGUOUS == 0 {
            return Err(PyValueError::new_err(format!("{name} must be C-contiguous (use numpy.ascontiguousarray)")));
        }
        if flags & NPY_ARRAY_ALIGNED == 0 {
            return Err(PyValueError::new_err(format!("{name} is not aligned for its dtype")));
        }
        if out && flags & NPY_ARRAY_WRITEABLE == 0 {
            return Err(PyValueError::new_err(format!("output {name} is read-only")));
        }
        let len: usize = shape.iter().product();
        if len == 0 {
            return Err(PyValueError::new_err(format!("{name} is empty (shape {})", shape_str(shape))));
        }
        Ok(Arr {
            name: name.to_string(),
            obj: a.clone().unbind(),
            data,
            descr,
            shape: shape.to_vec(),
            len,
            nbytes: len * dt.size(),
            out,
        })
    }

    /// The cheap per-call check that nothing was changed in place since the plan was made.
    #[inline]
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        let a = self.obj.bind(py);
        let (data, descr, flags) = fields(a);
        let need = required_flags(self.out);
        if data != self.data || descr != self.descr || flags & need != need || a.shape() != self.shape.as_slice() {
            return Err(PyValueError::new_err(format!(
                "{} was changed in place (data, dtype, shape or flags) after the plan was made; prepare again",
                self.name
            )));
        }
        Ok(())
    }

    /// SAFETY: `check` passed under the GIL in this call, and T is the plan's dtype.
    #[inline]
    unsafe fn slice<'a, T>(&'a self) -> &'a [T] {
        unsafe { std::slice::from_raw_parts(self.data as *const T, self.len) }
    }

    /// SAFETY: as `slice`; outputs were checked at construction not to overlap any other array
    /// of the plan, and the plan is borrowed mutably for the call, so this is the only reference.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut<'a, T>(&'a self) -> &'a mut [T] {
        unsafe { std::slice::from_raw_parts_mut(self.data as *mut T, self.len) }
    }
}

/// Outputs must not share memory with any other array of the plan (inputs may alias each other).
fn check_overlaps(arrays: &[&Arr]) -> PyResult<()> {
    for (i, a) in arrays.iter().enumerate() {
        for b in arrays.iter().skip(i + 1) {
            if !(a.out || b.out) {
                continue;
            }
            let (a0, a1) = (a.data, a.data + a.nbytes);
            let (b0, b1) = (b.data, b.data + b.nbytes);
            if a0 < b1 && b0 < a1 {
                return Err(PyValueError::new_err(format!("{} and {} share memory; outputs need their own buffers", a.name, b.name)));
            }
        }
    }
    Ok(())
}

/// x decides the dtype and the batch: it must be a 2-D float32 or float64 array.
fn first_array(py: Python<'_>, name: &str, obj: &Bound<'_, PyAny>, ndim: usize) -> PyResult<(Dt, Vec<usize>)> {
    let a = as_ndarray(name, obj)?;
    let dt = dtype_of(py, a).ok_or_else(|| {
        let d = a.dtype().str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into());
        PyTypeError::new_err(format!("{name} has dtype {d}; elbolab_rust supports float32 and float64"))
    })?;
    if a.ndim() != ndim {
        return Err(PyValueError::new_err(format!("{name} must be {ndim}-D, got shape {}", shape_str(a.shape()))));
    }
    Ok((dt, a.shape().to_vec()))
}

fn ndim_of(name: &str, obj: &Bound<'_, PyAny>, ndim: usize) -> PyResult<Vec<usize>> {
    let a = as_ndarray(name, obj)?;
    if a.ndim() != ndim {
        return Err(PyValueError::new_err(format!("{name} must be {ndim}-D, got shape {}", shape_str(a.shape()))));
    }
    Ok(a.shape().to_vec())
}

fn check_n(n: i64) -> PyResult<usize> {
    if n < 1 {
        return Err(PyValueError::new_err(format!("n must be >= 1, got {n}")));
    }
    Ok(n as usize)
}

/// The seed of the k-th sampled call (SplitMix64 of seed and counter).
fn call_seed(seed: u64, counter: u64) -> u64 {
    let mut z = seed ^ counter.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ------------------------------------------------------------------------------------ elbo

/// The `elbo` / `elbo_grad` workload on fixed arrays. eps=None draws eps inside each call.
#[pyclass(module = "elbolab_rust")]
pub struct ElboPlan {
    dt: Dt,
    dims: ElboDims,
    pool: Option<Arc<ThreadPool>>,
    always: bool,
    x: Arr,
    x_recon: Arr,
    mu: Arr,
    logvar: Arr,
    eps: Option<Arr>,
    z: Arr,
    grads: Option<(Arr, Arr, Arr)>,
    seed: u64,
    calls: u64,
    last: ElboResult,
}

impl ElboPlan {
    fn run_t<T: Real + Element>(&mut self, py: Python<'_>, n: usize) -> PyResult<ElboResult> {
        let par = Par { pool: self.pool.as_deref(), always: self.always };
        let dims = self.dims;
        // SAFETY: every array was checked by `run` in this call, with the GIL held.
        let (x, xr, mu, lv) = unsafe { (self.x.slice::<T>(), self.x_recon.slice::<T>(), self.mu.slice::<T>(), self.logvar.slice::<T>()) };
        let eps = self.eps.as_ref().map(|a| unsafe { a.slice::<T>() });
        let z = unsafe { self.z.slice_mut::<T>() };
        let mut grads = self.grads.as_ref().map(|(a, b, c)| unsafe { (a.slice_mut::<T>(), b.slice_mut::<T>(), c.slice_mut::<T>()) });
        let (seed, calls) = (self.seed, &mut self.calls);
        let result = py.detach(move || {
            let mut last = Ok(ElboResult::default());
            for _ in 0..n {
                let eps = match eps {
                    Some(e) => Eps::Given(e),
                    None => {
                        *calls += 1;
                        Eps::Sampled { call_seed: call_seed(seed, *calls) }
                    }
                };
                let g = grads.as_mut().map(|(a, b, c)| ElboGrads { x_recon: &mut **a, mu: &mut **b, logvar: &mut **c });
                let args = ElboArgs { x, x_recon: xr, mu, logvar: lv, eps, z: &mut *z, grads: g };
                last = elbo::elbo(par, dims, args);
                if last.is_err() {
                    break;
                }
            }
            last
        });
        result.map_err(PyValueError::new_err)
    }

    fn run_checked(&mut self, py: Python<'_>, n: usize) -> PyResult<(f64, f64, f64)> {
        for a in [&self.x, &self.x_recon, &self.mu, &self.logvar, &self.z] {
            a.check(py)?;
        }
        if let Some(e) = &self.eps {
            e.check(py)?;
        }
        if let Some((a, b, c)) = &self.grads {
            a.check(py)?;
            b.check(py)?;
            c.check(py)?;
        }
        let r = match self.dt {
            Dt::F64 => self.run_t::<f64>(py, n)?,
            Dt::F32 => self.run_t::<f32>(py, n)?,
        };
        self.last = r;
        Ok((r.recon, r.kl, r.elbo))
    }
}

#[pymethods]
impl ElboPlan {
    #[new]
    #[pyo3(signature = (pool, x, x_recon, mu, logvar, eps, z, grad_x_recon=None, grad_mu=None, grad_logvar=None, seed=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        pool: &Bound<'_, Pool>,
        x: &Bound<'_, PyAny>,
        x_recon: &Bound<'_, PyAny>,
        mu: &Bound<'_, PyAny>,
        logvar: &Bound<'_, PyAny>,
        eps: Option<&Bound<'_, PyAny>>,
        z: &Bound<'_, PyAny>,
        grad_x_recon: Option<&Bound<'_, PyAny>>,
        grad_mu: Option<&Bound<'_, PyAny>>,
        grad_logvar: Option<&Bound<'_, PyAny>>,
        seed: u64,
    ) -> PyResult<Self> {
        let (dt, xs) = first_array(py, "x", x, 2)?;
        let (b, d) = (xs[0], xs[1]);
        let l = ndim_of("mu", mu, 2)?[1];
        let bd = [b, d];
        let bl = [b, l];
        let x = Arr::new(py, "x", x, dt, &bd, false)?;
        let x_recon = Arr::new(py, "x_recon", x_recon, dt, &bd, false)?;
        let mu = Arr::new(py, "mu", mu, dt, &bl, false)?;
        let logvar = Arr::new(py, "logvar", logvar, dt, &bl, false)?;
        let eps = eps.map(|e| Arr::new(py, "eps", e, dt, &bl, false)).transpose()?;
        let z = Arr::new(py, "z", z, dt, &bl, true)?;
        let grads = match (grad_x_recon, grad_mu, grad_logvar) {
            (None, None, None) => None,
            (Some(gx), Some(gm), Some(gl)) => Some((
                Arr::new(py, "grad_x_recon", gx, dt, &bd, true)?,
                Arr::new(py, "grad_mu", gm, dt, &bl, true)?,
                Arr::new(py, "grad_logvar", gl, dt, &bl, true)?,
            )),
            _ => return Err(PyValueError::new_err("give all of grad_x_recon, grad_mu, grad_logvar or none")),
        };
        let mut all = vec![&x, &x_recon, &mu, &logvar, &z];
        all.extend(eps.iter());
        if let Some((a, bb, c)) = &grads {
            all.extend([a, bb, c]);
        }
        check_overlaps(&all)?;
        let (pool, always) = pool.get().par_parts();
        let dims = ElboDims { batch: b, input_dim: d, latent_dim: l };
        Ok(ElboPlan { dt, dims, pool, always, x, x_recon, mu, logvar, eps, z, grads, seed, calls: 0, last: ElboResult::default() })
    }

    /// One call; returns (recon, kl, elbo) and fills z (and the gradients).
    fn run(&mut self, py: Python<'_>) -> PyResult<(f64, f64, f64)> {
        self.run_checked(py, 1)
    }

    /// n calls in a loop inside Rust (GIL released once); returns the last (recon, kl, elbo).
    fn run_n(&mut self, py: Python<'_>, n: i64) -> PyResult<(f64, f64, f64)> {
        let n = check_n(n)?;
        self.run_checked(py, n)
    }

    /// (recon, kl, elbo) of the last call.
    fn result(&self) -> (f64, f64, f64) {
        (self.last.recon, self.last.kl, self.last.elbo)
    }
}

// ------------------------------------------------------------------------- the tutorial's elbo

/// The `elbo` workload computed by the tutorial's own ndarray code (`tutorial.rs`): temporaries
/// per operation, serial, z copied into the output. Same validation as ElboPlan; eps=None draws
/// a fresh eps array each call from a StdRng seeded once with `seed`.
#[pyclass(module = "elbolab_rust")]
pub struct TutorialPlan {
    dt: Dt,
    dims: ElboDims,
    x: Arr,
    x_recon: Arr,
    mu: Arr,
    logvar: Arr,
    eps: Option<Arr>,
    z: Arr,
    rng: rand::rngs::StdRng,
    last: ElboResult,
}

trait TutorialElbo: Sized {
    #[allow(clippy::too_many_arguments)]
    fn run(dims: ElboDims, x: &[Self], xr: &[Self], mu: &[Self], lv: &[Self], eps: Option<&[Self]>, rng: &mut rand::rngs::StdRng, z: &mut [Self]) -> Result<ElboResult, String>;
}
impl TutorialElbo for f64 {
    fn run(dims: ElboDims, x: &[f64], xr: &[f64], mu: &[f64], lv: &[f64], eps: Option<&[f64]>, rng: &mut rand::rngs::StdRng, z: &mut [f64]) -> Result<ElboResult, String> {
        tutorial::elbo_f64(dims, x, xr, mu, lv, eps, rng, z)
    }
}
impl TutorialElbo for f32 {
    fn run(dims: ElboDims, x: &[f32], xr: &[f32], mu: &[f32], lv: &[f32], eps: Option<&[f32]>, rng: &mut rand::rngs::StdRng, z: &mut [f32]) -> Result<ElboResult, String> {
        tutorial::elbo_f32(dims, x, xr, mu, lv, eps, rng, z)
    }
}

impl TutorialPlan {
    fn run_t<T: TutorialElbo + Element>(&mut self, py: Python<'_>, n: usize) -> PyResult<ElboResult> {
        let dims = self.dims;
        // SAFETY: every array was checked by run_checked in this call, with the GIL held; z does
        // not overlap any input (checked at construction).
        let (x, xr, mu, lv) = unsafe { (self.x.slice::<T>(), self.x_recon.slice::<T>(), self.mu.slice::<T>(), self.logvar.slice::<T>()) };
        let eps = self.eps.as_ref().map(|a| unsafe { a.slice::<T>() });
        let z = unsafe { self.z.slice_mut::<T>() };
        let rng = &mut self.rng;
        py.detach(move || {
            let mut last = Ok(ElboResult::default());
            for _ in 0..n {
                last = T::run(dims, x, xr, mu, lv, eps, rng, &mut *z);
                if last.is_err() {
                    break;
                }
            }
            last
        })
        .map_err(PyValueError::new_err)
    }

    fn run_checked(&mut self, py: Python<'_>, n: usize) -> PyResult<(f64, f64, f64)> {
        for a in [&self.x, &self.x_recon, &self.mu, &self.logvar, &self.z] {
            a.check(py)?;
        }
        if let Some(e) = &self.eps {
            e.check(py)?;
        }
        let r = match self.dt {
            Dt::F64 => self.run_t::<f64>(py, n)?,
            Dt::F32 => self.run_t::<f32>(py, n)?,
        };
        self.last = r;
        Ok((r.recon, r.kl, r.elbo))
    }
}

#[pymethods]
impl TutorialPlan {
    #[new]
    #[pyo3(signature = (x, x_recon, mu, logvar, eps, z, seed=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        x_recon: &Bound<'_, PyAny>,
        mu: &Bound<'_, PyAny>,
        logvar: &Bound<'_, PyAny>,
        eps: Option<&Bound<'_, PyAny>>,
        z: &Bound<'_, PyAny>,
        seed: u64,
    ) -> PyResult<Self> {
        let (dt, xs) = first_array(py, "x", x, 2)?;
        let (b, d) = (xs[0], xs[1]);
        let l = ndim_of("mu", mu, 2)?[1];
        let (bd, bl) = ([b, d], [b, l]);
        let x = Arr::new(py, "x", x, dt, &bd, false)?;
        let x_recon = Arr::new(py, "x_recon", x_recon, dt, &bd, false)?;
        let mu = Arr::new(py, "mu", mu, dt, &bl, false)?;
        let logvar = Arr::new(py, "logvar", logvar, dt, &bl, false)?;
        let eps = eps.map(|e| Arr::new(py, "eps", e, dt, &bl, false)).transpose()?;
        let z = Arr::new(py, "z", z, dt, &bl, true)?;
        let mut all = vec![&x, &x_recon, &mu, &logvar, &z];
        all.extend(eps.iter());
        check_overlaps(&all)?;
        let dims = ElboDims { batch: b, input_dim: d, latent_dim: l };
        Ok(TutorialPlan { dt, dims, x, x_recon, mu, logvar, eps, z, rng: tutorial::tutorial_rng(seed), last: ElboResult::default() })
    }

    /// One call; returns (recon, kl, elbo) and fills z.
    fn run(&mut self, py: Python<'_>) -> PyResult<(f64, f64, f64)> {
        self.run_checked(py, 1)
    }

    /// n calls in a loop inside Rust (the tutorial's timing loop); returns the last result.
    fn run_n(&mut self, py: Python<'_>, n: i64) -> PyResult<(f64, f64, f64)> {
        let n = check_n(n)?;
        self.run_checked(py, n)
    }

    /// (recon, kl, elbo) of the last call.
    fn result(&self) -> (f64, f64, f64) {
        (self.last.recon, self.last.kl, self.last.elbo)
    }
}

// ------------------------------------------------------------------------------------ iwae

#[pyclass(module = "elbolab_rust")]
pub struct IwaePlan {
    dt: Dt,
    dims: IwaeDims,
    pool: Option<Arc<ThreadPool>>,
    always: bool,
    arrays: [Arr; 6],
    last: f64,
}

impl IwaePlan {
    fn run_t<T: Real + Element>(&mut self, py: Python<'_>, n: usize) -> PyResult<f64> {
        let par = Par { pool: self.pool.as_deref(), always: self.always };
        let dims = self.dims;
        let [x, mu, lv, eps, w, bias] = &self.arrays;
        // SAFETY: checked in run_checked.
        let args = unsafe {
            IwaeArgs { x: x.slice::<T>(), mu: mu.slice::<T>(), logvar: lv.slice::<T>(), eps: eps.slice::<T>(), dec_w: w.slice::<T>(), dec_b: bias.slice::<T>() }
        };
        py.detach(move || {
            let mut last = Ok(0.0);
            for _ in 0..n {
                last = iwae::iwae(par, dims, IwaeArgs { ..args });
                if last.is_err() {
                    break;
                }
            }
            last
        })
        .map_err(PyValueError::new_err)
    }

    fn run_checked(&mut self, py: Python<'_>, n: usize) -> PyResult<f64> {
        for a in &self.arrays {
            a.check(py)?;
        }
        let r = match self.dt {
            Dt::F64 => self.run_t::<f64>(py, n)?,
            Dt::F32 => self.run_t::<f32>(py, n)?,
        };
        self.last = r;
        Ok(r)
    }
}

#[pymethods]
impl IwaePlan {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        pool: &Bound<'_, Pool>,
        x: &Bound<'_, PyAny>,
        mu: &Bound<'_, PyAny>,
        logvar: &Bound<'_, PyAny>,
        eps: &Bound<'_, PyAny>,
        dec_w: &Bound<'_, PyAny>,
        dec_b: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let (dt, xs) = first_array(py, "x", x, 2)?;
        let (b, d) = (xs[0], xs[1]);
        let es = ndim_of("eps", eps, 3)?;
        let (k, l) = (es[0], es[2]);
        let arrays = [
            Arr::new(py, "x", x, dt, &[b, d], false)?,
            Arr::new(py, "mu", mu, dt, &[b, l], false)?,
            Arr::new(py, "logvar", logvar, dt, &[b, l], false)?,
            Arr::new(py, "eps", eps, dt, &[k, b, l], false)?,
            Arr::new(py, "dec_w", dec_w, dt, &[l, d], false)?,
            Arr::new(py, "dec_b", dec_b, dt, &[d], false)?,
        ];
        let (pool, always) = pool.get().par_parts();
        let dims = IwaeDims { batch: b, input_dim: d, latent_dim: l, samples: k };
        Ok(IwaePlan { dt, dims, pool, always, arrays, last: f64::NAN })
    }

    fn run(&mut self, py: Python<'_>) -> PyResult<f64> {
        self.run_checked(py, 1)
    }

    fn run_n(&mut self, py: Python<'_>, n: i64) -> PyResult<f64> {
        let n = check_n(n)?;
        self.run_checked(py, n)
    }

    fn result(&self) -> f64 {
        self.last
    }
}

// -------------------------------------------------------------------------------- vae_step

enum Scratch {
    F32(VaeScratch<f32>),
    F64(VaeScratch<f64>),
}

#[pyclass(module = "elbolab_rust")]
pub struct VaePlan {
    dt: Dt,
    pool: Option<Arc<ThreadPool>>,
    always: bool,
    x: Arr,
    eps: Arr,
    params: Vec<Arr>,
    grads: Vec<Arr>,
    news: Vec<Arr>,
    lr: f64,
    scratch: Scratch,
    last: f64,
}

trait ScratchOf: Sized {
    fn of(s: &mut Scratch) -> Option<&mut VaeScratch<Self>>;
}
impl ScratchOf for f32 {
    fn of(s: &mut Scratch) -> Option<&mut VaeScratch<f32>> {
        match s {
            Scratch::F32(v) => Some(v),
            _ => None,
        }
    }
}
impl ScratchOf for f64 {
    fn of(s: &mut Scratch) -> Option<&mut VaeScratch<f64>> {
        match s {
            Scratch::F64(v) => Some(v),
            _ => None,
        }
    }
}

impl VaePlan {
    fn run_t<T: vae::VaeReal + Element + ScratchOf>(&mut self, py: Python<'_>, n: usize) -> PyResult<f64> {
        let par = Par { pool: self.pool.as_deref(), always: self.always };
        let lr = T::from_f64(self.lr);
        // SAFETY: checked in run_checked; outputs do not overlap anything (checked at construction).
        let (x, eps) = unsafe { (self.x.slice::<T>(), self.eps.slice::<T>()) };
        let params: [&[T]; 10] = std::array::from_fn(|i| unsafe { self.params[i].slice::<T>() });
        let mut grads: [&mut [T]; 10] = std::array::from_fn(|i| unsafe { self.grads[i].slice_mut::<T>() });
        let mut news: [&mut [T]; 10] = std::array::from_fn(|i| unsafe { self.news[i].slice_mut::<T>() });
        let scratch = T::of(&mut self.scratch).ok_or_else(|| PyValueError::new_err("internal: scratch dtype mismatch"))?;
        py.detach(move || {
            let mut last = Ok(0.0);
            for _ in 0..n {
                let g: [&mut [T]; 10] = grads.each_mut().map(|s| &mut **s);
                let nw: [&mut [T]; 10] = news.each_mut().map(|s| &mut **s);
                last = vae::vae_step(par, scratch, VaeArgs { x, eps, params, lr, grads: g, new_params: nw });
                if last.is_err() {
                    break;
                }
            }
            last
        })
        .map_err(PyValueError::new_err)
    }

    fn run_checked(&mut self, py: Python<'_>, n: usize) -> PyResult<f64> {
        self.x.check(py)?;
        self.eps.check(py)?;
        for a in self.params.iter().chain(&self.grads).chain(&self.news) {
            a.check(py)?;
        }
        let r = match self.dt {
            Dt::F64 => self.run_t::<f64>(py, n)?,
            Dt::F32 => self.run_t::<f32>(py, n)?,
        };
        self.last = r;
        Ok(r)
    }
}

fn ten<'py>(name: &str, seq: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    let items: Vec<Bound<'py, PyAny>> = seq
        .try_iter()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be a sequence of 10 arrays in the order {VAE_PARAMS:?}")))?
        .collect::<PyResult<_>>()?;
    if items.len() != 10 {
        return Err(PyValueError::new_err(format!("{name} must hold 10 arrays in the order {VAE_PARAMS:?}, got {}", items.len())));
    }
    Ok(items)
}

#[pymethods]
impl VaePlan {
    /// params, grads and new_params are sequences of 10 arrays in VAE_PARAMS order.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        pool: &Bound<'_, Pool>,
        x: &Bound<'_, PyAny>,
        eps: &Bound<'_, PyAny>,
        params: &Bound<'_, PyAny>,
        lr: f64,
        grads: &Bound<'_, PyAny>,
        new_params: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let (dt, xs) = first_array(py, "x", x, 2)?;
        let (b, d) = (xs[0], xs[1]);
        let l = ndim_of("eps", eps, 2)?[1];
        let h = ndim_of("enc_w", ten("params", params)?.first().ok_or_else(|| PyValueError::new_err("no params"))?, 2)?[1];
        let dims = VaeDims { batch: b, input_dim: d, hidden_dim: h, latent_dim: l };
        let shapes = dims.param_shapes();
        let mk = |prefix: &str, seq: &Bound<'_, PyAny>, out: bool| -> PyResult<Vec<Arr>> {
            ten(prefix.trim_end_matches('_'), seq)?
                .iter()
                .enumerate()
                .map(|(i, o)| Arr::new(py, &format!("{prefix}{}", VAE_PARAMS[i]), o, dt, &shapes[i], out))
                .collect()
        };
        let x = Arr::new(py, "x", x, dt, &[b, d], false)?;
        let eps = Arr::new(py, "eps", eps, dt, &[b, l], false)?;
        let params = mk("", params, false)?;
        let grads = mk("grad_", grads, true)?;
        let news = mk("new_", new_params, true)?;
        if !lr.is_finite() {
            return Err(PyValueError::new_err(format!("lr must be finite, got {lr}")));
        }
        let mut all: Vec<&Arr> = vec![&x, &eps];
        all.extend(params.iter().chain(&grads).chain(&news));
        check_overlaps(&all)?;
        let scratch = match dt {
            Dt::F32 => Scratch::F32(VaeScratch::new(dims)),
            Dt::F64 => Scratch::F64(VaeScratch::new(dims)),
        };
        let (pool, always) = pool.get().par_parts();
        Ok(VaePlan { dt, pool, always, x, eps, params, grads, news, lr, scratch, last: f64::NAN })
    }

    /// One SGD step; returns the loss, fills grad_* and new_* (the parameters are not changed).
    fn run(&mut self, py: Python<'_>) -> PyResult<f64> {
        self.run_checked(py, 1)
    }

    fn run_n(&mut self, py: Python<'_>, n: i64) -> PyResult<f64> {
        let n = check_n(n)?;
        self.run_checked(py, n)
    }

    fn result(&self) -> f64 {
        self.last
    }
}

// ------------------------------------------------------------------------------ module level

/// STREAM-like bandwidth probe: best bytes/s over `reps` for kind 'read2', 'copy' or 'triad' on a
/// working set of `bytes` (see stream.rs). Runs with the GIL released.
#[pyfunction]
#[pyo3(signature = (kind, bytes, reps=10, threads=1))]
fn stream_probe(py: Python<'_>, kind: &str, bytes: i64, reps: i64, threads: i64) -> PyResult<f64> {
    let k = stream::Probe::parse(kind).ok_or_else(|| PyValueError::new_err(format!("unknown probe {kind:?}: use 'read2', 'copy' or 'triad'")))?;
    if bytes < 1 || reps < 1 || !(1..=1024).contains(&threads) {
        return Err(PyValueError::new_err("bytes and reps must be >= 1, threads between 1 and 1024"));
    }
    let (bytes, reps, threads) = (bytes as usize, reps as usize, threads as usize);
    py.detach(move || stream::probe(k, bytes, reps, threads)).map_err(PyValueError::new_err)
}

/// The instruction set the hot loops are dispatched to on this CPU.
#[pyfunction]
fn simd_level() -> &'static str {
    real::Simd::detect().name()
}

/// Build facts for the results file and the report.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("version", VERSION)?;
    d.set_item("rustc", RUSTC_VERSION)?;
    d.set_item("simd", real::Simd::detect().name())?;
    d.set_item("lanes", real::LANES)?;
    d.set_item("rng", "Xoshiro256++ (rand_xoshiro) + ziggurat StandardNormal (rand_distr), f64, one generator per 64 rows per call")?;
    d.set_item("tutorial_rng", "StdRng (ChaCha12, rand) seeded once per case + StandardNormal (rand_distr) in the case dtype, a fresh array per call")?;
    d.set_item("gemm", "ndarray general_mat_mul -> matrixmultiply (pure Rust, runtime AVX2/FMA dispatch)")?;
    d.set_item("elbo_par_min_elems", par::ELBO_PAR_MIN_ELEMS)?;
    d.set_item("iwae_par_min_macs", par::IWAE_PAR_MIN_MACS)?;
    d.set_item("gemm_par_min_macs", par::GEMM_PAR_MIN_MACS)?;
    d.set_item("debug_assertions", cfg!(debug_assertions))?;
    Ok(d)
}

#[pymodule]
fn elbolab_rust(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", VERSION)?;
    m.add("RUSTC_VERSION", RUSTC_VERSION)?;
    m.add("VAE_PARAMS", VAE_PARAMS.to_vec())?;
    m.add_class::<Pool>()?;
    m.add_class::<ElboPlan>()?;
    m.add_class::<IwaePlan>()?;
    m.add_class::<VaePlan>()?;
    m.add_class::<TutorialPlan>()?;
    m.add_function(wrap_pyfunction!(stream_probe, m)?)?;
    m.add_function(wrap_pyfunction!(simd_level, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    Ok(())
}
