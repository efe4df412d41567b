"""Calibrated timing of one prepared case.

first call (compile/JIT/allocation) -> calibration -> warm-up samples -> N timed samples.
Each sample runs `loops` calls back to back and is synchronised with the device before the clock
stops; the loop count is calibrated so a sample lasts `target_sample_ns` (far above the clock's
resolution and the cost of reading it). GC is off while timing. The clock is injected so tests can
drive it with a fake one.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from elbolab.backend import Prepared


@dataclass(frozen=True)
class TimerConfig:
    # One sample lasts about this long: 10^4 times the clock's ~1 µs cost and resolution, short
    # enough that the default matrix of ~600 cases measures in a few minutes.
    target_sample_ns: int = 10_000_000
    sample_count: int = 15
    warmup: int = 2  # samples run and discarded after calibration
    max_loops: int = 10_000_000
    # Wall-clock budget for a case's samples: a very slow case takes fewer samples (never < 5)
    # rather than the whole run's time.
    budget_ns: int = 4_000_000_000
    min_samples: int = 5

    @classmethod
    def quick(cls) -> TimerConfig:
        return cls(target_sample_ns=5_000_000, sample_count=7, warmup=1, budget_ns=1_000_000_000)

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Timing:
    loops: int
    samples_ns: tuple[int, ...]  # raw: each sample is the time of `loops` calls
    first_call_ns: int
    calibration: tuple[tuple[int, int], ...]  # (loops, ns) tried while calibrating


Clock = Callable[[], int]


def _runner(prepared: Prepared) -> Callable[[int], None]:
    """A function running `loops` calls followed by a device sync."""
    call, call_n, sync = prepared.call, prepared.call_n, prepared.sync

    if call_n is not None:

        def run(loops: int) -> None:
            call_n(loops)
            if sync:
                sync()
    else:

        def run(loops: int) -> None:
            for _ in range(loops):
                call()
            if sync:
                sync()

    return run


def time_prepared(prepared: Prepared, config: TimerConfig, clock: Clock = time.perf_counter_ns) -> Timing:
    run = _runner(prepared)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        t0 = clock()
        run(1)
        first_call_ns = clock() - t0

        loops, tried = _calibrate(run, config, clock)
        per_sample = max(tried[-1][1], 1)
        affordable = config.budget_ns // per_sample
        n_samples = int(max(config.min_samples, min(config.sample_count, affordable)))
        warmup = config.warmup if affordable > n_samples + config.warmup else 0

        samples = []
        for i in range(warmup + n_samples):
            t0 = clock()
            run(loops)
            elapsed = clock() - t0
            if i >= warmup:
                samples.append(elapsed)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timing(
        loops=loops, samples_ns=tuple(samples), first_call_ns=first_call_ns, calibration=tuple(tried)
    )


def _calibrate(run: Callable[[int], None], config: TimerConfig, clock: Clock) -> tuple[int, list]:
    """Grow the loop count until one sample lasts at least half the target; aim at the target."""
    loops = 1
    tried: list[tuple[int, int]] = []
    while True:
        t0 = clock()
        run(loops)
        elapsed = max(clock() - t0, 1)
        tried.append((loops, elapsed))
        if elapsed >= config.target_sample_ns / 2 or loops >= config.max_loops:
            return loops, tried
        # aim straight at the target from the current estimate, at most 100x at a time so a
        # clock too coarse to see one call cannot send the count to the sky
        want = math.ceil(loops * config.target_sample_ns / elapsed)
        loops = min(max(loops + 1, min(want, loops * 100)), config.max_loops)
