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


# The signals that end a command: Ctrl-C, a CI runner's cancel, a closed terminal or SSH session.
# Each unwinds like Ctrl-C (workers killed, worktrees and temporary folders removed, the lock
# released, the results file left valid with every finished case) and exits 130, "interrupted".
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
INTERRUPTED = 130
# One error line is at most this long: a message that quotes the input (a list of 60,000 names)
# is cut, not echoed whole
MAX_LINE = 500
# the libraries of the optional extras, by the extra that installs them (pyproject.toml)
EXTRAS = {"matplotlib": "report", "jinja2": "report", "sqlalchemy": "history", "ruptures": "history",
          "psycopg": "postgres", "torch": "gpu", "numba": "numba"}  # fmt: skip


def _terminated(signum, frame) -> None:
    # once: a second signal while the first unwinds would cut the clean-up short (the lock and
    # the temporary files would stay); the clean-up is bounded, and SIGKILL is always there
    for sig in SIGNALS:
        if signal.getsignal(sig) is _terminated:
            signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def _handle_signals() -> dict:
    """Install the handler for every signal not ignored when elbolab started (`nohup elbolab ...`
    keeps SIGHUP ignored); the previous handlers, to restore."""
    previous = {}
    for sig in SIGNALS:
        old = signal.getsignal(sig)
        if old is not signal.SIG_IGN:
            previous[sig] = old
            signal.signal(sig, _terminated)
    return previous


def _say(line: str) -> None:
    """One line on stderr, if there is still a stderr (a closed terminal has none)."""
    if len(line) > MAX_LINE:
        line = line[: MAX_LINE - 30] + f" ... ({len(line)} characters)"
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _quiet_stdout() -> None:
    """The reader of stdout went away: what is still buffered goes nowhere, quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = _handle_signals()
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a reader that went away is caught, not at exit
        return code
    except UsageError as exc:
        _say(f"elbolab: error: {' '.join(str(exc).split())}")
        return 2
    except KeyboardInterrupt:
        _say("elbolab: interrupted")
        return INTERRUPTED
    except ModuleNotFoundError as exc:  # a command whose extra is not installed: say which, exit 2
        top = (exc.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        _say(f"elbolab: error: {args.command} needs {top}: pip install 'elbolab[{EXTRAS[top]}]'")
        return 2
    except BrokenPipeError:
        # the reader went away (`elbolab compare ... | head -1`): stop quietly, as any filter does
        _quiet_stdout()
        return 141
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
