"""The results file and the measurement model: valid on disk at every moment, validated on load,
versioned (an older schema migrated, a newer one refused), strict JSON."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from elbolab.model.case import Case
from elbolab.model.measurement import Check, Measurement
from elbolab.store.results import SCHEMA, ResultsError, RunFile, TrainingCurve, load, new_run, save, save_json

ROOT = Path(__file__).resolve().parent.parent


def _run():
    return new_run("r1", "2026-01-01T00:00:00+00:00", {"cpu": "x"}, {"python": "3"}, {"commit": None}, {})


ELBO = Case("elbo", "numpy", batch=128)


def _ok(case=ELBO, samples=(1000, 1100, 1200, 900, 1000), loops=10):
    return Measurement(case, "ok", loops=loops, samples_ns=tuple(float(s) for s in samples), first_call_ns=5)


def test_roundtrip_and_summary_recomputed_from_raw_samples(tmp_path):
    path = tmp_path / "run.json"
    run = RunFile(path, _run())
    case = Case("elbo", "numpy", batch=128)
    run.add(_ok(case))
    loaded = load(path)
    m = loaded.measurements[0]
    assert m.case == case and m.samples_ns == (1000, 1100, 1200, 900, 1000)
    assert m.summary.median == 100.0  # per call: samples / loops
    raw = json.loads(path.read_text())["measurements"][0]
    assert raw["per_call_summary_ns"]["median"] == 100.0  # for a reader of the JSON ...
    raw["per_call_summary_ns"]["median"] = 1.0  # ... and ignored on load
    path.write_text(json.dumps(dict(json.loads(path.read_text()), measurements=[raw])))
    assert load(path).measurements[0].summary.median == 100.0
    assert run.done_keys() == {case.key()}
    assert loaded == run.run


def test_a_run_in_flight_is_the_document_save_json_writes(tmp_path):
    """A RunFile joins each measurement's text, encoded once when it was added; the file must be
    the very text save_json writes for the whole document, with training curves and a header
    holding non-finite values (written as null)."""
    path = tmp_path / "run.json"
    run = RunFile(path, _run())
    run.set_limits({"memory_bandwidth_bytes_per_s": math.inf, "gpus": []})
    run.add(_ok())
    run.add(Measurement(Case("iwae", "numpy", batch=7), "failed", 'a "quoted" reason, ünïcode'))
    run.put_training([TrainingCurve("numpy", "cpu", "float64", "ok", losses=(3.0, 2.0))])
    save_json(tmp_path / "whole.json", run.run.to_json())
    assert path.read_text() == (tmp_path / "whole.json").read_text()
    assert load(path) == load(tmp_path / "whole.json")


def test_every_status_kept_with_reason(tmp_path):
    path = tmp_path / "run.json"
    run = RunFile(path, _run())
    for status in ("skipped", "failed", "timeout", "incorrect"):
        run.add(Measurement(Case("elbo", status), status, f"because {status}"))
    assert [m.reason for m in load(path).measurements] == [
        "because skipped", "because failed", "because timeout", "because incorrect"
    ]  # fmt: skip


def test_training_curves_replace_only_the_same_backend_device_and_dtype(tmp_path):
    run = RunFile(tmp_path / "run.json", _run())
    a = TrainingCurve("numpy", "cpu", "float64", "ok", losses=(3.0, 2.0))
    b = TrainingCurve("numpy", "cpu", "float32", "ok", losses=(3.0, 2.5))
    run.put_training([a, b])
    a2 = replace(a, losses=(3.0, 1.0))
    run.put_training([a2])
    assert set(load(run.path).training) == {a2, b}


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"schema": "elbolab.run/2", "run_id"', "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "not an elbolab run"),
        ('{"schema": "elbolab.run/9"}', "newer than this elbolab reads"),
        ('{"schema": "other/1"}', "not an elbolab run"),
        ('{"schema": "elbolab.run/x"}', "unknown schema"),
        ('{"schema": "elbolab.run/2"}', "missing field 'run_id'"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply|not valid JSON"),
    ],
)
def test_bad_files_rejected_with_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ResultsError, match=message) as info:
        load(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("status", "great", r"measurements\[0\]\.status"),
        ("samples_ns", [-1], r"measurements\[0\]\.samples_ns\[0\]: Input should be greater than 0"),
        ("samples_ns", "1000", r"measurements\[0\]\.samples_ns"),
        ("loops", 0, "loops < 1"),
        ("loops", -3, r"measurements\[0\]\.loops"),
        ("loops", "3", r"measurements\[0\]\.loops: Input should be a valid integer"),
        ("loops", True, r"measurements\[0\]\.loops"),
        ("surprise", 1, r"measurements\[0\]\.surprise"),
        ("check", {"ok": "yes"}, r"measurements\[0\]\.check"),
        ("rounds", [3], "do not add up"),
    ],
)
def test_measurement_fields_are_validated_by_path(tmp_path, field, value, message):
    doc = _run().to_json()
    doc["measurements"] = [_ok().to_json()]
    doc["measurements"][0][field] = value
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ResultsError, match=message) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_case_fields_are_validated(tmp_path):
    doc = _run().to_json()
    m = _ok().to_json()
    m["case"]["batch"] = "128"
    doc["measurements"] = [m]
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ResultsError, match=r"measurements\[0\]\.case\.batch"):
        load(path)


def test_an_ok_status_needs_samples_and_a_passing_check():
    with pytest.raises(ValueError, match="status ok without samples"):
        Measurement(Case("elbo", "numpy"), "ok")
    with pytest.raises(ValueError, match="check failed"):
        Measurement(Case("elbo", "numpy"), "ok", loops=1, samples_ns=(5.0,), check=Check(False, "z", "wrong"))


def test_files_are_strict_json_and_non_finite_tokens_are_refused(tmp_path):
    path = tmp_path / "run.json"
    save_json(path, {"x": math.inf, "y": [math.nan]})
    assert json.loads(path.read_text(), parse_constant=lambda t: pytest.fail(t)) == {"x": None, "y": [None]}
    doc = _run().to_json()
    doc["limits"] = {"peak_flops": float("nan")}
    path.write_text(json.dumps(doc))  # Python writes NaN unless told not to
    with pytest.raises(ResultsError, match="not strict JSON"):
        load(path)


def test_version_1_files_are_migrated():
    run = load(ROOT / "tests" / "data" / "run_v1.json")  # written with schema elbolab.run/1
    assert run.schema == SCHEMA
    iwae = next(m for m in run.measurements if m.case.workload == "iwae")
    assert iwae.case.importance_samples == 8


def test_version_1_non_finite_errors_and_pooled_rounds_are_migrated(tmp_path):
    doc = _run().to_json()
    doc["schema"] = "elbolab.run/1"
    m = _ok().to_json()
    m["case"]["samples"] = m["case"].pop("importance_samples")
    m["per_call_ns"] = m.pop("per_call_summary_ns")
    m.pop("rounds")
    m["status"] = "incorrect"
    m["check"] = {"ok": False, "max_rel_err": "INF", "tolerance": 1e-9, "worst_output": "z", "detail": "nan"}
    m["notes"] = {"samples_per_round": [2, 3], "rounds": 2}
    doc["measurements"] = [m]
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(doc).replace('"INF"', "Infinity"))
    loaded = load(path).measurements[0]
    assert loaded.check.rel_err is None and loaded.check.rel_tolerance == 1e-9
    assert loaded.rounds == (2, 3) and loaded.round_medians is not None


def test_pooling_rounds_keeps_per_call_times_and_the_first_failure():
    a, b = _ok(loops=10), _ok(samples=(2000, 2000, 2000), loops=20)
    pooled = Measurement.pool([a, b])
    assert pooled.loops == 1 and pooled.rounds == (5, 3)
    assert list(pooled.per_call_ns) == [100, 110, 120, 90, 100, 100, 100, 100]
    assert pooled.round_medians == (100.0, 100.0)
    bad = Measurement(a.case, "failed", "boom")
    assert Measurement.pool([a, bad]).reason == "round 2 of 2: boom"


def test_missing_file_and_not_a_regular_file(tmp_path):
    with pytest.raises(ResultsError, match="no such results file"):
        load(tmp_path / "nope.json")
    with pytest.raises(ResultsError, match="not a regular file"):
        load(tmp_path)


def test_save_is_atomic_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "run.json"
    save(path, _run())
    before = path.read_text()

    class Boom:
        pass

    with pytest.raises(TypeError):
        save_json(path, dict(_run().to_json(), bad=Boom()))  # serialisation fails midway
    assert path.read_text() == before  # the old complete file survives
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    assert load(path).schema == SCHEMA


def test_every_committed_results_file_loads():
    """results/ holds run files only: each one loads and validates (a summary JSON put there once
    broke `elbolab show results/...`)."""
    from pathlib import Path

    from elbolab.store.results import load

    files = sorted((Path(__file__).resolve().parent.parent / "results").glob("*.json"))
    assert files
    for f in files:
        assert load(f).measurements, f
