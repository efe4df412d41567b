"""`elbolab compare` and `elbolab gate`: two runs (or a git revision and the working tree) to a
verdict and an exit code.

    elbolab compare BASE HEAD [-k EXPR] [--only-changed] [--sort ratio] [--markdown PATH] [--json]
    elbolab gate BASE HEAD [--threshold 0.10] [--threshold-for WORKLOAD=0.2 ...]
                 [--allow-missing] [--normalize [--reference numpy:elbo]] [--markdown PATH] [--json]
    elbolab gate --base GIT_REF [run filters: --backend numpy --workload elbo --batch 128 -k EXPR ...]
                 [--case-budget 40] [--measure instructions] [--count-threshold 0.01]

BASE and HEAD are results files, or, as asv names runs, git revisions (`main`, `HEAD~1`) or run ids
whose runs the history store holds (elbolab.store.lookup; --store, --machine). Thresholds and the
noise band default to [tool.elbolab] (elbolab.model.config), then to elbolab.analyse.verdict's.

`gate` exits 1 on a confident regression (or a case that broke), 0 otherwise, 2 when it could not
decide (nothing compared, a case measured in base but not head, bad input).
The comparison is elbolab.analyse.compare, the A/B measuring elbolab.gate.ab, the verdict elbolab.analyse.verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from dataclasses import replace
from pathlib import Path

from elbolab.analyse.compare import Comparison, Reference, compare
from elbolab.analyse.verdict import (
    DEFAULT_AB_THRESHOLD,
    DEFAULT_NOISE_BAND,
    DEFAULT_THRESHOLD,
    INSTRUCTIONS_RULE,
    Rule,
    Verdict,
)
from elbolab.cli.args import fraction, path, positive_int, seconds
from elbolab.cli.console import stdout_console
from elbolab.cli.measure import SIZE_FLAGS, add_keyword, add_run_filters, matrix_value
from elbolab.cli.render import print_compare
from elbolab.gate.ab import measure_ab
from elbolab.gate.revisions import RUN_FILTERS, ABConfig
from elbolab.model.config import Config, load_config
from elbolab.model.errors import UsageError
from elbolab.model.selection import Selection, parse_optional
from elbolab.report import markdown
from elbolab.store.results import Run, load, output_path, replace_measurements, save


def _threshold_for(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name.strip():
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected WORKLOAD=FRACTION such as vae_step=0.2, got {text!r}"
        ) from None


def _add_compare_options(p: argparse.ArgumentParser) -> None:
    # the defaults are None here: unset, a flag falls back to [tool.elbolab], then to the built-in value
    p.add_argument("--threshold", type=fraction, default=None,
                   help="slowdown that counts as a regression, as a fraction (default 0.10 = 10%% between "
                        "two runs, 0.05 in the interleaved A/B gate --base; [tool.elbolab] threshold, ab-threshold)")  # fmt: skip
    p.add_argument("--threshold-for", type=_threshold_for, action="append", default=[], metavar="WORKLOAD=T",
                   help="a different threshold for one workload, e.g. vae_step=0.2 (repeatable)")  # fmt: skip
    p.add_argument("--count-threshold", type=fraction, default=None,
                   help="the same for instruction counts, which are deterministic (default 0.01 = 1%%)")  # fmt: skip
    p.add_argument("--noise-band", type=fraction, default=None,
                   help="a confident change smaller than this is noise (default 0.03)")  # fmt: skip
    p.add_argument("--allow-missing", action="store_true",
                   help="compare the cases in common when the case sets differ (others are listed)")  # fmt: skip
    p.add_argument("--normalize", action="store_true",
                   help="divide each time by a reference case of the same run (runs from different machines)")  # fmt: skip
    p.add_argument("--reference", default="numpy:elbo", metavar="BACKEND[:WORKLOAD[:VARIANT]]",
                   help="the normalization reference (default numpy:elbo, eps given, cpu)")  # fmt: skip
    p.add_argument("--markdown", type=path, metavar="PATH",
                   help="also append the report as Markdown to PATH (e.g. $GITHUB_STEP_SUMMARY)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON (schema elbolab.compare/1)")
    p.add_argument("--fail-on-noisy", action="store_true", help="gate: cases too noisy to tell fail the gate")
    p.add_argument("--only-changed", action="store_true",
                   help="show only the cases that are faster, slower or broken (as asv compare --only-changed); "
                        "the verdict and the exit code still count every case")  # fmt: skip
    p.add_argument("--sort", choices=SORTS, default="default",
                   help="order of the cases: default (regressions first, then by ratio), name, or ratio "
                        "(the largest slowdown first, as asv compare --sort ratio)")  # fmt: skip
    look = p.add_argument_group("BASE and HEAD as git revisions or run ids (read from the history store)")
    look.add_argument("--store", metavar="URL", help="the history store (default [tool.elbolab] store, "
                      "$ELBOLAB_STORE, else sqlite:///results/history.sqlite)")  # fmt: skip
    look.add_argument(
        "--machine", metavar="M", help="the machine whose runs to use (an id prefix or part of its name)"
    )


SORTS = ("default", "name", "ratio")
RUN_HELP = "a results file, or a git revision or run id whose run the history store holds"


def add_commands(sub) -> None:
    p = sub.add_parser("compare", help="compare two runs case by case (ratios with 95%% CI): results files, "
                       "git revisions or stored run ids")  # fmt: skip
    p.add_argument("base", metavar="BASE", help=RUN_HELP)
    p.add_argument("head", metavar="HEAD", help=RUN_HELP)
    _add_compare_options(p)
    add_keyword(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "gate",
        help="fail (exit 1) when HEAD is confidently slower than BASE; or A/B against a git ref with --base",
    )
    p.add_argument("files", nargs="*", metavar="BASE HEAD", help=RUN_HELP)
    _add_compare_options(p)
    add_keyword(p)
    ab = p.add_argument_group("same-machine A/B (measure a git revision against the working tree)")
    ab.add_argument("--base", metavar="GIT_REF", help="revision to measure against the working tree")
    ab.add_argument("--case-budget", type=seconds, default=ABConfig.case_budget_s, metavar="SECONDS",
                    help="interleaved timing: seconds a case may take (pairs of workers) before it is reported undecided "
                         f"(default {ABConfig.case_budget_s:g})")  # fmt: skip
    ab.add_argument("--rounds", type=positive_int, default=3,
                    help="whole runs per side, only for a base revision older than the interleaved workers (default 3)")  # fmt: skip
    ab.add_argument(
        "--save-runs", type=path, metavar="DIR", help="keep the pooled base.json and head.json here"
    )
    ab.add_argument("--timeout", type=seconds, help="seconds per case (passed to each run)")
    ab.add_argument("--measure", choices=("time", "instructions"), default="time",
                    help="time the cases interleaved (default), or count their instructions under callgrind: "
                         "deterministic, so a 1%% change is seen on any machine, however loaded")  # fmt: skip
    add_run_filters(ab)
    p.set_defaults(func=cmd_gate)


def _rule(args: argparse.Namespace, config: Config, interleaved: bool = False) -> Rule:
    threshold = (
        config.pick(args.threshold, "ab-threshold", DEFAULT_AB_THRESHOLD)
        if interleaved
        else config.pick(args.threshold, "threshold", DEFAULT_THRESHOLD)
    )
    per_workload = dict(config.get("threshold-for", ()))
    per_workload.update(dict(args.threshold_for))  # a flag overrides the file, workload by workload
    return Rule.of(threshold, config.pick(args.noise_band, "noise-band", DEFAULT_NOISE_BAND), per_workload)


def _count_rule(args: argparse.Namespace, config: Config) -> Rule:
    # counts repeat to within ~0.01%: the noise band scales with the threshold, never above 0.2%
    threshold = config.pick(args.count_threshold, "count-threshold", INSTRUCTIONS_RULE.threshold)
    return Rule.of(threshold, min(INSTRUCTIONS_RULE.noise_band, threshold / 5))


def _reference(args: argparse.Namespace) -> Reference | None:
    return Reference.parse(args.reference) if args.normalize else None


def _markdown_path(args: argparse.Namespace) -> None:
    """--markdown checked before anything is compared or measured: a regular file to append to (a
    link the user named resolved once), or nothing yet; a FIFO, which would block the command
    until something reads it, a device or a directory is refused."""
    if args.markdown is not None:
        try:
            args.markdown = output_path(args.markdown)
        except UsageError as exc:
            why = str(exc).removeprefix(f"cannot write {args.markdown}: ")
            raise UsageError(f"{args.markdown}: cannot write the Markdown report ({why})") from None


def _write_markdown(path: Path | None, text: str) -> None:
    if path is None:
        return
    # appended without following a link planted since the check, nor waiting on a FIFO
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o666)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UsageError(f"{path}: not a regular file; cannot write the Markdown report")
            os.write(fd, (text.rstrip("\n") + "\n\n").encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write the Markdown report ({exc.strerror or exc})") from None


def _is_file(name: str) -> bool:
    """A results file (a name ending in .json is one, so a missing file says so, not 'no such run')."""
    if name.endswith(".json"):
        return True
    try:
        return Path(name).exists()
    except OSError:  # a name too long for a file: load() says so in one line
        return True


def load_sides(names: list[str], args: argparse.Namespace, config: Config) -> tuple[list[Run], list[str]]:
    """The runs the names mean: results files, else runs of the history store (elbolab.store.lookup),
    with a notice for each run found in the store."""
    runs: list[Run | None] = [load(n) if _is_file(n) else None for n in names]
    stored = [n for n, r in zip(names, runs, strict=True) if r is None]
    if not stored:
        return runs, []  # type: ignore[return-value]
    from elbolab.store.database import Store, resolve_url  # SQLAlchemy: only where a run comes from the store
    from elbolab.store.lookup import find_runs

    url = resolve_url(config.pick(args.store, "store"))
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        # a mistyped file name must not create an empty store as it looks
        raise UsageError(f"{stored[0]!r} is not a results file, and there is no history store at "
                         f"{url.removeprefix('sqlite:///')} to find it in as a run id or git revision (--store URL)")  # fmt: skip
    with Store.open(url, create=False) as store:  # a read: never makes a store
        found = iter(find_runs(stored, store, machine=args.machine))
        notices = []
        for i, run in enumerate(runs):
            if run is None:
                f = next(found)
                runs[i] = f.run
                notices.append(f.notice)
    return runs, notices  # type: ignore[return-value]


def selected(run: Run, selection: Selection | None) -> Run:
    if selection is None:
        return run
    return replace_measurements(run, selection.select(run.measurements, lambda m: m.case))


def _compare_named(args: argparse.Namespace, config: Config, base: str, head: str) -> Comparison:
    selection = parse_optional(args.k)
    rule, count_rule = _rule(args, config), _count_rule(args, config)
    (base_run, head_run), notices = load_sides([base, head], args, config)
    base_run, head_run = selected(base_run, selection), selected(head_run, selection)
    if selection is not None and not (base_run.measurements or head_run.measurements):
        raise UsageError(f"-k {selection.text!r} selects no case of either run")
    return compare(base_run, head_run, rule=rule, count_rule=count_rule, allow_missing=args.allow_missing,
                   reference=_reference(args), notices=notices)  # fmt: skip


def view(report: Comparison, only_changed: bool, sort: str) -> Comparison:
    """The rows to show: --only-changed keeps the confident changes and the broken cases, --sort
    orders them. The verdict and the exit code are the whole report's, decided before this."""
    rows = list(report.comparisons)
    not_compared = report.not_compared
    notices = report.notices
    if only_changed:
        rows = [c for c in rows if c.verdict in (Verdict.FASTER, Verdict.SLOWER)]
        not_compared = tuple(n for n in not_compared if n.broken)
        hidden = len(report.comparisons) - len(rows) + len(report.not_compared) - len(not_compared)
        notices = (
            *notices,
            f"--only-changed: {hidden} case(s) that did not change (or could not be compared) not shown",
        )
    if sort == "name":
        rows.sort(key=lambda c: c.case.label())
    elif sort == "ratio":
        rows.sort(key=lambda c: -c.ratio)
    return replace(report, comparisons=tuple(rows), not_compared=not_compared, notices=notices)


