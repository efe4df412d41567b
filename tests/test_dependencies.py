"""Honest dependencies: every library the lab imports is declared (core or an extra); the commands a
CI gate runs work without the extras' libraries; a command whose extra is missing says which to
install; the tested versions (elbolab/constraints.txt) satisfy the declared bounds and are recorded
in every results file."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from elbolab.measure.lockfile import CONSTRAINTS, constraints_record, pinned
from elbolab.measure.machine import software_info
from elbolab.store.results import save
from tests.builders import make_run, ok
from tests.test_compare import ELBO

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRA_LIBRARIES = ("matplotlib", "jinja2", "sqlalchemy", "ruptures", "psycopg", "torch", "sklearn", "numba")


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def requirements(extra: str | None = None) -> list[Requirement]:
    specs = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return [Requirement(s) for s in specs]


def declared() -> set[str]:
    names = {_name(r.name) for r in requirements()}
    for extra in PROJECT["optional-dependencies"]:
        names |= {_name(r.name) for r in requirements(extra)}
    return names


def imported_top_level(folder: Path) -> set[str]:
    """Every top-level module the code under `folder` imports, anywhere in a file."""
    out = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.add(node.module.split(".")[0])
    return out


def test_every_library_the_lab_imports_is_declared():
    dists = metadata.packages_distributions()
    third_party = (
        imported_top_level(ROOT / "harness" / "elbolab")
        - set(sys.stdlib_module_names)
        - {"elbolab", "backends"}
    )
    third_party -= {"tomli"}  # Python 3.10's tomllib, declared with a marker
    missing = {m for m in third_party if not {_name(d) for d in dists.get(m, [m])} & declared()}
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"


def test_the_core_holds_none_of_the_extras_libraries():
    core = {_name(r.name) for r in requirements()}
    assert not core & {
        "matplotlib",
        "jinja2",
        "sqlalchemy",
        "ruptures",
        "scikit-learn",
        "torch",
        "numba",
        "psycopg",
    }
    assert "scikit-learn" not in declared()  # the digits are vendored


def test_the_tested_versions_satisfy_every_declared_bound():
    tested = pinned(CONSTRAINTS)
    for extra in (None, *PROJECT["optional-dependencies"]):
        for req in requirements(extra):
            name = _name(req.name)
            if name == "elbolab" or (req.marker and not req.marker.evaluate()):
                continue
            assert name in tested, f"{req} is not in {CONSTRAINTS.name}"
            assert req.specifier.contains(tested[name], prereleases=True), f"{req}: tested {tested[name]}"


def test_a_results_file_records_how_the_installed_versions_differ_from_the_tested():
    record = software_info()["constraints"]
    assert record["file"] == "elbolab/constraints.txt" and len(record["sha256"]) == 64
    assert record["checked"] > 0 and record["matches"] == (record["differs"] == {})
    numpy_tested = pinned(CONSTRAINTS)["numpy"]
    fake = constraints_record(have={"numpy": "1.24.0", "not-pinned": "1.0"})
    assert fake["checked"] == 1 and fake["matches"] is (numpy_tested == "1.24.0")
    if numpy_tested != "1.24.0":
        assert fake["differs"] == {"numpy": {"installed": "1.24.0", "tested": numpy_tested}}


# -------------------------------------------------------------------- without the extras


def run_without_extras(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`elbolab ARGV` in a process where the extras' libraries cannot be imported, as in an install
    of the core alone (pip install elbolab)."""
    code = (
        "import sys, importlib.abc\n"
        f"BLOCKED = {EXTRA_LIBRARIES!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from elbolab.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lean")
    save(folder / "a.json", make_run([ok(ELBO, [100_000.0] * 15)], run_id="a"))
    save(folder / "b.json", make_run([ok(ELBO, [100_000.0] * 15)], run_id="b"))
    return folder


@pytest.mark.parametrize(
    "argv",
    [
        ["gate", "a.json", "b.json", "--markdown", "summary.md"],
        ["compare", "a.json", "b.json", "--json"],
        ["show", "a.json", "-k", "elbo"],
        ["export", "--format", "pyperf", "a.json"],
        ["config"],
        ["gate", "--help"],
    ],
)
def test_what_a_gate_job_runs_needs_no_extra(files, argv):
    proc = run_without_extras(argv, files)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["report", "a.json", "-o", "r.html"], "report"),
        (["history", "runs", "--store", "sqlite:///h.sqlite"], "history"),
        (["compare", "main", "a.json"], "history"),
    ],
)
def test_a_command_whose_extra_is_missing_names_it(files, argv, extra):
    proc = run_without_extras(argv, files)
    assert proc.returncode == 2
    assert f"pip install 'elbolab[{extra}]'" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_the_gate_workflow_installs_no_torch_and_keeps_the_exit_code():
    text = (ROOT / ".github" / "workflows" / "bench.yml").read_text()
    install = next(line for line in text.splitlines() if "pip install -c" in line and "-e" in line)
    assert "torch" not in install and "[numba,gate]" in install
    assert 'exit "$code"' in text and "|| true" in text


def test_a_workflow_runs_make_test_on_pull_requests():
    text = (ROOT / ".github" / "workflows" / "test.yml").read_text()
    assert "pull_request:" in text and "run: make test" in text
    assert "branches: [main]" in text  # main's runs seed the caches pull requests restore
