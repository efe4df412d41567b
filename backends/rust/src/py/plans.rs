//! The four plan classes: ElboPlan (elbo, elbo_grad), TutorialPlan (the tutorial's own code),
//! IwaePlan, VaePlan. Each is a constructor (validate the arrays, record where each one sits in
//! the plan's array list) and a `Kernel` (take the slices, call the kernel n times); the shared
//! methods come from `plan_class!`.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use rand::rngs::StdRng;

use super::arrays::{first_array, ndim_of, Arr, Bufs, Dt, Elem, Role};
use super::plan::{plan_class, Kernel, Plan};
use super::pool::{Pool, Threads};
use crate::elbo::{self, call_seed, ElboArgs, ElboDims, ElboGrads, ElboResult, Eps};
use crate::iwae::{self, IwaeArgs, IwaeDims};
use crate::real::Real;
use crate::tutorial;
use crate::vae::{self, VaeArgs, VaeDims, VaeReal, VaeScratch, VAE_PARAMS};

type Triple = (f64, f64, f64);
const NAN3: Triple = (f64::NAN, f64::NAN, f64::NAN);

fn triple(r: ElboResult) -> Triple {
    (r.recon, r.kl, r.elbo)
}

/// Pushes an array onto the plan's list and returns its index.
fn push(arrays: &mut Vec<Arr>, a: Arr) -> usize {
    arrays.push(a);
    arrays.len() - 1
}

// the fixed positions of the elbo plans' first five arrays
const X: usize = 0;
const XR: usize = 1;
const MU: usize = 2;
const LV: usize = 3;
const Z: usize = 4;

/// The arrays every elbo plan has: x, x_recon [B,D]; mu, logvar, z [B,L]; eps [B,L] or None
/// (drawn inside the call), and eps_out [B,L] (only with eps=None: each call's drawn eps).
/// Returns (dtype, dims, arrays, eps index, eps_out index).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn elbo_arrays(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    x_recon: &Bound<'_, PyAny>,
    mu: &Bound<'_, PyAny>,
    logvar: &Bound<'_, PyAny>,
    eps: Option<&Bound<'_, PyAny>>,
    z: &Bound<'_, PyAny>,
    eps_out: Option<&Bound<'_, PyAny>>,
) -> PyResult<(Dt, ElboDims, Vec<Arr>, Option<usize>, Option<usize>)> {
    let (dt, xs) = first_array(py, "x", x, 2)?;
    let (b, d) = (xs[0], xs[1]);
    let l = ndim_of("mu", mu, 2)?[1];
    let (bd, bl) = ([b, d], [b, l]);
    let mut arrays = vec![
        Arr::new(py, "x", x, dt, &bd, Role::In)?,
        Arr::new(py, "x_recon", x_recon, dt, &bd, Role::In)?,
        Arr::new(py, "mu", mu, dt, &bl, Role::In)?,
        Arr::new(py, "logvar", logvar, dt, &bl, Role::In)?,
        Arr::new(py, "z", z, dt, &bl, Role::Out)?,
    ];
    let eps_i = eps.map(|e| Arr::new(py, "eps", e, dt, &bl, Role::In)).transpose()?.map(|a| push(&mut arrays, a));
    let eps_out_i = match (eps_out, eps_i) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(PyValueError::new_err("eps_out is for eps drawn inside the call: pass eps=None with it"));
        }
        (Some(o), None) => Some(push(&mut arrays, Arr::new(py, "eps_out", o, dt, &bl, Role::Out)?)),
    };
    Ok((dt, ElboDims { batch: b, input_dim: d, latent_dim: l }, arrays, eps_i, eps_out_i))
}

// ------------------------------------------------------------------------------------ elbo

pub(crate) struct ElboKernel {
    dt: Dt,
    dims: ElboDims,
    threads: Threads,
    eps: Option<usize>,
    eps_out: Option<usize>,
    /// grad_x_recon, grad_mu, grad_logvar (elbo_grad)
    grads: Option<[usize; 3]>,
    seed: u64,
    /// sampled calls so far: call k draws from call_seed(seed, k)
    calls: u64,
}

