//! NumPy arrays as kernel slices: validation once per plan (`Arr::new`), a cheap re-check per call
//! (`Arr::check`), the read-only guard on inputs (`InputGuard`), and `Bufs`, the only way a
//! kernel gets at the memory (typed, each output at most once per call, no `unsafe` outside
//! this file). See `crate::py` for the GIL contract these implement.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Mutex;

use numpy::npyffi::{self, NPY_ARRAY_ALIGNED, NPY_ARRAY_C_CONTIGUOUS, NPY_ARRAY_WRITEABLE};
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// The two dtypes the kernels run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dt {
    F32,
    F64,
}

impl Dt {
    pub(crate) fn name(self) -> &'static str {
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

/// The element types a plan's arrays can hold.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    const DT: Dt;
}
impl Elem for f32 {
    const DT: Dt = Dt::F32;
}
impl Elem for f64 {
    const DT: Dt = Dt::F64;
}

/// Whether the plan reads or writes an array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// read by the kernels; read-only (NPY_ARRAY_WRITEABLE clear) while the plan lives
    In,
    /// written by the kernels; must be writeable and not overlap any other array of the plan
    Out,
}

pub(crate) fn shape_str(s: &[usize]) -> String {
    match s.len() {
        1 => format!("({},)", s[0]),
        _ => format!("({})", s.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// (data pointer, descr pointer, flags) of a live ndarray.
fn fields(a: &Bound<'_, PyUntypedArray>) -> (usize, usize, i32) {
    // SAFETY: `a` is a live ndarray (its type was checked by the cast that made it); these are
    // plain field reads with the GIL held.
    unsafe {
        let f = npyffi::_PyArray_GET_ITEM_DATA(a.as_array_ptr());
        ((*f).data as usize, (*f).descr as usize, (*f).flags)
    }
}

/// Sets or clears NPY_ARRAY_WRITEABLE directly (what numpy's PyArray_ENABLEFLAGS/CLEARFLAGS do).
fn set_writeable(a: &Bound<'_, PyUntypedArray>, on: bool) {
    // SAFETY: as in `fields`; a flag update with the GIL held. Only called to clear the flag, or
    // to set it back on an array whose flag this module itself cleared.
    unsafe {
        let f = npyffi::_PyArray_GET_ITEM_DATA(a.as_array_ptr());
        if on {
            (*f).flags |= NPY_ARRAY_WRITEABLE;
        } else {
            (*f).flags &= !NPY_ARRAY_WRITEABLE;
        }
    }
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

fn dtype_str(a: &Bound<'_, PyUntypedArray>) -> String {
    a.dtype().str().map(|s| s.to_string()).unwrap_or_else(|_| "?".into())
}

fn as_ndarray<'a, 'py>(name: &str, obj: &'a Bound<'py, PyAny>) -> PyResult<&'a Bound<'py, PyUntypedArray>> {
    obj.cast::<PyUntypedArray>().map_err(|_| {
        let t = obj.get_type().name().map(|s| s.to_string()).unwrap_or_else(|_| "?".into());
        PyTypeError::new_err(format!("{name} must be a numpy.ndarray, got {t}"))
    })
}

/// The first array of a plan decides the dtype (float32 or float64) and its shape the sizes.
pub(crate) fn first_array(py: Python<'_>, name: &str, obj: &Bound<'_, PyAny>, ndim: usize) -> PyResult<(Dt, Vec<usize>)> {
    let a = as_ndarray(name, obj)?;
    let dt = dtype_of(py, a).ok_or_else(|| {
        PyTypeError::new_err(format!("{name} has dtype {}; elbolab_rust supports float32 and float64", dtype_str(a)))
    })?;
    Ok((dt, ndim_of(name, obj, ndim)?))
}

/// The shape of an array that must have `ndim` dimensions.
pub(crate) fn ndim_of(name: &str, obj: &Bound<'_, PyAny>, ndim: usize) -> PyResult<Vec<usize>> {
    let a = as_ndarray(name, obj)?;
    if a.ndim() != ndim {
        return Err(PyValueError::new_err(format!("{name} must be {ndim}-D, got shape {}", shape_str(a.shape()))));
    }
    Ok(a.shape().to_vec())
}

/// Plans made with the same input array share one guard: the first clears WRITEABLE (if it was
/// set), the last to go sets it back. Keyed by the array object's address, which cannot be reused
/// while an entry exists because every entry's owner holds a strong reference to the array.
struct GuardEntry {
    count: usize,
    restore: bool,
}

static GUARDS: Mutex<BTreeMap<usize, GuardEntry>> = Mutex::new(BTreeMap::new());

fn guards() -> std::sync::MutexGuard<'static, BTreeMap<usize, GuardEntry>> {
    // a panic while the lock was held cannot leave the map inconsistent (every update is one
    // statement), so a poisoned lock is still usable
    GUARDS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A validated NumPy array held by a plan (a strong reference), with what it looked like then.
pub(crate) struct Arr {
    name: String,
    obj: Py<PyUntypedArray>,
    dt: Dt,
    role: Role,
    data: usize,
    descr: usize,
    shape: Vec<usize>,
    strides: Vec<isize>,
    len: usize,
    nbytes: usize,
    /// this Arr holds one count of the input's read-only guard (`Arr::guard`)
    guarded: bool,
}

impl Arr {
    /// Validates `obj`: a C-contiguous, aligned, non-empty ndarray of dtype `dt` and shape
    /// `shape`; an output must be writeable. Changes nothing (the read-only guard comes later,
    /// from `Plan::new`, once every array of the plan passed).
    pub(crate) fn new(py: Python<'_>, name: &str, obj: &Bound<'_, PyAny>, dt: Dt, shape: &[usize], role: Role) -> PyResult<Arr> {
        let a = as_ndarray(name, obj)?;
        if dtype_of(py, a) != Some(dt) {
            return Err(PyTypeError::new_err(format!("{name} has dtype {}, expected {} (like x)", dtype_str(a), dt.name())));
        }
        if a.shape() != shape {
            return Err(PyValueError::new_err(format!("{name} has shape {}, expected {}", shape_str(a.shape()), shape_str(shape))));
        }
        let (data, descr, flags) = fields(a);
        if flags & NPY_ARRAY_C_CONTIGUOUS == 0 {
            return Err(PyValueError::new_err(format!("{name} must be C-contiguous (use numpy.ascontiguousarray)")));
        }
        if flags & NPY_ARRAY_ALIGNED == 0 {
            return Err(PyValueError::new_err(format!("{name} is not aligned for its dtype")));
        }
        if role == Role::Out && flags & NPY_ARRAY_WRITEABLE == 0 {
            return Err(PyValueError::new_err(format!("output {name} is read-only")));
        }
        let len: usize = shape.iter().product();
        if len == 0 {
            return Err(PyValueError::new_err(format!("{name} is empty (shape {})", shape_str(shape))));
        }
        Ok(Arr {
            name: name.to_string(),
            obj: a.clone().unbind(),
            dt,
            role,
            data,
            descr,
            shape: shape.to_vec(),
            strides: a.strides().to_vec(),
            len,
            nbytes: len * dt.size(),
            guarded: false,
        })
    }

    /// Inputs: clear NPY_ARRAY_WRITEABLE for as long as this Arr lives (shared with other plans
    /// holding the same array object; restored by the last one, and only if a plan cleared it).
    pub(crate) fn guard(&mut self, py: Python<'_>) {
        if self.role != Role::In || self.guarded {
            return;
        }
        let a = self.obj.bind(py);
        let key = a.as_ptr() as usize;
        let mut map = guards();
        let e = map.entry(key).or_insert(GuardEntry { count: 0, restore: false });
        if e.count == 0 {
            let (_, _, flags) = fields(a);
            e.restore = flags & NPY_ARRAY_WRITEABLE != 0;
            if e.restore {
                set_writeable(a, false);
            }
        }
        e.count += 1;
        self.guarded = true;
    }

    /// The per-call check, with the GIL held: nothing was changed in place since the plan was
    /// made (data pointer, dtype, shape, strides, contiguity/alignment flags), outputs are still
    /// writeable and inputs still read-only. A few pointer reads; no allocation.
    #[inline]
    pub(crate) fn check(&self, py: Python<'_>) -> PyResult<()> {
        let a = self.obj.bind(py);
        let (data, descr, flags) = fields(a);
        let mask = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_WRITEABLE;
        let want = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | if self.role == Role::Out { NPY_ARRAY_WRITEABLE } else { 0 };
        if data == self.data && descr == self.descr && flags & mask == want && a.shape() == self.shape.as_slice() && a.strides() == self.strides.as_slice() {
            return Ok(());
        }
        let same_layout = data == self.data && descr == self.descr && a.shape() == self.shape.as_slice();
        if self.role == Role::In && same_layout && flags & NPY_ARRAY_WRITEABLE != 0 {
            return Err(PyValueError::new_err(format!(
                "input {} was made writeable after the plan was made (inputs stay read-only while a plan holds them); prepare again",
                self.name
            )));
        }
        Err(PyValueError::new_err(format!(
            "{} was changed in place (data, dtype, shape, strides or flags) after the plan was made; prepare again",
            self.name
        )))
    }
}

impl Drop for Arr {
    fn drop(&mut self) {
        if !self.guarded {
            return;
        }
        // plans are dropped by Python (with the GIL); attach is then only a counter check
        Python::attach(|py| {
            let a = self.obj.bind(py);
            let key = a.as_ptr() as usize;
            let mut map = guards();
            if let Some(e) = map.get_mut(&key) {
                e.count -= 1;
                if e.count == 0 {
                    if e.restore {
                        set_writeable(a, true);
                    }
                    map.remove(&key);
                }
            }
        });
    }
}

/// Outputs must not share memory with any other array of the plan (inputs may alias each other).
pub(crate) fn check_overlaps(arrays: &[Arr]) -> PyResult<()> {
    for (i, a) in arrays.iter().enumerate() {
        for b in &arrays[i + 1..] {
            if a.role == Role::In && b.role == Role::In {
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

/// The most arrays one plan can hold (`Bufs` tracks the outputs it handed out in a u64).
pub(crate) const MAX_ARRAYS: usize = 64;

/// A plan's arrays as slices for the duration of one call. Made only by `Plan::run_checked`,
/// after every array passed `Arr::check` with the GIL held in this call; used with the GIL
/// released. Typed access is checked against the array's dtype, and each output can be taken
/// once per call, so no two `&mut` slices of one array can exist (outputs overlap nothing).
pub(crate) struct Bufs<'a> {
    arrays: &'a [Arr],
    taken: Cell<u64>,
}

impl<'a> Bufs<'a> {
    /// # Safety
    /// Every array of `arrays` passed `Arr::check` in this call, with the GIL held, and the
    /// `Bufs` (and the slices it hands out) do not outlive the call.
    pub(crate) unsafe fn new(arrays: &'a [Arr]) -> Bufs<'a> {
        Bufs { arrays, taken: Cell::new(0) }
    }

    fn get<T: Elem>(&self, i: usize, role: Role) -> Result<&'a Arr, String> {
        let a = self.arrays.get(i).ok_or_else(|| format!("internal: no array {i}"))?;
        if a.dt != T::DT || a.role != role {
            return Err(format!("internal: {} is {:?} {}, asked for {:?} {}", a.name, a.role, a.dt.name(), role, T::DT.name()));
        }
        Ok(a)
    }

    /// Input `i` as a slice of T.
    #[inline]
    pub(crate) fn input<T: Elem>(&self, i: usize) -> Result<&'a [T], String> {
        let a = self.get::<T>(i, Role::In)?;
        // SAFETY: the array was checked in this call (Bufs::new), so `data` is its live buffer
        // of `len` elements of T (dtype checked above), kept alive by the plan's reference.
        // Python cannot write to it: it is read-only while the plan lives (see crate::py).
        Ok(unsafe { std::slice::from_raw_parts(a.data as *const T, a.len) })
    }

    /// Output `i` as a mutable slice of T; at most once per call.
    #[inline]
    pub(crate) fn output<T: Elem>(&self, i: usize) -> Result<&'a mut [T], String> {
        let a = self.get::<T>(i, Role::Out)?;
        let bit = 1u64 << i; // i < MAX_ARRAYS (checked by Plan::new)
        if self.taken.get() & bit != 0 {
            return Err(format!("internal: output {} taken twice", a.name));
        }
        self.taken.set(self.taken.get() | bit);
        // SAFETY: as in `input`; outputs overlap no other array of the plan (check_overlaps)
        // and this one is handed out once, so this is the only reference to that memory.
        Ok(unsafe { std::slice::from_raw_parts_mut(a.data as *mut T, a.len) })
    }
}
