"""--json on show, compare, gate and claims: versioned documents, verdicts as enums, numbers as numbers."""

from __future__ import annotations

import json

import pytest

from elbolab.cli import main
from elbolab.model.case import Case
from elbolab.store.results import save
from tests.builders import make_run, noisy, ok


@pytest.fixture
def runs(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    base = make_run([ok(Case("elbo", "numpy"), noisy(rng, 1e5)), ok(Case("elbo", "rust"), noisy(rng, 4e4))])
    head = make_run([ok(Case("elbo", "numpy"), noisy(rng, 1e5)), ok(Case("elbo", "rust"), noisy(rng, 6e4))])
    save(tmp_path / "base.json", base)
    save(tmp_path / "head.json", head)
    return tmp_path


def _json(capsys, argv) -> tuple[int, dict]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_show_json(runs, capsys):
    code, doc = _json(capsys, ["show", str(runs / "base.json"), "--json", "--backend", "rust"])
    assert code == 0 and doc["schema"] == "elbolab.show/1"
    (case,) = doc["cases"]
    assert (
        case["case"]["backend"] == "rust" and isinstance(case["median_ns"], float) and case["status"] == "ok"
    )


def test_compare_and_gate_json(runs, capsys):
    code, doc = _json(capsys, ["compare", str(runs / "base.json"), str(runs / "head.json"), "--json"])
    assert code == 0 and doc["schema"] == "elbolab.compare/1"
    by = {c["case"]["backend"]: c for c in doc["comparisons"]}
    assert by["rust"]["verdict"] == "slower" and by["rust"]["regression"] is True
    assert isinstance(by["rust"]["ratio"], float) and len(by["rust"]["ci95"]) == 2
    code, doc = _json(capsys, ["gate", str(runs / "base.json"), str(runs / "head.json"), "--json"])
    assert code == 1 and doc["failed"] is True and doc["outcome"].startswith("FAIL")


def test_claims_json(runs, capsys):
    code, doc = _json(capsys, ["claims", str(runs / "base.json"), "--json"])
    assert code == 0 and doc["schema"] == "elbolab.claims/1"
    outcomes = {c["outcome"] for c in doc["runs"][0]["claims"]}
    assert outcomes <= {"holds", "holds_only_when", "does_not_hold", "not_measured"}
