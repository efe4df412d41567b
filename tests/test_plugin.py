"""The plugin contract, from the outside: a third-party package (examples/plugin) installed with pip
registers a backend through the 'elbolab.backends' entry point, and elbolab runs it through every
workload and variant it declares, in worker processes, checked like any built-in backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from elbolab.store.results import load

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_an_installed_plugin_is_discovered_and_measured(tmp_path):
    import shutil

    site = tmp_path / "site"
    source = shutil.copytree(ROOT / "examples" / "plugin", tmp_path / "plugin-src")  # build outside the tree
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True)  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    listing = subprocess.run([sys.executable, "-m", "elbolab.cli", "list"], env=env, capture_output=True,
                             text=True, cwd=tmp_path)  # fmt: skip
    assert listing.returncode == 0 and "example" in listing.stdout
    out = tmp_path / "run.json"
    proc = subprocess.run(
        [sys.executable, "-m", "elbolab.cli", "run", "--backend", "example", "--batch", "1,7,128", "--quick", "--full",
         "--no-limits", "--out", str(out)], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = load(out)
    cases = {(m.case.workload, m.case.variant) for m in run.measurements}
    assert cases == {(w, v) for w in ("elbo", "elbo_grad") for v in ("eps=given", "eps=sampled")}
    assert all(m.status == "ok" for m in run.measurements), [
        (m.case.label(), m.reason) for m in run.measurements
    ]
    assert run.software["backends"]["example"]["elbolab-plugin-example"] == "0.1.0"
