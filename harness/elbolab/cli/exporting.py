"""`elbolab export`: a run in the JSON other tools read (elbolab.store.formats).

    elbolab export --format pyperf RUN -o run.pyperf.json      then: python -m pyperf compare_to a b
    elbolab export --format bencher RUN -o bmf.json            then: bencher run --adapter json --file bmf.json
    elbolab export --format pytest-benchmark RUN -o pb.json    then: pytest-benchmark compare pb.json

RUN is a results file, or a git revision or run id of the history store (as for compare).
"""

from __future__ import annotations

import argparse
import json
import sys

from elbolab.cli.args import path
from elbolab.cli.gating import load_sides, selected
from elbolab.cli.measure import add_keyword
from elbolab.model.config import load_config
from elbolab.model.selection import parse_optional
from elbolab.store.formats import FORMATS, export, exportable
from elbolab.store.results import output_path, write_text_atomic


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="write a run as pyperf, Bencher (BMF) or pytest-benchmark JSON")
    p.add_argument(
        "run", metavar="RUN", help="a results file, or a git revision or run id of the history store"
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="the other tool's format")
    p.add_argument("-o", "--out", type=path, metavar="FILE", help="write here (default: standard output)")
    add_keyword(p)
    p.add_argument("--store", metavar="URL", help="the history store, where RUN is a revision or run id")
    p.add_argument("--machine", metavar="M", help="the machine whose run to use, where RUN is a revision")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    selection = parse_optional(args.k)
    (run,), notices = load_sides([args.run], args, load_config())
    run = selected(run, selection)
    text = json.dumps(export(run, args.format), indent=1, allow_nan=False)
    left_out = len(run.measurements) - len(exportable(run))
    for notice in notices:
        print(f"export: {notice}", file=sys.stderr)
    if left_out:  # said on stderr, so stdout stays the other tool's JSON
        print(f"export: {left_out} case(s) not 'ok' (failed, skipped, incorrect, implausible or counted) left out",
              file=sys.stderr)  # fmt: skip
    if args.out is None:
        print(text)
    else:
        write_text_atomic(output_path(args.out), text + "\n")  # a link named as -o: its target
        print(f"export: {len(exportable(run))} case(s) as {args.format} JSON in {args.out}", file=sys.stderr)
    return 0
