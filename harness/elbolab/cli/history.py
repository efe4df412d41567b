"""`elbolab history`: every run remembered in a results store, trends across commits, change points,
backfill of past commits and bisecting a regression.

    elbolab history ingest RUN.json...          [--machine NAME] [--replace]
    elbolab history runs                        [--machine M]
    elbolab history show --case CASE            [--machine M] [--ref REF]
    elbolab history changes                     [--case CASE] [--machine M] [--all] [--fail-on-regression]
    elbolab history run A..B  [run filters]     [--steps N] [--runs N] [--force]  (backfill)
    elbolab history find GOOD BAD --case CASE   [--quick] [--reuse]          (bisect)
    elbolab history page -o reports/trends.html [--machine M]

Every command takes --store URL (default $ELBOLAB_STORE, else sqlite:///results/history.sqlite)
and --repo PATH (the git checkout that orders commits; default: the one around the working
directory). The library is elbolab.store.database and elbolab.analyse.changes; this file only parses and prints.
Runnable on its own as `python -m elbolab.cli.history ...`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from elbolab.analyse.verdict import DEFAULT_NOISE_BAND, DEFAULT_THRESHOLD, Rule
from elbolab.cli.args import fraction, path, positive_int, seconds
from elbolab.cli.console import stdout_console
from elbolab.cli.measure import SIZE_FLAGS, add_keyword, add_run_filters
from elbolab.model.config import load_config
from elbolab.model.errors import UsageError
from elbolab.model.selection import parse_optional

CASE_HELP = "a case as elbolab prints it, e.g. 'elbo numpy cpu float64 B=128 t=1' (or part of it)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="URL",
                   help="sqlite:///PATH or postgresql://USER@HOST/DB (default $ELBOLAB_STORE, then "
                        "[tool.elbolab] store, else sqlite:///results/history.sqlite)")  # fmt: skip
    p.add_argument("--repo", type=path, metavar="PATH",
                   help="git checkout whose history orders the commits (default: the one here)")  # fmt: skip


def _rule_options(p: argparse.ArgumentParser) -> None:
    # None: unset, they fall back to [tool.elbolab] threshold and noise-band, then to the built-in
    p.add_argument("--threshold", type=fraction, default=None,
                   help="slowdown that counts as a regression (default 0.10)")  # fmt: skip
    p.add_argument("--noise-band", type=fraction, default=None,
                   help="a confident change smaller than this is noise (default 0.03)")  # fmt: skip


def _read_options(p: argparse.ArgumentParser, case_required: bool = False) -> None:
    p.add_argument("--machine", metavar="M", help="only this machine (an id prefix or part of its name)")
    p.add_argument(
        "--ref", default="HEAD", help="order commits by the history of this revision (default HEAD)"
    )
    p.add_argument("--include-dirty", action="store_true", help="also use runs of uncommitted trees")
    p.add_argument("--case", required=case_required, metavar="CASE", help=CASE_HELP)
    add_keyword(p)


def _measure_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--machine", metavar="NAME",
                   help="name this machine: its runs form their own series (default: its hardware; "
                        "env ELBOLAB_MACHINE)")  # fmt: skip
    p.add_argument("--timeout", type=seconds, help="seconds per case (passed to each run)")


def add_commands(sub) -> None:
    h = sub.add_parser("history", help="results store: trends across commits, change points, backfill, bisect",
                       description="Every run remembered in a database (SQLite file or PostgreSQL), "
                                   "series per case and machine in git-ancestry order, change points "
                                   "judged by the shared verdict, past commits measured and bisected.")  # fmt: skip
    hs = h.add_subparsers(dest="history_command", required=True, parser_class=type(h))

    p = hs.add_parser("ingest", help="store results files (a run already stored is left as it is)")
    p.add_argument("files", nargs="+", type=path, metavar="RUN.json")
    p.add_argument("--format", choices=("elbolab", "pytest-benchmark"), default="elbolab",
                   help="the files' format: elbolab results files (default), or pytest-benchmark JSON "
                        "(--benchmark-json with --benchmark-save-data) of elbolab's cases")  # fmt: skip
    _common(p)
    p.add_argument("--machine", metavar="NAME",
                   help="name the machine these runs come from (default: its hardware; env ELBOLAB_MACHINE)")  # fmt: skip
    p.add_argument("--replace", action="store_true", help="replace a stored run whose content differs")
    p.set_defaults(func=cmd_ingest)

    p = hs.add_parser("runs", help="the stored runs, per machine")
    _common(p)
    p.add_argument("--machine", metavar="M", help="only this machine (an id prefix or part of its name)")
    p.add_argument(
        "--ref", default="HEAD", help="order commits by the history of this revision (default HEAD)"
    )
    p.set_defaults(func=cmd_runs)

    p = hs.add_parser("show", help="one case's series over commits, per machine")
    _common(p)
    _read_options(p, case_required=True)
    _rule_options(p)
    p.set_defaults(func=cmd_show)

    p = hs.add_parser("changes", help="change points of every series, judged by the shared verdict")
    _common(p)
    _read_options(p)
    _rule_options(p)
    p.add_argument("--all", action="store_true", help="also list proposed steps the verdict did not confirm")
    p.add_argument("--json", action="store_true", help="print the changes as JSON (schema elbolab.changes/1)")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 when any change is a regression")
    p.set_defaults(func=cmd_changes)

    p = hs.add_parser(
        "run", help="backfill: measure past commits (A..B) in temporary worktrees and store them"
    )
    p.add_argument("range", metavar="A..B", help="git range: the commits after A up to B (A^..B includes A)")
    _common(p)
    _measure_options(p)

    add_run_filters(p)
    p.add_argument(
        "--steps", type=positive_int, help="measure at most N commits, evenly spread (the last included)"
    )
    p.add_argument(
        "--force", action="store_true", help="measure commits already measured (or skipped) before"
    )
    p.add_argument(
        "--runs",
        type=positive_int,
        default=1,
        help="separate runs of each commit (default 1); a change is judged on the runs, so more runs "
        "find smaller changes: on a shared 2-core VM, 2 runs a commit find a 10%% step",
    )
    p.set_defaults(func=cmd_run)

    p = hs.add_parser(
        "find", help="bisect: the first commit in GOOD..BAD where CASE regressed (by measurement)"
    )
    p.add_argument("good", metavar="GOOD")
    p.add_argument("bad", metavar="BAD")
    p.add_argument("--case", required=True, metavar="CASE",
                   help="the case to bisect: workload and backend at least, e.g. 'elbo numpy B=128' "
                        "(unsaid: cpu, float64, B=128, t=1, eps=given)")  # fmt: skip
    _common(p)
    _measure_options(p)
    _rule_options(p)
    p.add_argument("--quick", action="store_true", help="short samples (as `elbolab run --quick`)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="use stored runs of this machine where there are some (judged as separate runs, not paired "
        "with GOOD)",
    )
    p.add_argument("--attempts", type=positive_int, default=2,
                   help="measurements of a commit before 'too noisy to tell' skips it (default 2)")  # fmt: skip
    p.set_defaults(func=cmd_find)

    p = hs.add_parser("page", help="write the trends page: a self-contained HTML history view")
    p.add_argument("-o", "--out", type=path, default=Path("reports/trends.html"), metavar="reports/NAME.html")
    _common(p)
    _read_options(p)
    _rule_options(p)
    p.add_argument("--title", default="elbolab trends", help="page title")
    p.set_defaults(func=cmd_page)


# ---------------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"history: {msg}", file=sys.stderr, flush=True)


def _open(args, create: bool = False):
    """The store; only the commands that store runs (ingest, backfill, bisect) may make one: a read
    of a mistyped path is one line and exit 2, never a new empty store that reports nothing."""
    from elbolab.store.database import Store

    return Store.open(load_config().pick(args.store, "store"), create=create)


def _repo(args, required: str | None = None):
    from elbolab.store.commits import find_repo, need_repo

    repo = find_repo(args.repo)
    return need_repo(repo, required) if required else repo


def _rule(args) -> Rule:
    config = load_config()
    return Rule.of(config.pick(args.threshold, "threshold", DEFAULT_THRESHOLD),
                   config.pick(args.noise_band, "noise-band", DEFAULT_NOISE_BAND))  # fmt: skip


def _console():

    return stdout_console()


def _short(sha: str | None) -> str:
    return (sha or "?")[:10]


def _x(j) -> str:
    lo, hi = j.ci95
    return f"{j.ratio:.3f}x [{lo:.3f}, {'inf' if math.isinf(hi) else f'{hi:.3f}'}]"


def _load(args, store, with_case: bool = True):
    from elbolab.analyse.changes import load_history
    from elbolab.model.query import CaseQuery

    query = CaseQuery.parse(args.case) if with_case and getattr(args, "case", None) else None
    selection = parse_optional(getattr(args, "k", None))
    history = load_history(store, _repo(args), args.ref, args.machine, query, args.include_dirty, _rule(args))
    if selection is None:
        return history
    return replace(history, series=selection.select(history.series, lambda s: s.case))


def _notes(history) -> list[str]:
    notes = []
    if history.dirty_left_out:
        notes.append(f"{history.dirty_left_out} run(s) of uncommitted trees left out (--include-dirty)")
    if history.unknown_commit:
        notes.append(f"{history.unknown_commit} run(s) without a commit left out")
    if history.order.left_out:
        why: dict[str, list[str]] = {}
        for sha, reason in history.order.left_out.items():
            why.setdefault(reason, []).append(_short(sha))
        for reason, shas in why.items():
            notes.append(
                f"{len(shas)} commit(s) {reason} left out: {', '.join(shas[:5])}{' ...' if len(shas) > 5 else ''}"
            )
    return notes


# --------------------------------------------------------------------------------- commands


def cmd_ingest(args) -> int:
    from elbolab.store.commits import commit_info
    from elbolab.store.results import load, writer_of

    repo = _repo(args)
    if args.format == "pytest-benchmark":
        from elbolab.store.formats import from_pytest_benchmark

        runs = [(f, from_pytest_benchmark(f)) for f in args.files]
    else:
        runs = [(f, load(f)) for f in args.files]  # every file is checked before anything is stored
    for f, run in runs if args.format != "pytest-benchmark" else ():  # an import is whole as it is
        if run.finished is None:
            # stored now, the run would be refused later, finished, as 'different content'
            pid = writer_of(f)
            why = (
                f"being written by pid {pid}"
                if pid
                else "interrupted; finish it with elbolab run --resume --out FILE"
            )
            raise UsageError(f"{f}: run {run.run_id} is unfinished ({why}); not stored, nothing was")
    with _open(args, create=True) as store:
        for f, run in runs:
            res = store.ingest(run, source=str(f), machine_name=args.machine, replace=args.replace,
                               commit_info=commit_info(repo, run.git.commit))  # fmt: skip
            print(f"{f}: {res.message} ({res.seconds:.2f} s)")
    return 0


def cmd_runs(args) -> int:

    from elbolab.analyse.changes import select_machines
    from elbolab.store.commits import order_commits

    console = _console()
    with _open(args) as store:
        machines = select_machines(store.machines(), args.machine)
        if not machines:
            print(f"store {store.url}: no runs yet (elbolab history ingest RUN.json)")
            return 0
        commits = store.commits()
        repo = _repo(args)
        for m in machines:
            stored = store.runs(m.machine_id)
            order = order_commits({r.commit for r in stored if r.commit}, repo, args.ref,
                                  {s: c.get("committed") for s, c in commits.items()})  # fmt: skip
            pos = order.position
            stored.sort(key=lambda r: (pos.get(r.commit, len(pos)), r.started, r.run_id))
            table = Table(title=escape(f"machine {m.label} ({m.machine_id}): {len(stored)} runs, "
                                       f"{m.commits} commits, {order.how}"), title_justify="left")  # fmt: skip
            for col in ("commit", "subject", "run", "started", "cases", "origin"):
                table.add_column(col, overflow="fold")
            for r in stored:
                subject = (commits.get(r.commit) or {}).get("subject") or ""
                where = _short(r.commit) if r.commit else "(no commit)"
                where += (" (dirty)" if r.dirty else "") + (" *" if r.commit and r.commit not in pos else "")
                table.add_row(escape(where), escape(subject[:50]), escape(r.run_id), escape(r.started[:19]),
                              str(r.n_measurements), escape(r.origin.split(" ", 1)[0]))  # fmt: skip
            console.print(table)
            if order.left_out:
                console.print(f"* not on the history of {escape(args.ref)}: placed last", highlight=False)
            skipped = store.skips(m.machine_id)
            if skipped:
                console.print(f"not measured ({len(skipped)}):", highlight=False)
                for s in skipped[-20:]:
                    console.print(
                        f"  {_short(s.commit)} {s.stage}: {escape(s.reason[:200])}", highlight=False
                    )
    return 0


def cmd_show(args) -> int:

    from elbolab.analyse.changes import change_points
    from elbolab.report.format import fmt_ns

    console = _console()
    rule = _rule(args)
    with _open(args) as store:
        history = _load(args, store)
        commits = store.commits(history.order.commits)
    if not history.series:
        raise UsageError(f"--case {args.case!r}: no stored measurement on the machines asked for")
    if len(history.series) > 20:
        raise UsageError(
            f"--case {args.case!r} names {len(history.series)} series; narrow it (machine, dtype, B=, t=)"
        )
    machines = {s.machine.machine_id for s in history.series}
    if len(machines) > 1:
        console.print(f"{len(machines)} machines: one table each (machines are never mixed in a series)",
                      highlight=False)  # fmt: skip
    for s in history.series:
        changes = {c.bad: c for c in change_points(s, rule, between=history.order.between)}
        table = Table(title=escape(f"{s.case.label()} on {s.machine.label} ({s.machine.machine_id[:8]}), "
                                   f"{len(s.points)} commits {history.order.how}"), title_justify="left")  # fmt: skip
        for col, justify in (("#", "right"), ("commit", "left"), ("subject", "left"), ("runs", "right"),
                             ("median", "right"), ("95% CI", "right"), ("vs prev", "right"), ("change", "left")):  # fmt: skip
            table.add_column(col, justify=justify, overflow="fold")
        prev = None
        for i, p in enumerate(s.points):
            subject = (commits.get(p.commit) or {}).get("subject") or ""
            c = changes.get(p.commit)
            mark = ""
            if c is not None:
                style = "bold red" if c.regression else ("yellow" if c.direction == "slower" else "green")
                mark = f"[{style}]{escape(c.direction)} {_x(c.judgement)}{' REGRESSION' if c.regression else ''}[/]"
                if c.between:
                    mark += escape(f" ({c.between} unmeasured commits before it: history find)")
            if p.ok:
                lo, hi = p.ci95
                vs = f"{p.median / prev:.3f}x" if prev else ""
                table.add_row(str(i + 1), _short(p.commit), escape(subject[:40]), str(len(p.run_medians)),
                              fmt_ns(p.median), f"{fmt_ns(lo)}–{fmt_ns(hi)}", vs, mark)  # fmt: skip
                prev = p.median
            else:
                table.add_row(str(i + 1), _short(p.commit), escape(subject[:40]), "0", "-", "-", "",
                              escape(f"{p.status}: {(p.reasons or ('',))[0][:80]}"))  # fmt: skip
        console.print(table)
    for note in _notes(history):
        console.print(f"note: {escape(note)}", highlight=False)
    console.print(escape(rule.describe()), style="dim", highlight=False)
    return 0


def cmd_changes(args) -> int:

    from elbolab.analyse.changes import all_changes
    from elbolab.report.format import fmt_ns

    rule = _rule(args)
    with _open(args) as store:
        history = _load(args, store)
    changes = all_changes(history.series, rule, history.order, keep_unconfirmed=args.all)
    found = [c for cs in changes.values() for c in cs]
    found.sort(
        key=lambda c: (c.machine.label, not c.regression, not c.confirmed, -abs(math.log(c.judgement.ratio)))
    )
    regressions = [c for c in found if c.regression]
    if args.json:
        print(json.dumps({"schema": "elbolab.changes/1", "order": history.order.how, "rule": rule.to_json(),
                          "series": len(history.series), "changes": [c.to_json() for c in found],
                          "notes": _notes(history)}, indent=1, allow_nan=False, default=str))  # fmt: skip
    else:
        console = _console()
        by_machine: dict[str, list] = {}
        for c in found:
            by_machine.setdefault(c.machine.machine_id, []).append(c)
        for m in history.machines:
            cs = by_machine.get(m.machine_id, [])
            n_series = sum(1 for s in history.series if s.machine.machine_id == m.machine_id)
            if not cs:
                console.print(
                    escape(f"{m.label} ({m.machine_id[:8]}): {n_series} series, no change"), highlight=False
                )
                continue
            table = Table(title=escape(f"{m.label} ({m.machine_id[:8]}): {n_series} series, "
                                       f"{sum(c.confirmed for c in cs)} changes"), title_justify="left")  # fmt: skip
            for col in ("case", "commits (good..bad)", "before", "after", "ratio (95% CI)", "verdict"):
                table.add_column(col, overflow="fold")
            for c in cs:
                style = "bold red" if c.regression else ("" if not c.confirmed else
                                                         "yellow" if c.direction == "slower" else "green")  # fmt: skip
                word = (
                    c.direction
                    + (" REGRESSION" if c.regression else "")
                    + ("" if c.confirmed else " (dropped)")
                )
                rng = f"{_short(c.good)}..{_short(c.bad)}" + (
                    f" (+{c.between} unmeasured)" if c.between else ""
                )
                table.add_row(escape(c.case.label()), rng, fmt_ns(c.before_ns), fmt_ns(c.after_ns), _x(c.judgement),
                              f"[{style}]{escape(word)}[/]" if style else escape(word))  # fmt: skip
            console.print(table)
        for note in _notes(history):
            console.print(f"note: {escape(note)}", highlight=False)
        console.print(
            f"order: {escape(history.order.how)}; {escape(rule.describe())}", style="dim", highlight=False
        )
        console.print(f"{len(regressions)} regression(s), {sum(c.confirmed for c in found)} change(s) in "
                      f"{len(history.series)} series", highlight=False)  # fmt: skip
    return 1 if args.fail_on_regression and regressions else 0


def _config(args, run_filters, quick: bool):
    from elbolab.gate.revisions import ABConfig

    sizes = tuple((flag, getattr(args, flag.replace("-", "_"))) for flag, default, _ in SIZE_FLAGS
                  if getattr(args, flag.replace("-", "_"), default) != default)  # fmt: skip
    return ABConfig(base_ref="history", run_filters=tuple(run_filters), quick=quick,
                    seed=getattr(args, "seed", 0) or 0, case_timeout=args.timeout, sizes=sizes)  # fmt: skip


def cmd_run(args) -> int:
    from elbolab.gate.backfill import backfill
    from elbolab.gate.revisions import RUN_FILTERS
    from elbolab.store.commits import commit_range

    repo = _repo(args, "history run")
    commits = commit_range(repo, args.range)
    if args.steps and len(commits) > args.steps:
        n = len(commits)
        picks = sorted({round(i * (n - 1) / max(args.steps - 1, 1)) for i in range(args.steps)})
        commits = [commits[i] for i in picks]
    config = _config(args, [(name, getattr(args, name)) for name in RUN_FILTERS if getattr(args, name, None)],
                     args.quick)  # fmt: skip
    t0 = time.perf_counter()
    with _open(args, create=True) as store:
        _log(f"{len(commits)} commit(s) of {args.range} into {store.url}")
        result = backfill(store, repo, commits, config, args.machine, _log, args.force, runs=args.runs)
    print(f"measured {len(result.measured)}, skipped {len(result.skipped)}, already stored {len(result.already)} "
          f"of {len(commits)} commit(s) in {time.perf_counter() - t0:.0f} s")  # fmt: skip
    for sha, why in result.skipped:
        print(f"  skipped {_short(sha)}: {why}")
    return 0


def cmd_find(args) -> int:
    from elbolab.gate.bisect import bisect, describe
    from elbolab.model.query import CaseQuery

    repo = _repo(args, "history find")
    case = CaseQuery.parse(args.case).to_case()
    filters = [("backend", (case.backend,)), ("workload", (case.workload,)), ("batch", (case.batch,)),
               ("dtype", (case.dtype,)), ("threads", (case.threads,)), ("device", (case.device,)),
               ("variant", (case.variant,))]  # fmt: skip
    args.seed = case.seed
    for flag, attr in (("input-dim", "input_dim"), ("latent-dim", "latent_dim"), ("hidden-dim", "hidden_dim"),
                       ("importance-samples", "importance_samples")):  # fmt: skip
        setattr(args, flag.replace("-", "_"), getattr(case, attr))
    config = _config(args, filters, args.quick)
    rule = _rule(args)
    with _open(args, create=True) as store:
        result = bisect(store, repo, args.good, args.bad, case, config, rule, args.machine, _log, args.reuse,
                      args.attempts)  # fmt: skip
    for step in result.steps:
        print(f"  {_short(step.commit)} {step.outcome}: {step.detail}")
    print(result.message)
    if result.first_bad and result.judgement is not None:
        print(f"first bad: {result.first_bad} {describe(result.judgement)}; last good: {result.last_good}")
    return 0 if result.first_bad else 1


def cmd_page(args) -> int:
    from elbolab.report.trends import render_page
    from elbolab.store.results import output_path, write_text_atomic

    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"{out}: the trends page is HTML; give an output path ending in .html")
    out = output_path(out)  # checked before the store is read
    rule = _rule(args)
    with _open(args) as store:
        history = _load(args, store)
        commits = store.commits(history.order.commits)
        skipped = store.skips()
        html = render_page(history, commits, rule, title=args.title, store_url=store.url, skips=skipped,
                           notes=_notes(history))  # fmt: skip
    write_text_atomic(out, html)
    print(f"trends page: {out} ({len(html) / 1024:.0f} KiB, {len(history.series)} series)")
    return 0


# -------------------------------------------------------------------------------- standalone


def main(argv: list[str] | None = None) -> int:
    """`python -m elbolab.cli.history ...`: the same commands, with or without `history` first."""
    import elbolab.cli as cli

    argv = list(sys.argv[1:] if argv is None else argv)
    original = cli.build_parser

    def with_history():
        parser = original()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "history" not in sub.choices:
            add_commands(sub)
        return parser

    cli.build_parser = with_history
    try:
        return cli.main(argv if argv[:1] == ["history"] or argv[:1] == ["--version"] else ["history", *argv])
    finally:
        cli.build_parser = original


if __name__ == "__main__":
    sys.exit(main())