def _emit(report: Comparison, args: argparse.Namespace, title: str, outcome: str | None = None) -> None:
    report = view(report, args.only_changed, args.sort)
    if args.json:
        doc = dict(report.to_json(), outcome=outcome) if outcome else report.to_json()
        print(json.dumps(doc, indent=1, allow_nan=False, default=str))
    else:
        print_compare(report, stdout_console(), outcome)
    _write_markdown(args.markdown, markdown.compare_report(report, title=title, outcome=outcome))


def cmd_compare(args: argparse.Namespace) -> int:
    """The table only: always exit 0; it says what the gate would decide, without failing."""
    _markdown_path(args)
    report = _compare_named(args, load_config(), args.base, args.head)
    code, outcome = report.gate(allow_missing=args.allow_missing, fail_on_noisy=args.fail_on_noisy)
    _emit(report, args, "elbolab compare", f"compare only (exit 0); the gate would exit {code}: {outcome}")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    _markdown_path(args)
    try:
        config = load_config()
        if args.base is not None:
            if args.files:
                raise UsageError("give either BASE HEAD or --base GIT_REF, not both")
            report = _ab_gate(args, config)
        else:
            if len(args.files) != 2:
                raise UsageError(
                    f"gate needs BASE and HEAD (or --base GIT_REF), got {len(args.files)} run(s)"
                )
            _no_run_filters(args)
            report = _compare_named(args, config, *args.files)
    except UsageError as exc:
        _write_markdown(args.markdown, f"### ⚠️ elbolab gate could not compare\n\n{markdown.md(exc)}")
        raise
    code, outcome = report.gate(allow_missing=args.allow_missing, fail_on_noisy=args.fail_on_noisy)
    _emit(report, args, "elbolab gate", outcome)
    return code


