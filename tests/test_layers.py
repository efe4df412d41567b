"""The layering contract (pyproject.toml, [tool.importlinter]): imports run downward only
(cli -> report -> gate -> analyse | measure -> store -> model), the lab never imports a backend by
name, and a backend never imports the runner. Checked by import-linter on the real tree, and shown
to fail on a copy of the tree with one upward import planted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(
    not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')"
)


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "harness"), str(tree)]))
    return subprocess.run([str(LINT), "--no-cache", str(tree / "pyproject.toml")], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_the_lab_keeps_its_layers():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("harness/elbolab/model/case.py", "import elbolab.store.results", "downward only"),
        ("harness/elbolab/measure/timer.py", "import elbolab.analyse.verdict", "downward only"),
        ("harness/elbolab/analyse/compare.py", "import backends.numpy", "never imports a backend"),
        ("backends/numpy/__init__.py", "import elbolab.measure.runner", "never imports the runner"),
    ],
)
def test_an_import_against_the_layers_is_caught(tmp_path, module, planted, contract):
    tree = tmp_path / "tree"
    for part in ("harness", "backends"):
        shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("target", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    path = tree / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")
    out = lint(tree)
    assert out.returncode != 0
    assert "BROKEN" in out.stdout and contract in out.stdout
