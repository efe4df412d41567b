"""What machine and software produced a run."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import scipy
import threadpoolctl

from elbolab import __version__
from elbolab.measure.lockfile import constraints_record


def usable_cores() -> int:
    """The cores this process may run on (its affinity), or the machine's count where there is none."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        import cpuinfo

        return cpuinfo.get_cpu_info().get("brand_raw") or platform.processor() or "unknown"
    except Exception:  # py-cpuinfo shells out; a failure must not cost the run
        return platform.processor() or "unknown"


def _gpus() -> list[dict]:
    """GPUs seen by nvidia-smi (the runner must not import a backend's library to ask)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, mem, driver = (p.strip() for p in line.split(","))
        gpus.append({"name": name, "memory_bytes": int(float(mem)) * 2**20, "driver": driver})
    return gpus


def machine_info() -> dict:
    freq = psutil.cpu_freq()
    return {
        "cpu": _cpu_model(),
        "cores": psutil.cpu_count(logical=False) or os.cpu_count(),
        "logical_cpus": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_max_mhz": freq.max if freq else None,
        "memory_bytes": psutil.virtual_memory().total,
        "os": platform.platform(),
        "hostname": platform.node(),
        "gpus": _gpus(),
    }


def software_info() -> dict:
    blas = [
        {
            k: info.get(k)
            for k in ("internal_api", "version", "threading_layer", "architecture", "num_threads")
        }
        for info in threadpoolctl.threadpool_info()
        if info.get("user_api") == "blas"
    ]
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "blas": blas,
        "elbolab": __version__,
        # OpenBLAS kernels picked by these variables differ in speed; record them
        "env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "MKL_"))},
        # the installed versions against those the lab was tested with (elbolab/constraints.txt)
        "constraints": constraints_record(),
    }


def git_info(root: Path | None = None) -> dict:
    root = root or Path(__file__).resolve().parents[2]  # harness/ in a checkout

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


# the variables every thread pool the lab meets reads at import: set before a worker starts
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "RAYON_NUM_THREADS",
)


def thread_env(threads: int) -> dict[str, str]:
    return {name: str(threads) for name in THREAD_ENV_VARS}
