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
