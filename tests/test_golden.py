"""The layout moved (issue 22) without changing what the lab concludes: the committed results files
give the same statuses, speed-ups, verdicts, winners, claims, anomalies and comparison verdicts as
the code gave before the move (tests/data/golden_tables.json, written by tests/golden.py)."""

import json

import pytest

from tests import golden


@pytest.fixture(scope="module")
def now() -> dict:
    return golden.everything()


@pytest.fixture(scope="module")
def before() -> dict:
    return json.loads(golden.OUT.read_text())


@pytest.mark.parametrize("name", golden.RESULTS)
@pytest.mark.parametrize("table", ["cases", "cells", "claims", "anomalies"])
def test_a_committed_run_concludes_as_it_did(now, before, name, table):
    assert now[name][table] == before[name][table]


def test_a_comparison_of_committed_runs_concludes_as_it_did(now, before):
    assert now["compare"] == before["compare"]
