"""Peak memory of one case in a fresh process (run by tests/test_memory.py):

    python -m tests.memory_probe WORKLOAD BACKEND DTYPE BATCH   -> prints {"status", "used", "estimate"}

The libraries are imported and the kernels compiled on a tiny case first, then the kernel's
high-water mark is reset (Linux /proc/self/clear_refs), so `used` is what the case itself adds: the
inputs, the backend's buffers, the reference and the check, measured the way the worker measures.
"""

from __future__ import annotations

import json
import sys


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    workload, backend_name, dtype, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    from elbolab.measure.opening import measure_case
    from elbolab.measure.timer import TimerConfig
    from elbolab.model.backend import discover
    from elbolab.model.case import Case
    from elbolab.model.workloads import WORKLOADS

    backend = discover()[backend_name]
    timer = TimerConfig(target_sample_ns=1_000_000, max_samples=3, warmup=0, min_samples=3)
    measure_case(backend, Case(workload, backend_name, "cpu", dtype, 2), timer)  # imports, JIT
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS")
    case = Case(workload, backend_name, "cpu", dtype, batch)
    m = measure_case(backend, case, timer)
    used = _status("VmHWM") - base
    print(json.dumps({"status": m.status, "used": used, "estimate": WORKLOADS[workload].peak_bytes(case)}))


if __name__ == "__main__":
    main()
