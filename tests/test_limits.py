"""Machine limits: structure and plausibility of a quick measurement (never absolute timings)."""

from __future__ import annotations

import json

import pytest

from elbolab.measure.probes import measure_limits
from elbolab.model.roofline import bandwidth_limit_for


@pytest.fixture(scope="module")
def limits() -> dict:
    return measure_limits([1, 2], quick=True)


def test_headline_figures_are_plausible(limits):
    assert 1e8 < limits["memory_bandwidth_bytes_per_s"] < 1e13
    assert 1e8 < limits["memory_bandwidth_single_thread_bytes_per_s"] < 1e13
    assert 1e8 < limits["cache_bandwidth_bytes_per_s"] < 1e14
    assert 1e8 < limits["peak_flops"] < 1e15
    assert 1e8 < limits["peak_flops_float32"] < 1e15
    assert limits["threads"] == [1, 2] and limits["quick"] is True


def test_breakdown_covers_sizes_threads_probes_and_dtypes(limits):
    seen = {(r["size_label"], r["threads"], r["probe"]) for r in limits["bandwidth"]}
    assert seen == {
        (s, t, p) for s in ("l2", "batch128", "llc", "dram") for t in (1, 2) for p in ("copy", "add")
    }
    for r in limits["bandwidth"]:
        assert r["bytes_per_s"] > 0 and r["reps"] >= 1 and len(r["trial_s"]) >= 3
    dram = next(s for s in limits["bandwidth_by_size"] if s["size_label"] == "dram")
    assert dram["working_set_bytes"] >= 4 * min(limits["last_level_cache_bytes"], 64 * 2**20)
    l2 = next(s for s in limits["bandwidth_by_size"] if s["size_label"] == "l2")
    assert l2["working_set_bytes"] < 1 << 20
    assert {(r["dtype"], r["threads"]) for r in limits["flops"]} == {
        (d, t) for d in ("float64", "float32") for t in (1, 2)
    }
    assert limits["peak_flops"] == max(r["flops_per_s"] for r in limits["flops"] if r["dtype"] == "float64")
    assert set(limits["method"]) >= {"bandwidth", "flops", "sizes"}


def test_limits_are_json(limits):
    assert json.loads(json.dumps(limits, allow_nan=False))["peak_flops"] == limits["peak_flops"]


def test_bandwidth_limit_for_a_working_set():
    limits = {
        "bandwidth_by_size": [
            {"size_label": "l2", "working_set_bytes": 256_000, "bytes_per_s": {"1": 90e9, "2": 150e9}},
            {"size_label": "dram", "working_set_bytes": 256_000_000, "bytes_per_s": {"1": 20e9, "2": 30e9}},
        ]
    }
    assert bandwidth_limit_for(limits, 10_000, threads=1) == (90e9, "l2")
    assert bandwidth_limit_for(limits, 10_000, threads=2) == (150e9, "l2")
    assert bandwidth_limit_for(limits, 10_000_000, threads=2) == (30e9, "dram")  # too big for l2
    assert bandwidth_limit_for(limits, 10**12) == (30e9, "dram")  # larger than every probe
    assert bandwidth_limit_for({"memory_bandwidth_bytes_per_s": 5e9}, 100) == (5e9, "dram")
    assert bandwidth_limit_for({}, 100) is None


def test_working_set_between_the_llc_probe_and_the_llc_size_is_held_to_the_llc_figure():
    from elbolab.model.roofline import bandwidth_limit_for

    limits = {
        "last_level_cache_bytes": 32 * 2**20,
        "bandwidth_by_size": [
            {"size_label": "llc", "working_set_bytes": 16 * 2**20, "bytes_per_s": {"1": 88e9}},
            {"size_label": "dram", "working_set_bytes": 256 * 2**20, "bytes_per_s": {"1": 31e9}},
        ],
    }
    assert bandwidth_limit_for(limits, 20e6, threads=1) == (88e9, "llc")  # fits in the 32 MiB LLC
    assert bandwidth_limit_for(limits, 40e6, threads=1) == (31e9, "dram")
