"""The command line: bad input is one line and exit code 2; good input produces a valid run."""

import json
import subprocess
import sys

import pytest

from harness.cli import main
from harness.results import load


def _run_cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--backend", "nope"], "unknown backend 'nope'"),
        (["run", "--workload", "elbow"], "unknown workload 'elbow'"),
        (["run", "--batch", "0"], "batch must be a positive integer"),
        (["run", "--batch", "-3"], "batch must be a positive integer"),
        (["run", "--batch", "abc"], "expected comma-separated integers"),
        (["run", "--dtype", "float16"], "unknown dtype"),
        (["run", "--threads", "0"], "thread count must be a positive integer"),
        (["run", "--backend", "numpy", "--workload", "elbo", "--batch", "100000000000"], "GiB"),
        (["run", "--backend", "numpy", "--out", "/nonexistent/dir/x.json"], "does not exist"),
        (["show", "/nonexistent.json"], "no such results file"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        code = main(args)
        raise SystemExit(code)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 or err.splitlines()[-1].startswith("elbolab: error")


@pytest.mark.parametrize(
    "content",
    ['{"schema": "elbolab.run/1", "measurements": [', "garbage", '{"schema": "elbolab.run/7"}'],
)
def test_corrupt_truncated_or_future_results_file_is_exit_2(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, out, err = _run_cli("show", str(path))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_run_show_and_list_end_to_end(tmp_path):
    out = tmp_path / "r.json"
    code, stdout, err = _run_cli(
        "run", "--backend", "numpy", "--workload", "elbo", "--batch", "1,128", "--dtype", "float64",
        "--threads", "1", "--quick", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    run = load(out)
    assert run.finished and len(run.measurements) == 4  # 2 batches x 2 variants
    assert all(m.status == "ok" and m.check.ok for m in run.measurements)
    m = run.measurements[0]
    assert len(m.samples_ns) >= 5 and m.loops >= 1 and m.first_call_ns > 0
    assert m.memory.peak_rss_bytes > 0 and m.cost.bytes > 0
    assert run.machine["cores"] >= 1 and run.software["numpy"]
    assert "numpy" in run.software["backends"]
    assert run.limits.get("memory_bandwidth_bytes_per_s", 0) > 0
    assert "elbo" in stdout and "numpy" in stdout  # the summary table

    code, stdout, _ = _run_cli("show", str(out))
    assert code == 0 and "eps=sampled" in stdout

    code, stdout, _ = _run_cli("list")
    assert code == 0 and "numpy" in stdout and "available" in stdout


def test_train_records_agreeing_curves(tmp_path):
    out = tmp_path / "t.json"
    code, _, err = _run_cli("train", "--backend", "numpy", "--steps", "40", "--out", str(out))
    assert code == 0, err
    training = load(out).training
    assert {(e.backend, e.dtype) for e in training} == {("numpy", "float64"), ("numpy", "float32")}
    for e in training:
        assert e.status == "ok" and len(e.losses) == 40
        assert e.losses[-1] < e.losses[0]  # it learns
        assert e.learned and e.max_bound_used < 1 and e.less_accurate_steps == 0
    json.dumps([e.to_json() for e in training])
