"""A run's null control: the reference backend measured a second time, in a worker of its own, in
every cell it is in (elbolab.measure.cells). Identical code: whatever its speed-up over the reference
is, other than 1, is noise this run has and no interval from within it can see (a process's or an
allocation's own offset, load that came and went). The control's interval, per cell and pooled over
the run, is the run's resolution: every speed-up's interval is widened by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from elbolab.analyse.verdict import DEFAULT_RULE, Judgement, decide, judge_in_run, paired_rounds
from elbolab.model.backend import is_control
from elbolab.model.measurement import Measurement
from elbolab.model.stats import paired_ratio_interval

# case fields that make a cell: everything but the backend and the device
CELL_FIELDS = ("workload", "variant", "dtype", "batch", "input_dim", "latent_dim", "hidden_dim",
               "importance_samples", "threads", "seed")  # fmt: skip


@dataclass(frozen=True)
class ControlNoise:
    """What a run's null control measured (the reference backend against itself, each cell where
    both were measured): per cell and for the whole run, the control's judgement and the noise it
    stands for, log(max deviation of its interval from 1). Every speed-up's interval is widened by
    its cell's noise (the run's where its cell has no control): differences that size are what
    identical code shows in this run."""

    cells: dict[tuple, Judgement]
    run: Judgement | None  # the cells' control estimates pooled (median, signed-rank interval)

    @staticmethod
    def noise_of(j: Judgement | None) -> float:
        if j is None:
            return 0.0
        lo, hi = j.ci95
        if not (lo > 0 and math.isfinite(hi)):
            return math.inf
        return max(abs(math.log(lo)), abs(math.log(hi)))

    @property
    def run_noise(self) -> float:
        return self.noise_of(self.run)

    def for_case(self, case) -> float:
        own = self.cells.get(cell_of(case))
        return self.noise_of(own) if own is not None else self.run_noise


def cell_of(case) -> tuple:
    return tuple(getattr(case, k) for k in CELL_FIELDS)


def control_noise(measurements: list[Measurement], baseline: str = "numpy") -> ControlNoise:
    """The null control of a run (elbolab.measure.cells): for each cell with both the reference
    and its control timed ok, the control's time over the reference's, judged in the run."""
    refs = {cell_of(m.case): m for m in measurements
            if m.case.backend == baseline and m.case.device == "cpu" and m.timed_ok}  # fmt: skip
    cells: dict[tuple, Judgement] = {}
    controls: dict[tuple, Measurement] = {}
    for m in measurements:
        if is_control(m.case.backend) and m.timed_ok and cell_of(m.case) in refs:
            cells[cell_of(m.case)] = judge_in_run(refs[cell_of(m.case)], m, workload=m.case.workload)
            controls[cell_of(m.case)] = m
    run = None
    if cells:
        # the run's control: every cell's rounds (where interleaved) or its estimate, as the units
        base, head = [], []
        for key in cells:
            ref, ctl = refs[key], controls[key]
            if paired_rounds(ref, ctl):
                base += ref.round_medians
                head += ctl.round_medians
            else:
                base.append(ref.median_ns)
                head.append(ctl.median_ns)
        estimate = paired_ratio_interval(base, head)
        run = decide(estimate, DEFAULT_RULE)
    return ControlNoise(cells, run)
