"""The gate on this machine for real: A/A false alarms and detection of a deliberately slowed kernel.

    .venv/bin/python scripts/gate_experiment.py              # ~100 runs of `elbolab run --quick`
    .venv/bin/python scripts/gate_experiment.py --cycles 4   # a shorter look
    .venv/bin/python scripts/gate_experiment.py --time-ab    # + time a real quick A/B gate vs HEAD

Every measurement is a real `python -m elbolab.cli run --quick` of the test-only backend
`numpy-slow` (tests/slow_backend.py: the NumPy elbo kernel plus ELBOLAB_EXTRA_WORK of its main
pass), on `--batches` (default 128 and 1024, elbo, float64, one thread, eps=given).

Each cycle runs five arms, `--rounds` times, in an order that rotates every round (so drift is
spread over all arms, as the gate's A/B mode does for two):

    a, b, c   no extra work            s10  +10% work            s25  +25% work

and gates, exactly as `elbolab gate` does (pool each arm's rounds, compare with the defaults):
b vs a and c vs a (two A/A gates per cycle), s10 vs a and s25 vs a. A gate "fires" when it exits 1.
The two A/A gates of a cycle share the arm a, so they are not independent of each other.
Default: 10 cycles -> 20 A/A gates, 10 gates at +10%, 10 at +25%.
The true slowdowns are also estimated from all cycles pooled, since +25% work is not exactly +25%
time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from elbolab.compare import compare, pool_rounds  # noqa: E402
from elbolab.results import Run, load  # noqa: E402

ARMS = {"a": 0.0, "b": 0.0, "c": 0.0, "s10": 0.10, "s25": 0.25}
GATES = (("A/A", "b"), ("A/A", "c"), ("+10%", "s10"), ("+25%", "s25"))


def run_arm(extra: float, out: Path, batches: str) -> Run:
    env = dict(
        os.environ,
        ELBOLAB_BACKENDS="tests.slow_backend:backend",
        ELBOLAB_EXTRA_WORK=str(extra),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    argv = [sys.executable, "-m", "elbolab.cli", "run", "--backend", "numpy-slow", "--workload", "elbo",
            "--batch", batches, "--dtype", "float64", "--threads", "1", "--variant", "eps=given",
            "--quick", "--no-limits", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        sys.exit(f"elbolab run failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return load(out)


def time_ab_gate() -> None:
    print("\ntiming a real quick A/B gate: elbolab gate --base HEAD --backend numpy --quick --rounds 3 ...")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "elbolab.cli", "gate", "--base", "HEAD", "--backend", "numpy", "--quick",
         "--rounds", "3"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    print(proc.stdout[-3000:])
    print(f"exit {proc.returncode}; took {time.perf_counter() - t0:.0f} s")
    if proc.returncode == 2:
        print(proc.stderr[-1000:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per arm in each gate (default 3, as elbolab gate)"
    )
    parser.add_argument("--batches", default="128,1024")
    parser.add_argument("--time-ab", action="store_true", help="also time a real quick A/B gate against HEAD")
    args = parser.parse_args()

    n_runs = args.cycles * args.rounds * len(ARMS)
    print(f"{args.cycles} cycles x {args.rounds} rounds x {len(ARMS)} arms = {n_runs} quick runs")
    fired: dict[str, list[int]] = {"A/A": [], "+10%": [], "+25%": []}
    case_fired: dict[str, list[int]] = {"A/A": [], "+10%": [], "+25%": []}
    pooled: dict[str, dict[int, list[float]]] = {arm: {} for arm in ARMS}
    t_start = time.perf_counter()
    names = list(ARMS)
    with tempfile.TemporaryDirectory(prefix="elbolab-gate-exp-") as tmp:
        for cycle in range(args.cycles):
            runs: dict[str, list[Run]] = {arm: [] for arm in ARMS}
            for r in range(args.rounds):
                shift = (cycle * args.rounds + r) % len(names)
                for arm in names[shift:] + names[:shift]:
                    runs[arm].append(run_arm(ARMS[arm], Path(tmp) / f"{cycle}_{r}_{arm}.json", args.batches))
            merged = {arm: pool_rounds(arm_runs) for arm, arm_runs in runs.items()}
            for arm, run in merged.items():
                for m in run.measurements:
                    pooled[arm].setdefault(m.case.batch, []).extend(m.per_call_ns)
            line = []
            for kind, arm in GATES:
                report = compare(merged["a"], merged[arm])
                fired[kind].append(int(report.failed))
                case_fired[kind] += [int(c.regression) for c in report.comparisons]
                worst = max(report.comparisons, key=lambda c: c.ratio)
                line.append(
                    f"{arm} vs a: {'FAIL' if report.failed else 'pass'} (max ratio {worst.ratio:.3f})"
                )
            elapsed = time.perf_counter() - t_start
            eta = elapsed / (cycle + 1) * (args.cycles - cycle - 1)
            print(f"cycle {cycle + 1}/{args.cycles} [{elapsed:.0f} s, ~{eta:.0f} s left]: " + "; ".join(line))
            sys.stdout.flush()

    print("\nresults (threshold 10%, noise band 3%, rank CI; a gate fires when it exits 1)")
    for kind in fired:
        g, c = fired[kind], case_fired[kind]
        word = "false alarms" if kind == "A/A" else "detections"
        print(f"  {kind:5s} {word}: {sum(g)}/{len(g)} gate runs, {sum(c)}/{len(c)} cases")
    print("true effect of the extra work (all cycles pooled, median per call vs arm a):")
    for arm in ("b", "c", "s10", "s25"):
        parts = [
            f"B={b}: {np.median(pooled[arm][b]) / np.median(pooled['a'][b]):.3f}" for b in sorted(pooled["a"])
        ]
        print(f"  {arm:4s} " + ", ".join(parts))
    print(f"total {time.perf_counter() - t_start:.0f} s for {n_runs} runs")
    if args.time_ab:
        time_ab_gate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
