"""Quick measurements of the Rust backend (not the lab's runner): per-call overhead, GB/s against
the STREAM-like probe at the same working set, threads 1 vs 2, the serial/parallel crossover, the
tutorial's code vs the fused kernel, and what keeping the sampled eps (eps_out) costs.

    .venv/bin/python backends/rust/bench.py [overhead|bandwidth|threads|crossover|tutorial|eps_out|all]

Every time here comes from the lab's own timer (elbolab.measure.timer.time_prepared: calibrated loop
count, warm-up, GC off) and statistics (elbolab.model.stats.summarize: the median per call); a plan's
run_n is timed as the lab times rust-inner (Prepared.call_n). There is no second timer.

tutorial: rust-tutorial (the tutorial's ndarray code) vs rust-inner (fused kernel), both timed with the
loop inside Rust (run_n), interleaved (one sample of each in turn), medians; the ratio is claim C9's test.
"""

from __future__ import annotations

import sys

import elbolab_rust as ext
import numpy as np

from elbolab.measure.timer import TimerConfig, time_prepared
from elbolab.model.backend import Prepared
from elbolab.model.case import Case
from elbolab.model.stats import summarize
from elbolab.model.workloads import WORKLOADS


def timer_config(count: int | None = None, **kw) -> TimerConfig:
    """A TimerConfig taking exactly `count` samples (no adaptive stop) when `count` is given."""
    if count is not None:
        kw.update(min_samples=count, max_samples=count)
    return TimerConfig(**kw)


# ~7 samples of ~30 ms, as this script measured before it used the lab's timer
CONFIG = timer_config(count=7, target_sample_ns=30_000_000, warmup=1)


def per_call_ns(call, call_n=None, config: TimerConfig = CONFIG) -> float:
    """Median time per call (ns) by elbolab.measure.timer; with call_n, n calls run inside Rust per sample."""
    return summarize(per_call(time_prepared(Prepared(call=call, outputs=dict, call_n=call_n), config))).median


def per_call(timing) -> list[float]:
    """A elbolab.measure.timer.Timing's raw samples (each the time of `loops` calls) as ns per call."""
    return [s / timing.loops for s in timing.samples_ns]


def plan_for(workload, batch, threads=1, dtype="float64", variant="eps=given", always=False, eps_out=False):
    case = Case(workload, "rust", dtype=dtype, batch=batch, threads=threads, variant=variant)
    inputs = WORKLOADS[workload].make_inputs(case)
    pool = ext.Pool(threads, always_parallel=always)
    x, xr, mu, lv = (inputs[k] for k in ("x", "x_recon", "mu", "logvar"))
    grads = {}
    if workload == "elbo_grad":
        grads = {
            "grad_x_recon": np.empty_like(x),
            "grad_mu": np.empty_like(mu),
            "grad_logvar": np.empty_like(mu),
        }
    kept = {"eps_out": np.empty_like(mu)} if eps_out else {}
    # eps=sampled: make_inputs gives no eps, so the plan draws its own
    plan = ext.ElboPlan(pool, x, xr, mu, lv, inputs.get("eps"), np.empty_like(mu), **grads, seed=1, **kept)
    return plan, case, inputs


def overhead():
    plan, _, _ = plan_for("elbo", 1)
    noop = per_call_ns(lambda: None)
    run = per_call_ns(plan.run)
    inner = per_call_ns(plan.run, plan.run_n)
    print(
        f"batch 1 elbo f64: plan.run {run:.0f} ns/call from Python (a Python no-op lambda costs {noop:.0f} ns);"
        f" run_n inner loop {inner:.0f} ns/iter; per-call overhead ~{run - inner:.0f} ns"
    )
    for b in (128, 1024, 8192):
        plan, _, _ = plan_for("elbo", b)
        r = per_call_ns(plan.run)
        i = per_call_ns(plan.run, plan.run_n)
        print(f"batch {b}: run {r / 1e3:.2f} us, run_n {i / 1e3:.2f} us")


