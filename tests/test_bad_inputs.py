"""Bad input, across every subcommand: one line on stderr, exit code 2, no traceback, and every file
that was there before is byte-identical afterwards (checksums). Fault experiments (two writers,
SIGTERM, SIGKILL at random points, a full disk) are in tests/test_faults.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from elbolab.cli import main
from elbolab.model.case import Case
from elbolab.model.measurement import Measurement
from elbolab.store.database import Store
from elbolab.store.results import load, save
from tests.builders import make_run, ok

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parent.parent
GOOD_CASES = [ok(Case("elbo", "numpy", batch=128), [1e5] * 9), ok(Case("elbo", "rust", batch=128), [4e4] * 9)]


def _good(**changes):
    run = make_run(GOOD_CASES, cpu="Test CPU 9000")
    return replace(run, machine=dict(run.machine, hostname="test-host"), **changes)


def _measurement_json(**changes):
    m = GOOD_CASES[0].to_json()
    m.update(changes)
    return m


def _with_measurement(doc: dict, m: dict) -> str:
    return json.dumps(dict(doc, measurements=[m]))


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A folder of good, bad and strange files; the test runs inside it."""
    monkeypatch.chdir(tmp_path)
    save(tmp_path / "good.json", _good())
    save(tmp_path / "finished.json", _good(finished="2026-01-01T00:05:00+00:00", run_id="finished-run"))
    (tmp_path / "dangling.json").symlink_to(tmp_path / "gone" / "run.json")
    save(tmp_path / "other.json", make_run(GOOD_CASES, cpu="Another CPU 1"))
    save(tmp_path / "disjoint.json", make_run([ok(Case("iwae", "numpy"), [1e5] * 9)]))
    shutil.copy(DATA / "run_v1.json", tmp_path / "v1.json")
    doc = _good().to_json()
    bad = {
        "truncated.json": (tmp_path / "good.json").read_text()[:300],
        "garbage.json": "this is not json",
        "empty.json": "",
        "array.json": "[1, 2, 3]",
        "future.json": json.dumps(dict(doc, schema="elbolab.run/99")),
        "foreign.json": json.dumps(dict(doc, schema="other.tool/1")),
        "noschema.json": json.dumps({"measurements": []}),
        "deep.json": "[" * 200_000 + "]" * 200_000,
        "deepnotes.json": json.dumps(dict(doc, measurements=[])).replace(
            '"config": {}', '"config": ' + "[" * 50_000 + "]" * 50_000
        ),
        "nan.json": json.dumps(dict(doc, limits={"peak_flops": float("nan")})),
        "notalist.json": json.dumps(dict(doc, measurements={"a": 1})),
        "emptyid.json": json.dumps(dict(doc, run_id="")),
        "machinelist.json": json.dumps(dict(doc, machine=[1])),
        "loops_str.json": _with_measurement(doc, _measurement_json(loops="3")),
        "loops_neg.json": _with_measurement(doc, _measurement_json(loops=-1)),
        "loops_bool.json": _with_measurement(doc, _measurement_json(loops=True)),
        "loops_zero.json": _with_measurement(doc, _measurement_json(loops=0)),
        "samples_neg.json": _with_measurement(doc, _measurement_json(samples_ns=[-5.0])),
        "samples_str.json": _with_measurement(doc, _measurement_json(samples_ns="fast")),
        "samples_inf.json": _with_measurement(doc, _measurement_json(samples_ns=[1.0, "INF"])).replace(
            '"INF"', "Infinity"
        ),
        "status.json": _with_measurement(doc, _measurement_json(status="great")),
        "batch_str.json": _with_measurement(
            doc, dict(_measurement_json(), case=dict(GOOD_CASES[0].case.to_json(), batch="128"))
        ),
        "batch_zero.json": _with_measurement(
            doc, dict(_measurement_json(), case=dict(GOOD_CASES[0].case.to_json(), batch=0))
        ),
        "case_extra.json": _with_measurement(
            doc, dict(_measurement_json(), case=dict(GOOD_CASES[0].case.to_json(), color="red"))
        ),
        "memory_neg.json": _with_measurement(doc, _measurement_json(memory={"peak_rss_bytes": -5})),
        "check_str.json": _with_measurement(doc, _measurement_json(check={"ok": "yes"})),
        "rounds.json": _with_measurement(doc, _measurement_json(rounds=[1, 1])),
        "unknown_key.json": _with_measurement(doc, _measurement_json(surprise=1)),
        "ok_no_samples.json": _with_measurement(doc, _measurement_json(samples_ns=[], loops=0)),
        "notes.txt": "my notes, not a results file\n",
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
    extreme = {  # numbers JSON allows that no measurement has, or that overflow what reads them
        "tiny_sample.json": _with_measurement(doc, _measurement_json(samples_ns=[5e-324] * 9)),
        "huge_sample.json": _with_measurement(doc, _measurement_json(samples_ns=[1e308] * 9)),
        "batch_huge.json": _with_measurement(
            doc, dict(_measurement_json(), case=dict(GOOD_CASES[0].case.to_json(), batch=10**30))
        ),
        "seed_huge.json": _with_measurement(
            doc, dict(_measurement_json(), case=dict(GOOD_CASES[0].case.to_json(), seed=2**64))
        ),
        "loops_huge.json": _with_measurement(doc, _measurement_json(loops=10**25)),
        "cost_huge.json": _with_measurement(doc, _measurement_json(cost={"bytes": 10**400, "flops": 1})),
        "overflow.json": json.dumps(dict(doc, config={"x": 1})).replace('"x": 1', '"x": 1e400'),
        "overflow_notes.json": _with_measurement(doc, _measurement_json(notes={"x": 7})).replace(
            '"x": 7', '"x": -2e999'
        ),
    }
    for name, text in extreme.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "latin1.json").write_bytes(b'{"schema": "elbolab.run/2", "run_id": "\xe9"}')
    # a lock sidecar someone planted: a link to a file they want cut down, and a FIFO
    (tmp_path / "victim.txt").write_text("a file the user cares about\n")
    (tmp_path / ".linked.json.lock").symlink_to(tmp_path / "victim.txt")
    os.mkfifo(tmp_path / ".fifolock.json.lock")
    # report -o page.html where the sibling page.md is a folder, or page2.csv a link
    (tmp_path / "page.html").write_text("<p>the previous report</p>\n")
    (tmp_path / "page.md").mkdir()
    (tmp_path / "page2.csv").symlink_to(tmp_path / "victim.txt")
    # stores that are not stores: an empty file, a one-byte file
    (tmp_path / "empty.sqlite").write_bytes(b"")
    (tmp_path / "onebyte.sqlite").write_bytes(b"x")
    with Store.open(f"sqlite:///{tmp_path / 'real.sqlite'}") as store:
        store.ingest(load(tmp_path / "finished.json"))
    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    ro = tmp_path / "readonly"
    ro.mkdir()
    save(ro / "inside.json", _good())
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    yield tmp_path
    ro.chmod(stat.S_IRWXU)


