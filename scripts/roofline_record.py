"""The bandwidth curve of a run's machine, and every real case's rate beside its ceiling.

    .venv/bin/python scripts/roofline_record.py RUN.json [RUN2.json ...] [-o tests/data/roofline_vm.json]

Prints the sweep (working set -> best of read and copy, GB/s, per thread count) and, for the ok
and implausible CPU cases, the achieved GB/s as a share of the ceiling read at their own working
set (elbolab.model.roofline). With -o it writes the sweep of the first file and the rates of every
file's real cases (the null control left out): tests/test_limits.py holds every such rate under
its recorded ceiling.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from elbolab.model.roofline import bandwidth_limit_for, size_text
from elbolab.store.results import load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("-o", "--out", type=Path)
    args = parser.parse_args()
    first = load(args.runs[0])
    sweep = first.limits.get("bandwidth_sweep") or []
    if not sweep:
        print(f"{args.runs[0]}: no bandwidth sweep (a file from before it, or --no-limits)")
        return 2
    counts = sorted({r["threads"] for r in sweep})
    print("working set  " + "  ".join(f"{t} thread(s) GB/s".rjust(18) for t in counts))
    for size in sorted({r["working_set_bytes"] for r in sweep}):
        best = {r["threads"]: max(r["read_bytes_per_s"], r["copy_bytes_per_s"]) / 1e9
                for r in sweep if r["working_set_bytes"] == size}  # fmt: skip
        print(f"{size_text(size):>11}  " + "  ".join(f"{best.get(t, math.nan):18.1f}" for t in counts))
    cases = []
    for path in args.runs:
        run = load(path)
        for m in run.measurements:
            if (
                m.case.device != "cpu"
                or m.status not in ("ok", "implausible")
                or not m.cost
                or not m.cost.bytes
            ):
                continue
            if m.case.backend.endswith("-control") or not m.samples_ns:
                continue
            rate = m.cost.bytes / (m.median_ns * 1e-9)
            cases.append({"run": run.run_id, "backend": m.case.backend, "workload": m.case.workload,
                          "dtype": m.case.dtype, "batch": m.case.batch, "threads": m.case.threads,
                          "variant": m.case.variant, "status": m.status, "bytes": m.cost.bytes,
                          "bytes_per_s": rate})  # fmt: skip
    cases.sort(
        key=lambda c: -c["bytes_per_s"] / bandwidth_limit_for(first.limits, c["bytes"], c["threads"])[0]
    )
    print(
        f"\n{len(cases)} real CPU cases; the ten closest to their ceiling (read in {args.runs[0]}'s sweep):"
    )
    for c in cases[:10]:
        ceiling, where = bandwidth_limit_for(first.limits, c["bytes"], c["threads"])
        print(f"  {c['workload']} {c['backend']} {c['dtype']} B={c['batch']} t={c['threads']}: "
              f"{c['bytes_per_s'] / 1e9:.1f} GB/s = {c['bytes_per_s'] / ceiling:.0%} of {ceiling / 1e9:.1f} GB/s "
              f"({where}) [{c['status']}]")  # fmt: skip
    if args.out:
        record = {
            "how": f"the bandwidth sweep of {args.runs[0]} and the median rates of the real CPU cases of "
            f"{', '.join(args.runs)} (scripts/roofline_record.py), measured on {first.cpu}",
            "bandwidth_sweep": sweep,
            "bandwidth_reprobes": first.limits.get("bandwidth_reprobes") or [],
            "cases": cases,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
