//! The PyO3 layer: NumPy arrays in, plain-Rust kernels (`crate::elbo`, `iwae`, `vae`, ...) run on
//! them without copying.
//!
//! Calls are made through *plans*: `ElboPlan(pool, x, x_recon, ...)` validates every array once
//! (type, dtype, shape, C-contiguity, alignment, outputs writeable and overlapping nothing) and
//! holds it; `plan.run()` re-checks each array with a few pointer reads, releases the GIL and runs
//! the kernel; `plan.run_n(n)` runs n iterations inside Rust (the tutorial's timing loop).
//! Errors are Python exceptions (TypeError for a wrong type or dtype, ValueError for a wrong
//! shape, layout, read-only or overlapping output, an array changed after the plan was made);
//! nothing a caller passes can panic.
//!
//! # The GIL contract
//!
//! Kernels run with the GIL released (`py.detach`) on the memory of NumPy arrays that other
//! Python threads could touch meanwhile. What makes that sound:
//!
//! 1. **Lifetime.** A plan holds a strong reference to every array it uses, so none can be freed
//!    while the plan lives, and `ndarray.resize` (whose default refcheck refuses an array with
//!    other references) cannot reallocate one. Each call first re-checks, with the GIL held, that
//!    every array still has the data pointer, dtype, shape, strides and flags it had when the plan
//!    was made (`Arr::check`: a few pointer reads, no allocation), so a change made *between*
//!    calls (a new shape, `resize(refcheck=False)`, a flag flipped) is a ValueError, never a
//!    stale pointer.
//! 2. **Inputs are read-only while a plan holds them.** `Plan::new` clears NPY_ARRAY_WRITEABLE
//!    on every input it found writeable; dropping the plan sets it back (only if a plan cleared
//!    it; plans sharing an array share one guard, and the last one restores it). A Python write
//!    to an input (`x[0] = 1`, `x += 1`, `np.copyto(x, ...)`) therefore raises
//!    "assignment destination is read-only" instead of racing with a kernel, and re-enabling
//!    writes (`x.flags.writeable = True`) makes the next call raise. Not covered: a view taken
//!    *before* the plan was made keeps its own flag, and C code that ignores the flag.
//! 3. **Outputs are guarded between calls only.** An output must be writeable, overlap no other
//!    array of the plan, and is re-checked each call like an input. A Python write to (or read
//!    of) an output *during* a call, from another thread, is a data race on that buffer (the
//!    memory stays valid, by 1; the values are undefined). It is not prevented: outputs must be
//!    writeable for the kernel, so the flag cannot guard them; the lab's workers call a plan from
//!    one thread and read outputs only after the call returns; and writing into a private buffer
//!    and copying out would add exactly the memory traffic the lab measures.
//! 4. **A plan is exclusive during a call.** `run`/`run_n` borrow the plan mutably (PyO3's
//!    borrow flag), so a second thread calling the same plan meanwhile gets a RuntimeError
//!    ("Already borrowed") rather than sharing its outputs or its RNG state.
//!
//! Inside the call, kernels see the arrays only through `arrays::Bufs`: typed slices checked
//! against the dtype, each output handed out once, so the Rust side cannot alias them either.

pub(crate) mod arrays;
pub(crate) mod module;
pub(crate) mod plan;
pub(crate) mod plans;
pub(crate) mod pool;
