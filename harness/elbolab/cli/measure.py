"""`elbolab list`, `run`, `train` and `show`: the measuring side of the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pydantic_core
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from elbolab.cli.args import ints, names, path, positive_int, seconds, seed, steps, thread_counts
from elbolab.cli.console import stdout_console
from elbolab.cli.progress import RunProgress
from elbolab.cli.render import median_ci_ns, print_run_summary, print_run_table, print_wrapped
from elbolab.measure.plan import Plan, plan_cases
from elbolab.measure.runner import run_plan
from elbolab.model.backend import discover, discover_with_errors, is_control
from elbolab.model.case import DTYPES, Case
from elbolab.model.config import Config, load_config
from elbolab.model.errors import UsageError
from elbolab.model.measurement import Measurement
from elbolab.model.selection import parse_optional
from elbolab.store.results import TrainingCurve, load, now, replace_measurements


def add_run_filters(p: argparse.ArgumentParser) -> None:
    """The case filters shared by `run` and `gate --base`."""
    p.add_argument("--backend", type=names, help="comma-separated, e.g. numpy,rust (default: all)")
    p.add_argument("--workload", type=names, help="elbo, elbo_grad, iwae, vae_step (default: all)")
    p.add_argument("--batch", type=ints, help="batch sizes, e.g. 1,128,8192 (default: per workload)")
    p.add_argument("--dtype", type=names, help="float64,float32 (default: both)")
    p.add_argument("--threads", type=thread_counts, help="thread counts (default: 1 and all cores)")
    p.add_argument("--device", type=names, help="cpu,cuda (default: every device of each backend)")
    p.add_argument(
        "--variant",
        type=names,
        help="eps=given,eps=sampled (default: eps=given, and eps=sampled where the claims check reads it)",
    )
    p.add_argument("--quick", action="store_true", help="small matrix and short samples (CI)")
    p.add_argument("--full", action="store_true", help="every variant at every size (default: see --variant)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the inputs (default 0)")
    for flag, default, what in SIZE_FLAGS:
        p.add_argument(
            f"--{flag}", type=positive_int, default=default, metavar="N", help=f"{what} (default {default})"
        )


def add_keyword(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", metavar="EXPR",
                   help="only the cases this pytest-style expression selects, e.g. 'rust and elbo and not sampled' "
                        "or 'B=128 and (numpy or numba)' (words match parts of the case's name; field=value exactly)")  # fmt: skip


# the run filters as [tool.elbolab.run] names them, by the attribute argparse gives each flag
MATRIX_KEYS = {"backend": "run.backend", "workload": "run.workload", "batch": "run.batch", "dtype": "run.dtype",
               "threads": "run.threads", "device": "run.device", "variant": "run.variant"}  # fmt: skip


def matrix_value(args: argparse.Namespace, config: Config, name: str):
    """A run filter in force: the flag, else [tool.elbolab.run], else None (the default matrix)."""
    return config.pick(getattr(args, name, None), MATRIX_KEYS[name])


# the size flags: (flag, default, what it is); Plan and Case name them with underscores
SIZE_FLAGS = (
    ("input-dim", 784, "D, the input dimension"),
    ("latent-dim", 20, "L, the latent dimension"),
    ("hidden-dim", 400, "H, vae_step's hidden width"),
    ("importance-samples", 8, "K, iwae's importance samples"),
)


def plan_from_args(args: argparse.Namespace, config: Config | None = None) -> Plan:
    config = config or Config()
    selection = parse_optional(config.pick(args.k, "run.k"))  # checked here: one line, before any work
    m = {name: matrix_value(args, config, name) for name in MATRIX_KEYS}
    return Plan(
        backends=m["backend"], workloads=m["workload"], batches=m["batch"], dtypes=m["dtype"],
        threads=m["threads"], devices=m["device"], variants=m["variant"], quick=args.quick,
        full=getattr(args, "full", False), seed=args.seed,
        input_dim=args.input_dim, latent_dim=args.latent_dim, hidden_dim=args.hidden_dim,
        importance_samples=args.importance_samples, measure=getattr(args, "measure", "time"),
        control=not getattr(args, "no_control", False), keyword=selection.text if selection else None,
    )  # fmt: skip


def add_commands(sub) -> None:
    p = sub.add_parser("list", help="backends, devices and whether they can run here")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "doctor", help="what about this machine could distort a measurement, and what it costs"
    )
    p.add_argument("--json", action="store_true", help="print the facts and warnings as JSON")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("run", help="measure a matrix of cases into a results file")
    add_run_filters(p)
    add_keyword(p)
    p.add_argument("--out", type=path, help="results file (default: results/scratch/run-<time>.json)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--resume", action="store_true", help="finish the cases missing from --out")
    existing.add_argument("--overwrite", action="store_true", help="replace the results file --out")
    p.add_argument("--timeout", type=seconds, help="seconds per case before its worker is killed")
    p.add_argument("--no-limits", action="store_true", help="skip measuring bandwidth and peak flops")
    p.add_argument("--no-control", action="store_true",
                   help="do not measure numpy a second time as the run's null control (its noise floor)")  # fmt: skip
    p.add_argument(
        "--measure",
        choices=("time", "instructions"),
        default="time",
        help="time the cases (default), or count their instructions under Valgrind (callgrind)",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="--measure instructions: cases counted side by side (counts do not depend on load)",
    )
    p.add_argument(
        "--train", type=steps, metavar="STEPS",
        help="then train the digits VAE for STEPS steps (as `elbolab train`) on every backend the run "
        "measured vae_step on, in both dtypes, in the run's workers (their JIT compiled already)",
    )  # fmt: skip
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train the digits VAE on every backend; record the loss curves")
    p.add_argument("--backend", type=names, help="comma-separated (default: all but torch-compile)")
    p.add_argument(
        "--dtype", type=names, default=("float64", "float32"), help="float64,float32 (default: both)"
    )
    p.add_argument("--steps", type=steps, default=300, help="SGD steps (default 300)")
    p.add_argument(
        "--out", type=path, required=True, help="results file (the curves are added to it if it exists)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("show", help="print the summary table of a results file")
    p.add_argument("results", type=path)
    for name, kind in SHOW_FILTERS.items():
        p.add_argument(f"--{name}", type=kind, help=f"only these {name} values (comma-separated)")
    p.add_argument("--status", type=names, help="only these statuses (comma-separated)")
    add_keyword(p)
    p.add_argument("--json", action="store_true", help="print the cases as JSON (schema elbolab.show/1)")
    p.set_defaults(func=cmd_show)


def cmd_list(args: argparse.Namespace) -> int:

    table = Table(title="elbolab backends")
    for col in ("backend", "devices", "workloads", "status"):
        table.add_column(col)
    backends, errors = discover_with_errors()
    for name, backend in backends.items():
        reason = backend.unavailable_reason()
        if reason:
            devices, status = ", ".join(backend.devices), f"[red]unavailable[/]: {escape(reason)}"
        else:
            parts = []
            for device in backend.devices:
                why = backend.device_unavailable_reason(device)
                parts.append(device if not why else f"{device} (no: {why})")
            devices, status = ", ".join(parts), "[green]available[/]"
        table.add_row(escape(name), escape(devices), escape(", ".join(backend.workloads)), status)
    console = stdout_console()
    console.print(table)
    for error in errors:
        console.print(f"[red]not loaded[/]: {escape(error)}")
    return 0


def _warn_not_loaded() -> None:
    """A plugin left out (it failed to import, or its name is invalid or taken) is said before the
    run measures without it (and recorded in the results file: software.backends_not_loaded)."""
    for error in discover_with_errors()[1]:
        print(f"elbolab: warning: {error}", file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    _warn_not_loaded()
    config = load_config()
    plan = plan_from_args(args, config)
    out = args.out or Path("results/scratch") / f"run-{now().replace(':', '')}.json"
    mode = "resume" if args.resume else "overwrite" if args.overwrite else "new"
    # the plan's cases weigh the time left by what each will cost (discover() is cached: run_plan's
    # own call costs nothing more)
    planned = plan_cases(plan, discover()) if plan.measure == "time" else []
    if mode == "resume" and Path(out).exists():  # the cases still to measure, as run_plan will
        done = {m.case.key() for m in load(out).measurements}
        planned = [c for c in planned if c.key() not in done]
    train = None
    if args.train:
        if plan.measure != "time":
            raise UsageError("--train goes with timed runs, not --measure instructions")
        from elbolab.measure.runner import Training
        from elbolab.measure.training import TrainConfig

        cases = plan_cases(plan, discover())
        trained = tuple(
            dict.fromkeys(c.backend for c in cases if c.workload == "vae_step" and not is_control(c.backend))
        )
        train = Training(trained, tuple(plan.dtypes or DTYPES), TrainConfig(steps=args.train))
    with RunProgress(planned=planned, control=plan.control) as progress:
        run = run_plan(
            plan, out, mode=mode, case_timeout=config.pick(args.timeout, "run.timeout"), measure_limits=not args.no_limits,
            on_result=progress.measured, on_plan=progress.planned, jobs=args.jobs, train=train,
        )  # fmt: skip
    if train is not None:
        print_curve = training_printer(Console(stderr=True))
        for curve in run.training:
            print_curve(curve)
    print_run_summary(run, stdout_console())
    print_wrapped(stdout_console(), f"results: {out} (every case: elbolab show {out})")
    return 0


def training_printer(console: Console) -> Callable[[TrainingCurve], None]:
    """One line per training curve: its final loss, whether it learned, whether every step held."""
    from elbolab.measure.training import FINAL_STEPS, final_loss

    def on_result(c: TrainingCurve) -> None:
        head = f"train {c.backend} {c.device} {c.dtype}: "
        if not c.losses:
            print_wrapped(console, head + f"{c.status}, {c.reason}")
            return
        learned = "learned" if c.learned else "did NOT learn"
        steps = "every step within its bound" if c.status == "ok" else f"INCORRECT at {c.reason}"
        print_wrapped(console, head + f"final loss {final_loss(c.losses):.4f}, the mean of the last "
                      f"{min(FINAL_STEPS, len(c.losses))} steps ({learned}: bias-only {c.bias_only_loss:.2f}); {steps}")  # fmt: skip

    return on_result


def cmd_train(args: argparse.Namespace) -> int:
    from elbolab.measure.plan import check_names
    from elbolab.measure.runner import open_run, run_training
    from elbolab.measure.timer import TimerConfig
    from elbolab.measure.training import TrainConfig

    # by default every backend whose default matrix has vae_step (torch.compile would recompile at
    # each of the hundreds of steps, since every step is a fresh prepare); any can be named
    backends = args.backend or tuple(
        name
        for name, b in discover_with_errors()[0].items()
        if "vae_step" in (b.default_scope or {}).get("workloads", b.workloads)
    )
    check_names(backends, discover_with_errors()[0], "backend")
    check_names(args.dtype, DTYPES, "dtype")
    # an existing file (from this machine) gets the curves added; the run's own finish time is kept
    run = open_run(args.out, Plan(), TimerConfig(), mode="append")
    finished = run.run.finished
    _warn_not_loaded()
    with run:
        run_training(run, backends, args.dtype, TrainConfig(steps=args.steps),
                     on_result=training_printer(Console(stderr=True)))  # fmt: skip
        run.finish(finished or now())
    Console(stderr=True).print(f"results: {args.out}")
    return 0


SHOW_FILTERS = {"backend": names, "workload": names, "batch": ints, "dtype": names,
                "threads": thread_counts, "device": names, "variant": names}  # fmt: skip


def _wanted(args: argparse.Namespace, m: Measurement) -> bool:
    if args.status and m.status not in args.status:
        return False
    case: Case = m.case
    return all(getattr(args, f) is None or getattr(case, f) in getattr(args, f) for f in SHOW_FILTERS)


def cmd_show(args: argparse.Namespace) -> int:
    selection = parse_optional(args.k)
    run = load(args.results)
    shown = replace_measurements(run, (m for m in run.measurements
                                       if _wanted(args, m) and (selection is None or selection.matches(m.case))))  # fmt: skip
    if args.json:
        # pydantic_core's encoder: json.dumps took 1.5 s for 20,000 cases; strict, since every
        # number a loaded run holds is finite (elbolab.store.results.out_of_bounds) and a figure
        # derived from them that is not would be written as null, never as NaN
        sys.stdout.write(pydantic_core.to_json(show_json(shown), indent=1).decode() + "\n")
    else:
        print_run_table(shown, stdout_console())
    return 0


SHOW_SCHEMA = "elbolab.show/1"


def show_json(run) -> dict:
    """The run's cases with the figures `show` prints, as numbers (docs/json.md). The median and
    its interval only, not each case's whole summary: 20,000 cases within the 2 s `show` has."""
    cases = []
    for m in run.measurements:
        median, lo, hi = median_ci_ns(m)
        cases.append({
            "case": m.case.to_json(),
            "status": m.status,
            "reason": m.reason,
            "median_ns": median,
            "ci95_ns": [lo, hi] if median is not None else None,
            "samples": len(m.samples_ns),
            "first_call_ns": m.first_call_ns,
            "bytes_per_s": m.cost.bytes / median * 1e9 if median and m.cost else None,
            "less_accurate": bool(m.check and m.check.less_accurate),
            "digits": m.check.digits if m.check else None,
        })  # fmt: skip
    return {"schema": SHOW_SCHEMA, "run": run.header_json(), "cases": cases}


def cmd_doctor(args: argparse.Namespace) -> int:
    from elbolab.measure.health import coretype_cost, survey

    health = survey()
    cost = coretype_cost()
    if args.json:
        print(json.dumps(dict(health.to_json(), openblas_coretype_cost=cost), indent=1, default=str))
        return 0
    console = stdout_console()
    for key, value in health.facts.items():
        console.print(f"{key:16s} {escape(json.dumps(value, default=str))}", highlight=False)
    if cost:
        console.print(f"[yellow]OPENBLAS_CORETYPE costs {cost['cost']:.0%}[/] of the float64 matrix-product rate here "
                      f"({cost['gflops_with']:.1f} GFLOP/s with it, {cost['gflops_without']:.1f} without, one thread)")  # fmt: skip
    for warning in health.warnings:
        console.print(f"[yellow]warning[/]: {escape(warning)}", highlight=False)
    if not health.warnings:
        console.print("[green]nothing here distorts measurements that elbolab can see[/]")
    return 0
