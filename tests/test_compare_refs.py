"""`elbolab compare main HEAD` and `elbolab gate RUN_ID HEAD`: runs named by git revision or run id,
read from the history store (elbolab.store.lookup); --only-changed and --sort ratio, as asv's."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace

import pytest

from elbolab.analyse.compare import compare
from elbolab.cli import main
from elbolab.cli.gating import view
from elbolab.model.case import Case
from elbolab.store.database import Store
from elbolab.store.results import save
from tests.builders import make_run, ok

CASES = [Case("elbo", "numpy", batch=b) for b in (1, 128, 1024)]


def git(repo, *args) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A repository of three commits (main~1, main, and a branch `work` one ahead), a store holding
    runs of main~1 and main (two of main) on one machine, and of main on a second machine."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    shas = []
    for i in range(2):
        (repo / "f.txt").write_text(str(i))
        git(repo, "add", "f.txt")
        git(repo, "commit", "-qm", f"c{i}")
        shas.append(git(repo, "rev-parse", "HEAD"))
    git(repo, "checkout", "-qb", "work")
    (repo / "f.txt").write_text("2")
    git(repo, "commit", "-qam", "c2")
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    # main~1: every case at 100 us; main: elbo B=1 1.5x slower, B=1024 0.5x (faster), B=128 the same
    old = make_run([ok(c, [100_000.0] * 15) for c in CASES], run_id="oldrun000001", commit=shas[0])
    factors = {1: 1.5, 128: 1.0, 1024: 0.5}
    new = make_run(
        [ok(c, [100_000.0 * factors[c.batch]] * 15) for c in CASES], run_id="newrun000001", commit=shas[1]
    )
    earlier = replace(new, run_id="newrun000000", started="2025-12-31T00:00:00+00:00")
    other = make_run(
        [ok(c, [50_000.0] * 15) for c in CASES], cpu="Other CPU", run_id="othermachine", commit=shas[1]
    )
    with Store.open(url) as store:
        for run in (old, new, earlier, other):
            store.ingest(run)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("ELBOLAB_STORE", url)
    return repo, shas, url


def compared(capsys, *argv) -> dict:
    assert main(["compare", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_by_git_revision_on_the_machine_both_have(repo, capsys):
    _, shas, _ = repo
    doc = compared(capsys, "main~1", "main", "--machine", "Test CPU")
    assert doc["base"]["run_id"] == "oldrun000001" and doc["base"]["commit"] == shas[0]
    assert doc["head"]["run_id"] == "newrun000001"  # the latest of main's two runs on that machine
    assert any("the latest of 2" in n for n in doc["notices"])
    ratios = {c["case"]["batch"]: round(c["ratio"], 3) for c in doc["comparisons"]}
    assert ratios == {1: 1.5, 128: 1.0, 1024: 0.5}


def test_a_revision_measured_on_two_machines_needs_machine_when_both_sides_have_them(repo, capsys):
    # main~1 was measured on one machine only, so main's runs on it are the ones compared
    assert compared(capsys, "main~1", "main")["head"]["cpu"] == "Test CPU 9000"
    assert main(["compare", "main", "main"]) == 2
    assert "choose one with --machine" in capsys.readouterr().err


def test_run_ids_and_their_unique_prefixes_name_stored_runs(repo, capsys):
    doc = compared(capsys, "oldrun0", "newrun000000")  # not main's latest run: the one named
    assert (doc["base"]["run_id"], doc["head"]["run_id"]) == ("oldrun000001", "newrun000000")


def test_an_ambiguous_run_id_prefix_is_refused(repo, capsys):
    assert main(["compare", "oldrun000001", "newrun"]) == 2
    assert "ambiguous" in capsys.readouterr().err


def test_a_file_and_a_stored_run_mix(repo, tmp_path, capsys):
    path = tmp_path / "head.json"
    save(path, make_run([ok(c, [100_000.0] * 15) for c in CASES], run_id="filerun"))
    doc = compared(capsys, "oldrun000001", str(path))
    assert doc["base"]["run_id"] == "oldrun000001" and doc["head"]["run_id"] == "filerun"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["work", "main"], "'work' (commit "),  # a revision without a stored run
        (["nosuchthing", "main"], "'nosuchthing' is not a results file, a run id in"),
        (["missing.json", "main"], "missing.json: no such results file"),
        (["main~1", "main", "--machine", "Sparc"], "--machine 'Sparc' names no stored machine"),
    ],
)
def test_what_cannot_be_found_is_one_line(repo, capsys, argv, says):
    assert main(["compare", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1, err


def test_gate_by_revision_sets_the_exit_code(repo, capsys):
    assert main(["gate", "main~1", "main", "--machine", "Test CPU"]) == 1  # B=1 is 1.5x slower
    assert "REGRESSION" in capsys.readouterr().out.upper()


# ----------------------------------------------------------------- --only-changed and --sort


def test_only_changed_hides_the_unchanged_but_the_verdict_counts_them(repo, capsys):
    doc = compared(capsys, "main~1", "main", "--machine", "Test CPU", "--only-changed", "--sort", "ratio")
    assert [c["case"]["batch"] for c in doc["comparisons"]] == [1, 1024]  # B=128 is the same: hidden
    assert any("--only-changed: 1 case(s)" in n for n in doc["notices"])
    assert main(["gate", "main~1", "main", "--machine", "Test CPU", "--only-changed"]) == 1


def test_sort_orders_by_ratio_or_name():
    base = make_run([ok(c, [100_000.0] * 15) for c in CASES], run_id="a")
    head = make_run(
        [ok(c, [100_000.0 * f] * 15) for c, f in zip(CASES, (0.5, 2.0, 1.0), strict=True)], run_id="b"
    )
    report = compare(base, head)
    by_ratio = [round(c.ratio, 2) for c in view(report, False, "ratio").comparisons]
    assert by_ratio == [2.0, 1.0, 0.5]  # the largest slowdown first, as asv's --sort ratio
    by_name = [c.case.label() for c in view(report, False, "name").comparisons]
    assert by_name == sorted(by_name)
    assert view(report, False, "default").comparisons == report.comparisons
