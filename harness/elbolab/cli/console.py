"""The console tables are printed to: the terminal's width, or wide enough not to fold when piped
(a CI log or a test reading stdout must see each row on one line)."""

from __future__ import annotations

import re
import sys

from rich.console import Console

PIPED_WIDTH = 200
# C0 and C1 control characters but newline and tab: in a name or a reason from a plugin or a
# results file, an escape sequence would be obeyed by the terminal (colours, cleared screens)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _visible(match: re.Match) -> str:
    return repr(match.group())[1:-1]


class _Console(Console):
    def render_str(self, text: str, **kwargs):
        # every str printed, in a table cell or a title too, shows its control characters as \x1b
        return super().render_str(_CONTROL.sub(_visible, text), **kwargs)

    def on_broken_pipe(self) -> None:
        # rich exits 1 when the reader of stdout goes away (`elbolab compare ... | head -1`); the
        # command line stops quietly instead, with the exit status of a filter killed by SIGPIPE
        self.quiet = True
        raise BrokenPipeError


def stdout_console() -> Console:
    return _Console() if sys.stdout.isatty() else _Console(width=PIPED_WIDTH)