impl ElboKernel {
    fn run_t<T: Real + Elem>(&mut self, bufs: Bufs<'_>, n: usize) -> Result<Triple, String> {
        let (x, xr, mu, lv) = (bufs.input::<T>(X)?, bufs.input::<T>(XR)?, bufs.input::<T>(MU)?, bufs.input::<T>(LV)?);
        let z = bufs.output::<T>(Z)?;
        let eps = self.eps.map(|i| bufs.input::<T>(i)).transpose()?;
        let mut eps_out = self.eps_out.map(|i| bufs.output::<T>(i)).transpose()?;
        let mut grads = match self.grads {
            Some([a, b, c]) => Some((bufs.output::<T>(a)?, bufs.output::<T>(b)?, bufs.output::<T>(c)?)),
            None => None,
        };
        let par = self.threads.par();
        let mut last = ElboResult::default();
        for _ in 0..n {
            let eps = match eps {
                Some(e) => Eps::Given(e),
                None => {
                    self.calls += 1;
                    Eps::Sampled { call_seed: call_seed(self.seed, self.calls), out: eps_out.as_deref_mut() }
                }
            };
            let g = grads.as_mut().map(|(a, b, c)| ElboGrads { x_recon: a, mu: b, logvar: c });
            last = elbo::elbo(par, self.dims, ElboArgs { x, x_recon: xr, mu, logvar: lv, eps, z: &mut *z, grads: g })?;
        }
        Ok(triple(last))
    }
}

impl Kernel for ElboKernel {
    type Out = Triple;
    const BEFORE_FIRST_CALL: Triple = NAN3;
    fn run(&mut self, bufs: Bufs<'_>, n: usize) -> Result<Triple, String> {
        match self.dt {
            Dt::F64 => self.run_t::<f64>(bufs, n),
            Dt::F32 => self.run_t::<f32>(bufs, n),
        }
    }
}

plan_class! {
    /// The `elbo` / `elbo_grad` workload on fixed arrays (gradients when all three grad_* are
    /// given). eps=None draws eps inside each call (call k from call_seed(seed, k)); eps_out, a
    /// [B,L] output, then receives the eps each call drew. run() returns (recon, kl, elbo).
    ElboPlan(ElboKernel) -> (f64, f64, f64) {
        #[new]
        #[pyo3(signature = (pool, x, x_recon, mu, logvar, eps, z, grad_x_recon=None, grad_mu=None, grad_logvar=None, seed=0, *, eps_out=None))]
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
            eps_out: Option<&Bound<'_, PyAny>>,
        ) -> PyResult<Self> {
            let (dt, dims, mut arrays, eps, eps_out) = elbo_arrays(py, x, x_recon, mu, logvar, eps, z, eps_out)?;
            let (bd, bl) = ([dims.batch, dims.input_dim], [dims.batch, dims.latent_dim]);
            let grads = match (grad_x_recon, grad_mu, grad_logvar) {
                (None, None, None) => None,
                (Some(gx), Some(gm), Some(gl)) => Some([
                    push(&mut arrays, Arr::new(py, "grad_x_recon", gx, dt, &bd, Role::Out)?),
                    push(&mut arrays, Arr::new(py, "grad_mu", gm, dt, &bl, Role::Out)?),
                    push(&mut arrays, Arr::new(py, "grad_logvar", gl, dt, &bl, Role::Out)?),
                ]),
                _ => return Err(PyValueError::new_err("give all of grad_x_recon, grad_mu, grad_logvar or none")),
            };
            let kernel = ElboKernel { dt, dims, threads: Threads::of(pool), eps, eps_out, grads, seed, calls: 0 };
            Ok(ElboPlan(Plan::new(py, arrays, kernel)?))
        }
    }
}

// ------------------------------------------------------------------------- the tutorial's elbo

pub(crate) struct TutorialKernel {
    dt: Dt,
    dims: ElboDims,
    eps: Option<usize>,
    eps_out: Option<usize>,
    rng: StdRng,
}

/// The tutorial's code for each dtype (tutorial.rs writes it once per type, as its author would).
trait TutorialElbo: Elem {
    #[allow(clippy::too_many_arguments)]
    fn run(
        dims: ElboDims,
        x: &[Self],
        xr: &[Self],
        mu: &[Self],
        lv: &[Self],
        eps: Option<&[Self]>,
        rng: &mut StdRng,
        z: &mut [Self],
        eps_out: Option<&mut [Self]>,
    ) -> Result<ElboResult, String>;
}

