"""The `elbolab` command.

Each area of the lab adds its own sub-commands (`add_commands(subparsers)` in its module), so this
file only wires them together and turns a UsageError into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from harness.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"elbolab: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from harness import commands, gate
    from harness.report import commands as report_commands

    parser = _Parser(prog="elbolab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_commands(sub)
    report_commands.add_commands(sub)
    gate.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"elbolab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("elbolab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
