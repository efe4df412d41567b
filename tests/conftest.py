import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAULT_BACKENDS = ",".join(
    f"tests.fault_backends:{name}" for name in ("crashing", "hanging", "raising", "lying", "aborting")
)


@pytest.fixture
def fault_backends(monkeypatch):
    """Register the misbehaving test backends (workers inherit the environment)."""
    monkeypatch.setenv("ELBOLAB_BACKENDS", FAULT_BACKENDS)
    # spawned workers import tests.fault_backends: the repo root must be importable there
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if str(ROOT) not in sys.path:
        monkeypatch.syspath_prepend(str(ROOT))


QUIET_ENV = "ELBOLAB_QUIET_TESTS"


def pytest_collection_modifyitems(config, items):
    """Tests marked quiet measure effects the size of what a busy machine does to separate runs (a
    10% step between commits): beside the suite's other process they cannot decide, so they run
    only where asked, on an otherwise idle machine (`make test-quiet`)."""
    if os.environ.get(QUIET_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"needs an otherwise idle machine: run `make test-quiet` ({QUIET_ENV}=1)")
    for item in items:
        if "quiet" in item.keywords:
            item.add_marker(skip)