def _no_run_filters(args: argparse.Namespace) -> None:
    given = [f"--{name}" for name in RUN_FILTERS if getattr(args, name, None)]
    given += ["--quick"] if args.quick else []
    given += ["--measure"] if args.measure != "time" else []
    given += ["--case-budget"] if args.case_budget != ABConfig.case_budget_s else []
    given += [
        f"--{flag}" for flag, default, _ in SIZE_FLAGS if getattr(args, flag.replace("-", "_")) != default
    ]
    if given:
        raise UsageError(f"{', '.join(given)} only apply with --base GIT_REF (they choose what to measure)")


def _save_runs_paths(folder: Path) -> tuple[Path, Path]:
    """--save-runs DIR checked before minutes of measuring: a folder (made now if missing) without
    a base.json or head.json that saving would replace, so the A/B runs always have a place."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise UsageError(f"--save-runs {folder}: not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--save-runs {folder}: cannot create ({exc.strerror or exc})") from None
    paths = (folder / "base.json", folder / "head.json")
    for file in paths:
        if os.path.lexists(file):
            raise UsageError(
                f"--save-runs {folder}: {file.name} is there already; give an empty or new folder"
            )
        output_path(file)
    return paths


def _ab_gate(args: argparse.Namespace, settings: Config) -> Comparison:
    filters = ((name, matrix_value(args, settings, name)) for name in RUN_FILTERS)
    selection = parse_optional(settings.pick(args.k, "run.k"))
    config = ABConfig(
        base_ref=args.base,
        rounds=args.rounds,
        run_filters=tuple((name, values) for name, values in filters if values),
        keyword=selection.text if selection else None,
        quick=args.quick,
        seed=args.seed,
        case_timeout=settings.pick(args.timeout, "run.timeout"),
        case_budget_s=args.case_budget,
        measure=args.measure,
        sizes=tuple(
            (flag, getattr(args, flag.replace("-", "_")))
            for flag, default, _ in SIZE_FLAGS
            if getattr(args, flag.replace("-", "_")) != default
        ),
    )
    rule, reference = (
        _rule(args, settings, interleaved=True),
        _reference(args),
    )  # bad options fail before minutes of measuring
    saved = _save_runs_paths(args.save_runs) if args.save_runs else ()
    result = measure_ab(config, rule, log=lambda msg: print(f"gate: {msg}", file=sys.stderr, flush=True))
    for file, run in zip(saved, (result.base, result.head), strict=False):
        save(file, run)
    # a base revision measured in whole runs (older than -k) ran every case: the selection again
    base, head = selected(result.base, selection), selected(result.head, selection)
    return compare(base, head, rule=rule, count_rule=_count_rule(args, settings), allow_missing=args.allow_missing, reference=reference,
                   base_label=result.base_label, head_label=result.head_label, notices=result.notices)  # fmt: skip
