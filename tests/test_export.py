"""`elbolab export` read by the other tools themselves, and pytest-benchmark JSON into the history store.

- pyperf: `python -m pyperf compare_to` and `pyperf stats` read our file and see the change we made;
- Bencher: the file validates against the Bencher Metric Format's published JSON Schema;
- pytest-benchmark: `pytest-benchmark compare --csv` reads our file, and its statistics are the ones
  pytest-benchmark's own Stats computes from the same data;
- a real pytest-benchmark run of elbolab's suite (benchmarks/) is ingested into the store, and an
  export read back is the run it came from.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from elbolab.cli import main
from elbolab.model.case import Case
from elbolab.model.measurement import Measurement
from elbolab.store.database import Store
from elbolab.store.formats import Stats, from_pytest_benchmark, to_bencher, to_pyperf, to_pytest_benchmark
from elbolab.store.results import ResultsError, save
from tests.builders import make_run, ok

ROOT = Path(__file__).resolve().parent.parent
ELBO = Case("elbo", "numpy", batch=128)
GRAD = Case("elbo_grad", "rust", batch=1024, dtype="float32")
BROKEN = Case("iwae", "numba")


def rounds_of(case: Case, median_ns: float, seed: int) -> Measurement:
    """A case measured in 4 rounds of 3 samples (50 calls each), with 2% noise."""
    rng = np.random.default_rng(seed)
    per_call = median_ns * np.exp(rng.normal(0, 0.02, 12))
    m = ok(case, per_call, loops=50)
    return Measurement(
        m.case, "ok", loops=50, samples_ns=m.samples_ns, rounds=(3, 3, 3, 3), first_call_ns=5_000_000
    )


def runs(tmp_path):
    """base and head: elbo 1.3x slower in head, elbo_grad unchanged, iwae failed in both."""
    failed = Measurement(BROKEN, "failed", "worker died")
    base = make_run([rounds_of(ELBO, 50_000, 1), rounds_of(GRAD, 20_000, 2), failed], run_id="base")
    head = make_run([rounds_of(ELBO, 65_000, 3), rounds_of(GRAD, 20_000, 4), failed], run_id="head")
    for r in (base, head):
        save(tmp_path / f"{r.run_id}.json", r)
    return base, head


def export(tmp_path, fmt: str, name: str, capsys) -> Path:
    out = tmp_path / f"{name}.{fmt}.json"
    assert main(["export", "--format", fmt, str(tmp_path / f"{name}.json"), "-o", str(out)]) == 0
    assert "1 case(s) not 'ok'" in capsys.readouterr().err  # the failed case is said to be left out
    return out


def tool(*argv: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


# ------------------------------------------------------------------------------------- pyperf


def test_pyperf_compare_to_reads_our_files_and_sees_the_slowdown(tmp_path, capsys):
    pytest.importorskip("pyperf")
    base, _ = runs(tmp_path)
    a, b = export(tmp_path, "pyperf", "base", capsys), export(tmp_path, "pyperf", "head", capsys)
    out = tool("pyperf", "compare_to", str(a), str(b), "--table").stdout
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.count("|") >= 4}
    slower = re.search(r"([0-9.]+)x slower", rows[ELBO.label()])
    assert slower and float(slower[1]) == pytest.approx(1.3, rel=0.03), out  # pyperf compares means
    # pyperf's own t-test finds no change in elbo_grad (measured alike in both), and no failed case
    assert f"not significant (1): {GRAD.label()}" in out and "iwae" not in out
    stats = tool("pyperf", "stats", str(a)).stdout
    assert "Number of run with values: 4" in stats and "Loop iterations per value: 50" in stats
    # pyperf's median of the values is ours: every per-call sample went out
    import pyperf

    suite = pyperf.BenchmarkSuite.load(str(a))
    bench = suite.get_benchmark(ELBO.label())
    assert math.isclose(bench.median() * 1e9, base.measurements[0].median_ns, rel_tol=1e-12)
    assert len(bench.get_runs()) == 4 and bench.get_nvalue() == 12


def test_pyperf_json_holds_the_first_call_as_a_warmup_and_the_machine(tmp_path):
    base, _ = runs(tmp_path)
    doc = to_pyperf(base)
    first = doc["benchmarks"][0]["runs"][0]
    assert doc["version"] == "1.0" and first["warmups"] == [[1, 5_000_000 * 1e-9]]
    assert (
        doc["metadata"]["cpu_model_name"] == "Test CPU 9000" and doc["metadata"]["elbolab_run_id"] == "base"
    )


# ------------------------------------------------------------------------------------ Bencher


def test_bencher_json_validates_against_bencher_s_published_schema(tmp_path, capsys):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "tests" / "data" / "bencher-bmf.schema.json").read_text())
    base, _ = runs(tmp_path)
    doc = json.loads(export(tmp_path, "bencher", "base", capsys).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(doc)
    latency = doc[ELBO.label()]["latency"]
    s = base.measurements[0].summary
    assert (latency["value"], latency["lower_value"], latency["upper_value"]) == (s.median, *s.ci95)
    assert set(doc) == {ELBO.label(), GRAD.label()}
    # the validator does catch what Bencher would refuse: a measure without its value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"x": {"latency": {"lower_value": 1.0}}}, schema)


def test_bencher_bounds_surround_the_value(tmp_path):
    base, _ = runs(tmp_path)
    for measures in to_bencher(base).values():
        m = measures["latency"]
        assert m["lower_value"] <= m["value"] <= m["upper_value"]


# --------------------------------------------------------------------------- pytest-benchmark


def test_our_statistics_are_pytest_benchmark_s_own():
    stats_mod = pytest.importorskip("pytest_benchmark.stats")
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 6, 7, 8, 13, 16):  # every branch of its quartile methods
        data = list(rng.lognormal(-10, 0.3, n))
        theirs = stats_mod.Stats()
        for x in data:
            theirs.update(x)
        ours, expected = Stats(data).as_dict(), theirs.as_dict()
        assert ours.pop("outliers") == expected.pop("outliers")
        assert ours == pytest.approx(expected, rel=1e-12)


def test_pytest_benchmark_compare_reads_our_files(tmp_path, capsys):
    pytest.importorskip("pytest_benchmark")
    base, _ = runs(tmp_path)
    a, b = (
        export(tmp_path, "pytest-benchmark", "base", capsys),
        export(tmp_path, "pytest-benchmark", "head", capsys),
    )
    prefix = tmp_path / "table"
    proc = tool(
        "pytest_benchmark", "compare", str(a), str(b), "--csv", str(prefix), "--columns", "min,median,rounds"
    )
    assert "test_workload[elbo-numpy-cpu-float64-B=128-t=1]" in proc.stdout
    (path,) = tmp_path.glob("table*.csv")
    rows = list(csv.DictReader(path.open()))
    mine = [r for r in rows if "elbo-numpy" in r["name"]]
    assert len(mine) == 2  # one row per file
    medians = sorted(float(r["median"]) for r in mine)
    assert medians[1] / medians[0] == pytest.approx(1.3, rel=0.05)
    assert float(mine[0]["rounds"]) == 12


def test_an_export_read_back_is_the_run_it_came_from(tmp_path):
    base, _ = runs(tmp_path)
    path = tmp_path / "pb.json"
    path.write_text(json.dumps(to_pytest_benchmark(base)))
    back = from_pytest_benchmark(path)
    assert [m.case for m in back.measurements] == [m.case for m in base.measurements if m.timed_ok]
    for a, b in zip(back.measurements, (m for m in base.measurements if m.timed_ok), strict=True):
        assert a.loops == b.loops
        np.testing.assert_allclose(a.per_call_ns, b.per_call_ns, rtol=1e-12)
    assert back.git.commit == base.git.commit and back.config["imported"]["from"] == "pytest-benchmark"
    assert from_pytest_benchmark(path).run_id == back.run_id  # the file's digest: stored once


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"x": 1}, "no 'benchmarks' list"),
        (
            {"benchmarks": [{"name": "test_other", "stats": {"data": [1e-6], "iterations": 1}}]},
            "no benchmark names an elbolab case",
        ),
        (
            {
                "benchmarks": [
                    {
                        "name": "t",
                        "extra_info": {"case": {"workload": "elbo", "backend": "numpy"}},
                        "stats": {"iterations": 1, "median": 1e-6},
                    }
                ]
            },
            "--benchmark-save-data",
        ),
    ],
)
def test_pytest_benchmark_json_that_cannot_be_a_run_is_one_line(tmp_path, doc, says):
    path = tmp_path / "pb.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ResultsError, match=None) as err:
        from_pytest_benchmark(path)
    assert says in str(err.value)


@pytest.mark.slow
def test_a_real_pytest_benchmark_run_of_our_suite_goes_into_the_history_store(tmp_path, capsys):
    """pytest-benchmark itself times one case of benchmarks/ and writes its JSON; the history store
    ingests it as a run of that case, and ingesting it again changes nothing."""
    pytest.importorskip("pytest_benchmark")
    out = tmp_path / "pb.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/test_elbo_benchmarks.py",
         "-k", "elbo-numpy-cpu-float64-B1]", "--benchmark-only", "--benchmark-json", str(out),
         "--benchmark-save-data", "--benchmark-min-rounds=5", "--benchmark-max-time=0.05", "--benchmark-warmup=off"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        # run under `pytest -n`, this process is an xdist worker: its variables would make
        # pytest-benchmark believe the inner run is distributed too, and disable itself
        env={k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    assert main(["history", "ingest", "--format", "pytest-benchmark", "--store", url, str(out)]) == 0
    assert main(["history", "ingest", "--format", "pytest-benchmark", "--store", url, str(out)]) == 0
    assert "already stored" in capsys.readouterr().out
    with Store.open(url) as store:
        (stored,) = store.runs()
        run = store.load_run(stored.run_id)
    (m,) = run.measurements
    assert m.case == Case("elbo", "numpy", batch=1) and m.timed_ok and m.per_call_ns.size >= 5
    raw = json.loads(out.read_text())["benchmarks"][0]["stats"]
    assert m.median_ns == pytest.approx(raw["median"] * 1e9, rel=1e-9)
