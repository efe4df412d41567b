"""The `elbolab` command: argparse and terminal output, over the library (which never prints).

Each area adds its sub-commands (`add_commands(subparsers)` in its module); this file wires them
together and turns a UsageError into one line on stderr and exit code 2.

A command imports the parts of the lab it runs inside its own function (the only imports inside
functions above the libraries' own): the report loads pandas and matplotlib, the history store
SQLAlchemy, the gate the measuring machinery, 1-5 s of imports on the 2-core VM that `elbolab
--help`, `list` or `compare` must not pay for.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from elbolab import __version__
from elbolab.model.errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors: one line, exit 2
        self.exit(2, f"elbolab: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from elbolab.cli import config, exporting, gating, history, measure, reports  # they import this one

    parser = Parser(
        prog="elbolab",
        description="A performance lab for ELBO kernels: identical workloads on NumPy, PyTorch, Numba and Rust, "
        "checked against a float64 reference, timed in isolated workers, reported with error bars.",
        epilog="Each command has its own --help. Bad input is one line on stderr and exit code 2.",
    )
    parser.add_argument("--version", action="version", version=f"elbolab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    measure.add_commands(sub)
    reports.add_commands(sub)
    gating.add_commands(sub)
    exporting.add_commands(sub)
    history.add_commands(sub)
    config.add_commands(sub)
    return parser


# the libraries of the optional extras, by the extra that installs them (pyproject.toml)
EXTRAS = {"matplotlib": "report", "jinja2": "report", "sqlalchemy": "history", "ruptures": "history",
          "psycopg": "postgres", "torch": "gpu", "numba": "numba"}  # fmt: skip


def _terminated(signum, frame) -> None:
    """SIGTERM (what CI runners send on cancel) unwinds like Ctrl-C: workers are killed, worktrees
    and temporary folders removed, the results file left valid."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"elbolab: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("elbolab: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:  # a command whose extra is not installed: say which, exit 2
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        print(
            f"elbolab: error: {args.command} needs {top}: pip install 'elbolab[{EXTRAS[top]}]'",
            file=sys.stderr,
        )
        return 2
    except BrokenPipeError:
        # the reader went away (`elbolab claims --json | head`): stop quietly, as any filter does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    finally:
        signal.signal(signal.SIGTERM, previous)
