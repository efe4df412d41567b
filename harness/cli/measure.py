"""`elbolab list`, `run`, `train` and `show`: the measuring side of the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from harness.backend import discover_with_errors
from harness.case import Case
from harness.cli.console import stdout_console
from harness.cli.render import print_run_table
from harness.errors import UsageError
from harness.measurement import Measurement
from harness.results import TrainingCurve, load, replace_measurements
from harness.runner import Plan, now, run_plan


def names(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_run_filters(p: argparse.ArgumentParser) -> None:
    """The case filters shared by `run` and `gate --base`."""
    p.add_argument("--backend", type=names, help="comma-separated, e.g. numpy,rust (default: all)")
    p.add_argument("--workload", type=names, help="elbo, elbo_grad, iwae, vae_step (default: all)")
    p.add_argument("--batch", type=ints, help="batch sizes, e.g. 1,128,8192 (default: per workload)")
    p.add_argument("--dtype", type=names, help="float64,float32 (default: both)")
    p.add_argument("--threads", type=ints, help="thread counts (default: 1 and all cores)")
    p.add_argument("--device", type=names, help="cpu,cuda (default: every device of each backend)")
    p.add_argument("--variant", type=names, help="eps=given,eps=sampled (default: all of each workload)")
    p.add_argument("--quick", action="store_true", help="small matrix and short samples (CI)")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    sizes = p.add_argument_group("sizes (the tutorial's MNIST VAE by default)")
    for flag, default, what in SIZE_FLAGS:
        sizes.add_argument(f"--{flag}", type=int, default=default, metavar="N", help=f"{what} (default {default})")


# the size flags: (flag, default, what it is); Plan and Case name them with underscores
SIZE_FLAGS = (
    ("input-dim", 784, "D, the input dimension"),
    ("latent-dim", 20, "L, the latent dimension"),
    ("hidden-dim", 400, "H, vae_step's hidden width"),
    ("importance-samples", 8, "K, iwae's importance samples"),
)


def plan_from_args(args: argparse.Namespace) -> Plan:
    return Plan(
        backends=args.backend, workloads=args.workload, batches=args.batch, dtypes=args.dtype,
        threads=args.threads, devices=args.device, variants=args.variant, quick=args.quick, seed=args.seed,
        input_dim=args.input_dim, latent_dim=args.latent_dim, hidden_dim=args.hidden_dim,
        importance_samples=args.importance_samples,
    )  # fmt: skip


def add_commands(sub) -> None:
    p = sub.add_parser("list", help="backends, devices and whether they can run here")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="measure a matrix of cases into a results file")
    add_run_filters(p)
    p.add_argument("--out", type=Path, help="results file (default: results/scratch/run-<time>.json)")
    p.add_argument("--resume", action="store_true", help="finish the cases missing from --out")
    p.add_argument("--timeout", type=float, help="seconds per case before its worker is killed")
    p.add_argument("--no-limits", action="store_true", help="skip measuring bandwidth and peak flops")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train the digits VAE on every backend; record the loss curves")
    p.add_argument("--backend", type=names, help="comma-separated (default: all but torch-compile)")
    p.add_argument("--dtype", type=names, default=("float64", "float32"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument(
        "--out", type=Path, required=True, help="results file (the curves are added to it if it exists)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("show", help="print the summary table of a results file")
    p.add_argument("results", type=Path)
    for name, kind in SHOW_FILTERS.items():
        p.add_argument(f"--{name}", type=kind, help=f"only these {name} values (comma-separated)")
    p.add_argument("--status", type=names, help="only these statuses (comma-separated)")
    p.set_defaults(func=cmd_show)


def cmd_list(args: argparse.Namespace) -> int:
    from rich.markup import escape

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


def cmd_run(args: argparse.Namespace) -> int:
    plan = plan_from_args(args)
    out = args.out or Path("results/scratch") / f"run-{now().replace(':', '')}.json"
    if args.out is None:
        out.parent.mkdir(parents=True, exist_ok=True)
    if args.resume and not out.exists():
        raise UsageError(f"--resume: {out} does not exist")
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
    ) as progress:  # fmt: skip
        task = progress.add_task("measuring", total=None)

        def on_plan(n: int) -> None:
            progress.update(task, total=n, description="limits")

        def on_result(m: Measurement) -> None:
            progress.update(task, advance=1, description=f"{m.case.label()}: {m.status}")

        run = run_plan(
            plan, out, resume=args.resume, case_timeout=args.timeout,
            measure_limits=not args.no_limits, on_result=on_result, on_plan=on_plan,
        )  # fmt: skip
    print_run_table(run.run, stdout_console())
    Console(stderr=True).print(f"results: {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from harness.runner import open_run, run_training
    from harness.timer import TimerConfig
    from harness.train import TrainConfig

    if args.steps < 1:
        raise UsageError(f"--steps must be a positive integer, got {args.steps}")
    # by default every backend whose default matrix has vae_step (torch.compile would recompile at
    # each of the hundreds of steps, since every step is a fresh prepare); any can be named
    backends = args.backend or tuple(
        name
        for name, b in discover_with_errors()[0].items()
        if "vae_step" in (b.default_scope or {}).get("workloads", b.workloads)
    )
    # an existing file gets the curves added; the run's own finish time is kept
    append = args.out.exists()
    run = open_run(args.out, Plan(), TimerConfig(), resume=append)
    finished = run.run.finished
    console = Console(stderr=True)

    def on_result(c: TrainingCurve) -> None:
        head = f"train {c.backend} {c.device} {c.dtype}: "
        if not c.losses:
            console.print(head + f"{c.status}, {c.reason}", highlight=False, markup=False)
            return
        learned = "learned" if c.learned else "did NOT learn"
        steps = "every step within its bound" if c.status == "ok" else f"INCORRECT at {c.reason}"
        console.print(
            head + f"final loss {c.losses[-1]:.4f} ({learned}: bias-only {c.bias_only_loss:.2f}); {steps}",
            highlight=False, markup=False,
        )  # fmt: skip

    run_training(run, backends, args.dtype, TrainConfig(steps=args.steps), on_result=on_result)
    run.finish(finished or now())
    console.print(f"results: {args.out}")
    return 0


SHOW_FILTERS = {"backend": names, "workload": names, "batch": ints, "dtype": names,
                "threads": ints, "device": names, "variant": names}  # fmt: skip


def _wanted(args: argparse.Namespace, m: Measurement) -> bool:
    if args.status and m.status not in args.status:
        return False
    case: Case = m.case
    return all(getattr(args, f) is None or getattr(case, f) in getattr(args, f) for f in SHOW_FILTERS)


def cmd_show(args: argparse.Namespace) -> int:
    run = load(args.results)
    print_run_table(
        replace_measurements(run, (m for m in run.measurements if _wanted(args, m))), stdout_console()
    )
    return 0
