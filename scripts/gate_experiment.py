"""The A/B gate's error rates, measured for real on this machine (docs/gating.md reports them).

    .venv/bin/python scripts/gate_experiment.py [--gates 40] [--slow-gates 20] [--out FILE] [--resume]
    .venv/bin/python scripts/gate_experiment.py --measure instructions [--gates 10] [--batches 128]
    .venv/bin/python scripts/gate_experiment.py --table FILE      (the results as Markdown)

Both sides of each gate are this working tree, run by the real interleaved A/B machinery
(elbolab.gate.ab.measure_interleaved with its default settings: fresh pairs of workers, one per side
alive together, B H H B blocks, judged on the pairs' paired medians (99%) from 8 pairs on,
adaptive stopping, 40 s a case) on the cases of the issue: numpy and rust elbo at batch 128 and
1024, float64, one thread, eps given. The head side's kernels do a known fraction more work
(tests/slow_backend.py: ELBOLAB_EXTRA_WORK=f makes every batch of n calls do the work of
n * (1 + f) calls, the fraction left over as one call on that share of the rows, so every
sample carries the same extra work). The arms: A/A (no extra work), +5% and +10%.

The arms take turns (A/A, +10%, +5%, A/A, ...), so a quiet or a busy hour of the shared host
falls on all of them alike. Each arm's true time ratio is measured too (a check on the injected
slowdown, and on any bias of the measurement), per case: the median, over every gate of the
arm, of the per-pair ratios of the first 8 pairs (the pairs every case takes before the gate may
stop, so adaptive stopping cannot bias them), with its distribution-free 95% interval.

The results file is rewritten after every gate; --resume continues a file made by the same code
(the gate's modules are fingerprinted) until each arm has its gates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from elbolab.analyse.compare import compare  # noqa: E402
from elbolab.analyse.verdict import DEFAULT_AB_THRESHOLD, INSTRUCTIONS_RULE, Rule  # noqa: E402
from elbolab.gate.ab import ABConfig, Side, measure_counted, measure_interleaved  # noqa: E402
from elbolab.measure.machine import machine_info  # noqa: E402
from elbolab.model.backend import discover  # noqa: E402
from elbolab.model.case import Case  # noqa: E402
from elbolab.model.stats import median_ci_ranks  # noqa: E402
from elbolab.store.results import write_text_atomic  # noqa: E402

BACKENDS = "tests.slow_backend:backend,tests.slow_backend:rust_backend"
TIME_ARMS = {"A/A": 0.0, "+10%": 0.10, "+5%": 0.05}
COUNT_ARMS = {"A/A": 0.0, "+2%": 0.02}  # --measure instructions
# what decides the gate's behaviour: a file measured with other versions of these is not resumed
LAB = "harness/elbolab"
CODE = [f"{LAB}/gate/ab.py", f"{LAB}/analyse/compare.py", f"{LAB}/model/stats.py", f"{LAB}/analyse/verdict.py",
        f"{LAB}/measure/timer.py", f"{LAB}/measure/worker.py", f"{LAB}/measure/opening.py", "tests/slow_backend.py",
        "backends/numpy/__init__.py", "backends/rust/src"]  # fmt: skip


def code_fingerprint() -> str:
    h = hashlib.sha256()
    for name in CODE:
        path = ROOT / name
        for f in sorted(path.rglob("*") if path.is_dir() else [path]):
            if f.is_file():
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


BATCHES = [128, 1024]  # --batches


def cases() -> list[Case]:
    names = ["numpy-slow"] + (["rust-slow"] if discover()["rust"].unavailable_reason() is None else [])
    return [Case("elbo", n, "cpu", "float64", b, threads=1) for n in names for b in BATCHES]


def sides(extra: float) -> dict[str, Side]:
    env = {"ELBOLAB_BACKENDS": BACKENDS, "PYTHONPATH": str(ROOT)}
    return {
        "base": Side("base", ROOT, extra_env=dict(env, ELBOLAB_EXTRA_WORK="0")),
        "head": Side("head", ROOT, extra_env=dict(env, ELBOLAB_EXTRA_WORK=str(extra))),
    }


def one_gate(config: ABConfig, rule: Rule, arm: str, extra: float) -> dict:
    """One real gate of this arm: its verdict, and per case what it decided (and, timing, the
    ratios of its first pairs; counting, the two counts)."""
    t0 = time.perf_counter()
    if config.measure == "instructions":
        runs = measure_counted(config, sides(extra), cases(), log=lambda _: None)
    else:
        runs = measure_interleaved(config, rule, sides(extra), cases(), log=lambda _: None)
    report = compare(runs["base"], runs["head"], rule=rule)
    measured = {side: {m.case.label(): m for m in runs[side].measurements} for side in ("base", "head")}
    per_case = {}
    for c in report.comparisons:
        label, first = c.case.label(), config.min_pairs
        b, h = measured["base"][label], measured["head"][label]
        per_case[label] = {"ratio": c.ratio, "interval": list(c.judgement.ci95), "verdict": c.judgement.verdict.value,
                           "regression": bool(c.regression)}  # fmt: skip
        if config.measure == "instructions":
            per_case[label]["instructions"] = [b.counts.instructions, h.counts.instructions]
            per_case[label]["first_pair_ratios"] = [h.counts.instructions / b.counts.instructions]
            per_case[label].update(pairs=1, stopped="counted once a side")
            continue
        pairs = list(zip((b.round_medians or ())[:first], (h.round_medians or ())[:first], strict=True))
        per_case[label].update(pairs=h.notes.get("ab_pairs"), stopped=h.notes.get("ab_stopped"),
                               first_pair_ratios=[hm / bm for bm, hm in pairs])  # fmt: skip
    return {"arm": arm, "fired": bool(report.failed), "seconds": time.perf_counter() - t0,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases": per_case}  # fmt: skip


def true_ratio(ratios: list[float]) -> dict:
    """The median of the pairs' ratios and its distribution-free 95% interval."""
    x = np.sort(np.asarray(ratios))
    lo, hi = median_ci_ranks(len(x))
    return {"median": float(np.median(x)), "ci95": [float(x[lo - 1]), float(x[hi - 1])], "pairs": len(x)}


