"""The last step of scripts/gpu_check.sh: did the GPU check do what it was for? It reads what the steps
wrote and says, with exit status 1 for any problem:

- every case of each run's plan has its measurement (a run cut short by its timeout shows here);
- on a GPU: every CUDA case 'ok' with device-event samples, the GPU's limits measured, the Triton
  variants at one kernel and no ATen op per call, the digits training on CUDA; then each CUDA
  case against its floor (the bytes it must move over the HBM read bandwidth the run measured);
- without a GPU: every CUDA case skipped, with its reason, and the line saying nothing on a GPU was
  measured; the CPU cases 'ok' either way.

    python scripts/gpu_verify.py --cuda FILE --cpu FILE --launches FILE
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from elbolab.measure.plan import Plan, plan_cases
from elbolab.model.backend import discover
from elbolab.model.roofline import cost_of
from elbolab.model.stats import summarize
from elbolab.store.results import Run, load

TRITON_VARIANTS = ("torch-triton", "torch-cudagraph")
NOT_IMPLEMENTED = "does not implement workload"  # elbolab.model.backend.Backend.skip_reason's words


def cuda_here() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def missing_cases(run: Run) -> list[str]:
    """The cases of the run's own plan that have no measurement."""
    plan = Plan(**{k: tuple(v) if isinstance(v, list) else v for k, v in run.config["plan"].items()})
    done = {m.case.key() for m in run.measurements}
    return [c.label() for c in plan_cases(plan, discover()) if c.key() not in done]


def check_run(run: Run, name: str, gpu: bool) -> list[str]:
    problems = [f"{name}: not measured (the run stopped first): {label}" for label in missing_cases(run)]
    for m in run.measurements:
        on_cuda = m.case.device == "cuda"
        if m.status == "skipped" and NOT_IMPLEMENTED in (m.reason or ""):
            continue  # the plan's cross product: e.g. iwae for the Triton variants, which do elbo only
        if on_cuda and not gpu:
            if m.status != "skipped":
                problems.append(f"{name}: {m.case.label()}: {m.status} on CUDA without a GPU: {m.reason}")
        elif m.status != "ok":
            problems.append(f"{name}: {m.case.label()}: {m.status}: {m.reason}")
        elif on_cuda and not m.device_samples_ns:
            problems.append(f"{name}: {m.case.label()}: no device-event samples")
    return problems


def gpu_limit(run: Run) -> tuple[float | None, list[str]]:
    gpus = run.limits.get("gpus") or []
    good = [g for g in gpus if g.get("hbm_read_bytes_per_s")]
    if good:
        return float(good[0]["hbm_read_bytes_per_s"]), []
    errors = [str(g.get("error")) for g in gpus if g.get("error")]
    return None, [f"no GPU limit measured: {'; '.join(errors) or 'the probe found no device'}"]


def check_launches(rows: list[dict], gpu: bool) -> list[str]:
    problems = []
    for r in rows:
        label = f"launches: {r['backend']} {r['workload']} {r['variant']}"
        if not gpu:
            if r["status"] != "skipped":
                problems.append(f"{label}: {r['status']} without a GPU: {r.get('reason')}")
        elif r["status"] != "ok":
            problems.append(f"{label}: {r['status']}: {r.get('reason')}")
        elif r["backend"] in TRITON_VARIANTS and (r.get("cuda_kernels") != 1 or r["aten_ops"] != 0):
            problems.append(
                f"{label}: {r.get('cuda_kernels')} kernels and {r['aten_ops']} ATen ops a call, not 1 and 0"
            )
    return problems


def check_training(run: Run, gpu: bool) -> list[str]:
    problems = []
    if not run.training:
        return ["training: no curves in the results file"]
    for c in run.training:
        label = f"training: {c.backend} {c.device} {c.dtype}"
        if c.device == "cuda" and not gpu:
            if c.status != "skipped":
                problems.append(f"{label}: {c.status} without a GPU: {c.reason}")
        elif c.status != "ok" or not c.learned:
            problems.append(f"{label}: {c.status}, learned={c.learned}: {c.reason}")
    if gpu and not any(c.device == "cuda" and c.status == "ok" for c in run.training):
        problems.append("training: nothing trained on CUDA")
    return problems


def floor_table(run: Run, hbm: float) -> list[str]:
    """Each ok CUDA case: host and device medians per call against bytes / HBM read bandwidth."""
    lines = [f"against the floor (bytes a call must move / {hbm / 1e9:.0f} GB/s HBM read, measured in this run):",
             f"{'case':<58} {'host':>9} {'device':>9} {'floor':>8} {'x floor':>8}"]  # fmt: skip
    for m in sorted(run.measurements, key=lambda m: (m.case.workload, m.case.batch, m.case.dtype, m.case.variant,
                                                        m.case.backend)):  # fmt: skip
        if m.case.device != "cuda" or not m.timed_ok:
            continue
        floor_ns = cost_of(m)[0] / hbm * 1e9
        device = (
            summarize(np.asarray(m.device_samples_ns, dtype=float) / m.loops).median
            if m.device_samples_ns
            else None
        )
        label = m.case.label().replace(" cuda", "").replace(" t=1", "")
        lines.append(f"{label:<58} {m.median_ns / 1e3:>7.1f}us {'-' if device is None else f'{device / 1e3:.1f}us':>9} "
                     f"{floor_ns / 1e3:>6.1f}us {m.median_ns / floor_ns:>8.1f}")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", type=Path, required=True, help="the CUDA variants' results file")
    parser.add_argument("--cpu", type=Path, required=True, help="the CPU baseline's results file")
    parser.add_argument("--launches", type=Path, required=True, help="scripts/gpu_launches.py's file")
    args = parser.parse_args(argv)
    gpu = cuda_here()
    problems: list[str] = []
    runs = {}
    for name, path in (("cuda", args.cuda), ("cpu", args.cpu)):
        try:
            runs[name] = load(path)
        except Exception as exc:  # missing or unreadable: the step that writes it failed
            problems.append(f"{name}: cannot read {path}: {type(exc).__name__}: {exc}")
            continue
        problems += check_run(runs[name], name, gpu)
    try:
        rows = json.loads(args.launches.read_text())["rows"]
        problems += check_launches(rows, gpu)
    except (OSError, ValueError, KeyError) as exc:
        problems.append(f"launches: cannot read {args.launches}: {exc}")
    run = runs.get("cuda")
    if run is not None:
        problems += check_training(run, gpu)
        for warning in (run.health.get("start") or {}).get("warnings", []):
            print(f"machine: {warning}")
        cuda = [m for m in run.measurements if m.case.device == "cuda"]
        if gpu:
            hbm, limit_problems = gpu_limit(run)
            problems += limit_problems
            if hbm:
                print("\n".join(floor_table(run, hbm)))
        else:
            reasons = Counter(m.reason for m in cuda if m.status == "skipped")
            print(f"no GPU here: {sum(reasons.values())} of {len(cuda)} CUDA cases skipped, nothing on a GPU was "
                  "measured:")  # fmt: skip
            for reason, n in reasons.most_common():
                print(f"  {n} x {reason}")
    for p in problems:
        print(f"PROBLEM {p}")
    print(f"gpu_verify: {'GPU' if gpu else 'no GPU'}; {len(problems)} problem{'s' * (len(problems) != 1)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
