"""The console tables are printed to: the terminal's width, or wide enough not to fold when piped
(a CI log or a test reading stdout must see each row on one line)."""

from __future__ import annotations

import sys

from rich.console import Console

PIPED_WIDTH = 200


def stdout_console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=PIPED_WIDTH)