macro_rules! tutorial_elbo_for {
    ($t:ty, $f:path) => {
        impl TutorialElbo for $t {
            fn run(
                dims: ElboDims,
                x: &[$t],
                xr: &[$t],
                mu: &[$t],
                lv: &[$t],
                eps: Option<&[$t]>,
                rng: &mut StdRng,
                z: &mut [$t],
                eps_out: Option<&mut [$t]>,
            ) -> Result<ElboResult, String> {
                $f(dims, x, xr, mu, lv, eps, rng, z, eps_out)
            }
        }
    };
}
tutorial_elbo_for!(f64, tutorial::elbo_f64);
tutorial_elbo_for!(f32, tutorial::elbo_f32);

impl TutorialKernel {
    fn run_t<T: TutorialElbo>(&mut self, bufs: Bufs<'_>, n: usize) -> Result<Triple, String> {
        let (x, xr, mu, lv) = (bufs.input::<T>(X)?, bufs.input::<T>(XR)?, bufs.input::<T>(MU)?, bufs.input::<T>(LV)?);
        let z = bufs.output::<T>(Z)?;
        let eps = self.eps.map(|i| bufs.input::<T>(i)).transpose()?;
        let mut eps_out = self.eps_out.map(|i| bufs.output::<T>(i)).transpose()?;
        let mut last = ElboResult::default();
        for _ in 0..n {
            last = T::run(self.dims, x, xr, mu, lv, eps, &mut self.rng, &mut *z, eps_out.as_deref_mut())?;
        }
        Ok(triple(last))
    }
}

impl Kernel for TutorialKernel {
    type Out = Triple;
    const BEFORE_FIRST_CALL: Triple = NAN3;
    fn run(&mut self, bufs: Bufs<'_>, n: usize) -> Result<Triple, String> {
        match self.dt {
            Dt::F64 => self.run_t::<f64>(bufs, n),
            Dt::F32 => self.run_t::<f32>(bufs, n),
        }
    }
}

plan_class! {
    /// The `elbo` workload computed by the tutorial's own ndarray code (`tutorial.rs`):
    /// temporaries per operation, serial, z copied into the output. Same validation as ElboPlan;
    /// eps=None draws a fresh eps array each call from a StdRng seeded once with `seed`, and
    /// eps_out (only with eps=None) receives a copy of it. run() returns (recon, kl, elbo).
    TutorialPlan(TutorialKernel) -> (f64, f64, f64) {
        #[new]
        #[pyo3(signature = (x, x_recon, mu, logvar, eps, z, seed=0, *, eps_out=None))]
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
            eps_out: Option<&Bound<'_, PyAny>>,
        ) -> PyResult<Self> {
            let (dt, dims, arrays, eps, eps_out) = elbo_arrays(py, x, x_recon, mu, logvar, eps, z, eps_out)?;
            let kernel = TutorialKernel { dt, dims, eps, eps_out, rng: tutorial::tutorial_rng(seed) };
            Ok(TutorialPlan(Plan::new(py, arrays, kernel)?))
        }
    }
}

// ------------------------------------------------------------------------------------ iwae

pub(crate) struct IwaeKernel {
    dt: Dt,
    dims: IwaeDims,
    threads: Threads,
}

impl IwaeKernel {
    fn run_t<T: Real + Elem>(&mut self, bufs: Bufs<'_>, n: usize) -> Result<f64, String> {
        let args = IwaeArgs {
            x: bufs.input::<T>(0)?,
            mu: bufs.input::<T>(1)?,
            logvar: bufs.input::<T>(2)?,
            eps: bufs.input::<T>(3)?,
            dec_w: bufs.input::<T>(4)?,
            dec_b: bufs.input::<T>(5)?,
        };
        let mut last = f64::NAN;
        for _ in 0..n {
            last = iwae::iwae(self.threads.par(), self.dims, IwaeArgs { ..args })?;
        }
        Ok(last)
    }
}

impl Kernel for IwaeKernel {
    type Out = f64;
    const BEFORE_FIRST_CALL: f64 = f64::NAN;
    fn run(&mut self, bufs: Bufs<'_>, n: usize) -> Result<f64, String> {
        match self.dt {
            Dt::F64 => self.run_t::<f64>(bufs, n),
            Dt::F32 => self.run_t::<f32>(bufs, n),
        }
    }
}