def bandwidth():
    for workload in ("elbo", "elbo_grad"):
        for b in (128, 1024, 8192):
            plan, case, _ = plan_for(workload, b)
            nbytes = WORKLOADS[workload].cost(case).bytes
            ns = per_call_ns(plan.run)
            gbs = nbytes / ns
            probe = ext.stream_probe("read2", nbytes, reps=20) / 1e9
            print(
                f"{workload} f64 B={b} t=1: {ns / 1e3:.1f} us, {gbs:.1f} GB/s; read2 probe at {nbytes / 1e6:.1f} MB:"
                f" {probe:.1f} GB/s -> {100 * gbs / probe:.0f}%"
            )
    for mb in (1, 12, 100):
        print(
            f"probe {mb} MB t=1: read2 {ext.stream_probe('read2', mb << 20, 20) / 1e9:.1f}, "
            f"copy {ext.stream_probe('copy', mb << 20, 20) / 1e9:.1f}, "
            f"triad {ext.stream_probe('triad', mb << 20, 20) / 1e9:.1f} GB/s; "
            f"t=2 read2 {ext.stream_probe('read2', mb << 20, 20, 2) / 1e9:.1f}"
        )


def threads():
    for workload in ("elbo", "elbo_grad"):
        for b in (1024, 8192, 32768):
            t = {n: per_call_ns(plan_for(workload, b, n)[0].run) for n in (1, 2)}
            print(
                f"{workload} f64 B={b}: t1 {t[1] / 1e3:.1f} us, t2 {t[2] / 1e3:.1f} us, speed-up {t[1] / t[2]:.2f}x"
            )


def crossover():
    for workload in ("elbo", "elbo_grad"):
        for b in (16, 32, 48, 64, 96, 128, 192, 256, 512):
            s = per_call_ns(plan_for(workload, b, 1)[0].run)
            p = per_call_ns(plan_for(workload, b, 2, always=True)[0].run)
            print(
                f"{workload} B={b:4d} ({b * 784:7d} elems): serial {s / 1e3:6.1f} us, forced 2-thread {p / 1e3:6.1f} us"
                f"  {'parallel wins' if p < s else ''}"
            )


def interleaved(plans: dict, rounds: int, target_ns: int) -> dict[str, float]:
    """Median ns per call of each plan's run_n loop, one sample of each plan in turn per round."""
    config = timer_config(count=1, target_sample_ns=target_ns, warmup=0)
    samples: dict[str, list[float]] = {name: [] for name in plans}
    for _ in range(rounds):
        for name, p in plans.items():
            samples[name] += per_call(
                time_prepared(Prepared(call=p.run, outputs=dict, call_n=p.run_n), config)
            )
    return {name: summarize(v).median for name, v in samples.items()}


def tutorial(batches=(1, 128, 1024, 8192), rounds=9):
    for variant in ("eps=given", "eps=sampled"):
        for b in batches:
            plan, case, inputs = plan_for("elbo", b, variant=variant)
            tut = ext.TutorialPlan(
                inputs["x"],
                inputs["x_recon"],
                inputs["mu"],
                inputs["logvar"],
                inputs.get("eps"),
                np.empty_like(inputs["mu"]),
                seed=1,
            )
            nbytes = WORKLOADS["elbo"].cost(case).bytes
            # each sample ~20 ms of run_n
            med = interleaved({"inner": plan, "tutorial": tut}, rounds, 20_000_000)
            print(
                f"elbo f64 {variant} B={b:5d}: rust-inner {med['inner'] / 1e3:8.2f} us ({nbytes / med['inner']:5.1f} GB/s),"
                f" rust-tutorial {med['tutorial'] / 1e3:8.2f} us ({nbytes / med['tutorial']:5.1f} GB/s);"
                f" tutorial/inner = {med['tutorial'] / med['inner']:.2f}x  ({rounds} interleaved samples)"
            )


def eps_out(batches=(128, 1024), rounds=15):
    """What keeping the sampled eps costs: the same sampled plan with and without eps_out."""
    for workload in ("elbo", "elbo_grad"):
        for b in batches:
            plans = {
                "kept": plan_for(workload, b, variant="eps=sampled", eps_out=True)[0],
                "not kept": plan_for(workload, b, variant="eps=sampled")[0],
            }
            med = interleaved(plans, rounds, 10_000_000)
            print(
                f"{workload} f64 eps=sampled B={b} D=784 L=20: with eps_out {med['kept'] / 1e3:.2f} us, without"
                f" {med['not kept'] / 1e3:.2f} us: {100 * (med['kept'] / med['not kept'] - 1):+.1f}%"
                f" ({b * 20 * 8 / 1e3:.1f} KB more written per call; {rounds} interleaved samples)"
            )


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    for name, fn in [
        ("overhead", overhead),
        ("bandwidth", bandwidth),
        ("threads", threads),
        ("crossover", crossover),
        ("tutorial", tutorial),
        ("eps_out", eps_out),
    ]:
        if what in (name, "all"):
            fn()
