"""The results file: valid on disk at every moment, validated on load."""

import json

import pytest

from harness.case import Case
from harness.results import SCHEMA, ResultsError, RunFile, load, measurement, new_run, save, summary_of


def _doc():
    return new_run("r1", "2026-01-01T00:00:00+00:00", {"cpu": "x"}, {"python": "3"}, {"commit": None}, {})


def test_roundtrip_and_summary_recomputed_from_raw_samples(tmp_path):
    path = tmp_path / "run.json"
    run = RunFile(path, _doc())
    save(path, run.doc)
    case = Case("elbo", "numpy", batch=128)
    run.add(measurement(case, "ok", loops=10, samples_ns=[1000, 1100, 1200, 900, 1000], first_call_ns=5))
    doc = load(path)
    m = doc["measurements"][0]
    assert m["case"] == case.to_json() and m["samples_ns"] == [1000, 1100, 1200, 900, 1000]
    assert summary_of(m).median == 100.0  # per call: samples / loops
    assert m["per_call_ns"]["median"] == 100.0
    assert run.done_keys() == {case.key()}


def test_every_status_kept_with_reason(tmp_path):
    path = tmp_path / "run.json"
    run = RunFile(path, _doc())
    for status in ("skipped", "failed", "timeout", "incorrect"):
        run.add(measurement(Case("elbo", status), status, f"because {status}"))
    assert [m["reason"] for m in load(path)["measurements"]] == [
        "because skipped", "because failed", "because timeout", "because incorrect"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"schema": "elbolab.run/1", "run_id"', "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "not an elbolab run"),
        ('{"schema": "elbolab.run/9"}', "newer than this elbolab reads"),
        ('{"schema": "other/1"}', "not an elbolab run"),
        ('{"schema": "elbolab.run/1"}', "missing fields"),
    ],
)
def test_bad_files_rejected_with_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ResultsError, match=message) as info:
        load(path)
    assert "\n" not in str(info.value)


def test_measurement_with_bad_status_or_samples_rejected(tmp_path):
    doc = _doc()
    doc["measurements"].append(measurement(Case("elbo", "numpy"), "ok", loops=1, samples_ns=[5]))
    path = tmp_path / "r.json"
    bad = json.loads(json.dumps(doc))
    bad["measurements"][0]["status"] = "great"
    path.write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match="unknown status"):
        load(path)
    bad["measurements"][0]["status"] = "ok"
    bad["measurements"][0]["samples_ns"] = [-1]
    path.write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match="positive"):
        load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ResultsError, match="no such results file"):
        load(tmp_path / "nope.json")


def test_save_is_atomic_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "run.json"
    save(path, _doc())
    before = path.read_text()

    class Boom:
        pass

    with pytest.raises(TypeError):
        save(path, dict(_doc(), bad=Boom()))  # serialisation fails midway
    assert path.read_text() == before  # the old complete file survives
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    assert load(path)["schema"] == SCHEMA
