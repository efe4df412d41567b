"""What one call of each PyTorch variant dispatches, at batch 8192 in float32: ATen ops always, and
on a GPU the kernels the profiler saw run and the host's launch calls (backends.torch.gpu.count_launches).

    python scripts/gpu_launches.py --out FILE [--device cuda|cpu]

Each case is opened as the runner opens it (prepared, first call made, outputs read), then counted
over 20 calls. A case that cannot run here is listed with its reason; the exit status is 1 only if a
case failed. On the CPU the counts are the host side only: an eager op there is one kernel launch
on CUDA (or more), and the Triton variants have no CPU device.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backends.torch.gpu import count_launches
from elbolab.measure.opening import open_case
from elbolab.model.backend import discover
from elbolab.model.case import Case
from elbolab.model.measurement import Measurement

ELBO = [
    ("elbo", "eps=given"),
    ("elbo", "eps=sampled"),
    ("elbo_grad", "eps=given"),
    ("elbo_grad", "eps=sampled"),
]
PLAN = {
    "torch": ELBO + [("iwae", "eps=given"), ("vae_step", "eps=given")],
    # each case compiles anew (seconds on a GPU machine): the forward and the forward + backward
    "torch-compile": [("elbo", "eps=given"), ("elbo_grad", "eps=given")],
    "torch-triton": ELBO,
    "torch-cudagraph": ELBO,
}


def count(device: str) -> list[dict]:
    backends = discover()
    rows = []
    for name, cases in PLAN.items():
        for workload, variant in cases:
            case = Case(workload, name, device, "float32", 8192, variant=variant)
            row = {"backend": name, "workload": workload, "variant": variant, "device": device,
                   "dtype": case.dtype, "batch": case.batch}  # fmt: skip
            opened = open_case(backends[name], case, timer=None)
            if isinstance(opened, Measurement):
                rows.append(dict(row, status=opened.status, reason=opened.reason))
                continue
            try:
                rows.append(dict(row, status="ok", **count_launches(opened.prepared)))
            except Exception as exc:  # a broken profiler or call: recorded, the others still counted
                rows.append(dict(row, status="failed", reason=f"{type(exc).__name__}: {exc}"))
            finally:
                opened.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args(argv)
    rows = count(args.device)
    args.out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(f"{'case':<44} {'ATen ops':>8} {'kernels':>8} {'launches':>8}  (per call)")
    for r in rows:
        label = f"{r['backend']} {r['workload']} {r['variant']}"
        if r["status"] != "ok":
            print(f"{label:<44} {r['status']}: {r['reason']}")
            continue
        kernels = r.get("cuda_kernels")
        launches = r.get("launch_calls")
        print(f"{label:<44} {r['aten_ops']:>8.1f} {'-' if kernels is None else f'{kernels:.1f}':>8} "
              f"{'-' if launches is None else f'{launches:.1f}':>8}")  # fmt: skip
    return 1 if any(r["status"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