def _checksums(folder: Path) -> dict[str, str]:
    """Every path under `folder` (hidden ones too) and what it is: a regular file's checksum, a
    link's target, a folder, a FIFO. A path made, removed or changed shows."""
    out = {}
    for p in sorted(folder.rglob("*")):
        mode = p.lstat().st_mode
        if stat.S_ISLNK(mode):
            out[str(p.relative_to(folder))] = f"link to {os.readlink(p)}"
        elif stat.S_ISREG(mode):
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(folder))] = "folder" if stat.S_ISDIR(mode) else f"mode {stat.S_IFMT(mode)}"
    return out


RESULTS_FILES_BAD = {
    "missing.json": "no such results file",
    "truncated.json": "not valid JSON",
    "garbage.json": "not valid JSON",
    "empty.json": "not valid JSON",
    "array.json": "not an elbolab run",
    "future.json": "newer than this elbolab reads",
    "foreign.json": "not an elbolab run",
    "noschema.json": "not an elbolab run",
    "deep.json": "nested too deeply",
    "deepnotes.json": "nested too deeply",
    "nan.json": "not strict JSON",
    "notalist.json": "measurements",
    "emptyid.json": "run_id",
    "machinelist.json": "machine",
    "loops_str.json": "loops",
    "loops_neg.json": "loops",
    "loops_bool.json": "loops",
    "loops_zero.json": "loops < 1",
    "samples_neg.json": "samples_ns[0]",
    "samples_str.json": "samples_ns",
    "samples_inf.json": "not strict JSON",
    "status.json": "status",
    "batch_str.json": "case.batch",
    "batch_zero.json": "case.batch",
    "case_extra.json": "case.color",
    "memory_neg.json": "memory.peak_rss_bytes",
    "check_str.json": "check",
    "rounds.json": "rounds",
    "unknown_key.json": "surprise",
    "ok_no_samples.json": "status ok without samples",
    "latin1.json": "cannot read",
    "adir": "not a regular file",
    "notes.txt": "not valid JSON",
    "tiny_sample.json": "samples_ns: a sample of 4.94e-324 ns is outside",
    "huge_sample.json": "samples_ns: a sample of 1e+308 ns is outside",
    "batch_huge.json": "case.batch: 1.00e30 is beyond",
    "seed_huge.json": "case.seed: 1.84e19 is beyond 2^63 - 1",
    "loops_huge.json": "loops: 1.00e25 is beyond 2^53",
    "cost_huge.json": "cost.bytes: 1.00e400 is beyond 2^63 - 1",
    "overflow.json": "config.x: not a finite number",
    "overflow_notes.json": "measurements[0].notes.x: not a finite number",
    "n" * 300 + ".json": "cannot read (OSError: File name too long)",
}

