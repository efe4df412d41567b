"""The Backend protocol and the registry.

A backend is a plain value: what it supports, whether it can run here (and why not), and a
`prepare` that turns a case and its inputs into a `Prepared` the timer can call. Backends are found
through the entry-point group 'elbolab.backends' (the built-ins are registered that way in
pyproject.toml, so the harness never imports a backend by name) and through the ELBOLAB_BACKENDS
environment variable ("module:attribute,..."), which tests and experiments use to add one.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from importlib.metadata import entry_points

import numpy as np

from elbolab.model.case import Case

ENTRY_POINT_GROUP = "elbolab.backends"


@dataclass
class Prepared:
    """A case made ready to time.

    call      one call of the kernel on the prepared data (what the timer loops over)
    outputs   the outputs of the last call, as NumPy arrays, for the correctness check; it reads
              what the call computed (it is timed apart and must be cheap next to a call)
    call_n    optional: run n calls inside the backend (e.g. a loop in Rust), to time without
              per-call Python overhead; the timer uses it in place of a Python loop when present.
              It must do n calls: its time per call is held to a loop of call()'s where the loop's
              overhead is negligible, and call_n(1) is checked like one call
    sync      optional: wait for queued device work (called before the clock stops)
    device_peak_bytes  optional: peak device memory of the case so far
    device_events  optional: a fresh (start, end) pair of device events (objects with .record()
              and start.elapsed_time(end) in ms, as torch.cuda.Event): each sample is then also
              timed on the device, between events recorded around its calls
    notes     facts a reader of the results needs (e.g. how CUDA time was synchronised)

    The inputs. Every call reads the arrays `prepare` was given, as they are at that call: the
    harness rewrites them between samples (never during a call) with other input sets and checks
    the outputs of chosen calls against the reference for the inputs each call was given. A backend
    must not keep a private copy of its inputs on the host. (An input it made read-only to guard
    against writes during a call stays read-only for everything but the harness.)
    load      optional, for a backend whose call reads a copy elsewhere (a device): copies new
              input values (a dict like the one prepare got) to where the call reads them; the
              harness calls it in place of writing the arrays, between calls, and says so in the
              case's evidence (it cannot see what load does)
    """

    call: Callable[[], object]
    outputs: Callable[[], Mapping[str, object]]
    call_n: Callable[[int], object] | None = None
    sync: Callable[[], None] | None = None
    device_peak_bytes: Callable[[], int | None] | None = None
    device_events: Callable[[], tuple[object, object]] | None = None
    load: Callable[[Mapping[str, np.ndarray]], None] | None = None
    notes: dict = field(default_factory=dict)


def _always_available() -> str | None:
    return None


def _all_devices_available(device: str) -> str | None:
    return None


def _no_versions() -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Build:
    """Something a backend needs built from the source tree before it exists (e.g. a Rust extension).

    The A/B gate builds it once per revision it measures; `make` builds it for the working tree.
    kind: the build tool ("maturin": a PyO3 crate built into an importable wheel)
    manifest: the build file, relative to the repository root
    module: the importable module the build produces (what the backend imports)
    """

    kind: str
    manifest: str
    module: str


Prepare = Callable[[Case, dict[str, np.ndarray]], Prepared]


@dataclass(frozen=True)
class Backend:
    """A backend declares the workloads it implements by the preparers it provides."""

    name: str
    description: str
    preparers: Mapping[str, Prepare]  # workload name -> prepare(case, inputs)
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[str, ...] = ("float64", "float32")
    # Reason this backend cannot run here (library missing, ...) or None. May import the library.
    unavailable_reason: Callable[[], str | None] = _always_available
    # Reason a device cannot be used here (no GPU, ...) or None.
    device_unavailable_reason: Callable[[str], str | None] = _all_devices_available
    # Versions of what the backend runs on, for the results file.
    versions: Callable[[], dict[str, str]] = _no_versions
    # Whether the backend uses more than one thread when asked to; single-threaded backends
    # still run at every thread count the user asks for, so the count is always explicit.
    threaded: bool = False
    # Whether the backend sets its thread count per case at run time, up to a pool sized when it
    # is imported (numba: NUMBA_NUM_THREADS, then numba.set_num_threads(case.threads)). One worker,
    # started with the largest count, then serves every thread count of a run: a JIT backend
    # compiles each kernel once a run instead of once a thread count.
    threads_per_case: bool = False
    # A narrower default matrix for a backend whose cases are expensive to set up (e.g. a compile
    # per case): keys among workloads, batches, dtypes, threads, variants. It applies only to the
    # dimensions the user did not filter explicitly, so any case can still be asked for by name.
    default_scope: Mapping[str, tuple] | None = None
    # What must be built from the source tree for this backend to exist (None: pure Python).
    build: Build | None = None

    @property
    def workloads(self) -> tuple[str, ...]:
        return tuple(self.preparers)

    def prepare(self, case: Case, inputs: dict[str, np.ndarray]) -> Prepared:
        return self.preparers[case.workload](case, inputs)

    def skip_reason(self, case: Case) -> str | None:
        """Why this backend cannot run `case` here, or None if it can."""
        if case.workload not in self.preparers:
            return f"{self.name} does not implement workload {case.workload}"
        if case.device not in self.devices:
            return f"{self.name} has no device {case.device}"
        if case.dtype not in self.dtypes:
            return f"{self.name} does not support {case.dtype}"
        return self.unavailable_reason() or self.device_unavailable_reason(case.device)


def bind(preparers: Mapping[str, Callable[..., Prepared]], **options) -> dict[str, Prepare]:
    """The same preparers with keyword options bound: one module serving several backends."""
    return {workload: partial(prepare, **options) for workload, prepare in preparers.items()}


class RegistryError(Exception):
    pass


def _load(spec: str) -> Backend:
    module_name, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr or "backend")
    except Exception as exc:  # a plugin's SyntaxError or import-time crash must not stop the lab
        raise RegistryError(
            f"cannot load backend {_shown(spec)}: {exc.__class__.__name__}: {_shown(str(exc), 200)}"
        ) from exc
    if not isinstance(obj, Backend):
        raise RegistryError(f"{_shown(spec)} is not an elbolab Backend")
    return obj


# A backend's name is typed in --backend lists (split at commas), printed in terminals (an escape
# sequence would be obeyed), stored in a column of 200 characters and suffixed for the null control
NAME_MAX = 64
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")
BUILTIN_PACKAGE = "backends."  # the lab's own backends (pyproject's entry points): they keep their names


def name_problem(name: object) -> str | None:
    """Why `name` cannot name a backend, or None: letters, digits and . _ + - only, starting with a
    letter or digit, at most NAME_MAX characters, not ending in the null control's suffix."""
    if not isinstance(name, str) or not name:
        return "an empty name"
    if len(name) > NAME_MAX:
        return f"a name of {len(name)} characters (at most {NAME_MAX})"
    bad = sorted(set(name) - _NAME_CHARS)
    if bad or not name[0].isalnum():
        shown = repr(bad[0]) if bad else repr(name[0])
        return f"a name with {shown} in it (letters, digits and . _ + - only, from a letter or digit)"
    if is_control(name):
        return f"a name ending in {CONTROL_SUFFIX!r}, which names the run's null control"
    return None


