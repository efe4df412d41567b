//! elbolab_rust: the lab's Rust backend, a thin PyO3 layer (`py`) over plain-Rust kernels.
//!
//! Kernels (elbo.rs, iwae.rs, vae.rs, tutorial.rs, stream.rs) are ordinary Rust functions over
//! slices, tested by `cargo test` without Python. `py` turns NumPy arrays into those slices
//! without copying; its module doc states the GIL contract.

pub mod elbo;
pub mod iwae;
pub mod par;
pub mod real;
pub mod simd;
pub mod stream;
pub mod tutorial;
pub mod vae;

mod py;

#[cfg(test)]
mod odd_sizes;
#[cfg(test)]
mod testutil;

use pyo3::prelude::*;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const RUSTC_VERSION: &str = env!("ELBOLAB_RUSTC_VERSION");

#[pymodule]
fn elbolab_rust(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", VERSION)?;
    m.add("RUSTC_VERSION", RUSTC_VERSION)?;
    m.add("VAE_PARAMS", vae::VAE_PARAMS.to_vec())?;
    m.add_class::<py::pool::Pool>()?;
    m.add_class::<py::plans::ElboPlan>()?;
    m.add_class::<py::plans::IwaePlan>()?;
    m.add_class::<py::plans::VaePlan>()?;
    m.add_class::<py::plans::TutorialPlan>()?;
    m.add_function(wrap_pyfunction!(py::module::stream_probe, m)?)?;
    m.add_function(wrap_pyfunction!(py::module::build_info, m)?)?;
    Ok(())
}
