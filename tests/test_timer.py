"""The timer, driven by a fake clock: no test here depends on real time."""

import numpy as np
import pytest

from elbolab.measure.timer import TimerConfig, time_prepared
from elbolab.model.backend import Prepared


class FakeClock:
    """A clock that advances only when the fake kernel runs."""

    def __init__(self):
        self.now = 0

    def __call__(self) -> int:
        return self.now


def fake_kernel(clock: FakeClock, per_call_ns: int, first_call_ns: int | None = None):
    calls = []

    def call():
        cost = first_call_ns if (first_call_ns is not None and not calls) else per_call_ns
        calls.append(cost)
        clock.now += cost

    return call, calls


def test_calibrates_loops_so_a_sample_lasts_the_target():
    clock = FakeClock()
    call, _ = fake_kernel(clock, per_call_ns=1_000)
    cfg = TimerConfig(target_sample_ns=1_000_000, min_samples=9, warmup=2)
    t = time_prepared(Prepared(call=call, outputs=dict), cfg, clock=clock)
    assert 500 <= t.loops <= 1_100  # a sample of ~1 ms of 1 µs calls
    assert len(t.samples_ns) == 9  # identical samples: the interval is exact at the minimum
    assert all(s == t.loops * 1_000 for s in t.samples_ns)
    assert [s / t.loops for s in t.samples_ns] == [1_000.0] * 9
    assert "interval" in t.stopped


def test_first_call_is_reported_apart_and_not_in_samples():
    clock = FakeClock()
    call, _ = fake_kernel(clock, per_call_ns=2_000, first_call_ns=5_000_000_000)  # a 5 s "JIT"
    t = time_prepared(Prepared(call=call, outputs=dict), TimerConfig(target_sample_ns=100_000), clock=clock)
    assert t.first_call_ns == 5_000_000_000
    assert max(t.samples_ns) / t.loops == 2_000


def test_warmup_samples_are_run_but_discarded():
    clock = FakeClock()
    call, calls = fake_kernel(clock, per_call_ns=10_000_000)  # slower than the target: loops = 1
    cfg = TimerConfig(target_sample_ns=1_000_000, min_samples=5, warmup=3, budget_ns=10**12)
    t = time_prepared(Prepared(call=call, outputs=dict), cfg, clock=clock)
    assert t.loops == 1
    # first call + one calibration run + 3 warm-up + 5 samples
    assert len(calls) == 1 + 1 + 3 + 5
    assert len(t.samples_ns) == 5


def test_slow_case_takes_fewer_samples_within_budget():
    clock = FakeClock()
    call, _ = fake_kernel(clock, per_call_ns=2_000_000_000)  # 2 s a call
    cfg = TimerConfig(target_sample_ns=1_000_000, max_samples=15, budget_ns=4_000_000_000, min_samples=5)
    t = time_prepared(Prepared(call=call, outputs=dict), cfg, clock=clock)
    assert len(t.samples_ns) == 5  # never below min_samples, far below 15


def test_sync_runs_before_the_clock_stops_in_every_sample():
    clock = FakeClock()
    pending = []

    def call():
        pending.append(1)  # queued "device" work costs nothing until synchronised

    def sync():
        clock.now += 1_000 * len(pending)
        pending.clear()

    cfg = TimerConfig(target_sample_ns=100_000, min_samples=5, warmup=0)
    t = time_prepared(Prepared(call=call, outputs=dict, sync=sync), cfg, clock=clock)
    assert [s / t.loops for s in t.samples_ns] == [1_000.0] * 5  # without sync the samples would read 0


def test_call_n_replaces_the_python_loop():
    clock = FakeClock()
    seen = []

    def call_n(n):
        seen.append(n)
        clock.now += 100 * n

    def call():
        raise AssertionError("call() must not be looped when call_n exists")

    cfg = TimerConfig(target_sample_ns=1_000_000, min_samples=5, warmup=1)
    t = time_prepared(Prepared(call=call, outputs=dict, call_n=call_n), cfg, clock=clock)
    assert seen[0] == 1  # the first call
    assert t.loops >= 5_000 and [s / t.loops for s in t.samples_ns] == [100.0] * 5


def test_gc_is_disabled_while_timing_and_restored():
    import gc

    clock = FakeClock()
    states = []

    def call():
        states.append(gc.isenabled())
        clock.now += 1_000_000

    assert gc.isenabled()
    time_prepared(
        Prepared(call=call, outputs=dict),
        TimerConfig(target_sample_ns=1_000_000, min_samples=5),
        clock=clock,
    )
    assert not any(states)
    assert gc.isenabled()


