"""Do two runs of the same code agree? The figures issue 25 asks for, from two results files.

    .venv/bin/python scripts/reproducibility.py A.json B.json

- the grid's speed-ups over NumPy (every ok case of both runs, but NumPy itself): how many cells'
  intervals overlap, how many flip between faster and slower, the largest disagreement of the
  estimates;
- `compare` of the two (the shared rule, as `elbolab compare A B` judges): how many cases get a
  confident verdict (faster or slower) where nothing changed;
- each run's null control (numpy-control against numpy): pooled over the run, and per cell how
  often its interval covers 1.
"""

from __future__ import annotations

import math
import sys

from elbolab.analyse.compare import compare
from elbolab.analyse.control import control_noise
from elbolab.analyse.table import KEY_FIELDS, measurement_table
from elbolab.analyse.verdict import Verdict
from elbolab.model.backend import is_control
from elbolab.store.results import load


def grid(run) -> dict:
    df = measurement_table(run)
    rows = df[df.timed_ok & (df.backend != "numpy") & df.speedup.notna()]
    return {(r["backend"], r["device"], *(r[k] for k in KEY_FIELDS)): r for _, r in rows.iterrows()}


def main(a_path: str, b_path: str) -> int:
    a, b = load(a_path), load(b_path)
    ga, gb = grid(a), grid(b)
    common = sorted(set(ga) & set(gb), key=str)
    overlap = 0
    flips: list[tuple[str, str]] = []  # (backend, what flipped)
    worst = (1.0, None)
    for key in common:
        ra, rb = ga[key], gb[key]
        if ra.speedup_lo <= rb.speedup_hi and rb.speedup_lo <= ra.speedup_hi:
            overlap += 1
        if {ra.verdict, rb.verdict} == {Verdict.FASTER.value, Verdict.SLOWER.value}:
            flips.append(
                (
                    key[0],
                    f"{key[0]} {key[2]} {key[4]} B={key[5]} t={key[-1]}: {ra.speedup:.3g}x vs {rb.speedup:.3g}x",
                )
            )
        apart = math.exp(abs(math.log(ra.speedup / rb.speedup)))
        if apart > worst[0]:
            worst = (
                apart,
                f"{key[0]} {key[2]} {key[4]} B={key[5]} t={key[-1]}: {ra.speedup:.3g}x vs {rb.speedup:.3g}x",
            )
    print(f"grid cells in both runs: {len(common)}; intervals overlapping: {overlap} ({overlap / max(1, len(common)):.0%}); "
          f"flips faster<->slower: {sum(not is_control(b) for b, _ in flips)} among backends, "
          f"{sum(is_control(b) for b, _ in flips)} of the null control's own cells (the noise its cell's "
          "speed-ups are widened by)")  # fmt: skip
    for _, flip in flips:
        print(f"  flips: {flip}")
    print(f"largest disagreement: {worst[0]:.2f}x ({worst[1]})")
    report = compare(a, b, allow_missing=True)
    confident = [c for c in report.comparisons if c.verdict in (Verdict.FASTER, Verdict.SLOWER)]
    print(f"compare A B: {len(report.comparisons)} cases compared, {len(confident)} with a confident verdict "
          f"({len(confident) / max(1, len(report.comparisons)):.1%})")  # fmt: skip
    for n in report.notices:
        print(f"  notice: {n}")
    for name, run in (("A", a), ("B", b)):
        noise = control_noise(list(run.measurements))
        if noise.run is None:
            print(f"control {name}: none")
            continue
        covers = sum(1 for j in noise.cells.values() if j.ci95[0] <= 1.0 <= j.ci95[1])
        lo, hi = noise.run.ci95
        print(f"control {name}: {noise.run.ratio:.3f} [{lo:.3f}, {hi:.3f}] {noise.run.verdict.value}; "
              f"per cell the interval covers 1 in {covers} of {len(noise.cells)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
