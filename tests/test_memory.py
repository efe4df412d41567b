"""The memory admission estimate (Workload.peak_bytes, what `elbolab run` refuses sizes by) against
the peak RSS of a fresh process running the case: within 1.5x either way, for every workload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from elbolab.model.backend import discover

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

SIZES = {"elbo": (1024, 4096), "elbo_grad": (1024, 4096), "iwae": (256, 1024), "vae_step": (256, 2048)}


def _peak(workload: str, backend: str, dtype: str, batch: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.memory_probe", workload, backend, dtype, str(batch)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS"
)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("workload", list(SIZES))
def test_admission_estimate_is_within_1_5x_of_the_measured_peak(workload, dtype):
    for batch in SIZES[workload]:
        r = _peak(workload, "numpy", dtype, batch)
        assert r["status"] == "ok"
        ratio = r["used"] / r["estimate"]
        print(
            f"{workload} {dtype} B={batch}: peak {r['used'] / 2**20:.0f} MiB, estimate {r['estimate'] / 2**20:.0f} MiB, ratio {ratio:.2f}"
        )
        assert 1 / 1.5 <= ratio <= 1.5, (workload, dtype, batch, ratio)


@pytest.mark.skipif("rust" not in discover() or discover()["rust"].unavailable_reason() is not None,
                    reason="the Rust extension is not built")  # fmt: skip
@pytest.mark.parametrize("workload", list(SIZES))
def test_the_estimate_holds_for_another_backend(workload):
    r = _peak(workload, "rust", "float32", SIZES[workload][1])
    assert 1 / 1.5 <= r["used"] / r["estimate"] <= 1.5, r
