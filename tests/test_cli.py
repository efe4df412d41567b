"""The command line end to end: good input produces a valid run (bad input: tests/test_bad_inputs.py)."""

import json
import subprocess
import sys

from elbolab.measure.training import final_loss
from elbolab.store.results import load


def _run_cli(*args):
    proc = subprocess.run(
        [sys.executable, "-m", "elbolab.cli", *args], capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_run_show_and_list_end_to_end(tmp_path):
    out = tmp_path / "r.json"
    code, stdout, err = _run_cli(
        "run", "--backend", "numpy", "--workload", "elbo", "--batch", "1,128", "--dtype", "float64",
        "--threads", "1", "--quick", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    run = load(out)
    # 2 batches x 2 variants, each with numpy's null control
    assert run.finished and len(run.measurements) == 8
    assert sum(m.case.backend == "numpy-control" for m in run.measurements) == 4
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
    code, _, err = _run_cli("train", "--backend", "numpy", "--steps", "150", "--out", str(out))
    assert code == 0, err
    training = load(out).training
    assert {(e.backend, e.dtype) for e in training} == {("numpy", "float64"), ("numpy", "float32")}
    for e in training:
        assert e.status == "ok" and len(e.losses) == 150
        assert e.losses[-1] < e.losses[0]  # it learns
        # below the best model that ignores its input after 150 steps (the mean of the last 20 steps'
        # minibatch losses); every step within its bound
        assert e.learned and final_loss(e.losses) < e.bias_only_loss
        assert e.max_bound_used < 1 and e.less_accurate_steps == 0
    json.dumps([e.to_json() for e in training])
