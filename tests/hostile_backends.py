"""Plugins written by a careless or hostile author, for the second round of fault tests
(tests/test_hostile.py): registered through ELBOLAB_BACKENDS ("tests.hostile_backends:forking,...").

Each behaves like the NumPy backend except where it misbehaves: on the batch size FAULT_BATCH, or
everywhere when its whole point is its name or its start-up. A child process a backend starts
writes its pid to the file named by ELBOLAB_TEST_PIDS, so a test can see whether it outlived the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np

from backends.numpy import backend as numpy_backend
from elbolab.model.backend import Backend, Prepared
from elbolab.model.case import Case

FAULT_BATCH = 7
PIDS_ENV = "ELBOLAB_TEST_PIDS"


def _wrapping(name: str, fault, faulty=lambda case: case.batch == FAULT_BATCH, **changes) -> Backend:
    def prepare(case: Case, inputs: dict) -> Prepared:
        prepared = numpy_backend.prepare(case, inputs)
        return fault(prepared) if faulty(case) else prepared

    return replace(
        numpy_backend, name=name, description=f"test backend: {name}",
        preparers=dict.fromkeys(numpy_backend.workloads, prepare), **changes,
    )  # fmt: skip


def _child() -> int:
    """A process that would live five minutes, its pid recorded."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with open(os.environ[PIDS_ENV], "a") as f:
        f.write(f"{proc.pid}\n")
    return proc.pid


def _forks(prepared: Prepared) -> Prepared:
    """Starts a child at its first call and leaves it running (work outside the measured process)."""
    started = []

    def call():
        if not started:
            started.append(_child())
        prepared.call()

    return replace(prepared, call=call, call_n=None)


def _forks_then_dies(prepared: Prepared) -> Prepared:
    """Starts a child, which inherits the pipe to the runner, then the worker dies: no end of file
    reaches the runner while the child lives."""

    def call():
        _child()
        os._exit(3)

    return replace(prepared, call=call, call_n=None)


def _interrupts(prepared: Prepared) -> Prepared:
    def call():
        raise KeyboardInterrupt

    return replace(prepared, call=call, call_n=None)


def _writes_stdout(prepared: Prepared) -> Prepared:
    """Writes to file descriptor 1 at every call, below Python (as a C library's printf does)."""

    def call():
        os.write(1, b"kernel says hello\n")
        prepared.call()

    return replace(prepared, call=call, call_n=None)


def _outputs(value):
    def fault(prepared: Prepared) -> Prepared:
        return replace(prepared, outputs=lambda: value() if callable(value) else value)

    return fault


def _complex(prepared: Prepared) -> Prepared:
    """The right real part, and a huge imaginary part (dropped without a word by a float cast)."""

    def outputs():
        return {k: np.asarray(v) + 1e30j for k, v in prepared.outputs().items()}

    return replace(prepared, outputs=outputs)


forking = _wrapping("forking", _forks)
forking_dies = _wrapping("forking-dies", _forks_then_dies)
interrupting = _wrapping("interrupting", _interrupts)
stdout_writer = _wrapping("stdout-writer", _writes_stdout, faulty=lambda case: True)
outputs_none = _wrapping("outputs-none", _outputs(None))
outputs_list = _wrapping("outputs-list", _outputs(lambda: [1.0, 2.0]))
outputs_str = _wrapping("outputs-str", _outputs("z=1"))
complex_outputs = _wrapping("complex-outputs", _complex)


def _raising_outputs(prepared: Prepared) -> Prepared:
    def outputs():
        raise ValueError("no outputs today")

    return replace(prepared, outputs=outputs)


outputs_raising = _wrapping("outputs-raising", _raising_outputs)


# names a plugin must not have
def _marked(prepared: Prepared) -> Prepared:
    return replace(prepared, notes=dict(prepared.notes, impostor=True))


impostor = _wrapping("numpy", _marked, faulty=lambda case: True)
unnamed = replace(numpy_backend, name="")
long_named = replace(numpy_backend, name="n" * 300)
escape_named = replace(numpy_backend, name="red\x1b[31malert\x1b[0m")
comma_named = replace(numpy_backend, name="a,b")


def _slow_versions() -> dict[str, str]:
    """A library that takes seconds to import (torch takes ~6 s here), seen when the worker starts."""
    time.sleep(4)
    return {"slowlib": "1.0"}


slow_start = _wrapping("slow-start", lambda p: p, faulty=lambda case: False, versions=_slow_versions)
