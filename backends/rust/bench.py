"""Quick measurements of the Rust backend (not the lab's runner): per-call overhead, GB/s against
the STREAM-like probe at the same working set, threads 1 vs 2, and the serial/parallel crossover.

    .venv/bin/python backends/rust/bench.py [overhead|bandwidth|threads|crossover|tutorial|all]

tutorial: rust-tutorial (the tutorial's ndarray code) vs rust-inner (fused kernel), both timed with the
loop inside Rust (run_n), interleaved, medians; the ratio is claim C9's test.
"""

from __future__ import annotations

import statistics
import sys
import time

import elbolab_rust as ext
import numpy as np

from harness.case import Case
from harness.workloads import WORKLOADS


def per_call_ns(fn, min_s=0.2, samples=7) -> float:
    """Median over samples of the time per call, loop count calibrated to ~min_s/samples each."""
    loops = 1
    while True:
        t0 = time.perf_counter_ns()
        for _ in range(loops):
            fn()
        dt = time.perf_counter_ns() - t0
        if dt > min_s * 1e9 / samples:
            break
        loops *= 2
    out = []
    for _ in range(samples):
        t0 = time.perf_counter_ns()
        for _ in range(loops):
            fn()
        out.append((time.perf_counter_ns() - t0) / loops)
    return statistics.median(out)


def plan_for(workload, batch, threads=1, dtype="float64", variant="eps=given", always=False):
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
    plan = ext.ElboPlan(pool, x, xr, mu, lv, inputs.get("eps"), np.empty_like(mu), **grads)
    return plan, case, inputs


def overhead():
    plan, _, _ = plan_for("elbo", 1)
    noop = per_call_ns(lambda: None)
    run = per_call_ns(plan.run)
    inner = per_call_ns(lambda: plan.run_n(10000)) / 10000
    print(
        f"batch 1 elbo f64: plan.run {run:.0f} ns/call from Python (a Python no-op lambda costs {noop:.0f} ns);"
        f" run_n inner loop {inner:.0f} ns/iter; per-call overhead ~{run - inner:.0f} ns"
    )
    for b in (128, 1024, 8192):
        plan, _, _ = plan_for("elbo", b)
        r = per_call_ns(plan.run)
        i = per_call_ns(lambda plan=plan: plan.run_n(100)) / 100
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


def tutorial(batches=(1, 128, 1024, 8192), samples=9):
    for variant in ("eps=given", "eps=sampled"):
        for b in batches:
            plan, case, inputs = plan_for("elbo", b, variant=variant)
            if variant == "eps=sampled":  # plan_for passes eps; the sampled plan must draw its own
                plan = ext.ElboPlan(
                    ext.Pool(1),
                    inputs["x"],
                    inputs["x_recon"],
                    inputs["mu"],
                    inputs["logvar"],
                    None,
                    np.empty_like(inputs["mu"]),
                    seed=1,
                )
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
            # iterations per sample: ~20 ms of the slower (tutorial) code
            t0 = time.perf_counter_ns()
            tut.run_n(3)
            n = max(3, int(20e6 / ((time.perf_counter_ns() - t0) / 3)))
            times = {"inner": [], "tutorial": []}
            for _ in range(samples):
                for name, p in (("inner", plan), ("tutorial", tut)):
                    p.run_n(1)
                    t0 = time.perf_counter_ns()
                    p.run_n(n)
                    times[name].append((time.perf_counter_ns() - t0) / n)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(
                f"elbo f64 {variant} B={b:5d}: rust-inner {med['inner'] / 1e3:8.2f} us ({nbytes / med['inner']:5.1f} GB/s),"
                f" rust-tutorial {med['tutorial'] / 1e3:8.2f} us ({nbytes / med['tutorial']:5.1f} GB/s);"
                f" tutorial/inner = {med['tutorial'] / med['inner']:.2f}x  (n={n}, {samples} interleaved samples)"
            )


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    for name, fn in [
        ("overhead", overhead),
        ("bandwidth", bandwidth),
        ("threads", threads),
        ("crossover", crossover),
        ("tutorial", tutorial),
    ]:
        if what in (name, "all"):
            fn()
