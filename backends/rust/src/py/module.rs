//! Module-level functions: the bandwidth probe and the build facts.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{par, real, stream, RUSTC_VERSION, VERSION};

/// STREAM-like bandwidth probe: best bytes/s over `reps` for kind 'read2', 'copy' or 'triad' on a
/// working set of `bytes` (see stream.rs). Runs with the GIL released.
#[pyfunction]
#[pyo3(signature = (kind, bytes, reps=10, threads=1))]
pub(crate) fn stream_probe(py: Python<'_>, kind: &str, bytes: i64, reps: i64, threads: i64) -> PyResult<f64> {
    let k = stream::Probe::parse(kind).ok_or_else(|| PyValueError::new_err(format!("unknown probe {kind:?}: use 'read2', 'copy' or 'triad'")))?;
    if bytes < 1 || reps < 1 || !(1..=1024).contains(&threads) {
        return Err(PyValueError::new_err("bytes and reps must be >= 1, threads between 1 and 1024"));
    }
    let (bytes, reps, threads) = (bytes as usize, reps as usize, threads as usize);
    py.detach(move || stream::probe(k, bytes, reps, threads)).map_err(PyValueError::new_err)
}

/// Build facts for the results file and the report.
#[pyfunction]
pub(crate) fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
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
