"""What the report concludes from a results file, as plain data: statuses, speed-ups and verdicts
per case, each grid cell's winner, the claims' outcomes, the anomalies, and a comparison's verdicts.

`tests/test_golden.py` recomputes these from the committed results files and holds them to
`tests/data/golden_tables.json`, written by `python tests/golden.py` from the code as it was before
the layout moved (issue 22): a change of behaviour shows there as a diff, and a deliberate one is
regenerated with its reason in the commit.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ("results/reference-2core.json", "results/h200-reference.json", "results/h200-gpu-quick.json")
COMPARED = ("results/h200-reference.json", "results/h200-gpu-quick.json")
OUT = Path(__file__).with_name("data") / "golden_tables.json"


def _num(x) -> float | None:
    """Six significant digits: the same arithmetic in another order may differ in the last bits."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return float(f"{float(x):.6g}")


def tables(path: Path) -> dict:
    from elbolab.analyse.anomalies import scan
    from elbolab.analyse.table import measurement_table, summary_table
    from elbolab.report.claims import check_claims
    from elbolab.store.results import load

    run = load(path)
    df = measurement_table(run)
    cases = [
        {
            "case": r["m"].case.label(),
            "status": r["status"],
            "implausible": bool(r["implausible"]),
            "speedup": _num(r["speedup"]),
            "speedup_ci": [_num(r["speedup_lo"]), _num(r["speedup_hi"])],
            "verdict": r["verdict"],
            "note": r["speedup_note"],
        }
        for _, r in df.iterrows()
    ]
    summary = summary_table(df)
    cells = [
        {
            "cell": " ".join(str(r[k]) for k in ("workload", "variant", "dtype", "batch", "threads")),
            "winner": r["winner"],
            "runner_up": r["runner_up"],
            "how_sure": r["how_sure"],
            "margin": _num(r["margin"]),
        }
        for _, r in summary.iterrows()
    ]
    claims = [{"id": c.id, "outcome": c.outcome.value, "verdict": c.verdict} for c in check_claims(df, run)]
    anomalies = [{"case": a.case.label(), "kind": a.kind, "detail": a.detail} for a in scan(run)]
    return {"cases": cases, "cells": cells, "claims": claims, "anomalies": anomalies}


def comparison(base: Path, head: Path) -> list[dict]:
    from elbolab.analyse.compare import Reference, compare
    from elbolab.store.results import load

    report = compare(load(base), load(head), allow_missing=True, reference=Reference.parse("numpy"))
    return [
        {"case": c.case.label(), "ratio": _num(c.ratio), "verdict": c.verdict.value}
        for c in report.comparisons
    ]


def everything() -> dict:
    out = {name: tables(ROOT / name) for name in RESULTS}
    out["compare"] = comparison(*(ROOT / name for name in COMPARED))
    return out


if __name__ == "__main__":
    OUT.write_text(json.dumps(everything(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