CASES: list[tuple[list[str], str]] = []
# every reader of results files, on every kind of bad file
for reader in (
    ["show"],
    ["claims"],
    ["report", "-o", "out.html"],
    ["compare", "good.json"],
    ["gate", "good.json"],
    ["history", "ingest", "--store", "sqlite:///new.sqlite"],
):
    for name, message in RESULTS_FILES_BAD.items():
        argv = (
            [*reader[:1], name, *reader[1:]] if reader[0] in ("show", "claims", "report") else [*reader, name]
        )
        CASES.append((argv, message))

RUN = ["run", "--no-limits", "--out", "new.json"]
CASES += [
    ([*RUN, "--backend", "nope"], "unknown backend 'nope'"),
    ([*RUN, "--backend", ""], "without empty items"),
    ([*RUN, "--backend", ","], "without empty items"),
    ([*RUN, "--backend", "numpy,"], "without empty items"),
    ([*RUN, "--backend", "numpy,numpy"], "listed twice"),
    ([*RUN, "--backend", "[/bold]"], "unknown backend"),
    ([*RUN, "--workload", "elbow"], "unknown workload 'elbow'"),
    ([*RUN, "--workload", "elbo,,iwae"], "without empty items"),
    ([*RUN, "--dtype", "float16"], "unknown dtype"),
    ([*RUN, "--dtype", "float64,float64"], "listed twice"),
    ([*RUN, "--device", "tpu"], "unknown device"),
    ([*RUN, "--variant", "eps=maybe"], "unknown variant"),
    ([*RUN, "--batch", "0"], "between 1 and"),
    ([*RUN, "--batch", "-3"], "between 1 and"),
    ([*RUN, "--batch", "abc"], "expected a positive integer"),
    ([*RUN, "--batch", "1.5"], "expected a positive integer"),
    ([*RUN, "--batch", "128,128"], "listed twice"),
    ([*RUN, "--batch", ""], "without empty items"),
    ([*RUN, "--backend", "numpy", "--workload", "elbo", "--batch", "100000000"], "GiB"),
    ([*RUN, "--threads", "0"], "between 1 and"),
    ([*RUN, "--threads", "-1"], "between 1 and"),
    ([*RUN, "--threads", "100000"], "between 1 and"),
    ([*RUN, "--threads", "two"], "thread count"),
    ([*RUN, "--timeout", "0"], "positive number of seconds"),
    ([*RUN, "--timeout", "-5"], "positive number of seconds"),
    ([*RUN, "--timeout", "nan"], "positive number of seconds"),
    ([*RUN, "--timeout", "inf"], "positive number of seconds"),
    ([*RUN, "--timeout", "soon"], "expected a number of seconds"),
    ([*RUN, "--seed", "-1"], "seed must be"),
    ([*RUN, "--seed", "x"], "expected a seed"),
    ([*RUN, "--input-dim", "0"], "between 1 and"),
    ([*RUN, "--latent-dim", "-2"], "between 1 and"),
    ([*RUN, "--hidden-dim", "h"], "expected a positive integer"),
    ([*RUN, "--importance-samples", "0"], "between 1 and"),
    ([*RUN, "--resume", "--overwrite"], "not allowed with argument"),
    ([*RUN, "--frobnicate"], "unrecognized arguments"),
    (["run", "--no-limits", "--backend", "numpy", "--out", "good.json"], "exists; pass --resume"),
    (["run", "--no-limits", "--backend", "numpy", "--out", "notes.txt"], "exists; pass --resume"),
    (["run", "--no-limits", "--backend", "numpy", "--out", "notes.txt", "--overwrite"], "not valid JSON"),
    (["run", "--no-limits", "--backend", "numpy", "--out", "adir"], "not a regular file"),
    (["run", "--no-limits", "--backend", "numpy", "--out", "fifo"], "not a regular file"),
    (["run", "--no-limits", "--backend", "numpy", "--out", "/dev/null"], "not a regular file"),
    (["run", "--no-limits", "--backend", "numpy", "--out", "/dev/null", "--overwrite"], "not a regular file"),
    (["run", "--no-limits", "--backend", "numpy", "--out", ""], "empty string"),
    (["run", "--no-limits", "--backend", "numpy", "--out", "notes.txt/x.json"], "cannot create"),
    (["run", "--no-limits", "--backend", "numpy", "--out", "readonly/new.json"], "permission denied"),
    (
        ["run", "--no-limits", "--backend", "numpy", "--out", "readonly/inside.json", "--overwrite"],
        "permission denied",
    ),
    (["run", "--no-limits", "--backend", "numpy", "--out", "missing.json", "--resume"], "does not exist"),
    (["run", "--no-limits", "--backend", "numpy", "--out", "truncated.json", "--resume"], "not valid JSON"),
    (["run", "--no-limits", "--backend", "numpy", "--out", "other.json", "--resume"], "measured differently"),
    (["run", "--no-limits", "--backend", "numpy", "--out", "good.json", "--resume"], "measured differently"),
    (["run", "--no-limits", "--backend", "numpy", "--out", "future.json", "--resume"], "newer than"),
    # round two: links and FIFOs where elbolab puts its own files, names too long, huge numbers
    (
        ["run", "--no-limits", "--backend", "numpy", "--out", "linked.json"],
        ".linked.json.lock is a symbolic link",
    ),
    (
        ["run", "--no-limits", "--backend", "numpy", "--out", "fifolock.json"],
        "is not a regular file; remove it",
    ),
    (
        ["run", "--no-limits", "--backend", "numpy", "--out", "n" * 240 + ".json"],
        "the file name is 245 bytes",
    ),
    (
        ["run", "--no-limits", "--backend", "numpy", "--out", "n" * 300 + ".json"],
        "the file name is 305 bytes",
    ),
    (["run", "--no-limits", "--backend", "numpy", "--out", "dangling.json"], "a symbolic link to nothing"),
    ([*RUN, "--timeout", "1e308"], "at most 604800 seconds"),
    ([*RUN, "--timeout", "3000000"], "at most 604800 seconds"),
    ([*RUN, "--backend", ",".join(["a"] * 60_000)], "60000 names in one list; at most 1000"),
    ([*RUN, "--backend", ",".join(f"b{i}" for i in range(999)) + ",b7"], "'b7' is listed twice in 'b0,b1,b2"),
    ([*RUN, "--batch", "1" * 5000], "expected a positive integer, got '1111"),
]
TRAIN = ["train", "--out", "t.json"]
CASES += [
    ([*TRAIN, "--steps", "0"], "between 1 and"),
    ([*TRAIN, "--steps", "-10"], "between 1 and"),
    ([*TRAIN, "--steps", "many"], "number of steps"),
    ([*TRAIN, "--steps", "99999999999"], "between 1 and"),
    ([*TRAIN, "--backend", "nope"], "unknown backend 'nope'"),
    ([*TRAIN, "--backend", "numpy,,torch"], "without empty items"),
    ([*TRAIN, "--dtype", "float8"], "unknown dtype"),
    (["train"], "required: --out"),
    (["train", "--out", ""], "empty string"),
    (["train", "--backend", "numpy", "--out", "adir"], "not a regular file"),
    (["train", "--backend", "numpy", "--out", "truncated.json"], "not valid JSON"),
    (["train", "--backend", "numpy", "--out", "notes.txt"], "not valid JSON"),
    (["train", "--backend", "numpy", "--out", "other.json"], "measured differently"),
    (["train", "--backend", "numpy", "--out", "readonly/inside.json"], "permission denied"),
]
CASES += [
    (["show", "good.json", "--batch", "abc"], "expected a positive integer"),
    (["show", "good.json", "--threads", "0"], "between 1 and"),
    (["show", "good.json", "--backend", ""], "without empty items"),
    (["show"], "required: results"),
    (["show", ""], "empty string"),
    (["report", "good.json", "-o", "out.pdf"], "ending in .html"),
    (["report", "good.json", "-o", ""], "ending in .html"),
    (["report", "good.json", "-o", "adir"], "ending in .html"),
    (["report", "good.json", "-o", "out.html", "--baseline", "nope"], "baseline backend 'nope'"),
    (["report", "good.json", "-o", "readonly/r.html"], "cannot write"),
    (["report", "good.json", "-o", "notes.txt/r.html"], "cannot create"),
    (["report"], "required: RUN.json"),
    (["claims"], "required: RUN.json"),
    (["compare", "good.json"], "required: HEAD"),
    (["compare", "good.json", "other.json"], "different machines"),
    (["compare", "good.json", "disjoint.json"], "no cases in common"),
    (["compare", "good.json", "good.json", "--threshold", "-1"], "threshold must be a positive"),
    (["compare", "good.json", "good.json", "--threshold", "0"], "threshold must be a positive"),
    (["compare", "good.json", "good.json", "--threshold", "nan"], "finite fraction"),
    (["compare", "good.json", "good.json", "--threshold", "ten"], "fraction such as 0.1"),
    (["compare", "good.json", "good.json", "--threshold", "50"], "threshold must be a positive"),
    (["compare", "good.json", "good.json", "--noise-band", "0.5"], "noise band"),
    (["compare", "good.json", "good.json", "--noise-band", "-0.1"], "noise band"),
    (["compare", "good.json", "good.json", "--threshold-for", "elbo"], "expected WORKLOAD=FRACTION"),
    (["compare", "good.json", "good.json", "--threshold-for", "elbow=0.2"], "unknown workload 'elbow'"),
    (["compare", "good.json", "good.json", "--threshold-for", "elbo=abc"], "expected WORKLOAD=FRACTION"),
    (["compare", "good.json", "other.json", "--normalize", "--reference", "rust::"], "BACKEND"),
    (["compare", "good.json", "other.json", "--normalize", "--reference", "torch"], "--normalize needs"),
    (["compare", "good.json", "good.json", "--markdown", "adir"], "cannot write the Markdown"),
    (["compare", "good.json", "good.json", "--markdown", "readonly/s.md"], "cannot write the Markdown"),
    (["gate", "good.json"], "gate needs BASE and HEAD"),
    (["gate", "good.json", "good.json", "good.json"], "gate needs BASE and HEAD"),
    (["gate"], "gate needs BASE and HEAD"),
    (["gate", "good.json", "good.json", "--base", "HEAD"], "not both"),
    (["gate", "good.json", "good.json", "--quick"], "only apply with --base"),
    (["gate", "good.json", "good.json", "--backend", "numpy"], "only apply with --base"),
    (["gate", "good.json", "good.json", "--input-dim", "7"], "only apply with --base"),
    (["gate", "good.json", "other.json"], "different machines"),
    (["gate", "--base", "no-such-ref-xyz"], "is not a git revision"),
    (["gate", "--base", "HEAD", "--rounds", "0"], "between 1 and"),
    (["gate", "--base", "HEAD", "--rounds", "x"], "expected a positive integer"),
    (["gate", "--base", "HEAD", "--timeout", "nan"], "positive number of seconds"),
    (["gate", "--base", "HEAD", "--case-budget", "0"], "positive number of seconds"),
    (["gate", "good.json", "good.json", "--case-budget", "60"], "only apply with --base"),
    (["gate", "--base", "HEAD", "--backend", "numpy,numpy"], "listed twice"),
    (["gate", "--base", "HEAD", "--threshold", "-2"], "threshold must be a positive"),
    (["report", "good.json", "-o", "page.html"], "page.md: not a regular file (a directory)"),
    (["report", "good.json", "-o", "page2.html"], "page2.csv: a symbolic link; refusing"),
    (
        ["compare", "good.json", "good.json", "--markdown", "fifo"],
        "cannot write the Markdown report (not a regular file (a FIFO))",
    ),
    (
        ["gate", "good.json", "good.json", "--markdown", "fifo"],
        "cannot write the Markdown report (not a regular file (a FIFO))",
    ),
    (["compare", "good.json", "good.json", "--markdown", "/dev/null"], "cannot write the Markdown report"),
    (["history", "runs", "--store", "sqlite:///nowhere/h.sqlite"], "no such store"),
    (["history", "changes", "--fail-on-regression", "--store", "sqlite:///typo.sqlite"], "no such store"),
    (["history", "show", "--case", "elbo numpy", "--store", "sqlite:///typo.sqlite"], "no such store"),
    (["history", "page", "-o", "t.html", "--store", "sqlite:///typo.sqlite"], "no such store"),
    (["history", "runs", "--store", "sqlite:///empty.sqlite"], "an empty file, not an elbolab store"),
    (["history", "runs", "--store", "sqlite:///onebyte.sqlite"], "not a SQLite database"),
    (["history", "runs", "--store", "sqlite:///notes.txt"], "not a SQLite database"),
    (
        ["history", "runs", "--store", "sqlite:///real.sqlite?timeout=abc"],
        "could not convert string to float: 'abc'",
    ),
    (
        ["history", "ingest", "finished.json", "--store", "sqlite:///h.sqlite?timeout=abc"],
        "could not convert",
    ),
    (["history", "ingest", "good.json", "--store", "sqlite:///new.sqlite"], "good.json: run r is unfinished"),
    (["history", "ingest", "finished.json", "good.json", "--store", "sqlite:///new.sqlite"], "is unfinished"),
    (["history", "runs", "--store", "sqlite:///" + "s" * 300], "File name too long"),
    (["list", "--verbose"], "unrecognized arguments"),
    ([], "the following arguments are required"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a)[:80] or "<none>" for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_no_file(files, capsys, argv, message):
    if any("readonly/" in a for a in argv) and os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder: no permission error to test")
    before = _checksums(files)
    if argv[:2] == ["gate", "--base"]:
        os.chdir(ROOT)  # the A/B gate works on the git checkout it runs in (monkeypatch restores)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert message in lines[0] and "Traceback" not in err, lines[0]
    assert lines[0].startswith("elbolab")
    assert _checksums(files) == before  # no file, folder or link was created, changed or removed


def test_the_suite_is_large():
    assert len(CASES) >= 150


def test_a_plugin_that_does_not_import_is_listed_not_fatal(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_plugin.py").write_text("def oops(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ELBOLAB_BACKENDS", "broken_plugin:backend")
    assert main(["list"]) == 0
    assert "not loaded" in capsys.readouterr().out


def test_a_backend_name_with_markup_prints_as_text(files, capsys):
    run = make_run([ok(Case("elbo", "[/bold]"), [1e5] * 9), ok(Case("elbo", "numpy"), [1e5] * 9)])
    save(files / "markup.json", run)
    assert main(["show", "markup.json"]) == 0
    assert main(["compare", "markup.json", "markup.json"]) == 0
    assert main(["gate", "markup.json", "markup.json"]) == 0
    assert "[/bold]" in capsys.readouterr().out


def test_broken_pipe_is_quiet(files):
    import subprocess
    import sys

    proc = subprocess.run(
        f"{sys.executable} -m elbolab.cli claims good.json --json | head -c 10",
        shell=True, capture_output=True, text=True, cwd=files,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_gate_that_compared_nothing_has_not_passed(files, capsys):
    skipped = make_run([Measurement(c.case, "skipped", "no GPU") for c in GOOD_CASES])
    save(files / "skipped.json", skipped)
    assert main(["gate", "good.json", "skipped.json"]) == 2
    assert "NOT PASSED" in capsys.readouterr().out
    assert main(["gate", "good.json", "skipped.json", "--allow-missing"]) == 2  # still nothing compared
    half = make_run([GOOD_CASES[0], Measurement(GOOD_CASES[1].case, "skipped", "rust not built")])
    save(files / "half.json", half)
    assert main(["gate", "good.json", "half.json"]) == 2
    assert "were not measured in head" in capsys.readouterr().out
    assert main(["gate", "good.json", "half.json", "--allow-missing"]) == 0