def _shown(text: str, limit: int = 80) -> str:
    """A name from a plugin, as an error line shows it: repr (an escape sequence is shown, not
    obeyed), cut."""
    return repr(text[:limit]) + (f"... ({len(text)} characters)" if len(text) > limit else "")


def discover_with_errors() -> tuple[dict[str, Backend], list[str]]:
    """All registered backends by name (entry points, then ELBOLAB_BACKENDS), and load errors.

    A plugin that fails to load is left out with its error, so one broken package cannot stop the
    lab; `elbolab list` shows the errors, `run` prints them and records them in the results file.
    So is a plugin whose name is invalid (name_problem) or taken: the lab's own backends are
    loaded first and keep their names, and a later backend under a name already taken is refused,
    never silently put in its place (its times would be recorded under the other's name).
    """
    specs = [ep.value.strip() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    specs += [s.strip() for s in os.environ.get("ELBOLAB_BACKENDS", "").split(",") if s.strip()]
    specs = list(dict.fromkeys(specs))  # one package installed twice registers the same spec twice
    specs.sort(key=lambda spec: not spec.startswith(BUILTIN_PACKAGE))  # stable: the built-ins first
    found: dict[str, Backend] = {}
    source: dict[str, str] = {}
    errors: list[str] = []
    for spec in specs:
        try:
            backend = _load(spec)
        except RegistryError as exc:
            errors.append(str(exc))
            continue
        problem = name_problem(backend.name)
        if problem:
            errors.append(f"backend {_shown(spec)} not loaded: {problem}")
            continue
        if backend.name in found:
            if found[backend.name] is not backend:  # the same object registered twice is no clash
                errors.append(f"backend {_shown(spec)} not loaded: its name {backend.name!r} is taken by "
                              f"{source[backend.name]!r}; a plugin needs a name of its own")  # fmt: skip
            continue
        found[backend.name], source[backend.name] = backend, spec
    return dict(sorted(found.items())), errors


def discover() -> dict[str, Backend]:
    return discover_with_errors()[0]


# The null control of a run: the reference backend measured a second time, in a worker of its own,
# as if it were another backend. Identical code, so its speed-up over the reference is 1: what
# the run measures for it instead is the run's noise (elbolab.measure.cells).
CONTROL_SUFFIX = "-control"


def control_name(backend: str) -> str:
    return backend + CONTROL_SUFFIX


def is_control(name: str) -> bool:
    return name.endswith(CONTROL_SUFFIX)


def backend_named(backends: Mapping[str, Backend], name: str) -> Backend | None:
    """The backend of that name, a control ('numpy-control': NumPy's code under another name) too."""
    if name in backends:
        return backends[name]
    base = name[: -len(CONTROL_SUFFIX)] if is_control(name) else None
    if base in backends:
        b = backends[base]
        return replace(b, name=name, description=f"{b.description} (the run's null control: {base} again)")
    return None
