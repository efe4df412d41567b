"""`elbolab config`: the settings in force ([tool.elbolab] in pyproject.toml, elbolab.toml, the
environment, the built-in defaults) and where each came from (elbolab.model.config)."""

from __future__ import annotations

import argparse
import json

from rich.markup import escape
from rich.table import Table

from elbolab.analyse.verdict import (
    DEFAULT_AB_THRESHOLD,
    DEFAULT_NOISE_BAND,
    DEFAULT_THRESHOLD,
    INSTRUCTIONS_RULE,
)
from elbolab.cli.console import stdout_console
from elbolab.cli.reports import DEFAULT_BASELINE, DEFAULT_TITLE
from elbolab.model.config import KEYS, load_config

MATRIX = "the default matrix (elbolab run --help)"


def built_in() -> dict[str, object]:
    """What each setting is when nothing sets it: the values the commands fall back to."""
    try:  # the history store's module needs SQLAlchemy (the history extra)
        from elbolab.store.database import DEFAULT_URL as store
    except ModuleNotFoundError:
        store = "(the history store needs: pip install 'elbolab[history]')"
    values: dict[str, object] = {key: MATRIX for key in KEYS if key.startswith("run.")}
    values.update({
        "store": store, "threshold": DEFAULT_THRESHOLD, "ab-threshold": DEFAULT_AB_THRESHOLD,
        "noise-band": DEFAULT_NOISE_BAND, "count-threshold": INSTRUCTIONS_RULE.threshold,
        "threshold-for": "(none: every workload has the threshold)", "run.k": "(every case)",
        "run.timeout": "(the runner's)", "report.baseline": DEFAULT_BASELINE, "report.title": DEFAULT_TITLE,
    })  # fmt: skip
    return values


def add_commands(sub) -> None:
    p = sub.add_parser("config", help="the settings in force and where each came from ([tool.elbolab])")
    p.add_argument("--json", action="store_true", help="print them as JSON (schema elbolab.config/1)")
    p.set_defaults(func=cmd_config)


def _shown(value) -> object:
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return dict(value)  # threshold-for
    return list(value) if isinstance(value, tuple) else value


def cmd_config(args: argparse.Namespace) -> int:
    config = load_config()
    defaults = built_in()
    rows = [(key, _shown(config.values[key]) if key in config.values else defaults[key],
             config.sources.get(key, "built-in"), KEYS[key].help) for key in KEYS]  # fmt: skip
    if args.json:
        print(json.dumps({"schema": "elbolab.config/1", "file": str(config.file) if config.file else None,
                          "settings": [{"key": k, "value": v, "source": s} for k, v, s, _ in rows]}, indent=1))  # fmt: skip
        return 0
    console = stdout_console()
    where = str(config.file) if config.file else "no elbolab.toml or [tool.elbolab] found from here upwards"
    table = Table(title=escape(f"elbolab settings ({where}); a flag on the command line overrides each"),
                  title_justify="left")  # fmt: skip
    for col in ("setting", "value", "from", "what"):
        table.add_column(col, overflow="fold")
    for key, value, source, what in rows:
        style = "" if source == "built-in" else "bold"
        table.add_row(escape(key), escape(str(value)), escape(source), escape(what), style=style)
    console.print(table)
    return 0
