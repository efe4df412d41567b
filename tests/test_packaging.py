"""`pip install .` installs the two packages the repository's two import roots hold, `elbolab`
(harness/elbolab/) and `backends` (backends/), with the templates and entry points, and nothing else
(no `harness`, no Rust sources); it prints no packaging warning; the Rust extension is a separate
abi3 wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    from elbolab.gate.revisions import clean_copy

    out = tmp_path_factory.mktemp("wheel")
    source = clean_copy(ROOT, out / "src")  # never build in the working tree (its *.egg-info would shadow)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(source)], check=True, capture_output=True)  # fmt: skip
    (path,) = out.glob("elbolab-*.whl")
    return path


def test_the_wheel_holds_one_top_level_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"elbolab", "backends"}
    assert "elbolab/report/templates/report.html.j2" in names
    assert "backends/numpy/__init__.py" in names and "elbolab/cli/__main__.py" in names
    assert "elbolab/measure/timer.py" in names and "elbolab/__main__.py" in names
    # the training's digits with their licence, and the tested versions every run records
    assert {
        "elbolab/measure/data/digits.csv.gz",
        "elbolab/measure/data/README.md",
        "elbolab/constraints.txt",
    } <= set(names)
    assert not [n for n in names if n.endswith((".rs", ".toml", ".lock"))], (
        "Rust sources belong to their own wheel"
    )
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "numpy = backends.numpy:backend" in text and "elbolab = elbolab.cli:main" in text


def test_the_installed_package_runs_outside_the_repository(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)  # fmt: skip
    assert not (site / "harness").exists() and (site / "backends" / "numpy").is_dir()
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-m", "elbolab", "list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "numpy" in proc.stdout and "available" in proc.stdout
    where = subprocess.run([sys.executable, "-c", "import elbolab; print(elbolab.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True).stdout  # fmt: skip
    assert where.startswith(str(site))


def test_the_rust_wheel_is_abi3():
    wheels = sorted((ROOT / "target" / "wheels").glob("elbolab_rust-*.whl"))
    if not wheels:
        pytest.skip("the Rust wheel is not built here (make rust)")
    name = wheels[-1].name
    assert "abi3" in name
    assert any(
        n.startswith("elbolab_rust") and n.endswith(".so") for n in zipfile.ZipFile(wheels[-1]).namelist()
    )


def test_building_prints_no_packaging_warning(tmp_path):
    from elbolab.gate.revisions import clean_copy

    source = clean_copy(ROOT, tmp_path / "src")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path), str(source)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr


def test_an_import_path_is_its_file_path():
    import backends.rust
    import elbolab.measure.timer

    assert Path(elbolab.measure.timer.__file__) == ROOT / "harness" / "elbolab" / "measure" / "timer.py"
    assert Path(backends.rust.__file__) == ROOT / "backends" / "rust" / "__init__.py"