plan_class! {
    /// The `iwae` workload: x [B,D], mu, logvar [B,L], eps [K,B,L], dec_w [L,D], dec_b [D].
    /// run() returns the bound.
    IwaePlan(IwaeKernel) -> f64 {
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
            let arrays = vec![
                Arr::new(py, "x", x, dt, &[b, d], Role::In)?,
                Arr::new(py, "mu", mu, dt, &[b, l], Role::In)?,
                Arr::new(py, "logvar", logvar, dt, &[b, l], Role::In)?,
                Arr::new(py, "eps", eps, dt, &[k, b, l], Role::In)?,
                Arr::new(py, "dec_w", dec_w, dt, &[l, d], Role::In)?,
                Arr::new(py, "dec_b", dec_b, dt, &[d], Role::In)?,
            ];
            let dims = IwaeDims { batch: b, input_dim: d, latent_dim: l, samples: k };
            Ok(IwaePlan(Plan::new(py, arrays, IwaeKernel { dt, dims, threads: Threads::of(pool) })?))
        }
    }
}

// -------------------------------------------------------------------------------- vae_step

enum Scratch {
    F32(VaeScratch<f32>),
    F64(VaeScratch<f64>),
}

/// Array positions: x 0, eps 1, params 2..12, grads 12..22, new params 22..32 (VAE_PARAMS order).
const VAE_PARAMS_AT: usize = 2;
const VAE_GRADS_AT: usize = 12;
const VAE_NEWS_AT: usize = 22;

pub(crate) struct VaeKernel {
    threads: Threads,
    lr: f64,
    scratch: Scratch,
}

fn vae_run<T: VaeReal + Elem>(par: crate::par::Par<'_>, lr: f64, scratch: &mut VaeScratch<T>, bufs: Bufs<'_>, n: usize) -> Result<f64, String> {
    let (x, eps) = (bufs.input::<T>(0)?, bufs.input::<T>(1)?);
    let mut params: [&[T]; 10] = [&[]; 10];
    let mut grads: [&mut [T]; 10] = Default::default();
    let mut news: [&mut [T]; 10] = Default::default();
    for i in 0..10 {
        params[i] = bufs.input::<T>(VAE_PARAMS_AT + i)?;
        grads[i] = bufs.output::<T>(VAE_GRADS_AT + i)?;
        news[i] = bufs.output::<T>(VAE_NEWS_AT + i)?;
    }
    let lr = T::from_f64(lr);
    let mut last = f64::NAN;
    for _ in 0..n {
        let g: [&mut [T]; 10] = grads.each_mut().map(|s| &mut **s);
        let nw: [&mut [T]; 10] = news.each_mut().map(|s| &mut **s);
        last = vae::vae_step(par, scratch, VaeArgs { x, eps, params, lr, grads: g, new_params: nw })?;
    }
    Ok(last)
}

impl Kernel for VaeKernel {
    type Out = f64;
    const BEFORE_FIRST_CALL: f64 = f64::NAN;
    fn run(&mut self, bufs: Bufs<'_>, n: usize) -> Result<f64, String> {
        let par = self.threads.par();
        match &mut self.scratch {
            Scratch::F64(s) => vae_run::<f64>(par, self.lr, s, bufs, n),
            Scratch::F32(s) => vae_run::<f32>(par, self.lr, s, bufs, n),
        }
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

plan_class! {
    /// The `vae_step` workload: params, grads and new_params are sequences of 10 arrays in
    /// VAE_PARAMS order. run() returns the loss, fills grad_* and new_* (params are not changed).
    VaePlan(VaeKernel) -> f64 {
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
            let params = ten("params", params)?;
            let h = ndim_of("enc_w", &params[0], 2)?[1];
            let dims = VaeDims { batch: b, input_dim: d, hidden_dim: h, latent_dim: l };
            let shapes = dims.param_shapes();
            let mut arrays = vec![Arr::new(py, "x", x, dt, &[b, d], Role::In)?, Arr::new(py, "eps", eps, dt, &[b, l], Role::In)?];
            for (prefix, seq, role) in [("", params, Role::In), ("grad_", ten("grads", grads)?, Role::Out), ("new_", ten("new_params", new_params)?, Role::Out)] {
                for (i, o) in seq.iter().enumerate() {
                    arrays.push(Arr::new(py, &format!("{prefix}{}", VAE_PARAMS[i]), o, dt, &shapes[i], role)?);
                }
            }
            if !lr.is_finite() {
                return Err(PyValueError::new_err(format!("lr must be finite, got {lr}")));
            }
            let scratch = match dt {
                Dt::F32 => Scratch::F32(VaeScratch::new(dims)),
                Dt::F64 => Scratch::F64(VaeScratch::new(dims)),
            };
            Ok(VaePlan(Plan::new(py, arrays, VaeKernel { threads: Threads::of(pool), lr, scratch })?))
        }
    }
}
