"""Calibrated timing of one prepared case.

first call (compile/JIT/allocation) -> calibration -> warm-up samples -> timed samples until the
median is known well enough.

Each sample runs `loops` calls back to back and is synchronised with the device before the clock
stops; the loop count is calibrated so a sample lasts `target_sample_ns` (far above the clock's
resolution and the cost of reading it). GC is off while timing. The clock is injected so tests can
drive it with a fake one.

How many samples: at least `min_samples`, then samples continue until the distribution-free 95%
interval of the median is within `ci_target` of it (half-width relative to the median, +-1% by
default), or the case has spent `budget_ns`, or `max_samples` are taken. A quiet case stops early;
a noisy one gets the samples it needs; `Timing.stopped` says which happened. (A sequential stop
reads the interval repeatedly, so its coverage is a little below 95%; the interval itself is
recomputed from all the samples kept, and the samples are the record.)
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from elbolab.model.backend import Prepared
from elbolab.model.stats import median_ci


@dataclass(frozen=True)
class TimerConfig:
    # One sample lasts about this long: 5,000 times the clock's ~1 µs cost and resolution, short
    # enough that the cases of make bench (a few hundred, 16 samples each in a run's rounds)
    # measure in a few minutes. (10 ms samples were 146 s of a 522 s make bench on the 2-core VM;
    # the drift a run's rounds see is tens of percent, a 5 ms sample's own jitter well under 1%.)
    target_sample_ns: int = 5_000_000
    # At least 7 samples (the smallest count whose median has a distribution-free 95% interval
    # that excludes the extremes), at most 15, the fixed count before sampling stopped adaptively.
    # On a noisy 2-core VM most cases reach the cap: in a whole-matrix make bench capped at 25
    # (2026-11, 552 measured cases), 458 did, and the median case's interval was +-2.6% after 25
    # samples, +-3.7% after its first 15: 10 more samples in most cases for an interval a third
    # narrower.
    min_samples: int = 7
    max_samples: int = 15
    # stop once the 95% interval of the median is within this fraction of it, either side
    ci_target: float = 0.01
    warmup: int = 2  # samples run and discarded after calibration
    max_loops: int = 10_000_000
    # Wall-clock budget for a case's samples: a very slow or very noisy case stops here (never
    # below min_samples) rather than taking the whole run's time.
    budget_ns: int = 2_000_000_000

    @classmethod
    def quick(cls) -> TimerConfig:
        return cls(target_sample_ns=5_000_000, min_samples=7, max_samples=15, ci_target=0.02, warmup=1,
                   budget_ns=500_000_000)  # fmt: skip

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Timing:
    loops: int
    samples_ns: tuple[int, ...]  # raw: each sample is the time of `loops` calls
    first_call_ns: int
    calibration: tuple[tuple[int, int], ...]  # (loops, ns) tried while calibrating
    stopped: str = ""  # why sampling stopped: the interval was narrow enough, or the budget or cap


Clock = Callable[[], int]


def loop_runner(prepared: Prepared, synced: bool = True) -> Callable[[int], None]:
    """run(loops): `loops` calls (a Python loop, or call_n inside the backend), then the device sync
    unless `synced` is False. run(0) makes no call (instruction counting measures the fixed cost so)."""
    call, call_n = prepared.call, prepared.call_n
    sync = prepared.sync if synced else None

    if call_n is not None:

        def run(loops: int) -> None:
            if loops:
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


class Sampler:
    """A prepared case with its first call done and its loop count calibrated, ready to sample.

    The A/B gate keeps one per side open and asks for a few samples at a time, alternating sides;
    `time_prepared` takes all of one case's samples at once.
    """

    def __init__(self, prepared: Prepared, config: TimerConfig, clock: Clock = time.perf_counter_ns,
                 loops: int | None = None):  # fmt: skip
        """The first call, then the loop count calibrated, or `loops` taken as it is (a case opened
        again later in a run keeps the loop count it was calibrated to, so its samples pool)."""
        self.run, self.config, self.clock = loop_runner(prepared), config, clock
        self.events, self.sync = prepared.device_events, prepared.sync
        self.calls = loop_runner(prepared, synced=False)  # with device events: the end event before the sync
        self.device_ns: list[float] = []  # per sample, between device events, when the backend has them
        with _gc_off(collect=True):
            t0 = clock()
            self.run(1)
            self.first_call_ns = clock() - t0
            if loops is None:
                self.loops, self.calibration = _calibrate(self.run, config, clock)
            else:
                t0 = clock()
                self.run(loops)
                self.loops, self.calibration = loops, [(loops, max(clock() - t0, 1))]
        self.sample_ns = max(self.calibration[-1][1], 1)  # the last calibration round: about one sample

    def warm_up(self, n: int) -> None:
        self.sample(n)

    def sample(self, n: int) -> list[int]:
        out = []
        with _gc_off():
            for _ in range(n):
                if self.events is not None:
                    start, end = self.events()
                    t0 = self.clock()
                    start.record()
                    self.calls(self.loops)
                    end.record()
                    if self.sync:
                        self.sync()  # the host clock stops after the device is done, as without events
                    out.append(self.clock() - t0)
                    self.device_ns.append(start.elapsed_time(end) * 1e6)
                    continue
                t0 = self.clock()
                self.run(self.loops)
                out.append(self.clock() - t0)
        return out


class _gc_off:  # noqa: N801 (a context manager, named for what it does)
    """The collector off while timing. A full collection runs once, when the Sampler is made, and
    the survivors are then frozen (gc.freeze: moved where later collections do not look), so the
    next case's collection looks only at what was made since: a full collection costs 60-200 ms in a
    worker that has imported torch, paid once per worker instead of once per case (a few
    hundred in make bench). Samples are asked for one or a few at a time (adaptive stopping, the A/B blocks),
    so collecting before each would cost more than the samples themselves. With the collector off
    no collection can start inside a sample. (What freezing gives up: a reference cycle among
    objects alive at a freeze is never collected; the worker's modules and caches, not case data,
    which is freed by reference counting.)"""

    def __init__(self, collect: bool = False):
        self.collect = collect

    def __enter__(self):
        self.was = gc.isenabled()
        if self.collect:
            gc.collect()
            gc.freeze()
        gc.disable()

    def __exit__(self, *exc):
        if self.was:
            gc.enable()


def precise_enough(samples: list[int], target: float) -> bool:
    """Whether the 95% interval of the median is within `target` of it, either side."""
    median, lo, hi = median_ci(sorted(samples))
    return median > 0 and max(median - lo, hi - median) <= target * median


def sample_until_precise(sampler: Sampler, config: TimerConfig) -> tuple[list[int], str]:
    """Samples until the median is known to `ci_target`, or the budget or the cap is reached."""
    samples = sampler.sample(config.min_samples)
    while True:
        if precise_enough(samples, config.ci_target):
            return samples, f"the median's 95% interval is within ±{config.ci_target:.0%}"
        if len(samples) >= config.max_samples:
            return samples, f"the cap of {config.max_samples} samples"
        if sum(samples) + sampler.sample_ns > config.budget_ns:
            return samples, f"the budget of {config.budget_ns / 1e9:g} s"
        samples += sampler.sample(1)


def time_prepared(prepared: Prepared, config: TimerConfig, clock: Clock = time.perf_counter_ns) -> Timing:
    sampler = Sampler(prepared, config, clock)
    if config.budget_ns // sampler.sample_ns > config.min_samples + config.warmup:
        sampler.warm_up(config.warmup)
    samples, stopped = sample_until_precise(sampler, config)
    return Timing(sampler.loops, tuple(samples), sampler.first_call_ns, tuple(sampler.calibration), stopped)


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
