"""The A/B gate's error rates, measured for real on this machine (docs/gating.md reports them).

    .venv/bin/python scripts/gate_experiment.py [--gates 40] [--slow-gates 20] [--out FILE]

Both sides of each gate are this working tree, run by the real interleaved A/B machinery
(elbolab.ab.measure_interleaved: fresh pairs of workers, one per side alive together, B H H B
blocks, judged on the pairs' paired medians (99%) from 8 pairs on, adaptive stopping) on the cases of
the issue: numpy and rust elbo at batch 128 and 1024, float64, one thread, eps given. The head
side's backends do known extra work (tests/slow_backend.py: ELBOLAB_EXTRA_WORK=f calls the kernel
once more every 1/f calls, inside the backend's own timing loop). The arms: A/A (no extra work),
+5% and +10% of work. Extra calls are not exactly extra time (caches, the call's fixed cost), so
the true time ratio of each arm is measured first, over many worker pairs, and the detection rates
are reported against it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from elbolab.ab import ABConfig, Side, measure_interleaved  # noqa: E402
from elbolab.backend import discover  # noqa: E402
from elbolab.case import Case  # noqa: E402
from elbolab.compare import compare  # noqa: E402
from elbolab.verdict import DEFAULT_AB_THRESHOLD, Rule  # noqa: E402

BACKENDS = "tests.slow_backend:backend,tests.slow_backend:rust_backend"
ARMS = {"A/A": 0.0, "+5%": 0.05, "+10%": 0.10}


def cases() -> list[Case]:
    names = ["numpy-slow"] + (["rust-slow"] if discover()["rust"].unavailable_reason() is None else [])
    return [Case("elbo", n, "cpu", "float64", b, threads=1) for n in names for b in (128, 1024)]


def sides(extra: float) -> dict[str, Side]:
    env = {"ELBOLAB_BACKENDS": BACKENDS, "PYTHONPATH": str(ROOT)}
    return {
        "base": Side("base", ROOT, extra_env=dict(env, ELBOLAB_EXTRA_WORK="0")),
        "head": Side("head", ROOT, extra_env=dict(env, ELBOLAB_EXTRA_WORK=str(extra))),
    }


def true_ratios(config: ABConfig, rule: Rule, samples: int, pairs: int) -> dict[str, dict[str, float]]:
    """The time ratio each arm really causes, per case: `pairs` pairs of workers, `samples` each."""
    out = {}
    fixed = replace(config, fixed_samples=samples, max_pairs=pairs, case_budget_s=1e9)
    for arm, extra in ARMS.items():
        runs = measure_interleaved(fixed, rule, sides(extra), cases(), log=lambda _: None)
        report = compare(runs["base"], runs["head"], rule=rule)
        out[arm] = {c.case.label(): c.ratio for c in report.comparisons}
        out[arm + " ci95"] = {c.case.label(): list(c.judgement.ci95) for c in report.comparisons}
        print(f"true ratio {arm}: " + ", ".join(f"{k.split(' cpu')[0]} B={k.split('B=')[1].split()[0]}: {v:.3f}"
                                                  for k, v in out[arm].items()), flush=True)  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gates", type=int, default=40, help="gates for A/A and +10%% (default 40)")
    parser.add_argument("--slow-gates", type=int, default=20, help="gates for +5%% (default 20)")
    parser.add_argument(
        "--true-samples", type=int, default=60, help="samples a side per pair for true ratios"
    )
    parser.add_argument("--true-pairs", type=int, default=16, help="worker pairs for true ratios")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "scratch" / "gate-experiment.json")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ["ELBOLAB_BACKENDS"] = BACKENDS
    config, rule = ABConfig(base_ref="-"), Rule(DEFAULT_AB_THRESHOLD)
    print(f"rule: {rule.describe()}; {len(cases())} cases a gate", flush=True)
    result = {"rule": rule.to_json(), "config": {k: getattr(config, k) for k in
                                                  ("block", "pair_samples", "min_pairs", "max_pairs", "case_budget_s")}}  # fmt: skip
    result["true_ratios"] = true_ratios(config, rule, args.true_samples, args.true_pairs)
    result["arms"] = {}
    for arm, extra in ARMS.items():
        n = args.slow_gates if arm == "+5%" else args.gates
        fired, case_fired, seconds, samples, per_case = 0, [], [], [], {}
        for g in range(n):
            t0 = time.perf_counter()
            runs = measure_interleaved(config, rule, sides(extra), cases(), log=lambda _: None)
            report = compare(runs["base"], runs["head"], rule=rule)
            seconds.append(time.perf_counter() - t0)
            fired += report.failed
            case_fired += [int(c.regression) for c in report.comparisons]
            for c in report.comparisons:
                per_case.setdefault(c.case.label(), []).append(int(c.regression))
            samples += [c.head_n for c in report.comparisons]
            print(f"{arm} gate {g + 1}/{n}: {'FIRED' if report.failed else 'pass'} "
                  f"({', '.join(f'{c.ratio:.3f}' for c in report.comparisons)}; {seconds[-1]:.0f} s)", flush=True)  # fmt: skip
        result["arms"][arm] = {"gates": n, "fired": fired, "cases": len(case_fired), "cases_fired": sum(case_fired),
                               "seconds_per_gate": sum(seconds) / n, "max_seconds": max(seconds),
                               "samples_per_case_median": sorted(samples)[len(samples) // 2],
                               "fired_per_case": {k: sum(v) for k, v in per_case.items()}}  # fmt: skip
    print("\narm    true ratio (per case)            gates fired   cases fired   s/gate")
    for arm, r in result["arms"].items():
        ratios = ", ".join(f"{v:.3f}" for v in result["true_ratios"][arm].values())
        print(f"{arm:5s}  {ratios:32s} {r['fired']:3d}/{r['gates']:<3d}      {r['cases_fired']:3d}/{r['cases']:<4d}"
              f"   {r['seconds_per_gate']:.0f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
