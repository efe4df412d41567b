"""What about this machine, right now, could distort a measurement (`elbolab doctor`; recorded in
every run, at its start and its end).

Like pyperf's `system show`: the environment variables that change kernels or thread counts, the
BLAS and the kernel architecture it picked, the CPU frequency governor and boost where the system
shows them, the load average, virtualisation, the GPUs' clocks and ECC/MIG state. The lab never
changes any of it; it says what it sees, warns where it distorts results, and measures what a
setting costs where it can (an OPENBLAS_CORETYPE override: the same matrix product with and without
it, in two fresh processes).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from threadpoolctl import threadpool_info

# variables that pick kernels or thread counts in the libraries the backends use
KERNEL_VARS = (
    "OPENBLAS_",
    "MKL_",
    "OMP_",
    "GOTO_",
    "BLIS_",
    "NUMBA_",
    "RAYON_",
    "KMP_",
    "TORCH_",
    "CUDA_",
    "NVIDIA_",
)
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "RAYON_NUM_THREADS",
)


@dataclass
class Health:
    facts: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"facts": self.facts, "warnings": self.warnings}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cpu_flags() -> set[str]:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _virtualisation() -> str | None:
    tool = shutil.which("systemd-detect-virt")
    if tool:
        out = subprocess.run([tool], capture_output=True, text=True).stdout.strip()
        if out and out != "none":
            return out
    return "a hypervisor (cpuinfo)" if "hypervisor" in _cpu_flags() else None


def _gpus() -> list[dict]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    query = (
        "name,clocks.sm,clocks.max.sm,clocks.mem,utilization.gpu,ecc.mode.current,mig.mode.current,"
        "temperature.gpu,power.draw"
    )
    try:
        out = subprocess.run([smi, f"--query-gpu={query}", "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=20).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    keys = query.split(",")
    return [
        dict(zip(keys, (v.strip() for v in line.split(",")), strict=False))
        for line in out.strip().splitlines()
    ]


def survey(threads_asked: int | None = None) -> Health:
    """What the machine looks like now; warnings for what distorts measurements."""
    h = Health()
    env = {k: v for k, v in os.environ.items() if k.startswith(KERNEL_VARS)}
    h.facts["environment"] = env
    blas = [{k: i.get(k) for k in ("internal_api", "version", "architecture", "threading_layer", "num_threads")}
            for i in threadpool_info() if i.get("user_api") == "blas"]  # fmt: skip
    h.facts["blas"] = blas
    flags = _cpu_flags()
    h.facts["simd"] = sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    h.facts["cores_available"] = cores
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    boost = _read("/sys/devices/system/cpu/cpufreq/boost") or _read(
        "/sys/devices/system/cpu/intel_pstate/no_turbo"
    )
    h.facts["governor"], h.facts["boost"] = governor, boost
    h.facts["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    h.facts["virtualisation"] = _virtualisation()
    h.facts["gpus"] = _gpus()
    h.facts["python"] = f"{platform.python_implementation()} {platform.python_version()}"

    if "OPENBLAS_CORETYPE" in env:
        arch = ", ".join(str(b.get("architecture")) for b in blas if b.get("internal_api") == "openblas")
        wider = "avx512f" in flags and env["OPENBLAS_CORETYPE"].lower() in ("haswell", "sandybridge", "zen")
        h.warnings.append(
            f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']} forces OpenBLAS's {arch or 'chosen'} kernels"
            + (" on a CPU with AVX-512: matrix products (vae_step, the peak-flops probe) run slower than the CPU can" if wider else "")
        )  # fmt: skip
    for var in THREAD_VARS:
        if var in env and threads_asked is not None and env[var] != str(threads_asked):
            h.warnings.append(f"{var}={env[var]} in the environment (each worker sets its own thread count)")
    if governor and governor not in ("performance",):
        h.warnings.append(
            f"CPU frequency governor '{governor}': clocks change with load; 'performance' is steadier"
        )
    load = h.facts["load_average"]
    if load and cores and load[0] > 0.5 * cores:
        h.warnings.append(f"load average {load[0]:.1f} on {cores} cores: other work is competing for the CPU")
    if h.facts["virtualisation"]:
        h.warnings.append(
            f"virtual machine ({h.facts['virtualisation']}): neighbours on the host can slow it down"
        )
    for gpu in h.facts["gpus"]:
        if gpu.get("mig.mode.current") not in (None, "", "[N/A]", "Disabled"):
            h.warnings.append(f"{gpu.get('name')}: MIG is {gpu.get('mig.mode.current')} (a slice of the GPU)")
        warning = sm_clock_warning(gpu)
        if warning:
            h.warnings.append(warning)
    return h


# An idle GPU parks its SM clock low (an H200 read 345 MHz idle and 1980 MHz just after matrix
# products), so a low clock distorts nothing unless the GPU is busy: only then is it throttling.
BUSY_PERCENT = 50.0
LOW_CLOCK_SHARE = 0.7


def sm_clock_warning(gpu: dict) -> str | None:
    """A warning for an SM clock below LOW_CLOCK_SHARE of its maximum while the GPU is busy
    (utilization.gpu at least BUSY_PERCENT), else None; None where nvidia-smi gave no number."""
    try:
        clock, top = float(gpu["clocks.sm"]), float(gpu["clocks.max.sm"])
        busy = float(gpu["utilization.gpu"])
    except (KeyError, TypeError, ValueError):  # "[N/A]", or a field this nvidia-smi lacks
        return None
    if busy < BUSY_PERCENT or clock >= LOW_CLOCK_SHARE * top:
        return None
    return (f"{gpu.get('name')}: SM clock {gpu['clocks.sm']} MHz of {gpu['clocks.max.sm']} while "
            f"{gpu['utilization.gpu']}% busy (throttled: power, heat or a clock limit)")  # fmt: skip


_MATMUL = (
    "import time, numpy as np\n"
    "from threadpoolctl import threadpool_limits\n"
    "a = np.random.default_rng(0).random((784, 784))\n"
    "with threadpool_limits(1):\n"
    "    a @ a\n"
    "    best = min((lambda t0: (a @ a, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(7))\n"
    "print(2 * 784**3 / best)\n"
)


def coretype_cost() -> dict | None:
    """The float64 matrix-product rate with and without OPENBLAS_CORETYPE, in two fresh processes
    (the variable is read when OpenBLAS loads). None when the variable is not set."""
    if "OPENBLAS_CORETYPE" not in os.environ:
        return None
    rates = {}
    for label, env in (
        ("with", dict(os.environ)),
        ("without", {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}),
    ):
        out = subprocess.run(
            [sys.executable, "-c", _MATMUL], env=env, capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            return None
        rates[label] = float(out.stdout.strip())
    return {"gflops_with": rates["with"] / 1e9, "gflops_without": rates["without"] / 1e9,
            "cost": 1 - rates["with"] / rates["without"]}  # fmt: skip