def test_a_case_pays_for_one_full_collection_not_one_per_sample(monkeypatch):
    """A full gc.collect() costs ~60 ms in a worker that has imported torch; adaptive sampling asks
    for one sample at a time, so a collection per sample made a 0.4 s case take 4 s (make bench: an
    hour instead of minutes). One collection, before the first call, is what a case may cost."""
    import gc

    import elbolab.measure.timer as timer

    collections = []
    monkeypatch.setattr(timer.gc, "collect", lambda *a: collections.append(a) or 0)
    clock = FakeClock()
    noisy = _noisy_kernel(clock, [1.0, 1.3, 0.8, 1.1, 0.9, 1.25, 0.85])
    cfg = TimerConfig(target_sample_ns=10_000, min_samples=7, max_samples=30, ci_target=0.01, warmup=2,
                      max_loops=1, budget_ns=10**12)  # fmt: skip
    t = time_prepared(Prepared(call=noisy, outputs=dict), cfg, clock=clock)
    assert len(t.samples_ns) == 30  # sampled one at a time up to the cap
    assert len(collections) == 1
    assert gc.isenabled()


def _noisy_kernel(clock: FakeClock, spreads):
    """A kernel whose k-th call costs 1000 ns * spreads[k % len(spreads)]."""
    state = {"k": 0}

    def call():
        clock.now += int(1_000 * spreads[state["k"] % len(spreads)])
        state["k"] += 1

    return call


def test_sampling_stops_once_the_median_is_known_to_the_target():
    clock = FakeClock()
    quiet = _noisy_kernel(clock, [1.0])
    cfg = TimerConfig(
        target_sample_ns=10_000, min_samples=7, max_samples=40, ci_target=0.01, warmup=0, max_loops=1
    )
    t = time_prepared(Prepared(call=quiet, outputs=dict), cfg, clock=clock)
    assert len(t.samples_ns) == 7 and "within ±1%" in t.stopped


def test_a_noisy_case_takes_more_samples_up_to_the_cap():
    clock = FakeClock()
    noisy = _noisy_kernel(clock, [1.0, 1.3, 0.8, 1.1, 0.9, 1.25, 0.85])  # one call per sample (max_loops=1)
    cfg = TimerConfig(target_sample_ns=10_000, min_samples=7, max_samples=25, ci_target=0.01, warmup=0,
                      max_loops=1, budget_ns=10**12)  # fmt: skip
    t = time_prepared(Prepared(call=noisy, outputs=dict), cfg, clock=clock)
    assert len(t.samples_ns) == 25 and "cap" in t.stopped
    t = time_prepared(Prepared(call=_noisy_kernel(clock, [1.0, 1.3]), outputs=dict),
                      TimerConfig(target_sample_ns=10_000, min_samples=7, max_samples=1000, ci_target=0.001,
                                  warmup=0, max_loops=1, budget_ns=30_000), clock=clock)  # fmt: skip
    assert "budget" in t.stopped and len(t.samples_ns) < 1000


class FakeEvent:
    """A device event on the fake clock: records the time, elapsed_time in ms as torch's."""

    def __init__(self, clock):
        self.clock, self.at = clock, None

    def record(self):
        self.at = self.clock.now

    def elapsed_time(self, end) -> float:
        return (end.at - self.at) / 1e6


def test_device_events_time_each_sample_on_the_device_as_well():
    clock = FakeClock()
    pending = []

    def call():
        pending.append(1)

    def sync():  # the host waits 500 ns per sync beyond the device's work
        clock.now += 1_000 * len(pending) + 500
        pending.clear()

    def call_with_device_time():
        call()
        clock.now += 0  # the launch is free; the work lands at the sync

    prepared = Prepared(call=call_with_device_time, outputs=dict, sync=sync,
                        device_events=lambda: (FakeEvent(clock), FakeEvent(clock)))  # fmt: skip
    from elbolab.measure.timer import Sampler

    cfg = TimerConfig(target_sample_ns=100_000, min_samples=5, warmup=0)
    sampler = Sampler(prepared, cfg, clock)
    host = sampler.sample(3)
    assert len(sampler.device_ns) == 3 and all(h >= d for h, d in zip(host, sampler.device_ns, strict=True))


def test_survivors_of_a_case_s_collection_are_frozen_and_new_garbage_is_still_collected():
    """The full collection runs once per worker in effect: its survivors are frozen, so the next
    case's collection looks only at new objects, and a cycle made by a case is still collected."""
    import gc
    import weakref

    from elbolab.measure.timer import _gc_off

    class Node:
        pass

    try:
        with _gc_off(collect=True):
            pass
        assert gc.get_freeze_count() > 0
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the collector frees it
        alive = weakref.ref(a)
        del a, b
        with _gc_off(collect=True):
            pass
        assert alive() is None
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("seed", range(20))
def test_the_stopping_rule_is_the_summary_s_interval(seed):
    """precise_enough skips the rest of the summary, not its interval."""
    from elbolab.measure.timer import precise_enough
    from elbolab.model.stats import summarize

    rng = np.random.default_rng(seed)
    samples = [int(x) for x in rng.lognormal(np.log(1e6), rng.uniform(0.001, 0.05), size=rng.integers(5, 40))]
    s = summarize(samples)
    expected = max(s.median - s.ci95[0], s.ci95[1] - s.median) <= 0.01 * s.median
    assert precise_enough(samples, 0.01) == expected