def summary(gates: list[dict], arms: dict[str, float]) -> dict:
    out = {}
    for arm in arms:
        mine = [g for g in gates if g["arm"] == arm]
        if not mine:
            continue
        labels = list(mine[0]["cases"])
        out[arm] = {
            "gates": len(mine),
            "fired": sum(g["fired"] for g in mine),
            "seconds_per_gate": float(np.mean([g["seconds"] for g in mine])),
            "max_seconds": max(g["seconds"] for g in mine),
            "cases": {label: {
                "fired": sum(g["cases"][label]["regression"] for g in mine),
                "undecided": sum(g["cases"][label]["stopped"].startswith("undecided") for g in mine),
                "pairs_median": float(np.median([g["cases"][label]["pairs"] for g in mine])),
                "true_ratio": true_ratio([r for g in mine for r in g["cases"][label]["first_pair_ratios"]]),
            } for label in labels},
        }  # fmt: skip
    return out


def rate(k: int, n: int) -> str:
    """k of n with its exact (Clopper-Pearson) 95% interval."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(method="exact")
    return f"{k}/{n} ({ci.low:.0%}-{ci.high:.0%})"


def table(result: dict) -> str:
    """The experiment as Markdown (docs/gating.md quotes it): per arm, then per case."""
    counting = result.get("measure") == "instructions"
    lines = ["| arm | gates fired (95% CI) | seconds a gate: mean, max |", "|---|---|---|"]
    for arm, s in result["summary"].items():
        lines.append(
            f"| {arm} | {rate(s['fired'], s['gates'])} | {s['seconds_per_gate']:.0f}, {s['max_seconds']:.0f} |"
        )
    what = (
        "count ratio, median over the gates [95%]"
        if counting
        else "true time ratio, median of the first 8 pairs of every gate [95%]"
    )
    lines += [
        "",
        f"| arm | case | {what} | fired | undecided | pairs a case (median) |",
        "|---|---|---|---|---|---|",
    ]
    for arm, s in result["summary"].items():
        for label, c in s["cases"].items():
            name = f"{label.split(' cpu')[0].replace('elbo ', '')} B={label.split('B=')[1].split()[0]}"
            t = c["true_ratio"]
            lines.append(f"| {arm} | {name} | {t['median']:.4f} [{t['ci95'][0]:.4f}, {t['ci95'][1]:.4f}] ({t['pairs']}) "
                         f"| {c['fired']}/{s['gates']} | {c['undecided']} | {c['pairs_median']:g} |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--measure",
        choices=("time", "instructions"),
        default="time",
        help="time (arms A/A, +10%%, +5%%) or instructions (A/A, +2%%, counted under callgrind)",
    )
    parser.add_argument(
        "--gates", type=int, help="gates for A/A and +10%% or +2%% (default 40 timing, 10 counting)"
    )
    parser.add_argument("--slow-gates", type=int, default=20, help="gates for +5%% (default 20)")
    parser.add_argument(
        "--out", type=Path, help="default results/scratch/gate-experiment[-instructions].json"
    )
    parser.add_argument("--resume", action="store_true", help="add gates to --out (same code only)")
    parser.add_argument("--batches", default="128,1024", help="the elbo batch sizes gated (default 128,1024)")
    parser.add_argument(
        "--table", type=Path, metavar="FILE", help="print FILE's results as Markdown, run nothing"
    )
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    BATCHES[:] = [int(b) for b in args.batches.split(",")]
    counting = args.measure == "instructions"
    arms = COUNT_ARMS if counting else TIME_ARMS
    gates = args.gates or (10 if counting else 40)
    wanted = {"A/A": gates, "+10%": gates, "+2%": gates, "+5%": args.slow_gates}
    out = (
        args.out
        or ROOT / "results" / "scratch" / f"gate-experiment{'-instructions' if counting else ''}.json"
    )
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ["ELBOLAB_BACKENDS"] = BACKENDS
    config = ABConfig(base_ref="-", measure=args.measure)
    rule = INSTRUCTIONS_RULE if counting else Rule(DEFAULT_AB_THRESHOLD)
    fingerprint = code_fingerprint()
    result = {"measure": args.measure, "rule": rule.to_json(), "code": fingerprint, "machine": machine_info(),
              "gates": [], "batches": BATCHES, "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
              "config": {k: getattr(config, k) for k in ("block", "pair_samples", "min_pairs", "max_pairs", "case_budget_s")}}  # fmt: skip
    if args.resume and out.exists():
        old = json.loads(out.read_text())
        if (old.get("code"), old.get("measure", "time"), old.get("batches", [128, 1024])) != (
            fingerprint,
            args.measure,
            BATCHES,
        ):
            print(f"{out} was measured with other gate code or mode ({old.get('code')}, now {fingerprint})",
                  file=sys.stderr)  # fmt: skip
            return 2
        result["gates"] = old["gates"]
    print(f"rule: {rule.describe()}; {len(cases())} cases a gate; arms take turns", flush=True)
    while True:
        done = {arm: sum(g["arm"] == arm for g in result["gates"]) for arm in arms}
        todo = [arm for arm in arms if done[arm] < wanted[arm]]
        if not todo:
            break
        arm = min(todo, key=lambda a: done[a] / wanted[a])  # the arm furthest behind goes next
        gate = one_gate(config, rule, arm, arms[arm])
        result["gates"].append(gate)
        result["summary"] = summary(result["gates"], arms)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, json.dumps(result, indent=1))
        ratios = ", ".join(
            f"{c['ratio']:.4f}{'!' if c['regression'] else ''}" for c in gate["cases"].values()
        )
        print(f"{arm} gate {done[arm] + 1}/{wanted[arm]}: {'FIRED' if gate['fired'] else 'pass'} "
              f"({ratios}; {gate['seconds']:.0f} s)", flush=True)  # fmt: skip
    print("\n" + table(result))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
