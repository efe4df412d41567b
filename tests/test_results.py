"""The results file and the measurement model: valid on disk at every moment, validated on load,
versioned (an older schema migrated, a newer one refused), strict JSON."""

import json
import math
import os
import re
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


# ---------------------------------------------------------------- round two: files elbolab makes


def test_a_link_planted_as_the_lock_is_refused_and_its_target_untouched(tmp_path):
    from elbolab.model.errors import UsageError
    from elbolab.store.results import FileLock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / ".run.json.lock").symlink_to(victim)
    with pytest.raises(UsageError, match="is a symbolic link; remove it"):
        FileLock(tmp_path / "run.json").acquire()
    assert victim.read_text() == "precious\n"  # not cut down to a process id
    assert (tmp_path / ".run.json.lock").is_symlink()  # and the link left as it was
    # a hard link to the victim as the sidecar: the same file under two names
    (tmp_path / ".run.json.lock").unlink()
    os.link(victim, tmp_path / ".run.json.lock")
    with pytest.raises(UsageError, match="hard links"):
        FileLock(tmp_path / "run.json").acquire()
    assert victim.read_text() == "precious\n"


def test_a_fifo_as_the_lock_is_refused_without_blocking(tmp_path):
    from elbolab.model.errors import UsageError
    from elbolab.store.results import FileLock

    os.mkfifo(tmp_path / ".run.json.lock")
    with pytest.raises(UsageError, match="not a regular file; remove it"):
        FileLock(tmp_path / "run.json").acquire()


def test_the_lock_removes_only_the_sidecar_it_locked(tmp_path):
    from elbolab.store.results import FileLock

    lock = FileLock(tmp_path / "run.json").acquire()
    (tmp_path / ".run.json.lock").unlink()  # someone removed it and put a file of theirs there
    (tmp_path / ".run.json.lock").write_text("theirs\n")
    lock.release()
    assert (tmp_path / ".run.json.lock").read_text() == "theirs\n"
    lock = FileLock(tmp_path / "run.json").acquire()
    lock.release()
    assert not (tmp_path / ".run.json.lock").exists()


def test_only_temporaries_named_as_elbolab_names_them_are_removed(tmp_path):
    from elbolab.store.results import remove_stale_temporaries

    out = tmp_path / "out.json"
    keep = {".out.json.keep.tmp": "the user's own\n", ".out.json.elbolab-12-abc.tmp": "too short a tail\n",
            ".out.json.elbolab-x-abcdefgh.tmp": "no pid\n", ".other.json.elbolab-12-abcdefgh.tmp": "another file's\n"}  # fmt: skip
    for name, text in keep.items():
        (tmp_path / name).write_text(text)
    stale = tmp_path / ".out.json.elbolab-4242-ab_d3fgh.tmp"
    stale.write_text("{half a run")
    (tmp_path / ".out.json.elbolab-4243-zzzzzzzz.tmp").symlink_to(tmp_path / ".out.json.keep.tmp")
    assert remove_stale_temporaries(out) == [stale]
    assert {p.name: p.read_text() for p in tmp_path.iterdir() if p.name in keep} == keep
    assert (tmp_path / ".out.json.elbolab-4243-zzzzzzzz.tmp").is_symlink()  # a link is never removed


def test_a_write_never_replaces_a_link_or_a_special_file(tmp_path):
    from elbolab.model.errors import UsageError
    from elbolab.store.results import output_path, write_text_atomic

    target = tmp_path / "real.json"
    target.write_text("{}")
    (tmp_path / "link.json").symlink_to(target)
    with pytest.raises(UsageError, match="a symbolic link; refusing to replace it"):
        write_text_atomic(tmp_path / "link.json", "x")
    assert (tmp_path / "link.json").is_symlink() and target.read_text() == "{}"
    # a link the user names as an output is resolved once, explicitly: its target is written
    assert output_path(tmp_path / "link.json") == target
    with pytest.raises(UsageError, match="a symbolic link; refusing to write through it"):
        output_path(tmp_path / "link.json", follow_link=False)
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere" / "x.json")
    with pytest.raises(UsageError, match="a symbolic link to nothing"):
        output_path(tmp_path / "dangling.json")
    assert not (tmp_path / "nowhere").exists()
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UsageError, match=r"not a regular file \(a FIFO\)"):
        output_path(tmp_path / "fifo")


def test_run_ids_are_unique_within_a_second():
    from elbolab.store.results import unique_run_id

    started = "2026-01-01T00:00:00+00:00"
    ids = {unique_run_id(f"ab-base-{started}") for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("ab-base-2026-01-01T00:00:00+00:00-") for i in ids)
    assert len({unique_run_id() for _ in range(1000)}) == 1000


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("samples_ns", [5e-324], "a sample of 4.94e-324 ns"),
        ("samples_ns", [1e308], "a sample of 1e+308 ns"),
        ("device_samples_ns", [1e16], "device_samples_ns: a sample of 1e+16 ns"),
        ("loops", 2**53 + 1, "loops: 9.00e15 is beyond 2^53"),
        ("first_call_ns", 2**63, "first_call_ns: 9.22e18 is beyond 2^63 - 1"),
        ("memory", {"peak_rss_bytes": 10**30}, "memory.peak_rss_bytes: 1.00e30"),
        ("calibration", [[1, 10**19]], "calibration[0]: 1.00e19"),
    ],
)
def test_numbers_beyond_what_the_lab_computes_with_are_refused(tmp_path, field, value, message):
    doc = replace(_run(), measurements=(_ok(),)).to_json()
    doc["measurements"][0][field] = value
    path = tmp_path / "x.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ResultsError, match=re.escape(message)):
        load(path)


def test_the_largest_valid_numbers_load_and_print_and_go_out_as_strict_json(tmp_path):
    from elbolab.cli.measure import show_json
    from elbolab.store.results import MAX_LOOPS, MAX_SEED, MAX_SIZE, SAMPLE_NS

    case = Case("elbo", "numpy", batch=MAX_SIZE, seed=MAX_SEED)
    m = Measurement(
        case, "ok", loops=MAX_LOOPS, samples_ns=(SAMPLE_NS[0], SAMPLE_NS[1]), first_call_ns=2**63 - 1
    )
    path = tmp_path / "x.json"
    save(path, replace(_run(), measurements=(m,)))
    run = load(path)
    assert run.measurements[0].case.seed == MAX_SEED
    text = json.dumps(show_json(run), allow_nan=False)  # strict: every derived figure finite
    assert json.loads(text)["cases"][0]["median_ns"] > 0


def test_a_current_file_loads_the_same_by_either_path(tmp_path):
    """The fast path (the text validated as it is) and the full one (parsed, migrated) agree; a file
    the fast path cannot decide (a NaN in a string) takes the full path."""
    from elbolab.store import results

    run = replace(
        _run(), measurements=(_ok(), _ok(Case("elbo", "rust")), replace(_ok(), reason="got NaN here"))
    )
    path = tmp_path / "x.json"
    save(path, run)
    text = path.read_text()
    assert results._load_current(text) is None  # 'NaN' in a reason: not decided here
    save(path, replace(run, measurements=run.measurements[:2]))
    text = path.read_text()
    fast = results._load_current(text)
    assert fast is not None and fast == results.validate(json.loads(text), "x")
